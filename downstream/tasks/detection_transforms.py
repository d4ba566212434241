"""SSD's data augmentation and evaluation resize, with torchvision.transforms.v2 (boxes move with the image).

Training (Liu et al., SSD; torchvision's detection reference "ssd" preset): photometric distortion
(brightness, contrast, saturation, hue, channel swap, each with p = 0.5), expand (zoom out onto a
mean-filled canvas 1–``expand_max``× the size, p = ``expand_p``), min-IoU random crop (a crop whose IoU
with the boxes reaches a random threshold in {0.1, 0.3, 0.5, 0.7, 0.9} or no crop), horizontal flip, and a
resize to ``size``×``size``; boxes left smaller than 1 pixel or outside the crop are dropped
(``SanitizeBoundingBoxes``). Evaluation only resizes. Random draws come from torch's global RNG, which the
engine seeds and checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

#: the VOC mean pixel (RGB, 0..255): the fill of the expand canvas in SSD
VOC_MEAN_PIXEL = (123, 117, 104)


class SSDTransform:
    """Picklable ``(PIL image, boxes (N, 4) xyxy pixels, labels (N,)) -> (image (3, S, S) float in [0, 1],
    boxes (M, 4) in the S×S frame, labels (M,))``; ``train=True`` applies SSD's augmentation."""

    def __init__(
        self,
        size: int = 300,
        train: bool = False,
        photometric: bool = True,
        expand_max: float = 4.0,
        expand_p: float = 0.5,
        min_iou_crop: bool = True,
        flip_p: float = 0.5,
        fill: Sequence[int] = VOC_MEAN_PIXEL,
    ) -> None:
        if expand_max < 1.0:
            raise ValueError(f"expand_max must be >= 1 (1 = no expansion), got {expand_max}")
        self.size = int(size)
        self.train = bool(train)
        steps: list[v2.Transform] = [v2.ToImage()]
        if train:
            if photometric:
                steps.append(v2.RandomPhotometricDistort(p=0.5))
            if expand_max > 1.0 and expand_p > 0:
                steps.append(v2.RandomZoomOut(fill=list(fill), side_range=(1.0, expand_max), p=expand_p))
            if min_iou_crop:
                steps.append(v2.RandomIoUCrop())
            if flip_p > 0:
                steps.append(v2.RandomHorizontalFlip(p=flip_p))
        steps += [
            v2.Resize((self.size, self.size), antialias=True),
            v2.SanitizeBoundingBoxes(min_size=1.0),
            v2.ToDtype(torch.float32, scale=True),
        ]
        self.pipeline = v2.Compose(steps)

    def __call__(
        self, image: Image.Image, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(image.height, image.width),
            ),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        }
        out, target = self.pipeline(image, target)
        return out.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor), target["labels"]
