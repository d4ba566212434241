"""The OpenMMLab tasks without the OpenMMLab extra (the default install): they build from their settings, and
a run using one stops before any selection work with one line saying how to install the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from downstream.datasets import synthetic
from downstream.datasets.voc import VOCPool
from downstream.tasks.mmdet_voc import MMDetVOCTask
from downstream.tasks.mmseg_cityscapes import MMSegCityscapesTask
from geal.api.task import TaskContext, TaskError


def test_without_mmdet_the_context_check_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthetic.make_voc(tmp_path, n07=4, n12=2, n07_test=2, seed=0)
    pool = VOCPool(tmp_path / "VOCdevkit")
    test = VOCPool(tmp_path / "VOCdevkit", sets=[["2007", "test"]], name="voc07_test")
    monkeypatch.setitem(sys.modules, "mmdet", None)  # as if not installed
    task = MMDetVOCTask(backbone_weights=None)
    with pytest.raises(
        TaskError, match=r"^mmdet_voc_ssd300 needs mmdet .*: install the OpenMMLab extra: `make openmmlab`"
    ):
        task.check_context(TaskContext(pool=pool, test_pool=test))


def test_settings_are_checked_at_construction(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="crop_size and scale are two positive sizes"):
        MMSegCityscapesTask(crop_size=(0, 64), cache_dir=tmp_path)
    with pytest.raises(TaskError, match="log_interval must be >= 1"):
        MMDetVOCTask(log_interval=0)
    with pytest.raises(ValueError):
        MMDetVOCTask(ap_method="101point")
