"""Uncertainty acquisition functions for classifiers: entropy, margin, least confidence, BALD (MC dropout).

Each selector asks the task for class probabilities of the unlabeled images (``task.predict_proba``,
declared in ``requires`` so a task without it fails at start-up), scores them, and picks the ``budget`` most
uncertain. Used in the traditional cycle (``geal.run.loop``) with any classifier task — a CNN trained from
scratch, or the linear probe on frozen self-supervised features of Bengar et al. (ICCVW 2021).

Scores (higher = more uncertain = picked first), for probabilities ``p`` of shape ``(n, C)``:

- entropy:          ``H(p) = -Σ_c p_c log p_c``;
- margin:           ``1 - (p_(1) - p_(2))`` (one minus the gap between the two largest probabilities);
- least confidence: ``1 - p_(1)``;
- BALD:             ``H(mean_s p_s) - mean_s H(p_s)`` over ``S`` MC-dropout samples ``(S, n, C)`` (the mutual
  information between the prediction and the model, Houlsby et al. 2011; Gal et al. 2017).

With ``mc_samples > 0`` entropy / margin / least confidence score the mean of the MC-dropout samples.
Ties are broken by the smaller global id. ``candidates``: score a seeded random subset of that many
unlabeled images instead of all of them (the "random subset" of Learn-Loss / Beluch et al.).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import ClassVar

import torch

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, SelectionError, Selector

log = logging.getLogger(__name__)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """(..., C) probabilities → (...,) entropy in nats (0 log 0 = 0)."""
    return torch.special.entr(probs.double()).sum(-1)


def margin_uncertainty(probs: torch.Tensor) -> torch.Tensor:
    """(n, C) → (n,) ``1 - (p_(1) - p_(2))``: 1 when the two top classes tie, 0 when one class has all."""
    if probs.shape[-1] < 2:
        return torch.zeros(probs.shape[:-1], dtype=torch.float64)
    top = probs.double().topk(2, dim=-1).values
    return 1.0 - (top[..., 0] - top[..., 1])


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """(n, C) → (n,) ``1 - max_c p_c``."""
    return 1.0 - probs.double().max(-1).values


def bald(samples: torch.Tensor) -> torch.Tensor:
    """(S, n, C) MC-dropout probabilities → (n,) mutual information ``H(E_s p) - E_s H(p_s)`` (≥ 0)."""
    if samples.ndim != 3:
        raise ValueError(f"BALD needs (S, n, C) MC-dropout samples, got shape {tuple(samples.shape)}")
    return (entropy(samples.mean(0)) - entropy(samples).mean(0)).clamp_min(0.0)


def unlabeled_candidates(
    n_images: int, ctx: SelectionContext, budget: int, candidates: int | None
) -> torch.Tensor:
    """Sorted global ids that may be picked (not labeled, not excluded); a seeded random subset of
    ``candidates`` of them when given (never fewer than ``budget``)."""
    mask = torch.ones(n_images, dtype=torch.bool)
    taken = [int(i) for i in [*ctx.labeled, *ctx.excluded]]
    if taken:
        mask[torch.as_tensor(taken, dtype=torch.long)] = False
    ids = mask.nonzero().flatten()
    if candidates is not None and candidates < len(ids):
        if candidates < budget:
            raise SelectionError(
                f"selector.candidates={candidates} is smaller than the budget {budget}: raise it or set null"
            )
        ids = ids[torch.randperm(len(ids), generator=ctx.generator())[:candidates]].sort().values
    return ids


def top_uncertain(ids: torch.Tensor, scores: torch.Tensor, budget: int) -> Selection:
    """The ``budget`` ids of highest score (``ids`` ascending, so ties go to the smaller global id)."""
    if scores.shape != ids.shape:
        raise RuntimeError(f"got {tuple(scores.shape)} scores for {len(ids)} images")
    if not torch.isfinite(scores).all():
        raise FloatingPointError("the task's probabilities gave non-finite uncertainty scores")
    order = torch.sort(scores, descending=True, stable=True).indices[:budget]
    return Selection([int(i) for i in ids[order]], [float(s) for s in scores[order]])


class AcquisitionSelector(Selector):
    """Base of the uncertainty selectors: score unlabeled images from ``task.predict_proba``; pick the top.

    mc_samples: 0 → one deterministic pass ``(n, C)``; S > 0 → S MC-dropout passes ``(S, n, C)`` (the task
    model needs dropout layers). candidates: score a random subset of this many unlabeled images (None: all).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"task.predict_proba"})
    cold_start: ClassVar[bool] = False  # needs a trained classifier: cycles start from a random set

    def __init__(self, name: str, mc_samples: int = 0, candidates: int | None = None) -> None:
        if mc_samples < 0:
            raise ValueError(f"selector.mc_samples must be >= 0, got {mc_samples}")
        if candidates is not None and candidates <= 0:
            raise ValueError(f"selector.candidates must be positive or null, got {candidates}")
        self.name = name
        self.mc_samples = int(mc_samples)
        self.candidates = candidates

    @abstractmethod
    def uncertainty(self, probs: torch.Tensor) -> torch.Tensor:
        """(n, C) or (S, n, C) probabilities → (n,) scores, higher = more uncertain."""

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        if ctx.task is None:
            raise SelectionError(
                f"selector {self.name} scores images with a trained classifier: run it in cycles "
                "(geal-run cycles=...), not in geal-select"
            )
        ids = unlabeled_candidates(len(pool), ctx, budget, self.candidates)
        probs = torch.as_tensor(ctx.task.predict_proba(ids.tolist(), mc_samples=self.mc_samples))
        expected = (len(ids),) if self.mc_samples == 0 else (self.mc_samples, len(ids))
        if tuple(probs.shape[:-1]) != expected:
            raise RuntimeError(
                f"task.predict_proba returned shape {tuple(probs.shape)}, expected {expected} + (classes,)"
            )
        scores = self.uncertainty(probs)
        selection = top_uncertain(ids, scores, budget)
        selection.info.update(
            {
                "n_candidates": len(ids),
                "mean_score_candidates": float(scores.mean()),
                "mean_score_picked": float(torch.tensor(selection.scores).mean()),
            }
        )
        return selection


