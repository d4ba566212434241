"""The one k-center / D² implementation, shared by GEAL (clusters grouped by image) and Core-Set.

Points (M,D) belong to groups (images): ``groups[i]`` is the global id of point ``i``'s image. The
distance of a point to the selected set is its minimum distance to any point of any selected group.

* :func:`kcenter_greedy` (GEAL's Algorithm 1): start from the ``initial`` (already labeled) groups, or — when
  there are none — from one random eligible group drawn with ``generator`` (score NaN); then repeatedly take
  the point farthest from the selected set and add its **whole** group (all its points become centres).
* :func:`d2_sampling`: the same, but the next point is drawn with probability ∝ distance² (uniformly among
  the remaining points when every remaining distance is 0).

A selected group is never picked twice (its points are masked out of the argmax/draw, so repeated features
or all-zero distances cannot select it again); groups with no points or ``eligible=False`` are never
picked. Ties go to the lowest point index. Distances: ``"cosine"`` = 1 − cos on L2-normalised points
(normalised once); ``"euclidean"`` = sqrt(max(‖a‖²+‖b‖²−2a·b, 0)), except that a pair whose squared distance
comes out within that formula's worst-case rounding (8γ·‖x‖²_max, γ ≈ (D+4)·2⁻²⁴ in float32: ≈ 1.4% of the
largest norm after the square root at D = 384) is recomputed as ‖a−b‖² in float64, so near-duplicates keep
their distances (order by distance, not index) and exact duplicates are exactly 0; for cosine a distance
within the rounding of 1 − a·b (4γ) is taken as exactly 0 (the released code's formula), so duplicated
points tie exactly whatever batch computed them. Work is float32 (float64 when the points are float64).
For ``kcenter_greedy`` with a fixed seed a smaller budget is a prefix of a larger one.

How the distances are kept (``pruning``; never what they are — picks, scores and draws are the same):

* ``"none"`` — the plain full scan: after each pick, one matrix product of all points against the new
  centres updates the running min-distance vector, chunked over the points by ``chunk_size`` (on a GPU
  at least 2^20 points a chunk: there a chunk only bounds memory, and each one costs kernel launches).
* ``"bounds"`` — only the distances that matter are computed, with the full scan's formula (so the same
  numbers). The points are partitioned once into blocks of about ``block_size`` points around anchors
  (two-level k-means in the metric space of the points; for cosine that is the euclidean space of the unit
  vectors, where ‖a−b‖ = sqrt(2·(1 − cos)) is a metric, so the triangle inequality holds).

  - k-center is **lazy**: a point's stored distance only ever decreases as centres are added, so a stale
    value bounds the exact one from above. Each argmax refreshes only the stale points with the largest
    stored values (found through per-block maxima) until the largest value is exact; a refresh of a few
    points reads only the centres that the triangle inequality ‖x−c‖ ≥ ‖x−anchor(c)‖ − ‖c−anchor(c)‖ cannot
    rule out, otherwise all centres it has not seen yet, in chunks (also for the next 1, 2, 4, … few-point
    refreshes after the bounds ruled out too little: early on they rule out nothing and trying costs more
    than the plain pass). While an argmax costs more than half a full scan (early on, when every distance
    moves a little at every pick) the next picks use full scans instead, for a doubling number of picks
    (a rule on work counts: runs stay reproducible). Before the first of them every stale point is brought
    up to date. That catch-up, like any refresh of thousands of points against thousands of centres not
    seen yet, goes block by block: each block reads only the pending centres that ‖x−c‖ ≥ ‖anchor−c‖ −
    radius cannot rule out for the largest threshold of its points (the plain pass instead when that
    keeps over a quarter of the pairs). On a CPU its
    bookkeeping (block maxima, candidate centres, bounds) runs in numpy on views of the tensors: the same
    operations on the same values, so the same matrix products and picks, without torch's per-call
    overhead on thousands of small arrays.
  - D² needs every distance at every draw, so it stays eager: a block whose anchor is far from every new
    centre (‖anchor−c‖ − radius ≥ its largest distance), or a point far enough from them, is skipped; when
    the bounds rule out little, a contiguous full scan is cheaper and is used instead, and then for the next
    1, 2, 4, … (at most 64) picks without testing the bounds (their anchor products and block maxima cost
    a fifth of a full scan on data where they never rule out enough; a rule on work counts again).

  Skips keep a margin for the worst-case float32/64 rounding of the dot products. Points of selected or
  ineligible groups are never updated (their distance is never read). On unstructured high-dimensional
  noise (all distances alike) the bounds rule out nothing and laziness is what is left.
* ``"auto"`` (default) — ``"bounds"`` on a CPU from 16,384 points up; ``"none"`` on smaller sets (the
  full scan costs less than the blocks) and on GPUs (a full scan per step is a fraction of a millisecond
  there, and the lazy path's many small steps are not).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from geal.util.threads import intra_op_threads

__all__ = ["GreedyResult", "d2_sampling", "kcenter_greedy"]

log = logging.getLogger(__name__)

Distance = Literal["cosine", "euclidean"]
Pruning = Literal["auto", "bounds", "none"]

_MULTINOMIAL_MAX = 2**24  # torch.multinomial's category limit
_GPU_MIN_CHUNK = 1 << 20  # points per full-scan chunk at least, off the CPU
_HOST_BOOKKEEPING = True  # CPU lazy path: bookkeeping in numpy (False: the torch path a GPU would run)
_CENTER_BLOCK = 256  # centres per update when seeding from a large initial set
_AUTO_BOUNDS_MIN_POINTS = 16384  # "auto": below this a full scan per step is cheaper than the blocks
_PARTITION_SEED = 0  # the blocks never change a result, only how fast it is found
_EAGER_DENSE_FRACTION = 0.3  # D²: a full scan when the bounds keep more than this fraction of the points
_DENSE_MAX_BACKOFF = 64  # ... and after it the next 1, 2, 4, ... (at most this) picks skip the bounds
_PARALLEL_PAIRS = 2**21  # lazy path: matrix products this large use every torch thread, the rest one
_EAGER_WHEN = 0.5  # k-center: full scans for a while when an argmax costs this fraction of one
_EAGER_FIRST_BACKOFF = 4  # ... for this many picks first, doubling while it keeps happening
_LAZY_CENTERS = 8192  # centres per matrix product when a block is brought up to date
_LAZY_BOUND_ROWS = 256  # refreshes of at most this many points read only the centres the bounds keep
_LAZY_BOUND_MAX_FRACTION = 0.5  # ... unless the bounds keep more than this fraction of the pending ones
_LAZY_BOUND_MAX_SKIP = 64  # ... after such a refresh the next 1, 2, 4, ... (at most this) skip the bounds
_EXACT_PAIRS = 1 << 16  # euclidean near-zero pairs recomputed from their difference, per batch
_BLOCK_REFRESH_MIN_ROWS = 4096  # refreshes of more points read, per block, only the centres its bound keeps
_BLOCK_REFRESH_MIN_CENTRES = 2048  # ... when this many centres or more are pending (fewer: its overhead wins)
_BLOCK_REFRESH_MAX_KEPT = 0.25  # ... unless the bounds keep more than this fraction of the pending pairs
_BLOCK_TEST_ELEMENTS = 1 << 22  # ... tested for groups of blocks of at most this many (block, centre) pairs
_LAZY_FIRST_BLOCKS = 8  # blocks refreshed by the first pass of an argmax (doubling up to the next)
_LAZY_MAX_BLOCKS = 512
_LLOYD_STEPS = 2  # refinements of the block anchors (tighter blocks prune more; more costs time up front)


@dataclass
class GreedyResult:
    """order: picked group ids in pick order; scores: the picked point's distance to the selected set at
    pick time (NaN for a randomly drawn seed group)."""

    order: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def _nearest_anchor(x: Tensor, anchors: Tensor, chunk: int = 16384) -> Tensor:
    """Index of the nearest anchor (euclidean) of every row of x (n,D), chunked: → (n,) long."""
    a_sq = (anchors * anchors).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        out[s : s + chunk] = (a_sq[None, :] - 2.0 * (xs @ anchors.T)).argmin(1)
    return out


def _kmeans_cells(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Cells of the rows of x (m,D): ``n`` random distinct seeds, then a few Lloyd steps → (m,) long."""
    m = x.shape[0]
    n = max(1, min(n, m))
    seeds = torch.randperm(m, generator=generator)[:n].to(x.device)
    anchors = x.index_select(0, seeds)
    cell = _nearest_anchor(x, anchors)
    for _ in range(_LLOYD_STEPS):
        sums = torch.zeros_like(anchors).index_add_(0, cell, x)
        counts = torch.bincount(cell, minlength=n).to(x.dtype)
        anchors = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], anchors)
        cell = _nearest_anchor(x, anchors)
    return cell


