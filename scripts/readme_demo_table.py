"""Put the table that ``make demo`` printed into README.md.

Reads ``OUTPUT_DIR/results.md`` (written by ``geal-report``; ``make demo`` writes ``outputs/demo``), takes the
table of the ``--metric`` section (default ``top1``) and replaces the lines between
``<!-- demo-table:start -->`` and ``<!-- demo-table:end -->`` in the README with it.

Usage: python scripts/readme_demo_table.py OUTPUT_DIR [--readme README.md] [--metric top1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
REPO = Path(__file__).resolve().parents[1]


def metric_table(results_md: str, metric: str) -> list[str]:
    """The markdown table lines of the ``## <metric> ...`` section of a ``results.md``."""
    lines = results_md.splitlines()
    heading = next((i for i, line in enumerate(lines) if line.startswith(f"## {metric} ")), None)
    if heading is None:
        sections = [line[3:].split(" ")[0] for line in lines if line.startswith("## ")]
        raise SystemExit(f"no '## {metric}' section in results.md (sections: {sections}); pass --metric")
    table: list[str] = []
    for line in lines[heading + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table or line.startswith("## "):
            break
    if len(table) < 3:
        raise SystemExit(f"the '## {metric}' section of results.md holds no table with rows")
    return table


def replace_block(readme: str, table: list[str]) -> str:
    """``readme`` with the lines between the demo-table markers replaced by ``table``."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise SystemExit(f"README must hold exactly one '{START}' line followed by one '{END}' line")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + "\n" + "\n".join(table) + "\n" + END + tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dir", type=Path, help="the demo's output dir (make demo: outputs/demo)")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument("--metric", default="top1")
    args = ap.parse_args()
    results = args.output_dir / "results.md"
    if not results.is_file():
        raise SystemExit(f"{results} does not exist: run `make demo` (or geal-report {args.output_dir})")
    table = metric_table(results.read_text(encoding="utf-8"), args.metric)
    text = replace_block(args.readme.read_text(encoding="utf-8"), table)
    fd, tmp = tempfile.mkstemp(dir=args.readme.parent, prefix=".readme-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    shutil.copymode(args.readme, tmp)  # mkstemp makes the file private
    os.replace(tmp, args.readme)
    print(f"{args.readme}: demo table ({len(table) - 2} rows) replaced from {results}")


if __name__ == "__main__":
    main()