def _mean_over_samples(probs: torch.Tensor) -> torch.Tensor:
    return probs.mean(0) if probs.ndim == 3 else probs


class EntropySelector(AcquisitionSelector):
    """Maximum predictive entropy."""

    def __init__(self, name: str = "entropy", mc_samples: int = 0, candidates: int | None = None) -> None:
        super().__init__(name, mc_samples, candidates)

    def uncertainty(self, probs: torch.Tensor) -> torch.Tensor:
        return entropy(_mean_over_samples(probs))


class MarginSelector(AcquisitionSelector):
    """Smallest gap between the two most probable classes."""

    def __init__(self, name: str = "margin", mc_samples: int = 0, candidates: int | None = None) -> None:
        super().__init__(name, mc_samples, candidates)

    def uncertainty(self, probs: torch.Tensor) -> torch.Tensor:
        return margin_uncertainty(_mean_over_samples(probs))


class LeastConfidenceSelector(AcquisitionSelector):
    """Smallest probability of the predicted class."""

    def __init__(
        self, name: str = "least_confidence", mc_samples: int = 0, candidates: int | None = None
    ) -> None:
        super().__init__(name, mc_samples, candidates)

    def uncertainty(self, probs: torch.Tensor) -> torch.Tensor:
        return least_confidence(_mean_over_samples(probs))


class BALDSelector(AcquisitionSelector):
    """Bayesian Active Learning by Disagreement with MC dropout (``mc_samples`` ≥ 2 passes)."""

    def __init__(self, name: str = "bald", mc_samples: int = 20, candidates: int | None = None) -> None:
        if mc_samples < 2:
            raise ValueError(f"BALD needs mc_samples >= 2 MC-dropout passes, got {mc_samples}")
        super().__init__(name, mc_samples, candidates)

    def uncertainty(self, probs: torch.Tensor) -> torch.Tensor:
        return bald(probs)
