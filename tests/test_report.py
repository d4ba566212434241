"""geal.report (results, tables, efficiency, sweep_report) on hand-written run dirs: table cells, ±
formatting, gaps for every kind of unfinished run, ablation rows from the runs' configs, the efficiency
table, the files, wandb offline."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from geal.report.efficiency import efficiency_markdown, efficiency_table
from geal.report.results import DONE, FAILED, INCOMPLETE, NOT_STARTED, collect, varying_settings
from geal.report.sweep_report import ReportOptions, report
from geal.report.tables import Cell, budget_table, metrics_of, to_latex, to_markdown
from geal.run.cli import report_main


def write_run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    values: dict[int, float],
    *,
    selector: dict[str, Any] | None = None,
    budgets: list[int] | None = None,
    seconds: dict[str, float] | None = None,
    run_info: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {
        "selector": {"name": method, **(selector or {})},
        "seed": seed,
        "budgets": budgets if budgets is not None else sorted(values),
        "paths": {"output_dir": str(root)},  # differs per machine: never a row
    }
    doc = {
        "method": method,
        "selector": method,
        "seed": seed,
        "config": config,
        "results": [{"budget": b, "metrics": {"top1": v, "n_test": 100.0}} for b, v in values.items()],
        "seconds": seconds if seconds is not None else {"selection": 1.0, "fit": 2.0, "total": 3.5},
    }
    (run / "metrics.json").write_text(json.dumps(doc))
    if overrides is not None:
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if run_info is not None:
        (run / "run_info.json").write_text(json.dumps(run_info))
    return run


def write_failed(root: Path, name: str, method: str, seed: int, budgets: list[int], error: str = "") -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {"selector": {"name": method}, "seed": seed, "budgets": budgets}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if error:
        (run / "failure.json").write_text(json.dumps({"error": "RuntimeError", "message": error}))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    write_run(root, "0", "geal", 0, {10: 0.50, 20: 0.70})
    write_run(root, "1", "geal", 1, {10: 0.60, 20: 0.80})
    write_run(root, "2", "random", 0, {10: 0.40, 20: 0.55})
    write_run(root, "3", "random", 1, {10: 0.30}, budgets=[10, 20])  # budget 20 never finished
    write_failed(root, "4", "coreset_cos", 0, [10, 20], error="CUDA out of memory")
    return root


def test_cells_are_mean_and_sample_std_and_unfinished_runs_have_a_status(sweep: Path) -> None:
    found = collect(sweep)
    status = {r.directory.name: r.status for r in found.runs}
    assert status == {"0": DONE, "1": DONE, "2": DONE, "3": INCOMPLETE, "4": FAILED}
    assert {r.directory.name: r.reason for r in found.problems} == {
        "3": "no result for budget(s) 20",
        "4": "failed: RuntimeError: CUDA out of memory",
    }
    table = budget_table(found.trained, "top1")
    assert table.row_keys == ["method"] and table.budgets == [10, 20]
    assert table.rows == [("coreset_cos",), ("geal",), ("random",)]  # the failed method keeps its row
    geal10 = table.cell("geal", 10)
    assert geal10.n == 2 and geal10.mean == pytest.approx(0.55) and geal10.std == pytest.approx(0.0707107)
    assert geal10.seeds == (0, 1)
    assert table.cell("random", 20) == Cell(pytest.approx(0.55), 0.0, 1, (0,))
    assert table.cell("coreset_cos", 10).n == 0 and table.cell("random", 30).n == 0
    assert table.scale == 100.0


def test_markdown_and_latex_layout_and_formatting(sweep: Path) -> None:
    table = budget_table(collect(sweep).trained, "top1", methods=["geal", "random", "coreset_cos"])
    lines = to_markdown(table).splitlines()
    assert lines[0] == "| method | 10 | 20 |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| geal | 55.0 ± 7.1 (2) | 75.0 ± 7.1 (2) |"
    assert lines[3] == "| random | 35.0 ± 7.1 (2) | 55.0 (1) |"
    assert lines[4] == "| coreset_cos | – | – |"
    tex = to_latex(table).splitlines()
    assert tex[0] == r"\begin{tabular}{lrr}" and tex[2] == r"method & 10 & 20 \\"
    # the best mean of each column in bold; the seed count in small type; gaps as --
    assert tex[4] == (
        r"geal & $\mathbf{55.0 \pm 7.1}$ {\scriptsize (2)} & $\mathbf{75.0 \pm 7.1}$ {\scriptsize (2)} \\"
    )
    assert tex[5] == r"random & $35.0 \pm 7.1$ {\scriptsize (2)} & $55.0$ {\scriptsize (1)} \\"
    assert tex[6] == r"coreset\_cos & -- & -- \\"
    assert Cell(0.0, 0.0, 0).format() == "–" and Cell(0.123, 0.0, 1).format(digits=2) == "12.30"


def test_planned_budgets_of_a_cycle_run_come_from_its_schedule(tmp_path: Path) -> None:
    run = write_run(tmp_path, "c", "learn_loss", 0, {100: 0.3, 200: 0.4}, budgets=[10, 20, 50])
    doc = json.loads((run / "metrics.json").read_text())
    doc["config"]["cycles"] = {"initial_size": 100, "step": 100, "n_cycles": 2}  # budgets 100, 200, 300
    (run / "metrics.json").write_text(json.dumps(doc))
    [record] = collect(tmp_path).runs
    assert record.planned == (100, 200, 300) and record.status == INCOMPLETE
    assert record.reason == "no result for budget(s) 300"
    doc["config"]["cycles"] = {"initial_size": None, "step": 0, "n_cycles": 0}  # one pass: the budgets
    (run / "metrics.json").write_text(json.dumps(doc))
    assert collect(tmp_path).runs[0].planned == (10, 20, 50)


def test_a_seed_counts_once_and_nan_is_no_value(tmp_path: Path) -> None:
    old = write_run(tmp_path, "old", "geal", 0, {10: 0.10})
    new = write_run(tmp_path, "new", "geal", 0, {10: 0.50})  # the same seed rerun elsewhere
    os.utime(old / "metrics.json", (1_000, 1_000))
    os.utime(new / "metrics.json", (2_000, 2_000))
    write_run(tmp_path, "s1", "geal", 1, {10: 0.70})
    write_run(tmp_path, "s2", "geal", 2, {10: float("nan")})  # e.g. mIoU with no class present
    cell = budget_table(collect(tmp_path).trained, "top1").cell("geal", 10)
    assert cell.n == 2 and cell.mean == pytest.approx(0.60) and cell.seeds == (0, 1)


def test_scale_is_percent_only_for_fractions(tmp_path: Path) -> None:
    write_run(tmp_path, "a", "geal", 0, {10: 31.5})
    write_run(tmp_path, "b", "geal", 1, {10: 33.5})
    table = budget_table(collect(tmp_path).trained, "top1")
    assert table.scale == 1.0 and to_markdown(table).splitlines()[2] == "| geal | 32.5 ± 1.4 (2) |"


def test_not_started_jobs_of_a_multirun_are_found_from_multirun_yaml(tmp_path: Path) -> None:
    """Hydra's own sweep expansion of multirun.yaml: a job that left no dir at all is still listed."""
    root = tmp_path / "multirun"
    jobs = [("geal", 0), ("geal", 1), ("random", 0), ("random", 1)]
    for num, (method, seed) in enumerate(jobs[:3]):
        write_run(root, str(num), method, seed, {10: 0.5}, overrides=[f"selector={method}", f"seed={seed}"])
    (root / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "max_batch_size": None,
                        "params": {"seed": "0,1"},
                    },
                    "overrides": {"task": ["selector=geal,random"]},
                }
            }
        )
    )
    found = collect(root)
    [missing] = found.problems
    assert missing.status == NOT_STARTED and missing.method == "random" and missing.seed == 1
    assert sorted(missing.overrides) == ["seed=1", "selector=random"]
    table = budget_table(found.trained, "top1")
    assert table.cell("random", 10) == Cell(0.5, 0.0, 1, (0,))  # one of the two planned seeds
    md = report(root).markdown
    assert "[not started]" in md and "selector=random" in md


