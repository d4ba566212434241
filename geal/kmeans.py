"""Batched k-means: every image's point set clustered separately, all images at once.

Point sets are padded to a common length ``P`` and masked, so one call clusters thousands of images with
batched matrix products on the points' device (DESIGN §5: never a Python loop of tiny k-means calls).

Algorithm (per image, identical in the batched code and in the plain per-image reference
:func:`per_image_kmeans`):

* **Images with ≤ k valid points** get those points as their centroids (in their original order, slots
  ``0..n-1``; ``valid`` marks them, the remaining slots are zero and invalid). With ``metric="cosine"`` the
  points are L2-normalised, like every spherical centroid.
* **init** (:func:`init_centroids`): ``"kmeans++"`` draws the first centre uniformly among the valid points,
  then each next one with probability ∝ d² (d: the metric's distance to the nearest chosen centre; uniform
  among the valid points when every d is 0); ``"random"`` draws k distinct valid points uniformly.
* **Lloyd iterations**: assign each valid point to its nearest centroid (euclidean: smallest
  ``‖x‖²+‖c‖²−2x·c``; cosine: largest ``x̂·ĉ``, i.e. spherical k-means), then move each centroid to the mean
  of its points (cosine: the L2-normalised mean). **An empty cluster keeps its previous centroid.** An image
  stops when no centroid moved by more than ``tol`` (L2 norm of the shift, absolute, in feature units); its
  centroids are then frozen while other images go on, so the batched result equals the per-image one.
* A final assignment step gives ``assignments``; ``valid`` marks clusters that own at least one point (an
  empty cluster keeps its last centroid but is marked invalid), so an image has ≤ k valid clusters.

Ties (equal distances) go to the lowest centroid index. All randomness comes from ``generator`` (drawn on
the generator's device and moved to the points' device), so results are deterministic for a given seed.
"""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = ["KMeansResult", "batched_kmeans", "init_centroids", "per_image_kmeans"]

log = logging.getLogger(__name__)

Metric = Literal["euclidean", "cosine"]
Init = Literal["kmeans++", "random"]


