"""The training engine of every torch task: seeding, device, AMP, optimizer/scheduler, per-epoch logging,
progress bar, atomic checkpoints and resume — written once, here.

A concrete task subclasses :class:`TorchTask` and supplies four things:

* ``build_model() -> nn.Module`` — a fresh model (called under the run's seed at the start of each fit);
* ``item_loader(train: bool) -> ItemLoader`` — a *picklable* callable ``(pool, global_id) -> dict`` that
  loads one image and its target (tensors); DataLoader workers call it;
* ``training_step(model, batch) -> StepOutput`` — the loss of one batch (``batch`` is the collated dict
  of items on the device, plus ``"ids"``: the (B,) global ids of its images);
* ``evaluate() -> {metric: value}`` — the task's metric on its test split.

Everything else comes from here: :meth:`TorchTask.fit` trains from scratch on the given global ids with
the optimizer and schedule of :class:`TrainSettings` (timm's optimizer and scheduler factories), under
autocast (``amp``: ``auto`` = bf16 where the device supports it, fp16 + grad scaling on CUDA without bf16),
logs per-epoch stats through the run logger, shows a tqdm bar, and writes an atomic checkpoint (model,
optimizer, scheduler, grad scaler, plugins, epoch, every RNG state) into ``work_dir`` every
``checkpoint_every`` epochs. The checkpoint is keyed by a fingerprint of the train ids, the settings, the
task's identity and the seed: rerunning the same fit after an interruption resumes after the last saved
epoch and ends with the same weights as an uninterrupted run; a checkpoint of other ids/settings is
ignored (with a warning if it was unfinished) and overwritten.

**Plugins** (Learn-Loss, ...; the contract is :mod:`geal.api.training`, which this engine implements):
:meth:`TorchTask.add_plugin` attaches a :class:`~geal.api.training.TrainingPlugin`, an
``nn.Module`` trained jointly with the task model (same optimizer, saved in the same checkpoint, reset to
its initial weights at every fit). Each training step the engine captures the forward outputs of the task
model's modules named in ``plugin.hooks`` and adds ``plugin.training_loss(step, captured, epoch, epochs)``
to the step's loss; ``step.per_sample_loss`` (B,) carries the true per-image losses when the task has them
(classification does; a detector may return None). :meth:`TorchTask.predict_loss` runs
``plugin.predict_loss(captured)`` over unlabeled images.

Randomness: the model is built after seeding torch/numpy/python RNGs with the run's seed; each epoch's
shuffling uses its own ``torch.Generator`` seeded from (seed, epoch), which also seeds DataLoader workers;
augmentation and dropout draw from the (seeded, checkpointed) global RNGs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import logging
import math
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from geal.api.pool import ImagePool
from geal.api.task import Task, TaskContext, TaskError, checked_train_ids
from geal.api.training import StepOutput, TrainingPlugin
from geal.util.io import atomic_write_bytes, stable_hash

log = logging.getLogger(__name__)

#: bumped when the checkpoint's layout or meaning changes (older checkpoints are then ignored)
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class TrainSettings:
    """How a torch task trains (the ``train:`` block of a task config).

    optimizer: a timm optimizer name (``sgd`` = SGD with Nesterov momentum in timm, ``momentum`` = plain
    SGD with momentum, ``adamw``, ``adam``, ``lamb``, ...; ``timm.optim.list_optimizers()``).
    scheduler: a timm scheduler (``cosine``, ``step``, ``multistep``, ``poly``, ``constant``, ``none``);
    ``decay_epochs`` (step), ``decay_milestones`` (multistep) and ``decay_rate`` shape it; ``warmup_epochs``
    ramp linearly from ``warmup_lr``. ``step_on_epochs=False`` updates the learning rate every step.
    amp: ``auto`` | ``bf16`` | ``fp16`` | ``none``. checkpoint_every: epochs between checkpoints (0: never;
    the last epoch is always saved unless 0). grad_clip: max global grad norm (None: no clipping).
    deterministic: deterministic cuDNN kernels (no autotuning) — on a GPU, what makes a resumed fit end
    with bit-identical weights; on the CPU results are deterministic either way.
    """

    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    optimizer: str = "momentum"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_epochs: float = 30
    decay_milestones: tuple[int, ...] = ()
    decay_rate: float = 0.1
    step_on_epochs: bool = True
    grad_clip: float | None = None
    amp: str = "auto"
    num_workers: int = 0
    checkpoint_every: int = 1
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("task.train: epochs, batch_size and eval_batch_size must be >= 1")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"task.train.amp must be auto, bf16, fp16 or none, got {self.amp!r}")
        if self.scheduler == "plateau":
            raise ValueError("task.train.scheduler=plateau needs a validation metric: use cosine/step/...")
        if self.checkpoint_every < 0 or self.num_workers < 0:
            raise ValueError("task.train: checkpoint_every and num_workers must be >= 0")

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any] | TrainSettings | None, where: str = "task.train"
    ) -> TrainSettings:
        """Settings from a plain mapping; an unknown key is an error naming it and the valid keys."""
        if values is None:
            return cls()
        if isinstance(values, TrainSettings):
            return values
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; valid keys: {sorted(known)}")
        kwargs = dict(values)
        if "decay_milestones" in kwargs:
            kwargs["decay_milestones"] = tuple(int(m) for m in kwargs["decay_milestones"])
        return cls(**kwargs)


def resolve_amp(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full precision); impossible asks are errors."""
    if amp == "none":
        return None
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp == "bf16" and not bf16_ok:
            raise ValueError(f"amp=bf16 but {device} does not support bf16: use amp=fp16 or amp=auto")
        return torch.float16 if amp == "fp16" or not bf16_ok else torch.bfloat16
    if device.type == "cpu":
        if amp == "fp16":
            raise ValueError("amp=fp16 needs a CUDA device: use amp=bf16, auto or none on the CPU")
        if amp == "bf16" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
        return None
    if amp in ("bf16", "fp16"):
        raise ValueError(f"amp={amp} is not supported on {device}: use amp=none")
    return None


