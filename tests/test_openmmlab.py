"""The OpenMMLab backend (``task=mmdet_voc_ssd300``, ``task=mmseg_cityscapes_deeplabv3``): end-to-end runs
through ``geal-run`` on generated VOC / Cityscapes trees in the real formats (tiny schedules: a few
iterations, small crops), on exactly the selected images; resume after an interruption; a clear error for an
image missing from the dataset; the framework's metrics against mmdet's ``eval_map`` / mmseg's ``IoUMetric``
on identical inputs; and each workaround of :mod:`downstream.tasks.openmmlab_compat`.

Marked ``openmmlab``: run by ``make test-openmmlab`` (CI), skipped by a plain ``pytest`` (conftest.py).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from downstream.datasets import synthetic
from downstream.datasets.cityscapes import TRAIN_CLASSES, CityscapesPool
from downstream.datasets.voc import VOC_CLASSES, VOCPool
from downstream.metrics.miou import SegmentationIoU
from downstream.metrics.voc_ap import VOCDetectionMetric
from downstream.tasks import openmmlab_compat as compat
from geal.api.task import TaskContext, TaskError

pytestmark = pytest.mark.openmmlab

REPO = Path(__file__).resolve().parents[1]

#: a tiny SSD300 schedule: 1 epoch of the selection (not repeated), batch 4, no workers
VOC_TINY = (
    "task.backbone_weights=null",
    "task.log_interval=1",
    "task.overrides.train_dataloader.batch_size=4",
    "task.overrides.train_dataloader.num_workers=0",
    "task.overrides.train_dataloader.dataset.times=1",
    "task.overrides.train_cfg.max_epochs=1",
    "task.overrides.test_dataloader.num_workers=0",
)
#: a tiny DeepLabV3 schedule: 2 iterations of batch 2 on 32×64 crops, testing at 128×64
CITY_TINY = (
    "task.backbone_weights=null",
    "task.log_interval=1",
    "task.overrides.train_dataloader.batch_size=2",
    "task.overrides.train_dataloader.num_workers=0",
    "task.overrides.train_cfg.max_iters=2",
    "task.overrides.param_scheduler=[{type:PolyLR,eta_min:1e-4,power:0.9,begin:0,end:2,by_epoch:false}]",
    "task.overrides.default_hooks.checkpoint.interval=1",
    "task.overrides.test_dataloader.num_workers=0",
    "task.crop_size=[32,64]",
    "task.scale=[128,64]",
)


def geal_run(*overrides: str, tmp: Path, out: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-c",
        "from geal.run.cli import run_main; run_main()",
        "debug=smoke",
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.output_dir={tmp / 'out'}",
        f"hydra.run.dir={out}",
        *overrides,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEAL_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"geal-run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openmmlab")
    synthetic.make_voc(root / "data", n07=10, n12=6, n07_test=3, seed=0)
    synthetic.make_cityscapes(root / "data" / "cityscapes", n_train=6, n_val=2, seed=0)
    return root


def read_csv_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["key"], []).append((int(row["step"] or -1), float(row["value"])))
    return out


# ------------------------------------------------------------------ end to end through geal-run


def test_mmdet_voc_run_trains_on_exactly_the_selection(tmp: Path) -> None:
    out = tmp / "out" / "voc"
    proc = geal_run(
        "data=voc0712", "task=mmdet_voc_ssd300", "budgets=[5,9]", "logger=csv", *VOC_TINY, tmp=tmp, out=out
    )
    doc = json.loads((out / "metrics.json").read_text())
    selection = json.loads((out / "selection.json").read_text())
    pool = VOCPool(tmp / "data" / "VOCdevkit")
    assert doc["task"] == "mmdet_voc_ssd300" and [r["budget"] for r in doc["results"]] == [5, 9]
    for r in doc["results"]:
        budget, fit, m = r["budget"], r["fit"], r["metrics"]
        chosen = selection["global_ids"][:budget]
        fit_dir = out / "task" / f"budget_{budget:06d}"
        # the selection reached mmdet as per-year ImageSets/Main lists inside the run dir
        by_year: dict[str, list[str]] = {}
        for g in chosen:
            by_year.setdefault(pool.years[g], []).append(pool.ids[g])
        for year, names in by_year.items():
            listed = (fit_dir / "selection" / f"VOC{year}" / "ImageSets" / "Main" / "train.txt").read_text()
            assert listed.split() == names
        # the ids mmdet's dataset loaded: the selection, minus the images without objects (its filter_cfg)
        loaded = (fit_dir / "loaded_ids.txt").read_text().split()
        expected = [pool.ids[g] for g in chosen if len(pool.annotation(g)) > 0]
        assert sorted(loaded) == sorted(expected) and len(loaded) == len(set(loaded))
        assert fit["n_train"] == budget and fit["n_loaded"] == len(expected) and fit["iters"] >= 1
        # the OpenMMLab work dir is inside the run dir, with the composed config and the checkpoint
        cfg_text = (fit_dir / "openmmlab" / "config.py").read_text()
        assert str(fit_dir / "selection") in cfg_text and "SSDHeadCompat" in cfg_text
        assert (fit_dir / "openmmlab" / "epoch_1.pth").is_file()
        # both metrics scored the same predictions of the same test split
        assert 0.0 <= m["mAP"] <= 1.0 and m["mAP"] == pytest.approx(m["mmdet/mAP"], abs=1e-6)
    # training losses reached the run's logger (csv), per iteration
    logged = read_csv_metrics(out / "csv" / "metrics.csv")
    iters = int(doc["results"][1]["fit"]["iters"])
    assert [s for s, _ in logged["budget_9/train/loss"]] == list(range(1, iters + 1))
    assert "budget      9: mAP" in proc.stdout
    # the test split mmdet evaluated is the task's (VOC2007 test)
    test_list = (
        out / "task" / "budget_000005" / "selection" / "test" / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    )
    assert test_list.read_text().split() == list(
        VOCPool(tmp / "data" / "VOCdevkit", sets=[["2007", "test"]]).ids
    )


def test_mmseg_cityscapes_run_trains_on_exactly_the_selection(tmp: Path) -> None:
    out = tmp / "out" / "city"
    geal_run(
        "data=cityscapes",
        "task=mmseg_cityscapes_deeplabv3",
        "selector=random",
        "budgets=[3]",
        "logger=none",
        *CITY_TINY,
        tmp=tmp,
        out=out,
    )
    doc = json.loads((out / "metrics.json").read_text())
    selection = json.loads((out / "selection.json").read_text())
    pool = CityscapesPool(tmp / "data" / "cityscapes", "train")
    (r,) = doc["results"]
    chosen = selection["global_ids"][:3]
    fit_dir = out / "task" / "budget_000003"
    assert (fit_dir / "selection" / "train.txt").read_text().split() == [
        f"{pool.cities[g]}/{pool.ids[g]}" for g in chosen
    ]
    assert (fit_dir / "loaded_ids.txt").read_text().split() == [pool.ids[g] for g in chosen]
    assert r["fit"]["n_loaded"] == 3 and r["fit"]["iters"] == 2
    m = r["metrics"]
    assert 0.0 <= m["mIoU"] <= 1.0 and m["mIoU"] == pytest.approx(m["mmseg/mIoU"], abs=5e-5)  # mmseg rounds
    # the train-id maps were generated into the cache, never into the dataset folder
    assert not list((tmp / "data" / "cityscapes").rglob("*_gtFine_labelTrainIds.png"))
    made = sorted(p.name for p in (tmp / "cache").rglob("*_gtFine_labelTrainIds.png"))
    val = CityscapesPool(tmp / "data" / "cityscapes", "val")
    assert made == sorted(f"{n}_gtFine_labelTrainIds.png" for n in [*(pool.ids[g] for g in chosen), *val.ids])
    g = chosen[0]
    cached = next((tmp / "cache").rglob(f"{pool.ids[g]}_gtFine_labelTrainIds.png"))
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(cached)), pool.train_ids(g))


def test_missing_image_gives_one_clear_error(tmp: Path) -> None:
    data = tmp / "missing" / "data"
    shutil.copytree(tmp / "data" / "VOCdevkit", data / "VOCdevkit")
    gone = VOCPool(data / "VOCdevkit", sets=[["2012", "trainval"]]).ids[1]
    (data / "VOCdevkit" / "VOC2012" / "Annotations" / f"{gone}.xml").unlink()
    out = tmp / "out" / "missing"
    proc = geal_run(
        "data=voc0712",
        "task=mmdet_voc_ssd300",
        "selector=random",
        "budgets=[16]",
        "logger=none",
        f"data.root={data / 'VOCdevkit'}",
        *VOC_TINY,
        tmp=tmp,
        out=out,
        check=False,
    )
    assert proc.returncode != 0
    xml = data / "VOCdevkit" / "VOC2012" / "Annotations" / f"{gone}.xml"
    line = f"mmdet_voc_ssd300: image id '{gone}' (VOC2012) is missing from the dataset: no {xml}"
    assert line in proc.stderr.splitlines() and "Traceback" not in proc.stderr  # one line, no traceback
    assert f"job failed (TaskError: {line})" in proc.stdout


# ------------------------------------------------------------------ resume


def seg_task(cache: Path, **kw):
    from downstream.tasks.mmseg_cityscapes import MMSegCityscapesTask

    return MMSegCityscapesTask(
        backbone_weights=None,
        log_interval=1,
        cache_dir=cache,
        crop_size=(32, 64),
        scale=(128, 64),
        overrides={
            "train_dataloader": {"batch_size": 2, "num_workers": 0},
            "test_dataloader": {"num_workers": 0},
            "train_cfg": {"max_iters": 3},
            "param_scheduler": [
                {"type": "PolyLR", "eta_min": 1e-4, "power": 0.9, "end": 3, "by_epoch": False}
            ],
            "default_hooks": {"checkpoint": {"by_epoch": False, "interval": 1}},
        },
        **kw,
    )


def stop_at(iteration: int):
    from mmengine.hooks import Hook

    class Stop(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter + 1 == iteration:
                raise KeyboardInterrupt("simulated interruption")

    return Stop()


def test_interrupted_fit_resumes_from_its_last_checkpoint(tmp: Path) -> None:
    root = tmp / "data" / "cityscapes"
    pool, val = CityscapesPool(root, "train"), CityscapesPool(root, "val")
    work = tmp / "resume"
    ids = [4, 0, 2]

    def ctx() -> TaskContext:
        return TaskContext(pool=pool, test_pool=val, work_dir=work, progress=False)

    broken = seg_task(tmp / "cache")
    broken.setup(ctx())
    broken.extra_hooks.append(stop_at(3))  # dies in iteration 3: iterations 1-2 are checkpointed
    with pytest.raises(KeyboardInterrupt):
        broken.fit(ids)
    assert (work / "openmmlab" / "iter_2.pth").is_file() and not (work / "openmmlab" / "iter_3.pth").exists()

    again = seg_task(tmp / "cache")
    again.setup(ctx())
    stats = again.fit(ids)  # resumes (mmengine checkpoint under torch's weights_only default: compat)
    assert stats["resumed_from_iter"] == 2 and stats["iters"] == 3
    assert (work / "openmmlab" / "iter_3.pth").is_file()
    first = again.evaluate()

    done = seg_task(tmp / "cache")
    done.setup(ctx())
    stats = done.fit(ids)  # complete: nothing to train, the final checkpoint is loaded
    assert stats["resumed_from_iter"] == 3 and stats["iters"] == 3 and "loss" in stats
    assert done.evaluate()["mIoU"] == pytest.approx(first["mIoU"], abs=1e-12)

    other = seg_task(tmp / "cache")
    other.setup(ctx())
    stats = other.fit([1, 3])  # another selection in the same work dir starts afresh
    assert stats["resumed_from_iter"] == 0 and stats["n_loaded"] == 2


# ------------------------------------------------------------------ metrics against mmdet / mmseg


def random_detection_case(seed: int, n_images: int = 25, n_classes: int = 4):
    """Integer VOC boxes (mmdet's legacy frame), difficult flags, and scored detections near the truth."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        n = int(rng.integers(0, 5))
        xy = rng.integers(0, 150, (n, 2))
        wh = rng.integers(8, 80, (n, 2))
        gt = np.concatenate([xy, xy + wh], 1).astype(np.float64)
        labels = rng.integers(0, n_classes, n)
        difficult = rng.random(n) < 0.2
        dets, det_labels = [], []
        for box, lab in zip(gt, labels, strict=True):
            for _ in range(int(rng.integers(0, 3))):  # hits, near misses and duplicates
                dets.append(box + rng.normal(0, 6, 4))
                det_labels.append(lab if rng.random() < 0.85 else rng.integers(0, n_classes))
        for _ in range(int(rng.integers(0, 3))):  # background false positives
            p = rng.integers(0, 150, 2)
            dets.append(np.r_[p, p + rng.integers(8, 60, 2)].astype(np.float64))
            det_labels.append(rng.integers(0, n_classes))
        d = np.asarray(dets, np.float64).reshape(-1, 4)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        images.append((gt, labels, difficult, d, np.asarray(det_labels, int), rng.random(len(d))))
    return images


@pytest.mark.parametrize("seed", range(6))
def test_voc07_map_equals_mmdet_eval_map(seed: int) -> None:
    from mmdet.evaluation.functional import eval_map

    from downstream.tasks.mmdet_voc import legacy_to_continuous

    n_classes = 4
    images = random_detection_case(seed, n_classes=n_classes)
    det_results, annotations = [], []
    ours = VOCDetectionMetric([f"c{k}" for k in range(n_classes)], iou_threshold=0.5, ap_method="11point")
    for gt, labels, difficult, d, dl, scores in images:
        det_results.append([np.c_[d[dl == k], scores[dl == k]] for k in range(n_classes)])
        annotations.append(
            {
                "bboxes": gt[~difficult].reshape(-1, 4),
                "labels": labels[~difficult],
                "bboxes_ignore": gt[difficult].reshape(-1, 4),
                "labels_ignore": labels[difficult],
            }
        )
        ours.update(
            torch.from_numpy(legacy_to_continuous(d)),
            torch.from_numpy(scores),
            torch.from_numpy(dl),
            torch.from_numpy(legacy_to_continuous(gt)),
            torch.from_numpy(labels),
            torch.from_numpy(difficult),
        )
    mean_ap, per_class = eval_map(
        det_results, annotations, iou_thr=0.5, eval_mode="11points", use_legacy_coordinate=True, nproc=1
    )
    got = ours.compute()
    assert got["mAP"] == pytest.approx(mean_ap, abs=1e-6)
    for k, r in enumerate(per_class):
        if r["num_gts"] > 0:
            assert got[f"AP/c{k}"] == pytest.approx(float(r["ap"]), abs=1e-6)
        else:
            assert f"AP/c{k}" not in got


@pytest.mark.parametrize("seed", range(3))
def test_miou_equals_mmseg_iou_metric(seed: int) -> None:
    from mmseg.evaluation import IoUMetric

    rng = np.random.default_rng(seed)
    classes = list(TRAIN_CLASSES)
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": classes}
    ours = SegmentationIoU(len(classes), classes, 255)
    samples = []
    for _ in range(4):
        gt = rng.integers(0, 12, (40, 56))  # some classes never occur: both leave them out
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 14, gt.shape))
        pred[pred == 255] = 0
        g, p = torch.from_numpy(gt), torch.from_numpy(pred)
        samples.append({"pred_sem_seg": {"data": p[None]}, "gt_sem_seg": {"data": g[None]}})
        ours.update(p, g)
    metric.process({}, samples)
    areas = tuple(zip(*metric.results, strict=True))
    totals = [torch.stack(list(a)).sum(0) for a in areas]
    exact = IoUMetric.total_area_to_metrics(*totals, ["mIoU"])
    got = ours.compute()
    # mmseg accumulates the areas in float32: equal to 1e-6
    assert got["mIoU"] == pytest.approx(float(np.nanmean(exact["IoU"])), abs=1e-6)
    for name, iou in zip(classes, exact["IoU"], strict=True):
        assert got.get(f"IoU/{name}", float("nan")) == pytest.approx(float(iou), abs=1e-6, nan_ok=True)
    assert got["pixel_acc"] == pytest.approx(float(exact["aAcc"]), abs=1e-6)
    assert got["mIoU"] * 100 == pytest.approx(metric.compute_metrics(metric.results)["mIoU"], abs=5e-3)


