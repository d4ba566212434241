"""The pool's features for selectors and tasks: the :class:`~geal.api.features.FeatureSource` over the two
cached stages.

* **Stage 1, the token store** (:mod:`geal.features.store`): the network runs once per (backbone, weights,
  preprocessing, layers, pool, contents). Which store serves a :class:`~geal.api.features.FeatureRequest`:
  a request for dense tokens, the store of its layers; a request for global features only (they do not
  depend on the layers), the store of the default layers (``TokenLayers()``, GEAL's defaults), so a GEAL
  run and a Core-Set run share one store. ``ExtractionSettings.cache_mode`` says what a store keeps:
  ``full`` a dense store (tokens, attention maps, global features), ``clusters_only`` global features and
  validity only.
* **Stage 2, the knowledge-cluster cache** (:mod:`geal.features.clusters`): one per (store, cluster
  settings), so sweeps over τ, K, distance, sampler, seed or budget never run the network again, and sweeps
  over distance/sampler/seed/budget never re-run k-means. Knowledge clusters always come from it.

When :meth:`FeatureProvider.knowledge_clusters` needs a store that is not extracted yet, the extraction
computes the clusters of the asked setting shard by shard while each shard is on the device and writes them
to the cache (a cold run never reads the tokens back; a ``clusters_only`` store gets its clusters only this
way). Cluster shards that are still missing afterwards (shards extracted earlier without them) are computed
from the stored tokens.

Both stages are computed under a file lock, so parallel jobs that share the cache dir (a sweep started all
at once) extract a store once and compute each cluster setting once; the others wait and read them.

Every hit is checked as a fresh run would be (docs/design.md §3.1): the shards' digests (global features and
validity on open, tokens and cluster files when read), the images' fingerprints (size, mtime: changed
images are re-extracted, ``timings.refreshed_images``), the skipped images of the extraction that made the
store (``timings.skipped``; with ``on_error=raise`` they raise, as a fresh run would), and the finiteness of
the features handed out. A damaged shard or cluster file is quarantined and computed again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from geal.api.features import (
    ExtractionReport,
    FeatureRequest,
    FeatureTimings,
    GlobalFeatures,
    KnowledgeClusterSet,
    TokenLayers,
)
from geal.api.pool import ImagePool
from geal.features.backbones.base import Backbone
from geal.features.clusters import (
    ClusterCache,
    ClusterShardWriter,
    DamagedClusterShardError,
    compute_cluster_shards,
    drop_cluster_shards,
    not_stored_error,
    quarantine_cluster_file,
    started_settings,
)
from geal.features.distributed import extract_distributed
from geal.features.extract import ExtractionSettings, extract_to_store
from geal.features.store import (
    STORE_VERSION,
    DamagedShardError,
    FeatureStore,
    Fingerprint,
    SkippedImageError,
    fingerprint,
)
from geal.method.knowledge import ClusterSettings

log = logging.getLogger(__name__)

#: how many times a read that finds damage repairs and reads again before giving up
REPAIR_ATTEMPTS = 3


class NonFiniteFeaturesError(ValueError):
    """Features of some images are NaN or infinite (a broken backbone, weights or precision)."""


#: the layers of the store that serves requests for global features only
GLOBAL_REQUEST_LAYERS = TokenLayers()


class FeatureProvider:
    """Gives selectors and tasks the pool's features, extracting and clustering only what is not cached yet
    (implements :class:`geal.api.features.FeatureSource`).

    backbone_factory: builds the backbone on demand (never called on a cache hit).
    backbone_key:     what identifies the backbone's outputs (config + weights identity), for the cache key.
    """

    def __init__(
        self,
        pool: ImagePool,
        backbone_factory: Callable[[], Backbone],
        backbone_key: dict[str, Any],
        cache_dir: Path,
        settings: ExtractionSettings,
        device: torch.device,
        label: str = "features",
    ) -> None:
        self.pool = pool
        self.backbone_factory = backbone_factory
        self.backbone_key = backbone_key
        self.cache_dir = Path(cache_dir).expanduser()
        self.settings = settings
        self.device = device
        self.label = label
        self.timings = FeatureTimings()
        #: cluster cache directory → the shards this provider's extractions clustered (for the timings only)
        self._clustered_in_extraction: dict[Path, set[int]] = {}
        self._fingerprints: list[Fingerprint] | None = None
        #: store directories checked by this provider (digests of the small arrays, fingerprints)
        self._checked: set[Path] = set()

    def fingerprints(self) -> list[Fingerprint]:
        """(size, mtime_ns) of every image file of the pool (one ``stat`` each; None: not a file)."""
        if self._fingerprints is None:
            self._fingerprints = [fingerprint(self.pool.file_path(i)) for i in range(len(self.pool))]
        return self._fingerprints

    # ------------------------------------------------------------------ stage 1: the token store
    def open_store(self, request: FeatureRequest | None = None) -> FeatureStore:
        """The (possibly incomplete) store that serves ``request`` (default: global features only) in this
        cache mode; nothing is extracted."""
        layers = (request.tokens if request is not None else None) or GLOBAL_REQUEST_LAYERS
        key: dict[str, Any] = {
            "store_version": STORE_VERSION,
            "backbone": self.backbone_key,
            "layers": {"feature": layers.feature, "attention": layers.attention},
            "amp": self.settings.amp,
            "decode": self.settings.decode,
            "pool": self.pool.identity(),
        }
        dense = self.settings.cache_mode == "full"
        store = FeatureStore.open(
            self.cache_dir,
            key,
            len(self.pool),
            self.settings.shard_size,
            label=f"{self.label}-{self.pool.name}" + ("" if dense else "-global"),
            contents="dense" if dense else "global",
        )
        store.fingerprints = self.fingerprints()
        return store

    def store(
        self, request: FeatureRequest | None = None, clusters: ClusterSettings | None = None
    ) -> FeatureStore:
        """The complete store that serves ``request`` (default: global features only), extracting its
        missing shards first under the store's lock; inside a torch.distributed job every rank extracts its
        share, see :func:`geal.features.distributed.extract_distributed`. An extraction run here also
        computes the knowledge clusters of ``clusters`` into their cache, shard by shard (see
        :meth:`extraction_clusters`)."""
        request = request if request is not None else FeatureRequest.global_only()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return extract_distributed(self, request, clusters)
        store = self.open_store(request)
        self.timings.store_dir = str(store.directory)
        t0 = time.perf_counter()
        waited = self._waited()
        self.refresh_store(store, request, clusters)
        checked = time.perf_counter() - t0 - (self._waited() - waited)
        hit = store.complete
        if not hit:
            with self._locked(store.lock()):
                if store.complete:  # another job filled it while we waited
                    log.info("features: extracted meanwhile by another job (%s)", store.directory)
                else:
                    settings = self.extraction_clusters(store, clusters)
                    self.timings.extraction = self.extract(store, request, clusters=settings)
        if self.timings.extraction_cache_hit is None:
            self.timings.extraction_cache_hit = self.timings.extraction is None
        if hit:
            log.info("features: cache hit (%s)", store.directory)
        t1 = time.perf_counter()
        self.check_skipped(store)
        checked += time.perf_counter() - t1
        self.timings.extra["store_check_s"] = self.timings.extra.get("store_check_s", 0.0) + checked
        return store

    def _waited(self) -> float:
        return float(self.timings.extra.get("lock_wait_s", 0.0))

    @contextlib.contextmanager
    def _locked(self, lock: contextlib.AbstractContextManager[None]) -> Iterator[None]:
        """Hold ``lock``; the time spent waiting for it (another job extracting) is booked as
        ``lock_wait_s``, not as this run's work."""
        t0 = time.perf_counter()
        with lock:
            self.timings.extra["lock_wait_s"] = self._waited() + time.perf_counter() - t0
            yield

    def refresh_store(
        self, store: FeatureStore, request: FeatureRequest, clusters: ClusterSettings | None
    ) -> None:
        """Before a store is used (once per provider and store): quarantine its damaged shards (digests of
        the small arrays, readable meta) and drop the shards whose images changed since they were written;
        both become missing and are extracted again by the caller."""
        if store.directory in self._checked:
            return
        damaged = store.check()
        stale = store.stale_images(self.fingerprints())
        if damaged or stale:
            with self._locked(store.lock("repairing")):
                damaged = store.check()  # another job may have repaired it meanwhile
                old = [s for s, err in damaged.items() if err.reason.startswith("no digest")]
                if old:
                    log.warning(
                        "features: %d shard(s) of %s were written without digests (an older version): not "
                        "trusted, moved to its quarantine/ (delete it once done) and extracted again",
                        len(old),
                        store.directory,
                    )
                for shard, err in damaged.items():
                    store.quarantine(shard, f"damaged ({err.reason})", quiet=shard in old)
                stale = store.stale_images(self.fingerprints())
                if stale:
                    log.warning(
                        "features: %d image(s) changed since they were extracted (size or mtime): "
                        "re-extracting %d shard(s) of %s",
                        sum(stale.values()),
                        len(stale),
                        store.directory,
                    )
                    for shard in stale:
                        store.quarantine(shard, "its images changed")
                    drop_cluster_shards(store, list(stale))
        self.timings.refreshed_images += sum(stale.values())
        self.timings.quarantined.extend(str(store.shard_dir(s)) for s in damaged)
        self._checked.add(store.directory)

    def check_skipped(self, store: FeatureStore) -> None:
        """The skipped images of the extraction that made the store (every run reports them); with
        ``on_error=raise`` they stop the run with the error the first one gave."""
        skipped = store.skipped()
        self.timings.skipped = skipped
        if skipped and self.settings.on_error == "raise":
            raise SkippedImageError(skipped[0].get("error") or f"cannot load image {skipped[0]['source']}")

    def _repair(self, err: DamagedShardError | DamagedClusterShardError, request: FeatureRequest) -> None:
        """After a read found damage: quarantine what is damaged (under the store's lock) so that the next
        :meth:`store` / cluster computation makes it again."""
        store = self.open_store(request)
        with self._locked(store.lock("repairing")):
            if isinstance(err, DamagedClusterShardError):
                quarantine_cluster_file(store, err.path, f"damaged ({err.reason})")
                self.timings.quarantined.append(str(err.path))
                if not store.keeps_tokens:  # no tokens to recompute it from: extract the shard again
                    store.quarantine(err.shard, "its cluster file is damaged and the store keeps no tokens")
            else:
                store.quarantine(err.shard, f"damaged ({err.reason})")
                self.timings.quarantined.append(str(err.path))
        self._checked.discard(store.directory)

    def extraction_clusters(
        self, store: FeatureStore, requested: ClusterSettings | None
    ) -> ClusterSettings | None:
        """The knowledge-cluster setting an extraction of ``store``'s missing shards computes on the way: the
        one asked for; for a store without tokens that already has shards, the one its extraction was started
        with (:func:`~geal.features.clusters.started_settings`), so a resumed extraction completes it."""
        if store.keeps_tokens or len(store.missing_shards()) == store.n_shards:
            return requested
        return started_settings(store)

    def extract(
        self,
        store: FeatureStore,
        request: FeatureRequest,
        shards: list[int] | None = None,
        clusters: ClusterSettings | None = None,
    ) -> ExtractionReport:
        """Run the network over the missing shards of ``store`` (``shards`` only, when given), reading the
        layers of ``request``; with ``clusters``, each extracted shard's knowledge clusters are computed on
        the device and written to their cache. The caller holds the store's lock (or, in a distributed
        extraction, owns these shards)."""
        layers = request.tokens or GLOBAL_REQUEST_LAYERS
        sink = None
        if clusters is not None:
            cache = ClusterCache.of(store, clusters)
            cache.create()
            sink = ClusterShardWriter(cache, self.device)
        report = extract_to_store(
            self.pool,
            self.backbone_factory,
            store,
            settings=self.settings,
            device=self.device,
            feature_layer=layers.feature,
            attention_layer=layers.attention,
            shards=shards,
            shard_sink=sink,
        )
        if sink is not None:
            self.note_clustered_in_extraction(sink.cache, sink.written)
        return report

    def note_clustered_in_extraction(self, cache: ClusterCache, shards: list[int]) -> None:
        """Record that the cluster shards ``shards`` of ``cache`` were computed by an extraction of this run
        (what :attr:`timings` reports; a distributed extraction records every rank's)."""
        self._clustered_in_extraction.setdefault(cache.directory, set()).update(shards)

    def global_features(self) -> GlobalFeatures:
        """Global features (n, D') float32 and validity (n,) of every image (a
        :class:`NonFiniteFeaturesError` names images whose features are not finite)."""
        request = FeatureRequest.global_only()
        for attempt in range(REPAIR_ATTEMPTS):
            try:
                store = self.store()
                features, valid = store.global_features(), store.valid()
                break
            except DamagedShardError as err:
                if attempt == REPAIR_ATTEMPTS - 1:
                    raise
                self._repair(err, request)
        self._check_finite(np.isfinite(features).all(axis=1) | ~valid, np.arange(len(valid)), store)
        return GlobalFeatures(features, valid)

    def _check_finite(self, finite_rows: np.ndarray, owners: np.ndarray, store: FeatureStore) -> None:
        """Raise naming the images of the rows that are not finite."""
        if bool(finite_rows.all()):
            return
        images = sorted(set(int(i) for i in owners[~finite_rows]))
        named = ", ".join(self.pool.source(i) for i in images[:5]) + (" ..." if len(images) > 5 else "")
        raise NonFiniteFeaturesError(
            f"features of {len(images)} image(s) are not finite (NaN or inf): {named}; the backbone, its "
            f"weights or its precision produce them (try extraction.amp=none), or the store "
            f"{store.directory} is damaged (delete it to extract again)"
        )

    # ------------------------------------------------------------------ stage 2: the cluster cache
    def knowledge_clusters(self, request: FeatureRequest, settings: ClusterSettings) -> KnowledgeClusterSet:
        """Knowledge clusters of every valid image over the dense tokens of ``request``, read from their
        cache; what the cache misses is computed first (during the store's extraction when the store is
        missing too; else from the stored tokens, under the cache's lock). A store without tokens that lacks
        them is a :class:`~geal.features.clusters.ClustersNotStoredError` saying how to get them."""
        if request.tokens is None:
            raise ValueError(
                "knowledge clusters are computed from dense tokens: ask with FeatureRequest.dense(...)"
            )
        for attempt in range(REPAIR_ATTEMPTS):
            try:
                return self._knowledge_clusters(request, settings)
            except (DamagedShardError, DamagedClusterShardError) as err:
                if attempt == REPAIR_ATTEMPTS - 1:
                    raise
                self._repair(err, request)
        raise AssertionError("unreachable")

    def _knowledge_clusters(self, request: FeatureRequest, settings: ClusterSettings) -> KnowledgeClusterSet:
        store = self.store(request, clusters=settings)
        t0 = time.perf_counter()
        cache = ClusterCache.of(store, settings)
        computed_now = False
        if not cache.complete:
            if not store.keeps_tokens:
                raise not_stored_error(store, settings)
            with cache.lock():
                missing = cache.missing_shards()  # computed meanwhile by another job?
                if missing:
                    log.info(
                        "knowledge clusters: computing %d of %d shards from the stored tokens",
                        len(missing),
                        store.n_shards,
                    )
                    cache.create()
                    progress = self.settings.progress
                    compute_cluster_shards(store, cache, missing, self.device, progress=progress)
                    computed_now = True
        clusters = cache.read(store.valid())
        finite = np.isfinite(clusters.features.sum(axis=1)) if len(clusters.features) else np.ones(0, bool)
        if not bool(finite.all()):
            finite = np.isfinite(clusters.features).all(axis=1)
        self._check_finite(finite, clusters.owners, store)
        in_extraction = bool(self._clustered_in_extraction.get(cache.directory)) and not computed_now
        self.timings.clusters_cache_hit = not computed_now and not in_extraction
        self.timings.clusters_in_extraction = in_extraction
        self.timings.clusters_seconds = time.perf_counter() - t0
        how = "computed during extraction" if in_extraction else "computed" if computed_now else "cache hit"
        log.info("knowledge clusters: %s (%s)", how, cache.directory)
        return clusters
