"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022;
github avihu111/TypiClust, ``prob_cover.py``).

Balls of radius δ around the usable images' global features (N, D): δ is the largest radius for which at
least ``purity`` (95%) of the balls are pure w.r.t. k-means(``n_classes``) pseudo-labels (a ball B(x) =
{y : ‖x − y‖ < δ} is pure when every y in it has x's pseudo-label), unless ``delta`` is given. Then greedy
max coverage: points in the labeled images' balls start covered; each step picks the unlabeled image whose
ball holds the most uncovered points and marks them covered (the authors' covered-edge removal). Images
whose balls hold equally many uncovered points are taken in a seeded random order (``tie_break=random``):
the authors' argmax takes the lowest index, which on their CIFAR files (stored in random order) is a random
tie-break, but on a pool stored sorted by class (MNIST-5k) picks class 0 first whenever balls tie, and
with a small δ most do; ``tie_break=index`` is their argmax as written.

The graph is never stored: degrees are counted in (rows, N) blocks and lowered, block by block, by the
balls of the newly covered points. To make every block agree on every edge, distances are computed exactly:
the features are quantised to integers of ≤ 20 bits and the squared distances are exact integers in
float64 (identical on any device and blocking). When every point is covered before the budget is spent, the
remaining picks follow a seeded random order of the unlabeled images (the authors' loop would return image
0 again). The picks of a smaller budget are a prefix of a larger one's (nested).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor

from baselines.neighbours import GlobalFeatureSelector, PoolFeatures, kmeans, row_block
from geal.api.selector import Selection, SelectionContext


class ExactSqDist:
    """Exact squared L2 distances between rows of (N, D) features, in blocks.

    Features are scaled so the largest |coordinate| is 2^bits with D·2^(2·bits) ≤ 2^50, then rounded: every
    product, partial sum and ``‖a‖² + ‖b‖² − 2a·b`` is an integer below 2^53, exact in float64 whatever
    the summation order. ``scale`` converts back: distance = sqrt(d²) / scale.
    """

    def __init__(self, points: Tensor) -> None:
        device = points.device if points.device.type != "mps" else torch.device("cpu")  # no float64 on MPS
        bits = math.floor((50 - math.log2(max(1, points.shape[1]))) / 2)
        top = float(points.abs().max()) if points.numel() else 0.0
        self.scale = 2.0**bits / top if top > 0 else 1.0
        self.q = torch.round(points.to(device, torch.float64) * self.scale)
        self.q_sq = (self.q * self.q).sum(1)
        self.block = row_block(self.q.shape[0], device, itemsize=8)

    @property
    def device(self) -> torch.device:
        return self.q.device

    def rows(self, rows: Tensor) -> Tensor:
        """(R, N) exact squared distances (scaled units) of the rows ``rows`` (R,) to every row."""
        return torch.addmm(self.q_sq.unsqueeze(0), self.q[rows], self.q.T, alpha=-2.0).add_(
            self.q_sq[rows].unsqueeze(1)
        )

    def blocks(self, rows: Tensor):
        """Yield (row indices, their (r, N) distances) over ``rows`` in blocks."""
        for s in range(0, rows.numel(), self.block):
            part = rows[s : s + self.block]
            yield part, self.rows(part)


def purity_threshold(dist: ExactSqDist, labels: Tensor, purity: float) -> tuple[float, float]:
    """The largest squared radius T (scaled units) whose open balls d² < T are pure for at least
    ``purity`` of the points, and the fraction of pure balls at T. A ball is pure iff T ≤ r²(x), r(x)
    the distance to the nearest point of another label, so T is the ⌈purity·N⌉-th largest r²."""
    n = labels.numel()
    r2 = torch.empty(n, dtype=torch.float64, device=dist.device)
    for rows, d in dist.blocks(torch.arange(n, device=dist.device)):
        d.masked_fill_(labels[rows].unsqueeze(1) == labels.unsqueeze(0), math.inf)
        r2[rows] = d.amin(1)
    need = min(n, max(1, math.ceil(purity * n - 1e-9)))
    threshold = float(r2.sort().values[n - need])
    return threshold, float((r2 >= threshold).double().mean())


class ProbCoverSelector(GlobalFeatureSelector):
    """ProbCover on global features (see the module docstring)."""

    nested: ClassVar[bool] = True

    def __init__(
        self,
        name: str = "probcover",
        normalize: bool = True,
        standardize: bool = False,
        n_classes: int = 10,
        purity: float = 0.95,
        delta: float | None = None,
        tie_break: Literal["random", "index"] = "random",
    ) -> None:
        if n_classes < 1:
            raise ValueError(f"selector.n_classes must be >= 1, got {n_classes}")
        if not 0 < purity <= 1:
            raise ValueError(f"selector.purity must be in (0, 1], got {purity}")
        if delta is not None and delta <= 0:
            raise ValueError(f"selector.delta must be > 0 or null (chosen by purity), got {delta}")
        if tie_break not in ("random", "index"):
            raise ValueError(f"selector.tie_break must be 'random' or 'index', got {tie_break!r}")
        self.name = name
        self.tie_break = tie_break
        self.normalize, self.standardize = normalize, standardize
        self.n_classes, self.purity, self.delta = n_classes, purity, delta

    def _pick(self, feats: PoolFeatures, budget: int, ctx: SelectionContext) -> Selection:
        dist = ExactSqDist(feats.points)
        info: dict[str, float | int | None] = {"n_classes": self.n_classes, "purity_target": self.purity}
        if self.delta is None:
            labels, _ = kmeans(feats.points, self.n_classes, ctx.seed, algorithm="full", n_init=10)
            threshold, info["purity"] = purity_threshold(
                dist, torch.as_tensor(labels, device=dist.device), self.purity
            )
        else:
            threshold = (self.delta * dist.scale) ** 2
        info["delta"] = math.sqrt(threshold) / dist.scale if math.isfinite(threshold) else None
        labeled = feats.labeled.to(dist.device)
        generator = ctx.generator()
        n = labeled.numel()
        rank = torch.randperm(n, generator=generator) if self.tie_break == "random" else torch.arange(n)
        picks, scores, covered = greedy_cover(
            dist, threshold, labeled, budget, generator, rank.to(dist.device)
        )
        info["coverage"] = float(covered.double().mean())
        return Selection(feats.global_ids(picks), scores, info)


def greedy_cover(
    dist: ExactSqDist,
    threshold: float,
    labeled: Tensor,
    budget: int,
    generator: torch.Generator,
    rank: Tensor,
) -> tuple[list[int], list[float], Tensor]:
    """Greedy max coverage with balls d² < ``threshold`` → (picked rows, newly covered count per pick,
    covered (N,) bool). Picks never include ``labeled`` rows; among rows of equal degree the lowest
    ``rank`` (N,) (a permutation of 0..N-1) comes first; after full coverage, a seeded random order."""
    n = labeled.numel()
    every = torch.arange(n, device=dist.device)
    covered = torch.zeros(n, dtype=torch.bool, device=dist.device)
    for _, d in dist.blocks(every[labeled]):
        covered |= (d < threshold).any(0)
    degree = torch.full((n,), -1, dtype=torch.long, device=dist.device)  # -1: never picked (labeled/picked)
    for rows, d in dist.blocks(every[~labeled]):
        degree[rows] = ((d < threshold) & ~covered).sum(1)
    fallback = iter(torch.randperm(n, generator=generator).tolist())
    picks: list[int] = []
    scores: list[float] = []
    # one int64 key per row: degree first, then the lowest rank (degree <= N, so no overflow below 3e9 rows)
    tie = (n - 1 - rank).to(torch.long)
    for _ in range(budget):
        cur = int((degree * n + tie).argmax())
        if degree[cur] <= 0:  # everything reachable is covered
            cur = next(r for r in fallback if degree[r] >= 0)  # unpicked rows never go below 0
            gained = 0
        else:
            new = ((dist.rows(torch.tensor([cur], device=dist.device))[0] < threshold) & ~covered).nonzero()
            new = new.squeeze(1)
            covered[new] = True
            gained = new.numel()
            for _, d in dist.blocks(new):
                degree -= (d < threshold).sum(0)
        degree[cur] = -1
        picks.append(cur)
        scores.append(float(gained))
    return picks, scores, covered
