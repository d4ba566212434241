"""Image classification on a labeled pool: the shared base, and fine-tuning of a timm model.

:class:`ClassificationTask` adds to :class:`~downstream.tasks.engine.TorchTask` what every classifier
shares: labels from the pools, the cross-entropy step (with per-sample losses for Learn-Loss), top-1 and
mean per-class accuracy on the test split, ``predict_proba`` (with MC-dropout samples for BALD) and
``embed`` (penultimate features). Its model follows timm's interface: ``forward_features(x)`` and
``forward_head(f, pre_logits=False)``.

:class:`TimmClassifierTask` fine-tunes any timm model (``pets_classification``: ImageNet ResNet-50 on
Oxford-IIIT Pet) with timm's train/eval transforms.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream.tasks.engine import ItemLoader, StepOutput, TorchTask, TrainSettings
from geal.api.pool import ImagePool
from geal.api.task import TaskContext, TaskError

log = logging.getLogger(__name__)


class LabeledImageLoader:
    """Picklable item loader: ``{"inputs": transform(image) (C, H, W), "targets": label}``."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, pool: ImagePool, index: int) -> dict[str, Any]:
        labels = pool.labels
        assert labels is not None  # checked when the task is built
        return {"inputs": self.transform(pool.load(index)), "targets": int(labels[index])}


def pool_labels(pool: ImagePool | None, task: str, role: str) -> np.ndarray:
    """The (N,) int labels of a pool, or a TaskError that says what to use instead."""
    if pool is None:
        raise TaskError(f"{task}: no {role} split was given: set task.test_data (a pool config)")
    if pool.labels is None:
        raise TaskError(
            f"{task}: the {role} pool '{pool.name}' has no labels; a classifier needs a labeled dataset "
            "(image folders with class sub-folders, MNIST-5k, Fashion-MNIST, Pets)"
        )
    labels = np.asarray(pool.labels, dtype=np.int64)
    if len(labels) != len(pool):
        raise TaskError(f"{task}: pool '{pool.name}' has {len(pool)} images but {len(labels)} labels")
    if labels.size and labels.min() < 0:
        raise TaskError(f"{task}: pool '{pool.name}' has negative labels")
    return labels


class ClassificationTask(TorchTask):
    """Base of the image classifiers (see the module docstring). Subclasses supply ``build_model`` and
    ``transforms(train)``.

    ``evaluate`` → ``top1`` (accuracy), ``mean_class_acc`` (mean recall over the test classes), ``loss``
    (mean test cross-entropy). ``label_smoothing`` applies to training only.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"labels", "test_split"})
    provides: ClassVar[frozenset[str]] = TorchTask.provides | {"embed", "predict_proba"}

    def __init__(
        self,
        train: Mapping[str, Any] | TrainSettings | None = None,
        name: str = "classification",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(train, name)
        self.label_smoothing = float(label_smoothing)

    def setup(self, ctx: TaskContext) -> None:
        """Labels of both pools and the number of classes (the train pool's class names, else its labels)."""
        super().setup(ctx)
        self.labels = pool_labels(ctx.pool, self.name, "train")
        self.test_labels = pool_labels(ctx.test_pool, self.name, "test")
        names = ctx.pool.class_names
        self.num_classes = max(len(names) if names else 0, int(self.labels.max()) + 1)
        if self.test_labels.max() >= self.num_classes:
            raise TaskError(
                f"{self.name}: the test split has label {int(self.test_labels.max())} but the train pool "
                f"only {self.num_classes} classes: the two splits come from different datasets"
            )

    def transforms(self, train: bool) -> Any:
        """Image → (C, H, W) float tensor (augmented when ``train``)."""
        raise NotImplementedError

    def item_loader(self, train: bool) -> ItemLoader:
        return LabeledImageLoader(self.transforms(train))

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
        }

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        logits = model(batch["inputs"])
        targets = batch["targets"]
        per_sample = F.cross_entropy(
            logits.float(), targets, reduction="none", label_smoothing=self.label_smoothing
        )
        acc = (logits.argmax(1) == targets).float().mean()
        return StepOutput(per_sample.mean(), per_sample.detach(), logits, {"acc": float(acc)})

    # ---- evaluation and inference

    def logits(self, ids: Sequence[int] | None = None, pool: ImagePool | None = None) -> torch.Tensor:
        """(n, C) logits of ``ids`` of ``pool`` (default: the whole train pool)."""
        return self.map_batches(lambda m, b, _c: m(b["inputs"]), ids, pool)

    def evaluate(self) -> dict[str, float]:
        assert self.test_pool is not None
        logits = self.logits(pool=self.test_pool)
        y = torch.from_numpy(self.test_labels)
        pred = logits.argmax(1)
        correct = (pred == y).double()
        per_class = [float(correct[y == c].mean()) for c in torch.unique(y)]
        return {
            "top1": float(correct.mean()),
            "mean_class_acc": float(np.mean(per_class)),
            "loss": float(F.cross_entropy(logits, y)),
        }

    def predict_proba(self, ids: Sequence[int], mc_samples: int = 0) -> torch.Tensor:
        """Class probabilities of train-pool ``ids``: (n, C); with ``mc_samples`` = S > 0, S stochastic
        passes with dropout on (MC dropout, seeded by the task's seed): (S, n, C)."""
        if mc_samples <= 0:
            return self.logits(ids).softmax(1)
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in self.fitted_model().modules()):
            raise TaskError(f"{self.name}: MC-dropout needs a model with dropout layers (set task.drop_rate)")
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            samples = [
                self.map_batches(lambda m, b, _c: m(b["inputs"]).softmax(1), ids, dropout=True)
                for _ in range(mc_samples)
            ]
        return torch.stack(samples)

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """(n, D) penultimate features (the classifier's input) of train-pool ``ids``."""
        return self.map_batches(
            lambda m, b, _c: m.forward_head(m.forward_features(b["inputs"]), pre_logits=True), ids
        )


