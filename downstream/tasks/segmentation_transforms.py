"""Crop/scale augmentation for semantic segmentation, with torchvision.transforms.v2 (masks move with the
image; padding of the label map uses the ignore index)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2


class SegmentationTransform:
    """Picklable ``(PIL image, (H, W) uint8 train ids) -> (image (3, h, w) normalised float, (h, w) int64)``.

    Training (mmsegmentation's Cityscapes recipe): resize so the short side is ``base_size`` × a factor
    drawn uniformly in ``scale_range``, random crop ``crop_size`` (h, w) (padded with 0 / ``ignore_index``
    when the image is smaller), horizontal flip with ``flip_p``, optional photometric distortion.
    Evaluation: resize the image's short side to ``eval_size`` (None: keep the native resolution); the
    label map is returned untouched.
    """

    def __init__(
        self,
        train: bool,
        base_size: int = 1024,
        crop_size: Sequence[int] = (512, 1024),
        scale_range: Sequence[float] = (0.5, 2.0),
        flip_p: float = 0.5,
        photometric: bool = False,
        eval_size: int | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        ignore_index: int = 255,
    ) -> None:
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {list(scale_range)}")
        if len(crop_size) != 2:
            raise ValueError(f"crop_size must be (height, width), got {list(crop_size)}")
        self.train = bool(train)
        steps: list[v2.Transform] = []
        if train:
            steps.append(v2.RandomResize(max(1, int(base_size * lo)), max(2, int(base_size * hi) + 1)))
            steps.append(
                v2.RandomCrop(
                    (int(crop_size[0]), int(crop_size[1])),
                    pad_if_needed=True,
                    fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index},
                )
            )
            if flip_p > 0:
                steps.append(v2.RandomHorizontalFlip(p=flip_p))
            if photometric:
                steps.append(v2.RandomPhotometricDistort(p=0.5))
        elif eval_size is not None:
            steps.append(v2.Resize(int(eval_size)))
        steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
        steps += [v2.Normalize(list(mean), list(std))]
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: Image.Image, train_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if train_ids.shape != (image.height, image.width):
            raise ValueError(
                f"label map {train_ids.shape} and image {(image.height, image.width)} differ in size"
            )
        img = tv_tensors.Image(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(train_ids.astype(np.int64)))
        if self.train:
            img, mask = self.pipeline(img, mask)
        else:  # the label map keeps its native resolution: predictions are scored there
            img = self.pipeline(img)
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
