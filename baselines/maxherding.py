"""MaxHerding (Bae, Noh & Sutherland, "Generalized Coverage for More Robust Low-Budget Active Learning",
ECCV 2024; code in github BorealisAI/uherding, ``herding.py``).

Greedy maximisation of the kernel coverage (1/N) Σ_x max_{s ∈ S} k(x, s) over the usable images' global
features (N, D), with the Gaussian kernel k(x, y) = exp(−‖x − y‖² / h²) (h: ``bandwidth``). S starts as the
labeled set; each step adds the unlabeled image c with the largest gain (1/N) Σ_x max(0, k(x, c) − k_max(x))
(k_max: the current coverage of x, 0 for an empty S), so the first pick is the densest image.

The authors build the N × N kernel and rescan it at every step; here the gains are upper-bounded lazily
(the coverage is submodular, so a gain never grows): the initial gains are computed in blocks, and each step
recomputes only the highest stale bounds (16, 32, 64... candidates) until the best bound is a fresh gain —
the same picks as the full scan up to floating-point ties. Greedy: nested.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from baselines.neighbours import GlobalFeatureSelector, PoolFeatures, rbf_gains, rbf_max
from geal.api.selector import Selection, SelectionContext

FIRST_REFRESH = 16  # stale bounds recomputed in a step's first refresh (doubled at each further one)


class MaxHerdingSelector(GlobalFeatureSelector):
    """MaxHerding on global features (see the module docstring)."""

    nested: ClassVar[bool] = True

    def __init__(
        self,
        name: str = "maxherding",
        normalize: bool = True,
        standardize: bool = False,
        bandwidth: float = 1.0,
    ) -> None:
        if bandwidth <= 0:
            raise ValueError(f"selector.bandwidth must be > 0, got {bandwidth}")
        self.name = name
        self.normalize, self.standardize = normalize, standardize
        self.bandwidth = bandwidth

    def _pick(self, feats: PoolFeatures, budget: int, ctx: SelectionContext) -> Selection:
        picks, gains, refreshed = lazy_herding(feats.points, feats.labeled, budget, self.bandwidth)
        return Selection(
            feats.global_ids(picks), gains, {"bandwidth": self.bandwidth, "gains_recomputed": refreshed}
        )


def lazy_herding(
    points: Tensor, labeled: Tensor, budget: int, bandwidth: float
) -> tuple[list[int], list[float], int]:
    """Greedy kernel-coverage picks among the rows not ``labeled`` → (rows, gain of each pick, number of
    gains recomputed after the initial pass). points (N, D); labeled (N,) bool."""
    every = torch.arange(points.shape[0], device=points.device)
    kmax = rbf_max(points[labeled], points, bandwidth)  # coverage by the labeled set (0 when empty)
    bound = torch.full((points.shape[0],), -torch.inf, device=points.device)
    cand = every[~labeled]
    bound[cand] = rbf_gains(points[cand], points, bandwidth, kmax)
    fresh = torch.zeros_like(labeled)
    fresh[cand] = True
    picks: list[int] = []
    gains: list[float] = []
    refreshed = 0
    for _ in range(budget):
        size = FIRST_REFRESH
        while not fresh[best := int(bound.argmax())]:
            stale = bound.masked_fill(fresh, -torch.inf)
            n_stale = int(torch.isfinite(stale).sum())
            rows = stale.topk(min(size, n_stale)).indices
            bound[rows] = rbf_gains(points[rows], points, bandwidth, kmax)
            fresh[rows] = True
            refreshed += rows.numel()
            size *= 2
        picks.append(best)
        gains.append(float(bound[best]))
        bound[best] = -torch.inf
        torch.maximum(kmax, rbf_max(points[best : best + 1], points, bandwidth), out=kmax)
        fresh.zero_()  # every other bound is stale now
    return picks, gains, refreshed
