"""Cityscapes segmentation: label-id → train-id mapping, joint crop/scale of image and labels, per-image
losses, a small DeepLabV3 that learns the generated scenes, and the real DeepLabV3-ResNet50 config on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from downstream.datasets import synthetic
from downstream.datasets.cityscapes import TRAIN_CLASSES, CityscapesPool
from downstream.datasets.voc import VOCPool
from downstream.tasks.segmentation import CityscapesSegmentationTask, pixel_losses
from downstream.tasks.segmentation_models import DeepLabV3ResNet50, SmallDeepLabV3
from downstream.tasks.segmentation_transforms import SegmentationTransform
from geal.api.task import TaskError
from tests.conftest import set_up
from tests.test_configs import compose_root


@pytest.fixture(autouse=True)
def single_thread():
    """Run torch on one thread: these small models gain little from a second one, and on a shared 2-core
    machine OpenMP threads stall each other (the small SSD fit: 10x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: official label id → train id of the classes the generator draws (cityscapesScripts' labels.py)
OFFICIAL = {0: 255, 1: 255, 7: 0, 8: 1, 11: 2, 17: 5, 20: 7, 21: 8, 23: 10, 24: 11, 26: 13}


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> synthetic.GeneratedDataset:
    return synthetic.make_cityscapes(tmp_path_factory.mktemp("city"), n_train=32, n_val=8, seed=0)


def test_train_ids_follow_the_official_mapping(city: synthetic.GeneratedDataset) -> None:
    assert len(TRAIN_CLASSES) == 19
    assert TRAIN_CLASSES[:3] == ("road", "sidewalk", "building") and TRAIN_CLASSES[-1] == "bicycle"
    pool = CityscapesPool(city.root)
    for i in (0, 5):
        label_ids = np.asarray(Image.open(pool.label_path(i)))
        train_ids = pool.train_ids(i)
        assert train_ids.shape == label_ids.shape == (64, 128) and train_ids.dtype == np.uint8
        assert set(np.unique(label_ids).tolist()) <= set(OFFICIAL)
        for label_id, train_id in OFFICIAL.items():
            assert (train_ids[label_ids == label_id] == train_id).all()
    assert (pool.train_ids(0)[-2:] == 255).all()  # the ego vehicle's bonnet is ignored


def test_crop_and_scale_move_labels_with_the_image() -> None:
    torch.manual_seed(0)
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, :64] = (255, 0, 0)
    img[:, 64:] = (0, 0, 255)
    labels = np.zeros((64, 128), np.uint8)
    labels[:, 64:] = 1
    t = SegmentationTransform(
        True, base_size=64, crop_size=(64, 96), scale_range=(0.5, 2.0), mean=(0, 0, 0), std=(1, 1, 1)
    )
    padded = False
    for _ in range(20):
        x, y = t(Image.fromarray(img), labels)
        assert x.shape == (3, 64, 96) and y.shape == (64, 96) and y.dtype == torch.int64
        # resampling blends colours only at the red/blue border
        for cls, channel in ((0, 0), (1, 2)):  # red where the label says 0, blue where it says 1
            if (y == cls).any():
                assert (x[channel][y == cls] > 0.5).float().mean() > 0.9
        if (y == 255).any():  # padded where the scaled image is smaller than the crop: ignored, black
            padded = True
            assert (x[:, y == 255] == 0).all()
    assert padded
    x, y = SegmentationTransform(False, eval_size=32)(Image.fromarray(img), labels)
    assert x.shape == (3, 32, 64) and torch.equal(y, torch.from_numpy(labels.astype(np.int64)))


def test_pixel_losses_ignore_255() -> None:
    logits = torch.zeros(2, 4, 2, 3)  # uniform over 4 classes: -log(1/4) per labelled pixel
    target = torch.tensor([[[0, 1, 255], [2, 3, 255]], [[255] * 3, [255] * 3]])
    out = pixel_losses(logits, target, 255)
    assert out.tolist() == pytest.approx([math.log(4), 0.0])


def test_task_rejects_pools_without_label_maps(tmp_path: Path, city: synthetic.GeneratedDataset) -> None:
    voc = synthetic.make_voc(tmp_path, n07=2, n12=1, n07_test=1)
    pool = VOCPool(voc.root)
    with pytest.raises(TaskError, match=r"no label maps.*data=cityscapes"):
        set_up(CityscapesSegmentationTask(SmallDeepLabV3()), pool, pool)
    task = set_up(
        CityscapesSegmentationTask(SmallDeepLabV3()),
        CityscapesPool(city.root),
        CityscapesPool(city.root, "val"),
    )
    with pytest.raises(TaskError, match="at least 2"):
        task.fit([0])


def test_small_segmenter_learns_the_generated_scenes(city: synthetic.GeneratedDataset) -> None:
    """The cityscapes_segmentation_small config: mIoU far above predicting the majority class (~15 s)."""
    cfg = compose_root("run", "task=cityscapes_segmentation_small", "data=cityscapes")
    keys = ("base_size", "crop_size", "scale_range", "flip_p", "photometric", "eval_size", "aux_weight")
    pool, val = CityscapesPool(city.root), CityscapesPool(city.root, "val")
    task = CityscapesSegmentationTask(
        instantiate(cfg.task.model), train=dict(cfg.task.train), **{k: cfg.task[k] for k in keys}
    )
    set_up(task, pool, val)
    stats = task.fit(list(range(len(pool))))
    metrics = task.evaluate()
    labels = np.stack([val.train_ids(i) for i in range(len(val))])
    valid = labels[labels != 255]
    present = np.unique(valid)
    majority = np.bincount(valid).max() / valid.size / len(present)  # mIoU of always predicting the mode
    assert metrics["mIoU"] > max(0.25, 5 * majority), (metrics, majority)  # measured 0.39 (majority 0.04)
    for cls in ("road", "sidewalk", "sky"):  # measured 0.81, 0.86, 0.79
        assert metrics[f"IoU/{cls}"] > 0.6, metrics
    assert set(metrics) >= {"mIoU", "pixel_acc"} and "IoU/truck" not in metrics  # absent classes: no IoU
    assert math.isfinite(stats["loss"]) and stats["pixel_acc"] > 0.6


def test_real_deeplabv3_config_builds_and_trains_one_step(city: synthetic.GeneratedDataset) -> None:
    """geal/conf/task/cityscapes_segmentation.yaml's DeepLabV3-ResNet50 (random weights): one SGD step."""
    cfg = compose_root(
        "run", "task=cityscapes_segmentation", "data=cityscapes", "task.model.backbone_weights=null"
    )
    builder = instantiate(cfg.task.model)
    assert isinstance(builder, DeepLabV3ResNet50) and builder.aux_loss
    train = {**dict(cfg.task.train), "epochs": 1, "batch_size": 2, "num_workers": 0, "amp": "none"}
    val = CityscapesPool(city.root, "val")
    task = CityscapesSegmentationTask(
        builder,
        train=train,
        base_size=64,
        crop_size=[64, 96],
        scale_range=cfg.task.scale_range,
        photometric=cfg.task.photometric,
        aux_weight=cfg.task.aux_weight,
    )
    set_up(task, CityscapesPool(city.root), val)
    torch.manual_seed(0)
    before = builder(19).state_dict()
    stats = task.fit([0, 1])
    after = task.fitted_model().state_dict()
    assert math.isfinite(stats["loss"]) and stats["loss_aux"] > 0
    changed = [k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, after[k])]
    assert any(k.startswith("classifier.") for k in changed) and any(
        k.startswith("backbone.layer4") for k in changed
    )
    out = task.fitted_model()(torch.zeros(1, 3, 64, 128))
    assert out["out"].shape == (1, 19, 64, 128)
