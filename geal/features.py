"""The pool's features for selectors: the dense store (stage 1) and knowledge clusters (stage 2), both cached.

Stage 1 runs the network once per (backbone, weights, preprocessing, layers, pool). Stage 2 (attention
filter + per-image k-means) is keyed additionally by its own settings, so sweeps over τ, K, distance,
sampler, seed or budget never run the network again, and sweeps over distance/sampler/seed/budget never
re-run k-means.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from geal.backbones.base import Backbone
from geal.extract import ExtractionReport, ExtractionSettings, extract_to_store
from geal.knowledge import knowledge_clusters
from geal.pool import ImagePool
from geal.store import STORE_VERSION, FeatureStore, atomic_write_bytes, stable_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSettings:
    """Everything that determines the knowledge clusters of an image (DESIGN §1 steps 2–4)."""

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
    """What the provider did in this run (for run_info.json)."""

    extraction: ExtractionReport | None = None
    extraction_cache_hit: bool | None = None
    clusters_seconds: float = 0.0
    clusters_cache_hit: bool | None = None
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

    def open_store(self, feature_layer: int = -2, attention_layer: int = -1) -> FeatureStore:
        """The (possibly incomplete) dense store for these layers; nothing is extracted."""
        key = {
            "store_version": STORE_VERSION,
            "backbone": self.backbone_key,
            "layers": {"feature": feature_layer, "attention": attention_layer},
            "amp": self.settings.amp,
            "pool": self.pool.identity(),
        }
        store = FeatureStore.open(
            self.cache_dir,
            key,
            len(self.pool),
            self.settings.shard_size,
            label=f"{self.label}-{self.pool.name}",
        )
        return store

    def store(self, feature_layer: int = -2, attention_layer: int = -1) -> FeatureStore:
        """The complete dense store for these layers (extracting the missing shards first)."""
        store = self.open_store(feature_layer, attention_layer)
        self.timings.store_dir = str(store.directory)
        hit = store.complete
        if self.timings.extraction_cache_hit is None:
            self.timings.extraction_cache_hit = hit
        if hit:
            log.info("features: cache hit (%s)", store.directory)
        else:
            report = extract_to_store(
                self.pool,
                self.backbone_factory,
                store,
                settings=self.settings,
                device=self.device,
                feature_layer=feature_layer,
                attention_layer=attention_layer,
            )
            self.timings.extraction = report
        return store

    def knowledge_clusters(self, store: FeatureStore, settings: ClusterSettings) -> KnowledgeClusterSet:
        """Knowledge clusters of every valid image (cached under the store's ``clusters/`` folder)."""
        path = store.directory / "clusters" / f"{stable_hash(asdict(settings))}.npz"
        t0 = time.perf_counter()
        if path.exists():
            with np.load(path) as data:
                if str(data["settings"]) == stable_hash(asdict(settings), 64):
                    self.timings.clusters_cache_hit = True
                    self.timings.clusters_seconds = time.perf_counter() - t0
                    log.info("knowledge clusters: cache hit (%s)", path)
                    return KnowledgeClusterSet(data["features"], data["owners"])
            log.warning("knowledge-cluster cache %s does not match its settings; recomputing", path)
        clusters = compute_knowledge_clusters(store, settings, self.device, progress=self.settings.progress)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            features=clusters.features,
            owners=clusters.owners,
            settings=np.array(stable_hash(asdict(settings), 64)),
        )
        atomic_write_bytes(path, buffer.getvalue())
        self.timings.clusters_cache_hit = False
        self.timings.clusters_seconds = time.perf_counter() - t0
        return clusters


def compute_knowledge_clusters(
    store: FeatureStore, settings: ClusterSettings, device: torch.device, progress: bool = True
) -> KnowledgeClusterSet:
    """Filter + batched per-image k-means over the whole store, ``settings.batch_images`` images at a time."""
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.kmeans_seed)
    features: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    bar = tqdm(total=store.n_images, desc="knowledge clusters", unit="img", disable=not progress)
    for start, stop, arrays in store.iter_shards():
        for lo in range(0, stop - start, settings.batch_images):
            hi = min(lo + settings.batch_images, stop - start)
            valid = np.asarray(arrays["valid"][lo:hi])
            rows = np.flatnonzero(valid)
            if rows.size:
                tokens = torch.from_numpy(np.asarray(arrays["tokens"][lo:hi][rows], dtype=np.float32)).to(
                    device
                )
                attention = torch.from_numpy(np.asarray(arrays["attention"][lo:hi][rows], dtype=np.float32))
                centroids, ok = knowledge_clusters(
                    tokens,
                    attention.to(device),
                    tau=settings.tau,
                    k=settings.k,
                    head_reduction=settings.head_reduction,
                    empty_fallback=settings.empty_fallback,
                    kmeans_metric=settings.kmeans_metric,
                    kmeans_iters=settings.kmeans_iters,
                    kmeans_tol=settings.kmeans_tol,
                    kmeans_init=settings.kmeans_init,
                    generator=generator,
                )
                ok_np = ok.cpu().numpy()
                features.append(centroids.float().cpu().numpy()[ok_np])
                image_ids = (start + lo + rows)[:, None].repeat(ok_np.shape[1], axis=1)
                owners.append(image_ids[ok_np].astype(np.int64))
            bar.update(hi - lo)
    bar.close()
    dim = store.token_dim
    return KnowledgeClusterSet(
        np.concatenate(features) if features else np.zeros((0, dim), np.float32),
        np.concatenate(owners) if owners else np.zeros(0, np.int64),
    )
