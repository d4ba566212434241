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
(normalised once); ``"euclidean"`` = sqrt(max(‖a‖²+‖b‖²−2a·b, 0)). Each step updates a running min-distance
vector with one matrix product of all points against the new group's points, chunked over the points by
``chunk_size`` (memory ∝ chunk_size × group size), on the points' device. Work is float32 (float64 when the
points are float64). For ``kcenter_greedy`` with a fixed seed a smaller budget is a prefix of a larger one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["GreedyResult", "d2_sampling", "kcenter_greedy"]

log = logging.getLogger(__name__)

Distance = Literal["cosine", "euclidean"]

_MULTINOMIAL_MAX = 2**24  # torch.multinomial's category limit
_CENTER_BLOCK = 256  # centres per matrix product when seeding from a large initial set


@dataclass
class GreedyResult:
    """order: picked group ids in pick order; scores: the picked point's distance to the selected set at
    pick time (NaN for a randomly drawn seed group)."""

    order: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


class _State:
    """Points, group index and the running min-distance vector of one selection."""

    def __init__(
        self, points: Tensor, groups: Tensor, distance: str, eligible: Tensor | None, chunk_size: int
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
        dev = points.device
        dt = torch.float64 if points.dtype == torch.float64 else torch.float32
        x = points.to(dt)
        if distance == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
        self.x = x
        self.sq = (x * x).sum(1) if distance == "euclidean" else None
        self.distance = distance
        self.chunk = int(chunk_size)
        self.groups = groups.to(device=dev, dtype=torch.long)
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
            self._update(self.x[idx[s : s + _CENTER_BLOCK]], idx[s : s + _CENTER_BLOCK])

    def _update(self, centers: Tensor, center_idx: Tensor) -> None:
        """mind ← min(mind, distance of every point to ``centers`` (C,D)), chunked over the points."""
        M = self.x.shape[0]
        ct = centers.T.contiguous()
        c_sq = self.sq[center_idx] if self.sq is not None else None
        for s in range(0, M, self.chunk):
            e = min(s + self.chunk, M)
            dots = self.x[s:e] @ ct  # (chunk, C)
            if self.distance == "cosine":
                d = (1.0 - dots.amax(dim=1)).clamp_min_(0.0)
            else:
                sq = (self.sq[s:e, None] + c_sq[None, :] - 2.0 * dots).amin(dim=1)
                d = sq.clamp_min_(0.0).sqrt_()
            torch.minimum(self.mind[s:e], d, out=self.mind[s:e])

    def random_group(self, generator: torch.Generator | None) -> int:
        cand = (self.pickable & ~self.selected).nonzero().squeeze(1)
        gdev = generator.device if generator is not None else torch.device("cpu")
        j = int(torch.randint(cand.numel(), (1,), generator=generator, device=gdev))
        return int(cand[j])

    def masked_mind(self) -> Tensor:
        return self.mind.masked_fill(self.blocked, -math.inf)


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
) -> GreedyResult:
    st = _State(points, groups, distance, eligible, chunk_size)
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
    for g in init:
        st.add_group(g)
    has_centers = bool(init) and bool(torch.isfinite(st.mind).any()) if st.mind.numel() else False
    if init and not has_centers:
        log.warning("none of the %d initial groups has points: starting from a random group", len(init))
    res = GreedyResult()
    bar = tqdm(total=budget, desc=f"{mode} selection", disable=not progress, leave=False)
    try:
        for step in range(budget):
            if step == 0 and not has_centers:
                g = st.random_group(generator)
                score = math.nan
            elif mode == "kcenter":
                md = st.masked_mind()
                i = int(md.argmax())
                score = float(md[i])
                g = int(st.groups[i])
            else:
                ok = ~st.blocked
                w = torch.where(ok, st.mind, torch.zeros_like(st.mind)).square()
                if not bool(w.sum() > 0):
                    w = ok.to(st.mind.dtype)  # every remaining distance is 0: uniform among them
                i = _draw(w, generator)
                score = float(st.mind[i])
                g = int(st.groups[i])
            res.order.append(g)
            res.scores.append(score)
            st.add_group(g)
            bar.update(1)
    finally:
        bar.close()
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
) -> GreedyResult:
    """Greedy k-center over grouped points: points (M,D), groups (M,) long → ``budget`` group ids in order.

    ``initial``: already selected (labeled) groups: centres from the start, never returned. Without them the
    first pick is a random eligible group drawn with ``generator`` (score NaN). ``eligible`` (G,) bool:
    groups that may be picked (G = eligible.numel(), else groups.max() + 1). Raises ValueError when
    ``budget`` exceeds the number of pickable groups. See the module docstring for the exact semantics.
    """
    return _run(
        points, groups, budget, distance, initial, eligible, generator, chunk_size, progress, "kcenter"
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
) -> GreedyResult:
    """D² sampling over grouped points (same arguments as :func:`kcenter_greedy`).

    Each pick draws a point of an unselected eligible group with probability ∝ (distance to the selected
    set)² via ``torch.multinomial`` with ``generator`` (uniformly when all those distances are 0) and adds
    its whole group; the score is the drawn point's distance.
    """
    return _run(points, groups, budget, distance, initial, eligible, generator, chunk_size, progress, "d2")
