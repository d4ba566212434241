"""Benchmark the batched per-image k-means against a per-image loop of the same algorithm, same run.

``geal.method.kmeans.batched_kmeans`` (all images at once, in cache-sized chunks on a CPU) vs
``geal.method.kmeans.per_image_kmeans`` (the same steps — assignment, ``index_add`` centroid update,
convergence
test — on one image at a time), from the same initial centroids. Cases: MNIST-like (≈30 kept patches per
image, as τ=0.5 keeps on MNIST digits) and VOC-like (≈100 kept patches), K=25, 384 dims; "with init" also
times the kmeans++ seeding (the loop reference seeds each image on its own, from the same random numbers);
"seeding alone" compares the seeding's two routes (all P×P distances of an image in one batched product, vs
one matrix-vector product per seed).

Usage: python scripts/bench_kmeans.py [--device cpu] [--images 1000] [--threads N] [--seed 0]
       [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from bench_record import BenchRecorder, add_out_argument

import geal.method.kmeans
from geal.method.kmeans import batched_kmeans, init_centroids, per_image_kmeans
from geal.util.cores import usable_cores


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def clustered_tokens(n: int, p: int, dim: int, seed: int) -> torch.Tensor:
    """Kept patch tokens (n,p,dim): a few object parts per image plus noise (k-means has work to do)."""
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(n, 12, dim, generator=g)
    which = torch.randint(12, (n, p), generator=g)
    return parts.gather(1, which[..., None].expand(n, p, dim)) + 0.5 * torch.randn(n, p, dim, generator=g)


def bench(
    rec: BenchRecorder, name: str, n: int, p: int, k: int, dim: int, seed: int, device: torch.device
) -> None:
    case = {"case": name, "images": n, "points": p, "dim": dim, "k": k}
    pts = clustered_tokens(n, p, dim, seed).to(device)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(k + 1, p // 2), p + 1, (n,), generator=g)  # images keep different counts
    mask = (torch.arange(p)[None, :] < lengths[:, None]).to(device)
    c0 = init_centroids(pts, mask, k, generator=torch.Generator().manual_seed(seed))
    batched_kmeans(pts[:8], mask[:8], k, initial_centroids=c0[:8])  # warm-up
    a, t_b = timed(lambda: batched_kmeans(pts, mask, k, initial_centroids=c0), device)
    b, t_l = timed(lambda: per_image_kmeans(pts, mask, k, initial_centroids=c0), device)
    diff = float((a.centroids - b.centroids).abs().max())
    same = torch.equal(a.assignments, b.assignments)
    rec.emit(
        "kmeans_same_init",
        f"kmeans {name:10s} {n} img x {p} points x {dim}, K={k}, from the same init: batched "
        f"{1e3 * t_b:.0f} ms, per-image loop {1e3 * t_l:.0f} ms, ratio {t_l / t_b:.1f}x | max centroid "
        f"difference {diff:.2e}, same assignments: {same}",
        **case,
        batched_ms=1e3 * t_b,
        loop_ms=1e3 * t_l,
        ratio=t_l / t_b,
        max_centroid_difference=diff,
        same_assignments=same,
    )
    gen = lambda: torch.Generator().manual_seed(seed + 1)  # noqa: E731
    a, t_g = timed(lambda: init_centroids(pts, mask, k, generator=gen()), device)
    route = geal.method.kmeans._GRAM_MAX_POINTS_PER_SEED
    geal.method.kmeans._GRAM_MAX_POINTS_PER_SEED = 0  # the reference: one matrix-vector product per seed
    try:
        b, t_s = timed(lambda: init_centroids(pts, mask, k, generator=gen()), device)
    finally:
        geal.method.kmeans._GRAM_MAX_POINTS_PER_SEED = route
    ours_route = "all distances at once" if p <= route * k else "one product per seed"
    same = torch.equal(a, b)
    rec.emit(
        "kmeans_seeding",
        f"kmeans {name:10s} {n} img x {p} points x {dim}, K={k}, kmeans++ seeding alone: ours "
        f"({ours_route}) {1e3 * t_g:.0f} ms, "
        f"one product per seed {1e3 * t_s:.0f} ms, ratio {t_s / t_g:.1f}x | same seeds: {same}",
        **case,
        route=ours_route,
        ours_ms=1e3 * t_g,
        per_seed_ms=1e3 * t_s,
        ratio=t_s / t_g,
        same_seeds=same,
    )
    a, t_b = timed(lambda: batched_kmeans(pts, mask, k, generator=gen()), device)
    b, t_l = timed(lambda: per_image_kmeans(pts, mask, k, generator=gen()), device)
    same = torch.equal(a.centroids, b.centroids)
    rec.emit(
        "kmeans_with_init",
        f"kmeans {name:10s} {n} img x {p} points x {dim}, K={k}, with kmeans++ init: batched "
        f"{1e3 * t_b:.0f} ms, per-image loop {1e3 * t_l:.0f} ms, ratio {t_l / t_b:.1f}x | same centroids: "
        f"{same}",
        **case,
        batched_ms=1e3 * t_b,
        loop_ms=1e3 * t_l,
        ratio=t_l / t_b,
        same_centroids=same,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    add_out_argument(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# bench_kmeans: torch {torch.__version__}, device {device}, "
        f"torch threads {torch.get_num_threads()}, "
        f"cpu cores {os.cpu_count()} (usable {usable_cores()}), "
        f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        flush=True,
    )
    rec = BenchRecorder(
        "bench_kmeans", args.out, device=str(device), torch_threads=torch.get_num_threads(), seed=args.seed
    )
    bench(rec, "MNIST-like", args.images, 30, 25, 384, args.seed, device)
    bench(rec, "VOC-like", args.images, 100, 25, 384, args.seed, device)


if __name__ == "__main__":
    main()
