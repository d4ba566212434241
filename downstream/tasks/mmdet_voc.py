"""Object detection on PASCAL VOC with mmdetection (``task=mmdet_voc_ssd300``): the paper's released SSD300
config trained by mmdet's runner on the selected images (:mod:`downstream.tasks.openmmlab`).

The selection reaches mmdet as files, never as dataset indices: for each VOC year in the selection the
fit writes ``<fit work dir>/selection/VOC<year>/ImageSets/Main/train.txt`` (the selected ids of that year,
in selection order) and points one ``VOCDataset`` child per year at it (``ann_file``, absolute;
``data_root`` = the pool's VOCdevkit), under the config's ``RepeatDataset`` / ``ConcatDataset`` wrappers.
(mmengine's ``indices`` would index the list *after* ``filter_cfg`` drops images without objects, so they
would shift.) mmdet's ``filter_cfg`` (the config's: images without any object are skipped) applies to the
selection as it would to a full list; ``n_loaded`` in the fit stats and ``loaded_ids.txt`` in the fit's
work dir say which selected images the dataset holds. The test pool is written the same way
(``selection/test/...``), so evaluation runs on exactly the task's test split.

:meth:`MMDetVOCTask.evaluate` runs mmdet's test loop with two metrics on the same predictions: mmdet's
``VOCMetric`` (``mmdet/mAP``) and the framework's VOC07 metric (:class:`~downstream.metrics.voc_ap.
VOCDetectionMetric`: ``mAP`` and ``AP/<class>``); both use VOC's box convention, so they agree
(tests/test_openmmlab.py checks it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from downstream.datasets.folder import write_lines
from downstream.metrics.voc_ap import VOCDetectionMetric
from downstream.tasks import openmmlab_compat as compat
from downstream.tasks.openmmlab import OpenMMLabTask
from geal.api.pool import BoxAnnotatedPool, ImagePool
from geal.api.task import TaskContext, TaskError

log = logging.getLogger(__name__)

_WRAPPERS = ("RepeatDataset", "ClassBalancedDataset")


def legacy_to_continuous(boxes: np.ndarray) -> np.ndarray:
    """mmdet's VOC boxes (0-based inclusive corners, ``x2 - x1 + 1`` wide: its legacy convention) as the
    framework's continuous ``(x0, y0, x1, y1)`` (:mod:`downstream.metrics.voc_ap`): the far corner + 1.
    Under this shift the two IoU formulas give the same value."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] += 1.0
    return out