@pytest.mark.parametrize("nested", [True, False], ids=["selector.clusters", "flat_before_clusters_node"])
def test_ablation_rows_come_from_the_varied_config_keys(tmp_path: Path, nested: bool) -> None:
    """τ and K live under selector.clusters (runs recorded before that, directly under selector, read the
    same)."""
    prefix = "selector.clusters." if nested else "selector."
    for i, (tau, seed, v) in enumerate([(0.4, 0, 0.30), (0.4, 1, 0.32), (0.5, 0, 0.40), (0.6, 0, 0.35)]):
        sel: dict = {"tau": tau, "k": 25, "distance": "cosine"}
        if nested:
            sel = {"clusters": {"tau": tau, "k": 25}, "distance": "cosine"}
        write_run(tmp_path, str(i), "geal", seed, {3000: v, 5000: v + 0.1}, selector=sel)
    runs = collect(tmp_path).trained
    assert varying_settings(runs) == [f"{prefix}tau"]  # seed and paths never define a row
    auto = budget_table(runs, "top1")
    assert auto.row_keys == [f"{prefix}tau"] and auto.rows == [("0.4",), ("0.5",), ("0.6",)]
    assert to_markdown(auto).splitlines()[:3] == [
        "| τ | 3000 | 5000 |",
        "|---|---:|---:|",
        "| 0.4 | 31.0 ± 1.4 (2) | 41.0 ± 1.4 (2) |",
    ]
    paper = budget_table(runs, "top1", rows=[f"{prefix}tau", f"{prefix}k", "selector.distance"])
    assert to_markdown(paper).splitlines()[0] == "| τ | K | distance | 3000 | 5000 |"
    assert paper.rows[1] == ("0.5", "25", "cosine") and paper.cell(("0.5", "25", "cosine"), 5000).mean == 0.5
    assert to_latex(paper).splitlines()[2] == r"$\tau$ & $K$ & distance & 3000 & 5000 \\"


