"""k-means nearest: the image nearest each of B k-means centroids (the "centroid initialisation" baseline).

k-means (scikit-learn, k-means++ seeding, seeded by the run's seed) of the usable images' global features
(N, D) into B clusters; clusters are visited by size (largest first, then id) and each takes the unlabeled
image nearest its centroid (squared L2) that no earlier cluster took. B clusters: not nested.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch

from baselines.neighbours import GlobalFeatureSelector, PoolFeatures, kmeans, sq_dists
from geal.api.selector import Selection, SelectionContext


class KMeansNearestSelector(GlobalFeatureSelector):
    """The image nearest each k-means centroid (see the module docstring)."""

    nested: ClassVar[bool] = False

    def __init__(
        self,
        name: str = "kmeans_nearest",
        normalize: bool = True,
        standardize: bool = False,
        algorithm: Literal["full", "minibatch"] = "full",
        n_init: int = 1,
    ) -> None:
        if algorithm not in ("full", "minibatch"):
            raise ValueError(f"selector.algorithm must be 'full' or 'minibatch', got {algorithm!r}")
        if n_init < 1:
            raise ValueError(f"selector.n_init must be >= 1, got {n_init}")
        self.name = name
        self.normalize, self.standardize = normalize, standardize
        self.algorithm, self.n_init = algorithm, n_init

    def _pick(self, feats: PoolFeatures, budget: int, ctx: SelectionContext) -> Selection:
        labels, centres = kmeans(feats.points, budget, ctx.seed, algorithm=self.algorithm, n_init=self.n_init)
        size = np.bincount(labels, minlength=centres.shape[0])
        order = np.lexsort((np.arange(size.size), -size))
        d = sq_dists(torch.as_tensor(centres[order], device=feats.points.device), feats.points)
        d.masked_fill_(~feats.pickable.unsqueeze(0), torch.inf)
        picks: list[int] = []
        scores: list[float] = []
        for row in d:  # (B, N): one row per centroid, B × N stays small next to the features
            best = int(row.argmin())
            picks.append(best)
            scores.append(float(row[best]))
            d[:, best] = torch.inf
        return Selection(feats.global_ids(picks), scores, {"n_clusters": int(centres.shape[0])})
