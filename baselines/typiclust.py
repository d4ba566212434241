"""TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget", ICML 2022;
github avihu111/TypiClust, ``typiclust.py``).

k-means the usable images' global features (N, D) into min(|L| + B, 500) clusters, drop clusters of ≤ 5
images, order the rest by (labeled images ↑, size ↓) and visit them round-robin in that fixed order; each
visit picks the cluster's most typical unlabeled image, typicality = 1 / (mean squared L2 distance to its
min(20, m // 2) nearest neighbours among the cluster's m still-unlabeled images + 1e-5), recomputed at every
visit since the previous pick left the cluster. As in the authors' ``typiclust.py``; where their code would
fail (a visited cluster with no unlabeled image left, or no cluster above 5 images) the visit moves on to
the next cluster, and the dropped small clusters are visited, in the same order, once the others are empty.
"""

from __future__ import annotations

from typing import ClassVar

from baselines.neighbours import GlobalFeatureSelector, PoolFeatures
from geal.api.selector import Selection, SelectionContext
from geal.method.typicality import typical_cluster_picks


class TypiClustSelector(GlobalFeatureSelector):
    """TypiClust on global features (see the module docstring; the algorithm is
    :func:`geal.method.typicality.typical_cluster_picks`, which GEAL-typical shares). Not nested: the
    clusters depend on B."""

    nested: ClassVar[bool] = False

    def __init__(
        self,
        name: str = "typiclust",
        normalize: bool = True,
        standardize: bool = False,
        max_clusters: int = 500,
        min_cluster_size: int = 5,
        knn: int = 20,
        minibatch_above: int = 50,
    ) -> None:
        for key, value in (("max_clusters", max_clusters), ("knn", knn)):
            if value < 1:
                raise ValueError(f"selector.{key} must be >= 1, got {value}")
        self.name = name
        self.normalize, self.standardize = normalize, standardize
        self.max_clusters, self.min_cluster_size, self.knn = max_clusters, min_cluster_size, knn
        self.minibatch_above = minibatch_above

    def _pick(self, feats: PoolFeatures, budget: int, ctx: SelectionContext) -> Selection:
        picks = typical_cluster_picks(
            feats.points,
            feats.labeled.cpu().numpy(),
            budget,
            ctx.seed,
            max_clusters=self.max_clusters,
            min_cluster_size=self.min_cluster_size,
            knn=self.knn,
            minibatch_above=self.minibatch_above,
        )
        return Selection(feats.global_ids(picks.rows), picks.scores, picks.info)