def test_efficiency_table_from_seconds_and_run_info(tmp_path: Path) -> None:
    info = {
        "device": "cuda:0",
        "device_name": "NVIDIA H100",
        "features": {"extraction_cache_hit": False},
        "timings": {"extraction_s": 30.0, "clusters_s": 5.0, "sampling_s": 1.0, "selection_total_s": 36.0},
    }
    write_run(
        tmp_path,
        "a",
        "geal",
        0,
        {10: 0.5},
        seconds={"selection": 36.0, "fit": 4.0, "total": 41.0},
        run_info=info,
    )
    write_run(
        tmp_path,
        "b",
        "geal",
        1,
        {10: 0.5},
        seconds={"selection": 40.0, "fit": 6.0, "total": 47.0},
        run_info={**info, "world_size": 2},
    )
    write_run(
        tmp_path,
        "c",
        "vaal",
        0,
        {10: 0.4},
        # a cycle run (geal.run.loop): the selections took 60 s, choosing the set (with the trainings) 2 h
        seconds={"selection": 60.0, "acquisition": 7200.0, "fit": 1.0, "total": 7202.0, "recovery": 0.0},
    )
    eff = efficiency_table(collect(tmp_path).runs, ["method"])
    geal, vaal = eff.rows
    assert geal.row == ("geal",) and geal.runs == 2 and geal.selection.mean == 38.0
    assert geal.acquisition.mean == 38.0  # one pass: choosing the set is the selection
    assert geal.device_hours == pytest.approx((36.0 + 2 * 40.0) / 3600)  # world_size 2 counts twice
    assert geal.stages["extraction_s"].mean == 30.0 and geal.cold == 2
    assert geal.devices == ["cuda:0 (NVIDIA H100)"]
    assert eff.other_keys == ["fit", "recovery", "total"]  # whatever a runner adds is shown
    assert vaal.other["recovery"].mean == 0.0 and geal.other["recovery"].n == 0
    assert vaal.selection.mean == 60.0 and vaal.acquisition.mean == 7200.0
    assert vaal.device_hours == pytest.approx(2.0)
    md = efficiency_markdown(eff).splitlines()
    assert md[0].startswith(
        "| method | runs | selection (s) | clusters (s) | extraction (s) | sampling (s) |"
    )
    assert md[3].startswith("| vaal | 1 | 60.00 | – | – | – | 0 of 1 cold | 7200.00 |") and md[3].endswith(
        "| 2.00 h | ? |"
    )


