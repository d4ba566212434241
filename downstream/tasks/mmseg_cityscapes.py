"""Semantic segmentation on Cityscapes with mmsegmentation (``task=mmseg_cityscapes_deeplabv3``):
DeepLabV3 R50-D8 (mmseg 1.x's 512×1024 Cityscapes config) trained by mmseg's runner on the selected images
(:mod:`downstream.tasks.openmmlab`).

The selection reaches mmseg as its ``ann_file``: ``<fit work dir>/selection/train.txt`` lists the selected
images relative to ``leftImg8bit/train`` without the suffix (``aachen/aachen_000000_000019``), in selection
order. mmseg reads ``*_gtFine_labelTrainIds.png`` maps, which the official archives do not contain (the
cityscapesScripts make them): when the dataset folder lacks them, they are generated once from the
``_gtFine_labelIds.png`` maps with the official label-id → train-id table (:data:`downstream.datasets.
cityscapes.TRAIN_ID_LUT`) into ``<cache_dir>/cityscapes_labelTrainIds/<dataset digest>/gtFine/<split>/``,
never into the dataset folder, and mmseg's ``seg_map_path`` points there. The test pool (val) is written
and mapped the same way, so evaluation runs on exactly the task's test split.

:meth:`MMSegCityscapesTask.evaluate` runs mmseg's test loop with mmseg's ``IoUMetric`` (``mmseg/mIoU``, as a
fraction) and the framework's :class:`~downstream.metrics.miou.SegmentationIoU` (``mIoU``, ``pixel_acc``,
``IoU/<class>``) on the same predictions.

The paper's Cityscapes numbers came from another code base; this task is the paper's protocol on mmseg.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from downstream.datasets.cityscapes import IGNORE_INDEX
from downstream.datasets.folder import write_lines
from downstream.metrics.miou import SegmentationIoU
from downstream.tasks import openmmlab_compat as compat
from downstream.tasks.openmmlab import OpenMMLabTask
from geal.api.pool import ImagePool, LabelMapPool
from geal.api.task import TaskContext, TaskError

log = logging.getLogger(__name__)

IMG_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


@functools.cache
def register_iou_metric() -> str:
    """Register ``GealIoUMetric`` (the framework's mIoU as an mmengine metric) in mmseg's METRICS."""
    import torch
    from mmengine.evaluator import BaseMetric
    from mmseg.registry import METRICS

    class GealIoUMetric(BaseMetric):
        """:class:`SegmentationIoU` over mmseg's test predictions (``mIoU``, ``pixel_acc``, ``IoU/<c>``)."""

        default_prefix = "geal"

        def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
            for sample in data_samples:
                pred = sample["pred_sem_seg"]["data"].squeeze().cpu()
                gt = sample["gt_sem_seg"]["data"].squeeze().cpu()
                classes = list(self.dataset_meta["classes"])
                one = SegmentationIoU(len(classes), classes, IGNORE_INDEX)
                one.update(pred, gt.to(pred.dtype))
                self.results.append(one.matrix.clone())

        def compute_metrics(self, results: list) -> dict[str, float]:
            classes = list(self.dataset_meta["classes"])
            metric = SegmentationIoU(len(classes), classes, IGNORE_INDEX)
            metric.matrix = torch.stack(results).sum(0)
            return metric.compute()

    METRICS.register_module(name="GealIoUMetric", module=GealIoUMetric, force=True)
    return "GealIoUMetric"


def _set_transform(pipeline: Sequence[Any], kind: str, **values: Any) -> int:
    """Set ``values`` on every transform of type ``kind`` in ``pipeline``; how many were changed."""
    n = 0
    for t in pipeline:
        if t.get("type") == kind:
            t.update(values)
            n += 1
    return n


class MMSegCityscapesTask(OpenMMLabTask):
    """mmseg (DeepLabV3 R50-D8 by default) on the selected Cityscapes images, scored on val (see the
    module docstring).

    config / overrides / backbone_weights / log_interval: see :class:`~downstream.tasks.openmmlab.
    OpenMMLabTask`; ``backbone_weights``: a local ResNet-50 V1c checkpoint (mmseg's
    ``open-mmlab://resnet50_v1c``), that address when online, or null (random).
    cache_dir: where the generated ``labelTrainIds`` maps go. crop_size (h, w): training crop (and the
    data preprocessor's pad size); scale (long, short): the resize scale of training (``RandomResize``,
    times 0.5–2) and testing (``Resize``).
    """

    package: ClassVar[str] = "mmseg"
    needs: ClassVar[frozenset[str]] = frozenset({"test_split", "label_maps"})

    def __init__(
        self,
        config: str = "deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py",
        overrides: dict[str, Any] | None = None,
        name: str = "mmseg_cityscapes_deeplabv3",
        backbone_weights: str | None = "open-mmlab://resnet50_v1c",
        log_interval: int = 50,
        cache_dir: str | os.PathLike[str] | None = None,
        crop_size: Sequence[int] = (512, 1024),
        scale: Sequence[int] = (2048, 1024),
    ) -> None:
        super().__init__(config, overrides, name, backbone_weights, log_interval)
        if len(crop_size) != 2 or len(scale) != 2 or min(*crop_size, *scale) < 1:
            raise TaskError(f"{name}: crop_size and scale are two positive sizes, got {crop_size}, {scale}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (int(scale[0]), int(scale[1]))
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()

    def check_context(self, ctx: TaskContext) -> None:
        super().check_context(ctx)
        for pool in [ctx.pool, *([ctx.test_pool] if ctx.test_pool is not None else [])]:
            if not hasattr(pool, "cities") or not hasattr(pool, "split"):
                raise TaskError(f"{self.name}: pool '{pool.name}' is not a Cityscapes pool (data=cityscapes)")

    # ---- label maps and lists

    @staticmethod
    def root(pool: ImagePool) -> Path:
        return Path(pool._root)  # type: ignore[attr-defined]  # CityscapesPool's root

    def train_id_folder(self, pool: ImagePool, ids: Sequence[int]) -> Path:
        """The folder holding ``<city>/<id>_gtFine_labelTrainIds.png`` of ``ids``: the dataset's own
        ``gtFine/<split>`` when it has them all, else the cache's copy, generated where missing."""
        split = pool.split  # type: ignore[attr-defined]
        own = self.root(pool) / "gtFine" / split
        rel = [f"{pool.cities[g]}/{pool.ids[g]}{TRAIN_IDS_SUFFIX}" for g in ids]  # type: ignore[attr-defined]
        if all((own / r).is_file() for r in rel):
            return own
        if self.cache_dir is None:
            raise TaskError(
                f"{self.name}: the dataset has no *{TRAIN_IDS_SUFFIX} maps and task.cache_dir is not set"
            )
        digest = hashlib.sha256(str(self.root(pool).resolve()).encode()).hexdigest()[:12]
        folder = self.cache_dir / "cityscapes_labelTrainIds" / digest / "gtFine" / split
        made = 0
        assert isinstance(pool, LabelMapPool)
        for g, r in zip(ids, rel, strict=True):
            path = folder / r
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            Image.fromarray(np.asarray(pool.train_ids(g), dtype=np.uint8)).save(tmp, format="PNG")
            os.replace(tmp, path)
            made += 1
        if made:
            log.info("%s: wrote %d %s train-id maps into %s", self.name, made, split, folder)
        return folder

    def write_list(self, pool: ImagePool, ids: Sequence[int], path: Path) -> Path:
        """mmseg's ann_file of ``ids`` (``<city>/<id>`` a line); each image must exist (else a TaskError
        naming the first missing id)."""
        split = pool.split  # type: ignore[attr-defined]
        lines = []
        for g in ids:
            city, image_id = pool.cities[g], pool.ids[g]  # type: ignore[attr-defined]
            image = self.root(pool) / "leftImg8bit" / split / city / f"{image_id}{IMG_SUFFIX}"
            if not image.is_file():
                raise TaskError(f"{self.name}: image id '{image_id}' is missing from the dataset: no {image}")
            lines.append(f"{city}/{image_id}")
        return write_lines(path, lines)

    # ---- the config

    def dataset(self, node: Any, pool: ImagePool, ids: Sequence[int], list_file: Path) -> None:
        if node.get("type") != "CityscapesDataset":
            raise TaskError(
                f"{self.name}: expected a CityscapesDataset in the config, got {node.get('type')}"
            )
        ann_file = self.write_list(pool, ids, list_file)
        node.data_root = str(self.root(pool).resolve())
        node.ann_file = str(ann_file.resolve())
        node.data_prefix = {
            "img_path": f"leftImg8bit/{pool.split}",  # type: ignore[attr-defined]
            "seg_map_path": str(self.train_id_folder(pool, ids).resolve()),
        }

    def configure_data(self, cfg: Any, ids: Sequence[int], fit_dir: Path) -> None:
        assert self.test_pool is not None
        self.dataset(cfg.train_dataloader.dataset, self.pool, ids, fit_dir / "selection" / "train.txt")
        test = range(len(self.test_pool))
        self.dataset(cfg.test_dataloader.dataset, self.test_pool, test, fit_dir / "selection" / "test.txt")
        train_pipeline = cfg.train_dataloader.dataset.pipeline
        _set_transform(train_pipeline, "RandomResize", scale=self.scale)
        _set_transform(train_pipeline, "RandomCrop", crop_size=self.crop_size)
        _set_transform(cfg.test_dataloader.dataset.pipeline, "Resize", scale=self.scale)
        iou = {"type": "IoUMetric", "iou_metrics": ["mIoU"], "prefix": "mmseg"}
        cfg.test_evaluator = [iou, {"type": register_iou_metric()}]

    def configure_model(self, cfg: Any) -> None:
        n = compat.replace_sync_bn(cfg.model)
        if n:
            log.info("%s: %d SyncBN layers → BN (single process)", self.name, n)
        cfg.model.data_preprocessor.size = self.crop_size
        cfg.model.pop("pretrained", None)
        cfg.model.backbone.init_cfg = compat.backbone_init(self.backbone_weights, "task.backbone_weights")

    def loaded_ids(self, dataset: Any) -> list[str]:
        names = [Path(dataset.get_data_info(i)["img_path"]).name for i in range(len(dataset))]
        return [n.removesuffix(IMG_SUFFIX) for n in names]

    # ---- evaluation

    def evaluate(self) -> dict[str, float]:
        """``mIoU``, ``pixel_acc``, ``IoU/<class>`` (the framework's metric, fractions) and ``mmseg/mIoU``
        (mmseg's IoUMetric, as a fraction: mmseg reports percent rounded to 0.01), on the test split."""
        raw = self.test_metrics()
        out = {k.removeprefix("geal/"): v for k, v in raw.items() if k.startswith("geal/")}
        out["mmseg/mIoU"] = raw["mmseg/mIoU"] / 100.0
        return out
