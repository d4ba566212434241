"""Benchmark GEAL's selection kernels against plain references measured in the same run.

* k-center: ``geal.kcenter.kcenter_greedy`` (running min-distance vector, one chunked matrix product of all
  clusters against the new image's clusters per step) vs the straightforward per-step reference below
  (each step recomputes the distances of all clusters to ALL selected clusters, then min / argmax), on the
  same random knowledge-cluster sets (images × 25 clusters × 384 dims), cosine and euclidean. The reference
  grows with the number of picks (memory and time), so it runs a fixed small number of steps; the ratio
  compares both over that same prefix, and "same picks" checks that both picked the same image ids.
* k-means: ``geal.kmeans.batched_kmeans`` vs ``geal.kmeans.per_image_kmeans`` (the same algorithm, one
  image at a time) from the same initial centroids.

Usage: python scripts/bench_selection.py [--device cpu] [--sizes 2000 20000] [--steps 100]
       [--ref-steps 50 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from geal.kcenter import kcenter_greedy
from geal.kmeans import batched_kmeans, init_centroids, per_image_kmeans


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_clusters(n_images: int, k: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """Random knowledge clusters (n_images, k, dim): 100 classes → image centres → clusters around them."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randn(100, dim, generator=g)
    label = torch.randint(100, (n_images,), generator=g)
    images = classes[label] + 0.7 * torch.randn(n_images, dim, generator=g)
    clusters = images[:, None, :] + 0.5 * torch.randn(n_images, k, dim, generator=g)
    return clusters.to(device)


def reference_kcenter(clusters: torch.Tensor, steps: int, distance: str, seed: int) -> list[int]:
    """Plain per-step k-center, as research code usually writes it.

    The seed image is drawn exactly like ``kcenter_greedy`` draws it (``torch.randint`` over the images with
    a generator seeded with ``seed``), so both runs start from the same image.
    """
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
        if distance == "cosine":
            dist = 1.0 - x @ centres.T
        else:
            dist = torch.cdist(x, centres)
        min_dist = dist.min(dim=1).values
        min_dist[is_sel] = -float("inf")
        selected.append(int(owner[min_dist.argmax()]))
    return selected


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def bench_kcenter(clusters: torch.Tensor, distance: str, steps: int, ref_steps: int, seed: int) -> None:
    device = clusters.device
    n_images, k, dim = clusters.shape
    points = clusters.reshape(-1, dim)
    groups = torch.arange(n_images, device=device).repeat_interleave(k)
    steps = min(steps, n_images)
    ref_steps = min(ref_steps, steps)

    def ours(budget: int):
        return kcenter_greedy(
            points,
            groups,
            budget,
            distance=distance,  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(seed),
        )

    ours(2)  # warm-up
    full, t_full = timed(lambda: ours(steps), device)
    prefix, t_prefix = timed(lambda: ours(ref_steps), device)
    ref, t_ref = timed(lambda: reference_kcenter(clusters, ref_steps, distance, seed), device)
    same = full.order[:ref_steps] == ref and prefix.order == ref
    ms_full, ms_prefix, ms_ref = (
        1e3 * t / n for t, n in ((t_full, steps), (t_prefix, ref_steps), (t_ref, ref_steps))
    )
    print(
        f"kcenter {distance:9s} {n_images:6d} img x {k} clusters x {dim}: "
        f"ours {steps} steps {ms_full:.1f} ms/step | first {ref_steps} steps: "
        f"ours {ms_prefix:.1f} ms/step, "
        f"reference {ms_ref:.1f} ms/step, ratio {ms_ref / ms_prefix:.1f}x | same picks: {same}",
        flush=True,
    )


def bench_kmeans(n_images: int, n_points: int, dim: int, k: int, seed: int, device: torch.device) -> None:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n_images, n_points, dim, generator=g).to(device)
    mask = torch.ones(n_images, n_points, dtype=torch.bool, device=device)
    c0 = init_centroids(pts, mask, k, generator=torch.Generator().manual_seed(seed))
    batched_kmeans(pts[:8], mask[:8], k, initial_centroids=c0[:8])  # warm-up
    a, t_b = timed(lambda: batched_kmeans(pts, mask, k, initial_centroids=c0), device)
    b, t_l = timed(lambda: per_image_kmeans(pts, mask, k, initial_centroids=c0), device)
    diff = float((a.centroids - b.centroids).abs().max())
    same_assign = bool(torch.equal(a.assignments, b.assignments))
    print(
        f"kmeans  euclidean {n_images:6d} img x {n_points} points x {dim}, K={k}: "
        f"batched {1e3 * t_b:.0f} ms, "
        f"per-image loop {1e3 * t_l:.0f} ms, ratio {t_l / t_b:.1f}x | max centroid difference {diff:.2e}, "
        f"same assignments: {same_assign}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="numbers of images")
    ap.add_argument("--steps", type=int, default=100, help="k-center picks for our implementation")
    ap.add_argument(
        "--ref-steps",
        type=int,
        nargs="+",
        default=[50, 20],
        help="picks for the reference, one per size (the last one repeats)",
    )
    ap.add_argument("--clusters", type=int, default=25, help="clusters per image")
    ap.add_argument("--dim", type=int, default=384, help="feature dimension")
    ap.add_argument(
        "--distances", nargs="+", default=["cosine", "euclidean"], choices=["cosine", "euclidean"]
    )
    ap.add_argument("--kmeans-images", type=int, default=1000, help="images for the k-means line (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    print(
        f"# bench_selection: torch {torch.__version__}, device {device}, torch threads "
        f"{torch.get_num_threads()}, cpu cores {os.cpu_count()}, seed {args.seed}",
        flush=True,
    )
    for i, n in enumerate(args.sizes):
        ref_steps = args.ref_steps[min(i, len(args.ref_steps) - 1)]
        clusters = make_clusters(n, args.clusters, args.dim, args.seed, device)
        for distance in args.distances:
            bench_kcenter(clusters, distance, args.steps, ref_steps, args.seed)
        del clusters
    if args.kmeans_images > 0:
        bench_kmeans(args.kmeans_images, 30, args.dim, 25, args.seed, device)


if __name__ == "__main__":
    main()
