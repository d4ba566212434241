"""Shared pieces of the one-pass peers (TypiClust, ProbCover, ActiveFT, MaxHerding, USL, k-means nearest).

* :func:`load_pool_features` — the ONE place these selectors read the feature store: the global feature of
  every usable image (valid, not excluded), optionally standardised per dimension and/or L2-normalised.
* Blocked pairwise work on the selection device — never an N × N matrix: :func:`sq_dists`,
  :func:`mean_knn_dist` and :func:`row_block` (from :mod:`geal.util.pairwise`, shared with GEAL's image
  typicality), :func:`rbf_gains` (kernel coverage gains / densities), :func:`rbf_max` (each point's best
  kernel value to a set).
* :func:`kmeans` — seeded scikit-learn k-means (from :mod:`geal.method.typicality`, TypiClust's core).

Index spaces: a *row* indexes :attr:`PoolFeatures.points` (the usable images, ascending global id);
:attr:`PoolFeatures.ids` maps rows to global ids.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor

from geal.api.selector import Selection, SelectionContext, Selector, eligible_mask, labeled_mask
from geal.method.typicality import kmeans
from geal.util.pairwise import SMALL_POOL, mean_knn_dist, row_block, sq_dists
from geal.util.threads import intra_op_threads

if TYPE_CHECKING:
    from geal.api.pool import ImagePool

__all__ = [
    "GlobalFeatureSelector",
    "PoolFeatures",
    "kmeans",
    "load_pool_features",
    "mean_knn_dist",
    "rbf_gains",
    "rbf_max",
    "row_block",
    "sq_dists",
]


@dataclass
class PoolFeatures:
    """The usable images' global features.

    points:  (M, D) float32 on the selection device (transformed as asked).
    ids:     (M,) int64 numpy: the global id of each row, ascending (valid images not in ``ctx.excluded``).
    labeled: (M,) bool on the device: the row is in ``ctx.labeled`` (never picked again).
    """

    points: Tensor
    ids: np.ndarray
    labeled: Tensor

    @property
    def pickable(self) -> Tensor:
        """(M,) bool: rows that may be picked."""
        return ~self.labeled

    def global_ids(self, rows: Tensor | list[int]) -> list[int]:
        rows = rows.tolist() if isinstance(rows, Tensor) else rows
        return [int(self.ids[r]) for r in rows]


def load_pool_features(
    pool: ImagePool,
    budget: int,
    ctx: SelectionContext,
    *,
    normalize: bool,
    standardize: bool,
) -> PoolFeatures:
    """The global features (CLS of the last block) of the usable images, from ``ctx.features``.

    ``standardize``: subtract the mean and divide by the standard deviation of each dimension over the
    usable images (dimensions with zero spread are only centred). ``normalize``: then L2-normalise each row.
    Raises SelectionError (via ``eligible_mask``) when fewer than ``budget`` images can be picked.
    """
    assert ctx.features is not None, "the pipeline provides features to selectors that require them"
    stored = ctx.features.global_features()
    feats, valid = stored.features, stored.valid
    usable = eligible_mask(len(pool), ctx, torch.device("cpu"), valid, budget)
    ids = usable.nonzero().squeeze(1)
    points = torch.from_numpy(np.asarray(feats, dtype=np.float32))[ids].to(ctx.device)
    if standardize:
        std = points.std(0, unbiased=False)
        points = (points - points.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    if normalize:
        points = torch.nn.functional.normalize(points, dim=1)
    labeled = labeled_mask(len(pool), ctx, torch.device("cpu"))
    return PoolFeatures(points.contiguous(), ids.numpy(), labeled[ids].to(ctx.device))


class GlobalFeatureSelector(Selector):
    """Base of the peers: :meth:`_select` reads the global features (:func:`load_pool_features` with the
    subclass's ``normalize`` and ``standardize``) and calls
    :meth:`_pick`. Pools of at most ``SMALL_POOL`` feature values run on one CPU thread: their loops of small
    tensor ops lose more to thread wake-ups than they gain (see ``geal.util.threads``)."""

    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    cold_start: ClassVar[bool] = True
    normalize: bool = True
    standardize: bool = False

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        feats = load_pool_features(
            pool,
            budget,
            ctx,
            normalize=self.normalize,
            standardize=self.standardize,
        )
        small = feats.points.device.type == "cpu" and feats.points.numel() <= SMALL_POOL
        with intra_op_threads(1) if small else contextlib.nullcontext():
            return self._pick(feats, budget, ctx)

    @abstractmethod
    def _pick(self, feats: PoolFeatures, budget: int, ctx: SelectionContext) -> Selection:
        """Exactly ``budget`` picks (global ids via ``feats.global_ids``) from the pool's features."""


def _rbf(d2: Tensor, bandwidth: float) -> Tensor:
    """k = exp(−‖x − y‖² / h²) of squared distances, in place."""
    return d2.mul_(-1.0 / (bandwidth * bandwidth)).exp_()


def rbf_gains(candidates: Tensor, points: Tensor, bandwidth: float, floor: Tensor | None = None) -> Tensor:
    """(C,) mean over the points x of max(0, k(c, x) − floor(x)) for each candidate row c (C, D).

    ``floor`` (N,): each point's current best kernel value (MaxHerding's coverage); None → 0, i.e. the
    kernel density of each candidate. k is the Gaussian kernel exp(−‖c − x‖² / h²). Blocked over C.
    """
    p_sq = (points * points).sum(1)
    out = torch.empty(candidates.shape[0], device=points.device)
    step = row_block(points.shape[0], points.device)
    for s in range(0, candidates.shape[0], step):
        k = _rbf(sq_dists(candidates[s : s + step], points, p_sq), bandwidth)
        if floor is not None:
            k.sub_(floor.unsqueeze(0)).clamp_min_(0)
        out[s : s + step] = k.mean(1)
    return out


def rbf_max(sources: Tensor, points: Tensor, bandwidth: float) -> Tensor:
    """(N,) max over the source rows s (S, D) of k(s, x) for each point x (N, D); zeros when S = 0."""
    best = torch.zeros(points.shape[0], device=points.device)
    p_sq = (points * points).sum(1)
    step = row_block(points.shape[0], points.device)
    for s in range(0, sources.shape[0], step):
        k = _rbf(sq_dists(sources[s : s + step], points, p_sq), bandwidth)
        torch.maximum(best, k.amax(0), out=best)
    return best
