"""PASCAL VOC detection metric: per-class average precision at an IoU threshold, "difficult" boxes ignored.

Follows the official VOCdevkit (``VOCevaldet.m``), which the paper's SSD numbers use:

* detections of a class are ranked by score over the whole test set; each one is compared with the ground
  truth boxes of its class in its image and assigned to the one of maximal IoU;
* IoU ≥ ``iou_threshold`` with a non-difficult box not yet taken → true positive; with one already taken
  by a higher-scored detection → false positive (a duplicate); with a *difficult* box → ignored (neither
  true nor false positive); below the threshold → false positive;
* recall counts only non-difficult boxes; AP is VOC2007's 11-point interpolation (``"11point"``: mean of
  the maximal precision at recall ≥ 0, 0.1, ..., 1) or VOC2010's area under the monotone precision
  envelope (``"all_point"``).

Box convention: ``(x0, y0, x1, y1)`` in continuous pixel coordinates (a VOC box with 1-based inclusive
corners ``xmin..xmax`` is ``(xmin - 1, ymin - 1, xmax, ymax)``, see
:func:`downstream.datasets.voc.read_voc_xml`), and IoU is the plain area ratio; on the ground truth
this equals the devkit's ``+1`` pixel formula.

Why not ``torchmetrics.detection.MeanAveragePrecision``: it implements COCO's protocol (101-point
interpolation, ``iscrowd`` rather than VOC's "difficult", greedy matching among *unmatched* boxes), so it
does not produce VOC07 numbers.

Matching is done per image as soon as an image is added (one vectorised IoU matrix per image), so memory
holds only ``(score, label, best IoU, matched box, difficult)`` per detection; :meth:`compute` then ranks
each class once with numpy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

AP_METHODS = ("11point", "all_point")

#: the 11 recall thresholds of VOC07's AP exactly as the Python references compute them (py-faster-rcnn's
#: ``voc_eval.py``, mmdet's ``eval_map``): ``np.arange(0, 1.1, 0.1)``, whose 4th, 7th and 8th values are
#: 0.30000000000000004, 0.6000000000000001 and 0.7000000000000001, so a recall of exactly 3/10, 6/10 or 7/10
#: does not reach them. SSD's published VOC07 numbers (and the paper's mmdet config) are scored this way;
#: tests/test_openmmlab.py checks the metric against mmdet's ``eval_map`` to 1e-6.
ELEVEN_POINTS: np.ndarray = np.arange(0.0, 1.1, 0.1)


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "11point") -> float:
    """AP from a ranked list's cumulative ``recall`` and ``precision`` (both (D,), same order).

    ``"11point"`` (VOC2007): mean over t ∈ {0, 0.1, ..., 1} of max(precision[recall ≥ t]) (0 if none),
    with t the floating-point values of :data:`ELEVEN_POINTS`.
    ``"all_point"`` (VOC2010+): area under the precision envelope (max precision at any higher recall).
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} differ in shape")
    if method == "11point":
        ap = 0.0
        for t in ELEVEN_POINTS:
            above = precision[recall >= t]
            ap += float(above.max()) if above.size else 0.0
        return ap / 11.0
    if method == "all_point":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision at any higher recall
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    raise ValueError(f"unknown AP method {method!r}: use one of {AP_METHODS}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of ``(x0, y0, x1, y1)`` boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _as_array(x: Any, dtype: Any, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy() if dtype == np.float64 else x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    return arr


class VOCDetectionMetric:
    """Accumulates detections and ground truth image by image; :meth:`compute` gives mAP and per-class AP.

    Labels are 0-based indices into ``class_names`` (no background class). A class with no non-difficult
    ground-truth box in the added images has no AP: it is left out of the mean and of the per-class output
    (the VOC07 test set has boxes of every class).
    """

    def __init__(
        self, class_names: Sequence[str], iou_threshold: float = 0.5, ap_method: str = "11point"
    ) -> None:
        if ap_method not in AP_METHODS:
            raise ValueError(f"ap_method must be one of {AP_METHODS}, got {ap_method!r}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.class_names = list(class_names)
        self.iou_threshold = float(iou_threshold)
        self.ap_method = ap_method
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._best_iou: list[np.ndarray] = []
        self._gt_key: list[np.ndarray] = []  # matched ground-truth box, as a running index over all images
        self._gt_difficult: list[np.ndarray] = []
        self._n_gt = np.zeros(len(self.class_names), dtype=np.int64)  # non-difficult boxes per class
        self._n_gt_boxes = 0
        self.n_images = 0

    def update(
        self,
        boxes: Any,
        scores: Any,
        labels: Any,
        gt_boxes: Any,
        gt_labels: Any,
        gt_difficult: Any | None = None,
    ) -> None:
        """Add one image: detections ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) and ground truth
        ``gt_boxes`` (G, 4), ``gt_labels`` (G,), ``gt_difficult`` (G,) bool (default all False)."""
        boxes = _as_array(boxes, np.float64, (4,))
        scores = _as_array(scores, np.float64)
        labels = _as_array(labels, np.int64)
        gt_boxes = _as_array(gt_boxes, np.float64, (4,))
        gt_labels = _as_array(gt_labels, np.int64)
        difficult = (
            np.zeros(len(gt_labels), dtype=bool) if gt_difficult is None else _as_array(gt_difficult, bool)
        )
        if boxes.ndim != 2 or boxes.shape[1] != 4 or gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {boxes.shape} and ground truth {gt_boxes.shape}")
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"detections disagree: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        if not len(gt_boxes) == len(gt_labels) == len(difficult):
            raise ValueError(
                f"ground truth disagrees: {len(gt_boxes)} boxes, {len(gt_labels)} labels, "
                f"{len(difficult)} difficult flags"
            )
        n_cls = len(self.class_names)
        for name, lab in (("detection", labels), ("ground-truth", gt_labels)):
            if lab.size and (lab.min() < 0 or lab.max() >= n_cls):
                raise ValueError(f"{name} labels must be in [0, {n_cls}), got {sorted(set(lab.tolist()))}")
        np.add.at(self._n_gt, gt_labels[~difficult], 1)
        best_iou = np.zeros(len(boxes))
        match = np.full(len(boxes), -1, dtype=np.int64)
        if len(boxes) and len(gt_boxes):
            iou = box_iou(boxes, gt_boxes)
            iou[labels[:, None] != gt_labels[None, :]] = -1.0  # only boxes of the detection's class
            match = iou.argmax(axis=1)
            best_iou = iou[np.arange(len(boxes)), match]
            match = np.where(best_iou >= 0, match, -1)
        matched_difficult = np.zeros(len(boxes), dtype=bool)
        matched_difficult[match >= 0] = difficult[match[match >= 0]]
        self._scores.append(scores)
        self._labels.append(labels)
        self._best_iou.append(best_iou)
        self._gt_key.append(np.where(match >= 0, match + self._n_gt_boxes, -1))
        self._gt_difficult.append(matched_difficult)
        self._n_gt_boxes += len(gt_boxes)
        self.n_images += 1

    def class_records(self, cls: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(tp (D,), fp (D,), n_positive) of class ``cls`` over its detections ranked by score (ignored
        detections on difficult boxes removed)."""
        if not self._scores:
            return np.zeros(0), np.zeros(0), int(self._n_gt[cls])
        labels = np.concatenate(self._labels)
        mine = labels == cls
        scores = np.concatenate(self._scores)[mine]
        best = np.concatenate(self._best_iou)[mine]
        key = np.concatenate(self._gt_key)[mine]
        hard = np.concatenate(self._gt_difficult)[mine]
        order = np.argsort(-scores, kind="stable")
        best, key, hard = best[order], key[order], hard[order]
        hit = best >= self.iou_threshold
        ignored = hit & hard
        candidate = hit & ~hard
        tp = np.zeros(len(order), dtype=bool)
        if candidate.any():
            # the highest-ranked detection on each box is the true positive, later ones are duplicates
            positions = np.nonzero(candidate)[0]
            _, first = np.unique(key[positions], return_index=True)
            tp[positions[first]] = True
        keep = ~ignored
        tp = tp[keep]
        return tp.astype(np.float64), (~tp).astype(np.float64), int(self._n_gt[cls])

    def compute(self) -> dict[str, float]:
        """``{"mAP": ..., "AP/<class>": ...}`` (fractions in [0, 1]) over classes with ground truth."""
        out: dict[str, float] = {}
        aps = []
        for cls, name in enumerate(self.class_names):
            tp, fp, n_pos = self.class_records(cls)
            if n_pos == 0:
                continue
            ctp, cfp = np.cumsum(tp), np.cumsum(fp)
            recall = ctp / n_pos
            precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            ap = average_precision(recall, precision, self.ap_method)
            out[f"AP/{name}"] = ap
            aps.append(ap)
        if not aps:
            log.warning(
                "VOC AP: no non-difficult ground-truth box in %d image(s): mAP is undefined", self.n_images
            )
        out = {"mAP": float(np.mean(aps)) if aps else math.nan, **out}
        return out
