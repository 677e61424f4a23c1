"""The ``meshlens`` command. ``meshlens build`` is filled in by the build module."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from meshlens_bundle.build import main as build_main
    except ImportError as exc:  # the bundle extra is not installed
        print(f"meshlens build needs the bundle extra: pip install 'meshlens[bundle]' ({exc})", file=sys.stderr)
        return 2
    return build_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
