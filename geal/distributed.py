"""Scale-out with ``torch.distributed`` (started by ``torchrun``): gloo on CPUs, NCCL on GPUs.

* :func:`extract_distributed` — every rank extracts its share of the missing shards of **one** feature
  store on a file system all ranks see. A shard is written atomically by the one rank that owns it, so the
  merge is the store itself: exact (each shard is what a single process writes for those images) and
  idempotent (a rerun, or a restarted rank, extracts only what is still missing). Rank 0 holds the store's
  lock for the whole job, so other jobs sharing the cache dir wait instead of extracting it again.
* :func:`kcenter_greedy_sharded` — k-center when the points (knowledge clusters) do not fit one device:
  each rank keeps its slice of the points and its slice of the running distances; each step is one
  all-gather of the per-rank best candidate (the largest distance, ties to the lowest global point index)
  and one all-gather of the picked group's points. Picks and scores equal :func:`geal.kcenter.kcenter_greedy`
  over all the points (its full-scan update, the same formula).

On GPUs each rank must ``torch.cuda.set_device(local_rank)`` before the process group is used (NCCL
collectives of Python objects go through the current device). The NCCL path is the same code as the gloo
path that the tests run on CPU; it was not run on GPUs here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from geal.features import ClusterSettings, FeatureProvider
from geal.kcenter import Distance, GreedyResult, _State
from geal.store import FeatureStore

__all__ = [
    "extract_distributed",
    "init_from_env",
    "is_distributed",
    "kcenter_greedy_sharded",
    "rank_and_world",
]

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1): NCCL with
    ``cuda:LOCAL_RANK`` made current where CUDA is available, gloo otherwise. True when distributed."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    log.info("rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    return True


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _comm_device(group: dist.ProcessGroup | None) -> torch.device:
    """Where tensors for collectives live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def extract_distributed(
    provider: FeatureProvider,
    feature_layer: int = -2,
    attention_layer: int = -1,
    clusters: ClusterSettings | None = None,
    group: dist.ProcessGroup | None = None,
) -> FeatureStore:
    """Fill ``provider``'s store with every rank of ``group`` (each extracts missing shards rank, rank +
    world, ...); returns the complete store on every rank. Outside torch.distributed: ``provider.store``.

    If a rank fails, every rank raises after the others finished their shares; the shards written so far
    are kept, so rerunning the job (or the failed rank's share) completes the store.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return provider.store(feature_layer, attention_layer, clusters)
    store = provider.open_store(feature_layer, attention_layer, clusters)
    provider.timings.store_dir = str(store.directory)
    lock = store.lock("extracting features with several ranks") if rank == 0 else contextlib.nullcontext()
    with lock:
        plan: list[list[int] | None] = [store.missing_shards() if rank == 0 else None]
        dist.broadcast_object_list(plan, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        missing = plan[0]
        assert missing is not None
        mine = missing[rank::world]
        log.info("rank %d/%d: extracting %d of the %d missing shards", rank, world, len(mine), len(missing))
        error: str | None = None
        try:
            if mine:
                provider.timings.extraction = provider.extract(store, feature_layer, attention_layer, mine)
        except Exception as err:  # reported to every rank below, then re-raised here
            error = f"{type(err).__name__}: {err}"
            log.exception("rank %d: extraction failed", rank)
        errors: list[str | None] = [None] * world
        dist.all_gather_object(errors, error, group=group)
    failed = {r: e for r, e in enumerate(errors) if e}
    if failed:
        raise RuntimeError(
            f"distributed extraction into {store.directory} failed on rank(s) {sorted(failed)}: {failed}. "
            f"The shards already written are kept: run the job again to extract only the missing ones."
        )
    if not store.complete:
        raise RuntimeError(
            f"distributed extraction finished but {store.directory} still misses shards "
            f"{store.missing_shards()[:10]}: do all ranks see the same cache dir (a shared file system)?"
        )
    provider.timings.extraction_cache_hit = not missing
    return store


def _all_gather(t: Tensor, world: int, group: dist.ProcessGroup | None) -> list[Tensor]:
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return out


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
) -> GreedyResult:
    """:func:`geal.kcenter.kcenter_greedy` over points split across the ranks of ``group``.

    Each rank passes its own rows: points (m_r,D), groups (m_r,) global group ids; the ranks' rows are
    consecutive slices of the global point order, rank 0 first (so ties still go to the lowest global
    point index). A group's points may span ranks. ``initial``, ``eligible`` (G,) and the ``generator``'s
    seed must be the same on every rank. Every rank returns the same result.
    """
    rank, world = rank_and_world(group)
    budget = int(budget)
    dev = points.device
    cdev = _comm_device(group) if world > 1 else dev
    if groups.numel() and int(groups.min()) < 0:
        raise ValueError("group ids must be >= 0")
    if eligible is None:
        g_max = torch.tensor([int(groups.max()) if groups.numel() else -1], device=cdev)
        if world > 1:
            dist.all_reduce(g_max, op=dist.ReduceOp.MAX, group=group)
        eligible = torch.ones(int(g_max) + 1, dtype=torch.bool, device=dev)
    st = _State(points, groups, distance, eligible.to(dev), chunk_size, "none", 1)
    G = st.G
    counts = torch.bincount(st.groups, minlength=G).to(cdev)
    sizes = torch.tensor([points.shape[0]], device=cdev)
    if world > 1:
        dist.all_reduce(counts, group=group)  # points per group over all ranks
        offset = sum(int(s) for s in _all_gather(sizes, world, group)[:rank])
        width = torch.tensor([int(torch.bincount(st.groups).max()) if st.groups.numel() else 0], device=cdev)
        dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group)
    else:
        offset, width = 0, torch.tensor([int(counts.max()) if counts.numel() else 0])
    st.pickable = eligible.to(dev) & (counts.to(dev) > 0)  # global: a group with points on any rank
    st.blocked = ~st.pickable[st.groups] if st.groups.numel() else st.blocked
    D = points.shape[1]

    def gather_centers(local_idx: Tensor, n_max: int) -> Tensor:
        """The rows ``local_idx`` of every rank (padded to n_max per rank), concatenated in rank order."""
        buf = torch.zeros(n_max + 1, D, dtype=st.x.dtype, device=cdev)
        buf[: local_idx.numel()] = st.x.index_select(0, local_idx).to(cdev)
        buf[n_max, 0] = local_idx.numel()  # the row count travels in the spare row
        parts = _all_gather(buf, world, group) if world > 1 else [buf]
        return torch.cat([p[: int(p[n_max, 0])] for p in parts]).to(dev)

    def add_centers(local_idx: Tensor, n_max: int) -> None:
        centers = gather_centers(local_idx, n_max)
        st.blocked[local_idx] = True
        if centers.shape[0]:
            st.n_centers += centers.shape[0]
            c_sq = (centers * centers).sum(1) if st.sq is not None else None
            for s in range(0, st.x.shape[0], st.chunk):
                e = min(s + st.chunk, st.x.shape[0])
                torch.minimum(st.mind[s:e], st._distances(slice(s, e), centers, c_sq), out=st.mind[s:e])

    init = sorted({int(g) for g in initial})
    for g in init:
        if not 0 <= g < G:
            raise ValueError(f"initial group id {g} outside [0, {G})")
        st.selected[g] = True
    available = st.n_pickable_left()
    if budget > available:
        raise ValueError(
            f"budget {budget} exceeds the {available} pickable groups (eligible, with at least one point, "
            f"not already in the initial set)"
        )
    per_call = max(1, 4096 // max(int(width), 1))  # initial groups per all-gather
    for s in range(0, len(init), per_call):
        local = [st.members(g) for g in init[s : s + per_call]]
        add_centers(
            torch.cat(local) if local else torch.zeros(0, dtype=torch.long, device=dev), per_call * int(width)
        )
    has_centers = st.n_centers > 0
    res = GreedyResult()
    for step in range(budget):
        if step == 0 and not has_centers:
            g, score = st.random_group(generator), math.nan
        else:
            md = st.mind.masked_fill(st.blocked, -math.inf)
            i = int(md.argmax()) if md.numel() else 0
            value = float(md[i]) if md.numel() else -math.inf
            mine = torch.tensor(
                [value, float(offset + i), float(st.groups[i]) if md.numel() else -1.0],
                dtype=torch.float64,
                device=cdev,
            )
            cand = torch.stack(_all_gather(mine, world, group)) if world > 1 else mine[None]
            best = cand[:, 0].max()
            tied = cand[cand[:, 0] == best]
            win = tied[tied[:, 1].argmin()]
            g, score = int(win[2]), float(win[0])
        res.order.append(g)
        res.scores.append(score)
        st.selected[g] = True
        add_centers(st.members(g), int(width))
    return res
