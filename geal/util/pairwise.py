"""Blocked pairwise distances of a point set on its own device — never an N × N matrix.

:func:`sq_dists` of one block of rows against all points, :func:`mean_knn_dist` (mean distance to the k
nearest rows) built on it, and :func:`row_block`, the rows per block that keep one block of values near
``BLOCK_BYTES``. Shared by GEAL's image typicality (:mod:`geal.method.typicality`) and the one-pass peers
(:mod:`baselines.neighbours`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLOCK_BYTES", "SMALL_POOL", "mean_knn_dist", "row_block", "sq_dists"]

#: feature values (N × D) up to which a selection runs on one CPU thread
SMALL_POOL = 2**21
#: bytes of one block of pairwise values (rows × all columns)
BLOCK_BYTES = {"cpu": 64 * 2**20, "accelerator": 512 * 2**20}


def row_block(n_cols: int, device: torch.device, itemsize: int = 4) -> int:
    """Rows per block so that a (rows, n_cols) block of ``itemsize``-byte values fits ``BLOCK_BYTES``."""
    budget = BLOCK_BYTES["cpu" if device.type == "cpu" else "accelerator"]
    return max(1, budget // max(1, n_cols * itemsize))


def sq_dists(a: Tensor, b: Tensor, b_sq: Tensor | None = None) -> Tensor:
    """(A, D) × (B, D) → (A, B) squared L2 distances ``‖a‖² + ‖b‖² − 2a·b``, clamped at 0."""
    if b_sq is None:
        b_sq = (b * b).sum(1)
    return torch.addmm(b_sq.unsqueeze(0), a, b.T, alpha=-2.0).add_((a * a).sum(1, keepdim=True)).clamp_min_(0)


def mean_knn_dist(points: Tensor, k: int, *, drop_nearest: bool, squared: bool = True) -> Tensor:
    """(N,) mean (squared, or plain when not ``squared``) L2 distance of each row of ``points`` (N, D) to its
    ``k`` nearest rows.

    The nearest row of a point is itself (distance 0, or a duplicate): ``drop_nearest`` leaves it out and
    averages the next ``k`` (TypiClust's faiss search of k + 1 neighbours minus the first), else it counts
    as one of the ``k`` (USL's kNN of the pool against itself). ``k`` is capped by the rows available.
    Blocked over the rows; only the (rows, k) smallest values of a block are kept.
    """
    n = points.shape[0]
    take = min(k + int(drop_nearest), n)
    p_sq = (points * points).sum(1)
    out = torch.empty(n, device=points.device)
    step = row_block(n, points.device)
    for s in range(0, n, step):
        top = sq_dists(points[s : s + step], points, p_sq).topk(take, dim=1, largest=False, sorted=True)
        near = top.values[:, int(drop_nearest) :]
        out[s : s + step] = (near if squared else near.sqrt()).mean(1)
    return out
