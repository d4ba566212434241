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

from typing import ClassVar, Literal

import numpy as np
import torch

from baselines.neighbours import GlobalFeatureSelector, PoolFeatures, kmeans, mean_knn_sq_dist
from geal.api.selector import Selection, SelectionContext


class TypiClustSelector(GlobalFeatureSelector):
    """TypiClust on global features (see the module docstring). Not nested: the clusters depend on B."""

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
        labeled = feats.labeled.cpu().numpy()
        n_clusters = min(int(labeled.sum()) + budget, self.max_clusters, len(labeled))
        algorithm: Literal["full", "minibatch"] = (
            "full" if n_clusters <= self.minibatch_above else "minibatch"
        )
        # n_init as the scikit-learn defaults of the authors' time (KMeans 10, MiniBatchKMeans 3)
        clusters, _ = kmeans(
            feats.points, n_clusters, ctx.seed, algorithm=algorithm, n_init=10 if algorithm == "full" else 3
        )
        order, small = cluster_visit_order(clusters, labeled, n_clusters, self.min_cluster_size)
        available = ~labeled
        remaining = np.bincount(clusters[available], minlength=n_clusters)  # unlabeled members per cluster
        picks: list[int] = []
        scores: list[float] = []
        for visit_list in (order, small):
            visit = 0  # the authors' loop visits order[i % len(order)] at pick i; empty clusters are passed
            while len(picks) < budget and remaining[visit_list].sum() > 0:
                cluster = visit_list[visit % visit_list.size]
                visit += 1
                if remaining[cluster] == 0:
                    continue
                members = np.flatnonzero((clusters == cluster) & available)
                row, score = self._most_typical(feats.points, members)
                picks.append(row)
                scores.append(score)
                available[row] = False
                remaining[cluster] -= 1
        return Selection(
            feats.global_ids(picks),
            scores,
            {"n_clusters": int(n_clusters), "kept_clusters": int(order.size), "kmeans": algorithm},
        )

    def _most_typical(self, points: torch.Tensor, members: np.ndarray) -> tuple[int, float]:
        """The member row with the highest typicality, and that typicality (NaN for a lone member)."""
        k = min(self.knn, members.size // 2)
        if k == 0:
            return int(members[0]), float("nan")
        rows = torch.as_tensor(members, device=points.device)
        typicality = 1.0 / (mean_knn_sq_dist(points[rows], k, drop_nearest=True) + 1e-5)
        best = int(typicality.argmax())
        return int(members[best]), float(typicality[best])


def cluster_visit_order(
    clusters: np.ndarray, labeled: np.ndarray, n_clusters: int, min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ids sorted by (labeled members ↑, size ↓, id ↑): those with more than ``min_size`` members
    (the authors' visit order), and the others in the same order (visited only when the first are empty)."""
    size = np.bincount(clusters, minlength=n_clusters)
    n_labeled = np.bincount(clusters[labeled], minlength=n_clusters)
    ids = np.flatnonzero(size > 0)
    ids = ids[np.lexsort((ids, -size[ids], n_labeled[ids]))]
    big = size[ids] > min_size
    return ids[big], ids[~big]
