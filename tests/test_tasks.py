"""Downstream tasks: the linear probe, the torch training engine (resume, plugins, logging), small_cnn on real
MNIST digits, and timm fine-tuning on a generated Oxford-IIIT Pet dataset (offline, CPU)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from torch import nn

from downstream.datasets.mnist import Mnist5kPool
from downstream.datasets.pets import PetsPool
from downstream.datasets.synthetic import make_pets
from downstream.tasks.classification import TimmClassifierTask
from downstream.tasks.engine import TrainSettings, resolve_amp
from downstream.tasks.linear_probe import LinearProbeTask
from downstream.tasks.small_cnn import SmallCNNTask
from geal.api.task import TaskError
from geal.api.training import StepOutput, TrainingPlugin
from tests.conftest import SquaresPool, set_up

# ------------------------------------------------------------------------------------------ linear probe


def probe_features(rng: np.random.Generator, n: int, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Separable classes riding on a large shared component, L2-normalised (like ViT CLS features)."""
    y = np.arange(n) % len(means)
    x = 0.1 * (means[y] + rng.normal(0, 0.35, (n, means.shape[1]))) + 5.0
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_linear_probe_separable_features_and_standardisation() -> None:
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1, (4, 32))
    x, y = probe_features(rng, 400, means)
    xt, yt = probe_features(rng, 200, means)
    assert (x @ x.T).mean() > 0.99  # nearly identical directions: the hard case of docs/design.md §6.6
    # an imbalanced labeled set: 10 of class 0, 3 of each other class
    ids = np.concatenate([np.flatnonzero(y == 0)[:10], *[np.flatnonzero(y == k)[:3] for k in (1, 2, 3)]])
    probe = LinearProbeTask.from_arrays(x, y, xt, yt)
    stats = probe.fit(ids.tolist())
    result = probe.evaluate()
    assert result["top1"] >= 0.95 and result["mean_class_acc"] >= 0.95
    assert stats["n_train"] == 19 and stats["n_classes"] == 4
    # without standardisation the C=1 probe hardly leaves its intercept: majority class everywhere
    raw = LinearProbeTask.from_arrays(x, y, xt, yt, standardize=False)
    raw.fit(ids.tolist())
    assert raw.evaluate()["top1"] <= 0.3
    assert set(raw.predict(raw.x_test).tolist()) == {0}
    # one class only: predicts it (no crash); embed returns the raw features of the asked rows
    probe.fit(np.flatnonzero(y == 2)[:5].tolist())
    assert probe.evaluate()["top1"] == pytest.approx(float(np.mean(yt == 2)))
    assert torch.equal(probe.embed([3, 1]), torch.from_numpy(x[[3, 1]]))


def test_linear_probe_bad_input() -> None:
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(TaskError, match="no labels"):
        LinearProbeTask.from_arrays(x, None, x, np.zeros(5))
    with pytest.raises(TaskError, match="test split is empty"):
        LinearProbeTask.from_arrays(x, np.zeros(5), np.zeros((0, 3), np.float32), np.zeros(0))
    with pytest.raises(TaskError, match="nothing to train"):
        LinearProbeTask.from_arrays(x, np.zeros(5), x, np.zeros(5)).fit([])


# ------------------------------------------------------------------------------------------ engine


