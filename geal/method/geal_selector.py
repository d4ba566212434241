"""The GEAL selector: knowledge clusters of every image, then k-center greedy (or D²) over clusters."""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np
import torch

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector, eligible_mask
from geal.features.provider import ClusterSettings
from geal.method.kcenter.greedy import d2_sampling, kcenter_greedy
from geal.method.kcenter.sharded import kcenter_greedy_sharded
from geal.util.distributed import is_distributed, rank_and_world

log = logging.getLogger(__name__)


class GEALSelector(Selector):
    """GEAL (docs/design.md §1): one inference pass → attention-filtered knowledge clusters → k-center.

    Every hyperparameter is a constructor argument (so a config key): the layers read by the pass
    (``feature_layer``, ``attention_layer``), the filter (``head_reduction``, ``tau``, ``empty_fallback``),
    the per-image k-means (``k``, ``kmeans_*``), and the sampler (``sampler``, ``distance``).
    The starting point is the already-labeled set when the context has one, else one seeded random image.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    nested: ClassVar[bool] = True  # same seed: a smaller budget is a prefix of a larger one

    def __init__(
        self,
        name: str = "geal",
        feature_layer: int = -2,
        attention_layer: int = -1,
        head_reduction: Literal["mean", "max"] = "mean",
        tau: float = 0.5,
        empty_fallback: Literal["max_norm", "max_attention", "all"] = "max_norm",
        k: int = 25,
        kmeans_metric: Literal["euclidean", "cosine"] = "euclidean",
        kmeans_iters: int = 100,
        kmeans_tol: float = 1e-4,
        kmeans_init: Literal["kmeans++", "random"] = "kmeans++",
        kmeans_seed: int = 0,
        sampler: Literal["kcenter", "d2"] = "kcenter",
        distance: Literal["cosine", "euclidean"] = "cosine",
        chunk_size: int = 65536,
    ) -> None:
        if sampler not in ("kcenter", "d2"):
            raise ValueError(f"selector.sampler must be 'kcenter' or 'd2', got {sampler!r}")
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"selector.distance must be 'cosine' or 'euclidean', got {distance!r}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"selector.tau must be in (0, 1], got {tau}")
        if k < 1:
            raise ValueError(f"selector.k must be ≥ 1, got {k}")
        self.name = name
        self.feature_layer = feature_layer
        self.attention_layer = attention_layer
        self.clusters = ClusterSettings(
            tau=tau,
            k=k,
            head_reduction=head_reduction,
            empty_fallback=empty_fallback,
            kmeans_metric=kmeans_metric,
            kmeans_iters=kmeans_iters,
            kmeans_tol=kmeans_tol,
            kmeans_init=kmeans_init,
            kmeans_seed=kmeans_seed,
        )
        self.sampler = sampler
        self.distance = distance
        self.chunk_size = chunk_size

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        assert ctx.features is not None, "the pipeline provides features to selectors that require them"
        store = ctx.features.store(self.feature_layer, self.attention_layer, clusters=self.clusters)
        clusters = ctx.features.knowledge_clusters(store, self.clusters)
        points = torch.from_numpy(clusters.features).to(ctx.device)
        groups = torch.from_numpy(clusters.owners).to(ctx.device)
        eligible = eligible_mask(len(pool), ctx, ctx.device, store.valid(), budget)
        if self.sampler == "kcenter" and is_distributed():
            # under torchrun: each rank keeps a slice of the clusters; every rank gets the same picks
            rank, world = rank_and_world()
            part = slice(points.shape[0] * rank // world, points.shape[0] * (rank + 1) // world)
            result = kcenter_greedy_sharded(
                points[part],
                groups[part],
                budget,
                distance=self.distance,
                initial=list(ctx.labeled),
                eligible=eligible,
                generator=ctx.generator(ctx.device),
                chunk_size=self.chunk_size,
            )
        else:
            sample = kcenter_greedy if self.sampler == "kcenter" else d2_sampling
            result = sample(
                points,
                groups,
                budget,
                distance=self.distance,
                initial=list(ctx.labeled),
                eligible=eligible,
                generator=ctx.generator(ctx.device),
                chunk_size=self.chunk_size,
                progress=ctx.progress,
            )
        counts = clusters.counts(len(pool))
        return Selection(
            [int(i) for i in result.order],
            [float(s) for s in result.scores],
            info={
                "n_clusters": int(points.shape[0]),
                "clusters_per_image_mean": float(counts.mean()),
                "clusters_per_image_min": int(counts.min()),
                "clusters_of_selected_mean": float(np.mean(counts[result.order])),
            },
        )
