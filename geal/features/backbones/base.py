"""The uniform backbone contract: one forward pass → dense tokens, an importance map, a global feature."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """How images become network input: resize the whole image to ``resolution``² (no crop), normalise."""

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # "bilinear" | "bicubic" | "nearest"


@dataclass
class DenseOutput:
    """Per-image outputs of one forward pass (B images, N patches/locations, D dims, H heads).

    tokens:        (B, N, D) dense features (ViT: patch tokens of ``feature_layer`` after the final norm)
    attention:     (B, H, N) importance per head, each row non-negative with a positive sum ≤ 1 over the N
                   patches (ViT: the raw CLS→patch softmax row of ``attention_layer``, not rescaled per
                   head; CNN: H=1, channel L2 norm renormalised to sum 1). Consumers reduce over heads,
                   then renormalise (:func:`geal.method.knowledge.reduce_heads`).
    global_feature:(B, D') the off-the-shelf global feature (ViT: final CLS token after norm; CNN: GAP)
    """

    tokens: torch.Tensor
    attention: torch.Tensor
    global_feature: torch.Tensor


class Backbone(nn.Module, ABC):
    """A frozen feature model, built through Hydra (``geal/conf/backbone/*.yaml``); always in eval mode."""

    #: registry name used in logs (e.g. "dino_vits16")
    name: str
    preprocessing: Preprocessing
    embed_dim: int
    num_heads: int

    @abstractmethod
    def extract(
        self, images: torch.Tensor, feature_layer: int = -2, attention_layer: int = -1
    ) -> DenseOutput:
        """images: (B, 3, R, R) normalised → DenseOutput. Layers index blocks Python-style (-1 = last)."""

    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the N patches for the configured resolution."""
        raise NotImplementedError
