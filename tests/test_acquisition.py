"""Acquisition functions: known answers on hand-made probabilities and a hand-built classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest
import torch

from baselines.acquisition import (
    BALDSelector,
    EntropySelector,
    LeastConfidenceSelector,
    MarginSelector,
    bald,
    entropy,
    least_confidence,
    margin_uncertainty,
)
from downstream.tasks.linear_probe import LinearProbeTask
from geal.api.pool import ImagePool
from geal.api.selector import SelectionContext, SelectionError
from geal.api.task import Task


class IdsPool(ImagePool):
    name = "ids"

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def ids(self) -> Sequence[str]:
        return [f"x{i}" for i in range(self.n)]

    def load(self, index: int):
        raise AssertionError("not loaded")


class FixedClassifier(Task):
    """A 'trained' classifier whose probabilities are given per global id (MC samples: given too)."""

    provides: ClassVar[frozenset[str]] = frozenset({"predict_proba"})

    def __init__(self, probs: list[list[float]], samples: torch.Tensor | None = None) -> None:
        self.probs, self.samples, self.asked = torch.tensor(probs), samples, []

    def fit(self, train_ids, warm_start=False):
        return {}

    def evaluate(self):
        return {}

    def predict_proba(self, ids: Sequence[int], mc_samples: int = 0) -> torch.Tensor:
        self.asked.append((list(ids), mc_samples))
        if mc_samples:
            assert self.samples is not None and mc_samples == self.samples.shape[0]
            return self.samples[:, list(ids)]
        return self.probs[list(ids)]


# id:      0 confident   1 two-way tie    2 three-way spread   3 fairly sure   4 (labeled) uniform
PROBS = [[0.98, 0.01, 0.01], [0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.8, 0.15, 0.05], [1 / 3, 1 / 3, 1 / 3]]


def test_scores_on_hand_made_probabilities() -> None:
    p = torch.tensor(PROBS)
    assert entropy(p)[1] == pytest.approx(math.log(2))
    assert entropy(p)[4] == pytest.approx(math.log(3))
    assert entropy(torch.tensor([[1.0, 0.0]]))[0] == 0.0  # 0 log 0 = 0
    assert margin_uncertainty(p).tolist() == pytest.approx([1 - 0.97, 1.0, 0.9, 0.35, 1.0])
    assert least_confidence(p).tolist() == pytest.approx([0.02, 0.5, 0.6, 0.2, 2 / 3])
    # two dropout samples that disagree completely vs two that agree on the same uncertain answer
    samples = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])
    assert bald(samples).tolist() == pytest.approx([math.log(2), 0.0])


def test_each_function_picks_its_most_uncertain_unlabeled_items() -> None:
    pool = IdsPool(5)
    task = FixedClassifier(PROBS)
    ctx = SelectionContext(labeled=[4], seed=0, task=task)
    # entropy ranks the spread-out 2 over the tie 1; margin ranks the exact tie 1 first
    assert EntropySelector().select(pool, 2, ctx).global_ids == [2, 1]
    assert MarginSelector().select(pool, 2, ctx).global_ids == [1, 2]
    assert LeastConfidenceSelector().select(pool, 3, ctx).global_ids == [2, 1, 3]
    assert task.asked[0] == ([0, 1, 2, 3], 0)  # the labeled id 4 is never scored
    sel = EntropySelector().select(pool, 1, ctx)
    assert sel.scores == pytest.approx([float(entropy(torch.tensor(PROBS[2])))])


def test_bald_prefers_model_disagreement_over_aleatoric_noise() -> None:
    pool = IdsPool(3)
    # id 0: every sample says 50/50 (noise, BALD 0); id 1: samples disagree (epistemic); id 2: sure
    samples = torch.tensor(
        [
            [[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]],
            [[0.5, 0.5], [0.1, 0.9], [1.0, 0.0]],
        ]
    )
    task = FixedClassifier([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]], samples)
    ctx = SelectionContext(seed=0, task=task)
    assert BALDSelector(mc_samples=2).select(pool, 1, ctx).global_ids == [1]
    # entropy of the mean cannot tell the two apart (tie → smaller id) while BALD can
    assert EntropySelector(mc_samples=2).select(pool, 1, ctx).global_ids == [0]
    with pytest.raises(ValueError, match="mc_samples >= 2"):
        BALDSelector(mc_samples=1)


def test_ties_go_to_the_smaller_id_and_candidates_are_a_seeded_subset() -> None:
    pool = IdsPool(40)
    task = FixedClassifier([[0.5, 0.5]] * 40)
    picks = EntropySelector().select(pool, 5, SelectionContext(labeled=[0, 2], seed=0, task=task))
    assert picks.global_ids == [1, 3, 4, 5, 6]
    sub = EntropySelector(candidates=10)
    a = sub.select(pool, 5, SelectionContext(seed=7, task=task))
    b = sub.select(pool, 5, SelectionContext(seed=7, task=task))
    scored = task.asked[-1][0]
    assert a.global_ids == b.global_ids and len(scored) == 10 and scored == sorted(scored)
    assert a.global_ids == scored[:5]
    with pytest.raises(SelectionError, match="smaller than the budget"):
        EntropySelector(candidates=3).select(pool, 5, SelectionContext(seed=0, task=task))
    with pytest.raises(SelectionError, match="run it in cycles"):
        EntropySelector().select(pool, 5, SelectionContext(seed=0))


def test_entropy_on_a_trained_linear_probe_picks_the_boundary() -> None:
    """Two 1-D classes at -2 and +2: the unlabeled points nearest 0 are the most uncertain."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.3, 20), rng.normal(2, 0.3, 20), [-0.05, 0.1, 0.02]])[:, None]
    y = np.array([0] * 20 + [1] * 20 + [0, 1, 1])
    probe = LinearProbeTask.from_arrays(x, y, x, y, standardize=False)
    labeled = list(range(0, 40, 4))
    probe.fit(labeled)
    probs = probe.predict_proba(range(43))
    assert probs.shape == (43, 2) and torch.allclose(probs.sum(1), torch.ones(43))
    pool = IdsPool(43)
    for selector in (EntropySelector(), MarginSelector(), LeastConfidenceSelector()):
        got = selector.select(pool, 3, SelectionContext(labeled=labeled, seed=0, task=probe)).global_ids
        assert sorted(got) == [40, 41, 42], type(selector).__name__


