"""The ``meshlens`` command. Its one subcommand, ``meshlens build``, lives in the build module."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: meshlens build [--check] [--dashboards DIR] [--alerts DIR] [--out DIR] (meshlens build --help)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "build":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        from meshlens_bundle.build import main as build_main
    except ImportError as exc:  # the bundle extra is not installed
        print(f"meshlens build needs the bundle extra: pip install 'meshlens[bundle]' ({exc})", file=sys.stderr)
        return 2
    return build_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
