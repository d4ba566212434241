"""Learn-Loss: the ranking loss, the gradient stop, the selection rule, and ranking real losses after
joint training with the engine (Spearman with the true losses on held-out digits)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from baselines.learn_loss import LearnLossSelector, LossPredictionModule, margin_ranking_loss
from downstream.datasets.mnist import Mnist5kPool
from downstream.tasks.small_cnn import SmallCNNTask
from geal.api.pool import ImagePool
from geal.api.selector import SelectionContext
from geal.api.task import Task
from geal.api.training import StepOutput
from tests.conftest import set_up


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions: one intra-op thread is faster, and immune to a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Rows(ImagePool):
    """Some rows of another pool (a stratified random split of MNIST-5k here)."""

    def __init__(self, base: ImagePool, rows: Sequence[int], name: str) -> None:
        self.base, self.rows, self.name = base, [int(r) for r in rows], name

    @property
    def ids(self) -> Sequence[str]:
        return [self.base.ids[r] for r in self.rows]

    @property
    def labels(self) -> Sequence[int]:
        labels = self.base.labels
        assert labels is not None
        return [labels[r] for r in self.rows]

    @property
    def class_names(self) -> Sequence[str] | None:
        return self.base.class_names

    def load(self, index: int):
        return self.base.load(self.rows[index])


def test_margin_ranking_loss_matches_the_paper() -> None:
    # pairs (0, 3) and (1, 2): true losses say l0 > l3 and l1 < l2
    target = torch.tensor([3.0, 1.0, 2.0, 0.5])
    right = torch.tensor([5.0, 0.0, 2.0, 1.0])  # p0 - p3 = 4 ≥ 1, p2 - p1 = 2 ≥ 1: no loss
    assert float(margin_ranking_loss(right, target)) == 0.0
    wrong = torch.tensor([0.0, 1.0, 0.5, 0.0])  # pair 1: max(0, 1 - 0) = 1; pair 2: max(0, 1 + 0.5) = 1.5
    assert float(margin_ranking_loss(wrong, target)) == pytest.approx((1.0 + 1.5) / 2)
    # odd batch: the last image is dropped, leaving the pair (0, 1): l0 > l1 but p0 - p1 = -1 → 1 + 1
    assert float(margin_ranking_loss(wrong[:3], target[:3])) == pytest.approx(2.0)
    assert float(margin_ranking_loss(wrong[:1], target[:1])) == 0.0


def test_gradient_to_the_task_model_stops_after_the_configured_epoch() -> None:
    module = LossPredictionModule(["a", "b"], [4, 6], hidden=8, stop_grad_fraction=0.6)
    assert module.detach_from(200) == 120
    assert LossPredictionModule(["a"], [4], stop_grad_epoch=3).detach_from(200) == 3
    for epoch, reaches_model in ((119, True), (120, False)):
        feats = {
            "a": torch.randn(4, 4, 3, 3, requires_grad=True),
            "b": torch.randn(4, 5, 6, requires_grad=True),
        }
        step = StepOutput(torch.tensor(0.0), per_sample_loss=torch.tensor([1.0, 2.0, 3.0, 4.0]))
        loss, stats = module.training_loss(step, feats, epoch, 200)
        loss.backward()
        assert (feats["a"].grad is not None) == reaches_model and stats["detached"] == float(
            not reaches_model
        )
        assert module.head.weight.grad is not None  # the predictor itself always learns
        module.zero_grad()
    with pytest.raises(ValueError, match="per_sample_loss"):
        module.training_loss(StepOutput(torch.tensor(0.0)), feats, 0, 10)


class KnownLosses(Task):
    provides: ClassVar[frozenset[str]] = frozenset({"predict_loss"})

    def __init__(self, losses: Sequence[float]) -> None:
        self.losses, self.asked = torch.tensor(losses), []

    def fit(self, train_ids, warm_start=False):
        return {}

    def evaluate(self):
        return {}

    def predict_loss(self, ids):
        self.asked.append(list(ids))
        return self.losses[list(ids)]


def test_selection_is_the_highest_predicted_loss_among_random_candidates() -> None:
    class Pool(ImagePool):
        name = "p"

        @property
        def ids(self):
            return [f"i{k}" for k in range(30)]

        def load(self, index):
            raise AssertionError

    losses = [float(k % 7) for k in range(30)]
    selector = LearnLossSelector(candidates=None)
    selector.module = LossPredictionModule(["x"], [1])  # as bound to a task
    task = KnownLosses(losses)
    got = selector.select(Pool(), 4, SelectionContext(labeled=[6, 13], seed=0, task=task))
    assert got.global_ids == [20, 27, 5, 12]  # loss 6 (6 and 13 labeled), then loss 5
    sub = LearnLossSelector(candidates=10)
    sub.module = selector.module
    got = sub.select(Pool(), 3, SelectionContext(seed=4, task=task))
    scored = task.asked[-1]
    assert len(scored) == 10
    best = sorted(scored, key=lambda i: (-losses[i], i))[:3]
    assert got.global_ids == best


def test_bind_task_needs_an_engine_task() -> None:
    with pytest.raises(ValueError, match="not a torch-engine task"):
        LearnLossSelector().bind_task(KnownLosses([0.0]))


def test_loss_predictor_learns_to_rank_true_losses_on_held_out_digits(tmp_path) -> None:
    base = Mnist5kPool(split="all")
    perm = np.random.default_rng(0).permutation(len(base))
    pool, test = Rows(base, perm[:1000], "train"), Rows(base, perm[4000:4100], "test")
    task = SmallCNNTask(
        width=8,
        embed_dim=32,
        train={"epochs": 12, "batch_size": 32, "lr": 0.02, "eval_batch_size": 256, "amp": "none"},
    )
    set_up(task, pool, test, work_dir=tmp_path)
    selector = LearnLossSelector(hooks=["block1", "block2", "block3"], hidden=32)
    selector.bind_task(task)
    assert "predict_loss" in task.provides
    stats = task.fit(list(range(400)))
    assert stats["plugin0/detached"] == 1.0  # the last epochs ran with the gradient stopped
    held = list(range(400, 1000))
    predicted = task.predict_loss(held)
    labels = torch.tensor([pool.labels[i] for i in held])
    true = torch.nn.functional.cross_entropy(task.logits(held), labels, reduction="none")
    rho = spearmanr(predicted.numpy(), true.numpy()).correlation
    assert rho > 0.3, f"Spearman {rho:.3f} between predicted and true losses of held-out digits"
    # the selector picks the highest predicted losses among the unlabeled images
    picks = selector.select(pool, 20, SelectionContext(labeled=list(range(400)), seed=0, task=task))
    top = torch.tensor(held)[predicted.argsort(descending=True, stable=True)[:20]].tolist()
    assert sorted(picks.global_ids) == sorted(top)


def test_learn_loss_reads_the_source_layers_of_an_ssd_detector(tmp_path) -> None:
    """The same plugin on the VOC detection task (small SSD): per-image detection losses, backbone levels."""
    from downstream.datasets import synthetic
    from downstream.datasets.voc import VOCPool
    from downstream.tasks.detection import VOCDetectionTask
    from downstream.tasks.detection_models import SmallSSD

    synthetic.make_voc(tmp_path / "VOCdevkit", n07=12, n12=8)
    pool = VOCPool(tmp_path / "VOCdevkit")
    test = VOCPool(tmp_path / "VOCdevkit", sets=[["2007", "test"]], name="voc07test")
    task = VOCDetectionTask(
        model=SmallSSD(size=64, widths=(8, 16, 16, 16, 16)),
        train={"epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 3e-3, "amp": "none"},
        warmup_iters=2,
    )
    set_up(task, pool, test, work_dir=tmp_path / "work")
    hooks = [f"backbone.levels.{k}" for k in range(3)]
    selector = LearnLossSelector(hooks=hooks, hidden=8, candidates=None)
    selector.bind_task(task)
    assert selector.module is not None and [lv[0].in_features for lv in selector.module.levels] == [16] * 3
    stats = task.fit(list(range(10)))
    assert stats["plugin0/loss_prediction"] > 0.0
    picks = selector.select(pool, 4, SelectionContext(labeled=list(range(10)), seed=0, task=task))
    predicted = task.predict_loss(list(range(10, len(pool))))
    expected = (torch.arange(10, len(pool))[predicted.argsort(descending=True, stable=True)[:4]]).tolist()
    assert picks.global_ids == expected


def test_learn_loss_reads_the_resnet_stages_of_a_deeplab_segmenter(tmp_path) -> None:
    """The same plugin on the Cityscapes task (small DeepLabV3, geal/conf/selector/learn_loss_deeplab.yaml's
    hooks): per-image pixel losses train the predictor; the picks are the highest predicted losses."""
    from omegaconf import OmegaConf

    from downstream.datasets import synthetic
    from downstream.datasets.cityscapes import CityscapesPool
    from downstream.tasks.segmentation import CityscapesSegmentationTask
    from downstream.tasks.segmentation_models import SmallDeepLabV3
    from geal.run.cli import CONFIG_DIR

    city = synthetic.make_cityscapes(tmp_path / "city", n_train=12, n_val=2, seed=0)
    pool = CityscapesPool(city.root)
    task = CityscapesSegmentationTask(
        SmallDeepLabV3(widths=(8, 8, 16, 16), aspp_channels=16, atrous_rates=(2, 4, 6)),
        train={"epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 3e-3, "amp": "none"},
        base_size=64,
        crop_size=(64, 96),
    )
    set_up(task, pool, CityscapesPool(city.root, "val"))
    hooks = list(OmegaConf.load(CONFIG_DIR / "selector" / "learn_loss_deeplab.yaml").hooks)
    selector = LearnLossSelector(hooks=hooks, hidden=8, candidates=None)
    selector.bind_task(task)
    assert selector.module is not None
    assert [lv[0].in_features for lv in selector.module.levels] == [8, 8, 16, 16]
    stats = task.fit(list(range(8)))
    assert stats["plugin0/loss_prediction"] > 0.0
    picks = selector.select(pool, 2, SelectionContext(labeled=list(range(8)), seed=0, task=task))
    predicted = task.predict_loss(list(range(8, len(pool))))
    expected = (torch.arange(8, len(pool))[predicted.argsort(descending=True, stable=True)[:2]]).tolist()
    assert picks.global_ids == expected


def test_with_the_gradient_stopped_from_the_start_the_task_model_trains_exactly_as_without(tmp_path) -> None:
    """The plugin changes the task model only through its gradient: stopped at epoch 0, the weights after a
    fit equal those of a fit without Learn-Loss (same seed), bit for bit."""
    base = Mnist5kPool(split="all")
    pool, test = Rows(base, range(0, 5000, 50), "train"), Rows(base, range(1, 5000, 100), "test")
    settings = {"epochs": 2, "batch_size": 16, "lr": 0.05, "amp": "none", "checkpoint_every": 0}

    def trained(selector: LearnLossSelector | None) -> dict[str, torch.Tensor]:
        task = set_up(SmallCNNTask(width=4, embed_dim=8, train=settings), pool, test)
        if selector is not None:
            selector.bind_task(task)
        task.fit(list(range(64)))
        return task.fitted_model().state_dict()

    plain = trained(None)
    stopped = trained(LearnLossSelector(hidden=8, stop_grad_epoch=0))
    joint = trained(LearnLossSelector(hidden=8, stop_grad_epoch=2))
    assert all(torch.equal(plain[k], stopped[k]) for k in plain)
    assert not all(torch.equal(plain[k], joint[k]) for k in plain)