def test_report_writes_every_file(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = report(sweep, out, ReportOptions(title="demo"))
    md = (out / "results.md").read_text()
    assert "| geal | 55.0 ± 7.1 (2) | 75.0 ± 7.1 (2) |" in md
    assert "Runs that did not finish (2" in md and str(sweep / "4") in md and "CUDA out of memory" in md
    assert "## Efficiency" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["budget"], r["n"]) for r in rows] == [
        ("coreset_cos", "10", "0"),
        ("coreset_cos", "20", "0"),
        ("geal", "10", "2"),
        ("geal", "20", "2"),
        ("random", "10", "2"),
        ("random", "20", "1"),
    ]
    assert (
        float(rows[2]["mean"]) == pytest.approx(0.55) and rows[2]["seeds"] == "0 1" and rows[0]["mean"] == ""
    )
    assert r"\toprule" in (out / "results.tex").read_text()
    assert (out / "results_top1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results_top1.svg").read_text().lstrip().startswith("<?xml")
    summary = json.loads((out / "report.json").read_text())
    assert summary["metrics"] == ["top1"] and {r["status"] for r in summary["runs"]} == {
        DONE,
        INCOMPLETE,
        FAILED,
    }
    assert done.files["plot_top1_svg"] == out / "results_top1.svg"
    assert list(out.glob(".*tmp*")) == []  # nothing half-written left behind


def test_a_geal_select_sweep_gets_the_efficiency_table(tmp_path: Path) -> None:
    """geal-select runs (selection.json, no training) are not failures: they feed the efficiency table."""
    for num, (method, seconds) in enumerate([("geal", 12.0), ("geal", 14.0), ("random", 0.5)]):
        run = tmp_path / str(num)
        (run / ".hydra").mkdir(parents=True)
        config = {"selector": {"name": method}, "seed": num, "budget": 100}
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        selection = {"selector": method, "seed": num, "budget": 100, "config": config, "global_ids": [1]}
        (run / "selection.json").write_text(json.dumps(selection))
        info = {"device": "cpu", "timings": {"extraction_s": seconds - 1, "selection_total_s": seconds}}
        (run / "run_info.json").write_text(json.dumps(info))
    done = report(tmp_path)
    assert done.tables == [] and not done.missing
    geal, rand = done.efficiency.rows
    assert geal.row == ("geal",) and geal.selection.mean == 13.0 and geal.stages["extraction_s"].mean == 12.0
    assert rand.selection.n == 1 and rand.acquisition.mean == 0.5
    assert "| geal | 2 | 13.00 ± 1.41 |" in done.markdown


def test_metrics_headline_first_and_all(sweep: Path, tmp_path: Path) -> None:
    assert metrics_of(collect(sweep).trained) == ["top1", "n_test"]
    done = report(sweep, tmp_path / "r", ReportOptions(metrics=["all"]))
    assert [t.metric for t in done.tables] == ["top1"]  # counts (n_*) are not tabulated by 'all'


