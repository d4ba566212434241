"""The task contract: train a task model on labeled global ids, score it on the task's own test split.

A task is built once per run with everything it needs (pools, features, device, a work dir) and then
``fit`` is called once per budget, each time **from scratch** on the given global ids of the train pool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch


class Task(ABC):
    """Base class of every downstream task.

    ``provides`` names the optional methods a task implements (``"embed"``, ``"predict_loss"``), so that a
    selector needing one fails at start-up, not after a training round.
    """

    provides: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Validate the task's config (its constructor keywords) before any work: raise on a bad nested
        setting the constructor would only reject later. Default: nothing beyond the keyword names."""
        return None

    @abstractmethod
    def fit(self, train_ids: Sequence[int]) -> dict[str, float]:
        """Train a fresh model on these global ids of the train pool; return final training stats."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Score the last fitted model on the task's test split: {metric: value}."""

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids), D) features of train-pool images under the current model."""
        raise NotImplementedError(f"{type(self).__name__} does not provide embed()")

    def predict_loss(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids),) predicted (or true) per-image loss under the current model."""
        raise NotImplementedError(f"{type(self).__name__} does not provide predict_loss()")


class TaskError(ValueError):
    """A task that cannot run on what it was given (labels missing, empty test split, ...)."""
