"""Detectors for the VOC task: torchvision's SSD300-VGG16 (the paper's) and a small SSD on the same code path.

Both builders return a :class:`PerImageLossSSD`: torchvision's :class:`~torchvision.models.detection.SSD`
(matching, hard-negative mining 3:1, smooth-L1 + cross-entropy, NMS post-processing) whose training loss
also carries the **per-image** losses ``(B,)`` that Learn-Loss needs as its target. A builder is a small
picklable object called with ``num_classes`` (background included) at the start of every fit, so each fit
starts from the same fresh (seeded) weights.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VGG16_Weights, vgg16
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD

from geal.util.checkpoints import load_weights_file

log = logging.getLogger(__name__)

#: input normalisation of torchvision's VGG16 "features" weights (caffe-style: 0-255 pixels minus the mean)
CAFFE_MEAN = (0.48235, 0.45882, 0.40784)
CAFFE_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)


class PerImageLossSSD(SSD):
    """torchvision's SSD whose training losses also include ``"per_image"``: (B,) losses that sum to
    ``bbox_regression + classification`` (each image's smooth-L1 over its positives plus cross-entropy over
    its positives and mined negatives, divided by the batch's number of positives, as in SSD)."""

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        # torchvision's SSD.compute_loss (BSD-3), with the per-image sums kept instead of only their total
        bbox_regression = head_outputs["bbox_regression"]
        cls_logits = head_outputs["cls_logits"]
        num_foreground = 0
        bbox_loss = []
        cls_targets = []
        for target, regression, logits, anchors_i, matched in zip(
            targets, bbox_regression, cls_logits, anchors, matched_idxs, strict=True
        ):
            fg = torch.where(matched >= 0)[0]
            fg_matched = matched[fg]
            num_foreground += fg_matched.numel()
            target_regression = self.box_coder.encode_single(target["boxes"][fg_matched], anchors_i[fg, :])
            bbox_loss.append(F.smooth_l1_loss(regression[fg, :], target_regression, reduction="sum"))
            gt_classes = torch.zeros((logits.size(0),), dtype=target["labels"].dtype, device=logits.device)
            gt_classes[fg] = target["labels"][fg_matched]
            cls_targets.append(gt_classes)
        bbox_loss_t = torch.stack(bbox_loss)
        cls_targets_t = torch.stack(cls_targets)
        num_classes = cls_logits.size(-1)
        cls_loss = F.cross_entropy(
            cls_logits.view(-1, num_classes), cls_targets_t.view(-1), reduction="none"
        ).view(cls_targets_t.size())
        # hard negative mining: the neg_to_pos_ratio × positives highest-loss background anchors per image
        foreground = cls_targets_t > 0
        num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        negative_loss = cls_loss.clone()
        negative_loss[foreground] = -float("inf")
        _, idx = negative_loss.sort(1, descending=True)
        background = idx.sort(1)[1] < num_negative
        n = max(1, num_foreground)
        cls_per_image = (cls_loss * (foreground | background)).sum(1)
        return {
            "bbox_regression": bbox_loss_t.sum() / n,
            "classification": cls_per_image.sum() / n,
            "per_image": (bbox_loss_t + cls_per_image) / n,
        }


def _postprocess_kwargs(
    score_thresh: float, nms_thresh: float, detections_per_img: int, topk_candidates: int
) -> dict[str, Any]:
    return {
        "score_thresh": score_thresh,
        "nms_thresh": nms_thresh,
        "detections_per_img": detections_per_img,
        "topk_candidates": topk_candidates,
    }


def load_vgg16_backbone(weights: str | os.PathLike[str] | None) -> nn.Module:
    """torchvision's VGG16 with ImageNet weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_FEATURES``,
    from the hub: needs the network or a filled ``$TORCH_HOME``), a local ``.pth`` state dict of a
    torchvision ``vgg16`` (``features.*`` keys; the classifier may be absent), or None (random)."""
    if weights is None:
        return vgg16(weights=None)
    if str(weights) == "imagenet":
        try:
            return vgg16(weights=VGG16_Weights.IMAGENET1K_FEATURES)
        except Exception as err:  # offline: say what to do instead
            raise RuntimeError(
                f"could not fetch torchvision's VGG16 ImageNet weights ({err}): give a local file with task."
                "model.backbone_weights=/path/to/vgg16_features-amdegroot-88682ab5.pth, or null for random"
            ) from err
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file '{path}' does not exist: set task.model.backbone_weights to a "
            "torchvision vgg16 state dict (.pth), 'imagenet' (hub) or null"
        )
    state = load_weights_file(path, "task.model.backbone_weights")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = vgg16(weights=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing_features = [k for k in missing if k.startswith("features.")]
    if missing_features or unexpected:
        raise ValueError(
            f"'{path}' is not a torchvision vgg16 state dict: missing {missing_features[:4]}, unexpected "
            f"{list(unexpected)[:4]}"
        )
    log.info("VGG16 backbone weights loaded from %s", path)
    return model


class SSD300VGG16:
    """torchvision's ``ssd300_vgg16`` architecture (VGG16 with the SSD extra layers, 8732 default boxes).

    backbone_weights: ``"imagenet"`` | a local file | None (see :func:`load_vgg16_backbone`).
    trainable_backbone_layers: VGG blocks trained (0..5; torchvision's default 4 with pretrained weights).
    image_mean / image_std: the model's input normalisation (on 0..1 pixels); the defaults suit the
    caffe-style ``IMAGENET1K_FEATURES`` weights (use ImageNet's mean/std with ``IMAGENET1K_V1`` files).
    The rest are SSD's post-processing settings (torchvision's defaults = the original SSD's).
    """

    def __init__(
        self,
        backbone_weights: str | None = "imagenet",
        trainable_backbone_layers: int = 4,
        image_mean: Sequence[float] = CAFFE_MEAN,
        image_std: Sequence[float] = CAFFE_STD,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 200,
        topk_candidates: int = 400,
    ) -> None:
        if not 0 <= trainable_backbone_layers <= 5:
            raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers}")
        self.backbone_weights = backbone_weights
        self.trainable_backbone_layers = trainable_backbone_layers
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.postprocess = _postprocess_kwargs(score_thresh, nms_thresh, detections_per_img, topk_candidates)
        self.size = 300

    def __call__(self, num_classes: int) -> PerImageLossSSD:
        # torchvision's VGG → SSD feature extractor (conv4_3 L2-norm, fc6/fc7, extras), as in ssd300_vgg16
        from torchvision.models.detection.ssd import _vgg_extractor

        vgg = load_vgg16_backbone(self.backbone_weights)
        trainable = self.trainable_backbone_layers if self.backbone_weights is not None else 5
        backbone = _vgg_extractor(vgg, False, trainable)
        anchors = DefaultBoxGenerator(
            [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
            scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
            steps=[8, 16, 32, 64, 100, 300],
        )
        return PerImageLossSSD(
            backbone,
            anchors,
            (self.size, self.size),
            num_classes,
            image_mean=self.image_mean,
            image_std=self.image_std,
            **self.postprocess,
        )

    def describe(self) -> dict[str, Any]:
        """What determines the built model (part of the training checkpoint's key)."""
        return {"class": "SSD300VGG16", **vars(self)}


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyVGGBackbone(nn.Module):
    """A small VGG-style CNN (conv-BN-ReLU) that returns one feature map per SSD level.

    Levels are at strides 8, 16, 32, ... of the input (``len(widths) - 2`` of them after the two stem
    stages), as SSD300's are at 8, 16, 32, ...; output ``OrderedDict`` like torchvision's SSD backbones.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96, 128, 128)) -> None:
        super().__init__()
        if len(widths) < 4:
            raise ValueError("TinyVGGBackbone needs at least 4 widths (2 stem stages + 2 levels)")
        self.stem = nn.Sequential(
            _conv_block(3, widths[0], 2),
            _conv_block(widths[0], widths[1], 2),
            _conv_block(widths[1], widths[2], 2),
        )
        self.levels = nn.ModuleList(
            [_conv_block(widths[2], widths[2], 1)]
            + [_conv_block(widths[k - 1], widths[k], 2) for k in range(3, len(widths))]
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        out: OrderedDict[str, Tensor] = OrderedDict()
        for k, level in enumerate(self.levels):
            x = level(x)
            out[str(k)] = x
        return out


class SmallSSD:
    """SSD on :class:`TinyVGGBackbone` at a small square input (tests and CPU smoke runs): the same
    :class:`PerImageLossSSD` (matching, loss, post-processing) as :class:`SSD300VGG16`, ~0.5 M weights.

    Default-box scales are spread from ``min_scale`` to ``max_scale`` over the levels (SSD's rule), two
    aspect ratios (1 and 2, 1/2) per level.
    """

    def __init__(
        self,
        size: int = 128,
        widths: Sequence[int] = (16, 32, 64, 96, 128, 128),
        min_scale: float = 0.15,
        max_scale: float = 0.9,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 100,
        topk_candidates: int = 200,
    ) -> None:
        self.size = int(size)
        self.widths = list(widths)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.postprocess = _postprocess_kwargs(score_thresh, nms_thresh, detections_per_img, topk_candidates)

    def __call__(self, num_classes: int) -> PerImageLossSSD:
        backbone = TinyVGGBackbone(self.widths)
        n_levels = len(self.widths) - 2
        anchors = DefaultBoxGenerator([[2]] * n_levels, min_ratio=self.min_scale, max_ratio=self.max_scale)
        return PerImageLossSSD(
            backbone,
            anchors,
            (self.size, self.size),
            num_classes,
            image_mean=self.image_mean,
            image_std=self.image_std,
            **self.postprocess,
        )

    def describe(self) -> dict[str, Any]:
        return {"class": "SmallSSD", **vars(self)}
