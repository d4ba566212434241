"""scripts/type_ratchet.py: error lines without line numbers, new vs gone entries, the baseline file."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "type_ratchet.py"


@pytest.fixture(scope="module")
def ratchet():
    spec = importlib.util.spec_from_file_location("type_ratchet", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_normalise_drops_line_and_column_numbers(ratchet):
    line = 'geal/a.py:12: error: Incompatible return value type (got "int", expected "str")  [return-value]'
    assert ratchet.normalise(line) == (
        'geal/a.py: error: Incompatible return value type (got "int", expected "str")  [return-value]'
    )
    assert ratchet.normalise("geal/a.py:12:5: error: msg  [misc]") == "geal/a.py: error: msg  [misc]"
    assert ratchet.normalise('b.py:3: error: Name "x" already defined on line 1  [no-redef]') == (
        'b.py: error: Name "x" already defined on line N  [no-redef]'
    )
    with pytest.raises(ValueError, match="not a mypy error line"):
        ratchet.normalise("geal/a.py:12: note: See https://mypy.rtfd.io")


def test_compare_reports_new_errors_with_line_numbers_and_gone_entries(ratchet):
    baseline = Counter(["a.py: error: one  [misc]", "a.py: error: two  [misc]", "b.py: error: old  [misc]"])
    current = ["a.py:1: error: one  [misc]", "a.py:9: error: two  [misc]", "c.py:4: error: fresh  [misc]"]
    new, gone = ratchet.compare(current, baseline)
    assert new == ["c.py:4: error: fresh  [misc]"]
    assert gone == ["b.py: error: old  [misc]"]


def test_compare_counts_repeats_of_one_entry(ratchet):
    baseline = Counter({"a.py: error: same  [misc]": 1})
    current = ["a.py:1: error: same  [misc]", "a.py:7: error: same  [misc]"]
    new, gone = ratchet.compare(current, baseline)
    assert new == current  # which of the two is the added one cannot be told: both are shown
    assert gone == []
    assert ratchet.compare(current[:1], Counter({"a.py: error: same  [misc]": 2})) == (
        [],
        ["a.py: error: same  [misc]"],
    )


def test_baseline_round_trip_keeps_repeats_and_skips_comments(ratchet, tmp_path):
    path = tmp_path / "baseline.txt"
    errors = Counter({"b.py: error: x  [misc]": 2, "a.py: error: y  [misc]": 1})
    ratchet.write_baseline(path, errors)
    text = path.read_text()
    assert text.startswith("#")
    assert text.splitlines()[-3:] == [
        "a.py: error: y  [misc]",
        "b.py: error: x  [misc]",
        "b.py: error: x  [misc]",
    ]
    assert ratchet.read_baseline(path) == errors
    with pytest.raises(SystemExit, match="--update"):
        ratchet.read_baseline(tmp_path / "missing.txt")


def test_committed_baseline_is_normalised_and_sorted(ratchet):
    entries = [
        line
        for line in (SCRIPT.parent.parent / ".mypy-baseline.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert entries == sorted(entries)
    assert all(ratchet.normalise(e.replace(": error: ", ":1: error: ", 1)) == e for e in entries)
