"""Refreshes of the lazy k-center path: bring stale points up to date with every centre they have not seen.

:func:`refresh` picks one of three ways, all computing each needed distance with
:meth:`~geal.method.kcenter.state.State.distances` (so the same numbers as the exact scan):

* few rows (the usual case, an argmax's candidates): only the centres that the triangle inequality
  ‖x − c‖ ≥ ‖x − anchor(c)‖ − r(c) cannot rule out through the static block of each centre
  (:func:`_bounded`), unless lately it ruled out too little;
* many rows against many pending centres (the catch-up before full scans: hundreds of thousands of points
  against thousands of centres): block by block, with the bound ‖x − c‖ ≥ ‖anchor − c‖ − ρ through each row
  block's anchor (:func:`_by_blocks`);
* otherwise the plain pass over the pending centres in chunks (:func:`_plain`).

Skips keep a margin for the worst-case float32/64 rounding of the dot products (``LazyState.threshold``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from geal.util.threads import intra_op_threads

if TYPE_CHECKING:
    from geal.method.kcenter.lazy import LazyState

__all__ = ["refresh"]


def refresh(st: LazyState, rows: Tensor) -> None:
    """Bring the points ``rows`` (long, distinct) up to date with every centre.

    Few rows (at most ``lazy_bound_rows``): :func:`_bounded`; when it rules out too little, the next 1, 2,
    4, … up to ``lazy_bound_max_skip`` few-row refreshes do not try it (a refresh it does prune resets
    that). Many rows against many pending centres: :func:`_by_blocks`. Otherwise: :func:`_plain`.
    """
    opt = st.options
    n = st.cmat.shape[0]
    last = st.last_seen[rows]
    sort = torch.argsort(last)
    rows, last = rows[sort], last[sort]
    if rows.numel() <= opt.lazy_bound_rows:
        if st.bound_skip > 0:  # the last tries ruled out too little: the plain pass, for a while
            st.bound_skip -= 1
        elif _bounded(st, rows, last, n - int(last[0])):
            st.bound_backoff = 1
            st.last_seen[rows] = n
            return
        else:
            st.bound_skip = st.bound_backoff
            st.bound_backoff = min(2 * st.bound_backoff, opt.lazy_bound_max_skip)
        _plain(st, rows, last)
    elif rows.numel() >= opt.block_refresh_min_rows and n - int(last[0]) >= opt.block_refresh_min_centres:
        _by_blocks(st, rows, last)
    else:
        _plain(st, rows, last)
    st.last_seen[rows] = n


def _plain(st: LazyState, rows: Tensor, last: Tensor) -> None:
    """One pass over the centres the rows have not all seen, in chunks, each chunk computed only for the
    rows that have not seen all of it (``rows`` sorted by ``last``, their ``last_seen``)."""
    n, lo = st.cmat.shape[0], int(last[0])
    step = max(st.options.lazy_centers // 8, min(st.options.lazy_centers, n - lo))
    for s in range(lo, n, step):
        e = min(s + step, n)
        k = int((last < e).sum())  # rows that have not seen all of [s, e) (last is sorted)
        cm, csq = st.cmat[s:e], st.c_sq[s:e] if st.sq is not None else None
        with intra_op_threads(st.threads if k * (e - s) >= st.options.parallel_pairs else 1):
            for r in range(0, k, st.chunk):
                sub = rows[r : min(r + st.chunk, k)]
                d = st.distances(sub, cm, csq)
                st.mind[sub] = torch.minimum(st.mind[sub], d)
        st.stats["updated"] += k * (e - s)


def _bounded(st: LazyState, rows: Tensor, last: Tensor, pending: int) -> bool:
    """The few-rows refresh (``rows`` sorted by ``last``; ``pending`` centres unseen by the oldest row);
    False (nothing done) when the bounds keep more than ``lazy_bound_max_fraction`` of the pending centres.
    Bookkeeping in numpy: every float64 step is the same IEEE operation on the same operands."""
    blocks = st.blocks
    rows_np, last_np = rows.numpy(), last.numpy()
    n = st.cmat.shape[0]
    xr = st.x.index_select(0, rows)
    x_sq = st.sq[rows] if st.sq is not None else torch.ones_like(rows, dtype=xr.dtype)
    a_sq = x_sq[:, None] + blocks.anchor_sq[None, :] - 2.0 * (xr @ blocks.anchors_t)  # (R, nb)
    a_d = a_sq.numpy().astype(np.float64)
    a_d -= st.eps_anchor
    np.sqrt(np.maximum(a_d, 0.0, out=a_d), out=a_d)  # lower bound of ‖x − anchor‖ (R, nb)
    thr = st.threshold_np(st.mind_np[rows_np].astype(np.float64))  # (R,)
    near = np.flatnonzero(((a_d - blocks.rho_np) < thr[:, None]).any(0))
    near = near[st.block_newest[near] >= last_np[0]]  # only blocks with centres some row has not seen
    starts = blocks.start_np[near]
    lens = blocks.start_np[near + 1] - starts
    ends = np.cumsum(lens)
    total = int(ends[-1]) if ends.size else 0
    pos = np.arange(total) + np.repeat(starts - ends + lens, lens)  # blocks.points_of(near), in order
    cand = blocks.order_np[pos]
    rank = st.center_rank_np[cand]
    keep = (rank >= last_np[0]) & (rank < n)  # centres some row has not seen
    cand, rank = cand[keep], rank[keep]
    if cand.size > pending * st.options.lazy_bound_max_fraction:
        return False
    if cand.size:
        which = np.repeat(np.arange(near.size), lens)[keep]  # each candidate's block, within near
        need = (a_d[:, near][:, which] - blocks.r_np[cand]) < thr[:, None]  # (R, C)
        if last_np[-1] > rank.min():  # rows sorted by last: some row has seen some of them
            need &= rank[None, :] >= last_np[:, None]
        cols = cand[need.any(0)]
        if cols.size:
            _update_rows(st, rows, torch.from_numpy(cols))
    st.stats["pairs_tested"] += int(rows.numel()) * blocks.n
    return True


def _update_rows(st: LazyState, rows: Tensor, cols: Tensor) -> None:
    """mind[rows] ← min(mind[rows], distance to the points ``cols``), in one product."""
    c_sq = st.sq[cols] if st.sq is not None else None
    with intra_op_threads(st.threads):  # a plain copy (the same values on any thread count)
        cx = st.x.index_select(0, cols)
    d = st.distances(rows, cx, c_sq)
    st.mind[rows] = torch.minimum(st.mind[rows], d)
    st.stats["updated"] += int(rows.numel()) * int(cols.numel())


def _by_blocks(st: LazyState, rows: Tensor, last: Tensor) -> None:
    """The many-rows refresh, block by block: each block of rows reads only the pending centres that
    ‖x − c‖ ≥ ‖anchor − c‖ − ρ cannot rule out for the largest threshold of its rows. The blocks are taken
    in groups that bound the (blocks × pending centres) test arrays to ``block_test_elements``
    (:func:`_by_blocks_group`)."""
    n = st.cmat.shape[0]
    bo = st.blocks.block_of.index_select(0, rows)
    by_block = torch.sort(bo, stable=True).indices
    rows, last, bo = rows[by_block], last[by_block], bo[by_block]
    ub, counts = torch.unique_consecutive(bo, return_counts=True)  # (U,) the rows' blocks
    ends = torch.cumsum(counts, 0).tolist()
    per_group = max(1, st.options.block_test_elements // max(n - int(last.min()), 1))
    for a in range(0, ub.numel(), per_group):
        b = min(a + per_group, ub.numel())
        r0, r1 = ends[a] - int(counts[a]), ends[b - 1]
        _by_blocks_group(st, rows[r0:r1], last[r0:r1], ub[a:b], counts[a:b])


def _by_blocks_group(st: LazyState, rows: Tensor, last: Tensor, g_blocks: Tensor, counts: Tensor) -> None:
    """One group of :func:`_by_blocks`: ``rows`` (their ``last``) grouped by block, ``counts`` rows in each
    of ``g_blocks``. Where the bound keeps more than ``block_refresh_max_kept`` of the pending pairs, the
    plain pass instead (it streams them faster than per-block gathers)."""
    blocks, n, dev = st.blocks, st.cmat.shape[0], rows.device
    lo = int(last.min())
    seg = torch.repeat_interleave(torch.arange(g_blocks.numel(), device=dev), counts)
    thr_b = torch.full((g_blocks.numel(),), -math.inf, dtype=torch.float64, device=dev)
    thr_b.scatter_reduce_(0, seg, st.threshold(st.mind[rows]), reduce="amax")
    first_b = torch.full((g_blocks.numel(),), n, dtype=torch.long, device=dev)
    first_b.scatter_reduce_(0, seg, last, reduce="amin")  # the oldest row of each block
    cm, c_sq = st.cmat[lo:n], st.c_sq[lo:n]
    with intra_op_threads(st.threads):  # (blocks, n − lo): one large product
        a_sq = blocks.anchor_sq[g_blocks][:, None] + c_sq[None, :] - 2.0 * (blocks.anchors[g_blocks] @ cm.T)
    a_d = (a_sq.to(torch.float64) - st.eps_anchor).clamp_min_(0.0).sqrt_()
    need = (a_d - blocks.rho[g_blocks][:, None]) < thr_b[:, None]  # (blocks, n − lo)
    need &= torch.arange(lo, n, device=dev)[None, :] >= first_b[:, None]  # unseen by a row
    kept = int((need.sum(1) * counts).sum())
    if kept > st.options.block_refresh_max_kept * int((n - last).sum()):
        order = torch.argsort(last)
        _plain(st, rows[order], last[order])
        return
    ends = torch.cumsum(counts, 0).tolist()
    # every thread: each (block rows × kept centres) product is large enough for both (VOC catch-up
    # of 404,200 points × 5,050 centres: 2.0 s on 2 threads, 3.8 s on one)
    with intra_op_threads(st.threads):
        for u, cols in enumerate(need.unbind(0)):
            cols = cols.nonzero().squeeze(1)
            if cols.numel() == 0:
                continue
            sub = rows[ends[u] - int(counts[u]) : ends[u]]
            c_sq_ = c_sq[cols] if st.sq is not None else None
            d = st.distances(sub, cm.index_select(0, cols), c_sq_)
            st.mind[sub] = torch.minimum(st.mind[sub], d)
    st.stats["updated"] += kept
    st.stats["block_refreshes"] += 1
