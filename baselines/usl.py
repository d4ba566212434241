"""USL (Wang, Lian & Yu, "Unsupervised Selective Labeling for More Effective Semi-Supervised Learning",
ECCV 2022; github TonyLianLong/UnsupervisedSelectiveLabeling, ``usl-cifar.py`` and
``shared/utils/nn_utils_cifar.py:get_selection_with_reg``).

Density of each usable image = 1 / (mean squared L2 distance to its K nearest images, itself included, as
the authors' kNN of the pool against itself). k-means (random initial centroids, ``kmeans_iters`` Lloyd
iterations) into B clusters; then ``reg_iters`` rounds of the regularised pick: in each cluster (by id) the
unlabeled image maximising density − λ·R, where R is a momentum average (m) over rounds of
Σ_{picks s of other clusters} 1 / d²(x, s)^α (pairs with d² ≥ ``horizon`` and same-cluster pairs count as
d² = 1e10). The last round's picks are returned. Features (N, D); B-dependent clusters: not nested.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from baselines.neighbours import (
    GlobalFeatureSelector,
    PoolFeatures,
    kmeans,
    mean_knn_dist,
    row_block,
    sq_dists,
)
from geal.api.selector import Selection, SelectionContext

FAR = 1e10  # the authors' stand-in squared distance for pairs the regulariser ignores


class USLSelector(GlobalFeatureSelector):
    """Unsupervised Selective Labeling on global features (see the module docstring)."""

    nested: ClassVar[bool] = False

    def __init__(
        self,
        name: str = "usl",
        normalize: bool = True,
        standardize: bool = False,
        knn: int = 400,
        kmeans_iters: int = 200,
        kmeans_init: Literal["random", "k-means++"] = "random",
        reg_iters: int = 10,
        reg_lambda: float = 0.5,
        reg_alpha: float = 0.5,
        reg_momentum: float = 0.9,
        horizon: float = 4.0,
    ) -> None:
        for key, value in (("knn", knn), ("kmeans_iters", kmeans_iters), ("reg_iters", reg_iters)):
            if value < 1:
                raise ValueError(f"selector.{key} must be >= 1, got {value}")
        if kmeans_init not in ("random", "k-means++"):
            raise ValueError(f"selector.kmeans_init must be 'random' or 'k-means++', got {kmeans_init!r}")
        if not 0 <= reg_momentum < 1:
            raise ValueError(f"selector.reg_momentum must be in [0, 1), got {reg_momentum}")
        self.name = name
        self.normalize, self.standardize = normalize, standardize
        self.knn, self.kmeans_iters, self.kmeans_init = knn, kmeans_iters, kmeans_init
        self.reg_iters, self.reg_lambda, self.reg_alpha = reg_iters, reg_lambda, reg_alpha
        self.reg_momentum, self.horizon = reg_momentum, horizon

    def _pick(self, feats: PoolFeatures, budget: int, ctx: SelectionContext) -> Selection:
        density = 1.0 / mean_knn_dist(feats.points, self.knn, drop_nearest=False)
        # the authors' k-means: random initial centroids, Lloyd iterations until nothing moves (or the cap)
        init, iters = self.kmeans_init, self.kmeans_iters
        clusters, _ = kmeans(feats.points, budget, ctx.seed, init=init, n_init=1, max_iter=iters, tol=0.0)
        clusters_t = torch.as_tensor(clusters, device=feats.points.device)
        regulariser = torch.zeros_like(density)
        for round_ in range(self.reg_iters):
            score = density - self.reg_lambda * regulariser
            picks, scores = pick_per_cluster(score, clusters, feats.pickable)
            if round_ < self.reg_iters - 1:  # the last round's update would not change any pick
                new = self._regulariser(feats.points, clusters_t, picks)
                regulariser = regulariser * self.reg_momentum + new * (1 - self.reg_momentum)
        picks, scores = fill_up(picks, scores, score, feats.pickable, budget)
        return Selection(feats.global_ids(picks), scores, {"n_clusters": int(clusters.max()) + 1})

    def _regulariser(self, points: Tensor, clusters: Tensor, picks: list[int]) -> Tensor:
        """(N,) Σ over the picks s of 1 / d²(x, s)^α, with d² = 1e10 for s in x's cluster or d² ≥ horizon."""
        rows = torch.as_tensor(picks, device=points.device)
        chosen, chosen_cluster = points[rows], clusters[rows]
        c_sq = (chosen * chosen).sum(1)
        out = torch.empty(points.shape[0], device=points.device)
        step = row_block(len(picks), points.device)
        for s in range(0, points.shape[0], step):
            d = sq_dists(points[s : s + step], chosen, c_sq)
            same = clusters[s : s + step].unsqueeze(1) == chosen_cluster.unsqueeze(0)
            ignore = same | (d >= self.horizon)
            d = d.masked_fill_(ignore, FAR).clamp_min_(torch.finfo(d.dtype).tiny)
            out[s : s + step] = d.pow_(-self.reg_alpha).sum(1)
        return out


def pick_per_cluster(scores: Tensor, clusters: np.ndarray, pickable: Tensor) -> tuple[list[int], list[float]]:
    """In each cluster (ascending id), the pickable row of highest score (first on ties); clusters without
    a pickable row give nothing."""
    masked = scores.masked_fill(~pickable, -torch.inf).cpu().numpy()
    picks: list[int] = []
    out: list[float] = []
    order = np.argsort(clusters, kind="stable")
    bounds = np.searchsorted(clusters[order], np.arange(int(clusters.max()) + 2))
    for c in range(int(clusters.max()) + 1):
        members = order[bounds[c] : bounds[c + 1]]
        if members.size == 0 or not np.isfinite(masked[members]).any():
            continue
        best = members[int(np.argmax(masked[members]))]
        picks.append(int(best))
        out.append(float(masked[best]))
    return picks, out


def fill_up(
    picks: list[int], scores: list[float], final: Tensor, pickable: Tensor, budget: int
) -> tuple[list[int], list[float]]:
    """Complete the picks to ``budget`` (clusters holding only labeled images give none) with the other
    pickable rows of highest final score."""
    if len(picks) >= budget:
        return picks[:budget], scores[:budget]
    rest = final.masked_fill(~pickable, -torch.inf)
    rest[torch.as_tensor(picks, dtype=torch.long, device=rest.device)] = -torch.inf
    extra = rest.topk(budget - len(picks)).indices.tolist()
    return picks + extra, scores + [float(rest[r]) for r in extra]
