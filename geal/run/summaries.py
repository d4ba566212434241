"""The short human summaries the entry points print at the end of a run (not logging: the CLI's output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geal.api.pool import ImagePool
from geal.run.loop import CycleRunOutput
from geal.run.outputs import RunResult


def selection_summary(result: RunResult, pool: ImagePool, stage_times: dict[str, float]) -> str:
    """geal-select: what was picked, classes covered, cache hits, time per stage, where the files are."""
    sel = result.selection
    lines = [f"selected {len(sel.global_ids)} of {len(pool)} images from {pool.name}"]
    shown = ", ".join(pool.ids[i] for i in sel.global_ids[:10])
    lines.append(f"  first picks: {shown}{' ...' if len(sel.global_ids) > 10 else ''}")
    cov = result.run_info.get("class_coverage")
    if cov:
        lines.append(f"  classes covered: {cov['classes_selected']} of {cov['classes_in_pool']} in the pool")
        lines.append(
            "  selected per class: " + ", ".join(f"{k}:{v}" for k, v in cov["selected_histogram"].items())
        )
    feats = result.run_info.get("features") or {}
    if "extraction_cache_hit" in feats:
        clusters = "hit" if feats["clusters_cache_hit"] else "computed"
        if feats.get("clusters_in_extraction"):
            clusters = "computed during extraction"  # (their time is part of the extraction's)
        lines.append(
            f"  feature cache: {'hit' if feats['extraction_cache_hit'] else 'miss (extracted)'}; "
            f"knowledge clusters: {clusters}"
        )
    skipped = feats.get("skipped_images") or []
    if skipped:
        names = ", ".join(str(s.get("image_id")) for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        lines.append(
            f"  skipped images: {len(skipped)} unreadable, never selected ({names}; see run_info.json)"
        )
    if feats.get("refreshed_images"):
        lines.append(f"  feature cache: {feats['refreshed_images']} changed image(s) re-extracted")
    if feats.get("quarantined"):
        lines.append(f"  feature cache: {len(feats['quarantined'])} damaged file(s) quarantined and rebuilt")
    lines.append(
        "  time per stage: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in stage_times.items())
    )
    lines.append(f"  outputs: {Path(result.files['selection']).parent}")
    return "\n".join(lines)


def run_summary(header: dict[str, Any], done: CycleRunOutput, out_dir: Path, one_pass: bool) -> str:
    """geal-run: the metrics of every budget (and, in cycles, each cycle's times), wall times, outputs."""
    title = f"{header['method']} on {header['pool']}, task {header['task']}, seed {header['seed']}"
    lines = [f"{title}:" if one_pass else f"{title}, cycles:"]
    for r in done.results:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
        if one_pass:
            lines.append(f"  budget {r.budget:>6}: {shown}  (fit {r.fit_s:.1f}s)")
        else:
            lines.append(
                f"  cycle {r.cycle:>2}  budget {r.budget:>6}: {shown}  (fit {r.fit_s:.1f}s, select "
                f"{r.select_s:.1f}s, acquisition so far {r.acquisition_s:.1f}s)"
            )
    s = done.seconds
    if one_pass:
        lines.append(f"  selection {s['selection']:.1f}s, total {s['total']:.1f}s")
    else:
        lines.append(f"  selection {s['selection']:.1f}s, fit {s['fit']:.1f}s, total {s['total']:.1f}s")
    lines.append(f"  outputs: {out_dir}")
    return "\n".join(lines)
