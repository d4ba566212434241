"""A from-scratch classifier for MNIST / Fashion-MNIST sized images (any labeled pool).

Three named conv blocks (``block1``..``block3``: conv-BN-ReLU ×2, then 2×2 max-pool) and a head with
dropout (``head.drop1``/``head.drop2``), so BALD / MC-dropout has something to sample and Learn-Loss can hook
the blocks' outputs. The model follows timm's ``forward_features`` / ``forward_head`` interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from downstream.tasks.classification import ClassificationTask
from downstream.tasks.engine import TrainSettings


class SmallCNN(nn.Module):
    """(B, in_chans, H, W) → (B, num_classes). ``forward_features`` → (B, 4·width, H/8, W/8);
    ``forward_head(f, pre_logits=True)`` → (B, embed_dim)."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        width: int = 32,
        embed_dim: int = 128,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.block1 = block(in_chans, width)
        self.block2 = block(width, 2 * width)
        self.block3 = block(2 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential()
        self.head.add_module("drop1", nn.Dropout(drop_rate))
        self.head.add_module("fc1", nn.Linear(4 * width, embed_dim))
        self.head.add_module("act", nn.ReLU(inplace=True))
        self.head.add_module("drop2", nn.Dropout(drop_rate))
        self.fc = nn.Linear(embed_dim, num_classes)
        self.num_classes, self.embed_dim = num_classes, embed_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(x)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = self.head(self.pool(features).flatten(1))
        return z if pre_logits else self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SmallCNNTask(ClassificationTask):
    """Train :class:`SmallCNN` from scratch on the selected images.

    Images are converted to ``in_chans`` channels (1: grayscale), resized to ``resolution`` and normalised
    with ``mean``/``std``; training adds a random crop after ``crop_padding`` pixels of zero padding and,
    if ``hflip`` > 0, horizontal flips (off for digits).
    """

    def __init__(
        self,
        train: Mapping[str, Any] | TrainSettings | None = None,
        name: str = "small_cnn",
        label_smoothing: float = 0.0,
        in_chans: int = 1,
        resolution: int = 28,
        width: int = 32,
        embed_dim: int = 128,
        drop_rate: float = 0.5,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        crop_padding: int = 2,
        hflip: float = 0.0,
    ) -> None:
        super().__init__(train, name, label_smoothing)
        if in_chans not in (1, 3):
            raise ValueError(f"task.in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
        if len(mean) not in (1, in_chans) or len(std) not in (1, in_chans):
            raise ValueError(f"task.mean/std need 1 or {in_chans} values")
        self.arch = {
            "in_chans": int(in_chans),
            "width": int(width),
            "embed_dim": int(embed_dim),
            "drop_rate": float(drop_rate),
        }
        self.preprocess = {
            "resolution": int(resolution),
            "mean": [float(v) for v in mean] * (in_chans if len(mean) == 1 else 1),
            "std": [float(v) for v in std] * (in_chans if len(std) == 1 else 1),
            "crop_padding": int(crop_padding),
            "hflip": float(hflip),
        }

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "arch": self.arch, "preprocess": self.preprocess}

    def build_model(self) -> nn.Module:
        return SmallCNN(self.num_classes, **self.arch)

    def transforms(self, train: bool) -> Any:
        p = self.preprocess
        steps: list[Any] = []
        if self.arch["in_chans"] == 1:
            steps.append(v2.Grayscale(1))
        steps.append(v2.Resize((p["resolution"], p["resolution"]), antialias=True))
        if train and p["crop_padding"] > 0:
            steps.append(v2.RandomCrop(p["resolution"], padding=p["crop_padding"]))
        if train and p["hflip"] > 0:
            steps.append(v2.RandomHorizontalFlip(p["hflip"]))
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(p["mean"], p["std"])]
        return v2.Compose(steps)