def test_cli(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_main([str(sweep), "--out", str(tmp_path / "cli"), "--methods", "random", "geal", "--digits", "2"])
    out = capsys.readouterr().out
    assert "| random | 35.00 ± 7.07 (2) | 55.00 (1) |" in out and "coreset_cos" not in out.split("##")[1]
    report_main([str(sweep), "--out", str(tmp_path / "cli2"), "--budgets", "20"])
    out = capsys.readouterr().out
    assert "| method | 20 |" in out and "| geal | 75.0 ± 7.1 (2) |" in out
    assert f"latex: {tmp_path / 'cli2' / 'results.tex'}" in out


def test_wandb_offline_push(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "wb"
    done = report(sweep, out, ReportOptions(wandb_project="geal-test", wandb_mode="offline"))
    run_dir = Path(done.wandb_dir or "")
    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-")
    tables = list(run_dir.rglob("table/top1*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"][:3] == ["method", "budget", "metric"]
    rows = {(r[0], r[1]): r for r in logged["data"]}
    assert float(rows[("geal", "10")][3]) == pytest.approx(0.55) and rows[("coreset_cos", "20")][5] == "0"
    assert os.environ["WANDB_MODE"] == "offline"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        collect(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no finished run"):
        report(tmp_path)
    write_run(tmp_path, "ok", "geal", 0, {10: 0.5})
    with pytest.raises(
        ValueError, match=r"metric\(s\) \['map'\] are in no metrics.json.*available: \['top1'"
    ):
        report(tmp_path, options=ReportOptions(metrics=["map"]))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"x/metrics.json is not a geal-run metrics\.json"):
        collect(tmp_path)
    (tmp_path / "x" / "metrics.json").write_text("{broken")
    with pytest.raises(ValueError, match="not readable JSON"):
        collect(tmp_path)


def test_unfinished_runs_stay_out_of_the_efficiency_table(sweep: Path) -> None:
    eff = efficiency_table(collect(sweep).runs, ["method"])
    rand = next(r for r in eff.rows if r.row == ("random",))
    assert rand.runs == 1  # seed 1 is incomplete: its times are partial
    assert [r.row for r in eff.rows] == [("geal",), ("random",)]  # the failed coreset_cos run has no times


# ------------------------------------------------------------------ issue 20: extendable studies, figures


def test_unknown_methods_or_budgets_are_an_error_listing_the_known_ones(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['gael'\].*known: coreset_cos, geal, random"):
        report(sweep, tmp_path / "a", ReportOptions(methods=["gael"]))
    with pytest.raises(ValueError, match=r"unknown budget\(s\) \[30\].*known: 10, 20"):
        report(sweep, tmp_path / "b", ReportOptions(budgets=[20, 30]))
    for argv in (["--methods", "geal", "gael"], ["--budgets", "30"]):
        with pytest.raises(SystemExit) as exit_info:
            report_main([str(sweep), "--out", str(tmp_path / "cli"), *argv])
        assert exit_info.value.code != 0
        err = capsys.readouterr().err
        assert err.startswith("geal-report: error: unknown") and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
    assert not (tmp_path / "cli" / "results_top1.png").exists()  # no empty plot written


def test_rows_on_a_multi_method_sweep_keep_the_method(tmp_path: Path) -> None:
    write_run(tmp_path, "g4", "geal", 0, {10: 0.5}, selector={"clusters": {"tau": 0.4}})
    write_run(tmp_path, "g5", "geal", 0, {10: 0.6}, selector={"clusters": {"tau": 0.5}})
    write_run(tmp_path, "r", "random", 0, {10: 0.2})
    write_run(tmp_path, "u", "usl", 0, {10: 0.3}, selector={"clusters": {"tau": 0.4}})  # same τ, other method
    table = budget_table(collect(tmp_path).trained, "top1", rows=["selector.clusters.tau"])
    assert table.row_keys == ["method", "selector.clusters.tau"]
    assert table.rows == [("geal", "0.4"), ("geal", "0.5"), ("random", "–"), ("usl", "0.4")]
    assert table.cell(("usl", "0.4"), 10).mean == 0.3 and table.cell(("geal", "0.4"), 10).n == 1
    # one method: the rows asked for, as before
    from geal.report.plots import legend_label
    from geal.report.style import MethodStyle

    assert legend_label(table, ("random", "–"), MethodStyle()) == "Random, 1 seed"  # no "τ=–"
    assert legend_label(table, ("usl", "0.4"), MethodStyle()) == "USL, τ=0.4, 1 seed"
    one = budget_table(
        [r for r in collect(tmp_path).trained if r.method == "geal"], "top1", rows=["selector.clusters.tau"]
    )
    assert one.row_keys == ["selector.clusters.tau"]


def test_a_study_extended_into_a_sibling_folder_is_merged_and_conflicts_are_listed(tmp_path: Path) -> None:
    """The same configuration and seed run with budgets [10, 20, 50] and later [100] (and a rerun of 50):
    one seed with the union of the budgets; a budget scored twice with different values is a conflict."""
    first = write_run(tmp_path / "study", "0", "geal", 0, {10: 0.3, 20: 0.4, 50: 0.5})
    more = write_run(tmp_path / "study_more", "0", "geal", 0, {50: 0.55, 100: 0.6})
    write_run(tmp_path / "study_more", "1", "geal", 1, {100: 0.7})
    os.utime(first / "metrics.json", (1_000, 1_000))
    os.utime(more / "metrics.json", (2_000, 2_000))
    table = budget_table(collect(tmp_path).trained, "top1")
    assert table.budgets == [10, 20, 50, 100]
    assert table.cell("geal", 10) == Cell(pytest.approx(0.3), 0.0, 1, (0,))  # kept, not replaced
    assert table.cell("geal", 100).n == 2 and table.cell("geal", 100).mean == pytest.approx(0.65)
    assert table.cell("geal", 50).mean == pytest.approx(0.55)  # the newer value, the conflict listed
    [conflict] = table.conflicts
    assert conflict.row == ("geal",) and conflict.seed == 0 and conflict.budget == 50
    assert [v for v, _ in conflict.values] == [pytest.approx(0.5), pytest.approx(0.55)]
    done = report(tmp_path, tmp_path / "out")
    assert "Conflicting results (1)" in done.markdown and str(first) in done.markdown
    assert str(more) in done.markdown
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["conflicts"][0]["budget"] == 50 and doc["conflicts"][0]["seed"] == 0


def test_the_same_value_twice_is_no_conflict(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "0", "geal", 0, {10: 0.3, 20: 0.4})
    write_run(tmp_path / "b", "0", "geal", 0, {20: 0.4, 50: 0.5})
    table = budget_table(collect(tmp_path).trained, "top1")
    assert table.conflicts == [] and [table.cell("geal", b).n for b in (10, 20, 50)] == [1, 1, 1]


def test_device_time_prints_as_a_plain_number(tmp_path: Path) -> None:
    for name, seconds in (("a", 0.2838), ("b", 283.8)):
        write_run(tmp_path / name, "0", name, 0, {10: 0.5}, seconds={"selection": seconds, "total": 1.0})
    eff = efficiency_table(collect(tmp_path).runs, ["method"])
    md = efficiency_markdown(eff)
    assert "e-0" not in md and "e+0" not in md
    assert md.splitlines()[2].endswith("| 0.28 s | ? |") and md.splitlines()[3].endswith("| 4.73 min | ? |")
    from geal.report.efficiency import efficiency_latex

    assert "e-0" not in efficiency_latex(eff) and "0.28 s" in efficiency_latex(eff)


def test_report_json_holds_numbers_as_numbers(sweep: Path, tmp_path: Path) -> None:
    report(sweep, tmp_path / "r")
    cells = json.loads((tmp_path / "r" / "report.json").read_text())["cells"]
    geal10 = next(c for c in cells if c["method"] == "geal" and c["budget"] == 10)
    assert geal10["mean"] == pytest.approx(0.55) and isinstance(geal10["std"], float)
    assert geal10["n"] == 2 and geal10["seeds"] == [0, 1] and geal10["scale"] == 100.0
    gap = next(c for c in cells if c["method"] == "coreset_cos" and c["budget"] == 20)
    assert gap["mean"] is None and gap["n"] == 0
    rows = list(csv.DictReader((tmp_path / "r" / "results.csv").open()))
    assert rows[2]["budget"] == "10" and rows[2]["seeds"] == "0 1"  # the CSV as before


def _legend(table: Any, style: Any = None) -> dict[str, str]:
    """legend label → line colour (hex) of the metric-vs-budget figure of ``table``."""
    from matplotlib.colors import to_hex

    from geal.report.plots import figure

    fig = figure(table, style=style)
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return {label: to_hex(h.get_color()) for h, label in zip(handles, labels, strict=True)}


def test_a_method_keeps_its_colour_and_display_name_in_every_plot(sweep: Path) -> None:
    from geal.report.style import DEFAULT_COLORS, MethodStyle

    runs = collect(sweep).trained
    both = _legend(budget_table(runs, "top1"))
    alone = _legend(budget_table(runs, "top1", methods=["geal"]))
    reordered = _legend(budget_table(runs, "top1", methods=["random", "geal"]))
    assert set(both) == {"GEAL, 2 seeds", "Random, 2 seeds"}  # coreset_cos has no value: no line
    assert both["GEAL, 2 seeds"] == alone["GEAL, 2 seeds"] == reordered["GEAL, 2 seeds"]
    assert (
        both["GEAL, 2 seeds"] == DEFAULT_COLORS["geal"]
        and both["Random, 2 seeds"] == DEFAULT_COLORS["random"]
    )
    assert len(set(DEFAULT_COLORS.values())) == len(DEFAULT_COLORS)  # every default method its own colour
    style = MethodStyle.from_options(names=["geal=Ours"], colors=["geal=#000000"])
    custom = _legend(budget_table(runs, "top1"), style)
    assert custom["Ours, 2 seeds"] == "#000000" and custom["Random, 2 seeds"] == DEFAULT_COLORS["random"]
    # an unknown method: a colour from its name (the same in every process), never from its position
    assert (
        MethodStyle().color("my_method") == MethodStyle().color("my_method") != MethodStyle().color("other")
    )
    assert MethodStyle().name("my_method") == "my_method"
    assert MethodStyle().name("coreset_cos") == "Core-Set (cos)"


def test_style_from_a_yaml_file_and_bad_pairs(tmp_path: Path) -> None:
    from geal.report.style import MethodStyle

    path = tmp_path / "style.yaml"
    path.write_text("names: {geal: Ours}\ncolors: {random: 'tab:gray'}\n")
    style = MethodStyle.from_options(style_file=path, names=["usl=USL*"])
    assert style.name("geal") == "Ours" and style.name("usl") == "USL*" and style.color("random") == "#7f7f7f"
    with pytest.raises(ValueError, match="METHOD=NAME"):
        MethodStyle.from_options(names=["geal"])
    with pytest.raises(ValueError, match="not a colour"):
        MethodStyle.from_options(colors=["geal=notacolour"])


def test_cli_names_and_colors(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import geal.report.sweep_report as sweep_report

    seen = []
    real = sweep_report.plot
    monkeypatch.setattr(sweep_report, "plot", lambda *a, **k: seen.append(k["style"]) or real(*a, **k))
    report_main(
        [str(sweep), "--out", str(tmp_path / "cli"), "--names", "geal=Ours", "--colors", "geal=#000000"]
    )
    assert "| geal |" in capsys.readouterr().out  # tables keep the config names
    [style] = seen
    assert style.name("geal") == "Ours" and style.color("geal") == "#000000"
    assert style.name("random") == "Random"


def test_ablation_of_one_method_shades_its_settings(tmp_path: Path) -> None:
    for i, tau in enumerate((0.4, 0.5, 0.6)):
        write_run(tmp_path, str(i), "geal", 0, {10: 0.3 + i / 10}, selector={"clusters": {"tau": tau}})
    legend = _legend(budget_table(collect(tmp_path).trained, "top1"))
    assert list(legend) == ["GEAL, τ=0.4, 1 seed", "GEAL, τ=0.5, 1 seed", "GEAL, τ=0.6, 1 seed"]
    assert len(set(legend.values())) == 3
