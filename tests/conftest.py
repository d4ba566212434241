"""Shared fixtures: a small in-memory pool and a tiny random ViT whose calls are counted."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from geal.api.pool import ImagePool
from geal.api.task import Task, TaskContext
from geal.features.backbones.base import Backbone
from geal.features.backbones.vit import TimmViT

TINY_VIT = {
    "name": "tiny_vit",
    "model_name": "vit_tiny_patch16_224",
    "resolution": 32,
    "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
    "init_seed": 0,
}


class SquaresPool(ImagePool):
    """n deterministic RGB images: textured background + one coloured square whose colour is the label."""

    name = "squares"

    def __init__(self, n: int, size: int = 32, seed: int = 0, broken: Sequence[int] = ()) -> None:
        self.n, self.size, self.seed, self.broken = n, size, seed, set(broken)

    @property
    def ids(self) -> Sequence[str]:
        return [f"sq_{i:04d}" for i in range(self.n)]

    @property
    def labels(self) -> Sequence[int]:
        return [i % 3 for i in range(self.n)]

    def load(self, index: int) -> Image.Image:
        if index in self.broken:
            raise OSError(f"cannot decode image {self.source(index)}: simulated corrupt file")
        rng = np.random.default_rng(self.seed * 100_003 + index)
        img = rng.integers(0, 60, (self.size, self.size, 3), dtype=np.uint8)
        colour = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]][index % 3], dtype=np.uint8)
        s = self.size // 3
        y, x = rng.integers(0, self.size - s, 2)
        img[y : y + s, x : x + s] = colour
        return Image.fromarray(img)

    def source(self, index: int) -> str:
        return f"/virtual/squares/{self.ids[index]}.png"


class CountingFactory:
    """Builds the tiny ViT and counts constructions and images seen; can fail after some batches."""

    def __init__(self, fail_after_batches: int | None = None) -> None:
        self.builds = 0
        self.images = 0
        self.batches = 0
        self.fail_after_batches = fail_after_batches

    def __call__(self) -> Backbone:
        self.builds += 1
        model = TimmViT(**TINY_VIT)
        original = model.extract

        def counted(images: torch.Tensor, *args, **kwargs):
            if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
                raise KeyboardInterrupt("simulated interruption")
            self.batches += 1
            self.images += images.shape[0]
            return original(images, *args, **kwargs)

        model.extract = counted  # type: ignore[method-assign]
        return model


@pytest.fixture
def squares() -> SquaresPool:
    return SquaresPool(24)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``slow`` tests unless they were asked for (``-m slow``) or GEAL_RUN_SLOW=1, and ``openmmlab``
    tests unless asked for (``-m openmmlab``, what ``make test-openmmlab`` runs, or GEAL_RUN_OPENMMLAB=1).
    Asked-for OpenMMLab tests without mmdet / mmseg installed are an error, never a silent skip."""
    marks = config.getoption("-m") or ""
    if "slow" not in marks and os.environ.get("GEAL_RUN_SLOW") != "1":
        skip = pytest.mark.skip(reason="slow (minutes on 2 CPU cores): run with -m slow or GEAL_RUN_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    wanted = "openmmlab" in marks and "not openmmlab" not in marks
    if wanted or os.environ.get("GEAL_RUN_OPENMMLAB") == "1":
        if any("openmmlab" in item.keywords for item in items):
            try:
                import mmdet  # noqa: F401
                import mmseg  # noqa: F401
            except ImportError as err:
                raise pytest.UsageError(
                    f"the openmmlab tests need mmdet and mmseg ({err}): make openmmlab"
                ) from err
        return
    skip = pytest.mark.skip(reason="OpenMMLab backend (mmcv build, minutes): make test-openmmlab")
    for item in items:
        if "openmmlab" in item.keywords:
            item.add_marker(skip)


def set_up(task: Task, pool: ImagePool, test_pool: ImagePool | None = None, **context: Any) -> Any:
    """``task`` after ``task.setup`` with a context of these pools (no progress bars unless asked)."""
    task.setup(TaskContext(pool=pool, test_pool=test_pool, **{"progress": False, **context}))
    return task