# ------------------------------------------------------------------ the compatibility workarounds


def test_mmengine_checkpoints_load_under_weights_only_inside_trusted_folders(tmp_path: Path) -> None:
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import _load_checkpoint

    state = {
        "meta": {"epoch": 1},
        "message_hub": {"log_scalars": {"loss": HistoryBuffer([1.0, 2.0], [1, 1])}},
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "other").mkdir()
    for folder in ("run", "other"):
        torch.save(state, tmp_path / folder / "epoch_1.pth")
    with pytest.raises(pickle.UnpicklingError):  # the breakage: torch's weights_only default
        _load_checkpoint(str(tmp_path / "run" / "epoch_1.pth"), map_location="cpu")
    with compat.trusted_checkpoints(tmp_path / "run"):
        loaded = _load_checkpoint(str(tmp_path / "run" / "epoch_1.pth"), map_location="cpu")
        with pytest.raises(pickle.UnpicklingError):  # other folders keep the safe default
            _load_checkpoint(str(tmp_path / "other" / "epoch_1.pth"), map_location="cpu")
    assert list(loaded["message_hub"]["log_scalars"]["loss"].data[0]) == [1.0, 2.0]
    with pytest.raises(pickle.UnpicklingError):  # and the loader is restored after the block
        _load_checkpoint(str(tmp_path / "run" / "epoch_1.pth"), map_location="cpu")


