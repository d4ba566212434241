"""The task contract: train a task model on labeled global ids, score it on the task's own test split.

A task is built from its **settings** (its constructor keywords: the ``task:`` config, so a misspelled key
fails at once), declares what it **needs** from the run (``needs``: labels, a test split, features, box
annotations, label maps) and what it **provides** to selectors (``provides``: ``predict_proba``,
``embed``, ``warm_start``...). The run then hands it a :class:`TaskContext` once (:meth:`Task.setup`:
pools, device, work dir, seed, logger, feature sources) and calls ``fit`` once per budget, each time
**from scratch** on the given global ids of the train pool (or, with ``warm_start=True``, from the
previous fit's model), then ``evaluate``.

What a task needs is checked against the context (:meth:`Task.check_context`) before any selection work,
so a task that cannot run fails in seconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from geal.api.features import FeatureSource
from geal.api.pool import BoxAnnotatedPool, ImagePool, LabelMapPool


class TaskError(ValueError):
    """A task that cannot run on what it was given (labels missing, empty test split, ...)."""


def checked_train_ids(task_name: str, ids: Sequence[int], pool_size: int) -> list[int]:
    """``ids`` as a list of ints after the checks every training task makes: at least one, each a global id
    of the pool (0 ≤ id < ``pool_size``), none repeated; a TaskError naming ``task_name`` otherwise."""
    out = [int(i) for i in ids]
    if not out:
        raise TaskError(f"{task_name}: nothing to train on (0 ids)")
    bad = [i for i in out if not 0 <= i < pool_size]
    if bad:
        raise TaskError(f"{task_name}: global ids {bad[:5]} are outside the pool ({pool_size} images)")
    if len(set(out)) != len(out):
        raise TaskError(f"{task_name}: the train ids repeat")
    return out


class MetricsLogger(Protocol):
    """What tasks and the run loop log through (:class:`geal.report.loggers.base.RunLogger` fits)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None: ...

    def log_summary(self, values: dict[str, Any]) -> None: ...


#: what a task may list in ``needs``, and what each asks of the context
NEEDS = {
    "labels": "per-image class labels in the train and test pools",
    "test_split": "a non-empty test pool (task.test_data)",
    "features": "the backbone's feature sources of the train and test pools",
    "boxes": "box annotations in the train and test pools (geal.api.pool.BoxAnnotatedPool)",
    "label_maps": "per-pixel label maps in the train and test pools (geal.api.pool.LabelMapPool)",
}


@dataclass(frozen=True)
class TaskContext:
    """What the run gives a task (:meth:`Task.setup`).

    pool:          the train pool (global ids index it).
    test_pool:     the task's test split (``task.test_data``), or None.
    device:        where the task trains.
    work_dir:      the task's folder in the run dir (checkpoints); None: keep nothing on disk.
    seed:          the run's seed.
    progress:      show progress bars.
    logger:        the run logger (per-epoch metrics), or None.
    features:      the feature source of ``pool`` (the backbone's cached features), when the task needs them.
    test_features: the feature source of ``test_pool``, likewise.
    """

    pool: ImagePool
    test_pool: ImagePool | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    work_dir: Path | None = None
    seed: int = 0
    progress: bool = True
    logger: MetricsLogger | None = None
    features: FeatureSource | None = None
    test_features: FeatureSource | None = None


class Task(ABC):
    """Base class of every downstream task.

    ``needs`` (a subset of :data:`NEEDS`) says what :meth:`setup` requires of the context; ``provides`` names
    the optional methods a task implements (``"embed"``, ``"predict_proba"``, ``"predict_loss"``,
    ``"add_plugin"``) and ``"warm_start"`` when ``fit(ids, warm_start=True)`` works, so that a selector or a
    schedule needing one fails at start-up, not after a training round.

    ``work_dir``: where the current fit may keep files (checkpoints). :meth:`setup` sets it to the context's;
    the run loop then points it at one sub-folder per training, so a rerun finds each fit's checkpoint.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    work_dir: Path | None = None

    def check_context(self, ctx: TaskContext) -> None:
        """Raise a TaskError naming the fix when ``ctx`` lacks something this task needs (cheap: no images
        are read). The run calls it before any selection work; :meth:`setup` calls it again."""
        name = str(getattr(self, "name", type(self).__name__))
        unknown = sorted(self.needs - set(NEEDS))
        if unknown:
            raise TaskError(f"task {name} declares unknown needs {unknown}; known: {sorted(NEEDS)}")
        if "test_split" in self.needs:
            if ctx.test_pool is None:
                raise TaskError(f"task {name} needs a test split: set task.test_data (a pool config)")
            if len(ctx.test_pool) == 0:
                raise TaskError(f"the test split of task {name} ({ctx.test_pool.name}) is empty")
        pools = [("train", ctx.pool), *([("test", ctx.test_pool)] if ctx.test_pool is not None else [])]
        for role, pool in pools:
            if "labels" in self.needs and pool.labels is None:
                raise TaskError(
                    f"task {name} needs labels, but pool '{pool.name}' has none: use a labeled dataset "
                    "(class folders, MNIST, Pets) or another task"
                )
            if "boxes" in self.needs and not isinstance(pool, BoxAnnotatedPool):
                raise TaskError(
                    f"{name}: the {role} pool '{pool.name}' ({type(pool).__name__}) has no box "
                    "annotations: use a VOC pool (data=voc0712)"
                )
            if "label_maps" in self.needs and not isinstance(pool, LabelMapPool):
                raise TaskError(
                    f"{name}: the {role} pool '{pool.name}' ({type(pool).__name__}) has no label maps: "
                    "use a Cityscapes pool (data=cityscapes)"
                )
        if "features" in self.needs and (
            ctx.features is None or (ctx.test_pool is not None and ctx.test_features is None)
        ):
            raise TaskError(f"task {name} needs the backbone's features of its pools; the context has none")

    def setup(self, ctx: TaskContext) -> None:
        """Receive the run's context, once, before the first fit. Subclasses extend it (calling this first)
        to take what they need from the context (pools, device, features...)."""
        self.check_context(ctx)
        self.work_dir = ctx.work_dir

    @abstractmethod
    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        """Train a fresh model on these global ids of the train pool (``warm_start``: start from the
        previous fit's model; only tasks that list ``"warm_start"`` in ``provides``); final training stats."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Score the last fitted model on the task's test split: {metric: value}."""

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids), D) features of train-pool images under the current model."""
        raise NotImplementedError(f"{type(self).__name__} does not provide embed()")

    def predict_loss(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids),) predicted (or true) per-image loss under the current model."""
        raise NotImplementedError(f"{type(self).__name__} does not provide predict_loss()")
