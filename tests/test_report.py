"""geal.report: known-input tables, ± formatting, gaps for missing runs, files written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from geal.report import Cell, budget_table, collect, report, to_markdown


def write_run(root: Path, name: str, method: str, seed: int, values: dict[int, float]) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    doc = {
        "method": method,
        "selector": method,
        "seed": seed,
        "results": [{"budget": b, "metrics": {"top1": v, "n_test": 100.0}} for b, v in values.items()],
    }
    (run / "metrics.json").write_text(json.dumps(doc))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    write_run(tmp_path, "0", "geal", 0, {10: 0.50, 20: 0.70})
    write_run(tmp_path, "1", "geal", 1, {10: 0.60, 20: 0.80})
    write_run(tmp_path, "2", "random", 0, {10: 0.40, 20: 0.55})
    write_run(tmp_path, "3", "random", 1, {10: 0.30})  # budget 20 missing for this seed
    (tmp_path / "4" / ".hydra").mkdir(parents=True)  # started, never finished
    return tmp_path


def test_cells_are_mean_and_sample_std(sweep: Path) -> None:
    found = collect(sweep)
    assert [p.name for p in found.missing] == ["4"]
    table = budget_table(found.runs, "top1")
    assert table.methods == ["geal", "random"] and table.budgets == [10, 20]
    geal10 = table.cell("geal", 10)
    assert geal10.n == 2 and geal10.mean == pytest.approx(0.55) and geal10.std == pytest.approx(0.0707107)
    assert table.cell("random", 20) == Cell(pytest.approx(0.55), 0.0, 1)
    assert table.cell("random", 30).n == 0


def test_markdown_layout_and_formatting(sweep: Path) -> None:
    table = budget_table(collect(sweep).runs, "top1")
    lines = to_markdown(table).splitlines()
    assert lines[0] == "| method | 10 | 20 |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| geal | 55.0 ± 7.1 (2) | 75.0 ± 7.1 (2) |"
    assert lines[3] == "| random | 35.0 ± 7.1 (2) | 55.0 (1) |"
    assert Cell(0.0, 0.0, 0).format() == "–"


def test_report_writes_files_and_lists_missing_runs(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = report(sweep, "top1", out, title="demo")
    md = (out / "results.md").read_text()
    assert "| geal | 55.0 ± 7.1 (2) |" in md and "Missing runs" in md and str(sweep / "4") in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4
    assert rows[0]["method"] == "geal" and rows[0]["budget"] == "10" and float(rows[0]["mean"]) == 0.55
    png = out / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and done["files"]["plot"] == png


def test_gap_for_a_method_missing_a_budget(tmp_path: Path) -> None:
    write_run(tmp_path, "a", "geal", 0, {10: 0.5, 20: 0.6})
    write_run(tmp_path, "b", "coreset", 0, {20: 0.4})
    md = to_markdown(budget_table(collect(tmp_path).runs, "top1"))
    assert "| coreset | – | 40.0 (1) |" in md


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        collect(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no metrics\.json"):
        report(tmp_path, "top1")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not a geal-run metrics\.json"):
        collect(tmp_path)
