"""ActiveFT (Xie, Lu, Lu, Wang & Wang, "Active Finetuning: Exploiting Annotation Budget in the
Pretraining-Finetuning Paradigm", CVPR 2023; github yichen928/ActiveFT, ``sample_tools/ActiveFT_*.py``).

B free centroids c (B, D), initialised from the features of B random usable images, are optimised with Adam
on the L2-normalised features f (N, D) to minimise
    −mean_i [ log e^{s_i} − log(e^{s_i} + β Σ_j e^{ĉ_j·ĉ_{k_i} / τ}) ],  s_i = max_k f_i·ĉ_k / τ,
k_i its argmax, ĉ = c / ‖c‖, the first ĉ_j detached (τ = ``temperature``, β = ``balance``); pools larger
than ``batch_size`` use a random mini-batch of features per iteration (the authors' ImageNet script).
Then each centroid, in order, takes its most similar unused unlabeled image. Labeled images are never
picked (the method defines no continuation). B centroids: not nested.

Memory: the loss only needs each feature's best centroid, so the (batch, B) similarities are computed in
blocks without gradient and the gradient flows through the gathered (batch, D) best centroids — the same
loss and gradient as the authors' dense (batch, B) product, without holding it for autograd.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.neighbours import GlobalFeatureSelector, PoolFeatures, row_block
from geal.api.selector import Selection, SelectionContext


class ActiveFTSelector(GlobalFeatureSelector):
    """ActiveFT on global features (see the module docstring)."""

    nested: ClassVar[bool] = False

    def __init__(
        self,
        name: str = "activeft",
        standardize: bool = False,
        temperature: float = 0.07,
        balance: float = 1.0,
        lr: float = 1e-3,
        iterations: int = 300,
        batch_size: int = 100_000,
    ) -> None:
        for key, value in (
            ("temperature", temperature),
            ("lr", lr),
            ("iterations", iterations),
            ("batch_size", batch_size),
        ):
            if value <= 0:
                raise ValueError(f"selector.{key} must be > 0, got {value}")
        self.name = name
        self.normalize, self.standardize = True, standardize  # the loss assumes unit features
        self.temperature, self.balance, self.lr = temperature, balance, lr
        self.iterations, self.batch_size = iterations, batch_size

    def _pick(self, feats: PoolFeatures, budget: int, ctx: SelectionContext) -> Selection:
        gen = ctx.generator()
        start = torch.randperm(feats.points.shape[0], generator=gen)[:budget].to(feats.points.device)
        centroids, loss = self.optimise(feats.points, start, gen)
        picks, sims = snap(centroids, feats.points, feats.pickable)
        return Selection(feats.global_ids(picks), sims, {"final_loss": loss})

    def optimise(self, features: Tensor, start: Tensor, gen: torch.Generator) -> tuple[Tensor, float]:
        """Optimise centroids started at the feature rows ``start`` → (normalised centroids, last loss)."""
        centroids = torch.nn.Parameter(features[start].clone())
        opt = torch.optim.Adam([centroids], lr=self.lr)
        n = features.shape[0]
        loss = torch.zeros(())
        for _ in range(self.iterations):
            batch = features
            if n > self.batch_size:
                batch = features[torch.randperm(n, generator=gen)[: self.batch_size].to(features.device)]
            loss = activeft_loss(batch, centroids, self.temperature, self.balance)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return F.normalize(centroids.detach(), dim=1), float(loss.detach())


def activeft_loss(features: Tensor, centroids: Tensor, temperature: float, balance: float) -> Tensor:
    """The ActiveFT loss of unit features (n, D) for centroids (B, D) (see the module docstring)."""
    unit = F.normalize(centroids, dim=1)
    with torch.no_grad():  # each feature's most similar centroid, in blocks
        best = torch.empty(features.shape[0], dtype=torch.long, device=features.device)
        step = row_block(unit.shape[0], features.device)
        for s in range(0, features.shape[0], step):
            best[s : s + step] = (features[s : s + step] @ unit.T).argmax(1)
    pos_exp = torch.exp((features * unit[best]).sum(1) / temperature)  # e^{s_i}
    cent_sum = torch.exp(unit.detach() @ unit.T / temperature).sum(0)  # (B,) Σ_j e^{ĉ_j·ĉ_k/τ}
    loss = torch.log(pos_exp) - torch.log(pos_exp + cent_sum[best] * balance)
    return -loss.mean()


def snap(centroids: Tensor, features: Tensor, pickable: Tensor) -> tuple[list[int], list[float]]:
    """Each centroid (B, D), in order, takes its most similar pickable row not taken before → (rows, cosine
    similarities). Similarities are computed for a block of centroids at a time."""
    free = pickable.clone()
    picks: list[int] = []
    sims: list[float] = []
    step = row_block(features.shape[0], features.device)
    for s in range(0, centroids.shape[0], step):
        block = centroids[s : s + step] @ features.T
        for row in block:
            best = int(row.masked_fill(~free, -torch.inf).argmax())
            picks.append(best)
            sims.append(float(row[best]))
            free[best] = False
    return picks, sims