class KMeansResult(NamedTuple):
    """centroids (B,k,D); valid (B,k) bool; assignments (B,P) long, -1 where the point is masked."""

    centroids: Tensor
    valid: Tensor
    assignments: Tensor


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, returned on ``device``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def _check(points: Tensor, mask: Tensor, k: int, metric: str, init: str, iters: int, tol: float) -> None:
    if points.ndim != 3:
        raise ValueError(f"points must be (B, P, D), got shape {tuple(points.shape)}")
    if mask.shape != points.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(points.shape[:2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def _prepare(points: Tensor, metric: str) -> Tensor:
    x = points.to(_work_dtype(points))
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=-1)
    return x


def _sq_dist(x: Tensor, c: Tensor, x_sq: Tensor) -> Tensor:
    """(…,P,D) × (…,k,D) → (…,P,k) squared euclidean distances ``‖x‖²+‖c‖²−2x·c`` (clamped at 0)."""
    c_sq = (c * c).sum(-1)
    return (x_sq.unsqueeze(-1) + c_sq.unsqueeze(-2) - 2.0 * (x @ c.transpose(-1, -2))).clamp_min_(0.0)


def _assign(x: Tensor, c: Tensor, x_sq: Tensor, metric: str) -> Tensor:
    """Nearest centroid index per point: (…,P,D), (…,k,D) → (…,P) long (first index on ties)."""
    if metric == "cosine":
        return (x @ c.transpose(-1, -2)).argmax(-1)
    return _sq_dist(x, c, x_sq).argmin(-1)


def _pair_dist(x: Tensor, c: Tensor, x_sq: Tensor, metric: str) -> Tensor:
    """The metric's distance (…,P,D) × (…,m,D) → (…,P,m): euclidean, or 1 − cos on normalised inputs."""
    if metric == "cosine":
        return (1.0 - x @ c.transpose(-1, -2)).clamp_min_(0.0)
    return _sq_dist(x, c, x_sq).sqrt_()


def init_centroids(
    points: Tensor,
    mask: Tensor,
    k: int,
    *,
    metric: Metric = "euclidean",
    init: Init = "kmeans++",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Initial centroids (B,k,D) for every image at once (see the module docstring).

    points (B,P,D); mask (B,P) bool. Rows with fewer than k valid points still get k centroids (repeated
    draws), though :func:`batched_kmeans` replaces them by the points themselves. Cosine centroids are unit.
    """
    _check(points, mask, k, metric, init, 0, 0.0)
    x = _prepare(points, metric)
    B, P, D = x.shape
    dev, dt = x.device, x.dtype
    out = torch.zeros(B, k, D, device=dev, dtype=dt)
    if B == 0 or P == 0:
        return out
    maskf = mask.to(dt)
    rows = torch.arange(B, device=dev)
    if init == "random":
        # k distinct valid points uniformly: the k largest random keys among valid points
        keys = _rand((B, P), generator, dev, dt).masked_fill_(~mask, -1.0)
        idx = keys.topk(min(k, P), dim=1).indices
        if idx.shape[1] < k:  # fewer than k points in the padded set: repeat the first one
            idx = torch.cat([idx, idx[:, :1].expand(B, k - idx.shape[1])], dim=1)
        return x.gather(1, idx.unsqueeze(-1).expand(B, k, D)).clone()
    x_sq = (x * x).sum(-1)
    # first centre: uniform among valid points (all points when a row has none)
    weights = torch.where(maskf.sum(1, keepdim=True) > 0, maskf, torch.ones_like(maskf))
    first = _draw_rows(weights, generator)
    out[:, 0] = x[rows, first]
    mind = _pair_dist(x, out[:, :1], x_sq, metric).squeeze(-1)  # (B,P)
    for j in range(1, k):
        w = mind.square() * maskf
        total = w.sum(1, keepdim=True)
        w = torch.where(total > 0, w, weights)
        pick = _draw_rows(w, generator)
        out[:, j] = x[rows, pick]
        torch.minimum(mind, _pair_dist(x, out[:, j : j + 1], x_sq, metric).squeeze(-1), out=mind)
    return out


def _draw_rows(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row with probability ∝ weights (B,P) (non-negative, positive row sums) → (B,) long.

    Inverse-CDF sampling in float64 with uniforms from ``generator``: works whatever the device of the
    weights and of the generator.
    """
    cdf = weights.to(torch.float64).cumsum(1)
    u = _rand((weights.shape[0], 1), generator, weights.device, torch.float64) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return idx.clamp_(max=weights.shape[1] - 1)


def _small_images(x: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Centroids/valid/assignments for images with ≤ k valid points: the points themselves, in order."""
    B, P, D = x.shape
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # valid points first, in order
    m = min(k, P)
    idx = order[:, :m]
    cents = torch.zeros(B, k, D, device=x.device, dtype=x.dtype)
    valid = torch.zeros(B, k, device=x.device, dtype=torch.bool)
    valid[:, :m] = mask.gather(1, idx)
    cents[:, :m] = x.gather(1, idx.unsqueeze(-1).expand(B, m, D)) * valid[:, :m].unsqueeze(-1).to(x.dtype)
    rank = mask.long().cumsum(1) - 1
    assign = torch.where(mask, rank, torch.full_like(rank, -1))
    return cents, valid, assign


def _update(x: Tensor, maskf: Tensor, assign: Tensor, c: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """New centroids (A,k,D) from assignments (A,P); empty clusters keep ``c``. Also returns counts (A,k)."""
    k = c.shape[1]
    onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype) * maskf.unsqueeze(-1)  # (A,P,k)
    counts = onehot.sum(1)  # (A,k)
    sums = onehot.transpose(1, 2) @ x  # (A,k,D)
    if metric == "cosine":
        norm = sums.norm(dim=-1, keepdim=True)
        new = sums / norm.clamp_min(torch.finfo(x.dtype).tiny)
        keep_old = (counts == 0).unsqueeze(-1) | (norm == 0)
    else:
        new = sums / counts.clamp_min(1.0).unsqueeze(-1)
        keep_old = (counts == 0).unsqueeze(-1)
    return torch.where(keep_old, c, new), counts


def batched_kmeans(
    points: Tensor,
    mask: Tensor,
    k: int,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    metric: Metric = "euclidean",
    init: Init = "kmeans++",
    generator: torch.Generator | None = None,
    initial_centroids: Tensor | None = None,
) -> KMeansResult:
    """k-means of each image's valid points, all images at once (semantics in the module docstring).

    points (B,P,D) any float dtype (computed in float32, or float64 for float64 input); mask (B,P) bool,
    False for padding. ``initial_centroids`` (B,k,D) overrides ``init`` (used to compare with
    :func:`per_image_kmeans` from the same start). Returns centroids (B,k,D), valid (B,k), assignments (B,P).
    """
    _check(points, mask, k, metric, init, iters, tol)
    x = _prepare(points, metric)
    B, _, D = x.shape
    cents, valid, assign = _small_images(x, mask, k)
    n_valid = mask.sum(1)
    big = n_valid > k
    if not bool(big.any()):
        return KMeansResult(cents, valid, assign)
    if initial_centroids is None:
        c0 = init_centroids(points, mask, k, metric=metric, init=init, generator=generator)
    else:
        if initial_centroids.shape != (B, k, D):
            raise ValueError(f"initial_centroids must be {(B, k, D)}, got {tuple(initial_centroids.shape)}")
        c0 = initial_centroids.to(device=x.device, dtype=x.dtype)
        if metric == "cosine":
            c0 = torch.nn.functional.normalize(c0, dim=-1)
    bidx = big.nonzero().squeeze(1)
    xb, mb = x[bidx], mask[bidx]
    mbf = mb.to(x.dtype)
    xb_sq = (xb * xb).sum(-1)
    c = c0[bidx].clone()
    active = torch.arange(bidx.numel(), device=x.device)
    n_iter = 0
    for _ in range(iters):
        if active.numel() == 0:
            break
        n_iter += 1
        xa, ma, ca = xb[active], mbf[active], c[active]
        a = _assign(xa, ca, xb_sq[active], metric)
        new, _ = _update(xa, ma, a, ca, metric)
        shift = (new - ca).norm(dim=-1).amax(dim=1)  # (A,)
        c[active] = new
        active = active[shift > tol]
    log.debug(
        "batched k-means: %d images clustered, %d iterations, %d not converged",
        bidx.numel(),
        n_iter,
        active.numel(),
    )
    a = _assign(xb, c, xb_sq, metric)
    _, counts = _update(xb, mbf, a, c, metric)
    cents[bidx] = c
    valid[bidx] = counts > 0
    assign[bidx] = torch.where(mb, a, torch.full_like(a, -1))
    return KMeansResult(cents, valid, assign)


def per_image_kmeans(
    points: Tensor,
    mask: Tensor,
    k: int,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    metric: Metric = "euclidean",
    init: Init = "kmeans++",
    generator: torch.Generator | None = None,
    initial_centroids: Tensor | None = None,
) -> KMeansResult:
    """Plain reference: the same algorithm as :func:`batched_kmeans`, one image at a time in a Python loop.

    Only for tests and benchmarks. Initial centroids come from :func:`init_centroids` (same generator →
    same start as the batched version) unless ``initial_centroids`` (B,k,D) is given.
    """
    _check(points, mask, k, metric, init, iters, tol)
    x = _prepare(points, metric)
    B, P, D = x.shape
    if initial_centroids is None:
        c0 = init_centroids(points, mask, k, metric=metric, init=init, generator=generator)
    else:
        c0 = initial_centroids.to(device=x.device, dtype=x.dtype)
        if metric == "cosine":
            c0 = torch.nn.functional.normalize(c0, dim=-1)
    cents = torch.zeros(B, k, D, device=x.device, dtype=x.dtype)
    valid = torch.zeros(B, k, device=x.device, dtype=torch.bool)
    assign = torch.full((B, P), -1, device=x.device, dtype=torch.long)
    for b in range(B):
        pos = mask[b].nonzero().squeeze(1)
        pts = x[b, pos]  # (n,D)
        n = pts.shape[0]
        if n <= k:
            cents[b, :n] = pts
            valid[b, :n] = True
            assign[b, pos] = torch.arange(n, device=x.device)
            continue
        pts_sq = (pts * pts).sum(-1)
        c = c0[b].clone()
        for _ in range(iters):
            lab = _assign(pts, c, pts_sq, metric)
            new = c.clone()
            for j in range(k):
                members = pts[lab == j]
                if members.shape[0] == 0:
                    continue  # empty cluster keeps its previous centroid
                s = members.sum(0)
                if metric == "cosine":
                    if s.norm() > 0:
                        new[j] = s / s.norm()
                else:
                    new[j] = s / members.shape[0]
            shift = (new - c).norm(dim=-1).max()
            c = new
            if shift <= tol:
                break
        lab = _assign(pts, c, pts_sq, metric)
        cents[b] = c
        valid[b] = torch.bincount(lab, minlength=k) > 0
        assign[b, pos] = lab
    return KMeansResult(cents, valid, assign)