class _Blocks:
    """A static partition of the points into blocks with anchors and radii (for the lower bounds).

    order (M,): point indices grouped by block; start (nb+1,): block b's points are
    ``order[start[b]:start[b+1]]``; block_of (M,); anchors (nb,D) (the blocks' means, work dtype);
    r (M,) float64 ‖x − anchor‖ rounded up; rho (nb,) float64 the largest r of each block.
    """

    def __init__(self, x: Tensor, block_size: int) -> None:
        M, dev = x.shape[0], x.device
        gen = torch.Generator().manual_seed(_PARTITION_SEED)
        n_blocks = max(1, -(-M // block_size))
        n_coarse = max(1, round(math.sqrt(n_blocks)))
        coarse = _kmeans_cells(x, n_coarse, gen)
        block_of = torch.empty(M, dtype=torch.long, device=dev)
        members = torch.sort(coarse, stable=True).indices
        counts = torch.bincount(coarse, minlength=n_coarse).tolist()
        nb, pos = 0, 0
        for c in counts:  # one k-means per coarse cell (tens of cells, each thousands of points)
            idx = members[pos : pos + c]
            pos += c
            if c == 0:
                continue
            fine = _kmeans_cells(x.index_select(0, idx), -(-c // block_size), gen)
            _, fine = torch.unique(fine, return_inverse=True)  # drop empty cells
            block_of[idx] = fine + nb
            nb += int(fine.max()) + 1
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
        for s in range(0, M, 16384):
            diff = x[s : s + 16384].double() - self.anchors[block_of[s : s + 16384]].double()
            r[s : s + 16384] = diff.norm(dim=1)
        self.r = r * (1 + 1e-12) + 1e-300
        self.rho = torch.full((nb,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
            0, block_of, self.r, reduce="amax"
        )
        if dev.type == "cpu":  # numpy views (shared memory) for the lazy path's many small index ops
            self.start_np, self.order_np = self.start.numpy(), self.order.numpy()
            self.block_of_np, self.r_np, self.rho_np = block_of.numpy(), self.r.numpy(), self.rho.numpy()

    def points_of(self, blocks: Tensor) -> Tensor:
        """Point indices of ``blocks`` (long), concatenated block by block."""
        # (no searchsorted/repeat_interleave: on a busy CPU their thread wake-ups cost milliseconds)
        starts = self.start.index_select(0, blocks)
        lens = self.start.index_select(0, blocks + 1) - starts
        ends = torch.cumsum(lens, 0)  # end of each block in the output
        total = int(ends[-1]) if ends.numel() else 0
        marks = torch.zeros(total + 1, dtype=torch.long, device=blocks.device)
        marks.index_add_(0, ends, torch.ones_like(ends))
        j = torch.cumsum(marks[:total], 0)  # output position → its block
        pos = torch.arange(total, device=blocks.device)
        return self.order.index_select(0, pos + (starts - ends + lens).index_select(0, j))

    def points_of_np(self, blocks: np.ndarray) -> np.ndarray:
        """:meth:`points_of` on the host (CPU only): the same points in the same order, as numpy int64."""
        starts = self.start_np[blocks]
        lens = self.start_np[blocks + 1] - starts
        if lens.size == 1:
            return self.order_np[starts[0] : starts[0] + lens[0]]
        ends = np.cumsum(lens)
        total = int(ends[-1]) if ends.size else 0
        return self.order_np[np.arange(total) + np.repeat(starts - ends + lens, lens)]


class _State:
    """Points, group index and the running min-distance vector of one selection."""

    def __init__(
        self,
        points: Tensor,
        groups: Tensor,
        distance: str,
        eligible: Tensor | None,
        chunk_size: int,
        pruning: str,
        block_size: int,
        lazy: bool = False,
    ) -> None:
        if points.ndim != 2:
            raise ValueError(f"points must be (M, D), got shape {tuple(points.shape)}")
        if groups.ndim != 1 or groups.shape[0] != points.shape[0]:
            raise ValueError(f"groups must be (M,) = ({points.shape[0]},), got shape {tuple(groups.shape)}")
        if groups.dtype.is_floating_point or groups.dtype == torch.bool:
            raise ValueError(f"groups must be an integer tensor, got {groups.dtype}")
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if pruning not in ("auto", "bounds", "none"):
            raise ValueError(f"pruning must be 'auto', 'bounds' or 'none', got {pruning!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        dev = points.device
        dt = torch.float64 if points.dtype == torch.float64 else torch.float32
        x = points.to(dt)
        if distance == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
        self.x = x
        self.sq = (x * x).sum(1) if distance == "euclidean" else None
        self.distance = distance
        # on a GPU the chunk only bounds memory (2^20 points x C centres x 4 B); small chunks cost launches
        self.chunk = int(chunk_size) if dev.type == "cpu" else max(int(chunk_size), _GPU_MIN_CHUNK)
        self.groups = groups.to(device=dev, dtype=torch.long)
        self.groups_host = self.groups.cpu()  # group of a picked point without a device sync
        M = x.shape[0]
        if M and int(self.groups.min()) < 0:
            raise ValueError("group ids must be >= 0")
        if eligible is not None:
            if eligible.ndim != 1 or eligible.dtype != torch.bool:
                raise ValueError("eligible must be a 1-D bool tensor (one entry per group)")
            self.G = int(eligible.numel())
            if M and int(self.groups.max()) >= self.G:
                raise ValueError(f"group id {int(self.groups.max())} >= eligible.numel() = {self.G}")
            elig = eligible.to(dev)
        else:
            self.G = int(self.groups.max()) + 1 if M else 0
            elig = torch.ones(self.G, dtype=torch.bool, device=dev)
        counts = torch.bincount(self.groups, minlength=self.G)
        self.point_order = torch.sort(self.groups, stable=True).indices  # points grouped by group id
        self.offsets = [0, *torch.cumsum(counts, 0).tolist()]
        self.pickable = elig & (counts > 0)  # (G,)
        self.blocked = ~self.pickable[self.groups] if M else torch.zeros(0, dtype=torch.bool, device=dev)
        self.selected = torch.zeros(self.G, dtype=torch.bool, device=dev)
        self.mind = torch.full((M,), math.inf, dtype=dt, device=dev)
        # worst-case rounding of one dot product over D terms (plus the few additions around it)
        u = torch.finfo(dt).eps / 2
        gamma = (x.shape[1] + 4) * u
        norm_max = 1.0 if distance == "cosine" else (float(self.sq.max().sqrt()) if M else 0.0)
        # cosine: a distance this small is rounding noise of 1 − x·c (the released code's formula too): set
        # to exactly 0, the same bound for every update path, so duplicates tie exactly.
        # euclidean: ‖a‖² + ‖b‖² − 2a·b is off by up to 8γ·norm² (≈ 1.4% of the largest norm after the
        # square root at D = 384), so a pair whose squared distance comes out below that is recomputed from
        # the difference ‖a − b‖² in float64 (what the released code computes): near-duplicates keep their
        # distances (only float rounding is lost) and exact duplicates come out as exactly 0
        self.zero_floor = 4.0 * gamma if distance == "cosine" else 0.0
        self.exact_below = 8.0 * gamma * norm_max**2 if distance == "euclidean" else 0.0
        self.threads = torch.get_num_threads()  # the caller's setting (the lazy loop runs on one)
        self.n_centers = 0
        self.last_added = 0
        # D²'s bounded path: bound tests that ruled out enough, and full scans (the test's or backed off)
        # and k-center's refreshes of many points taken block by block
        self.stats = dict.fromkeys(
            ("updated", "steps", "pairs_tested", "refreshes", "bounded", "dense", "block_refreshes"), 0
        )
        self.lazy = False
        self._cap = 0
        use_bounds = pruning == "bounds" or (
            pruning == "auto" and M >= _AUTO_BOUNDS_MIN_POINTS and dev.type == "cpu"
        )
        self.blocks: _Blocks | None = None
        if use_bounds and M > 0:
            self.blocks = _Blocks(x, block_size)
            # block maxima of the distance over points not blocked (−inf: nothing left to pick there)
            self.block_max = torch.full((self.blocks.n,), math.inf, dtype=torch.float64, device=dev)
            self.block_max.scatter_reduce_(
                0,
                self.blocks.block_of,
                torch.where(self.blocked, -math.inf, math.inf).to(torch.float64),
                reduce="amax",
                include_self=False,
            )
            anchor_max = float(self.blocks.anchor_sq.max().sqrt())
            self.eps_anchor = 4.0 * gamma * (2.0 * max(norm_max, anchor_max)) ** 2
            self.eps_dist = 4.0 * gamma * (1.0 if distance == "cosine" else 4.0 * norm_max**2)
            self.rel = 8.0 * u
            self.lazy = lazy
            # D²: full scans still to run without testing the bounds, the next back-off, and whether the block
            # maxima are stale since (upper bounds then: distances only fall, blocked points only grow)
            self.dense_left, self.dense_backoff, self.block_max_stale = 0, 1, False
            # eager steps still to run (full scans: every point stays up to date) and the next back-off
            self.eager_left, self.eager_backoff = 0, _EAGER_FIRST_BACKOFF
            # k-center: centres stored contiguously in pick order; point i has seen the first last_seen[i]
            self.cmat = torch.empty(0, x.shape[1], dtype=dt, device=dev)
            self.c_sq = torch.empty(0, dtype=dt, device=dev)
            self._cbuf, self._csqbuf = self.cmat, self.c_sq
            self.last_seen = torch.zeros(M, dtype=torch.long, device=dev)  # centres each point has seen
            # few-row refreshes that skip the bounds (they ruled out too little lately) and the next back-off
            self.bound_skip, self.bound_backoff = 0, 1
            # position of each point in the centre list (a large number for points that are not centres)
            self.center_rank = torch.full((M,), 2**62, dtype=torch.long, device=dev)
            # on a CPU the lazy path's bookkeeping (thousands of index ops on small arrays per pick) runs in
            # numpy, on views sharing the tensors' memory; every value it computes is the same
            self.host = lazy and dev.type == "cpu" and _HOST_BOOKKEEPING
            if self.host:
                self.mind_np, self.blocked_np = self.mind.numpy(), self.blocked.numpy()
                self.last_seen_np, self.center_rank_np = self.last_seen.numpy(), self.center_rank.numpy()
                self.block_max_np = self.block_max.numpy()
                # the latest centre rank in each block (-1: none): blocks without pending centres are skipped
                self.block_newest = np.full(self.blocks.n, -1, dtype=np.int64)

    # ------------------------------------------------------------------ groups
    def members(self, g: int) -> Tensor:
        return self.point_order[self.offsets[g] : self.offsets[g + 1]]

    def n_pickable_left(self) -> int:
        return int((self.pickable & ~self.selected).sum())

    def add_group(self, g: int) -> None:
        """Mark group ``g`` selected: block its points and make them centres."""
        self.selected[g] = True
        idx = self.members(g)
        if idx.numel() == 0:
            return
        self.blocked[idx] = True
        for s in range(0, idx.numel(), _CENTER_BLOCK):
            self.add_centers(idx[s : s + _CENTER_BLOCK])

    def add_centers(self, center_idx: Tensor) -> None:
        """mind ← min(mind, distance to the points ``center_idx``) (all of them, or where it can change)."""
        self.n_centers += int(center_idx.numel())
        self.last_added = int(center_idx.numel())
        self.stats["steps"] += 1
        if self.blocks is None:
            self._full_update(center_idx)
        elif self.lazy:
            n_before = self.cmat.shape[0]
            self._append_centers(center_idx)
            if self.eager_left > 0:  # bring every point up to date now (no lazy work at the next argmax)
                self.eager_left -= 1
                open_ = ~self.blocked
                if bool((self.last_seen[open_] == n_before).all()):  # all current: one contiguous scan
                    with intra_op_threads(self.threads):
                        self._full_update(center_idx)
                else:  # the first eager pick after lazy ones: catch every stale point up
                    stale = ((self.last_seen < self.cmat.shape[0]) & open_).nonzero().squeeze(1)
                    if stale.numel():
                        self._refresh(stale)
                self.last_seen.fill_(self.cmat.shape[0])
                self._recompute_max(torch.arange(self.blocks.n, device=center_idx.device))
        else:
            self._bounded_update(center_idx)

    # ------------------------------------------------------------------ lazy (k-center)
    def _append_centers(self, center_idx: Tensor) -> None:
        """Record new centres (contiguous, in pick order); distances are brought up to date later, only
        for the points that could be the farthest (:meth:`_farthest_lazy`)."""
        blocks = self.blocks
        assert blocks is not None
        n = self.cmat.shape[0]
        add = self.x.index_select(0, center_idx)
        k = add.shape[0]
        if n + k > self._cap:
            self._cap = max(2 * self._cap, n + k, 1024)
            grown = torch.empty(self._cap, self.x.shape[1], dtype=self.x.dtype, device=self.x.device)
            grown_sq = torch.empty(self._cap, dtype=self.x.dtype, device=self.x.device)
            grown[:n] = self.cmat
            grown_sq[:n] = self.c_sq
            self._cbuf, self._csqbuf = grown, grown_sq
        self._cbuf[n : n + k] = add
        self._csqbuf[n : n + k] = (add * add).sum(1)
        self.center_rank[center_idx] = torch.arange(n, n + k, device=center_idx.device)
        self.cmat = self._cbuf[: n + k]
        self.c_sq = self._csqbuf[: n + k]
        # buckets that just lost points to the selection: their maximum is over fewer points
        if self.host:
            cb = blocks.block_of_np[center_idx.numpy()]
            np.maximum.at(self.block_newest, cb, np.arange(n, n + k))
            self._recompute_max_np(np.unique(cb))
        else:
            self._recompute_max(torch.unique(blocks.block_of[center_idx]))

    def _recompute_max(self, blocks_idx: Tensor) -> None:
        blocks = self.blocks
        assert blocks is not None
        if self.host:
            self._recompute_max_np(blocks_idx.numpy())
            return
        pts = blocks.points_of(blocks_idx)
        vals = torch.where(self.blocked[pts], -math.inf, self.mind[pts].to(torch.float64))
        self.block_max[blocks_idx] = -math.inf
        self.block_max.scatter_reduce_(0, blocks.block_of[pts], vals, reduce="amax")

    def _recompute_max_np(self, blocks_idx: np.ndarray) -> None:
        """:meth:`_recompute_max` on the host: ``blocks_idx`` distinct (blocks are never empty)."""
        blocks = self.blocks
        assert blocks is not None
        if blocks_idx.size == 0:
            return
        pts = blocks.points_of_np(blocks_idx)
        vals = self.mind_np[pts].astype(np.float64)
        vals[self.blocked_np[pts]] = -math.inf
        lens = blocks.start_np[blocks_idx + 1] - blocks.start_np[blocks_idx]
        offsets = np.cumsum(lens) - lens
        self.block_max_np[blocks_idx] = np.maximum.reduceat(vals, offsets)

    def _refresh(self, rows: Tensor) -> None:
        """Bring the points ``rows`` up to date with every centre.

        Few rows (the usual case): only the centres that the triangle inequality cannot rule out are
        read — ‖x − c‖ ≥ ‖x − anchor(c)‖ − r(c) through the static block of each centre — so a refresh
        never streams all the centres added since the rows were last seen. Many rows against many pending
        centres: block by block, with the bound through each row block's anchor
        (:meth:`_refresh_by_blocks`). Otherwise, or when the bounds rule out little (then the next 1, 2,
        4, … up to ``_LAZY_BOUND_MAX_SKIP`` few-row refreshes do not try them; a refresh they do prune
        resets that): :meth:`_refresh_plain`.
        """
        n = self.cmat.shape[0]
        last = self.last_seen[rows]
        sort = torch.argsort(last)
        rows, last = rows[sort], last[sort]
        if rows.numel() <= _LAZY_BOUND_ROWS:
            if self.bound_skip > 0:  # the last tries ruled out too little: the plain pass, for a while
                self.bound_skip -= 1
            elif self._refresh_bounded(rows, last, n - int(last[0])):
                self.bound_backoff = 1
                self.last_seen[rows] = n
                return
            else:
                self.bound_skip = self.bound_backoff
                self.bound_backoff = min(2 * self.bound_backoff, _LAZY_BOUND_MAX_SKIP)
            self._refresh_plain(rows, last)
        elif rows.numel() >= _BLOCK_REFRESH_MIN_ROWS and n - int(last[0]) >= _BLOCK_REFRESH_MIN_CENTRES:
            self._refresh_by_blocks(rows, last)
        else:
            self._refresh_plain(rows, last)
        self.last_seen[rows] = n

    def _refresh_plain(self, rows: Tensor, last: Tensor) -> None:
        """One pass over the centres the rows have not all seen, in chunks, each chunk computed only for the
        rows that have not seen all of it (``rows`` sorted by ``last``, their ``last_seen``)."""
        n, lo = self.cmat.shape[0], int(last[0])
        step = max(_LAZY_CENTERS // 8, min(_LAZY_CENTERS, n - lo))
        for s in range(lo, n, step):
            e = min(s + step, n)
            k = int((last < e).sum())  # rows that have not seen all of [s, e) (last is sorted)
            cm, csq = self.cmat[s:e], self.c_sq[s:e] if self.sq is not None else None
            with intra_op_threads(self.threads if k * (e - s) >= _PARALLEL_PAIRS else 1):
                for r in range(0, k, self.chunk):
                    sub = rows[r : min(r + self.chunk, k)]
                    d = self._distances(sub, cm, csq)
                    self.mind[sub] = torch.minimum(self.mind[sub], d)
            self.stats["updated"] += k * (e - s)

    def _refresh_bounded(self, rows: Tensor, last: Tensor, pending: int) -> bool:
        """The few-rows path of :meth:`_refresh`; False (nothing done) when the bounds rule out too little."""
        blocks = self.blocks
        assert blocks is not None
        if self.host:
            return self._refresh_bounded_np(rows, last, pending)
        xr = self.x.index_select(0, rows)
        x_sq = self.sq[rows] if self.sq is not None else torch.ones_like(rows, dtype=xr.dtype)
        a_sq = x_sq[:, None] + blocks.anchor_sq[None, :] - 2.0 * (xr @ blocks.anchors_t)  # (R, nb)
        a_d = (a_sq.to(torch.float64) - self.eps_anchor).clamp_min_(0.0).sqrt_()
        thr = self._threshold(self.mind[rows])  # (R,)
        near = ((a_d - blocks.rho[None, :]) < thr[:, None]).any(0).nonzero().squeeze(1)
        cand = blocks.points_of(near)
        rank = self.center_rank[cand]
        cand = cand[(rank >= int(last[0])) & (rank < self.cmat.shape[0])]  # centres some row has not seen
        if cand.numel() > pending * _LAZY_BOUND_MAX_FRACTION:
            return False
        if cand.numel():
            lower = a_d.index_select(1, blocks.block_of[cand]) - blocks.r[cand][None, :]  # (R, C)
            need = (lower < thr[:, None]) & (self.center_rank[cand][None, :] >= last[:, None])
            cols = cand[need.any(0)]
            if cols.numel():
                c_sq = self.sq[cols] if self.sq is not None else None
                d = self._distances(rows, self.x.index_select(0, cols), c_sq)
                self.mind[rows] = torch.minimum(self.mind[rows], d)
                self.stats["updated"] += int(rows.numel()) * int(cols.numel())
        self.stats["pairs_tested"] += int(rows.numel()) * blocks.n
        return True

    def _refresh_by_blocks(self, rows: Tensor, last: Tensor) -> None:
        """The many-rows refresh (above all the catch-up before full scans: hundreds of thousands of points
        against thousands of centres), block by block: each block of rows reads only the pending centres
        that ‖x − c‖ ≥ ‖anchor − c‖ − ρ cannot rule out for the largest threshold of its rows. The blocks
        are taken in groups that bound the (blocks × pending centres) test arrays to
        ``_BLOCK_TEST_ELEMENTS``; a group where the bound keeps more than ``_BLOCK_REFRESH_MAX_KEPT`` of the
        pairs takes :meth:`_refresh_plain` instead (it streams them faster than per-block gathers)."""
        blocks = self.blocks
        assert blocks is not None
        n = self.cmat.shape[0]
        bo = blocks.block_of.index_select(0, rows)
        by_block = torch.sort(bo, stable=True).indices
        rows, last, bo = rows[by_block], last[by_block], bo[by_block]
        ub, counts = torch.unique_consecutive(bo, return_counts=True)  # (U,) the rows' blocks
        ends = torch.cumsum(counts, 0).tolist()
        counts_l = counts.tolist()
        per_group = max(1, _BLOCK_TEST_ELEMENTS // max(n - int(last.min()), 1))
        for a in range(0, ub.numel(), per_group):
            b = min(a + per_group, ub.numel())
            r0, r1 = ends[a] - counts_l[a], ends[b - 1]
            g_rows, g_last = rows[r0:r1], last[r0:r1]
            lo = int(g_last.min())
            seg = torch.repeat_interleave(torch.arange(b - a, device=rows.device), counts[a:b])
            thr_b = torch.full((b - a,), -math.inf, dtype=torch.float64, device=rows.device)
            thr_b.scatter_reduce_(0, seg, self._threshold(self.mind[g_rows]), reduce="amax")
            first_b = torch.full((b - a,), n, dtype=torch.long, device=rows.device)
            first_b.scatter_reduce_(0, seg, g_last, reduce="amin")  # the oldest row of each block
            cm, c_sq = self.cmat[lo:n], self.c_sq[lo:n]
            g_blocks = ub[a:b]
            with intra_op_threads(self.threads):  # (blocks, n − lo): one large product
                a_sq = (
                    blocks.anchor_sq[g_blocks][:, None]
                    + c_sq[None, :]
                    - 2.0 * (blocks.anchors[g_blocks] @ cm.T)
                )
            a_d = (a_sq.to(torch.float64) - self.eps_anchor).clamp_min_(0.0).sqrt_()
            need = (a_d - blocks.rho[g_blocks][:, None]) < thr_b[:, None]  # (blocks, n − lo)
            need &= torch.arange(lo, n, device=rows.device)[None, :] >= first_b[:, None]  # unseen by a row
            kept = int((need.sum(1) * counts[a:b]).sum())
            if kept > _BLOCK_REFRESH_MAX_KEPT * int((n - g_last).sum()):
                order = torch.argsort(g_last)
                self._refresh_plain(g_rows[order], g_last[order])
                continue
            # every thread: each (block rows × kept centres) product is large enough for both (VOC catch-up
            # of 404,200 points × 5,050 centres: 2.0 s on 2 threads, 3.8 s on one)
            with intra_op_threads(self.threads):
                for u, cols in enumerate(need.unbind(0), start=a):
                    cols = cols.nonzero().squeeze(1)
                    if cols.numel() == 0:
                        continue
                    sub = rows[ends[u] - counts_l[u] : ends[u]]
                    c_sq_ = c_sq[cols] if self.sq is not None else None
                    d = self._distances(sub, cm.index_select(0, cols), c_sq_)
                    self.mind[sub] = torch.minimum(self.mind[sub], d)
            self.stats["updated"] += kept
            self.stats["block_refreshes"] += 1

    def _refresh_bounded_np(self, rows: Tensor, last: Tensor, pending: int) -> bool:
        """:meth:`_refresh_bounded` with its bookkeeping in numpy (CPU): the same matrix products, the same
        decisions (every float64 step is the same IEEE operation on the same operands)."""
        blocks = self.blocks
        assert blocks is not None
        rows_np, last_np = rows.numpy(), last.numpy()
        n = self.cmat.shape[0]
        xr = self.x.index_select(0, rows)
        x_sq = self.sq[rows] if self.sq is not None else torch.ones_like(rows, dtype=xr.dtype)
        a_sq = x_sq[:, None] + blocks.anchor_sq[None, :] - 2.0 * (xr @ blocks.anchors_t)  # (R, nb)
        a_d = a_sq.numpy().astype(np.float64)
        a_d -= self.eps_anchor
        np.sqrt(np.maximum(a_d, 0.0, out=a_d), out=a_d)
        m = self.mind_np[rows_np].astype(np.float64)
        if self.distance == "cosine":  # :meth:`_threshold`, op for op
            thr = np.sqrt(2.0 * (m * (1.0 + self.rel) + self.eps_dist))
        else:
            thr = np.sqrt(m * m * (1.0 + self.rel) + self.eps_dist)
        near = np.flatnonzero(((a_d - blocks.rho_np) < thr[:, None]).any(0))
        near = near[self.block_newest[near] >= last_np[0]]  # only blocks with centres some row has not seen
        starts = blocks.start_np[near]
        lens = blocks.start_np[near + 1] - starts
        ends = np.cumsum(lens)
        total = int(ends[-1]) if ends.size else 0
        pos = np.arange(total) + np.repeat(starts - ends + lens, lens)  # blocks.points_of_np(near), in order
        cand = blocks.order_np[pos]
        rank = self.center_rank_np[cand]
        keep = (rank >= last_np[0]) & (rank < n)  # centres some row has not seen
        cand, rank = cand[keep], rank[keep]
        if cand.size > pending * _LAZY_BOUND_MAX_FRACTION:
            return False
        if cand.size:
            which = np.repeat(np.arange(near.size), lens)[keep]  # each candidate's block, within near
            need = (a_d[:, near][:, which] - blocks.r_np[cand]) < thr[:, None]  # (R, C)
            if last_np[-1] > rank.min():  # rows sorted by last: some row has seen some of them
                need &= rank[None, :] >= last_np[:, None]
            cols = cand[need.any(0)]
            if cols.size:
                cols_t = torch.from_numpy(cols)
                c_sq = self.sq[cols_t] if self.sq is not None else None
                with intra_op_threads(self.threads):  # a plain copy (the same values on any thread count)
                    cx = self.x.index_select(0, cols_t)
                d = self._distances(rows, cx, c_sq)
                self.mind[rows] = torch.minimum(self.mind[rows], d)
                self.stats["updated"] += int(rows.numel()) * int(cols.size)
        self.stats["pairs_tested"] += int(rows.numel()) * blocks.n
        return True

    def _farthest_lazy(self) -> int:
        """Refresh the stale points with the largest (upper-bound) distances until the largest is exact.

        Every distance only decreases as centres are added, so a stale value bounds the exact one from
        above: once the largest value is exact (and no stale value ties with it), it is the farthest point.
        """
        blocks = self.blocks
        assert blocks is not None
        n = self.cmat.shape[0]
        width = _LAZY_FIRST_BLOCKS
        work = self.stats["updated"]
        if self.host:
            return self._farthest_lazy_np(n, width, work)
        while True:
            best = self.block_max.max()
            pts = blocks.points_of((self.block_max == best).nonzero().squeeze(1))
            pts = pts[(self.mind[pts].to(torch.float64) == best) & ~self.blocked[pts]]
            stale = pts[self.last_seen[pts] < n]
            if stale.numel() == 0:
                self._choose_next_update(self.stats["updated"] - work)
                return int(pts.min())
            # the stale points among the `width` largest bucket maxima that could exceed the width-th one
            top = self.block_max.topk(min(width, blocks.n))
            floor = top.values[-1]
            cand = blocks.points_of(top.indices)
            cand = cand[(self.last_seen[cand] < n) & ~self.blocked[cand]]
            cand = cand[self.mind[cand].to(torch.float64) >= floor]
            self._refresh(torch.unique(torch.cat([cand, stale])))
            self._recompute_max(torch.unique(blocks.block_of[torch.cat([cand, stale])]))
            self.stats["refreshes"] += 1
            width = min(2 * width, _LAZY_MAX_BLOCKS)

    def _farthest_lazy_np(self, n: int, width: int, work: int) -> int:
        """:meth:`_farthest_lazy`, bookkeeping in numpy (CPU): the same refreshes in the same order."""
        blocks = self.blocks
        assert blocks is not None
        bm, mind, blocked, last_seen = self.block_max_np, self.mind_np, self.blocked_np, self.last_seen_np
        while True:
            best = bm.max()
            pts = blocks.points_of_np(np.flatnonzero(bm == best))
            pts = pts[(mind[pts].astype(np.float64) == best) & ~blocked[pts]]
            stale = pts[last_seen[pts] < n]
            if stale.size == 0:
                self._choose_next_update(self.stats["updated"] - work)
                return int(pts.min())
            # the stale points among the `width` largest bucket maxima that could exceed the width-th one
            top = self.block_max.topk(min(width, blocks.n))  # torch's choice among tied maxima
            floor = top.values.numpy()[-1]
            cand = blocks.points_of_np(top.indices.numpy())
            cand = cand[(last_seen[cand] < n) & ~blocked[cand]]
            cand = cand[mind[cand].astype(np.float64) >= floor]
            both = np.concatenate([cand, stale])
            self._refresh(torch.from_numpy(np.unique(both)))
            self._recompute_max_np(np.unique(blocks.block_of_np[both]))
            self.stats["refreshes"] += 1
            width = min(2 * width, _LAZY_MAX_BLOCKS)

    def _choose_next_update(self, pairs: int) -> None:
        """Early on (distances all alike, most of them moving a little at every pick) laziness computes
        nearly as much as a full scan, through gathers: when one argmax cost more than half of a full
        scan's point-centre pairs, the next picks use full scans, for a doubling number of picks each
        time; a cheap argmax resets the back-off. Depends only on the data, so runs are reproducible."""
        full = self.x.shape[0] * max(self.last_added, 1)
        if pairs > _EAGER_WHEN * full:
            self.eager_left, self.eager_backoff = self.eager_backoff, 2 * self.eager_backoff
        elif pairs < _EAGER_WHEN * full / 4:
            self.eager_backoff = _EAGER_FIRST_BACKOFF

    def _distances(self, pts: Tensor | slice, centers: Tensor, c_sq: Tensor | None) -> Tensor:
        """Distance of the points ``pts`` to their nearest centre among ``centers`` (C,D): the one formula
        of every update path (the same numbers whichever path computes them)."""
        x = self.x[pts] if isinstance(pts, slice) else self.x.index_select(0, pts)
        dots = x @ centers.T  # (n, C)
        if self.distance == "cosine":
            d = (1.0 - dots.amax(dim=1)).clamp_min_(0.0)
            return d.masked_fill_(d <= self.zero_floor, 0.0)
        d2 = self.sq[pts][:, None] + c_sq[None, :] - 2.0 * dots
        near = (d2 <= self.exact_below).nonzero()  # pairs the formula cannot tell from 0: from the difference
        for s in range(0, near.shape[0], _EXACT_PAIRS):
            r, c = near[s : s + _EXACT_PAIRS].unbind(1)
            diff = x.index_select(0, r).to(torch.float64) - centers.index_select(0, c).to(torch.float64)
            d2[r, c] = diff.square_().sum(1).to(d2.dtype)
        return d2.amin(dim=1).clamp_min_(0.0).sqrt_()

    def _full_update(self, center_idx: Tensor) -> None:
        M = self.x.shape[0]
        centers = self.x.index_select(0, center_idx)
        c_sq = self.sq[center_idx] if self.sq is not None else None
        for s in range(0, M, self.chunk):
            e = min(s + self.chunk, M)
            d = self._distances(slice(s, e), centers, c_sq)
            torch.minimum(self.mind[s:e], d, out=self.mind[s:e])
        self.stats["updated"] += M * int(center_idx.numel())

    def _threshold(self, mind: Tensor) -> Tensor:
        """Smallest true distance ‖x−c‖ (metric space) that can no longer lower ``mind`` in floating point."""
        m = mind.to(torch.float64)
        if self.distance == "cosine":  # d = 1 − x·c = ‖x−c‖²/2 on unit vectors
            return (2.0 * (m * (1.0 + self.rel) + self.eps_dist)).sqrt()
        return (m.square() * (1.0 + self.rel) + self.eps_dist).sqrt()

    def _bounded_update(self, center_idx: Tensor) -> None:
        blocks = self.blocks
        assert blocks is not None
        if self.dense_left > 0:  # backing off: the bounds ruled out too little at the last test
            self.dense_left -= 1
            self.stats["dense"] += 1
            self._full_update(center_idx)
            return
        if self.block_max_stale:
            self._recompute_max(torch.arange(blocks.n, device=center_idx.device))
            self.block_max_stale = False
        centers = self.x.index_select(0, center_idx)
        c_sq = (centers * centers).sum(1)
        # lower bound of ‖anchor_b − c‖ over the new centres, rounded down for the dot products' error
        anchor_sq = (blocks.anchor_sq[:, None] + c_sq[None, :] - 2.0 * (blocks.anchors @ centers.T)).amin(1)
        anchor_d = (anchor_sq.to(torch.float64) - self.eps_anchor).clamp_min_(0.0).sqrt_()
        own = torch.unique(blocks.block_of[center_idx])  # blocks whose points just became blocked
        active = (anchor_d - blocks.rho < self._threshold(self.block_max)) & (self.block_max > -math.inf)
        active[own] = True
        act = active.nonzero().squeeze(1)
        if act.numel() == 0:
            self.dense_backoff = 1  # the bounds ruled out everything
            self.stats["bounded"] += 1
            return
        if int((blocks.start[act + 1] - blocks.start[act]).sum()) > _EAGER_DENSE_FRACTION * self.x.shape[0]:
            # the bounds rule out little: a contiguous full scan beats gathering most points, and the next
            # picks skip the test (the block maxima are brought up to date when it runs again)
            self.stats["dense"] += 1
            self._full_update(center_idx)
            self.block_max_stale = True
            self.dense_left = self.dense_backoff
            self.dense_backoff = min(2 * self.dense_backoff, _DENSE_MAX_BACKOFF)
            return
        pts = blocks.points_of(act)
        lower = anchor_d[blocks.block_of[pts]] - blocks.r[pts]
        keep = (lower < self._threshold(self.mind[pts])) & ~self.blocked[pts]
        upd = pts[keep]
        if upd.numel():
            c_sq_ = self.sq[center_idx] if self.sq is not None else None
            for s in range(0, upd.numel(), self.chunk):
                sub = upd[s : s + self.chunk]
                d = self._distances(sub, centers, c_sq_)
                self.mind[sub] = torch.minimum(self.mind[sub], d)
            self.stats["updated"] += int(upd.numel()) * int(center_idx.numel())
        self.dense_backoff = 1  # the bounds paid off
        self.stats["bounded"] += 1
        # the maxima of the blocks that were looked at (their points moved or got blocked)
        vals = torch.where(self.blocked[pts], -math.inf, self.mind[pts].to(torch.float64))
        self.block_max[act] = -math.inf
        self.block_max.scatter_reduce_(0, blocks.block_of[pts], vals, reduce="amax")

    # ------------------------------------------------------------------ picks
    def random_group(self, generator: torch.Generator | None) -> int:
        cand = (self.pickable & ~self.selected).nonzero().squeeze(1)
        gdev = generator.device if generator is not None else torch.device("cpu")
        j = int(torch.randint(cand.numel(), (1,), generator=generator, device=gdev))
        return int(cand[j])

    def farthest(self) -> int:
        """The unblocked point with the largest distance (lowest index among equals)."""
        if self.lazy:
            return self._farthest_lazy()
        if self.blocks is None:
            return int(self.mind.masked_fill(self.blocked, -math.inf).argmax())
        if self.block_max_stale:
            self._recompute_max(torch.arange(self.blocks.n, device=self.block_max.device))
            self.block_max_stale = False
        best = self.block_max.max()
        pts = self.blocks.points_of((self.block_max == best).nonzero().squeeze(1))
        hit = pts[(self.mind[pts].to(torch.float64) == best) & ~self.blocked[pts]]
        return int(hit.min())

    def d2_weights(self) -> Tensor:
        """(M,) draw weights: distance² where unblocked, 0 elsewhere (uniform if all those are 0)."""
        ok = ~self.blocked
        w = torch.where(ok, self.mind, torch.zeros_like(self.mind)).square()
        if not bool(w.sum() > 0):
            w = ok.to(self.mind.dtype)  # every remaining distance is 0: uniform among them
        return w


def _draw(weights: Tensor, generator: torch.Generator | None) -> int:
    """One index with probability ∝ weights (M,) (non-negative, positive sum), using ``generator``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    if weights.numel() <= _MULTINOMIAL_MAX:
        return int(torch.multinomial(weights.to(gdev), 1, generator=generator))
    cdf = weights.to(torch.float64).cumsum(0)
    u = torch.rand(1, generator=generator, device=gdev, dtype=torch.float64).to(cdf.device) * cdf[-1]
    return int(torch.searchsorted(cdf, u, right=True).clamp_(max=weights.numel() - 1))


def _run(
    points: Tensor,
    groups: Tensor,
    budget: int,
    distance: str,
    initial: Sequence[int],
    eligible: Tensor | None,
    generator: torch.Generator | None,
    chunk_size: int,
    progress: bool,
    mode: str,
    pruning: str,
    block_size: int,
) -> GreedyResult:
    st = _State(points, groups, distance, eligible, chunk_size, pruning, block_size, lazy=mode == "kcenter")
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    init = sorted({int(g) for g in initial})
    for g in init:
        if not 0 <= g < st.G:
            raise ValueError(f"initial group id {g} outside [0, {st.G})")
    for g in init:
        st.selected[g] = True
    available = st.n_pickable_left()
    if budget > available:
        raise ValueError(
            f"budget {budget} exceeds the {available} pickable groups (eligible, with at least "
            f"one point, not already in the initial set)"
        )
    if init:  # all initial centres at once, in blocks of _CENTER_BLOCK points
        idx = torch.cat([st.members(g) for g in init])
        st.blocked[idx] = True
        for s in range(0, idx.numel(), _CENTER_BLOCK):
            st.add_centers(idx[s : s + _CENTER_BLOCK])
    has_centers = st.n_centers > 0
    if init and not has_centers:
        log.warning("none of the %d initial groups has points: starting from a random group", len(init))
    res = GreedyResult()
    bar = tqdm(total=budget, desc=f"{mode} selection", disable=not progress, leave=False)
    # the lazy path is thousands of ops on small tensors: a second OpenMP thread only adds wake-ups (ms
    # each on a busy CPU); its few large matrix products switch back to every thread (_refresh)
    threads = intra_op_threads(1) if st.lazy and st.x.device.type == "cpu" else contextlib.nullcontext()
    try:
        with threads:
            for step in range(budget):
                if step == 0 and not has_centers:
                    g = st.random_group(generator)
                    score = math.nan
                elif mode == "kcenter":
                    i = st.farthest()
                    score = float(st.mind[i])
                    g = int(st.groups_host[i])
                else:
                    i = _draw(st.d2_weights(), generator)
                    score = float(st.mind[i])
                    g = int(st.groups_host[i])
                res.order.append(g)
                res.scores.append(score)
                st.add_group(g)
                bar.update(1)
    finally:
        bar.close()
    if st.blocks is not None and st.stats["steps"]:
        log.debug(
            "%s: %d blocks, %.2f%% of a full scan's point-centre distances, %d block refreshes",
            mode,
            st.blocks.n,
            100.0 * st.stats["updated"] / max(st.n_centers * st.x.shape[0], 1),
            st.stats["refreshes"],
        )
    return res


def kcenter_greedy(
    points: Tensor,
    groups: Tensor,
    budget: int,
    *,
    distance: Distance = "cosine",
    initial: Sequence[int] = (),
    eligible: Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 65536,
    progress: bool = False,
    pruning: Pruning = "auto",
    block_size: int = 64,
) -> GreedyResult:
    """Greedy k-center over grouped points: points (M,D), groups (M,) long → ``budget`` group ids in order.

    ``initial``: already selected (labeled) groups: centres from the start, never returned. Without them the
    first pick is a random eligible group drawn with ``generator`` (score NaN). ``eligible`` (G,) bool:
    groups that may be picked (G = eligible.numel(), else groups.max() + 1). Raises ValueError when
    ``budget`` exceeds the number of pickable groups. ``pruning``/``block_size``: how the distances are
    updated (never what they are). See the module docstring for the exact semantics.
    """
    return _run(
        points,
        groups,
        budget,
        distance,
        initial,
        eligible,
        generator,
        chunk_size,
        progress,
        "kcenter",
        pruning,
        block_size,
    )


def d2_sampling(
    points: Tensor,
    groups: Tensor,
    budget: int,
    *,
    distance: Distance = "cosine",
    initial: Sequence[int] = (),
    eligible: Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 65536,
    progress: bool = False,
    pruning: Pruning = "auto",
    block_size: int = 64,
) -> GreedyResult:
    """D² sampling over grouped points (same arguments as :func:`kcenter_greedy`).

    Each pick draws a point of an unselected eligible group with probability ∝ (distance to the selected
    set)² via ``torch.multinomial`` with ``generator`` (uniformly when all those distances are 0) and adds
    its whole group; the score is the drawn point's distance. The distances are exactly those of the full
    scan whatever ``pruning``, so the draws are too.
    """
    return _run(
        points,
        groups,
        budget,
        distance,
        initial,
        eligible,
        generator,
        chunk_size,
        progress,
        "d2",
        pruning,
        block_size,
    )
