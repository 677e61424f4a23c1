"""Write or check the collector files in the chart, without the rest of ``meshlens build``.

    python -m meshlens_collector --write   # regenerate helm/meshlens/files/{collector,jaeger}/
    python -m meshlens_collector --check   # fail when the committed files are stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshlens_collector.files import CHART_FILES, generated_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    parser.add_argument("--files-dir", type=Path, default=CHART_FILES, help="the chart's files/ folder")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in generated_files().items():
        path = args.files_dir / relative
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")  # atomic: a reader never sees half a file
        partial.write_text(text)
        partial.replace(path)
        print(f"wrote {path}")
    if stale:
        print(f"stale in {args.files_dir}: {', '.join(stale)}; run `python -m meshlens_collector --write`",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
