"""The public selection loops :func:`kcenter_greedy` and :func:`d2_sampling` (semantics: the package).

One loop for both: validate, seed from the initial groups (or draw a random one), then pick ``budget``
groups — the farthest point's group (k-center) or a D²-drawn point's group — adding each whole group as
centres. Which state keeps the distances (the exact scan or the lazy path) is decided here, once.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from geal.method.kcenter.lazy import LazyState
from geal.method.kcenter.options import DEFAULT_OPTIONS, Distance, KCenterOptions, Pruning
from geal.method.kcenter.state import State, check_inputs
from geal.util.threads import intra_op_threads

__all__ = ["GreedyResult", "d2_sampling", "kcenter_greedy"]

log = logging.getLogger(__name__)

_MULTINOMIAL_MAX = 2**24  # torch.multinomial's category limit (a limit, not a tuning constant)


@dataclass
class GreedyResult:
    """order: picked group ids in pick order; scores: the picked point's distance to the selected set at
    pick time (NaN for a randomly drawn seed group)."""

    order: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def _draw(weights: Tensor, generator: torch.Generator | None) -> int:
    """One index with probability ∝ weights (M,) (non-negative, positive sum), using ``generator``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    if weights.numel() <= _MULTINOMIAL_MAX:
        return int(torch.multinomial(weights.to(gdev), 1, generator=generator))
    cdf = weights.to(torch.float64).cumsum(0)
    u = torch.rand(1, generator=generator, device=gdev, dtype=torch.float64).to(cdf.device) * cdf[-1]
    return int(torch.searchsorted(cdf, u, right=True).clamp_(max=weights.numel() - 1))


def make_state(
    points: Tensor,
    groups: Tensor,
    distance: str,
    eligible: Tensor | None,
    chunk_size: int,
    lazy: bool,
    pruning: str,
    block_size: int,
    options: KCenterOptions = DEFAULT_OPTIONS,
    weights: Tensor | None = None,
) -> State:
    """The state for one selection: :class:`LazyState` when ``lazy`` (k-center) and ``pruning`` asks for
    bounds (``"auto"``: from ``auto_bounds_min_points`` points) on a CPU, else the exact scan's
    :class:`State`. D² needs every distance at every draw, so it always takes the exact scan; so does a
    GPU, where a full scan per step is a fraction of a millisecond and the lazy path's many small steps
    are not (its bookkeeping lives on the host). The choice never changes a pick, score or draw."""
    check_inputs(points, groups, distance, chunk_size)
    if pruning not in ("auto", "bounds", "none"):
        raise ValueError(f"pruning must be 'auto', 'bounds' or 'none', got {pruning!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    M = points.shape[0]
    bounds = pruning == "bounds" or (pruning == "auto" and M >= options.auto_bounds_min_points)
    # weights: the lazy path bounds distance × weight only for weights > 0 (see LazyState.weigh)
    lazy = lazy and (weights is None or bool((weights > 0).all()))
    st: State
    if lazy and bounds and points.device.type == "cpu" and M > 0:
        st = LazyState(points, groups, distance, eligible, chunk_size, block_size, options)
    else:
        st = State(points, groups, distance, eligible, chunk_size, options)
    if weights is not None:
        st.weigh(weights)
    return st


def seed_initial(st: State, budget: int, initial: Sequence[int]) -> bool:
    """Select the ``initial`` groups and add their points as centres (``center_block`` at a time); raise
    ValueError for a negative budget, an unknown group or more picks than pickable groups. → whether
    there is any centre (else the first pick is a random group)."""
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
    if init:  # all initial centres at once, in blocks of center_block points
        idx = torch.cat([st.members(g) for g in init])
        st.blocked[idx] = True
        for s in range(0, idx.numel(), st.options.center_block):
            st.add_centers(idx[s : s + st.options.center_block])
    if init and st.n_centers == 0:
        log.warning("none of the %d initial groups has points: starting from a random group", len(init))
    return st.n_centers > 0


def _run(
    st: State,
    budget: int,
    initial: Sequence[int],
    generator: torch.Generator | None,
    progress: bool,
    mode: str,
) -> GreedyResult:
    """The selection loop of both samplers on the state ``st`` (``mode``: ``"kcenter"`` or ``"d2"``)."""
    budget = int(budget)
    has_centers = seed_initial(st, budget, initial)
    res = GreedyResult()
    bar = tqdm(total=budget, desc=f"{mode} selection", disable=not progress, leave=False)
    # the lazy path is thousands of ops on small tensors: a second OpenMP thread only adds wake-ups (ms
    # each on a busy CPU); its few large matrix products switch back to every thread
    threads = intra_op_threads(1) if st.lazy else contextlib.nullcontext()
    try:
        with threads:
            for step in range(budget):
                if step == 0 and not has_centers:
                    g = st.random_group(generator)
                    score = math.nan
                else:
                    i = st.farthest() if mode == "kcenter" else _draw(st.d2_weights(), generator)
                    score = float(st.scores()[i])
                    g = int(st.groups_host[i])
                res.order.append(g)
                res.scores.append(score)
                st.add_group(g)
                bar.update(1)
    finally:
        bar.close()
    if isinstance(st, LazyState) and st.stats["steps"]:
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
    options: KCenterOptions = DEFAULT_OPTIONS,
    weights: Tensor | None = None,
) -> GreedyResult:
    """Greedy k-center over grouped points: points (M,D), groups (M,) long → ``budget`` group ids in order.

    ``initial``: already selected (labeled) groups: centres from the start, never returned. Without them the
    first pick is a random eligible group drawn with ``generator`` (score NaN). ``eligible`` (G,) bool:
    groups that may be picked (G = eligible.numel(), else groups.max() + 1). Raises ValueError when
    ``budget`` exceeds the number of pickable groups. ``pruning``/``block_size``/``options``: how the
    distances are updated (never what they are). ``weights`` (G,) ≥ 0: pick the point with the largest
    distance × its group's weight instead (density-weighted k-center; the lazy path bounds the weighted
    values when every weight is > 0, else the exact scan). See :mod:`geal.method.kcenter` for the exact
    semantics.
    """
    st = make_state(
        points, groups, distance, eligible, chunk_size, True, pruning, block_size, options, weights
    )
    return _run(st, budget, initial, generator, progress, "kcenter")


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
    options: KCenterOptions = DEFAULT_OPTIONS,
    weights: Tensor | None = None,
) -> GreedyResult:
    """D² sampling over grouped points (same arguments as :func:`kcenter_greedy`).

    Each pick draws a point of an unselected eligible group with probability ∝ (distance to the selected
    set)² via ``torch.multinomial`` with ``generator`` (uniformly when all those distances are 0) and adds
    its whole group; the score is the drawn point's distance. D² needs every distance at every draw: it
    always runs the exact scan (``pruning`` and ``block_size`` are checked, and change nothing).
    ``weights`` (G,) ≥ 0: draw ∝ (distance × the group's weight)² instead.
    """
    st = make_state(
        points, groups, distance, eligible, chunk_size, False, pruning, block_size, options, weights
    )
    return _run(st, budget, initial, generator, progress, "d2")
