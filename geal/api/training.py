"""The training-plugin contract: a module trained jointly with a task model (Learn-Loss's loss predictor).

A task whose training engine can host plugins (:class:`PluginHost`: ``downstream.tasks.engine.TorchTask``)
lists ``"add_plugin"`` in its ``provides``. A selector that needs one (``requires`` ``"task.add_plugin"``)
attaches its :class:`TrainingPlugin` in ``Selector.bind_task``; from then on every ``fit`` trains the plugin
with the task model (same optimizer and checkpoint), feeding it, at every training step, the
:class:`StepOutput` of the step and the forward outputs of the task-model modules named in
``plugin.hooks``; the task's ``predict_loss`` then runs the plugin's :meth:`TrainingPlugin.predict_loss`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class StepOutput:
    """What a training step returns.

    loss: scalar tensor to minimise. per_sample_loss: (B,) per-image losses before reduction, when the task
    has them (Learn-Loss's target). outputs: the model's raw outputs (logits, detections...). stats: floats
    averaged over the epoch's steps (e.g. ``{"acc": 0.8}``).
    """

    loss: torch.Tensor
    per_sample_loss: torch.Tensor | None = None
    outputs: Any = None
    stats: dict[str, float] = field(default_factory=dict)


class TrainingPlugin(nn.Module, ABC):
    """A module trained jointly with the task model that adds a loss term (Learn-Loss's loss predictor).

    ``hooks``: names of modules of the task model (``model.get_submodule(name)``) whose forward outputs the
    engine captures for the plugin at every training step (and in the task's ``predict_loss``).
    """

    hooks: tuple[str, ...] = ()

    @abstractmethod
    def training_loss(
        self, step: StepOutput, captured: Mapping[str, torch.Tensor], epoch: int, epochs: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss term added to the step's loss, stats) — ``epoch`` counts from 0."""

    def predict_loss(self, captured: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B,) predicted per-image loss from the captured features of a batch (eval mode)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict losses")


@runtime_checkable
class PluginHost(Protocol):
    """A set-up task that trains plugins with its model (what ``Selector.bind_task`` may rely on).

    name, seed, device: the task's name, the run's seed and the training device. plugins: the attached ones.
    """

    name: str
    seed: int
    device: torch.device
    plugins: Sequence[TrainingPlugin]

    def add_plugin(self, plugin: TrainingPlugin) -> None:
        """Train ``plugin`` jointly with the model from the next fit on (reset to its current weights at
        every fit)."""
        ...

    def hook_outputs(self, hooks: Sequence[str], n_images: int = 2) -> Mapping[str, Any]:
        """The forward outputs of the task-model modules named in ``hooks`` for one inference pass of a
        fresh model over the first ``n_images`` train-pool images (no gradients, global RNG untouched):
        what a plugin reads, e.g. to size its layers."""
        ...

    def predict_loss(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids),) loss predicted by the first attached plugin that predicts losses."""
        ...
