"""The pool's features for selectors: the dense store (stage 1) and knowledge clusters (stage 2), both cached.

Stage 1 runs the network once per (backbone, weights, preprocessing, layers, pool). Stage 2 (attention
filter + per-image k-means) is keyed additionally by its own settings, so sweeps over τ, K, distance,
sampler, seed or budget never run the network again, and sweeps over distance/sampler/seed/budget never
re-run k-means.

Both stages are computed under a file lock, so parallel jobs that share the cache dir (a sweep started all
at once) extract a store once and compute a cluster cache once; the others wait and read it. With
``ExtractionSettings.cache_mode="clusters_only"`` stage 2 runs inside stage 1, shard by shard, and only
the knowledge clusters of that one setting are kept (asking for another setting is then an error that
says how to get it).

When a full store is extracted for a caller that names its cluster settings (the GEAL selector does), the
knowledge clusters of those settings are computed too, shard by shard as extraction finishes each one, and
written to the cluster cache when every shard was extracted in that pass (not after a resumed or distributed
extraction): the selector then reads them instead of reading every shard's tokens back from disk.

Knowledge clusters are computed ``batch_images`` images at a time within each shard, each chunk with its
own generator seeded from (``kmeans_seed``, the chunk's first global id): the result does not depend on
which job, rank or resumed run computes a chunk, so both cache modes and distributed extraction agree.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from geal.api.pool import ImagePool
from geal.features.backbones.base import Backbone
from geal.features.extract import ExtractionReport, ExtractionSettings, extract_to_store
from geal.features.store import STORE_VERSION, FeatureStore, ShardArray, ShardData
from geal.method.knowledge import knowledge_clusters
from geal.util.io import atomic_write_bytes, stable_hash
from geal.util.locks import file_lock

log = logging.getLogger(__name__)

#: bump when the knowledge clusters computed for the same settings change (old caches are then ignored)
CLUSTERS_VERSION = 2


class ClustersNotStoredError(RuntimeError):
    """A clusters-only feature store does not hold the knowledge clusters a selector asks for."""


@dataclass(frozen=True)
class ClusterSettings:
    """Everything that determines the knowledge clusters of an image (docs/design.md §1.2–1.4)."""

    tau: float = 0.5
    k: int = 25
    head_reduction: Literal["mean", "max"] = "mean"
    empty_fallback: Literal["max_norm", "max_attention", "all"] = "max_norm"
    kmeans_metric: Literal["euclidean", "cosine"] = "euclidean"
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-4
    kmeans_init: Literal["kmeans++", "random"] = "kmeans++"
    kmeans_seed: int = 0
    batch_images: int = 256  # images clustered together; part of the key (it orders the random draws)

    def identity(self) -> dict[str, Any]:
        """What determines the clusters: these settings and the algorithm's version (the cache key)."""
        return {**asdict(self), "clusters_version": CLUSTERS_VERSION}


@dataclass
class KnowledgeClusterSet:
    """All knowledge clusters of a pool, flattened.

    features: (M, D) float32 cluster centroids
    owners:   (M,) int64 global id of the image each cluster belongs to (non-decreasing)
    """

    features: np.ndarray
    owners: np.ndarray

    def counts(self, n_images: int) -> np.ndarray:
        return np.bincount(self.owners, minlength=n_images)


