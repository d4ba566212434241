"""Metric-vs-budget plots of a :class:`~geal.report.tables.BudgetTable` (``geal-report``'s PNG / SVG)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from geal.report.tables import BudgetTable


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
