"""VOC AP and segmentation IoU against values computed by hand, and against a plain reference loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from downstream.metrics.miou import SegmentationIoU
from downstream.metrics.voc_ap import VOCDetectionMetric, average_precision

SQ = [0.0, 0.0, 10.0, 10.0]


def _hand_case(drop_difficult_detection: bool = False, difficult: bool = True) -> VOCDetectionMetric:
    """Two images, class 0 ("cat"); class 1 ("dog") has detections but no ground truth.

    image A: boxes g1 = SQ, g2 = (20,20,30,30) (difficult); image B: g3 = SQ.
    detections (score): d1 .9 on g1 (TP), d2 .8 on g1 again (duplicate: FP), d3 .7 on g2 (ignored when
    g2 is difficult), d4 .6 on nothing in B (FP), d5 .5 = (0,0,10,12) on g3 (IoU 100/120: TP).
    """
    m = VOCDetectionMetric(["cat", "dog"], iou_threshold=0.5)
    det_a = [(SQ, 0.9), (SQ, 0.8)] + ([] if drop_difficult_detection else [([20, 20, 30, 30], 0.7)])
    m.update(
        boxes=[b for b, _ in det_a] + [[40, 40, 50, 50]],
        scores=[s for _, s in det_a] + [0.95],
        labels=[0] * len(det_a) + [1],  # a "dog" detection: no dog ground truth anywhere
        gt_boxes=[SQ, [20, 20, 30, 30]],
        gt_labels=[0, 0],
        gt_difficult=[False, difficult],
    )
    m.update(
        boxes=torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 12]]),
        scores=torch.tensor([0.6, 0.5]),
        labels=torch.tensor([0, 0]),
        gt_boxes=torch.tensor([SQ]),
        gt_labels=torch.tensor([0]),
        gt_difficult=torch.tensor([False]),
    )
    return m


def test_voc_ap_by_hand_11point_and_all_point() -> None:
    # ranked without the ignored d3: TP, FP, FP, TP → recall .5 .5 .5 1, precision 1 .5 1/3 .5
    m = _hand_case()
    tp, fp, n_pos = m.class_records(0)
    assert tp.tolist() == [1, 0, 0, 1] and fp.tolist() == [0, 1, 1, 0] and n_pos == 2
    # 11-point: t = 0..0.5 → max precision 1 (6 points), t = 0.6..1 → 0.5 (5 points)
    assert m.compute() == pytest.approx({"mAP": 8.5 / 11, "AP/cat": 8.5 / 11})
    m.ap_method = "all_point"
    # area: recall 0 → .5 at envelope precision 1, .5 → 1 at 0.5
    assert m.compute() == pytest.approx({"mAP": 0.75, "AP/cat": 0.75})


def test_difficult_boxes_neither_rewarded_nor_punished() -> None:
    base = _hand_case().compute()["AP/cat"]
    # a detection on a difficult box counts for nothing: removing it changes nothing
    assert _hand_case(drop_difficult_detection=True).compute()["AP/cat"] == pytest.approx(base)
    # and a missed difficult box does not lower recall (n_pos counts non-difficult boxes only)
    assert _hand_case(drop_difficult_detection=True).class_records(0)[2] == 2
    # the same box *not* difficult: d3 is a TP and recall needs 3 boxes → ranks TP FP TP FP TP
    m = _hand_case(difficult=False)
    tp, _, n_pos = m.class_records(0)
    assert tp.tolist() == [1, 0, 1, 0, 1] and n_pos == 3
    # precision 1, .5, 2/3, .5, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1: 11-point = (4·1 + 3·(2/3) + 4·0.6)/11
    assert m.compute()["AP/cat"] == pytest.approx((4 + 2 + 2.4) / 11)
    # and missing the non-difficult box costs recall
    miss = _hand_case(drop_difficult_detection=True, difficult=False).compute()["AP/cat"]
    assert miss < base


def test_iou_threshold_is_inclusive_and_classes_must_match() -> None:
    m = VOCDetectionMetric(["a", "b"])
    # IoU exactly 0.5 (100 / 200) counts, as in VOCevaldet.m (ov >= minoverlap); a right box of the wrong
    # class is a false positive for its own class
    m.update([[0, 0, 10, 20], SQ], [0.9, 0.8], [0, 1], [SQ], [0])
    assert m.compute() == {"mAP": 1.0, "AP/a": 1.0}
    m = VOCDetectionMetric(["a"], iou_threshold=0.51)
    m.update([[0, 0, 10, 20]], [0.9], [0], [SQ], [0])
    assert m.compute() == {"mAP": 0.0, "AP/a": 0.0}


def test_class_without_detections_scores_zero_and_empty_images_are_fine() -> None:
    m = VOCDetectionMetric(["a", "b"])
    m.update([SQ], [0.9], [0], [SQ, [20, 20, 40, 40]], [0, 1])
    m.update(np.zeros((0, 4)), [], [], np.zeros((0, 4)), [])  # an image with no objects, no detections
    assert m.compute() == {"mAP": 0.5, "AP/a": 1.0, "AP/b": 0.0}
    assert math.isnan(VOCDetectionMetric(["a"]).compute()["mAP"])


def test_bad_inputs_are_named() -> None:
    m = VOCDetectionMetric(["a"])
    with pytest.raises(ValueError, match="labels must be in"):
        m.update([SQ], [0.9], [3], [SQ], [0])
    with pytest.raises(ValueError, match="detections disagree"):
        m.update([SQ], [0.9, 0.1], [0], [SQ], [0])
    with pytest.raises(ValueError, match="ap_method"):
        VOCDetectionMetric(["a"], ap_method="coco")


def _reference_ap(dets, gts, cls, thr, method):
    """py-faster-rcnn's voc_eval loop (with VOCevaldet.m's ``>=``), one detection at a time."""
    records = {
        i: {"boxes": np.array(g[0]).reshape(-1, 4), "lab": np.array(g[1]), "diff": np.array(g[2])}
        for i, g in enumerate(gts)
    }
    taken = {i: np.zeros(len(r["lab"]), bool) for i, r in records.items()}
    npos = sum(int(((r["lab"] == cls) & ~r["diff"]).sum()) for r in records.values())
    flat = [(s, i, b) for i, d in enumerate(dets) for b, s, lab in zip(*d, strict=True) if lab == cls]
    flat.sort(key=lambda x: -x[0])
    tp, fp = [], []
    for _, i, b in flat:
        r = records[i]
        best, j = -1.0, -1
        for k, (g, lab) in enumerate(zip(r["boxes"], r["lab"], strict=True)):
            if lab != cls:
                continue
            iw = max(min(b[2], g[2]) - max(b[0], g[0]), 0)
            ih = max(min(b[3], g[3]) - max(b[1], g[1]), 0)
            inter = iw * ih
            iou = inter / ((b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)
            if iou > best:
                best, j = iou, k
        if best >= thr:
            if r["diff"][j]:
                continue
            if not taken[i][j]:
                taken[i][j] = True
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        else:
            tp.append(0)
            fp.append(1)
    if npos == 0:
        return None
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    return average_precision(ctp / npos, ctp / np.maximum(ctp + cfp, 1e-12), method)


@pytest.mark.parametrize("method", ["11point", "all_point"])
def test_vectorised_matching_equals_the_reference_loop(method: str) -> None:
    rng = np.random.default_rng(0)
    dets, gts = [], []
    m = VOCDetectionMetric(["a", "b", "c"], ap_method=method)
    for _ in range(25):
        g = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, (g, 2))
        gb = np.concatenate([xy, xy + rng.uniform(8, 30, (g, 2))], 1)
        gl, gd = rng.integers(0, 3, g), rng.random(g) < 0.25
        d = int(rng.integers(0, 7))
        pick = rng.integers(0, max(g, 1), d)
        db = gb[pick] + rng.normal(0, 4, (d, 4)) if g else rng.uniform(0, 80, (d, 4))
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dl = np.where(rng.random(d) < 0.8, gl[pick] if g else 0, rng.integers(0, 3, d))
        ds = rng.random(d)
        m.update(db, ds, dl, gb, gl, gd)
        dets.append((db, ds, dl))
        gts.append((gb, gl, gd))
    out = m.compute()
    for cls, name in enumerate("abc"):
        ref = _reference_ap(dets, gts, cls, 0.5, method)
        assert out[f"AP/{name}"] == pytest.approx(ref)


def test_miou_by_hand_with_ignore_pixels() -> None:
    target = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 2]])  # the ignored pixel's prediction never counts
    m = SegmentationIoU(4, ["road", "car", "sky", "bus"])
    m.update(pred, target)
    # road: TP 1, FN 1 → 1/2; car: TP 2, FP 1 → 2/3; sky: 1; bus: absent and never predicted → no IoU
    out = m.compute()
    assert out == pytest.approx(
        {"mIoU": (0.5 + 2 / 3 + 1) / 3, "pixel_acc": 4 / 5, "IoU/road": 0.5, "IoU/car": 2 / 3, "IoU/sky": 1.0}
    )
    assert m.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # a predicted-but-absent class has IoU 0 and counts in the mean
    m.update(torch.tensor([[3]]), torch.tensor([[2]]))
    assert m.compute()["IoU/bus"] == 0.0 and m.compute()["IoU/sky"] == 0.5


def test_miou_rejects_unmapped_label_ids() -> None:
    m = SegmentationIoU(19)
    with pytest.raises(ValueError, match="train ids"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 26))


def test_11point_thresholds_are_the_python_references_floats() -> None:
    """VOC07's 11 recall thresholds as py-faster-rcnn's voc_eval.py and mmdet's eval_map compute them
    (np.arange(0, 1.1, 0.1)): t = 0.30000000000000004 is not reached by a recall of exactly 3/10."""
    recall = np.array([0.1, 0.2, 0.3])  # 1, 2, 3 of 10 positives
    precision = np.array([1.0, 1.0, 1.0])
    # reached: t = 0, 0.1, 0.2 (3 of 11); 3/10 < 0.30000000000000004
    assert average_precision(recall, precision, "11point") == pytest.approx(3 / 11)
    assert average_precision(np.array([0.4]), np.array([1.0]), "11point") == pytest.approx(5 / 11)