@dataclass
class FeatureTimings:
    """What the provider did in this run (for run_info.json).

    The knowledge clusters last asked for came from a cache written before this run
    (``clusters_cache_hit``), were computed during this run's extraction (``clusters_in_extraction``: their
    time is part of ``extraction.seconds``; ``clusters_seconds`` is then only the time to read them), or were
    computed from the store when asked (neither; ``clusters_seconds`` is the computation)."""

    extraction: ExtractionReport | None = None
    extraction_cache_hit: bool | None = None
    clusters_seconds: float = 0.0
    clusters_cache_hit: bool | None = None
    clusters_in_extraction: bool = False
    store_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FeatureProvider:
    """Gives selectors the pool's features, extracting and clustering only what is not cached yet.

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
        # (store directory, settings hash) of the knowledge clusters its extractions computed → a full store's
        # clusters until the first knowledge_clusters() call takes them (the cache file holds the same arrays)
        self._clustered_in_extraction: dict[tuple[Path, str], KnowledgeClusterSet | None] = {}

    def open_store(
        self, feature_layer: int = -2, attention_layer: int = -1, clusters: ClusterSettings | None = None
    ) -> FeatureStore:
        """The (possibly incomplete) store for these layers; nothing is extracted. ``clusters``: the
        settings a clusters-only store is filled with when it is created (ignored in full mode)."""
        key: dict[str, Any] = {
            "store_version": STORE_VERSION,
            "backbone": self.backbone_key,
            "layers": {"feature": feature_layer, "attention": attention_layer},
            "amp": self.settings.amp,
            "decode": self.settings.decode,
            "pool": self.pool.identity(),
        }
        mode = self.settings.cache_mode
        if mode == "clusters_only":  # a different store: what it holds is not what a full store holds
            key["cache_mode"] = mode
        label = f"{self.label}-{self.pool.name}" + ("-clusters" if mode == "clusters_only" else "")
        store = FeatureStore.open(
            self.cache_dir,
            key,
            len(self.pool),
            self.settings.shard_size,
            label=label,
            mode=mode,
            clusters=clusters.identity() if mode == "clusters_only" and clusters is not None else None,
        )
        return store

    def store(
        self, feature_layer: int = -2, attention_layer: int = -1, clusters: ClusterSettings | None = None
    ) -> FeatureStore:
        """The complete store for these layers (extracting the missing shards first, under the store's
        lock; inside a torch.distributed job every rank extracts its share, see
        :func:`geal.features.distributed.extract_distributed`). ``clusters``: the knowledge-cluster settings
        the
        caller will ask for; a clusters-only store is filled with them (full stores ignore it)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from geal.features.distributed import extract_distributed  # (it imports this module)

            return extract_distributed(self, feature_layer, attention_layer, clusters)
        store = self.open_store(feature_layer, attention_layer, clusters)
        self.timings.store_dir = str(store.directory)
        hit = store.complete
        if not hit:
            with store.lock():
                if store.complete:  # another job filled it while we waited
                    log.info("features: extracted meanwhile by another job (%s)", store.directory)
                else:
                    self._extract_store(store, feature_layer, attention_layer, clusters)
        if self.timings.extraction_cache_hit is None:
            self.timings.extraction_cache_hit = self.timings.extraction is None
        if hit:
            log.info("features: cache hit (%s)", store.directory)
        return store

    def _extract_store(
        self, store: FeatureStore, feature_layer: int, attention_layer: int, clusters: ClusterSettings | None
    ) -> None:
        """Extract the missing shards of ``store`` (under its lock). A full store extracted for ``clusters``
        gets their knowledge clusters computed shard by shard on the way, cached if every shard was
        extracted now; a clusters-only store computes its own."""
        collect = (
            _ShardClusters(clusters, self.device) if store.mode == "full" and clusters is not None else None
        )
        report = self.extract(store, feature_layer, attention_layer, shard_transform=collect)
        self.timings.extraction = report
        if store.mode == "clusters_only":
            settings = _stored_settings(store)
            if settings is not None and report.shards_written:
                self._clustered_in_extraction[(store.directory, stable_hash(settings.identity()))] = None
            return
        if collect is None:
            return
        result = collect.result(store)
        if result is None:
            log.info(
                "knowledge clusters: only %d of %d shards extracted now (resumed), so they are computed "
                "from the store when asked",
                len(collect.parts),
                store.n_shards,
            )
            return
        path = _clusters_path(store, collect.settings)
        with file_lock(path.with_suffix(".lock"), f"writing knowledge clusters {path.name}"):
            _write_clusters(path, collect.settings, result)
        self._clustered_in_extraction[(store.directory, stable_hash(collect.settings.identity()))] = result
        log.info("knowledge clusters: computed during extraction, cached in %s", path)

    def extract(
        self,
        store: FeatureStore,
        feature_layer: int,
        attention_layer: int,
        shards: list[int] | None = None,
        shard_transform: Callable[[int, ShardData], ShardData] | None = None,
    ) -> ExtractionReport:
        """Run the network over the missing shards of ``store`` (``shards`` only, when given). The caller
        holds the store's lock (or, in a distributed extraction, owns these shards). ``shard_transform``
        (full stores only): maps each dense shard to what is written, see
        :func:`geal.features.extract.extract_to_store`; a clusters-only store uses its own."""
        transform = shard_transform
        if store.mode == "clusters_only":
            if shard_transform is not None:
                raise ValueError("a clusters-only store's shards are transformed by the provider itself")
            transform = self._clusters_transform(_stored_settings(store))
        return extract_to_store(
            self.pool,
            self.backbone_factory,
            store,
            settings=self.settings,
            device=self.device,
            feature_layer=feature_layer,
            attention_layer=attention_layer,
            shards=shards,
            shard_transform=transform,
        )

    def _clusters_transform(self, settings: ClusterSettings | None):
        """What a clusters-only store keeps of a dense shard: the clusters of ``settings`` (none if None)."""

        def transform(start: int, data: ShardData) -> ShardData:
            assert data.tokens is not None and data.attention is not None
            if settings is None:
                return ShardData(None, None, data.global_feature, data.valid, data.skipped)
            # the extraction hands the shard in the store's dtypes: the clusters a dense store would give
            cents, ok = shard_knowledge_clusters(
                data.tokens, data.attention, data.valid, start, settings, self.device
            )
            return ShardData(None, None, data.global_feature, data.valid, data.skipped, cents, ok)

        return transform

    def knowledge_clusters(self, store: FeatureStore, settings: ClusterSettings) -> KnowledgeClusterSet:
        """Knowledge clusters of every valid image (cached under the store's ``clusters/`` folder, or read
        from a clusters-only store)."""
        t0 = time.perf_counter()
        key = (store.directory, stable_hash(settings.identity()))
        in_extraction = key in self._clustered_in_extraction
        if store.mode == "clusters_only":
            clusters = _clusters_from_store(store, settings)
            self._clusters_timings(t0, hit=not in_extraction, in_extraction=in_extraction)
            return clusters
        path = _clusters_path(store, settings)
        cached = self._clustered_in_extraction.pop(key, None)  # not read back: handed over once
        if in_extraction:
            self._clustered_in_extraction[key] = None
        if cached is None:
            cached = _read_clusters(path, settings)
        if cached is None:
            with file_lock(path.with_suffix(".lock"), f"computing knowledge clusters {path.name}"):
                cached = _read_clusters(path, settings)  # computed meanwhile by another job?
                if cached is None:
                    clusters = compute_knowledge_clusters(
                        store, settings, self.device, progress=self.settings.progress
                    )
                    _write_clusters(path, settings, clusters)
                    self._clusters_timings(t0, hit=False, in_extraction=False)
                    return clusters
        self._clusters_timings(t0, hit=not in_extraction, in_extraction=in_extraction)
        if in_extraction:
            log.info("knowledge clusters: taken over from the extraction (%s)", path)
        else:
            log.info("knowledge clusters: cache hit (%s)", path)
        return cached

    def _clusters_timings(self, t0: float, hit: bool, in_extraction: bool) -> None:
        self.timings.clusters_cache_hit = hit
        self.timings.clusters_in_extraction = in_extraction
        self.timings.clusters_seconds = time.perf_counter() - t0


