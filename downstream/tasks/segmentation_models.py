"""Segmenters for the Cityscapes task: torchvision's DeepLabV3-ResNet50 (the paper's) and a small DeepLabV3.

A builder is a small picklable object called with ``num_classes`` at the start of every fit (fresh,
seeded weights each time); both return torchvision's :class:`~torchvision.models.segmentation.DeepLabV3`
(output dict ``out`` (B, C, H, W) at the input size, ``aux`` with the auxiliary head).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from geal.util.checkpoints import load_weights_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeepLabV3ResNet50:
    """torchvision's ``deeplabv3_resnet50`` (output stride 8, ASPP rates 12/24/36, FCN auxiliary head on
    layer3 when ``aux_loss``).

    backbone_weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` ResNet-50, from the hub: needs the
    network or a filled ``$TORCH_HOME``), a local torchvision ``resnet50`` state dict (.pth), or None.
    """

    def __init__(self, backbone_weights: str | None = "imagenet", aux_loss: bool = True) -> None:
        self.backbone_weights = backbone_weights
        self.aux_loss = bool(aux_loss)
        self.image_mean, self.image_std = IMAGENET_MEAN, IMAGENET_STD

    def __call__(self, num_classes: int) -> DeepLabV3:
        hub = ResNet50_Weights.IMAGENET1K_V1 if self.backbone_weights == "imagenet" else None
        try:
            model = deeplabv3_resnet50(
                weights=None, weights_backbone=hub, num_classes=num_classes, aux_loss=self.aux_loss
            )
        except Exception as err:
            if hub is None:
                raise
            raise RuntimeError(
                f"could not fetch torchvision's ResNet-50 ImageNet weights ({err}): give a local file with "
                "task.model.backbone_weights=/path/to/resnet50-0676ba61.pth, or null for random"
            ) from err
        if self.backbone_weights not in (None, "imagenet"):
            self._load_local(model, Path(str(self.backbone_weights)).expanduser())
        return model

    @staticmethod
    def _load_local(model: DeepLabV3, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weights file '{path}' does not exist: set task.model.backbone_weights to a "
                "torchvision resnet50 state dict (.pth), 'imagenet' (hub) or null"
            )
        state = load_weights_file(path, "task.model.backbone_weights")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"'{path}' is not a torchvision resnet50 state dict: missing {list(missing)[:4]}, "
                f"unexpected {list(unexpected)[:4]}"
            )
        log.info("ResNet-50 backbone weights loaded from %s", path)

    def describe(self) -> dict[str, Any]:
        """What determines the built model (part of the training checkpoint's key)."""
        return {"class": "DeepLabV3ResNet50", "backbone_weights": self.backbone_weights, "aux": self.aux_loss}


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyDilatedCNN(nn.Module):
    """A small output-stride-8 CNN with ResNet's attribute names (``layer1``..``layer4``), so torchvision's
    :class:`IntermediateLayerGetter` takes ``layer3`` (aux) and ``layer4`` (out) from it as from ResNet."""

    def __init__(self, widths: Sequence[int] = (16, 32, 48, 64)) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.layer1 = nn.Sequential(_conv_bn_relu(3, w1, 2), _conv_bn_relu(w1, w1))
        self.layer2 = nn.Sequential(_conv_bn_relu(w1, w2, 2), _conv_bn_relu(w2, w2))
        self.layer3 = nn.Sequential(_conv_bn_relu(w2, w3, 2), _conv_bn_relu(w3, w3, dilation=2))
        self.layer4 = nn.Sequential(_conv_bn_relu(w3, w4, dilation=2), _conv_bn_relu(w4, w4, dilation=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SmallDeepLabV3:
    """torchvision's :class:`DeepLabV3` (ASPP head, FCN auxiliary head) on :class:`TinyDilatedCNN`, with a
    narrower ASPP (``aspp_channels``) and smaller rates for small inputs: tests and CPU smoke runs."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 48, 64),
        aspp_channels: int = 64,
        atrous_rates: Sequence[int] = (2, 4, 6),
        aux_loss: bool = True,
    ) -> None:
        if len(widths) != 4:
            raise ValueError(f"SmallDeepLabV3 needs 4 widths, got {list(widths)}")
        self.widths = list(widths)
        self.aspp_channels = int(aspp_channels)
        self.atrous_rates = list(atrous_rates)
        self.aux_loss = bool(aux_loss)
        self.image_mean, self.image_std = IMAGENET_MEAN, IMAGENET_STD

    def __call__(self, num_classes: int) -> DeepLabV3:
        layers = {"layer4": "out", **({"layer3": "aux"} if self.aux_loss else {})}
        backbone = IntermediateLayerGetter(TinyDilatedCNN(self.widths), return_layers=layers)
        c = self.aspp_channels
        head = nn.Sequential(  # torchvision's DeepLabHead with c instead of 256 channels
            ASPP(self.widths[3], self.atrous_rates, out_channels=c),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, num_classes, 1),
        )
        aux = FCNHead(self.widths[2], num_classes) if self.aux_loss else None
        return DeepLabV3(backbone, head, aux)

    def describe(self) -> dict[str, Any]:
        return {
            "class": "SmallDeepLabV3",
            **{k: v for k, v in vars(self).items() if not k.startswith("image_")},
        }
