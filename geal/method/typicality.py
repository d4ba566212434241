"""Typicality: how central an image is among its neighbours, and TypiClust's cluster-then-most-typical picks.

Two uses (docs/design.md §1.8):

* GEAL's image view. :func:`image_descriptors` turns an image's knowledge clusters into one vector (the
  normalised mean of its normalised clusters); :func:`image_typicality` scores each image by
  1 / (mean L2 distance of its descriptor to its ``knn`` nearest images), scaled to max 1. The GEAL
  selector uses it to weight k-center's distances (``typicality.density_weight``), to drop the least
  typical images before sampling (``typicality.drop_fraction``), or, in GEAL-typical, as the points
  TypiClust picks among.
* TypiClust's core (Hacohen, Dekel & Weinshall, ICML 2022; github avihu111/TypiClust ``typiclust.py``),
  :func:`typical_cluster_picks`: k-means the points into min(|L| + B, ``max_clusters``) clusters, visit
  the clusters by (labeled members ↑, size ↓) round-robin, each visit picking the cluster's most typical
  unlabeled point (typicality = 1 / (mean squared L2 distance to its min(``knn``, m // 2) nearest
  neighbours among the cluster's m unlabeled points + 1e-5)). The TypiClust peer
  (:mod:`baselines.typiclust`) runs it on CLS features, GEAL-typical on GEAL's image descriptors.

Index spaces: a *row* indexes the ``points`` given (callers map rows to global ids).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from geal.api.features import KnowledgeClusterSet
from geal.util.pairwise import SMALL_POOL, mean_knn_dist
from geal.util.settings import settings_from_node

__all__ = [
    "TypicalPicks",
    "TypicalitySettings",
    "cluster_visit_order",
    "drop_least_typical",
    "image_descriptors",
    "image_typicality",
    "kmeans",
    "most_typical",
    "typical_cluster_picks",
]


@dataclass(frozen=True)
class TypicalitySettings:
    """How the GEAL selectors use image typicality: the ``selector.typicality`` config node (an unknown key
    fails; geal/conf/selector/geal.yaml says what the defaults are and why).

    knn:              neighbours of an image's typicality (:func:`image_typicality`)
    density_weight:   α ≥ 0: k-center (or D²) ranks ``distance × typicality^α``; 0 is the paper's GEAL
    drop_fraction:    in [0, 1): the least typical fraction of the pickable images is never picked
    max_clusters, min_cluster_size: GEAL-typical's TypiClust clusters (:func:`typical_cluster_picks`)
    """

    knn: int = 20
    density_weight: float = 0.0
    drop_fraction: float = 0.0
    max_clusters: int = 500
    min_cluster_size: int = 5

    def __post_init__(self) -> None:
        for key in ("knn", "max_clusters"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"typicality.{key} must be >= 1, got {getattr(self, key)}")
        if not float(self.density_weight) >= 0.0:
            raise ValueError(f"typicality.density_weight must be >= 0, got {self.density_weight}")
        if not 0.0 <= float(self.drop_fraction) < 1.0:
            raise ValueError(f"typicality.drop_fraction must lie in [0, 1), got {self.drop_fraction}")

    @classmethod
    def from_config(cls, node: TypicalitySettings | Mapping[str, Any] | None) -> TypicalitySettings:
        return settings_from_node(cls, node, "typicality")

    @property
    def used(self) -> bool:
        """Whether the k-center / D² GEAL needs typicality at all."""
        return self.density_weight > 0 or self.drop_fraction > 0


def drop_least_typical(
    eligible: Tensor, labeled: Tensor, typicality: Tensor, fraction: float, budget: int
) -> int:
    """Clear, in place, ``eligible`` (N,) bool for the least typical ``fraction`` of the pickable images
    (eligible, not ``labeled``), keeping at least ``budget`` of them; → how many were dropped. Ties in
    typicality drop the lower global id first (a stable order)."""
    pickable = (eligible & ~labeled).nonzero().squeeze(1)
    n_drop = min(int(fraction * pickable.numel()), pickable.numel() - budget)
    if n_drop <= 0:
        return 0
    order = torch.sort(typicality[pickable], stable=True).indices  # ascending typicality, then id
    eligible[pickable[order[:n_drop]]] = False
    return n_drop


def image_descriptors(clusters: KnowledgeClusterSet, n_images: int) -> Tensor:
    """(n_images, D) float32: each image's L2-normalised mean of its L2-normalised knowledge clusters
    (zeros for an image without clusters: an unreadable one)."""
    feats = torch.nn.functional.normalize(torch.from_numpy(np.asarray(clusters.features, np.float32)), dim=1)
    owners = torch.from_numpy(np.asarray(clusters.owners, np.int64))
    summed = torch.zeros(n_images, feats.shape[1]).index_add_(0, owners, feats)
    return torch.nn.functional.normalize(summed, dim=1)


def image_typicality(descriptors: Tensor, usable: Tensor, knn: int) -> Tensor:
    """(N,) float32 in [0, 1]: 1 / (mean L2 distance of each usable descriptor (N, D) to its ``knn``
    nearest usable descriptors, itself left out), divided by the largest value; 0 where not ``usable``
    (N,) bool. Blocked: no N × N matrix."""
    if knn < 1:
        raise ValueError(f"typicality knn must be >= 1, got {knn}")
    out = torch.zeros(descriptors.shape[0], dtype=torch.float32, device=descriptors.device)
    rows = usable.nonzero().squeeze(1)
    if rows.numel() < 2:
        out[rows] = 1.0
        return out
    dist = mean_knn_dist(descriptors[rows], knn, drop_nearest=True, squared=False)
    # an image whose knn nearest are all exact duplicates has distance 0: as typical as it gets
    floor = dist[dist > 0].min() if bool((dist > 0).any()) else torch.ones(())
    typ = 1.0 / dist.clamp_min(float(floor))
    out[rows] = (typ / typ.max()).float()
    return out


def kmeans(
    points: Tensor,
    n_clusters: int,
    seed: int,
    *,
    algorithm: Literal["full", "minibatch"] = "full",
    init: Literal["k-means++", "random"] = "k-means++",
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded scikit-learn k-means of (N, D) points (on the CPU) → labels (N,) int64, centroids (k, D).

    ``full``: ``KMeans`` (Lloyd); ``minibatch``: ``MiniBatchKMeans`` with batches of 5,000 (as TypiClust's
    code does above 50 clusters). ``random_state`` is ``seed``, so the same seed gives the same clusters.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    x = points.detach().to("cpu", torch.float32).numpy()
    n_clusters = min(n_clusters, x.shape[0])
    if algorithm == "minibatch":
        km = MiniBatchKMeans(
            n_clusters=n_clusters, batch_size=5000, init=init, n_init=n_init, random_state=seed
        )
    else:
        km = KMeans(
            n_clusters=n_clusters, init=init, n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed
        )
    # small pools: one thread (thread wake-ups cost more than they gain, see geal.util.threads)
    with threadpool_limits(1) if x.size <= SMALL_POOL else contextlib.nullcontext():
        labels = km.fit_predict(x)
    return labels.astype(np.int64), km.cluster_centers_.astype(np.float32)


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


def most_typical(points: Tensor, members: np.ndarray, knn: int) -> tuple[int, float]:
    """The member row with the highest TypiClust typicality among ``members`` (rows of ``points``), and
    that typicality (NaN for a lone member)."""
    k = min(knn, members.size // 2)
    if k == 0:
        return int(members[0]), float("nan")
    rows = torch.as_tensor(members, device=points.device)
    typicality = 1.0 / (mean_knn_dist(points[rows], k, drop_nearest=True) + 1e-5)
    best = int(typicality.argmax())
    return int(members[best]), float(typicality[best])


@dataclass
class TypicalPicks:
    """rows: the picked rows in order; scores: their typicality; info: cluster counts for the record."""

    rows: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)


def typical_cluster_picks(
    points: Tensor,
    labeled: np.ndarray,
    budget: int,
    seed: int,
    *,
    max_clusters: int = 500,
    min_cluster_size: int = 5,
    knn: int = 20,
    minibatch_above: int = 50,
) -> TypicalPicks:
    """TypiClust's picks (module docstring) of ``budget`` rows of ``points`` (N, D), never a ``labeled``
    (N,) bool row. Where the authors' code would fail (a visited cluster with no unlabeled point left, or
    no cluster above ``min_cluster_size``) the visit moves on to the next cluster, and the small clusters
    are visited, in the same order, once the others are empty."""
    n_clusters = min(int(labeled.sum()) + budget, max_clusters, len(labeled))
    algorithm: Literal["full", "minibatch"] = "full" if n_clusters <= minibatch_above else "minibatch"
    # n_init as the scikit-learn defaults of the authors' time (KMeans 10, MiniBatchKMeans 3)
    clusters, _ = kmeans(
        points, n_clusters, seed, algorithm=algorithm, n_init=10 if algorithm == "full" else 3
    )
    order, small = cluster_visit_order(clusters, labeled, n_clusters, min_cluster_size)
    available = ~labeled
    remaining = np.bincount(clusters[available], minlength=n_clusters)  # unlabeled members per cluster
    out = TypicalPicks(
        info={"n_clusters": int(n_clusters), "kept_clusters": int(order.size), "kmeans": algorithm}
    )
    for visit_list in (order, small):
        visit = 0  # the authors' loop visits order[i % len(order)] at pick i; empty clusters are passed
        while len(out.rows) < budget and remaining[visit_list].sum() > 0:
            cluster = visit_list[visit % visit_list.size]
            visit += 1
            if remaining[cluster] == 0:
                continue
            members = np.flatnonzero((clusters == cluster) & available)
            row, score = most_typical(points, members, knn)
            out.rows.append(row)
            out.scores.append(score)
            available[row] = False
            remaining[cluster] -= 1
    return out
