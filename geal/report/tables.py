"""The paper's metric-vs-budget tables from the runs of a sweep, and their Markdown / LaTeX / CSV writers.

Runs are read by :mod:`geal.report.results` (``metrics.json``, ``run_info.json``, ``.hydra/``,
``multirun.yaml``); :mod:`geal.report.sweep_report` writes a whole report (``geal-report``) from these tables,
:mod:`geal.report.plots` and :mod:`geal.report.efficiency`.
A table has one row per setting (the method, plus any config key the sweep varied: τ, K, distance... — the
layout of the paper's ablation table) and one column per budget; a cell is the mean ± sample std over seeds
with the number of seeds. Runs of one setting and seed in several folders (a study extended with more
budgets) are merged, budgets that two runs scored differently listed as conflicts (:func:`merge_seeds`).
Runs that did not finish leave gaps (``–``, or fewer seeds in the cell) and are listed under every table.
Writers: Markdown, CSV (long format), LaTeX (booktabs).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geal.report.results import SELECTION, RunRecord, varying_settings
from geal.util.io import atomic_write_bytes

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


@dataclass(frozen=True)
class Conflict:
    """One budget of one seed of one setting scored differently by two or more runs (a study extended
    into another folder that reran a budget): ``values`` as (value, run dir), oldest first; the table
    shows the newest."""

    row: tuple[str, ...]
    seed: int | None
    budget: int
    metric: str
    values: tuple[tuple[float, Path], ...]


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
    conflicts: list[Conflict] = field(default_factory=list)
    row_methods: dict[tuple[str, ...], str] = field(default_factory=dict)  # the method of a one-method row

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


def sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def row_keys_for(runs: Sequence[RunRecord], rows: Sequence[str] | None = None) -> list[str]:
    """``rows`` as given (with ``method`` put first when the runs have more than one method and ``rows``
    lacks it: rows never merge two methods); else ``method`` plus the settings the sweep varied, without
    ``method`` when every run has the same one and something else varies (an ablation of one method)."""
    methods = {r.method for r in runs}
    if rows:
        return list(rows) if "method" in rows or len(methods) <= 1 else ["method", *rows]
    varied = varying_settings(runs)
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
            parts.append((order.get(v, len(order)), sort_key(v)) if k == "method" else (0, sort_key(v)))
        return tuple(parts)

    if budgets:
        budgets = sorted({int(b) for b in budgets})
    else:
        budgets = sorted({b for r in runs for b in (*r.values, *r.planned)})
    cells: dict[tuple[tuple[str, ...], int], Cell] = {}
    conflicts: list[Conflict] = []
    values_all: list[float] = []
    for row, members in by_row.items():
        merged = merge_seeds(members, metric, row)
        for b in budgets:
            got = [(seed.values[b][-1][0], seed.seed) for seed in merged if b in seed.values]
            values_all += [v for v, _ in got]
            if got:
                cells[(row, b)] = summarize([v for v, _ in got], sorted((s for _, s in got), key=str))
        conflicts += [
            Conflict(row, seed.seed, b, metric, tuple(seed.values[b]))
            for seed in merged
            for b in sorted(seed.values)
            if len(seed.values[b]) > 1
        ]
    if scale is None:
        scale = 100.0 if values_all and all(0.0 <= v <= 1.0 for v in values_all) else 1.0
    row_methods = {
        row: members[0].method for row, members in by_row.items() if len({r.method for r in members}) == 1
    }
    return BudgetTable(
        metric, keys, sorted(by_row, key=row_order), budgets, cells, scale, conflicts, row_methods
    )


@dataclass
class SeedValues:
    """The values of one seed of one setting, merged over every run of it: budget → [(value, run dir)],
    oldest first; the last is the value shown, more than one is a conflict."""

    seed: int | None
    values: dict[int, list[tuple[float, Path]]]


def merge_seeds(runs: Sequence[RunRecord], metric: str, row: tuple[str, ...] = ()) -> list[SeedValues]:
    """The runs of one setting merged per seed: a study extended into another folder (budgets [10, 20, 50]
    in one run dir, [100] in another) gives one seed with every budget. A budget that two runs scored with
    different values keeps the value of the most recent ``metrics.json`` and is returned as a conflict
    (``len(values[b]) > 1``, oldest first): never averaged in, never dropped silently. NaN (undefined,
    e.g. mIoU with no class present) is no value."""
    merged: dict[Any, dict[int, list[tuple[float, Path]]]] = {}
    for r in sorted(runs, key=lambda r: r.mtime):  # oldest first: the newest value ends last
        seen = merged.setdefault(r.seed, {})
        for b, metrics in r.values.items():
            v = metrics.get(metric, math.nan)
            if not math.isfinite(v):
                continue
            have = seen.setdefault(b, [])
            # the same result again (a rerun, a copied run dir) is no conflict: one entry, now the newest
            have[:] = [(o, d) for o, d in have if not math.isclose(v, o, rel_tol=1e-9, abs_tol=1e-12)]
            have.append((v, r.directory))
    out = []
    for seed, values in merged.items():
        for b, got in values.items():
            if len(got) > 1:
                log.warning(
                    "setting %s seed %s budget %s: runs disagree (%s); the newest is shown",
                    row,
                    seed,
                    b,
                    ", ".join(f"{v:g} in {d}" for v, d in got),
                )
        out.append(SeedValues(seed, values))
    return out


#: the paper's headline metric of each task, preferred in this order when no metric is asked for
HEADLINE_METRICS = ("top1", "map", "mAP", "map50", "miou", "mIoU")


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


def latex_escape(text: str) -> str:
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
    heads = [LATEX_HEADER_NAMES.get(h, latex_escape(h)) for h in table.headers]
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
        lines.append(" & ".join([*(latex_escape(v) for v in row), *cells]) + r" \\")
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


def json_cells(table: BudgetTable) -> list[dict[str, Any]]:
    """:func:`csv_rows` with numbers as JSON numbers (``report.json``): budget and n ints, mean and std
    floats (null for a gap), seeds a list; setting values that are numbers (τ, K) as numbers."""
    out: list[dict[str, Any]] = []
    for row in table.rows:
        settings = {
            k: (v if k == "method" else _json_value(v)) for k, v in zip(table.row_keys, row, strict=True)
        }
        for b in table.budgets:
            c = table.cell(row, b)
            out.append(
                {
                    **settings,
                    "budget": int(b),
                    "metric": table.metric,
                    "mean": float(c.mean) if c.n else None,
                    "std": float(c.std) if c.n else None,
                    "n": int(c.n),
                    "seeds": list(c.seeds),
                    "scale": float(table.scale),
                }
            )
    return out


def _json_value(printed: str) -> Any:
    """A setting as printed in a table back to a JSON value where it is one (``0.4`` → 0.4, ``–`` → null);
    text stays text."""
    if printed == "–":
        return None
    try:
        return json.loads(printed)
    except ValueError:
        return printed


def conflicts_markdown(conflicts: Sequence[Conflict]) -> str:
    """The list of budgets two runs of one setting and seed scored differently (empty when none)."""
    if not conflicts:
        return ""
    lines = [
        f"Conflicting results ({len(conflicts)}): the same setting, seed and budget scored differently by "
        f"two runs; the tables show the newest (the last listed):",
        "",
    ]
    for c in conflicts:
        got = "; ".join(f"{v:.6g} in `{d}`" for v, d in c.values)
        lines.append(f"- {c.metric}, {', '.join(c.row)}, seed {c.seed}, budget {c.budget}: {got}")
    return "\n".join(lines)


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
