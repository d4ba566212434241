"""Semantic segmentation on Cityscapes with DeepLabV3 (the paper's ``cityscapes_segmentation`` task).

Train pool: a pool with ``train_ids(index)`` label maps (:class:`~downstream.datasets.cityscapes.
CityscapesPool`: the 2,975 fine train images, labels mapped from ``gtFine_labelIds`` to the 19 train ids,
255 ignored); test split: the 500 val images. Each fit trains DeepLabV3 from scratch (ImageNet backbone)
on the selected images with crop/scale augmentation on the shared engine, minimising pixel cross-entropy
(ignore 255; the auxiliary head's loss weighted by ``aux_weight``); :meth:`evaluate` reports mIoU over the
19 classes, per-class IoU and pixel accuracy (:class:`~downstream.metrics.miou.SegmentationIoU`).
Training steps carry per-image losses (mean over each image's labelled pixels) for Learn-Loss.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from downstream.datasets.cityscapes import IGNORE_INDEX, TRAIN_CLASSES
from downstream.metrics.miou import SegmentationIoU
from downstream.tasks.engine import ItemLoader, StepOutput, TorchTask, TrainSettings, move_to
from downstream.tasks.segmentation_transforms import SegmentationTransform
from geal.api.pool import ImagePool, LabelMapPool
from geal.api.task import TaskError

log = logging.getLogger(__name__)


class SegmenterBuilder(Protocol):
    """Builds a fresh segmenter (output dict with ``out`` and optionally ``aux``) for ``num_classes``."""

    image_mean: Sequence[float]
    image_std: Sequence[float]

    def __call__(self, num_classes: int) -> nn.Module: ...

    def describe(self) -> dict[str, Any]: ...


class SegmentationItemLoader:
    """Picklable item loader: ``inputs`` (3, h, w) normalised image, ``targets`` (h, w) int64 train ids."""

    def __init__(self, transform: SegmentationTransform) -> None:
        self.transform = transform

    def __call__(self, pool: ImagePool, index: int) -> dict[str, Any]:
        if not isinstance(pool, LabelMapPool):
            raise TaskError(f"pool '{pool.name}' has no label maps: use a Cityscapes pool (data=cityscapes)")
        labels = pool.train_ids(index)
        image, target = self.transform(pool.load(index), labels)
        return {"inputs": image, "targets": target}


def pixel_losses(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(B,) mean cross-entropy over each image's labelled pixels (0 for an image with none)."""
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    valid = (target != ignore_index).flatten(1).sum(1)
    return ce.flatten(1).sum(1) / valid.clamp(min=1)