def ssd_model_cfg():
    from mmengine.config import Config

    cfg = Config.fromfile(str(compat.config_file("pascal_voc/ssd300_voc0712.py", "mmdet")))
    cfg.model.backbone.init_cfg = None
    return cfg.model


def build_detector(model_cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return MODELS.build(model_cfg)


def test_ssd_head_compat_predicts_where_mmdet_330_fails() -> None:
    from mmdet.structures import DetDataSample

    def predict(model):
        model.eval()
        sample = DetDataSample(
            metainfo={"img_shape": (300, 300), "ori_shape": (300, 300), "scale_factor": (1.0, 1.0)}
        )
        with torch.no_grad():
            return model.predict(torch.rand(1, 3, 300, 300), [sample])

    stock = build_detector(ssd_model_cfg())
    stock.init_weights()
    with pytest.raises(AttributeError, match="loss_cls"):  # the breakage
        predict(stock)
    cfg = ssd_model_cfg()
    compat.apply_ssd_compat(cfg)
    fixed = build_detector(cfg)
    fixed.init_weights()
    (result,) = predict(fixed)
    assert result.pred_instances.bboxes.shape[1] == 4 and len(result.pred_instances.scores) <= 200


def test_ssd_neck_compat_l2norm_weight_is_set_without_init_weights() -> None:
    cfg = ssd_model_cfg()
    compat.apply_ssd_compat(cfg)
    neck = build_detector(cfg).neck
    assert type(neck).__name__ == "SSDNeckCompat"
    assert torch.equal(neck.l2_norm.weight.detach(), torch.full((512,), 20.0))  # before any init_weights
    neck.init_weights()
    assert torch.equal(neck.l2_norm.weight.detach(), torch.full((512,), 20.0))


def test_backbone_weights_come_from_a_local_file_and_downloads_are_refused_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskError, match="is a download and this run is offline"):
        compat.backbone_init("open-mmlab://vgg16_caffe", "task.backbone_weights")
    with pytest.raises(TaskError, match="does not exist"):
        compat.backbone_init(str(tmp_path / "nope.pth"), "task.backbone_weights")
    assert compat.backbone_init(None, "task.backbone_weights") is None
    # a local file: the built SSD's VGG starts from exactly its weights
    donor = build_detector(ssd_model_cfg()).backbone
    torch.save(donor.state_dict(), tmp_path / "vgg.pth")
    cfg = ssd_model_cfg()
    cfg.backbone.init_cfg = compat.backbone_init(str(tmp_path / "vgg.pth"), "task.backbone_weights")
    model = build_detector(cfg)
    model.init_weights()
    for name, value in donor.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name


