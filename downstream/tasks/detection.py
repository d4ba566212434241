"""Object detection on PASCAL VOC with SSD (the paper's ``voc_detection`` task).

Train pool: any pool with VOC annotations (:class:`~downstream.datasets.voc.VOCPool`: 07+12 trainval);
test split: VOC2007 test. Each fit trains an SSD from scratch (ImageNet backbone) on the selected images
with SSD's augmentation, on the shared engine (:class:`~downstream.tasks.engine.TorchTask`: SGD schedule,
AMP, checkpoints and resume, per-epoch logs), and :meth:`evaluate` scores VOC07 mAP@0.5 with "difficult"
objects ignored, plus the AP of every class (:class:`~downstream.metrics.voc_ap.VOCDetectionMetric`).

The fit stats also hold the selection's "instance number" analysis (objects and class histogram of the
selected images vs a random subset of the same size, :mod:`downstream.tasks.instance_stats`), so both land
in the run's ``metrics.json``. Training steps carry per-image losses (``StepOutput.per_sample_loss``) for
Learn-Loss.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from downstream.metrics.voc_ap import VOCDetectionMetric
from downstream.tasks.detection_transforms import SSDTransform
from downstream.tasks.engine import ItemLoader, StepOutput, TorchTask, TrainSettings, move_to
from downstream.tasks.instance_stats import class_count_matrix, instance_statistics
from geal.api.pool import BoxAnnotatedPool, ImagePool
from geal.api.task import TaskContext, TaskError

log = logging.getLogger(__name__)


class DetectorBuilder(Protocol):
    """Builds a fresh detector for ``num_classes`` classes (background included) at a square ``size``."""

    size: int

    def __call__(self, num_classes: int) -> nn.Module: ...

    def describe(self) -> dict[str, Any]: ...


class DetectionItemLoader:
    """Picklable item loader of a VOC-annotated pool.

    Training items: ``inputs`` (3, S, S) augmented image, ``boxes`` (M, 4) in the S×S frame, ``labels``
    (M,) 1-based (0 is SSD's background); difficult objects are dropped unless ``keep_difficult``.
    Evaluation items: ``inputs`` resized image and the untouched ground truth in original pixels:
    ``gt_boxes`` (G, 4), ``gt_labels`` (G,) 0-based, ``gt_difficult`` (G,), ``orig_size`` (2,) = (H, W).
    """

    def __init__(self, transform: SSDTransform, train: bool, keep_difficult: bool = False) -> None:
        self.transform, self.train, self.keep_difficult = transform, train, keep_difficult

    def __call__(self, pool: ImagePool, index: int) -> dict[str, Any]:
        if not isinstance(pool, BoxAnnotatedPool):
            raise TaskError(f"pool '{pool.name}' has no box annotations: use a VOC pool (data=voc0712)")
        ann = pool.annotation(index)
        image = pool.load(index)
        if self.train:
            keep = np.ones(len(ann), bool) if self.keep_difficult else ~ann.difficult
            x, boxes, labels = self.transform(image, ann.boxes[keep], ann.labels[keep] + 1)
            return {"inputs": x, "boxes": boxes, "labels": labels}
        x, _, _ = self.transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        return {
            "inputs": x,
            "gt_boxes": torch.from_numpy(ann.boxes),
            "gt_labels": torch.from_numpy(ann.labels),
            "gt_difficult": torch.from_numpy(ann.difficult),
            "orig_size": torch.tensor([image.height, image.width]),
        }


def detection_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``inputs`` (B, 3, S, S) and ``ids`` (B,); per-image box tensors stay lists of length B."""
    out: dict[str, Any] = {
        "inputs": torch.stack([it["inputs"] for it in items]),
        "ids": torch.tensor([int(it["ids"]) for it in items], dtype=torch.int64),
    }
    for key in items[0]:
        if key not in out:
            out[key] = [it[key] for it in items]
    return out


class VOCDetectionTask(TorchTask):
    """SSD trained on the selected VOC images, scored on VOC2007 test (see the module docstring).

    model: a :class:`DetectorBuilder` (``SSD300VGG16`` for the paper, ``SmallSSD`` for tests).
    photometric / expand_max / expand_p / min_iou_crop / flip_p: SSD's augmentation
    (:class:`~downstream.tasks.detection_transforms.SSDTransform`). keep_difficult: train on "difficult"
    objects too (SSD does not). warmup_iters: linear learning-rate warm-up over this many optimizer
    steps (from ``train.warmup_lr``), whatever the selection's size; replaces ``train.warmup_epochs``.
    iou_threshold / ap_method (``11point`` = VOC07, ``all_point`` = VOC2010+): the metric.
    instance_stats: add the selection's instance analysis to the fit stats.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"test_split", "boxes"})

    def __init__(
        self,
        model: DetectorBuilder,
        train: Mapping[str, Any] | TrainSettings | None = None,
        name: str = "voc_detection",
        photometric: bool = True,
        expand_max: float = 4.0,
        expand_p: float = 0.5,
        min_iou_crop: bool = True,
        flip_p: float = 0.5,
        keep_difficult: bool = False,
        warmup_iters: int = 0,
        iou_threshold: float = 0.5,
        ap_method: str = "11point",
        instance_stats: bool = True,
    ) -> None:
        super().__init__(train, name)
        if warmup_iters < 0:
            raise TaskError(f"{name}: warmup_iters must be >= 0, got {warmup_iters}")
        self.builder = model
        self.size = int(model.size)
        self.augment = {
            "photometric": bool(photometric),
            "expand_max": float(expand_max),
            "expand_p": float(expand_p),
            "min_iou_crop": bool(min_iou_crop),
            "flip_p": float(flip_p),
        }
        SSDTransform(self.size, train=True, **self.augment)  # fail now on bad settings
        self.keep_difficult = bool(keep_difficult)
        self.warmup_iters = int(warmup_iters)
        self.base_settings = self.settings
        self.metric_settings = {"iou_threshold": float(iou_threshold), "ap_method": ap_method}
        VOCDetectionMetric([], **self.metric_settings)  # validates the metric settings
        self.instance_stats = bool(instance_stats)
        self._counts: np.ndarray | None = None

    def check_context(self, ctx: TaskContext) -> None:
        """Both pools have box annotations (``needs``) over the same object classes."""
        super().check_context(ctx)
        pool, test = ctx.pool, ctx.test_pool
        assert isinstance(pool, BoxAnnotatedPool) and isinstance(test, BoxAnnotatedPool)
        if list(test.object_classes) != list(pool.object_classes):
            raise TaskError(f"{self.name}: the train and test pools have different object classes")

    def setup(self, ctx: TaskContext) -> None:
        super().setup(ctx)
        assert isinstance(ctx.pool, BoxAnnotatedPool)
        self.annotated: BoxAnnotatedPool = ctx.pool
        self.class_names = list(ctx.pool.object_classes)

    # ---- engine hooks

    def build_model(self) -> nn.Module:
        return self.builder(len(self.class_names) + 1)

    def item_loader(self, train: bool) -> ItemLoader:
        transform = SSDTransform(self.size, train=train, **self.augment)
        return DetectionItemLoader(transform, train, self.keep_difficult)

    collate = staticmethod(detection_collate)

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "model": self.builder.describe(),
            "augment": self.augment,
            "keep_difficult": self.keep_difficult,
            "warmup_iters": self.warmup_iters,
            "classes": self.class_names,
        }

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        return model(list(batch["inputs"]))

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        targets = [
            {"boxes": b.float(), "labels": lab}
            for b, lab in zip(batch["boxes"], batch["labels"], strict=True)
        ]
        losses = model(list(batch["inputs"]), targets)
        loss = losses["bbox_regression"] + losses["classification"]
        return StepOutput(
            loss,
            losses["per_image"].detach().float(),
            None,
            {
                "loss_box": float(losses["bbox_regression"].detach()),
                "loss_cls": float(losses["classification"].detach()),
            },
        )

    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        ids = self.check_ids(train_ids)
        if self.warmup_iters:
            # the engine warms up in epochs; SSD's protocol warms up over a fixed number of iterations,
            # so convert for this selection's size and step the schedule per iteration
            per_epoch = math.ceil(len(ids) / self.base_settings.batch_size)
            self.settings = dataclasses.replace(
                self.base_settings, warmup_epochs=self.warmup_iters / per_epoch, step_on_epochs=False
            )
        stats = super().fit(ids, warm_start=warm_start)
        if self.instance_stats:
            stats.update(instance_statistics(self.pool_class_counts(), ids, self.class_names))
        return stats

    # ---- analysis and evaluation

    def pool_class_counts(self) -> np.ndarray:
        """(len(pool), C) object counts per train-pool image (read once from the annotations)."""
        if self._counts is None:
            anns = self.annotated.annotations(progress=self.progress)
            self._counts = class_count_matrix([a.labels for a in anns], len(self.class_names))
        return self._counts

    @torch.no_grad()
    def detect(self, ids: Sequence[int] | None = None, pool: ImagePool | None = None):
        """Yield ``(batch, detections)`` over ``ids`` of ``pool`` (default: the test split); detections
        are torchvision's dicts with ``boxes`` (D, 4) in original pixels, ``scores``, 0-based ``labels``."""
        model = self.fitted_model()
        model.eval()
        pool = self.test_pool if pool is None else pool
        loader = self.eval_loader(ids, pool)
        for batch in tqdm(loader, desc=f"{self.name} eval", disable=not self.progress, leave=False):
            inputs = move_to(batch["inputs"], self.device)
            with self._autocast():
                raw = model(list(inputs))
            out = []
            for det, size in zip(raw, batch["orig_size"], strict=True):
                h, w = float(size[0]), float(size[1])
                scale = torch.tensor([w, h, w, h]) / self.size
                out.append(
                    {
                        "boxes": det["boxes"].float().cpu() * scale,
                        "scores": det["scores"].float().cpu(),
                        "labels": det["labels"].cpu() - 1,
                    }
                )
            yield batch, out

    def evaluate(self) -> dict[str, float]:
        """``mAP`` (VOC07 11-point at IoU 0.5 by default) and ``AP/<class>`` on the test split."""
        metric = VOCDetectionMetric(self.class_names, **self.metric_settings)
        for batch, dets in self.detect():
            for det, gb, gl, gd in zip(
                dets, batch["gt_boxes"], batch["gt_labels"], batch["gt_difficult"], strict=True
            ):
                metric.update(det["boxes"], det["scores"], det["labels"], gb, gl, gd)
        return metric.compute()
