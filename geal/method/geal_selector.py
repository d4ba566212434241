"""The GEAL selectors: knowledge clusters of every image, then k-center greedy (or D²) over clusters
(:class:`GEALSelector`, optionally weighted or filtered by image typicality), or TypiClust's picks over the
images' descriptors (:class:`GEALTypicalSelector`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from geal.api.features import FeatureRequest, KnowledgeClusterSet
from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector, eligible_mask, labeled_mask
from geal.method.kcenter import d2_sampling, kcenter_greedy, kcenter_greedy_sharded
from geal.method.knowledge import ClusterSettings
from geal.method.typicality import (
    TypicalitySettings,
    drop_least_typical,
    image_descriptors,
    image_typicality,
    typical_cluster_picks,
)
from geal.util.distributed import is_distributed, rank_and_world

log = logging.getLogger(__name__)


class GEALSelector(Selector):
    """GEAL (docs/design.md §1): one inference pass → attention-filtered knowledge clusters → k-center.

    Every hyperparameter is a constructor argument (so a config key): the layers read by the pass
    (``feature_layer``, ``attention_layer``: the dense tokens this selector requests), the knowledge clusters
    (``clusters``: a :class:`~geal.method.knowledge.ClusterSettings`, the ``selector.clusters`` config node —
    filter, per-image k-means), the sampler (``sampler``, ``distance``, ``chunk_size``) and the use of
    image typicality (``typicality``: a :class:`~geal.method.typicality.TypicalitySettings`; its defaults
    leave the paper's GEAL unchanged): ``density_weight`` α ranks each cluster by its distance to the
    selected clusters × its image's typicality^α, ``drop_fraction`` never picks the least typical images.
    The starting point is the already-labeled set when the context has one, else one seeded random image.
    Every random draw (that image, D² picks) comes from a CPU generator seeded with ``ctx.seed``, so the
    same seed gives the same picks on every device (up to float rounding of near-tied distances).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    nested: ClassVar[bool] = True  # same seed: a smaller budget is a prefix of a larger one

    def __init__(
        self,
        name: str = "geal",
        feature_layer: int = -2,
        attention_layer: int = -1,
        clusters: ClusterSettings | Mapping[str, Any] | None = None,
        sampler: Literal["kcenter", "d2"] = "kcenter",
        distance: Literal["cosine", "euclidean"] = "cosine",
        chunk_size: int = 65536,
        typicality: TypicalitySettings | Mapping[str, Any] | None = None,
    ) -> None:
        if sampler not in ("kcenter", "d2"):
            raise ValueError(f"selector.sampler must be 'kcenter' or 'd2', got {sampler!r}")
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"selector.distance must be 'cosine' or 'euclidean', got {distance!r}")
        self.name = name
        #: what this selector asks of the feature source: the dense tokens of these layers
        self.request = FeatureRequest.dense(feature_layer, attention_layer)
        try:
            self.clusters = ClusterSettings.from_config(clusters)
            self.typicality = TypicalitySettings.from_config(typicality)
        except (TypeError, ValueError) as err:
            raise ValueError(f"selector.{err}") from err
        self.sampler = sampler
        self.distance = distance
        self.chunk_size = chunk_size

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        assert ctx.features is not None, "the pipeline provides features to selectors that require them"
        clusters = ctx.features.knowledge_clusters(self.request, self.clusters)
        points = torch.from_numpy(clusters.features).to(ctx.device)
        groups = torch.from_numpy(clusters.owners).to(ctx.device)
        eligible = eligible_mask(len(pool), ctx, ctx.device, clusters.valid, budget)
        info: dict[str, Any] = {}
        weights = None
        if self.typicality.used:
            typ = self._typicality(clusters, len(pool), ctx).to(ctx.device)
            if self.typicality.drop_fraction > 0:
                labeled = labeled_mask(len(pool), ctx, ctx.device)
                info["dropped_least_typical"] = drop_least_typical(
                    eligible, labeled, typ, self.typicality.drop_fraction, budget
                )
            if self.typicality.density_weight > 0:
                weights = typ.pow(self.typicality.density_weight)
        # the first image and the D² draws come from a CPU generator seeded from the selection seed, whatever
        # device computes the distances: a device's generator draws another stream for the same seed, so a
        # GPU selection would not be the CPU one (docs/design.md §1.5)
        draws = ctx.generator("cpu")
        # (weighted k-center is not sharded: under torchrun every rank runs it whole, with the same picks)
        if self.sampler == "kcenter" and is_distributed() and weights is None:
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
                generator=draws,
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
                generator=draws,
                chunk_size=self.chunk_size,
                progress=ctx.progress,
                weights=weights,
            )
        counts = clusters.counts(len(pool))
        return Selection(
            [int(i) for i in result.order],
            [float(s) for s in result.scores],
            info={
                **info,
                "n_clusters": int(points.shape[0]),
                "clusters_per_image_mean": float(counts.mean()),
                "clusters_per_image_min": int(counts.min()),
                "clusters_of_selected_mean": float(np.mean(counts[result.order])),
            },
        )

    def _typicality(
        self, clusters: KnowledgeClusterSet, n_images: int, ctx: SelectionContext
    ) -> torch.Tensor:
        """(n_images,) each readable image's typicality among the pool's images (0 for unreadable ones),
        from its descriptor: the normalised mean of its normalised knowledge clusters."""
        descriptors = image_descriptors(clusters, n_images).to(ctx.device)
        usable = torch.from_numpy(np.asarray(clusters.valid, dtype=bool)).to(ctx.device)
        return image_typicality(descriptors, usable, self.typicality.knn)


class GEALTypicalSelector(GEALSelector):
    """GEAL-typical: the knowledge clusters of every image (as :class:`GEALSelector`), each image described
    by the normalised mean of its normalised clusters, then TypiClust's cluster-then-most-typical picks over
    those descriptors (:func:`geal.method.typicality.typical_cluster_picks`, with ``typicality.knn``,
    ``max_clusters`` and ``min_cluster_size``). ``sampler`` and ``distance`` are not used. Not nested: the
    clusters depend on the budget. Continues from a labeled set as TypiClust does (labeled images count in
    their clusters and are never picked)."""

    nested: ClassVar[bool] = False

    def __init__(self, name: str = "geal_typical", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if self.typicality.used:  # k-center's options: they would change nothing here, silently
            raise ValueError(
                "selector.typicality.density_weight / drop_fraction are k-center options: geal_typical picks "
                "by TypiClust's rule (set them on selector=geal, or leave them at 0)"
            )

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        assert ctx.features is not None, "the pipeline provides features to selectors that require them"
        clusters = ctx.features.knowledge_clusters(self.request, self.clusters)
        usable = eligible_mask(len(pool), ctx, torch.device("cpu"), clusters.valid, budget)
        ids = usable.nonzero().squeeze(1)
        descriptors = image_descriptors(clusters, len(pool))[ids].to(ctx.device)
        labeled = labeled_mask(len(pool), ctx, torch.device("cpu"))[ids].numpy()
        settings = self.typicality
        picks = typical_cluster_picks(
            descriptors,
            labeled,
            budget,
            ctx.seed,
            max_clusters=settings.max_clusters,
            min_cluster_size=settings.min_cluster_size,
            knn=settings.knn,
        )
        return Selection([int(ids[r]) for r in picks.rows], picks.scores, picks.info)