def test_linear_probe_probabilities_cover_every_class_and_svm_scores() -> None:
    x = np.array([[0.0], [0.1], [5.0], [5.1], [10.0], [10.1]])
    y = np.array([0, 0, 1, 1, 2, 2])
    probe = LinearProbeTask.from_arrays(x, y, x, y)
    probe.fit([0, 1])  # one class seen: it gets probability 1, the others 0
    assert probe.predict_proba([4]).tolist() == [[1.0, 0.0, 0.0]]
    probe.fit([0, 2])  # classes 0 and 1 seen: class 2 gets 0
    p = probe.predict_proba([0, 4])
    assert p.shape == (2, 3) and p[:, 2].tolist() == [0.0, 0.0] and p[0, 0] > 0.5
    svm = LinearProbeTask.from_arrays(x, y, x, y, classifier="linear_svm")
    assert "warm_start" not in svm.provides and "predict_proba" in svm.provides
    svm.fit(range(6))
    ps = svm.predict_proba(range(6))
    assert torch.allclose(ps.sum(1), torch.ones(6)) and ps.argmax(1).tolist() == y.tolist()
    with pytest.raises(Exception, match="no dropout"):
        probe.predict_proba([0], mc_samples=5)


class SeededModel(Task):
    """Probabilities, MC samples and predicted losses that are fixed functions of the global id."""

    provides: ClassVar[frozenset[str]] = frozenset({"predict_proba", "predict_loss"})

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(123)
        self.samples = torch.rand(4, n, 3, generator=gen).softmax(-1)
        self.loss = torch.rand(n, generator=gen)

    def fit(self, train_ids, warm_start=False):
        return {}

    def evaluate(self):
        return {}

    def predict_proba(self, ids: Sequence[int], mc_samples: int = 0) -> torch.Tensor:
        return self.samples[:, list(ids)] if mc_samples else self.samples[0, list(ids)]

    def predict_loss(self, ids: Sequence[int]) -> torch.Tensor:
        return self.loss[list(ids)]


def traditional_selectors():
    from baselines.learn_loss import LearnLossSelector, LossPredictionModule
    from baselines.vaal import VAALSelector

    learn_loss = LearnLossSelector(candidates=30)
    learn_loss.module = LossPredictionModule(["x"], [1])  # as if bound to a task
    vaal = VAALSelector(
        image_size=8, in_chans=1, channels=(4,), disc_hidden=8, iterations=3, batch_size=4, progress=False
    )
    return [
        EntropySelector(),
        MarginSelector(candidates=30),
        LeastConfidenceSelector(),
        BALDSelector(mc_samples=4),
        learn_loss,
        vaal,
    ]


class TinyImages(IdsPool):
    def load(self, index: int):
        from PIL import Image

        rng = np.random.default_rng(index)
        return Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize("selector", traditional_selectors(), ids=lambda s: s.name)
def test_traditional_selectors_honour_the_selector_contract(selector) -> None:
    pool = TinyImages(50)
    task = SeededModel(50)
    labeled = list(range(0, 50, 5))
    ctx = SelectionContext(labeled=labeled, seed=3, task=task)
    picks = selector.select(pool, 12, ctx)
    assert len(picks.global_ids) == len(set(picks.global_ids)) == 12
    assert all(0 <= i < 50 and i not in labeled for i in picks.global_ids)
    assert all(isinstance(s, float) for s in picks.scores)
    again = selector.select(pool, 12, SelectionContext(labeled=labeled, seed=3, task=task))
    assert again.global_ids == picks.global_ids  # deterministic for a seed
    assert not selector.cold_start  # cycles draw their initial set at random
    with pytest.raises(SelectionError):
        selector.select(pool, 41, ctx)  # more than the 40 unlabeled images
