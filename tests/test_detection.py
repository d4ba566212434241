"""VOC detection: annotation reading, SSD augmentation, per-image SSD losses, the instance analysis, a small
SSD that learns the generated shapes, and the real SSD300-VGG16 config on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision.models.detection.ssd import SSD
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from downstream.datasets import synthetic
from downstream.datasets.cityscapes import CityscapesPool
from downstream.datasets.voc import VOC_CLASSES, VOCPool, read_voc_xml
from downstream.tasks.detection import VOCDetectionTask
from downstream.tasks.detection_models import SSD300VGG16, SmallSSD
from downstream.tasks.detection_transforms import SSDTransform
from downstream.tasks.instance_stats import class_count_matrix, instance_statistics
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


SHAPES4 = [
    "aeroplane",
    "car",
    "horse",
    "train",
]  # red ellipse, blue rectangle, green triangle, yellow diamond


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> synthetic.GeneratedDataset:
    return synthetic.make_voc(tmp_path_factory.mktemp("voc"), n07=10, n12=6, n07_test=4, seed=1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> synthetic.GeneratedDataset:
    """120 train / 40 test images of 4 well-separated shape classes (1–2 objects, some empty/difficult)."""
    return synthetic.make_voc(
        tmp_path_factory.mktemp("shapes"),
        n07=120,
        n12=0,
        n07_test=40,
        seed=0,
        classes=SHAPES4,
        max_objects=2,
        width_range=(100, 140),
        height_range=(90, 120),
        object_scale=(0.3, 0.6),
        max_overlap=0.1,
        empty_every=8,
        difficult_rate=0.1,
    )


def test_annotations_read_back_as_generated(voc: synthetic.GeneratedDataset) -> None:
    pool = VOCPool(voc.root)
    assert list(pool.object_classes) == list(VOC_CLASSES)
    anns = pool.annotations()
    assert len(anns) == len(pool) == 16
    for image_id, ann in zip(pool.ids, anns, strict=True):
        objs = voc.objects[image_id]
        assert [VOC_CLASSES[k] for k in ann.labels] == [o.name for o in objs]
        expected = [[o.xmin - 1, o.ymin - 1, o.xmax, o.ymax] for o in objs]  # continuous pixel frame
        assert ann.boxes.reshape(-1, 4).tolist() == expected
        assert ann.difficult.tolist() == [o.difficult for o in objs]
        assert (ann.width, ann.height) == pool.load(pool.index_of([image_id])[0]).size
    assert any(len(a) == 0 for a in anns) and any(a.difficult.any() for a in anns)
    # the devkit's per-class lists: 1 = a non-difficult object, 0 = only difficult ones, -1 = none
    main = voc.root / "VOC2007" / "ImageSets" / "Main"
    for cls in ("aeroplane", "dog"):
        for line in (main / f"{cls}_trainval.txt").read_text().splitlines():
            image_id, flag = line.split()
            objs = [o for o in voc.objects[image_id] if o.name == cls]
            assert int(flag) == (-1 if not objs else 1 if any(not o.difficult for o in objs) else 0)


def test_bad_annotation_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.xml"
    bad.write_text(
        "<annotation><size><width>10</width><height>10</height></size><object><name>unicorn</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(ValueError, match=r"x\.xml.*unicorn"):
        read_voc_xml(bad)
    bad.write_text("<annotation><size><width>10</width>")
    with pytest.raises(ValueError, match=r"cannot read VOC annotation .*x\.xml"):
        read_voc_xml(bad)


def test_ssd_augmentation_moves_boxes_with_the_object() -> None:
    torch.manual_seed(0)
    img = np.full((120, 200, 3), 128, np.uint8)
    img[30:70, 50:110] = (255, 0, 0)  # one red object; box (50, 30, 110, 70)
    t = SSDTransform(300, train=True, photometric=False, expand_max=4.0, expand_p=0.5)
    seen_crop = seen_expand = False
    for _ in range(30):
        x, boxes, labels = t(Image.fromarray(img), np.array([[50, 30, 110, 70]], np.float32), np.array([3]))
        assert x.shape == (3, 300, 300) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        if len(boxes) == 0:
            continue  # the crop may leave the object out: the box is dropped with it
        assert labels.tolist() == [3]
        x0, y0, x1, y1 = boxes[0].round().int().tolist()
        inside = x[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
        # the pixels inside the returned box are the red object's
        assert (
            inside.numel()
            and (inside[0] > 0.9).float().mean() > 0.95
            and (inside[1] < 0.1).float().mean() > 0.95
        )
        area = (x1 - x0) * (y1 - y0)
        seen_expand |= area < 0.5 * 300 * 300 * (60 * 40) / (200 * 120)
        seen_crop |= area > 1.5 * 300 * 300 * (60 * 40) / (200 * 120)
    assert seen_expand and seen_crop
    # evaluation only resizes: the box scales with the image
    _, boxes, _ = SSDTransform(300)(
        Image.fromarray(img), np.array([[50, 30, 110, 70]], np.float32), np.array([3])
    )
    assert boxes.tolist() == [[75.0, 75.0, 165.0, 175.0]]


def test_per_image_losses_sum_to_torchvision_ssd_loss() -> None:
    torch.manual_seed(0)
    ours = SmallSSD(size=64, widths=(8, 16, 16, 16, 16))(num_classes=4)
    ref = SSD(
        ours.backbone,
        ours.anchor_generator,
        (64, 64),
        4,
        image_mean=ours.transform.image_mean,
        image_std=ours.transform.image_std,
    )
    ref.load_state_dict(ours.state_dict())
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4, 30, 40], [30, 10, 60, 50]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
        {"boxes": torch.tensor([[10.0, 20, 50, 60]]), "labels": torch.tensor([2])},
    ]
    torch.manual_seed(1)
    mine = {name: value.detach() for name, value in ours(images, targets).items()}
    torch.manual_seed(1)
    theirs = {name: value.detach() for name, value in ref(images, targets).items()}
    assert float(mine["bbox_regression"]) == pytest.approx(float(theirs["bbox_regression"]), rel=1e-5)
    assert float(mine["classification"]) == pytest.approx(float(theirs["classification"]), rel=1e-5)
    per_image = mine["per_image"]
    assert per_image.shape == (3,) and float(per_image[1]) == 0.0 and bool((per_image[[0, 2]] > 0).all())
    total = float(theirs["bbox_regression"] + theirs["classification"])
    assert float(per_image.sum()) == pytest.approx(total, rel=1e-5)


def test_instance_statistics_known_answer() -> None:
    counts = class_count_matrix(
        [np.array([0, 0, 1]), np.array([], np.int64), np.array([2]), np.array([1])], 3
    )
    assert counts.tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]]
    out = instance_statistics(counts, [0, 2], ["a", "b", "c"])
    # selection: 3 + 1 objects; random 2 of 4 images: 2 × 5/4 = 2.5 expected, class a 2 × 2/4 = 1
    assert out["selection/instances"] == 4 and out["random/instances"] == 2.5
    assert out["selection/instances_ratio"] == pytest.approx(1.6)
    assert out["selection/class/a"] == 2 and out["random/class/a"] == 1.0
    assert out["selection/class/b"] == 1 and out["random/class/b"] == 1.0
    assert out["selection/empty_images"] == 0 and out["random/empty_images"] == 0.5
    assert out["selection/classes_covered"] == 3
    with pytest.raises(ValueError, match="global ids"):
        instance_statistics(counts, [4], ["a", "b", "c"])


def test_task_rejects_a_pool_without_boxes(tmp_path: Path) -> None:
    synthetic.make_cityscapes(tmp_path / "city", n_train=2, n_val=1)
    city = CityscapesPool(tmp_path / "city")
    with pytest.raises(TaskError, match=r"no box annotations.*data=voc0712"):
        set_up(VOCDetectionTask(SmallSSD()), city, city)


def small_task(shapes: synthetic.GeneratedDataset, **train: object) -> VOCDetectionTask:
    cfg = compose_root("run", "task=voc_detection_small", "data=voc0712")
    model = instantiate(cfg.task.model)
    settings = {**dict(cfg.task.train), **train}
    pool = VOCPool(shapes.root, sets=[["2007", "trainval"]])
    test = VOCPool(shapes.root, sets=[["2007", "test"]], name="voc07_test")
    keys = ("photometric", "expand_max", "expand_p", "min_iou_crop", "flip_p", "warmup_iters", "ap_method")
    task = VOCDetectionTask(model, train=settings, **{k: cfg.task[k] for k in keys})
    return set_up(task, pool, test)


def test_small_detector_learns_the_generated_shapes(shapes: synthetic.GeneratedDataset) -> None:
    """The voc_detection_small config (96×96 SSD, 10 epochs): mAP@0.5 ≥ 0.5 on held-out images (~20 s)."""
    task = small_task(shapes)
    ids = list(range(len(task.pool)))
    stats = task.fit(ids)
    metrics = task.evaluate()
    assert set(metrics) == {"mAP", *(f"AP/{c}" for c in SHAPES4)}
    assert metrics["mAP"] >= 0.5, metrics
    assert all(metrics[f"AP/{c}"] > 0.2 for c in SHAPES4), metrics
    # the instance analysis of the selection rides along with the fit stats
    n_objects = sum(len(shapes.objects[i]) for i in task.pool.ids)
    assert stats["selection/instances"] == n_objects == stats["random/instances"]
    assert stats["selection/class/car"] == sum(
        o.name == "car" for i in task.pool.ids for o in shapes.objects[i]
    )
    assert stats["selection/class/dog"] == 0 and stats["selection/classes_covered"] == 4
    assert math.isfinite(stats["loss"]) and stats["loss_box"] > 0


def test_real_ssd300_config_builds_and_trains_one_step(
    voc: synthetic.GeneratedDataset, tmp_path: Path
) -> None:
    """geal/conf/task/voc_detection.yaml's SSD300-VGG16 (random weights) takes one SGD step on CPU; a local
    VGG16 weights file is loaded into its backbone."""
    cfg = compose_root("run", "task=voc_detection", "data=voc0712", "task.model.backbone_weights=null")
    builder = instantiate(cfg.task.model)
    assert isinstance(builder, SSD300VGG16) and builder.size == 300
    train = {**dict(cfg.task.train), "epochs": 1, "batch_size": 2, "num_workers": 0, "amp": "none"}
    pool = VOCPool(voc.root)
    task = VOCDetectionTask(builder, train=train, warmup_iters=cfg.task.warmup_iters)
    set_up(task, pool, VOCPool(voc.root, sets=[["2007", "test"]]))
    ids = [i for i in range(len(pool)) if len(pool.annotation(i))][:2]
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in builder(21).state_dict().items()}
    stats = task.fit(ids)
    after = task.fitted_model().state_dict()
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0
    changed = [k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, after[k])]
    assert any(k.startswith("head.classification_head") for k in changed)
    assert any(k.startswith("backbone.features") for k in changed)

    # a local file with VGG16's conv layers (the classifier may be absent) becomes the SSD backbone's start
    features = make_layers(vgg_cfgs["D"])
    path = tmp_path / "vgg16_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    loaded = SSD300VGG16(backbone_weights=str(path))(21)
    assert torch.equal(loaded.backbone.features[0].weight, features[0].weight)
    assert torch.equal(loaded.backbone.features[21].weight, features[21].weight)  # conv4_3
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        SSD300VGG16(backbone_weights=str(tmp_path / "missing.pth"))(21)


def test_warmup_is_counted_in_iterations_whatever_the_budget(
    voc: synthetic.GeneratedDataset, tmp_path: Path
) -> None:
    """warmup_iters=4 with 3 updates per epoch: the lr ramps linearly per iteration, then the multistep
    milestone (epoch 2 = update 6) divides it by 10. Items load in a DataLoader worker; a second fit of the
    same ids finds the finished checkpoint and trains nothing."""
    pool = VOCPool(voc.root)
    train = {
        "epochs": 3,
        "batch_size": 2,
        "optimizer": "momentum",
        "lr": 1e-3,
        "warmup_lr": 1e-6,
        "scheduler": "multistep",
        "decay_milestones": [2],
        "decay_rate": 0.1,
        "amp": "none",
        "checkpoint_every": 1,
        "num_workers": 1,
    }
    task = VOCDetectionTask(
        SmallSSD(size=64, widths=(8, 8, 8, 8)), train=train, warmup_iters=4, instance_stats=False
    )
    set_up(task, pool, VOCPool(voc.root, sets=[["2007", "test"]]), work_dir=tmp_path)
    task.fit(list(range(6)))
    lrs = [h["lr"] for h in task.history]
    assert lrs == pytest.approx([1e-6 + 3 * (1e-3 - 1e-6) / 4, 1e-4, 1e-4])
    assert task.settings.warmup_epochs == pytest.approx(4 / 3) and not task.settings.step_on_epochs
    weights = {k: v.clone() for k, v in task.fitted_model().state_dict().items()}
    again = task.fit(list(range(6)))
    assert again["resumed_from_epoch"] == 3
    assert all(torch.equal(v, task.fitted_model().state_dict()[k]) for k, v in weights.items())
