"""Metric-vs-budget plots of a :class:`~geal.report.tables.BudgetTable` (``geal-report``'s PNG / SVG).

A method has the same colour and display name in every plot (:mod:`geal.report.style`); the settings of one
method (an ablation's τ, K...) are shades of its colour with their own line styles."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geal.report.style import DEFAULT_COLORS, MethodStyle, shades
from geal.report.tables import BudgetTable

MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ("-", "--", ":", "-.")


def _marker(method: str) -> str:
    """A fixed marker per method (shipped ones by their place in the palette, others by name)."""
    names = list(DEFAULT_COLORS)
    index = names.index(method) if method in names else sum(method.encode())
    return MARKERS[index % len(MARKERS)]


def legend_label(table: BudgetTable, row: tuple[str, ...], style: MethodStyle) -> str:
    """``GEAL, 3 seeds`` / ``GEAL, τ=0.4, 1 seed``: the display name, the row's other settings, and how
    many seeds gave a value (the tables say which budget has how many)."""
    method = table.row_methods.get(row, "")
    parts = [style.name(method)] if method else []
    for key, header, value in zip(table.row_keys, table.headers, row, strict=True):
        if key != "method":
            if value != "–":  # a setting this row's method does not have
                parts.append(f"{header}={value}")
        elif not method:
            parts.append(style.name(value))
    seeds = {s for b in table.budgets for s in table.cell(row, b).seeds}
    n = len(seeds) or max(table.cell(row, b).n for b in table.budgets)
    parts.append(f"{n} seed{'s' if n != 1 else ''}")
    return ", ".join(parts)


def figure(table: BudgetTable, title: str = "", style: MethodStyle | None = None) -> Any:
    """The Matplotlib figure: metric vs budget, one line per row with a ±1 std band over seeds; a gap
    breaks the line. Colours from the rows' methods (never from their order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = style or MethodStyle()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    shown = [row for row in table.rows if any(table.cell(row, b).n for b in table.budgets)]
    by_method: dict[str, list[tuple[str, ...]]] = {}
    for row in shown:
        by_method.setdefault(table.row_methods.get(row, ""), []).append(row)
    for row in shown:
        method = table.row_methods.get(row, "")
        siblings = by_method[method]
        k = siblings.index(row)
        colour = shades(style.color(method), len(siblings))[k] if method else f"C{k % 10}"
        cells = [table.cell(row, b) for b in table.budgets]
        mean = [c.mean * table.scale if c.n else math.nan for c in cells]
        std = [c.std * table.scale if c.n else math.nan for c in cells]
        ax.plot(
            table.budgets,
            mean,
            marker=_marker(method),
            linestyle=LINESTYLES[k % len(LINESTYLES)],
            color=colour,
            label=legend_label(table, row, style),
        )
        ax.fill_between(
            table.budgets,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=colour,
            alpha=0.15,
            linewidth=0,
        )
    if len(table.budgets) > 1 and table.budgets[-1] / max(table.budgets[0], 1) > 4:
        ax.set_xscale("log")
    ax.set_xticks(table.budgets, [str(b) for b in table.budgets])
    ax.minorticks_off()
    ax.set_xlabel("labeled images (budget)")
    ax.set_ylabel(table.metric + (" (%)" if table.scale == 100.0 else ""))
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize="small", loc="best")
    if title:
        lines = math.ceil(len(title) / 72)  # balanced lines, no one-word last line
        ax.set_title(textwrap.fill(title, math.ceil(len(title) / lines) + 6), fontsize="medium")
    fig.tight_layout()
    return fig


def plot(
    table: BudgetTable, paths: Sequence[Path], title: str = "", style: MethodStyle | None = None
) -> list[Path]:
    """:func:`figure` written to every path in ``paths`` (format from the suffix: .png, .svg, .pdf), each
    atomically."""
    import matplotlib.pyplot as plt

    fig = figure(table, title, style)
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