class TimmClassifierTask(ClassificationTask):
    """Fine-tune a timm model (ImageNet-pretrained by default) on the selected images.

    pretrained: load the model's pretrained weights — from ``pretrained_file`` (a local .pth/.safetensors,
    no network) when given, else from the Hugging Face hub (cached; fails with the fix when offline). The
    weights are read once; every fit starts from them with a new classifier head (seeded).
    Augmentation (timm's ``create_transform``): RandomResizedCrop to ``resolution`` with ``crop_scale``,
    horizontal flip ``hflip``, ``color_jitter``, optional ``auto_augment`` (``rand-m9-mstd0.5``, ...);
    evaluation resizes to ``resolution / crop_pct`` and centre-crops. Normalisation: the model's own.
    """

    def __init__(
        self,
        train: Mapping[str, Any] | TrainSettings | None = None,
        name: str = "timm_classifier",
        label_smoothing: float = 0.0,
        model_name: str = "resnet50",
        pretrained: bool = True,
        pretrained_file: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        drop_rate: float = 0.0,
        resolution: int = 224,
        crop_pct: float = 0.875,
        crop_scale: Sequence[float] = (0.08, 1.0),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        auto_augment: str | None = None,
    ) -> None:
        super().__init__(train, name, label_smoothing)
        self.model_name = model_name
        self.model_kwargs = {**(model_kwargs or {}), "drop_rate": float(drop_rate)}
        self.pretrained = bool(pretrained)
        self.pretrained_file = str(Path(pretrained_file).expanduser()) if pretrained_file else None
        if self.pretrained_file and not Path(self.pretrained_file).is_file():
            raise FileNotFoundError(
                f"task.pretrained_file={pretrained_file} does not exist: pass a .pth/.safetensors of "
                f"{model_name}, or set task.pretrained_file=null to use the hub"
            )
        self.resolution = int(resolution)
        self.crop_pct = float(crop_pct)
        self.augment = {
            "scale": tuple(float(v) for v in crop_scale),
            "hflip": float(hflip),
            "color_jitter": float(color_jitter),
            "auto_augment": auto_augment,
        }

    def setup(self, ctx: TaskContext) -> None:
        """Reads the pretrained weights once (for this number of classes) and the model's data config."""
        import timm

        super().setup(ctx)
        self._pretrained_state: dict[str, torch.Tensor] | None = None
        if self.pretrained:
            self._pretrained_state = self._load_pretrained()
        probe = timm.create_model(
            self.model_name, pretrained=False, num_classes=self.num_classes, **self.model_kwargs
        )
        self.data_config = timm.data.resolve_data_config({}, model=probe)

    def _load_pretrained(self) -> dict[str, torch.Tensor]:
        """The pretrained weights minus the classifier (which every fit re-initialises)."""
        import timm

        overlay = {"file": self.pretrained_file} if self.pretrained_file else None
        try:
            model = timm.create_model(
                self.model_name,
                pretrained=True,
                num_classes=self.num_classes,
                pretrained_cfg_overlay=overlay,
                **self.model_kwargs,
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise RuntimeError(
                f"cannot load pretrained weights for {self.model_name} ({type(err).__name__}: {err}). "
                "Offline? Pass a local file with task.pretrained_file=PATH (.pth/.safetensors), or train "
                "from scratch with task.pretrained=false"
            ) from err
        head = {f"{n}." for n in _classifier_names(model)}
        return {k: v.clone() for k, v in model.state_dict().items() if not any(k.startswith(h) for h in head)}

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "pretrained": self.pretrained,
            "pretrained_file": self.pretrained_file,
            "resolution": self.resolution,
            "crop_pct": self.crop_pct,
            "augment": self.augment,
        }

    def build_model(self) -> nn.Module:
        import timm

        model = timm.create_model(
            self.model_name, pretrained=False, num_classes=self.num_classes, **self.model_kwargs
        )
        if self._pretrained_state is not None:
            missing, unexpected = model.load_state_dict(self._pretrained_state, strict=False)
            head = {f"{n}." for n in _classifier_names(model)}
            wrong = [k for k in missing if not any(k.startswith(h) for h in head)] + list(unexpected)
            if wrong:
                raise RuntimeError(f"pretrained weights do not fit {self.model_name}: {wrong[:5]}")
        return model

    def transforms(self, train: bool) -> Any:
        from timm.data import create_transform

        common = {
            "input_size": self.resolution,
            "mean": self.data_config["mean"],
            "std": self.data_config["std"],
            "interpolation": self.data_config.get("interpolation", "bilinear"),
        }
        if train:
            return create_transform(is_training=True, **common, **self.augment)
        return create_transform(is_training=False, crop_pct=self.crop_pct, **common)


def _classifier_names(model: nn.Module) -> list[str]:
    """Module names of a timm model's classifier (``fc``, ``head.fc``, ...)."""
    names = model.pretrained_cfg.get("classifier", "fc")
    return [names] if isinstance(names, str) else list(names)
