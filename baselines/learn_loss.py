"""Learn-Loss — "Learning Loss for Active Learning" (Yoo & Kweon, CVPR 2019).

A small **loss-prediction module** is trained jointly with the task model: it reads intermediate features
of the task model (one per level: global average pooling → FC → ReLU), concatenates them and predicts the
task's per-image loss with a final linear layer. It is trained with the paper's pairwise margin ranking loss
(the batch is split into pairs; for a pair with true losses ``l_i > l_j`` the prediction must satisfy
``p_i - p_j ≥ ξ``), added to the task loss with weight λ. After ``stop_grad_epoch`` epochs the features
fed to the module are detached, so its gradient no longer reaches the task model (120 of 200 epochs in the
reference protocol). Selection: the ``budget`` images of highest predicted loss among a random subset of
``candidates`` (M = 10,000) unlabeled images.

It runs as a training plugin (:class:`geal.api.training.TrainingPlugin`) of a task that hosts plugins
(:class:`geal.api.training.PluginHost`: the torch engine's tasks, which provide ``add_plugin``): the
selector attaches the module to the task once (``bind_task``, called by the run loop after the task is set
up), the engine trains it with the task model in every ``fit`` (same optimizer and checkpoint, reset each
fit), and the task's ``predict_loss`` evaluates it. It works with every engine task whose ``training_step``
returns per-image losses (``StepOutput.per_sample_loss``): the classifiers (``small_cnn``: hooks
``block1..block3``; timm ResNets: ``layer1..layer4``) and a detector that exposes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from baselines.acquisition import top_uncertain, unlabeled_candidates
from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, SelectionError, Selector
from geal.api.training import PluginHost, StepOutput, TrainingPlugin

log = logging.getLogger(__name__)


def global_pool(feature: Any, name: str) -> torch.Tensor:
    """A captured feature → (B, C): mean over space for (B, C, H, W), over tokens for (B, N, C)."""
    if not isinstance(feature, torch.Tensor):
        raise ValueError(
            f"Learn-Loss hook '{name}' outputs a {type(feature).__name__}, not a tensor: hook a module that "
            "returns one feature map (selector.hooks)"
        )
    if feature.ndim == 4:
        return feature.mean(dim=(2, 3))
    if feature.ndim == 3:
        return feature.mean(dim=1)
    if feature.ndim == 2:
        return feature
    raise ValueError(f"Learn-Loss hook '{name}' outputs shape {tuple(feature.shape)}: expected 2-4 dims")


def margin_ranking_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The paper's loss-prediction loss (as in its reference code): pair image ``i`` with image ``B-1-i``
    (first half of the batch against the flipped second half); for each pair, with ``s = sign(l_i - l_j)``,
    ``max(0, ξ - s · (p_i - p_j))``, averaged over pairs. (B,) predicted, (B,) true losses → scalar.
    An odd batch drops its last image; fewer than two images give 0."""
    n = (len(predicted) // 2) * 2
    if n < 2:
        return predicted.sum() * 0.0
    p, t = predicted[:n].float(), target[:n].detach().float()
    half = n // 2
    dp = (p - p.flip(0))[:half]
    dt = (t - t.flip(0))[:half]
    sign = 2 * torch.sign(torch.clamp(dt, min=0)) - 1  # +1 where l_i > l_j, else -1
    return torch.clamp(margin - sign * dp, min=0).sum() / half


class LossPredictionModule(TrainingPlugin):
    """(B,) predicted loss from the task model's features at ``hooks`` (channels ``channels``).

    Per level: GAP → Linear(C_k, hidden) → ReLU; concatenated → Linear(hidden · levels, 1).
    stop_grad_epoch: from this (0-based) epoch on, the features are detached (None: ``stop_grad_fraction``
    of the fit's epochs, rounded). weight: λ, the weight of the ranking loss; margin: ξ.
    """

    def __init__(
        self,
        hooks: Sequence[str],
        channels: Sequence[int],
        hidden: int = 128,
        margin: float = 1.0,
        weight: float = 1.0,
        stop_grad_epoch: int | None = None,
        stop_grad_fraction: float = 0.6,
    ) -> None:
        super().__init__()
        if len(hooks) != len(channels) or not hooks:
            raise ValueError(f"Learn-Loss needs one channel count per hook, got {hooks} and {channels}")
        self.hooks = tuple(hooks)
        self.levels = nn.ModuleList(nn.Sequential(nn.Linear(int(c), hidden), nn.ReLU()) for c in channels)
        self.head = nn.Linear(hidden * len(channels), 1)
        self.margin, self.weight = float(margin), float(weight)
        self.stop_grad_epoch, self.stop_grad_fraction = stop_grad_epoch, float(stop_grad_fraction)

    def forward(self, captured: Mapping[str, Any], detach: bool = False) -> torch.Tensor:
        feats = []
        for name, level in zip(self.hooks, self.levels, strict=True):
            if name not in captured:
                raise ValueError(f"Learn-Loss: no output captured for hook '{name}' (selector.hooks)")
            f = global_pool(captured[name], name)
            feats.append(level(f.detach() if detach else f))
        return self.head(torch.cat(feats, dim=1)).squeeze(1)

    def detach_from(self, epochs: int) -> int:
        """The first epoch whose features are detached."""
        if self.stop_grad_epoch is not None:
            return int(self.stop_grad_epoch)
        return round(self.stop_grad_fraction * epochs)

    def training_loss(
        self, step: StepOutput, captured: Mapping[str, torch.Tensor], epoch: int, epochs: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if step.per_sample_loss is None:
            raise ValueError(
                "Learn-Loss needs the task's per-image losses, but its training_step returns no "
                "per_sample_loss: use a task that provides them (the classifiers do)"
            )
        detach = epoch >= self.detach_from(epochs)
        predicted = self(captured, detach=detach)
        rank = margin_ranking_loss(predicted, step.per_sample_loss, self.margin)
        return self.weight * rank, {"loss_prediction": float(rank.detach()), "detached": float(detach)}

    def predict_loss(self, captured: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(captured)


def hooked_channels(task: PluginHost, hooks: Sequence[str]) -> list[int]:
    """The channel count of each hooked module's output, read from one inference forward of a fresh task
    model on two pool images (:meth:`geal.api.training.PluginHost.hook_outputs`)."""
    captured = task.hook_outputs(hooks, n_images=2)
    out = []
    for name in hooks:
        if name not in captured:
            raise ValueError(f"Learn-Loss hook '{name}' was not called by the task model's forward")
        out.append(int(global_pool(captured[name], name).shape[1]))
    return out


class LearnLossSelector(Selector):
    """Learn-Loss (see the module docstring). In cycles its initial set is drawn at random.

    hooks: module names of the task model whose outputs feed the loss predictor (``small_cnn``:
    ``[block1, block2, block3]``; timm ResNet: ``[layer1, layer2, layer3, layer4]``). hidden: width per level
    (128). margin ξ and weight λ of the ranking loss (1, 1). stop_grad_epoch / stop_grad_fraction: when the
    predictor stops sending gradients to the task model (epoch 120 of 200 = 0.6). candidates: M, the random
    subset of unlabeled images scored per cycle (10,000; null: all).
    """

    #: the task hosts the loss predictor (and then predicts losses with it)
    requires: ClassVar[frozenset[str]] = frozenset({"task.add_plugin"})
    cold_start: ClassVar[bool] = False

    def __init__(
        self,
        name: str = "learn_loss",
        hooks: Sequence[str] = ("block1", "block2", "block3"),
        hidden: int = 128,
        margin: float = 1.0,
        weight: float = 1.0,
        stop_grad_epoch: int | None = None,
        stop_grad_fraction: float = 0.6,
        candidates: int | None = 10000,
    ) -> None:
        if not hooks:
            raise ValueError("selector.hooks is empty: name the task-model modules Learn-Loss reads")
        if not 0.0 <= stop_grad_fraction <= 1.0:
            raise ValueError(f"selector.stop_grad_fraction must be in [0, 1], got {stop_grad_fraction}")
        self.name = name
        self.hooks = [str(h) for h in hooks]
        self.hidden, self.margin, self.weight = int(hidden), float(margin), float(weight)
        self.stop_grad_epoch, self.stop_grad_fraction = stop_grad_epoch, float(stop_grad_fraction)
        self.candidates = candidates
        self.module: LossPredictionModule | None = None

    def bind_task(self, task: Any) -> None:
        """Attach the loss-prediction module to the (set-up) task's engine (once per task)."""
        if not isinstance(task, PluginHost):
            raise ValueError(
                f"selector {self.name} trains a loss predictor jointly with the task model, but task "
                f"{getattr(task, 'name', type(task).__name__)} is not a torch-engine task (no add_plugin): "
                "use small_cnn, pets_classification, or another TorchTask"
            )
        if self.module is not None and any(p is self.module for p in task.plugins):
            return
        channels = hooked_channels(task, self.hooks)
        devices = [task.device] if task.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # initial weights from the task's seed (every fit
            torch.manual_seed(int(task.seed))  # resets the module to them)
            self.module = LossPredictionModule(
                self.hooks,
                channels,
                self.hidden,
                self.margin,
                self.weight,
                self.stop_grad_epoch,
                self.stop_grad_fraction,
            )
        task.add_plugin(self.module)
        log.info(
            "%s: loss predictor on %s (channels %s) attached to %s",
            self.name,
            self.hooks,
            channels,
            task.name,
        )

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        if ctx.task is None or self.module is None:
            raise SelectionError(
                f"selector {self.name} needs a task trained with its loss predictor: run it in cycles "
                "(geal-run cycles=demo), not in geal-select"
            )
        ids = unlabeled_candidates(len(pool), ctx, budget, self.candidates)
        predicted = torch.as_tensor(ctx.task.predict_loss(ids.tolist())).double().flatten()
        selection = top_uncertain(ids, predicted, budget)
        selection.info.update(
            {
                "n_candidates": len(ids),
                "mean_predicted_loss_candidates": float(predicted.mean()),
                "mean_predicted_loss_picked": float(torch.tensor(selection.scores).mean()),
            }
        )
        return selection
