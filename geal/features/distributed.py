"""Feature extraction with several ``torch.distributed`` ranks (started by ``torchrun``).

:func:`extract_distributed` — every rank extracts its share of the missing shards of **one** token store on
a file system all ranks see. A shard is written atomically by the one rank that owns it, so the merge is the
store itself: exact (each shard is what a single process writes for those images) and idempotent (a rerun,
or a restarted rank, extracts only what is still missing). The knowledge clusters asked for are computed by
the rank that extracts each shard, into the sharded cluster cache (:mod:`geal.features.clusters`), with the
same values whichever rank computes a shard. Rank 0 holds the store's lock for the whole job, so other jobs
sharing the cache dir wait instead of extracting it again.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import torch.distributed as dist

from geal.api.features import ExtractionReport, FeatureRequest, FeatureTimings
from geal.features.clusters import ClusterCache
from geal.features.store import FeatureStore
from geal.method.knowledge import ClusterSettings
from geal.util.distributed import rank_and_world

__all__ = ["RankedExtractor", "extract_distributed"]

log = logging.getLogger(__name__)


class RankedExtractor(Protocol):
    """What :func:`extract_distributed` uses of a feature provider
    (:class:`geal.features.provider.FeatureProvider`, which calls it: a protocol, so this module does not
    import the provider back)."""

    timings: FeatureTimings

    def store(
        self, request: FeatureRequest | None = None, clusters: ClusterSettings | None = None
    ) -> FeatureStore: ...

    def open_store(self, request: FeatureRequest) -> FeatureStore: ...

    def extraction_clusters(
        self, store: FeatureStore, requested: ClusterSettings | None
    ) -> ClusterSettings | None: ...

    def extract(
        self,
        store: FeatureStore,
        request: FeatureRequest,
        shards: list[int] | None = None,
        clusters: ClusterSettings | None = None,
    ) -> ExtractionReport: ...

    def note_clustered_in_extraction(self, cache: ClusterCache, shards: list[int]) -> None: ...

    def refresh_store(
        self, store: FeatureStore, request: FeatureRequest, clusters: ClusterSettings | None
    ) -> None: ...

    def check_skipped(self, store: FeatureStore) -> None: ...


def extract_distributed(
    provider: RankedExtractor,
    request: FeatureRequest | None = None,
    clusters: ClusterSettings | None = None,
    group: dist.ProcessGroup | None = None,
) -> FeatureStore:
    """Fill the store of ``provider`` that serves ``request`` (default: global features only) with every
    rank of ``group`` (each extracts missing shards rank, rank + world, ...), computing the knowledge
    clusters of ``clusters`` on the way (see :meth:`FeatureProvider.extraction_clusters`); returns the
    complete store on every rank. Outside torch.distributed: ``provider.store``.

    If a rank fails, every rank raises after the others finished their shares; the shards written so far
    are kept, so rerunning the job (or the failed rank's share) completes the store.
    """
    request = request if request is not None else FeatureRequest.global_only()
    rank, world = rank_and_world(group)
    if world == 1:
        return provider.store(request, clusters)
    store = provider.open_store(request)
    provider.timings.store_dir = str(store.directory)
    if rank == 0:  # damaged or stale shards become missing ones (the other ranks wait for the plan below)
        provider.refresh_store(store, request, clusters)
    lock = store.lock("extracting features with several ranks") if rank == 0 else contextlib.nullcontext()
    with lock:
        plan: list[tuple[list[int], ClusterSettings | None] | None] = [
            (store.missing_shards(), provider.extraction_clusters(store, clusters)) if rank == 0 else None
        ]
        dist.broadcast_object_list(plan, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        assert plan[0] is not None
        missing, settings = plan[0]
        mine = missing[rank::world]
        log.info("rank %d/%d: extracting %d of the %d missing shards", rank, world, len(mine), len(missing))
        error: str | None = None
        try:
            if mine:
                provider.timings.extraction = provider.extract(store, request, mine, settings)
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
    if settings is not None and missing:  # every rank's shards were clustered during this job's extraction
        provider.note_clustered_in_extraction(ClusterCache.of(store, settings), missing)
    provider.timings.extraction_cache_hit = not missing
    provider.check_skipped(store)
    return store