def test_sync_bn_becomes_bn_and_missing_packages_fail_in_one_line() -> None:
    cfg = {
        "a": {"norm_cfg": {"type": "SyncBN", "requires_grad": True}},
        "b": [{"type": "SyncBN"}, {"type": "GN"}],
    }
    assert compat.replace_sync_bn(cfg) == 2
    assert cfg["a"]["norm_cfg"]["type"] == "BN" and cfg["b"][1]["type"] == "GN"
    with pytest.raises(TaskError, match=r"needs no_such_mm_package .*make openmmlab"):
        compat.require("no_such_mm_package", task="t")


def test_voc_classes_match_mmdet() -> None:
    from mmdet.datasets import VOCDataset

    assert tuple(VOCDataset.METAINFO["classes"]) == tuple(VOC_CLASSES)


def test_a_selection_the_dataset_filters_away_entirely_fails_in_one_line(tmp: Path) -> None:
    from downstream.tasks.mmdet_voc import MMDetVOCTask

    devkit = tmp / "data" / "VOCdevkit"
    pool, test = VOCPool(devkit), VOCPool(devkit, sets=[["2007", "test"]], name="voc07_test")
    empty = [g for g in range(len(pool)) if len(pool.annotation(g)) == 0]
    assert empty  # the generator leaves every 6th image without objects
    task = MMDetVOCTask(backbone_weights=None, overrides={"train_dataloader": {"num_workers": 0}})
    task.setup(TaskContext(pool=pool, test_pool=test, work_dir=tmp / "empty", progress=False))
    with pytest.raises(TaskError, match=rf"kept none of the {len(empty)} selected images"):
        task.fit(empty)
    # the lists were written all the same, and the dataset loaded nothing
    assert (tmp / "empty" / "loaded_ids.txt").read_text() == ""
