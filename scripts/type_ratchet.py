"""Type-check ratchet: run mypy and fail only on errors that are not in the committed baseline.

The code base predates its type checker, so mypy still reports errors; ``.mypy-baseline.txt`` lists them,
one line per error, normalised without line numbers (``path: error: message  [code]``) so that edits above
an error do not change its entry. A run

- fails (exit 1) when mypy reports an error that is not in the baseline, or more copies of one than the
  baseline lists, and prints those errors with their line numbers;
- reports baseline entries that no longer occur (fixed errors): run with ``--update`` to drop them so they
  cannot come back unnoticed;
- fails (exit 2) when mypy itself fails (bad configuration, crash) rather than reporting errors.

mypy's settings (files, strictness, untyped third-party packages) are in pyproject.toml's ``[tool.mypy]``;
the baseline is only valid for the mypy version pinned in the ``dev`` extra.

Usage: python scripts/type_ratchet.py [--update] [--baseline .mypy-baseline.txt]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = ROOT / ".mypy-baseline.txt"
HEADER = (
    "# mypy errors tolerated by scripts/type_ratchet.py (one line per error, line numbers removed).\n"
    "# Regenerate with `python scripts/type_ratchet.py --update` after fixing errors; never add by hand.\n"
)

# "path:12: error: message  [code]" or "path:12:5: error: ..." (with show_column_numbers)
_ERROR = re.compile(r"^(?P<path>[^:\s][^:]*):(?P<line>\d+)(?::\d+)?: error: (?P<rest>.*)$")
# Messages that name another line ("already defined on line 12") would move with unrelated edits.
_ON_LINE = re.compile(r"\bon line \d+")


def run_mypy() -> tuple[list[str], int, str]:
    """mypy's error lines (as printed), its exit status and its whole output, run from the repository root."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-pretty", "--no-error-summary", "--hide-error-context"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if _ERROR.match(line)], proc.returncode, output


def normalise(error_line: str) -> str:
    """``path:12: error: msg  [code]`` -> ``path: error: msg  [code]`` (the baseline's form)."""
    m = _ERROR.match(error_line)
    if m is None:
        raise ValueError(f"not a mypy error line: {error_line!r}")
    path = m["path"].replace("\\", "/")
    return f"{path}: error: {_ON_LINE.sub('on line N', m['rest'])}"


def read_baseline(path: Path) -> Counter[str]:
    if not path.is_file():
        raise SystemExit(
            f"type ratchet: baseline {path} is missing; "
            "create it with `python scripts/type_ratchet.py --update`"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    return Counter(line for line in lines if line.strip() and not line.startswith("#"))


def write_baseline(path: Path, errors: Counter[str]) -> None:
    body = "".join(f"{entry}\n" for entry in sorted(errors.elements()))
    path.write_text(HEADER + body, encoding="utf-8")


def compare(current_lines: list[str], baseline: Counter[str]) -> tuple[list[str], list[str]]:
    """(new error lines as mypy printed them, baseline entries no longer reported).

    An entry that occurs n times in the baseline and m > n times now makes all m occurrences "new": which
    of them is the added one cannot be told without line numbers.
    """
    current = Counter(normalise(line) for line in current_lines)
    grown = {entry for entry, count in current.items() if count > baseline[entry]}
    new = [line for line in current_lines if normalise(line) in grown]
    gone = sorted((baseline - current).elements())
    return new, gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--update", action="store_true", help="rewrite the baseline with mypy's current errors"
    )
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="baseline file")
    args = parser.parse_args(argv)

    error_lines, status, output = run_mypy()
    if status not in (0, 1) or (status == 1 and not error_lines):
        print(f"type ratchet: mypy failed (exit {status}) without reporting type errors:\n{output}")
        return 2
    if args.update:
        write_baseline(args.baseline, Counter(normalise(line) for line in error_lines))
        print(f"type ratchet: wrote {len(error_lines)} entries to {args.baseline}")
        return 0

    baseline = read_baseline(args.baseline)
    new, gone = compare(error_lines, baseline)
    if gone:
        print(
            f"type ratchet: {len(gone)} baseline entry(ies) no longer occur; tighten the baseline with "
            "`python scripts/type_ratchet.py --update`:"
        )
        print("".join(f"  {entry}\n" for entry in gone), end="")
    if new:
        print(f"type ratchet: {len(new)} mypy error(s) not in the baseline ({args.baseline.name}); fix them:")
        print("".join(f"  {line}\n" for line in new), end="")
        return 1
    print(f"type ratchet: ok ({len(error_lines)} known errors, baseline {sum(baseline.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