@functools.cache
def register_voc_metric() -> str:
    """Register ``GealVOCMetric`` (the framework's VOC07 metric as an mmengine metric) in mmdet's METRICS."""
    from mmdet.registry import METRICS
    from mmengine.evaluator import BaseMetric

    class GealVOCMetric(BaseMetric):
        """:class:`VOCDetectionMetric` over mmdet's test predictions (results: ``mAP``, ``AP/<class>``)."""

        default_prefix = "geal"

        def __init__(self, iou_threshold: float = 0.5, ap_method: str = "11point", **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.settings: dict[str, Any] = {"iou_threshold": iou_threshold, "ap_method": ap_method}

        def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
            for sample in data_samples:
                gt, ignored, pred = (
                    sample["gt_instances"],
                    sample["ignored_instances"],
                    sample["pred_instances"],
                )
                n_gt, n_ign = len(gt["labels"]), len(ignored["labels"])
                self.results.append(
                    {
                        "boxes": legacy_to_continuous(pred["bboxes"].cpu().numpy()),
                        "scores": pred["scores"].cpu().numpy(),
                        "labels": pred["labels"].cpu().numpy(),
                        "gt_boxes": legacy_to_continuous(
                            np.concatenate([gt["bboxes"].cpu().numpy(), ignored["bboxes"].cpu().numpy()])
                        ),
                        "gt_labels": np.concatenate(
                            [gt["labels"].cpu().numpy(), ignored["labels"].cpu().numpy()]
                        ),
                        "gt_difficult": np.r_[np.zeros(n_gt, bool), np.ones(n_ign, bool)],
                    }
                )

        def compute_metrics(self, results: list) -> dict[str, float]:
            metric = VOCDetectionMetric(list(self.dataset_meta["classes"]), **self.settings)
            for r in results:
                metric.update(
                    torch.from_numpy(r["boxes"]),
                    torch.from_numpy(r["scores"]),
                    torch.from_numpy(r["labels"]),
                    torch.from_numpy(r["gt_boxes"]),
                    torch.from_numpy(r["gt_labels"]),
                    torch.from_numpy(r["gt_difficult"]),
                )
            return metric.compute()

    METRICS.register_module(name="GealVOCMetric", module=GealVOCMetric, force=True)
    return "GealVOCMetric"


def _inner(node: Any) -> Any:
    """The dataset config under the wrapper datasets (RepeatDataset ...), i.e. a VOCDataset or a Concat."""
    while node.get("type") in _WRAPPERS:
        node = node["dataset"]
    return node


def _template(node: Any, where: str) -> Any:
    inner = _inner(node)
    if inner.get("type") == "ConcatDataset":
        inner = inner["datasets"][0]
    if inner.get("type") != "VOCDataset":
        raise TaskError(
            f"{where}: expected a VOCDataset (under Repeat/Concat wrappers), got {inner.get('type')}"
        )
    return inner


class MMDetVOCTask(OpenMMLabTask):
    """mmdet (SSD300 by default) on the selected VOC images, scored on VOC2007 test (module docstring).

    config / overrides / backbone_weights / log_interval: see :class:`~downstream.tasks.openmmlab.
    OpenMMLabTask`; ``backbone_weights`` replaces the backbone's ``init_cfg`` (a local file of mmdet's VGG16
    ``vgg16_caffe`` checkpoint, an ``open-mmlab://`` address when online, or null: random).
    iou_threshold / ap_method: the framework's metric (VOC07: 0.5, ``11point``).
    """

    package: ClassVar[str] = "mmdet"
    needs: ClassVar[frozenset[str]] = frozenset({"test_split", "boxes"})

    def __init__(
        self,
        config: str = "pascal_voc/ssd300_voc0712.py",
        overrides: dict[str, Any] | None = None,
        name: str = "mmdet_voc_ssd300",
        backbone_weights: str | None = "open-mmlab://vgg16_caffe",
        log_interval: int = 50,
        iou_threshold: float = 0.5,
        ap_method: str = "11point",
    ) -> None:
        super().__init__(config, overrides, name, backbone_weights, log_interval)
        self.metric_settings: dict[str, Any] = {"iou_threshold": float(iou_threshold), "ap_method": ap_method}
        VOCDetectionMetric([], **self.metric_settings)  # validates the metric settings

    def check_context(self, ctx: TaskContext) -> None:
        super().check_context(ctx)
        pools = [ctx.pool, *([ctx.test_pool] if ctx.test_pool is not None else [])]
        for pool in pools:
            if not hasattr(pool, "years") or not hasattr(pool, "annotation_path"):
                raise TaskError(f"{self.name}: pool '{pool.name}' is not a VOC pool (data=voc0712)")

    def setup(self, ctx: TaskContext) -> None:
        super().setup(ctx)
        assert isinstance(ctx.pool, BoxAnnotatedPool)
        self.class_names = list(ctx.pool.object_classes)

    # ---- the config

    def write_lists(self, pool: ImagePool, ids: Sequence[int], out: Path) -> dict[str, Path]:
        """``out/VOC<year>/ImageSets/Main/train.txt`` per year of ``ids`` ({year: file}); every id's JPEG
        and XML must exist under the pool's VOCdevkit (else a TaskError naming the first missing id)."""
        years: dict[str, list[str]] = {}
        root = self.devkit(pool)
        for g in ids:
            year, image_id = pool.years[g], pool.ids[g]  # type: ignore[attr-defined]
            for path in (root / f"VOC{year}" / "JPEGImages" / f"{image_id}.jpg", pool.annotation_path(g)):  # type: ignore[attr-defined]
                if not Path(path).is_file():
                    raise TaskError(
                        f"{self.name}: image id '{image_id}' (VOC{year}) is missing from the dataset: "
                        f"no {path}"
                    )
            years.setdefault(year, []).append(image_id)
        return {
            year: write_lines(out / f"VOC{year}" / "ImageSets" / "Main" / "train.txt", names)
            for year, names in sorted(years.items())
        }

    @staticmethod
    def devkit(pool: ImagePool) -> Path:
        return Path(pool._root)  # type: ignore[attr-defined]  # VOCPool's VOCdevkit folder

    def voc_datasets(self, template: Any, pool: ImagePool, lists: dict[str, Path], test_mode: bool) -> Any:
        import copy

        children = []
        for year, ann_file in lists.items():
            child = copy.deepcopy(template)
            child.data_root = str(self.devkit(pool))
            child.ann_file = str(ann_file.resolve())
            child.data_prefix = {"sub_data_root": f"VOC{year}/"}
            if test_mode:
                child.test_mode = True
            children.append(child)
        if len(children) == 1:
            return children[0]
        return {"type": "ConcatDataset", "ignore_keys": ["dataset_type"], "datasets": children}

    def configure_data(self, cfg: Any, ids: Sequence[int], fit_dir: Path) -> None:
        assert self.test_pool is not None
        train_lists = self.write_lists(self.pool, ids, fit_dir / "selection")
        test_lists = self.write_lists(
            self.test_pool, range(len(self.test_pool)), fit_dir / "selection" / "test"
        )
        node = cfg.train_dataloader.dataset
        template = _template(node, "train_dataloader.dataset")
        built = self.voc_datasets(template, self.pool, train_lists, test_mode=False)
        if node.get("type") in _WRAPPERS:
            parent = node
            while parent["dataset"].get("type") in _WRAPPERS:
                parent = parent["dataset"]
            parent["dataset"] = built
        else:
            cfg.train_dataloader.dataset = built
        template = _template(cfg.test_dataloader.dataset, "test_dataloader.dataset")
        cfg.test_dataloader.dataset = self.voc_datasets(template, self.test_pool, test_lists, test_mode=True)
        voc = {"type": "VOCMetric", "metric": "mAP", "eval_mode": "11points", "prefix": "mmdet"}
        cfg.test_evaluator = [voc, {"type": register_voc_metric(), **self.metric_settings}]

    def configure_model(self, cfg: Any) -> None:
        compat.apply_ssd_compat(cfg.model)
        cfg.model.backbone.init_cfg = compat.backbone_init(self.backbone_weights, "task.backbone_weights")
        cfg.model.pop("pretrained", None)

    def loaded_ids(self, dataset: Any) -> list[str]:
        while hasattr(dataset, "dataset"):  # RepeatDataset / ClassBalancedDataset
            dataset = dataset.dataset
        parts = dataset.datasets if hasattr(dataset, "datasets") else [dataset]
        return [str(part.get_data_info(i)["img_id"]) for part in parts for i in range(len(part))]

    # ---- evaluation

    def evaluate(self) -> dict[str, float]:
        """``mAP`` and ``AP/<class>`` (the framework's VOC07 metric) and ``mmdet/mAP`` (mmdet's VOCMetric),
        on the test split, from one pass of mmdet's test loop."""
        raw = self.test_metrics()
        out = {k.removeprefix("geal/"): v for k, v in raw.items() if k.startswith("geal/")}
        out["mmdet/mAP"] = raw["mmdet/mAP"]
        return out