def test_train_settings_typos_and_bad_values_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"\['epoch'\].*valid keys"):
        TrainSettings.from_mapping({"epoch": 3})
    with pytest.raises(ValueError, match="amp"):
        TrainSettings.from_mapping({"amp": "fp8"})
    assert TrainSettings.from_mapping({"decay_milestones": [3, 5]}).decay_milestones == (3, 5)
    assert resolve_amp(torch.device("cpu"), "none") is None
    assert resolve_amp(torch.device("cpu"), "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        resolve_amp(torch.device("cpu"), "fp16")


SQUARES_TRAIN = {"epochs": 4, "batch_size": 8, "lr": 0.05, "step_on_epochs": False}


def squares_task(work_dir: Path | None, **kwargs: Any) -> SmallCNNTask:
    """A tiny SmallCNN on the coloured-squares pool (label = colour of the square)."""
    settings = {**SQUARES_TRAIN, **kwargs.pop("train", {})}
    context = {k: kwargs.pop(k) for k in ("seed", "logger") if k in kwargs}
    task = SmallCNNTask(
        train=settings,
        in_chans=3,
        resolution=32,
        width=8,
        embed_dim=16,
        drop_rate=0.2,
        mean=[0.2],
        std=[0.3],
        **kwargs,
    )
    return set_up(task, SquaresPool(48, seed=0), SquaresPool(30, seed=1), work_dir=work_dir, **context)


def same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Interrupt(Exception):
    pass


def interrupt_after(task: SmallCNNTask, steps: int) -> None:
    """Make ``task`` raise in its training step number ``steps + 1`` (a fault mid-training)."""
    original, calls = task.training_step, [0]

    def step(model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        calls[0] += 1
        if calls[0] > steps:
            raise Interrupt(f"fault injected after {steps} steps")
        return original(model, batch)

    task.training_step = step  # type: ignore[method-assign]


@pytest.mark.parametrize("amp", ["none", "auto"])
def test_interrupted_fit_resumes_to_the_same_weights(tmp_path: Path, amp: str) -> None:
    ids = list(range(40))  # 5 steps per epoch
    reference = squares_task(tmp_path / "ref", train={"amp": amp})
    ref_stats = reference.fit(ids)
    ref_metrics = reference.evaluate()

    broken = squares_task(tmp_path / "run", train={"amp": amp})
    interrupt_after(broken, 12)  # dies in epoch 3: epochs 1-2 are checkpointed
    with pytest.raises(Interrupt):
        broken.fit(ids)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()

    resumed = squares_task(tmp_path / "run", train={"amp": amp})
    stats = resumed.fit(ids)
    assert stats["resumed_from_epoch"] == 2
    assert same_weights(resumed.fitted_model().state_dict(), reference.fitted_model().state_dict())
    assert resumed.evaluate() == ref_metrics
    assert stats["loss"] == ref_stats["loss"]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]


def test_finished_checkpoint_is_reused_and_other_fits_ignore_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = squares_task(tmp_path)
    task.fit(list(range(24)))
    weights = {k: v.clone() for k, v in task.fitted_model().state_dict().items()}
    # the same fit again: nothing is trained, the saved weights come back
    again = squares_task(tmp_path)
    interrupt_after(again, 0)
    assert again.fit(list(range(24)))["resumed_from_epoch"] == 4
    assert same_weights(again.fitted_model().state_dict(), weights)
    # an unfinished checkpoint of other ids is ignored with a warning, and the fit starts from scratch
    broken = squares_task(tmp_path)
    interrupt_after(broken, 4)
    with pytest.raises(Interrupt):
        broken.fit(list(range(10, 34)))
    with caplog.at_level(logging.WARNING, logger="downstream.tasks.engine"):
        stats = squares_task(tmp_path, train={"lr": 0.04}).fit(list(range(10, 34)))
    assert stats["resumed_from_epoch"] == 0
    assert any("belongs to another fit" in r.getMessage() for r in caplog.records)
    # a checkpoint that cannot be read is ignored too
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert squares_task(tmp_path).fit(list(range(8)))["resumed_from_epoch"] == 0


def test_warm_start_continues_from_the_previous_fit(tmp_path: Path) -> None:
    frozen = squares_task(tmp_path / "a", train={"lr": 0.0, "weight_decay": 0.0, "epochs": 1})
    with pytest.raises(TaskError, match="earlier fit"):
        frozen.fit(list(range(8)), warm_start=True)
    assert "warm_start" in frozen.provides
    cold = squares_task(tmp_path / "b")
    cold.fit(list(range(16)))

    def params(task: SmallCNNTask) -> dict[str, torch.Tensor]:  # weights only: BatchNorm stats still move
        return {k: v.detach().clone() for k, v in task.fitted_model().named_parameters()}

    first = params(cold)
    # with a zero learning rate, a warm start keeps the previous fit's weights, a cold fit its fresh init
    cold.settings = frozen.settings
    cold.fit(list(range(24)), warm_start=True)
    assert same_weights(params(cold), first)
    fresh = squares_task(tmp_path / "c", train={"lr": 0.0, "weight_decay": 0.0, "epochs": 1})
    fresh.fit(list(range(24)))
    assert not same_weights(params(fresh), first)
    # a warm-started fit has its own checkpoint key: the cold fit of the same ids is not reused for it
    assert cold.fingerprint(list(range(24)), warm_from="x") != cold.fingerprint(list(range(24)))


class RecordingLogger:
    def __init__(self) -> None:
        self.rows: list[tuple[int | None, str, dict[str, float]]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        self.rows.append((step, prefix, dict(metrics)))


def test_epoch_metrics_go_to_the_logger_and_seeds_matter(tmp_path: Path) -> None:
    logger = RecordingLogger()
    task = squares_task(None, logger=logger)
    task.fit(list(range(16)))
    assert [(s, p) for s, p, _ in logger.rows] == [(e, "budget_16/train") for e in (1, 2, 3, 4)]
    for (step, _, values), hist in zip(logger.rows, task.history, strict=True):
        assert values["epoch"] == step and values["loss"] == hist["loss"] and 0 <= values["acc"] <= 1
    assert logger.rows[-1][2]["lr"] < logger.rows[0][2]["lr"]  # cosine schedule
    other = squares_task(None, seed=1)
    other.fit(list(range(16)))
    assert not same_weights(other.fitted_model().state_dict(), task.fitted_model().state_dict())


class LossPredictor(TrainingPlugin):
    """Predicts each image's loss from the pooled output of ``block2`` (Learn-Loss in miniature)."""

    hooks = ("block2",)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 1)

    def predict_loss(self, captured: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(captured["block2"].float().mean((2, 3))).squeeze(1)

    def training_loss(
        self, step: StepOutput, captured: Mapping[str, torch.Tensor], epoch: int, epochs: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert step.per_sample_loss is not None
        assert step.per_sample_loss.shape == (captured["block2"].shape[0],)
        loss = nn.functional.mse_loss(self.predict_loss(captured), step.per_sample_loss)
        return 0.5 * loss, {"mse": float(loss.detach())}


def test_plugin_is_trained_jointly_checkpointed_and_predicts_losses(tmp_path: Path) -> None:
    task = squares_task(tmp_path, train={"amp": "none"})
    plugin = LossPredictor()
    init = plugin.fc.weight.detach().clone()
    task.add_plugin(plugin)
    assert "predict_loss" in task.provides
    stats = task.fit(list(range(24)))
    assert "plugin0/mse" in stats and stats["loss"] > stats["loss_task"]
    assert not torch.equal(plugin.fc.weight, init)  # it was in the optimizer
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert torch.equal(saved["plugins"]["0.fc.weight"], plugin.fc.weight.detach())
    predicted = task.predict_loss([0, 5, 7])
    # what predict_loss returns is the plugin applied to the model's own block2 features
    model = task.fitted_model()
    with torch.no_grad():
        x = torch.stack([task.transforms(False)(task.pool.load(i)) for i in (0, 5, 7)])
        manual = plugin.fc(model.block2(model.block1(x)).mean((2, 3))).squeeze(1)
    assert torch.allclose(predicted, manual, atol=1e-5)
    # a second fit starts the plugin from its initial weights again (a fresh model each fit)
    task.fit(list(range(8)))
    fresh = LossPredictor()
    fresh.load_state_dict(task._plugin_init[0])  # the same initial weights, in a new task
    refit = squares_task(None, train={"amp": "none"})
    refit.add_plugin(fresh)
    refit.fit(list(range(8)))
    assert torch.equal(fresh.fc.weight, plugin.fc.weight)


def test_bad_plugin_hook_names_the_modules(tmp_path: Path) -> None:
    task = squares_task(None)

    class Wrong(LossPredictor):
        hooks = ("blokc2",)

    task.add_plugin(Wrong())
    with pytest.raises(ValueError, match=r"blokc2.*block1"):
        task.fit(list(range(8)))


# ------------------------------------------------------------------------------------------ small_cnn


@pytest.fixture(scope="module")
def mnist() -> tuple[Mnist5kPool, Mnist5kPool]:
    return Mnist5kPool("pool"), Mnist5kPool("heldout")


def test_small_cnn_learns_mnist_digits(mnist: tuple[Mnist5kPool, Mnist5kPool]) -> None:
    pool, heldout = mnist
    ids = np.random.default_rng(0).choice(len(pool), 200, replace=False).tolist()
    train = {"epochs": 12, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-4}
    task = set_up(SmallCNNTask(width=16, drop_rate=0.25, train=train), pool, heldout)
    stats = task.fit(ids)
    result = task.evaluate()
    # 200 random digits, 12 epochs from scratch (0.85 measured): far above chance (0.1) on 1,000 held out
    assert result["top1"] >= 0.75, result
    assert stats["n_train"] == 200 and task.num_classes == 10
    proba = task.predict_proba(ids[:20])
    assert proba.shape == (20, 10) and torch.allclose(proba.sum(1), torch.ones(20), atol=1e-3)
    train_labels = np.asarray(pool.labels)[ids[:20]]
    assert (proba.argmax(1).numpy() == train_labels).mean() >= 0.8
    mc = task.predict_proba(ids[:20], mc_samples=3)
    assert mc.shape == (3, 20, 10) and not torch.equal(mc[0], mc[1])  # dropout samples differ
    assert torch.equal(mc, task.predict_proba(ids[:20], mc_samples=3))  # and are seeded
    assert task.embed(ids[:5]).shape == (5, 128)


def test_small_cnn_needs_labels(tmp_path: Path) -> None:
    class Unlabeled(SquaresPool):
        @property
        def labels(self) -> None:  # type: ignore[override]
            return None

    with pytest.raises(TaskError, match="needs labels, but pool 'squares' has none"):
        set_up(SmallCNNTask(), Unlabeled(8), SquaresPool(8))
    with pytest.raises(TaskError, match="empty"):
        set_up(SmallCNNTask(), SquaresPool(8), SquaresPool(0))


# ------------------------------------------------------------------------------------------ Pets


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> tuple[PetsPool, PetsPool, Path]:
    root = tmp_path_factory.mktemp("pets")
    make_pets(root, n_per_class=8, n_classes=4)
    return PetsPool(root, "trainval"), PetsPool(root, "test", name="pets_test"), root


PET_SETTINGS = {
    "model_name": "test_resnet",
    "resolution": 64,
    "crop_scale": (0.6, 1.0),
    "color_jitter": 0.0,
}


def test_pets_finetuning_runs_and_its_loss_decreases(pets: tuple[PetsPool, PetsPool, Path]) -> None:
    pool, test, _ = pets
    task = TimmClassifierTask(
        pretrained=False,
        train={"epochs": 10, "batch_size": 8, "lr": 0.05, "warmup_epochs": 0},
        **PET_SETTINGS,
    )
    set_up(task, pool, test)
    assert task.num_classes == 4 and len(pool) == 16 and len(test) == 16
    task.fit(list(range(len(pool))))
    losses = [h["loss"] for h in task.history]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    result = task.evaluate()
    assert set(result) == {"top1", "mean_class_acc", "loss"} and 0 <= result["top1"] <= 1
    assert task.embed([0, 1]).shape[0] == 2


def test_pets_pretrained_weights_from_a_local_file(pets: tuple[PetsPool, PetsPool, Path]) -> None:
    pool, test, root = pets
    source = timm.create_model("test_resnet")  # stands in for an ImageNet checkpoint (1000-class head)
    torch.save(source.state_dict(), root / "weights.pth")
    task = set_up(TimmClassifierTask(pretrained_file=str(root / "weights.pth"), **PET_SETTINGS), pool, test)
    model = task.build_model()
    theirs, ours = source.state_dict(), model.state_dict()
    backbone = [k for k in theirs if not k.startswith("fc.")]
    assert all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert ours["fc.weight"].shape == (4, theirs["fc.weight"].shape[1])  # a new head for the 4 breeds
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        TimmClassifierTask(pretrained_file=str(root / "missing.pth"), **PET_SETTINGS)


def test_pets_pretrained_offline_without_a_file_says_what_to_do(
    pets: tuple[PetsPool, PetsPool, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pool, test, _ = pets
    with pytest.raises(RuntimeError, match=r"task.pretrained_file=PATH.*task.pretrained=false"):
        set_up(TimmClassifierTask(model_name="resnet18", pretrained=True), pool, test)


def test_train_ids_are_checked_before_training() -> None:
    from geal.api.task import TaskError, checked_train_ids

    assert checked_train_ids("t", [3, 0, 2], 4) == [3, 0, 2]
    with pytest.raises(TaskError, match="t: nothing to train on"):
        checked_train_ids("t", [], 4)
    with pytest.raises(TaskError, match=r"t: global ids \[4, -1\] are outside the pool \(4 images\)"):
        checked_train_ids("t", [1, 4, -1], 4)
    with pytest.raises(TaskError, match="t: the train ids repeat"):
        checked_train_ids("t", [1, 1], 4)
