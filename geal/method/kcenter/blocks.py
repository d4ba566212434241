"""The static block partition of the lazy k-center path: blocks of points around anchors, with radii.

Two-level k-means in the metric space of the points (for cosine the euclidean space of the unit vectors,
where ‖a−b‖ = sqrt(2·(1 − cos)) is a metric), so that ‖x−c‖ ≥ ‖anchor−c‖ − radius bounds distances from
below. The partition only decides how fast the exact distances are found, never what they are.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from geal.method.kcenter.options import DEFAULT_OPTIONS, KCenterOptions

__all__ = ["Blocks"]

_ROWS = 16384  # points per product when assigning anchors or measuring radii (bounds memory only)


def _nearest_anchor(x: Tensor, anchors: Tensor, chunk: int = _ROWS) -> Tensor:
    """Index of the nearest anchor (euclidean) of every row of x (n,D), chunked: → (n,) long."""
    a_sq = (anchors * anchors).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        out[s : s + chunk] = (a_sq[None, :] - 2.0 * (xs @ anchors.T)).argmin(1)
    return out


def _kmeans_cells(x: Tensor, n: int, generator: torch.Generator, lloyd_steps: int) -> Tensor:
    """Cells of the rows of x (m,D): ``n`` random distinct seeds, then ``lloyd_steps`` Lloyd steps → (m,)."""
    m = x.shape[0]
    n = max(1, min(n, m))
    seeds = torch.randperm(m, generator=generator)[:n].to(x.device)
    anchors = x.index_select(0, seeds)
    cell = _nearest_anchor(x, anchors)
    for _ in range(lloyd_steps):
        sums = torch.zeros_like(anchors).index_add_(0, cell, x)
        counts = torch.bincount(cell, minlength=n).to(x.dtype)
        anchors = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], anchors)
        cell = _nearest_anchor(x, anchors)
    return cell


def _partition(x: Tensor, block_size: int, options: KCenterOptions) -> tuple[Tensor, int]:
    """Block of every row of x (M,D) → ((M,) long in [0, nb), nb): √nb coarse cells, one k-means per cell."""
    M = x.shape[0]
    gen = torch.Generator().manual_seed(options.partition_seed)
    n_blocks = max(1, -(-M // block_size))
    n_coarse = max(1, round(math.sqrt(n_blocks)))
    coarse = _kmeans_cells(x, n_coarse, gen, options.lloyd_steps)
    block_of = torch.empty(M, dtype=torch.long, device=x.device)
    members = torch.sort(coarse, stable=True).indices
    counts = torch.bincount(coarse, minlength=n_coarse).tolist()
    nb, pos = 0, 0
    for c in counts:  # one k-means per coarse cell (tens of cells, each thousands of points)
        idx = members[pos : pos + c]
        pos += c
        if c == 0:
            continue
        fine = _kmeans_cells(x.index_select(0, idx), -(-c // block_size), gen, options.lloyd_steps)
        _, fine = torch.unique(fine, return_inverse=True)  # drop empty cells
        block_of[idx] = fine + nb
        nb += int(fine.max()) + 1
    return block_of, nb


class Blocks:
    """A static partition of the points (CPU) into blocks with anchors and radii (for the lower bounds).

    n: the number of blocks nb; order (M,): point indices grouped by block; start (nb+1,): block b's points
    are ``order[start[b]:start[b+1]]``; block_of (M,); anchors (nb,D) (the blocks' means, work dtype),
    anchors_t (D,nb) contiguous, anchor_sq (nb,); r (M,) float64 ‖x − anchor‖ rounded up; rho (nb,)
    float64 the largest r of each block. ``*_np``: numpy views of the same memory (the lazy path's many
    small index ops run on them).
    """

    def __init__(self, x: Tensor, block_size: int, options: KCenterOptions = DEFAULT_OPTIONS) -> None:
        M, dev = x.shape[0], x.device
        block_of, nb = _partition(x, block_size, options)
        self.n = nb
        self.block_of = block_of
        self.order = torch.sort(block_of, stable=True).indices
        sizes = torch.bincount(block_of, minlength=nb)
        self.start = torch.zeros(nb + 1, dtype=torch.long, device=dev)
        self.start[1:] = torch.cumsum(sizes, 0)
        sums = torch.zeros(nb, x.shape[1], dtype=x.dtype, device=dev).index_add_(0, block_of, x)
        self.anchors = sums / sizes.clamp_min(1).to(x.dtype)[:, None]
        self.anchor_sq = (self.anchors * self.anchors).sum(1)
        # (D, nb) contiguous for the lazy path's few-row bound products: on one CPU thread MKL runs
        # (R, D) @ (D, nb) as fast or faster than (R, D) @ anchors.T at every R measured (1–64 rows, 6,465
        # anchors; 0.63 vs 1.49 ms at R = 10, the usual size), with the same picks
        self.anchors_t = self.anchors.T.contiguous()
        # exact radii in float64, rounded up a little so that r ≥ the true ‖x − anchor‖
        r = torch.empty(M, dtype=torch.float64, device=dev)
        for s in range(0, M, _ROWS):
            diff = x[s : s + _ROWS].double() - self.anchors[block_of[s : s + _ROWS]].double()
            r[s : s + _ROWS] = diff.norm(dim=1)
        self.r = r * (1 + 1e-12) + 1e-300
        self.rho = torch.full((nb,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
            0, block_of, self.r, reduce="amax"
        )
        self.start_np, self.order_np = self.start.numpy(), self.order.numpy()
        self.block_of_np, self.r_np, self.rho_np = block_of.numpy(), self.r.numpy(), self.rho.numpy()

    def points_of(self, blocks: np.ndarray) -> np.ndarray:
        """Point indices (int64) of the distinct ``blocks`` (int64), concatenated block by block."""
        starts = self.start_np[blocks]
        lens = self.start_np[blocks + 1] - starts
        if lens.size == 1:
            return self.order_np[starts[0] : starts[0] + lens[0]]
        ends = np.cumsum(lens)
        total = int(ends[-1]) if ends.size else 0
        return self.order_np[np.arange(total) + np.repeat(starts - ends + lens, lens)]