class CityscapesSegmentationTask(TorchTask):
    """DeepLabV3 trained on the selected Cityscapes images, scored on val (see the module docstring).

    model: a :class:`SegmenterBuilder` (``DeepLabV3ResNet50`` for the paper, ``SmallDeepLabV3`` for tests).
    base_size / crop_size / scale_range / flip_p / photometric: training augmentation; eval_size: short
    side at evaluation (None: native resolution; predictions are always scored at the label's resolution).
    aux_weight: weight of the auxiliary head's loss. class_names: the classes of the train ids (default:
    Cityscapes' 19).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"test_split", "label_maps"})

    def __init__(
        self,
        model: SegmenterBuilder,
        train: Mapping[str, Any] | TrainSettings | None = None,
        name: str = "cityscapes_segmentation",
        base_size: int = 1024,
        crop_size: Sequence[int] = (512, 1024),
        scale_range: Sequence[float] = (0.5, 2.0),
        flip_p: float = 0.5,
        photometric: bool = False,
        eval_size: int | None = None,
        aux_weight: float = 0.4,
        class_names: Sequence[str] = TRAIN_CLASSES,
    ) -> None:
        super().__init__(train, name)
        self.builder = model
        self.class_names = list(class_names)
        self.augment: dict[str, Any] = {
            "base_size": int(base_size),
            "crop_size": [int(c) for c in crop_size],
            "scale_range": [float(s) for s in scale_range],
            "flip_p": float(flip_p),
            "photometric": bool(photometric),
            "eval_size": None if eval_size is None else int(eval_size),
        }
        self.transform(True)  # fail now on bad settings
        self.aux_weight = float(aux_weight)

    def transform(self, train: bool) -> SegmentationTransform:
        return SegmentationTransform(
            train,
            mean=self.builder.image_mean,
            std=self.builder.image_std,
            ignore_index=IGNORE_INDEX,
            **self.augment,
        )

    # ---- engine hooks

    def build_model(self) -> nn.Module:
        return self.builder(len(self.class_names))

    def item_loader(self, train: bool) -> ItemLoader:
        return SegmentationItemLoader(self.transform(train))

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "model": self.builder.describe(),
            "augment": self.augment,
            "aux_weight": self.aux_weight,
            "classes": self.class_names,
        }

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        return model(batch["inputs"])

    def train_loader(self, ids: Sequence[int], epoch: int = 0) -> DataLoader:
        loader = super().train_loader(ids, epoch)
        if len(ids) % self.settings.batch_size == 1:
            # a last batch of one image breaks BatchNorm after DeepLab's ASPP image pooling (one value per
            # channel): drop it, as torchvision's segmentation reference does (drop_last)
            return DataLoader(
                loader.dataset,
                batch_size=loader.batch_size,
                shuffle=True,
                generator=loader.generator,
                num_workers=loader.num_workers,
                collate_fn=loader.collate_fn,
                pin_memory=loader.pin_memory,
                drop_last=True,
            )
        return loader

    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        if len(train_ids) < 2:
            raise TaskError(f"{self.name}: DeepLabV3's BatchNorm needs at least 2 training images")
        return super().fit(train_ids, warm_start=warm_start)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(batch["inputs"])
        target = batch["targets"]
        per_image = pixel_losses(out["out"], target, IGNORE_INDEX)
        valid = (target != IGNORE_INDEX).sum().clamp(min=1)
        # the batch loss weighs every labelled pixel alike (as a plain pixel-wise cross-entropy does)
        loss = F.cross_entropy(out["out"].float(), target, ignore_index=IGNORE_INDEX, reduction="sum") / valid
        stats = {"loss_main": float(loss.detach())}
        if "aux" in out and self.aux_weight > 0:
            aux = (
                F.cross_entropy(out["aux"].float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
                / valid
            )
            loss = loss + self.aux_weight * aux
            stats["loss_aux"] = float(aux.detach())
        with torch.no_grad():
            labelled = target != IGNORE_INDEX
            correct = ((out["out"].argmax(1) == target) & labelled).sum()
            stats["pixel_acc"] = float(correct) / float(valid)
        return StepOutput(loss, per_image.detach(), None, stats)

    # ---- evaluation

    @torch.no_grad()
    def predict(self, ids: Sequence[int] | None = None, pool: ImagePool | None = None):
        """Yield ``(batch, labels)``: (B, H, W) predicted train ids at the batch's label resolution, over
        ``ids`` of ``pool`` (default: the test split)."""
        model = self.fitted_model()
        model.eval()
        pool = self.test_pool if pool is None else pool
        loader = self.eval_loader(ids, pool)
        for batch in tqdm(loader, desc=f"{self.name} eval", disable=not self.progress, leave=False):
            batch = move_to(batch, self.device)
            with self._autocast():
                logits = model(batch["inputs"])["out"]
            size = batch["targets"].shape[-2:]
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            yield batch, logits.argmax(1)

    def evaluate(self) -> dict[str, float]:
        """``mIoU`` over the classes, ``pixel_acc`` and ``IoU/<class>`` on the test split."""
        metric = SegmentationIoU(len(self.class_names), self.class_names, IGNORE_INDEX, device=self.device)
        for batch, pred in self.predict():
            metric.update(pred, batch["targets"])
        return metric.compute()
