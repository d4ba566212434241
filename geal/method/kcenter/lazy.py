"""The bounded lazy k-center path (CPU): only the distances an argmax needs, computed as the exact scan does.

A point's stored distance only ever decreases as centres are added, so a stale value bounds the exact one
from above. :meth:`LazyState.farthest` refreshes only the stale points with the largest stored values
(found through per-block maxima of a static :class:`~geal.method.kcenter.blocks.Blocks` partition) until
the largest value is exact; the refreshes themselves (:mod:`geal.method.kcenter.refresh`) read only the
centres the triangle inequality cannot rule out. While an argmax costs more than half a full scan (early on,
when every distance moves a little at every pick) the next picks use full scans instead, for a doubling
number of picks (a rule on work counts: runs stay reproducible); before the first of them every stale point
is brought up to date.

The bookkeeping (block maxima, candidate centres, bounds) runs in numpy on views sharing the tensors'
memory: thousands of index ops on small arrays per pick, without torch's per-call overhead. Every matrix
product is torch's, through :meth:`~geal.method.kcenter.state.State.distances`, so the picks are the exact
scan's. CPU only (numpy views); :func:`geal.method.kcenter.kcenter_greedy` runs the exact scan elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from geal.method.kcenter.blocks import Blocks
from geal.method.kcenter.options import DEFAULT_OPTIONS, KCenterOptions
from geal.method.kcenter.refresh import refresh
from geal.method.kcenter.state import State
from geal.util.threads import intra_op_threads

__all__ = ["LazyState"]


class LazyState(State):
    """:class:`State` plus the blocks and the lazy bookkeeping (M > 0 points on the CPU).

    cmat (n,D) / c_sq (n,): the centres in pick order (views of buffers grown by doubling); last_seen (M,)
    long: point i's distance covers the first last_seen[i] centres; center_rank (M,): each point's position
    in cmat (2^62 for non-centres); block_max (nb,) float64: the largest stored distance of each block's
    unblocked points (−inf: none left), an upper bound of the exact maximum; block_newest (nb,): the
    rank of each block's latest centre (−1: none). ``*_np``: numpy views of the same memory.
    """

    lazy = True

    def __init__(
        self,
        points: Tensor,
        groups: Tensor,
        distance: str,
        eligible: Tensor | None,
        chunk_size: int,
        block_size: int,
        options: KCenterOptions = DEFAULT_OPTIONS,
    ) -> None:
        super().__init__(points, groups, distance, eligible, chunk_size, options)
        M, dt, dev = self.x.shape[0], self.x.dtype, self.x.device
        if dev.type != "cpu" or M == 0:
            raise ValueError("the lazy path needs points on the CPU (and at least one)")
        self.blocks = Blocks(self.x, block_size, options)
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
        self.eps_anchor = 4.0 * self.gamma * (2.0 * max(self.norm_max, anchor_max)) ** 2
        self.eps_dist = 4.0 * self.gamma * (1.0 if distance == "cosine" else 4.0 * self.norm_max**2)
        self.rel = 8.0 * self.u
        # eager steps still to run (full scans: every point stays up to date) and the next back-off
        self.eager_left, self.eager_backoff = 0, options.eager_first_backoff
        self._cap = 0
        self.cmat = torch.empty(0, self.x.shape[1], dtype=dt, device=dev)
        self.c_sq = torch.empty(0, dtype=dt, device=dev)
        self._cbuf, self._csqbuf = self.cmat, self.c_sq
        self.last_seen = torch.zeros(M, dtype=torch.long, device=dev)
        # few-row refreshes that skip the bounds (they ruled out too little lately) and the next back-off
        self.bound_skip, self.bound_backoff = 0, 1
        self.center_rank = torch.full((M,), 2**62, dtype=torch.long, device=dev)
        self.mind_np, self.blocked_np = self.mind.numpy(), self.blocked.numpy()
        self.last_seen_np, self.center_rank_np = self.last_seen.numpy(), self.center_rank.numpy()
        self.block_max_np = self.block_max.numpy()
        self.block_newest = np.full(self.blocks.n, -1, dtype=np.int64)

    def add_centers(self, center_idx: Tensor) -> None:
        """Record the centres ``center_idx``; distances follow at the next argmax, or now while eager."""
        self.n_centers += int(center_idx.numel())
        self.last_added = int(center_idx.numel())
        self.stats["steps"] += 1
        n_before = self.cmat.shape[0]
        self._append_centers(center_idx)
        if self.eager_left > 0:  # bring every point up to date now (no lazy work at the next argmax)
            self.eager_left -= 1
            open_ = ~self.blocked
            if bool((self.last_seen[open_] == n_before).all()):  # all current: one contiguous scan
                with intra_op_threads(self.threads):
                    self.full_update(center_idx)
            else:  # the first eager pick after lazy ones: catch every stale point up
                stale = ((self.last_seen < self.cmat.shape[0]) & open_).nonzero().squeeze(1)
                if stale.numel():
                    refresh(self, stale)
            self.last_seen.fill_(self.cmat.shape[0])
            self.recompute_max(np.arange(self.blocks.n))

    def _append_centers(self, center_idx: Tensor) -> None:
        """Record new centres (contiguous, in pick order) and the maxima of the blocks that lost points."""
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
        # blocks that just lost points to the selection: their maximum is over fewer points
        cb = self.blocks.block_of_np[center_idx.numpy()]
        np.maximum.at(self.block_newest, cb, np.arange(n, n + k))
        self.recompute_max(np.unique(cb))

    def recompute_max(self, blocks_idx: np.ndarray) -> None:
        """block_max of the distinct blocks ``blocks_idx`` (int64) from the stored distances."""
        blocks = self.blocks
        if blocks_idx.size == 0:
            return
        pts = blocks.points_of(blocks_idx)
        vals = self.mind_np[pts].astype(np.float64)
        vals[self.blocked_np[pts]] = -math.inf
        lens = blocks.start_np[blocks_idx + 1] - blocks.start_np[blocks_idx]
        offsets = np.cumsum(lens) - lens
        self.block_max_np[blocks_idx] = np.maximum.reduceat(vals, offsets)

    def threshold(self, mind: Tensor) -> Tensor:
        """Smallest true distance ‖x−c‖ (metric space) that can no longer lower ``mind`` in floating point."""
        m = mind.to(torch.float64)
        if self.distance == "cosine":  # d = 1 − x·c = ‖x−c‖²/2 on unit vectors
            return (2.0 * (m * (1.0 + self.rel) + self.eps_dist)).sqrt()
        return (m.square() * (1.0 + self.rel) + self.eps_dist).sqrt()

    def threshold_np(self, m: np.ndarray) -> np.ndarray:
        """:meth:`threshold` on float64 numpy values, op for op (the same IEEE operations)."""
        if self.distance == "cosine":
            return np.sqrt(2.0 * (m * (1.0 + self.rel) + self.eps_dist))
        return np.sqrt(m * m * (1.0 + self.rel) + self.eps_dist)

    def farthest(self) -> int:
        """Refresh the stale points with the largest (upper-bound) distances until the largest is exact.

        Every distance only decreases as centres are added, so a stale value bounds the exact one from
        above: once the largest value is exact (and no stale value ties with it), it is the farthest point.
        """
        blocks = self.blocks
        n = self.cmat.shape[0]
        width = self.options.lazy_first_blocks
        work = self.stats["updated"]
        bm, mind, blocked, last_seen = self.block_max_np, self.mind_np, self.blocked_np, self.last_seen_np
        while True:
            best = bm.max()
            pts = blocks.points_of(np.flatnonzero(bm == best))
            pts = pts[(mind[pts].astype(np.float64) == best) & ~blocked[pts]]
            stale = pts[last_seen[pts] < n]
            if stale.size == 0:
                self._choose_next_update(self.stats["updated"] - work)
                return int(pts.min())
            # the stale points among the `width` largest bucket maxima that could exceed the width-th one
            top = self.block_max.topk(min(width, blocks.n))  # torch's choice among tied maxima
            floor = top.values.numpy()[-1]
            cand = blocks.points_of(top.indices.numpy())
            cand = cand[(last_seen[cand] < n) & ~blocked[cand]]
            cand = cand[mind[cand].astype(np.float64) >= floor]
            both = np.concatenate([cand, stale])
            refresh(self, torch.from_numpy(np.unique(both)))
            self.recompute_max(np.unique(blocks.block_of_np[both]))
            self.stats["refreshes"] += 1
            width = min(2 * width, self.options.lazy_max_blocks)

    def _choose_next_update(self, pairs: int) -> None:
        """Early on (distances all alike, most of them moving a little at every pick) laziness computes
        nearly as much as a full scan, through gathers: when one argmax cost more than ``eager_when`` of a
        full scan's point-centre pairs, the next picks use full scans, for a doubling number of picks each
        time; a cheap argmax resets the back-off. Depends only on the data, so runs are reproducible."""
        full = self.x.shape[0] * max(self.last_added, 1)
        if pairs > self.options.eager_when * full:
            self.eager_left, self.eager_backoff = self.eager_backoff, 2 * self.eager_backoff
        elif pairs < self.options.eager_when * full / 4:
            self.eager_backoff = self.options.eager_first_backoff
