"""``geal-report``: collect the runs below a sweep folder and write every table and plot of it (Markdown,
CSV, LaTeX, PNG/SVG, ``report.json``), optionally pushed to wandb."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geal.report.efficiency import (
    EfficiencyTable,
    efficiency_csv_rows,
    efficiency_latex,
    efficiency_markdown,
    efficiency_table,
)
from geal.report.plots import plot
from geal.report.results import SELECTION, Collected, RunRecord, collect
from geal.report.style import MethodStyle
from geal.report.tables import (
    CSV_FIELDS,
    BudgetTable,
    budget_table,
    conflicts_markdown,
    csv_rows,
    json_cells,
    metrics_of,
    row_keys_for,
    to_latex,
    to_markdown,
    write_csv,
)
from geal.util.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


def _wandb_table(rows: Sequence[dict[str, str]], empty_columns: Sequence[str]) -> Any:
    """A ``wandb.Table`` of CSV-style rows (columns: the first row's keys; ``empty_columns`` when none)."""
    import wandb

    columns: list[str | int] = list(rows[0]) if rows else list(empty_columns)
    return wandb.Table(columns=columns, data=[[r.get(str(c), "") for c in columns] for r in rows])


def push_to_wandb(
    tables: Sequence[BudgetTable],
    efficiency: EfficiencyTable | None,
    images: Sequence[Path],
    *,
    project: str,
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    mode: str | None = None,
    save_dir: Path | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    """Log the tables (``wandb.Table``, raw mean/std/n per cell) and plots to one wandb run of job type
    ``report``; ``mode``: online | offline | disabled (None: wandb's default, ``WANDB_MODE``). Returns the
    run's local directory."""
    import wandb

    run = wandb.init(
        project=project,
        entity=entity,
        group=group,
        name=name,
        job_type="report",
        mode=mode,  # type: ignore[arg-type]  # a plain str here; wandb.init checks it
        dir=str(save_dir) if save_dir else None,
        config=config or {},
        reinit="finish_previous",
    )
    try:
        for table in tables:
            rows = csv_rows(table)
            run.log({f"table/{table.metric}": _wandb_table(rows, [*table.row_keys, *CSV_FIELDS])})
        if efficiency is not None and efficiency.rows:
            run.log({"table/efficiency": _wandb_table(efficiency_csv_rows(efficiency), [])})
        for image in images:
            if Path(image).suffix == ".png":
                run.log({f"plot/{Path(image).stem}": wandb.Image(str(image))})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


# ------------------------------------------------------------------------------------------- report


@dataclass
class ReportOptions:
    metrics: Sequence[str] | None = None  # None: the headline metric; ["all"]: all but counts, per-class
    rows: Sequence[str] | None = None  # None: method + the settings the sweep varied
    methods: Sequence[str] | None = None  # order / filter of the methods
    budgets: Sequence[int] | None = None  # the columns (e.g. the paper's 1k, 2k, 3k, 5k, 7k, 10k)
    scale: float | None = None  # None: ×100 for fractions
    digits: int = 1
    title: str = ""
    best: str | None = "max"  # bold in LaTeX: max | min | None
    wandb_project: str | None = None  # push the tables to this wandb project
    wandb_mode: str | None = None
    wandb_entity: str | None = None
    style: MethodStyle | None = None  # display names and colours of the methods in the plots


@dataclass
class Report:
    tables: list[BudgetTable]
    efficiency: EfficiencyTable
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)
    collected: Collected | None = None
    wandb_dir: str | None = None

    @property
    def missing(self) -> list[RunRecord]:
        return self.collected.problems if self.collected else []


def problems_markdown(collected: Collected) -> str:
    problems = collected.problems
    if not problems:
        return ""
    lines = [f"Runs that did not finish ({len(problems)}; shown as gaps or fewer seeds above):", ""]
    for r in problems:
        setting = " ".join(r.overrides) if r.overrides else f"method={r.method} seed={r.seed}"
        lines.append(f"- `{r.directory}` [{r.status}] {setting} — {r.reason}")
    return "\n".join(lines)


def check_selection(found: Collected, options: ReportOptions) -> None:
    """``--methods`` / ``--budgets`` must name methods and budgets the runs have (a typo would give an
    empty table): ValueError listing the known ones."""
    known_methods = sorted({r.method for r in found.runs})
    unknown_methods = [m for m in options.methods or [] if m not in known_methods]
    if unknown_methods:
        raise ValueError(
            f"unknown method(s) {unknown_methods} in --methods (known: {', '.join(known_methods)})"
        )
    trained = [r for r in found.trained if not options.methods or r.method in options.methods]
    known_budgets = sorted({b for r in trained for b in (*r.values, *r.planned)})
    unknown_budgets = sorted({int(b) for b in options.budgets or []} - set(known_budgets))
    if unknown_budgets and trained:
        raise ValueError(
            f"unknown budget(s) {unknown_budgets} in --budgets: no run planned or scored them "
            f"(known: {', '.join(map(str, known_budgets))})"
        )


def report(root: Path, out_dir: Path | None = None, options: ReportOptions | None = None) -> Report:
    """Collect the runs below ``root`` and write into ``out_dir`` (default ``root``):

    ``results.md`` (every table, the efficiency table, the runs that did not finish, provenance),
    ``results.csv`` (long format, every metric), ``results.tex``, ``results_<metric>.png/.svg``,
    ``efficiency.csv``, ``report.json`` (cells, runs and their status).
    """
    options = options or ReportOptions()
    root = Path(root)
    found = collect(root)
    trained = found.trained
    finished_any = [r for r in trained if r.values]
    if not found.runs or (not finished_any and not any(r.status == SELECTION for r in found.runs)):
        raise FileNotFoundError(
            f"no finished run below {root} (no metrics.json with results, no selection.json): did the "
            f"runs finish? ({len(found.runs)} run dir(s) found)"
        )
    available = metrics_of(finished_any)
    if options.metrics and list(options.metrics) == ["all"]:  # not counts, not per-class breakdowns
        metrics = [m for m in available if not m.startswith("n_") and "/" not in m]
    else:
        metrics = list(options.metrics or available[:1])
    unknown = [m for m in metrics if m not in available]
    if unknown and finished_any:
        raise ValueError(f"metric(s) {unknown} are in no metrics.json below {root}; available: {available}")
    check_selection(found, options)
    out_dir = Path(out_dir or root)
    tables = [
        budget_table(trained, m, options.rows, options.methods, options.scale, options.budgets)
        for m in metrics
    ]
    keys = tables[0].row_keys if tables else row_keys_for(found.runs, options.rows)
    eff = efficiency_table(
        [r for r in found.runs if not options.methods or r.method in options.methods], keys
    )

    files: dict[str, Path] = {}
    sections = [f"# {options.title or 'Results'}", ""]
    shas = sorted({str(i.get("git", {}).get("sha", "?"))[:12] for r in found.runs for i in r.run_infos})
    sections.append(
        f"{len(found.runs)} run(s) under `{root}` "
        f"({sum(r.status == 'done' for r in found.runs)} done); git {', '.join(shas) or '?'}; "
        f"`{' '.join(['geal-report', *sys.argv[1:]]) if sys.argv else 'geal-report'}` at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}."
    )
    latex, csv_all = [], []
    for table in tables:
        unit = " (%)" if table.scale == 100.0 else ""
        sections += [
            "",
            f"## {table.metric}{unit}: mean ± std over seeds (number of seeds)",
            "",
            to_markdown(table, options.digits),
        ]
        latex += [
            f"% {table.metric}{unit}, mean ± std over seeds (number of seeds); from {root}",
            to_latex(table, options.digits, options.best),
            "",
        ]
        csv_all += csv_rows(table)
        stem = f"results_{table.metric}".replace("/", "_")
        paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
        for path in plot(table, paths, title=options.title, style=options.style):
            files[f"plot_{table.metric}_{path.suffix[1:]}"] = path
    if eff.rows:
        sections += [
            "",
            "## Efficiency: selection wall time per run",
            "",
            efficiency_markdown(eff),
            "",
            "Selection: the selector's own wall time, including feature extraction only where the run "
            "extracted (cold); acquisition: for active-learning cycles, every selection plus the trainings "
            "whose models made them. Device time: acquisition × devices, summed over the runs.",
        ]
        latex += ["% selection wall time (s) and device time", efficiency_latex(eff), ""]
        files["efficiency_csv"] = write_csv(efficiency_csv_rows(eff), out_dir / "efficiency.csv")
    conflicts = [c for t in tables for c in t.conflicts]
    if conflicts:
        sections += ["", conflicts_markdown(conflicts)]
    problems = problems_markdown(found)
    if problems:
        sections += ["", problems]
    markdown = "\n".join(sections)
    atomic_write_bytes(out_dir / "results.md", (markdown + "\n").encode())
    files["markdown"] = out_dir / "results.md"
    if csv_all:
        files["csv"] = write_csv(csv_all, out_dir / "results.csv")
    atomic_write_bytes(out_dir / "results.tex", "\n".join(latex).encode())
    files["latex"] = out_dir / "results.tex"
    atomic_write_json(
        out_dir / "report.json",
        {
            "root": str(root),
            "metrics": metrics,
            "row_keys": keys,
            "cells": [c for t in tables for c in json_cells(t)],
            "conflicts": [
                {
                    "metric": c.metric,
                    **dict(zip(keys, c.row, strict=True)),
                    "seed": c.seed,
                    "budget": c.budget,
                    "values": [{"value": v, "dir": str(d)} for v, d in c.values],
                }
                for c in conflicts
            ],
            "runs": [
                {
                    "dir": str(r.directory),
                    "status": r.status,
                    "method": r.method,
                    "seed": r.seed,
                    "overrides": list(r.overrides),
                    "reason": r.reason,
                }
                for r in found.runs
            ],
        },
    )
    files["json"] = out_dir / "report.json"
    wandb_dir = None
    if options.wandb_project:
        images = [p for k, p in files.items() if k.startswith("plot_")]
        wandb_dir = push_to_wandb(
            tables,
            eff,
            images,
            project=options.wandb_project,
            entity=options.wandb_entity,
            mode=options.wandb_mode,
            save_dir=out_dir,
            name=f"report-{root.name}",
            config={"root": str(root), "metrics": metrics, "row_keys": keys},
        )
    for r in found.problems:
        log.warning("run %s: %s (%s)", r.directory, r.status, r.reason)
    return Report(tables, eff, markdown, files, found, wandb_dir)
