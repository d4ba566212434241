"""The paper's tables and plots from the output files of a sweep (``geal-report``).

Runs are read by :mod:`geal.report.results` (``metrics.json``, ``run_info.json``, ``.hydra/``,
``multirun.yaml``).
A table has one row per setting (the method, plus any config key the sweep varied: τ, K, distance... — the
layout of the paper's ablation table) and one column per budget; a cell is the mean ± sample std over seeds
with the number of seeds. Runs that did not finish leave gaps (``–``, or fewer seeds in the cell) and are
listed under every table. Writers: Markdown, CSV (long format), LaTeX (booktabs), metric-vs-budget plots
with ±1 std bands (PNG and SVG), the efficiency table (selection wall time, device-hours), optionally the
same tables on wandb.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geal.report.results import DONE, SELECTION, Collected, RunRecord, collect, varying_settings
from geal.util.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

#: how a setting's key is printed in a table header (the paper's symbols)
HEADER_NAMES = {
    "selector.clusters.tau": "τ",
    "selector.clusters.k": "K",
    "selector.tau": "τ",  # (runs written before the cluster settings moved to selector.clusters)
    "selector.k": "K",
    "selector.distance": "distance",
    "method": "method",
}
LATEX_HEADER_NAMES = {"τ": r"$\tau$", "K": r"$K$"}


@dataclass(frozen=True)
class Cell:
    """Mean and sample std (0 for one seed) of one table cell over ``n`` seeds."""

    mean: float
    std: float
    n: int
    seeds: tuple[int | None, ...] = ()

    def format(self, digits: int = 1, scale: float = 100.0) -> str:
        """``mean ± std`` (scaled, e.g. to percent); just ``mean`` for a single seed; ``–`` when empty."""
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


EMPTY = Cell(math.nan, math.nan, 0)


def summarize(values: Sequence[float], seeds: Sequence[int | None] = ()) -> Cell:
    if not values:
        return EMPTY
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Cell(mean, std, len(values), tuple(seeds))


@dataclass
class BudgetTable:
    """Rows (settings) × budgets of one metric.

    row_keys: what identifies a row, e.g. ``["method"]`` or ``["selector.clusters.tau"]``
    rows:     the rows in order, each the tuple of its ``row_keys`` values as printed
    cells:    (row, budget) → Cell; absent = gap
    """

    metric: str
    row_keys: list[str]
    rows: list[tuple[str, ...]]
    budgets: list[int]
    cells: dict[tuple[tuple[str, ...], int], Cell]
    scale: float = 100.0

    def cell(self, row: tuple[str, ...] | str, budget: int) -> Cell:
        key = (row,) if isinstance(row, str) else tuple(row)
        return self.cells.get((key, budget), EMPTY)

    @property
    def headers(self) -> list[str]:
        return [HEADER_NAMES.get(k, k.split(".")[-1]) for k in self.row_keys]

    def label(self, row: tuple[str, ...]) -> str:
        """One-line name of a row (legend of the plots)."""
        if self.row_keys == ["method"]:
            return row[0]
        return ", ".join(f"{h}={v}" if h != "method" else v for h, v in zip(self.headers, row, strict=True))


def format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def row_keys_for(runs: Sequence[RunRecord], rows: Sequence[str] | None = None) -> list[str]:
    """``rows`` as given; else ``method`` plus the settings the sweep varied, without ``method`` when every
    run has the same one and something else varies (an ablation of one method)."""
    if rows:
        return list(rows)
    varied = varying_settings(runs)
    methods = {r.method for r in runs}
    if varied and len(methods) == 1:
        return varied
    return ["method", *varied]


def budget_table(
    runs: Sequence[RunRecord],
    metric: str,
    rows: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    scale: float | None = None,
    budgets: Sequence[int] | None = None,
) -> BudgetTable:
    """Settings × budgets for ``metric``: mean and sample std over the seeds of each setting.

    Every run counts, finished or not, so the rows and budgets of failed runs appear as gaps. ``methods``
    orders (and filters) the methods; ``scale`` multiplies values when printed (None: ×100 when every value
    lies in [0, 1], i.e. a fraction shown in percent); ``budgets``: the columns (default: every budget a
    run planned or scored).
    """
    runs = [r for r in runs if r.status != SELECTION and (not methods or r.method in methods)]
    keys = row_keys_for(runs, rows)
    by_row: dict[tuple[str, ...], list[RunRecord]] = {}
    for r in runs:
        by_row.setdefault(tuple(format_value(r.setting(k)) for k in keys), []).append(r)
    order = {m: i for i, m in enumerate(methods or [])}

    def row_order(row: tuple[str, ...]) -> tuple[Any, ...]:
        parts = []
        for k, v in zip(keys, row, strict=True):
            parts.append((order.get(v, len(order)), _sort_key(v)) if k == "method" else (0, _sort_key(v)))
        return tuple(parts)

    if budgets:
        budgets = sorted({int(b) for b in budgets})
    else:
        budgets = sorted({b for r in runs for b in (*r.values, *r.planned)})
    cells: dict[tuple[tuple[str, ...], int], Cell] = {}
    values_all: list[float] = []
    for row, members in by_row.items():
        members = one_run_per_seed(members, row)
        for b in budgets:
            got = [
                (r.values[b][metric], r.seed)
                for r in members
                if math.isfinite(r.values.get(b, {}).get(metric, math.nan))  # undefined (NaN) = no value
            ]
            values_all += [v for v, _ in got]
            if got:
                cells[(row, b)] = summarize([v for v, _ in got], sorted((s for _, s in got), key=str))
    if scale is None:
        scale = 100.0 if values_all and all(0.0 <= v <= 1.0 for v in values_all) else 1.0
    return BudgetTable(metric, keys, sorted(by_row, key=row_order), budgets, cells, scale)


#: the paper's headline metric of each task, preferred in this order when no metric is asked for
HEADLINE_METRICS = ("top1", "map", "mAP", "map50", "miou", "mIoU")


def one_run_per_seed(runs: Sequence[RunRecord], row: tuple[str, ...] = ()) -> list[RunRecord]:
    """The runs of one setting with each seed once: a seed run twice (a rerun into another dir) counts
    with its most recent ``metrics.json``; the others are logged, never averaged in."""
    latest: dict[Any, RunRecord] = {}
    for r in sorted(runs, key=lambda r: r.mtime):
        if r.seed in latest and r.values:
            log.warning(
                "setting %s seed %s ran twice: %s replaces %s",
                row,
                r.seed,
                r.directory,
                latest[r.seed].directory,
            )
        if r.values or r.seed not in latest:
            latest[r.seed] = r
    return list(latest.values())


def metrics_of(runs: Sequence[RunRecord]) -> list[str]:
    """Metric names the runs report: headline metrics first (see :data:`HEADLINE_METRICS`), then the
    others sorted, counts (``n_*``) last."""
    seen = {m for r in runs for b in r.values for m in r.values[b]}
    head = [m for m in HEADLINE_METRICS if m in seen]
    rest = sorted(seen - set(head), key=lambda m: (m.startswith("n_"), m))
    return head + rest


# ------------------------------------------------------------------------------------------------ writers


def to_markdown(table: BudgetTable, digits: int = 1) -> str:
    """A Markdown table: the row keys, then one column per budget with ``mean ± std (n)``."""
    head = "| " + " | ".join([*table.headers, *map(str, table.budgets)]) + " |"
    lines = [head, "|" + "---|" * len(table.row_keys) + "---:|" * len(table.budgets)]
    for row in table.rows:
        cells = []
        for b in table.budgets:
            c = table.cell(row, b)
            cells.append(c.format(digits, table.scale) + (f" ({c.n})" if c.n else ""))
        lines.append("| " + " | ".join([*row, *cells]) + " |")
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("$", r"\$"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("–", "--"),
    ):
        text = text.replace(a, b)
    return text


def to_latex(table: BudgetTable, digits: int = 1, best: str | None = "max", caption: str = "") -> str:
    """A booktabs ``tabular``: ``$mean \\pm std$`` with the number of seeds in small type; the best mean
    of each budget column in bold (``best``: "max", "min" or None)."""
    n_keys = len(table.row_keys)
    winners: dict[int, set[tuple[str, ...]]] = {}
    for b in table.budgets:
        filled = [(table.cell(r, b).mean, r) for r in table.rows if table.cell(r, b).n]
        if best in ("max", "min") and filled:
            target = (max if best == "max" else min)(m for m, _ in filled)
            winners[b] = {r for m, r in filled if m == target}
    heads = [LATEX_HEADER_NAMES.get(h, _latex_escape(h)) for h in table.headers]
    lines = [r"\begin{tabular}{" + "l" * n_keys + "r" * len(table.budgets) + "}", r"\toprule"]
    lines.append(" & ".join([*heads, *map(str, table.budgets)]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = []
        for b in table.budgets:
            c = table.cell(row, b)
            if not c.n:
                cells.append("--")
                continue
            body = f"{c.mean * table.scale:.{digits}f}"
            if c.n > 1:
                body += rf" \pm {c.std * table.scale:.{digits}f}"
            if row in winners.get(b, set()):
                body = rf"\mathbf{{{body}}}"
            cells.append(f"${body}$" + rf" {{\scriptsize ({c.n})}}")
        lines.append(" & ".join([*(_latex_escape(v) for v in row), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(f"% {caption}")
    return "\n".join(lines)


CSV_FIELDS = ("budget", "metric", "mean", "std", "n", "seeds", "scale")


def csv_rows(table: BudgetTable) -> list[dict[str, str]]:
    """Long format: one row per (setting, budget) with the raw (unscaled) mean and std; gaps have n = 0."""
    out = []
    for row in table.rows:
        for b in table.budgets:
            c = table.cell(row, b)
            out.append(
                {
                    **dict(zip(table.row_keys, row, strict=True)),
                    "budget": str(b),
                    "metric": table.metric,
                    "mean": repr(c.mean) if c.n else "",
                    "std": repr(c.std) if c.n else "",
                    "n": str(c.n),
                    "seeds": " ".join(str(s) for s in c.seeds),
                    "scale": repr(table.scale),
                }
            )
    return out


def write_csv(rows: Sequence[dict[str, str]], path: Path) -> Path:
    """Write dict rows (columns: the union of their keys, in first-seen order) atomically."""
    fields: dict[str, None] = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(Path(path), buffer.getvalue().encode())
    return Path(path)


def plot(table: BudgetTable, paths: Sequence[Path], title: str = "") -> list[Path]:
    """Metric vs budget, one line per row with a ±1 std band over seeds; a gap breaks the line.

    Written to every path in ``paths`` (format from the suffix: .png, .svg, .pdf), each atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    markers = "osD^vP*Xh<>"
    for i, row in enumerate(table.rows):
        cells = [table.cell(row, b) for b in table.budgets]
        if not any(c.n for c in cells):
            continue
        mean = [c.mean * table.scale if c.n else math.nan for c in cells]
        std = [c.std * table.scale if c.n else math.nan for c in cells]
        (line,) = ax.plot(
            table.budgets, mean, marker=markers[i % len(markers)], color=f"C{i % 10}", label=table.label(row)
        )
        ax.fill_between(
            table.budgets,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.18,
            linewidth=0,
        )
    if len(table.budgets) > 1 and table.budgets[-1] / max(table.budgets[0], 1) > 4:
        ax.set_xscale("log")
    ax.set_xticks(table.budgets, [str(b) for b in table.budgets])
    ax.minorticks_off()
    ax.set_xlabel("labeled images (budget)")
    ax.set_ylabel(table.metric + (" (%)" if table.scale == 100.0 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(textwrap.fill(title, 72), fontsize="medium")
    fig.tight_layout()
    written = []
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp)
        tmp.replace(path)
        written.append(path)
    plt.close(fig)
    return written


# ------------------------------------------------------------------------------------- efficiency


@dataclass
class EfficiencyRow:
    """Wall times of the runs of one setting (seconds, mean ± std over its runs)."""

    row: tuple[str, ...]
    runs: int
    devices: list[str]
    selection: Cell  # the selector's own wall time (every cycle's selection for the traditional methods)
    acquisition: Cell  # what choosing the labeled set cost: selection + the trainings whose models chose it
    stages: dict[str, Cell]  # run_info.json timings: extraction_s, clusters_s, sampling_s, ...
    other: dict[str, Cell]  # the other metrics.json seconds (fit, eval, total, whatever a runner adds)
    device_hours: float  # acquisition time × devices per run / 3600, summed over the runs
    cold: int  # runs whose features were extracted (not read from the cache)


@dataclass
class EfficiencyTable:
    row_keys: list[str]
    rows: list[EfficiencyRow]
    stage_keys: list[str]
    other_keys: list[str]

    @property
    def headers(self) -> list[str]:
        return [HEADER_NAMES.get(k, k.split(".")[-1]) for k in self.row_keys]


def _selection_seconds(run: RunRecord) -> float | None:
    if "selection" in run.seconds:
        return run.seconds["selection"]
    totals = [
        float(i["timings"]["selection_total_s"])
        for i in run.run_infos
        if "selection_total_s" in i.get("timings", {})
    ]
    return sum(totals) if totals else None


def _acquisition_seconds(run: RunRecord) -> float | None:
    """``seconds.acquisition`` of a cycle run (selections plus the trainings that chose the set); for a
    one-pass run, its selection time (no training is needed to choose)."""
    if "acquisition" in run.seconds:
        return run.seconds["acquisition"]
    return _selection_seconds(run)


def _device_label(info: dict[str, Any]) -> str:
    device = str(info.get("device", "?"))
    name = str(info.get("device_name") or "").strip()
    return f"{device} ({name})" if name else device


def efficiency_table(runs: Sequence[RunRecord], row_keys: Sequence[str]) -> EfficiencyTable:
    """Wall time of choosing the labeled set, per setting: the selection, its stages (extraction /
    knowledge clusters / sampling, from ``run_info.json``), the acquisition (for the traditional methods'
    cycle runs, ``seconds.acquisition``: every selection plus the trainings whose models made them; for
    one-pass methods, the selection), the other wall times in ``metrics.json`` ``seconds`` (fit, eval,
    total, whatever a runner adds), and the acquisition's device-hours (``world_size`` devices when a run
    records it, else one). Only finished runs (and geal-select runs) count: the report lists the others."""
    keys = list(row_keys)
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    runs = [r for r in runs if r.status in (DONE, SELECTION)]  # an unfinished run's times are partial
    for r in runs:
        if _selection_seconds(r) is not None:
            groups.setdefault(tuple(format_value(r.setting(k)) for k in keys), []).append(r)
    stage_keys = sorted(
        {k for r in runs for i in r.run_infos for k in i.get("timings", {})} - {"selection_total_s"}
    )
    other_keys = sorted({k for r in runs for k in r.seconds} - {"selection", "acquisition"})
    out = []
    for row in sorted(groups, key=lambda row: tuple(_sort_key(v) for v in row)):
        members = groups[row]
        # every member has a selection time (the grouping above), hence an acquisition time
        sel = [float(s) for r in members if (s := _selection_seconds(r)) is not None]
        acq = [float(a) for r in members if (a := _acquisition_seconds(r)) is not None]
        stages = {
            k: summarize(
                [
                    sum(float(i["timings"][k]) for i in r.run_infos if k in i.get("timings", {}))
                    for r in members
                    if any(k in i.get("timings", {}) for i in r.run_infos)
                ]
            )
            for k in stage_keys
        }
        other = {k: summarize([r.seconds[k] for r in members if k in r.seconds]) for k in other_keys}
        world = [max((int(i.get("world_size", 1)) for i in r.run_infos), default=1) for r in members]
        devices = sorted({_device_label(i) for r in members for i in r.run_infos})
        cold = sum(
            any(i.get("features", {}).get("extraction_cache_hit") is False for i in r.run_infos)
            for r in members
        )
        out.append(
            EfficiencyRow(
                row,
                len(members),
                devices,
                summarize(sel),
                summarize(acq),
                stages,
                other,
                sum(s * w for s, w in zip(acq, world, strict=True)) / 3600.0,
                cold,
            )
        )
    return EfficiencyTable(keys, out, stage_keys, other_keys)


def _seconds(c: Cell) -> str:
    if not c.n:
        return "–"
    return f"{c.mean:.2f}" if c.n == 1 else f"{c.mean:.2f} ± {c.std:.2f}"


def efficiency_markdown(table: EfficiencyTable) -> str:
    stage_heads = [f"{k.removesuffix('_s')} (s)" for k in table.stage_keys]
    other_heads = [f"{k} (s)" for k in table.other_keys]
    heads = [
        *table.headers,
        "runs",
        "selection (s)",
        *stage_heads,
        "feature extraction",
        "acquisition (s)",
        *other_heads,
        "device-hours",
        "device",
    ]
    lines = [
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(table.row_keys) + "---:|" * (len(heads) - 1 - len(table.row_keys)) + "---|",
    ]
    for r in table.rows:
        cells = [
            *r.row,
            str(r.runs),
            _seconds(r.selection),
            *(_seconds(r.stages[k]) for k in table.stage_keys),
            f"{r.cold} of {r.runs} cold",
            _seconds(r.acquisition),
            *(_seconds(r.other[k]) for k in table.other_keys),
            f"{r.device_hours:.4g}",
            "; ".join(r.devices) or "?",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def efficiency_latex(table: EfficiencyTable) -> str:
    heads = [
        *(LATEX_HEADER_NAMES.get(h, _latex_escape(h)) for h in table.headers),
        "runs",
        "selection (s)",
        "acquisition (s)",
        "device-hours",
        "device",
    ]
    lines = [
        r"\begin{tabular}{" + "l" * len(table.row_keys) + "rrrrl}",
        r"\toprule",
        " & ".join(heads) + r" \\",
        r"\midrule",
    ]
    for r in table.rows:
        cells = [
            *(_latex_escape(v) for v in r.row),
            str(r.runs),
            *(
                f"${c.mean:.2f}" + (rf" \pm {c.std:.2f}" if c.n > 1 else "") + "$"
                for c in (r.selection, r.acquisition)
            ),
            f"{r.device_hours:.4g}",
            _latex_escape("; ".join(r.devices) or "?"),
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def efficiency_csv_rows(table: EfficiencyTable) -> list[dict[str, str]]:
    out = []
    for r in table.rows:
        row: dict[str, str] = dict(zip(table.row_keys, r.row, strict=True))
        row.update(
            runs=str(r.runs),
            selection_s_mean=repr(r.selection.mean),
            selection_s_std=repr(r.selection.std),
            acquisition_s_mean=repr(r.acquisition.mean),
            acquisition_s_std=repr(r.acquisition.std),
        )
        for k in table.stage_keys:
            row[f"{k}_mean"] = repr(r.stages[k].mean)
        for k in table.other_keys:
            row[f"{k}_s_mean"] = repr(r.other[k].mean) if r.other[k].n else ""
        row.update(device_hours=repr(r.device_hours), cold_runs=str(r.cold), devices="; ".join(r.devices))
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------- wandb


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
            columns = list(rows[0]) if rows else [*table.row_keys, *CSV_FIELDS]
            data = [[r.get(c, "") for c in columns] for r in rows]
            run.log({f"table/{table.metric}": wandb.Table(columns=columns, data=data)})
        if efficiency is not None and efficiency.rows:
            rows = efficiency_csv_rows(efficiency)
            columns = list(rows[0])
            run.log(
                {
                    "table/efficiency": wandb.Table(
                        columns=columns, data=[[r.get(c, "") for c in columns] for r in rows]
                    )
                }
            )
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
        for path in plot(table, [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"], title=options.title):
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
            "whose models made them. Device-hours: acquisition × devices / 3600, summed over the runs.",
        ]
        latex += ["% selection wall time (s) and device-hours", efficiency_latex(eff), ""]
        files["efficiency_csv"] = write_csv(efficiency_csv_rows(eff), out_dir / "efficiency.csv")
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
            "cells": csv_all,
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
