"""k-center when the points (knowledge clusters) do not fit one device: sharded across ``torch.distributed``
ranks.

Each rank keeps its slice of the points and its slice of the running distances; each step is one all-gather
of the per-rank best candidate (the largest distance, ties to the lowest global point index) and one
all-gather of the picked group's points. Picks and scores equal :func:`geal.method.kcenter.kcenter_greedy`
over all the points (its full-scan update, the same formula). The NCCL path is the same code as the gloo
path that the tests run on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from geal.method.kcenter.api import GreedyResult
from geal.method.kcenter.options import DEFAULT_OPTIONS, Distance, KCenterOptions
from geal.method.kcenter.state import State
from geal.util.distributed import all_gather, comm_device, rank_and_world

__all__ = ["kcenter_greedy_sharded"]


def kcenter_greedy_sharded(
    points: Tensor,
    groups: Tensor,
    budget: int,
    *,
    distance: Distance = "cosine",
    initial: Sequence[int] = (),
    eligible: Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 65536,
    group: dist.ProcessGroup | None = None,
    options: KCenterOptions = DEFAULT_OPTIONS,
) -> GreedyResult:
    """:func:`geal.method.kcenter.kcenter_greedy` over points split across the ranks of ``group``.

    Each rank passes its own rows: points (m_r,D), groups (m_r,) global group ids; the ranks' rows are
    consecutive slices of the global point order, rank 0 first (so ties still go to the lowest global
    point index). A group's points may span ranks. ``initial``, ``eligible`` (G,) and the ``generator``'s
    seed must be the same on every rank. Every rank returns the same result. ``options``: the tuning
    constants (here ``gpu_min_chunk`` and ``gather_rows``).
    """
    shard = _Shard(points, groups, distance, eligible, chunk_size, group, options)
    st = shard.st
    budget = int(budget)
    init = sorted({int(g) for g in initial})
    for g in init:
        if not 0 <= g < st.G:
            raise ValueError(f"initial group id {g} outside [0, {st.G})")
        st.selected[g] = True
    available = st.n_pickable_left()
    if budget > available:
        raise ValueError(
            f"budget {budget} exceeds the {available} pickable groups (eligible, with at least one point, "
            f"not already in the initial set)"
        )
    per_call = max(1, options.gather_rows // max(shard.width, 1))  # initial groups per all-gather
    for s in range(0, len(init), per_call):
        local = [st.members(g) for g in init[s : s + per_call]]
        empty = torch.zeros(0, dtype=torch.long, device=st.x.device)
        shard.add_centers(torch.cat(local) if local else empty, per_call * shard.width)
    has_centers = st.n_centers > 0
    res = GreedyResult()
    for step in range(budget):
        if step == 0 and not has_centers:
            g, score = st.random_group(generator), math.nan
        else:
            g, score = shard.farthest()
        res.order.append(g)
        res.scores.append(score)
        st.selected[g] = True
        shard.add_centers(st.members(g), shard.width)
    return res


class _Shard:
    """This rank's :class:`State` (its rows; ``pickable`` global) and its place among the ranks: offset (its
    first row's global index), width (the most points of one group on one rank), the collectives' device."""

    def __init__(
        self,
        points: Tensor,
        groups: Tensor,
        distance: str,
        eligible: Tensor | None,
        chunk_size: int,
        group: dist.ProcessGroup | None,
        options: KCenterOptions,
    ) -> None:
        self.group = group
        rank, self.world = rank_and_world(group)
        dev = points.device
        self.cdev = cdev = comm_device(group) if self.world > 1 else dev
        if groups.numel() and int(groups.min()) < 0:
            raise ValueError("group ids must be >= 0")
        if eligible is None:
            g_max = torch.tensor([int(groups.max()) if groups.numel() else -1], device=cdev)
            if self.world > 1:
                dist.all_reduce(g_max, op=dist.ReduceOp.MAX, group=group)
            eligible = torch.ones(int(g_max) + 1, dtype=torch.bool, device=dev)
        self.st = st = State(points, groups, distance, eligible.to(dev), chunk_size, options)
        counts = torch.bincount(st.groups, minlength=st.G).to(cdev)
        sizes = torch.tensor([points.shape[0]], device=cdev)
        if self.world > 1:
            dist.all_reduce(counts, group=group)  # points per group over all ranks
            self.offset = sum(int(s) for s in all_gather(sizes, self.world, group)[:rank])
            most = int(torch.bincount(st.groups).max()) if st.groups.numel() else 0
            width = torch.tensor([most], device=cdev)
            dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group)
        else:
            self.offset, width = 0, torch.tensor([int(counts.max()) if counts.numel() else 0])
        self.width = int(width)
        st.pickable = eligible.to(dev) & (counts.to(dev) > 0)  # global: a group with points on any rank
        st.blocked = ~st.pickable[st.groups] if st.groups.numel() else st.blocked

    def gather_centers(self, local_idx: Tensor, n_max: int) -> Tensor:
        """The rows ``local_idx`` of every rank (padded to n_max per rank), concatenated in rank order."""
        st = self.st
        buf = torch.zeros(n_max + 1, st.x.shape[1], dtype=st.x.dtype, device=self.cdev)
        buf[: local_idx.numel()] = st.x.index_select(0, local_idx).to(self.cdev)
        buf[n_max, 0] = local_idx.numel()  # the row count travels in the spare row
        parts = all_gather(buf, self.world, self.group) if self.world > 1 else [buf]
        return torch.cat([p[: int(p[n_max, 0])] for p in parts]).to(st.x.device)

    def add_centers(self, local_idx: Tensor, n_max: int) -> None:
        """Every rank's rows ``local_idx`` become centres (the exact scan over this rank's points)."""
        st = self.st
        centers = self.gather_centers(local_idx, n_max)
        st.blocked[local_idx] = True
        if centers.shape[0]:
            st.n_centers += centers.shape[0]
            c_sq = (centers * centers).sum(1) if st.sq is not None else None
            for s in range(0, st.x.shape[0], st.chunk):
                e = min(s + st.chunk, st.x.shape[0])
                torch.minimum(st.mind[s:e], st.distances(slice(s, e), centers, c_sq), out=st.mind[s:e])

    def farthest(self) -> tuple[int, float]:
        """(group, distance) of the farthest unblocked point over all ranks (ties: lowest global index)."""
        st = self.st
        md = st.mind.masked_fill(st.blocked, -math.inf)
        i = int(md.argmax()) if md.numel() else 0
        value = float(md[i]) if md.numel() else -math.inf
        mine = torch.tensor(
            [value, float(self.offset + i), float(st.groups[i]) if md.numel() else -1.0],
            dtype=torch.float64,
            device=self.cdev,
        )
        cand = torch.stack(all_gather(mine, self.world, self.group)) if self.world > 1 else mine[None]
        best = cand[:, 0].max()
        tied = cand[cand[:, 0] == best]
        win = tied[tied[:, 1].argmin()]
        return int(win[2]), float(win[0])
