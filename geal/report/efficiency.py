"""The efficiency table of a sweep: what choosing the labeled set cost per setting (selection wall time and
its stages, acquisition, device-hours), and its Markdown / LaTeX / CSV writers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geal.report.results import DONE, SELECTION, RunRecord
from geal.report.tables import (
    HEADER_NAMES,
    LATEX_HEADER_NAMES,
    Cell,
    format_value,
    latex_escape,
    sort_key,
    summarize,
)


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
    for row in sorted(groups, key=lambda row: tuple(sort_key(v) for v in row)):
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


def format_duration(seconds: float) -> str:
    """A duration as a plain number in the unit its size asks for: ``0.28 s``, ``4.73 min``, ``2.00 h``
    (never ``7.883e-05`` hours)."""
    if not math.isfinite(seconds):
        return "–"
    if abs(seconds) < 60:
        return f"{seconds:.2f} s"
    if abs(seconds) < 3600:
        return f"{seconds / 60:.2f} min"
    return f"{seconds / 3600:.2f} h"


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
        "device time",
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
            format_duration(r.device_hours * 3600.0),
            "; ".join(r.devices) or "?",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def efficiency_latex(table: EfficiencyTable) -> str:
    heads = [
        *(LATEX_HEADER_NAMES.get(h, latex_escape(h)) for h in table.headers),
        "runs",
        "selection (s)",
        "acquisition (s)",
        "device time",
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
            *(latex_escape(v) for v in r.row),
            str(r.runs),
            *(
                f"${c.mean:.2f}" + (rf" \pm {c.std:.2f}" if c.n > 1 else "") + "$"
                for c in (r.selection, r.acquisition)
            ),
            format_duration(r.device_hours * 3600.0),
            latex_escape("; ".join(r.devices) or "?"),
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
