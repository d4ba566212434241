"""Semantic-segmentation metric: per-class IoU and mIoU from a confusion matrix, with an ignore label.

The matrix is accumulated with one ``torch.bincount`` per batch on the batch's device (the ignore label,
255 on Cityscapes, is dropped first). IoU_c = TP_c / (TP_c + FP_c + FN_c); a class with an empty union
(absent from the ground truth *and* never predicted) has no IoU and is left out of the mean, as in the
Cityscapes evaluation scripts and mmsegmentation (``nanmean``). On the full Cityscapes val split every one
of the 19 classes is present, so this only matters for small test sets.

Why not ``torchmetrics.classification.MulticlassJaccardIndex``: it scores a class with an empty union as
``zero_division`` (0 by default), which drags the mean down on small test sets, and would add a dependency
for what is one ``bincount`` here; the matrix also gives pixel accuracy for free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class SegmentationIoU:
    """Confusion matrix over ``num_classes`` labels; ``update(pred, target)`` with (…, H, W) int maps.

    Ground-truth values other than ``0..num_classes-1`` and ``ignore_index`` are an error (a label file
    that was not mapped to train ids, typically); predictions must be in ``0..num_classes-1``.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.class_names = (
            list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        )
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted labels ``pred`` and ground truth ``target`` of the same shape (rows: truth)."""
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        pred = pred.reshape(-1).to(self.matrix.device, torch.int64)
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        c = self.num_classes
        if target.numel():
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= c:
                raise ValueError(
                    f"ground-truth labels must be in [0, {c}) or {self.ignore_index} (ignored), got "
                    f"values in [{lo}, {hi}]: map dataset label ids to train ids first"
                )
            lo, hi = int(pred.min()), int(pred.max())
            if lo < 0 or hi >= c:
                raise ValueError(f"predicted labels must be in [0, {c}), got values in [{lo}, {hi}]")
        self.matrix += torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)

    def iou(self) -> torch.Tensor:
        """(C,) float64 IoU per class; NaN where the class is neither in the ground truth nor predicted."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def compute(self) -> dict[str, float]:
        """``{"mIoU", "pixel_acc", "IoU/<class>"...}`` (fractions; classes with no IoU left out)."""
        iou = self.iou()
        valid = ~torch.isnan(iou)
        total = int(self.matrix.sum())
        out = {
            "mIoU": float(iou[valid].mean()) if bool(valid.any()) else math.nan,
            "pixel_acc": float(self.matrix.diag().sum()) / total if total else math.nan,
        }
        out.update(
            {
                f"IoU/{name}": float(v)
                for name, v in zip(self.class_names, iou.tolist(), strict=True)
                if not math.isnan(v)
            }
        )
        return out
