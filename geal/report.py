"""Tables and plots of a sweep, read only from its runs' ``metrics.json`` files.

A run dir holds ``metrics.json`` (written by ``geal-run``): the selector, the seed and, per budget, the
task's metrics. :func:`collect` gathers every run below a folder, :func:`budget_table` turns them into a
methods × budgets table of mean ± std over seeds (with the number of seeds per cell), and the writers give
Markdown, CSV and a metric-vs-budget plot with ±1 std bands. Runs that started but left no metrics
(``.hydra/`` without ``metrics.json``) are listed as missing, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geal.store import atomic_write_bytes


@dataclass(frozen=True)
class RunRecord:
    """One run: which method and seed, and its metric value per budget."""

    directory: Path
    method: str
    seed: int
    values: dict[int, dict[str, float]]  # budget -> {metric: value}
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Collected:
    runs: list[RunRecord]
    missing: list[Path]  # run dirs without metrics.json (failed or still running)


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    n: int

    def format(self, digits: int = 1, scale: float = 100.0) -> str:
        """``mean ± std`` (scaled, e.g. to percent); just ``mean`` for a single seed; ``–`` when empty."""
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


@dataclass
class BudgetTable:
    metric: str
    methods: list[str]
    budgets: list[int]
    cells: dict[tuple[str, int], Cell]

    def cell(self, method: str, budget: int) -> Cell:
        return self.cells.get((method, budget), Cell(math.nan, math.nan, 0))


def read_metrics(path: Path) -> RunRecord:
    """Parse one ``metrics.json`` (ValueError naming the file when it is not one)."""
    try:
        doc = json.loads(Path(path).read_text())
        values = {int(r["budget"]): {k: float(v) for k, v in r["metrics"].items()} for r in doc["results"]}
        return RunRecord(
            directory=Path(path).parent,
            method=str(doc.get("method") or doc["selector"]),
            seed=int(doc["seed"]),
            values=values,
            seconds={k: float(v) for k, v in (doc.get("seconds") or {}).items()},
        )
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a geal-run metrics.json ({type(err).__name__}: {err})") from err


def collect(root: Path) -> Collected:
    """Every run below ``root``: those with ``metrics.json`` and those that started but have none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: pass a geal-run output or multirun dir")
    runs = [read_metrics(p) for p in sorted(root.rglob("metrics.json"))]
    done = {r.directory for r in runs}
    missing = sorted(p.parent for p in root.rglob(".hydra") if p.parent not in done)
    return Collected(runs, missing)


def budget_table(runs: Sequence[RunRecord], metric: str, methods: Sequence[str] | None = None) -> BudgetTable:
    """Methods × budgets, mean and sample std over seeds (std 0 for one seed)."""
    order = list(methods) if methods else sorted({r.method for r in runs})
    budgets = sorted({b for r in runs for b in r.values})
    cells: dict[tuple[str, int], Cell] = {}
    for method in order:
        for budget in budgets:
            vals = [
                r.values[budget][metric]
                for r in runs
                if r.method == method and budget in r.values and metric in r.values[budget]
            ]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            cells[(method, budget)] = Cell(mean, std, len(vals))
    return BudgetTable(metric, order, budgets, cells)


def to_markdown(table: BudgetTable, digits: int = 1, scale: float = 100.0) -> str:
    """A Markdown table: one row per method, one column per budget, ``mean ± std`` and ``(n)`` seeds."""
    head = "| method | " + " | ".join(str(b) for b in table.budgets) + " |"
    lines = [head, "|---|" + "---:|" * len(table.budgets)]
    for method in table.methods:
        cells = []
        for b in table.budgets:
            c = table.cell(method, b)
            cells.append(c.format(digits, scale) + (f" ({c.n})" if c.n else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(table: BudgetTable, path: Path) -> Path:
    """Long-format CSV: method, budget, metric, mean, std, n (one row per filled cell)."""
    rows = [["method", "budget", "metric", "mean", "std", "n"]]
    for method in table.methods:
        for b in table.budgets:
            c = table.cell(method, b)
            if c.n:
                rows.append([method, str(b), table.metric, repr(c.mean), repr(c.std), str(c.n)])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    atomic_write_bytes(Path(path), buffer.getvalue().encode())
    return Path(path)


def plot(table: BudgetTable, path: Path, title: str = "", scale: float = 100.0) -> Path:
    """Metric vs budget per method, shaded ±1 std over seeds (PNG or SVG by the suffix of ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in table.methods:
        pts = [(b, table.cell(method, b)) for b in table.budgets if table.cell(method, b).n]
        if not pts:
            continue
        xs = [b for b, _ in pts]
        mean = [c.mean * scale for _, c in pts]
        std = [c.std * scale for _, c in pts]
        (line,) = ax.plot(xs, mean, marker="o", label=method)
        ax.fill_between(
            xs,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.2,
        )
    ax.set_xscale("log")
    ax.set_xticks(table.budgets, [str(b) for b in table.budgets])
    ax.set_xlabel("labeled images (budget)")
    ax.set_ylabel(f"{table.metric}" + (" (%)" if scale == 100.0 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def report(root: Path, metric: str, out_dir: Path | None = None, title: str = "") -> dict[str, Any]:
    """Collect ``root``, write ``results.md``, ``results.csv`` and ``results.png`` into ``out_dir``
    (default: ``root``); return the table, the Markdown text, the files and the missing runs."""
    found = collect(root)
    if not found.runs:
        raise FileNotFoundError(f"no metrics.json below {root}: did the runs finish?")
    table = budget_table(found.runs, metric)
    out_dir = Path(out_dir or root)
    markdown = to_markdown(table)
    if found.missing:
        markdown += "\n\nMissing runs (no metrics.json): " + ", ".join(str(p) for p in found.missing)
    atomic_write_bytes(out_dir / "results.md", (markdown + "\n").encode())
    files = {
        "markdown": out_dir / "results.md",
        "csv": write_csv(table, out_dir / "results.csv"),
        "plot": plot(table, out_dir / "results.png", title=title),
    }
    return {"table": table, "markdown": markdown, "files": files, "missing": found.missing}
