"""``geal-run task=voc_detection`` / ``task=cityscapes_segmentation`` end to end (real subprocesses) on
generated VOCdevkit and Cityscapes trees: select → train → evaluate → metrics.json with the instance
analysis. The small task configs (same code path) run by default; the real SSD300 / DeepLabV3-ResNet50
configs run in the slow suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from downstream.datasets import synthetic
from downstream.datasets.cityscapes import CityscapesPool
from downstream.datasets.voc import VOCPool

REPO = Path(__file__).resolve().parents[1]


def geal_run(*overrides: str, tmp: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-c",
        "from geal.run.cli import run_main; run_main()",
        "debug=smoke",
        "logger=none",
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.output_dir={tmp / 'out'}",
        f"hydra.run.dir={out}",
        *overrides,
    ]
    # one torch thread: the small models gain little from two, and OpenMP threads stall on a shared CPU
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEAL_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"geal-run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dense")
    synthetic.make_voc(root / "data", n07=16, n12=8, n07_test=6, seed=0)  # data/VOCdevkit/VOC2007...
    synthetic.make_cityscapes(root / "data" / "cityscapes", n_train=8, n_val=2, seed=0)
    return root


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_voc_detection_run(tmp: Path) -> None:
    out = tmp / "out" / "voc"
    proc = geal_run(
        "data=voc0712", "task=voc_detection_small", "budgets=[6,12]", "task.train.epochs=2", tmp=tmp, out=out
    )
    doc = read_json(out / "metrics.json")
    selection = read_json(out / "selection.json")
    assert doc["task"] == "voc_detection_small" and doc["selector"] == "geal" and doc["pool"] == "voc0712"
    assert doc["config"]["data"]["test"]["sets"] == [["2007", "test"]]
    assert [r["budget"] for r in doc["results"]] == [6, 12]
    pool = VOCPool(tmp / "data" / "VOCdevkit")
    anns = pool.annotations()
    n_all = sum(len(a) for a in anns)
    for r in doc["results"]:
        m, fit = r["metrics"], r["fit"]
        assert 0.0 <= m["mAP"] <= 1.0 and all(k == "mAP" or k.startswith("AP/") for k in m)
        chosen = selection["global_ids"][: r["budget"]]
        # the instance analysis: objects of exactly the selected images vs the random expectation
        assert fit["selection/instances"] == sum(len(anns[g]) for g in chosen)
        assert fit["random/instances"] == pytest.approx(n_all * r["budget"] / len(pool))
        for c in ("car", "dog"):
            k = pool.object_classes.index(c)
            assert fit[f"selection/class/{c}"] == sum(int((anns[g].labels == k).sum()) for g in chosen)
        assert fit["n_train"] == r["budget"] and fit["epoch"] == 2
    assert "budget     12: mAP" in proc.stdout
    # evaluation ran on VOC2007 test: every class with a non-difficult test box has an AP
    test = VOCPool(tmp / "data" / "VOCdevkit", sets=[["2007", "test"]])
    with_boxes = {pool.object_classes[k] for a in test.annotations() for k in a.labels[~a.difficult]}
    assert {k[3:] for k in doc["results"][0]["metrics"] if k.startswith("AP/")} == with_boxes


def test_cityscapes_segmentation_run(tmp: Path) -> None:
    out = tmp / "out" / "city"
    proc = geal_run(
        "data=cityscapes",
        "task=cityscapes_segmentation_small",
        "selector=random",
        "budgets=[4]",
        "task.train.epochs=2",
        tmp=tmp,
        out=out,
    )
    doc = read_json(out / "metrics.json")
    assert doc["task"] == "cityscapes_segmentation_small" and doc["selector"] == "random"
    assert doc["config"]["data"]["test"]["split"] == "val"
    (r,) = doc["results"]
    assert r["budget"] == 4 and r["fit"]["n_train"] == 4 and r["fit"]["epoch"] == 2
    m = r["metrics"]
    assert 0.0 <= m["mIoU"] <= 1.0 and 0.0 <= m["pixel_acc"] <= 1.0
    # IoU for the classes present in the val labels (or predicted), never for the others
    val = CityscapesPool(tmp / "data" / "cityscapes", "val")
    present = {int(v) for i in range(len(val)) for v in set(val.train_ids(i).ravel().tolist()) if v != 255}
    ious = {k[4:] for k in m if k.startswith("IoU/")}
    assert {["road", "sidewalk", "building"][k] for k in (0, 1, 2) if k in present} <= ious
    assert "budget      4: mIoU" in proc.stdout


@pytest.mark.slow
def test_real_voc_detection_and_cityscapes_configs_run(tmp: Path) -> None:
    """The paper's configs (SSD300-VGG16 at 300×300, DeepLabV3-ResNet50) through geal-run on CPU: one
    epoch on a few images, random backbone weights (no network)."""
    out = tmp / "out" / "voc_real"
    geal_run(
        "data=voc0712",
        "task=voc_detection",
        "selector=random",
        "budgets=[4]",
        "task.model.backbone_weights=null",
        "task.train.epochs=1",
        "task.train.batch_size=4",
        "task.train.num_workers=0",
        tmp=tmp,
        out=out,
    )
    (r,) = read_json(out / "metrics.json")["results"]
    assert r["fit"]["epoch"] == 1 and "mAP" in r["metrics"] and r["fit"]["selection/images"] == 4
    out = tmp / "out" / "city_real"
    geal_run(
        "data=cityscapes",
        "task=cityscapes_segmentation",
        "selector=random",
        "budgets=[2]",
        "task.model.backbone_weights=null",
        "task.train.epochs=1",
        "task.train.batch_size=2",
        "task.train.num_workers=0",
        "task.base_size=64",
        "task.crop_size=[64,96]",
        tmp=tmp,
        out=out,
    )
    (r,) = read_json(out / "metrics.json")["results"]
    assert r["fit"]["epoch"] == 1 and 0.0 <= r["metrics"]["mIoU"] <= 1.0
