"""The GEAL selector: knowledge clusters of every image, then k-center greedy (or D²) over clusters."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from geal.api.features import FeatureRequest
from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector, eligible_mask
from geal.method.kcenter import d2_sampling, kcenter_greedy, kcenter_greedy_sharded
from geal.method.knowledge import ClusterSettings
from geal.util.distributed import is_distributed, rank_and_world

log = logging.getLogger(__name__)


class GEALSelector(Selector):
    """GEAL (docs/design.md §1): one inference pass → attention-filtered knowledge clusters → k-center.

    Every hyperparameter is a constructor argument (so a config key): the layers read by the pass
    (``feature_layer``, ``attention_layer``: the dense tokens this selector requests), the knowledge clusters
    (``clusters``: a :class:`~geal.method.knowledge.ClusterSettings`, the ``selector.clusters`` config node —
    filter, per-image k-means), and the sampler (``sampler``, ``distance``, ``chunk_size``).
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
        # the first image and the D² draws come from a CPU generator seeded from the selection seed, whatever
        # device computes the distances: a device's generator draws another stream for the same seed, so a
        # GPU selection would not be the CPU one (docs/design.md §1.5)
        draws = ctx.generator("cpu")
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