# ------------------------------------------------------------------------------------------ data


class ItemLoader(Protocol):
    """Picklable ``(pool, global_id) -> dict of tensors/values`` (one training or evaluation item)."""

    def __call__(self, pool: ImagePool, index: int) -> dict[str, Any]: ...


class PoolItems(Dataset):
    """The items of ``ids`` (global ids of ``pool``), each ``load(pool, id)`` plus ``"ids": id``."""

    def __init__(self, pool: ImagePool, ids: Sequence[int], load: ItemLoader) -> None:
        self.pool, self.ids, self.load = pool, [int(i) for i in ids], load

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int) -> dict[str, Any]:
        gid = self.ids[position]
        return {**self.load(self.pool, gid), "ids": gid}


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) dict/list/tuple moved to ``device``; everything else as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on ``model``'s modules ``names``: their latest outputs appear in the yielded dict."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in dict.fromkeys(names):
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            known = [n for n, _ in model.named_modules() if n][:30]
            raise ValueError(
                f"plugin hook '{name}' is not a module of {type(model).__name__}; e.g. {known}"
            ) from err

        def hook(_m: nn.Module, _inp: Any, out: Any, key: str = name) -> None:
            captured[key] = out

        handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------------- RNG state


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's and python's global RNGs (dropout and augmentations draw there)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party augmentations draw from the legacy RNG
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()  # noqa: NPY002 - saved so a resumed fit continues it
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch (also seeds that epoch's DataLoader workers)."""
    gen = torch.Generator()
    gen.manual_seed(int(stable_hash({"seed": seed, "epoch": epoch}), 16) % (2**63))
    return gen


# ------------------------------------------------------------------------------------------ the task


class TorchTask(Task):
    """Base of every torch task (see the module docstring for what subclasses supply).

    Settings: ``train`` (the :class:`TrainSettings`, a mapping from the config) and ``name``. The context
    (:meth:`setup`) gives ``pool`` (the train pool: global ids index it), ``test_pool``, ``device``,
    ``work_dir`` (checkpoints), ``seed``, ``progress`` (tqdm bars) and ``logger`` (per-epoch metrics).
    Every engine task can warm-start and host training plugins (:class:`geal.api.training.PluginHost`).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"test_split"})
    provides: ClassVar[frozenset[str]] = frozenset({"warm_start", "add_plugin"})

    def __init__(self, train: Mapping[str, Any] | TrainSettings | None = None, name: str = "task") -> None:
        self.name = name
        self.settings = TrainSettings.from_mapping(train, where=f"task ({name}).train")
        self.model: nn.Module | None = None
        self.plugins = nn.ModuleList()
        self._plugin_init: list[dict[str, torch.Tensor]] = []
        #: per-epoch stats of the last fit (also restored from a checkpoint)
        self.history: list[dict[str, float]] = []
        #: metric prefix of per-epoch logs; None → ``budget_<n>/train``
        self.log_prefix: str | None = None
        #: fingerprint of the last fit (a warm-started fit is keyed by the fit it starts from)
        self._last_fit: str | None = None

    def setup(self, ctx: TaskContext) -> None:
        super().setup(ctx)
        self.pool = ctx.pool
        self.test_pool = ctx.test_pool
        self.device = torch.device(ctx.device)
        self.seed = int(ctx.seed)
        self.progress = bool(ctx.progress)
        self.logger = ctx.logger
        self.amp_dtype = resolve_amp(self.device, self.settings.amp)

    # ---- what subclasses supply

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the global RNGs are seeded just before)."""

    @abstractmethod
    def item_loader(self, train: bool) -> ItemLoader:
        """Picklable ``(pool, global_id) -> dict`` for training (augmented) or evaluation items."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        """Loss of one batch (on the device; ``batch["ids"]`` holds the global ids)."""

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        """The model's inference forward on a batch (what :meth:`predict_loss` runs before reading the
        plugin's captured features); default ``model(batch["inputs"])``."""
        return model(batch["inputs"])

    def identity(self) -> dict[str, Any]:
        """What defines the trained model besides the ids/settings/seed (part of the checkpoint key)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name}

    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] = staticmethod(default_collate)

    # ---- data

    def _loader(
        self, pool: ImagePool, ids: Sequence[int], train: bool, generator: torch.Generator | None
    ) -> DataLoader:
        s = self.settings
        return DataLoader(
            PoolItems(pool, ids, self.item_loader(train)),
            batch_size=s.batch_size if train else s.eval_batch_size,
            shuffle=train,
            generator=generator,
            num_workers=s.num_workers,
            collate_fn=type(self).collate,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )

    def train_loader(self, ids: Sequence[int], epoch: int = 0) -> DataLoader:
        """Shuffled, augmented batches of train-pool ``ids`` (epoch ``epoch``'s order)."""
        return self._loader(self.pool, ids, True, epoch_generator(self.seed, epoch))

    def eval_loader(self, ids: Sequence[int] | None = None, pool: ImagePool | None = None) -> DataLoader:
        """Batches of ``ids`` of ``pool`` (default: the train pool; ids default to all) in order, no
        augmentation."""
        pool = self.pool if pool is None else pool
        ids = range(len(pool)) if ids is None else ids
        # a fixed generator: an eval pass never draws from (and so never shifts) the global RNG
        return self._loader(pool, ids, False, torch.Generator().manual_seed(0))

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        return checked_train_ids(self.name, ids, len(self.pool))

    # ---- plugins

    def add_plugin(self, plugin: TrainingPlugin) -> None:
        """Train ``plugin`` jointly with the model from the next fit on (reset to its current weights at
        every fit)."""
        if not isinstance(plugin, TrainingPlugin):
            raise TypeError(f"{type(plugin).__name__} is not a TrainingPlugin")
        self.plugins.append(plugin)
        self._plugin_init.append(copy.deepcopy(plugin.state_dict()))
        self.provides = (
            frozenset(self.provides | {"predict_loss"}) if _overrides_predict_loss(plugin) else self.provides
        )

    def hook_outputs(self, hooks: Sequence[str], n_images: int = 2) -> dict[str, Any]:
        """The outputs of the modules named in ``hooks`` for one inference forward (:meth:`forward`, what
        :meth:`predict_loss` runs) of a fresh model over the first ``n_images`` train-pool images: no
        gradients, under a forked RNG so nothing the task does later changes."""
        n = min(n_images, len(self.pool))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model = self.build_model().to(self.device)
            model.eval()
            batch = move_to(next(iter(self.eval_loader(list(range(n))))), self.device)
            with capture_outputs(model, hooks) as captured:
                self.forward(model, batch)
        return dict(captured)

    # ---- training

    def fingerprint(self, ids: Sequence[int], warm_from: str | None = None) -> str:
        """The key of a fit: train ids, settings, task identity, seed, plugins, train pool, and for a
        warm-started fit the key of the fit whose weights it starts from."""
        return stable_hash(
            {
                **({"warm_from": warm_from} if warm_from is not None else {}),
                "ids": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest(),
                "pool": self.pool.identity()["ids_sha256"],
                "settings": dataclasses.asdict(self.settings),
                "task": self.identity(),
                "seed": self.seed,
                "plugins": [f"{type(p).__module__}.{type(p).__qualname__}" for p in self.plugins],
                "version": CHECKPOINT_VERSION,
            }
        )

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.work_dir is None else self.work_dir / CHECKPOINT_NAME

    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        """Train on these global ids (resuming a matching checkpoint); final epoch stats.

        A fresh model (and plugins reset to their initial weights) by default; ``warm_start=True`` starts
        from the previous fit's model and plugin weights instead (the active-learning cycles'
        ``reinit=false``), with a new optimizer and schedule.
        """
        ids = self.check_ids(train_ids)
        s = self.settings
        if warm_start and (self.model is None or self._last_fit is None):
            raise TaskError(f"{self.name}: warm_start=True needs an earlier fit to start from")
        previous = copy.deepcopy(self.model.state_dict()) if warm_start and self.model is not None else None
        key = self.fingerprint(ids, warm_from=self._last_fit if warm_start else None)
        seed_everything(self.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = s.deterministic
            torch.backends.cudnn.benchmark = not s.deterministic
        model = self.build_model().to(self.device)
        if previous is not None:
            model.load_state_dict(previous)
        else:
            for plugin, init in zip(self.plugins, self._plugin_init, strict=True):
                plugin.load_state_dict(init)
        self.plugins.to(self.device)
        trained = nn.ModuleDict({"model": model, "plugins": self.plugins})
        optimizer, scheduler = build_optimizer(
            trained, s, updates_per_epoch=math.ceil(len(ids) / s.batch_size)
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        start_epoch, self.history = 0, []
        state = self._load_checkpoint(key)
        if state is not None:
            model.load_state_dict(state["model"])
            self.plugins.load_state_dict(state["plugins"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            start_epoch, self.history = int(state["epoch"]), list(state["history"])
            log.info(
                "%s: resuming from %s after epoch %d of %d",
                self.name,
                self.checkpoint_path,
                start_epoch,
                s.epochs,
            )
        prefix = self.log_prefix or f"budget_{len(ids)}/train"
        hooks = [h for p in self.plugins for h in p.hooks]
        steps_per_epoch = len(self.train_loader(ids))
        bar = tqdm(
            total=s.epochs * steps_per_epoch,
            initial=start_epoch * steps_per_epoch,
            desc=f"{self.name} n={len(ids)}",
            disable=not self.progress,
            leave=False,
        )
        t_fit = time.perf_counter()
        try:
            for epoch in range(start_epoch, s.epochs):
                t0 = time.perf_counter()
                stats = self._train_epoch(trained, ids, epoch, optimizer, scheduler, scaler, hooks, bar)
                lr = float(optimizer.param_groups[0]["lr"])  # at the epoch's last step
                if scheduler is not None:
                    scheduler.step(epoch + 1)
                stats.update(
                    {
                        "epoch": float(epoch + 1),
                        "lr": lr,
                        "epoch_s": time.perf_counter() - t0,
                    }
                )
                self.history.append(stats)
                if self.logger is not None:
                    self.logger.log_metrics(stats, step=epoch + 1, prefix=prefix)
                last = epoch + 1 == s.epochs
                if s.checkpoint_every and ((epoch + 1) % s.checkpoint_every == 0 or last):
                    self._save_checkpoint(
                        key, trained, optimizer, scheduler, scaler, epoch + 1, complete=last
                    )
        finally:
            bar.close()
        model.eval()
        self.model = model
        self._last_fit = key
        final = dict(self.history[-1]) if self.history else {}
        final.pop("epoch_s", None)
        return {
            **final,
            "n_train": float(len(ids)),
            "resumed_from_epoch": float(start_epoch),
            "train_s": time.perf_counter() - t_fit,
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_epoch(
        self,
        trained: nn.ModuleDict,
        ids: list[int],
        epoch: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        hooks: list[str],
        bar: tqdm,
    ) -> dict[str, float]:
        model, s = trained["model"], self.settings
        trained.train()
        sums: dict[str, float] = {}
        seen = 0
        n_updates = epoch * math.ceil(len(ids) / s.batch_size)
        for batch in self.train_loader(ids, epoch):
            batch = move_to(batch, self.device)
            n = int(batch["ids"].shape[0])
            with self._autocast(), capture_outputs(model, hooks) as captured:
                out = self.training_step(model, batch)
                loss = out.loss
                step_stats = {"loss_task": float(out.loss.detach())} if self.plugins else {}
                for k, plugin in enumerate(self.plugins):
                    extra, pstats = plugin.training_loss(out, captured, epoch, s.epochs)
                    loss = loss + extra
                    step_stats.update({f"plugin{k}/{key}": v for key, v in pstats.items()})
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{self.name}: the training loss became {float(loss)} at epoch {epoch + 1}: lower "
                    "task.train.lr or set task.train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if s.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(trained.parameters(), s.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            n_updates += 1
            if scheduler is not None and not s.step_on_epochs:
                scheduler.step_update(n_updates)
            for key, value in {"loss": float(loss.detach()), **step_stats, **out.stats}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            seen += n
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}")
        return {k: v / max(seen, 1) for k, v in sums.items()}

    # ---- checkpoints

    def _load_checkpoint(self, key: str) -> dict[str, Any] | None:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:  # a truncated/foreign file must not stop the run
            log.warning(
                "%s: ignoring unreadable checkpoint %s (%s); training from scratch", self.name, path, err
            )
            return None
        if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != key:
            level = logging.INFO if state.get("complete") else logging.WARNING
            log.log(
                level,
                "%s: ignoring the checkpoint in %s: it belongs to another fit (other train ids, settings, "
                "seed or task; %s); it will be overwritten",
                self.name,
                path,
                "finished" if state.get("complete") else f"stopped after epoch {state.get('epoch')}",
            )
            return None
        return state

    def _save_checkpoint(
        self,
        key: str,
        trained: nn.ModuleDict,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        epoch: int,
        complete: bool,
    ) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "fingerprint": key,
            "epoch": epoch,
            "complete": complete,
            "model": trained["model"].state_dict(),
            "plugins": self.plugins.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    # ---- inference

    def fitted_model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        return self.model

    @torch.no_grad()
    def map_batches(
        self,
        fn: Callable[[nn.Module, dict[str, Any], Mapping[str, torch.Tensor]], torch.Tensor],
        ids: Sequence[int] | None = None,
        pool: ImagePool | None = None,
        capture: Sequence[str] = (),
        dropout: bool = False,
    ) -> torch.Tensor:
        """``fn(model, batch, captured) -> (B, ...)`` over ``ids`` of ``pool`` (default: the train pool),
        concatenated in ids order on the CPU as float32. Eval mode; ``dropout=True`` keeps dropout layers
        sampling (MC dropout). ``captured`` holds the outputs of the modules named in ``capture``."""
        model = self.fitted_model()
        model.eval()
        if dropout:
            for m in model.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.train()
        outs = []
        try:
            for batch in self.eval_loader(ids, pool):
                batch = move_to(batch, self.device)
                with self._autocast(), capture_outputs(model, capture) as captured:
                    outs.append(fn(model, batch, captured).float().cpu())
        finally:
            model.eval()
        return torch.cat(outs) if outs else torch.empty(0)

    def predict_loss(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids),) loss predicted by the first plugin that predicts losses."""
        for plugin in self.plugins:
            if _overrides_predict_loss(plugin):
                plugin.eval()

                def predicted(
                    m: nn.Module, b: dict[str, Any], cap: Mapping[str, Any], p: TrainingPlugin = plugin
                ) -> torch.Tensor:
                    self.forward(m, b)  # fills ``cap`` through the hooks
                    return p.predict_loss(cap)

                return self.map_batches(predicted, ids, capture=plugin.hooks)
        raise NotImplementedError(f"{self.name}: no plugin that predicts losses (add one with add_plugin)")


def _overrides_predict_loss(plugin: TrainingPlugin) -> bool:
    return type(plugin).predict_loss is not TrainingPlugin.predict_loss


def build_optimizer(
    module: nn.Module, s: TrainSettings, updates_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any]:
    """timm's optimizer (weight decay off for biases and norms) and scheduler (None for ``none``)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    try:
        optimizer = create_optimizer_v2(
            module, opt=s.optimizer, lr=s.lr, weight_decay=s.weight_decay, momentum=s.momentum
        )
    except (AssertionError, ValueError) as err:
        raise ValueError(
            f"task.train.optimizer={s.optimizer!r}: {err} (see timm.optim.list_optimizers())"
        ) from err
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=s.scheduler,
            num_epochs=s.epochs,
            decay_epochs=s.decay_epochs,
            decay_milestones=list(s.decay_milestones) or [max(s.epochs // 2, 1)],
            decay_rate=s.decay_rate,
            min_lr=s.min_lr,
            warmup_lr=s.warmup_lr,
            warmup_epochs=s.warmup_epochs,
            step_on_epochs=s.step_on_epochs,
            updates_per_epoch=updates_per_epoch,
        )
    except ValueError as err:
        raise ValueError(f"task.train.scheduler={s.scheduler!r}: {err}") from err
    return optimizer, scheduler
