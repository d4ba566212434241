"""The feature-source contract: what selectors and tasks ask of a pool's features, and what they get.

A selector or task never names a cache key. It asks a :class:`FeatureSource` (``SelectionContext.features``;
implemented by :class:`geal.features.provider.FeatureProvider`) for

* the pool's **global features** and which images could be read — :meth:`FeatureSource.global_features`,
  one line for any selector that works on one vector per image::

      pool_features = ctx.features.global_features()   # .features (n, D') float32, .valid (n,) bool

* the pool's **knowledge clusters** (GEAL's second stage) over the dense tokens of a :class:`FeatureRequest`
  — :meth:`FeatureSource.knowledge_clusters`, with the method's cluster settings
  (:class:`geal.method.knowledge.ClusterSettings`).

The source decides which stored pass serves a request, extracts it when it is not cached, and records what
it did in :attr:`FeatureSource.timings` (``run_info.json``'s ``features`` and ``timings``).

Index spaces: every per-image array is in **global-id** order (row ``i`` is ``pool.ids[i]``); a cluster's
``owners`` entry is the global id of its image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class TokenLayers:
    """Which blocks of the backbone the dense features come from (negative: counted from the last block).

    feature:   the block whose patch tokens (through the model's final norm) are the dense features
    attention: the block whose CLS→patch attention is the importance map
    """

    feature: int = -2
    attention: int = -1


@dataclass(frozen=True)
class FeatureRequest:
    """What a consumer needs of the pool's features.

    ``tokens`` None: the global features and validity only (they do not depend on any layer, so any pass of
    the backbone serves them: the source shares one store between a GEAL run and a Core-Set run).
    ``tokens`` set: also the dense tokens and importance maps of those layers (GEAL's knowledge clusters).
    """

    tokens: TokenLayers | None = None

    @classmethod
    def global_only(cls) -> FeatureRequest:
        return cls(None)

    @classmethod
    def dense(cls, feature_layer: int = -2, attention_layer: int = -1) -> FeatureRequest:
        return cls(TokenLayers(int(feature_layer), int(attention_layer)))


@dataclass
class GlobalFeatures:
    """The pool's global features: features (n, D') float32, valid (n,) bool (False: skipped as unreadable
    at extraction, listed in the store's ``meta.json``)."""

    features: np.ndarray
    valid: np.ndarray


@dataclass
class KnowledgeClusterSet:
    """All knowledge clusters of a pool, flattened.

    features: (M, D) float32 cluster centroids
    owners:   (M,) int64 global id of the image each cluster belongs to (non-decreasing)
    valid:    (n_images,) bool, the images the extraction could read (an unreadable image has no cluster)
    """

    features: np.ndarray
    owners: np.ndarray
    valid: np.ndarray

    def counts(self, n_images: int) -> np.ndarray:
        return np.bincount(self.owners, minlength=n_images)


@dataclass
class ExtractionReport:
    """What one inference pass over (part of) a pool did."""

    images: int = 0
    seconds: float = 0.0
    shards_written: list[int] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: where the main loop's time went: waiting for the loader, decoding on the device, forward + copy into
    #: the shard buffer, the shard transform (its knowledge clusters, when asked; on a CPU; in the writer on a
    #: GPU), waiting for the shard writer. On a GPU the loop only queues work (decode, forward and copy are
    #: launch times): the GPU's own time shows up in ``writer_wait``, as the writer waits for each shard's
    #: last forward
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class FeatureTimings:
    """What a feature source did in this run (for run_info.json).

    The knowledge clusters last asked for came from a cache written before this run
    (``clusters_cache_hit``), were computed during extraction (``clusters_in_extraction``: this run's
    extraction, or for shards an interrupted run extracted, that run's; their time is part of the
    extraction's, and ``clusters_seconds`` is then only the time to read them), or were computed from the
    stored tokens when asked (neither; ``clusters_seconds`` is the computation)."""

    extraction: ExtractionReport | None = None
    extraction_cache_hit: bool | None = None
    clusters_seconds: float = 0.0
    clusters_cache_hit: bool | None = None
    clusters_in_extraction: bool = False
    store_dir: str | None = None
    #: the unreadable images the extraction that made the store skipped (on a hit too)
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: images re-extracted because their file changed since the store was written (size or mtime)
    refreshed_images: int = 0
    #: shards / cluster files found damaged, moved to the store's quarantine/ and computed again
    quarantined: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class FeatureSource(Protocol):
    """The pool's features as selectors and tasks see them (see the module docstring)."""

    #: what the source did in this run (cache hits, extraction, cluster computation)
    timings: FeatureTimings

    def global_features(self) -> GlobalFeatures:
        """Global features and validity of every image (extracted first if no stored pass holds them)."""
        ...

    def knowledge_clusters(self, request: FeatureRequest, settings: Any) -> KnowledgeClusterSet:
        """Knowledge clusters of every readable image over the dense tokens of ``request`` (which must name
        token layers), for ``settings`` (a :class:`geal.method.knowledge.ClusterSettings`; typed loosely here
        because the contracts sit below the method): cached, computed once per setting."""
        ...