class _ShardClusters:
    """A full store's shard transform: computes the knowledge clusters of ``settings`` of each dense shard
    (from the arrays the store keeps: the same clusters as :func:`compute_knowledge_clusters` over the
    finished store), keeps the valid ones, and returns the shard unchanged."""

    def __init__(self, settings: ClusterSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        #: per clustered shard: (start, centroids (m, D) float32, owners (m,) int64)
        self.parts: list[tuple[int, np.ndarray, np.ndarray]] = []

    def __call__(self, start: int, data: ShardData) -> ShardData:
        assert data.tokens is not None and data.attention is not None
        cents, ok = shard_knowledge_clusters(  # the shard comes in the store's dtypes
            data.tokens, data.attention, data.valid, start, self.settings, self.device
        )
        self.parts.append((start, cents[ok], _owners(start, ok)))
        return data

    def result(self, store: FeatureStore) -> KnowledgeClusterSet | None:
        """The clusters of the whole store, if every shard of it was clustered here (else None); the
        shards' parts are released."""
        parts = sorted(self.parts, key=lambda part: part[0])
        if [start for start, _, _ in parts] != [store.shard_range(s)[0] for s in range(store.n_shards)]:
            return None
        self.parts = []
        return KnowledgeClusterSet(
            np.concatenate([cents for _, cents, _ in parts]),
            np.concatenate([owners for _, _, owners in parts]),
        )


def _owners(start: int, ok: np.ndarray) -> np.ndarray:
    """The global id of each kept cluster of a shard starting at ``start`` (``ok``: (n, K) kept)."""
    return np.broadcast_to(np.arange(start, start + ok.shape[0])[:, None], ok.shape)[ok].astype(np.int64)


def _clusters_path(store: FeatureStore, settings: ClusterSettings) -> Path:
    """Where a full store caches the knowledge clusters of ``settings``."""
    return store.directory / "clusters" / f"{stable_hash(settings.identity())}.npz"


def _write_clusters(path: Path, settings: ClusterSettings, clusters: KnowledgeClusterSet) -> None:
    """Write a knowledge-cluster cache file (atomically; the caller holds its lock)."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        features=clusters.features,
        owners=clusters.owners,
        settings=np.array(stable_hash(settings.identity(), 64)),
    )
    atomic_write_bytes(path, buffer.getvalue())


def _read_clusters(path: Path, settings: ClusterSettings) -> KnowledgeClusterSet | None:
    if not path.exists():
        return None
    with np.load(path) as data:
        if str(data["settings"]) == stable_hash(settings.identity(), 64):
            return KnowledgeClusterSet(data["features"], data["owners"])
    log.warning("knowledge-cluster cache %s does not match its settings; recomputing", path)
    return None


def _stored_settings(store: FeatureStore) -> ClusterSettings | None:
    """The cluster settings a clusters-only store holds (None: it holds no clusters)."""
    if store.clusters is None:
        return None
    fields = {k: v for k, v in store.clusters.items() if k != "clusters_version"}
    return ClusterSettings(**fields)


def _clusters_from_store(store: FeatureStore, settings: ClusterSettings) -> KnowledgeClusterSet:
    """The knowledge clusters kept by a clusters-only store, if they are those of ``settings``."""
    fix = (
        f"run with extraction.cache_mode=full (dense store: any τ/K), or delete {store.directory} to "
        f"extract again for the new setting"
    )
    if store.clusters is None:
        raise ClustersNotStoredError(
            f"the clusters-only feature store {store.directory} holds no knowledge clusters (it was "
            f"extracted for a selector that needs none, e.g. Core-Set): {fix}"
        )
    wanted = json.loads(json.dumps(settings.identity()))
    if store.clusters != wanted:
        theirs = {k: v for k, v in store.clusters.items() if wanted.get(k) != v}
        ours = {k: v for k, v in wanted.items() if k in theirs}
        raise ClustersNotStoredError(
            f"the clusters-only feature store {store.directory} holds knowledge clusters for {theirs}, but "
            f"this selector asks for {ours}: {fix}"
        )
    features: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for start, stop, arrays in store.iter_shards():
        ok = np.asarray(arrays["cluster_valid"]) & np.asarray(arrays["valid"])[:, None]
        features.append(np.asarray(arrays["clusters"], dtype=np.float32)[ok])
        owners.append(np.broadcast_to(np.arange(start, stop)[:, None], ok.shape)[ok].astype(np.int64))
    return KnowledgeClusterSet(np.concatenate(features), np.concatenate(owners))


def _chunk_generator(settings: ClusterSettings, first_id: int, device: torch.device) -> torch.Generator:
    """The generator of the chunk of images starting at global id ``first_id``."""
    seed = int(stable_hash([settings.kmeans_seed, int(first_id)]), 16) % 2**63
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def shard_knowledge_clusters(
    tokens: ShardArray,
    attention: ShardArray,
    valid: np.ndarray,
    start: int,
    settings: ClusterSettings,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Knowledge clusters of one shard: tokens (n,N,D), attention (n,H,N), valid (n,) of images
    ``start..start+n`` → centroids (n,K,D) float32, cluster_valid (n,K) bool (all False for invalid
    images), ``settings.batch_images`` images at a time, each chunk with its own seeded generator. Tokens
    and attention as stored (numpy), or as tensors in the store's dtypes (on the device, during extraction):
    the same float32 values on the device either way."""
    n = tokens.shape[0]
    cents = np.zeros((n, settings.k, tokens.shape[-1]), dtype=np.float32)
    ok = np.zeros((n, settings.k), dtype=bool)
    for lo in range(0, n, settings.batch_images):
        hi = min(lo + settings.batch_images, n)
        rows = np.flatnonzero(np.asarray(valid[lo:hi]))
        if rows.size == 0:
            continue
        # moved as stored (fp16 tokens: half the bytes) and widened on the device: the same float32 values
        tok = _chunk_rows(tokens, lo, hi, rows, device)
        att = _chunk_rows(attention, lo, hi, rows, device)
        c, v = knowledge_clusters(
            tok,
            att,
            tau=settings.tau,
            k=settings.k,
            head_reduction=settings.head_reduction,
            empty_fallback=settings.empty_fallback,
            kmeans_metric=settings.kmeans_metric,
            kmeans_iters=settings.kmeans_iters,
            kmeans_tol=settings.kmeans_tol,
            kmeans_init=settings.kmeans_init,
            generator=_chunk_generator(settings, start + lo, device),
        )
        cents[lo + rows] = c.float().cpu().numpy()
        ok[lo + rows] = v.cpu().numpy()
    return cents, ok


def _chunk_rows(arr: ShardArray, lo: int, hi: int, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows ``lo + rows`` of a shard's array (``rows`` within ``lo:hi``) on ``device`` as float32."""
    if isinstance(arr, torch.Tensor):
        return arr[lo:hi][torch.from_numpy(rows).to(arr.device)].to(device).float()
    return torch.from_numpy(np.ascontiguousarray(arr[lo:hi][rows])).to(device).float()


def compute_knowledge_clusters(
    store: FeatureStore, settings: ClusterSettings, device: torch.device, progress: bool = True
) -> KnowledgeClusterSet:
    """Filter + batched per-image k-means over a dense store, shard by shard
    (:func:`shard_knowledge_clusters`)."""
    features: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    bar = tqdm(total=store.n_images, desc="knowledge clusters", unit="img", disable=not progress)
    for start, stop, arrays in store.iter_shards():
        cents, ok = shard_knowledge_clusters(
            arrays["tokens"], arrays["attention"], arrays["valid"], start, settings, device
        )
        features.append(cents[ok])
        owners.append(_owners(start, ok))
        bar.update(stop - start)
    bar.close()
    dim = store.token_dim
    return KnowledgeClusterSet(
        np.concatenate(features) if features else np.zeros((0, dim), np.float32),
        np.concatenate(owners) if owners else np.zeros(0, np.int64),
    )
