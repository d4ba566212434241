"""The OpenMMLab backend: tasks that train and evaluate with an mmengine ``Runner`` (mmdetection,
mmsegmentation) on exactly the selected images of the run's pool.

Each fit composes the OpenMMLab config from the task's settings (Hydra): the base config file
(``config``, a file of the library's shipped configs or a path), then ``overrides`` (a nested mapping merged
into it: nested dicts key by key, lists whole), then what the run decides itself: the datasets (the
selection, written as list files into the fit's work dir, see the subclasses), the work dir
(``<fit work dir>/openmmlab``), the seed, and the backbone weights (``backbone_weights``: a local file, an
``open-mmlab://`` address when online, or null). The composed config is saved beside the checkpoints
(``openmmlab/config.py``).

Resume: a fit whose work dir holds checkpoints of the same selection and config continues from the latest
one (mmengine's ``resume``); a finished fit is not retrained, its final checkpoint is loaded. Training
losses and the learning rate reach the run's logger every ``log_interval`` iterations (prefix
``budget_<n>/train``), so they land in csv / wandb / tensorboard like the other tasks' per-epoch stats.

mmdet / mmseg are an optional extra (``make openmmlab``); the task classes import them only when set up, so
the configs compose and the default install runs without them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from downstream.tasks import openmmlab_compat as compat
from geal.api.task import MetricsLogger, Task, TaskContext, TaskError, checked_train_ids

log = logging.getLogger(__name__)

#: the fit record in each fit's work dir (selection + config digest, finished or not)
FIT_RECORD = "openmmlab_fit.json"


def metrics_hook(logger: MetricsLogger | None, prefix: str, interval: int, record: dict[str, float]) -> Any:
    """An mmengine hook that forwards the training losses and learning rate every ``interval`` iterations
    to ``logger`` (step = iteration) and keeps the last values in ``record``."""
    from mmengine.hooks import Hook

    class ForwardMetrics(Hook):
        priority = "LOW"

        def before_train(self, runner: Any) -> None:
            record["start_iter"] = float(runner.iter)  # > 0 after a resume

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None):
            step = int(runner.iter) + 1
            values = {
                k: float(v.detach()) if torch.is_tensor(v) else float(v)
                for k, v in (outputs or {}).items()
                if torch.is_tensor(v) or isinstance(v, float)
            }
            values["lr"] = float(runner.optim_wrapper.get_lr()["lr"][0])
            values["iter"] = float(step)
            record.update(values)
            if logger is not None and (step % interval == 0 or step == runner.max_iters):
                logger.log_metrics(values, step=step, prefix=prefix)

    return ForwardMetrics()


def _no_serialize(node: Any) -> None:
    """``serialize_data=False`` on every leaf dataset config (those with an ``ann_file``) under ``node``."""
    if isinstance(node, dict):
        if "ann_file" in node:
            node["serialize_data"] = False
        for value in node.values():
            _no_serialize(value)
    elif isinstance(node, list):
        for value in node:
            _no_serialize(value)


class OpenMMLabTask(Task):
    """Base of the OpenMMLab tasks (see the module docstring). Subclasses set ``package`` and fill the
    datasets of the config (:meth:`configure_data`), read back which images the built datasets hold
    (:meth:`loaded_ids`) and turn the runner's test metrics into the task's (:meth:`evaluate`)."""

    package: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset({"test_split"})
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        config: str,
        overrides: Mapping[str, Any] | None = None,
        name: str = "openmmlab",
        backbone_weights: str | None = None,
        log_interval: int = 50,
    ) -> None:
        if not config:
            raise TaskError(f"{name}: set the OpenMMLab config file (task.config)")
        if log_interval < 1:
            raise TaskError(f"{name}: log_interval must be >= 1, got {log_interval}")
        self.name = name
        self.config = str(config)
        self.overrides: dict[str, Any] = dict(overrides or {})
        self.backbone_weights = None if backbone_weights is None else str(backbone_weights)
        self.log_interval = int(log_interval)
        self.runner: Any = None
        #: the ids (names) the last fit's OpenMMLab training dataset loaded, in dataset order
        self.last_loaded: list[str] = []
        #: extra mmengine hooks registered on every training runner (tests interrupt through one)
        self.extra_hooks: list[Any] = []

    def check_context(self, ctx: TaskContext) -> None:
        """The context's needs, and the OpenMMLab packages installed (before any selection work)."""
        super().check_context(ctx)
        compat.require(self.package, task=self.name)

    def setup(self, ctx: TaskContext) -> None:
        super().setup(ctx)
        self.pool = ctx.pool
        self.test_pool = ctx.test_pool
        self.device = torch.device(ctx.device)
        self.seed = int(ctx.seed)
        self.logger = ctx.logger
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # mmengine trains on the current CUDA device
        elif self.device.type == "cpu" and torch.cuda.is_available():
            log.warning("%s: device=cpu, but mmengine's runner trains on the visible GPU", self.name)

    # ---- what subclasses supply

    @abstractmethod
    def configure_data(self, cfg: Any, ids: Sequence[int], fit_dir: Path) -> None:
        """Point ``cfg``'s train / val / test datasets at the selected ``ids`` of the train pool and at the
        whole test pool (list files written under ``fit_dir``); check every selected image is there."""

    @abstractmethod
    def configure_model(self, cfg: Any) -> None:
        """Model-side settings of ``cfg`` (backbone weights, compatibility fixes)."""

    @abstractmethod
    def loaded_ids(self, dataset: Any) -> list[str]:
        """The image ids (pool names) a built training dataset holds, in order."""

    # ---- config

    def base_config(self) -> Any:
        from mmengine.config import Config

        return Config.fromfile(str(compat.config_file(self.config, self.package)))

    def compose(self, ids: Sequence[int], fit_dir: Path) -> Any:
        """The full OpenMMLab config of a fit on ``ids`` (see the module docstring)."""
        cfg = compat.merged(self.base_config(), self.overrides)
        self.configure_data(cfg, ids, fit_dir)
        self.configure_model(cfg)
        cfg.work_dir = str(fit_dir / "openmmlab")
        cfg.randomness = {"seed": self.seed, "deterministic": False}
        cfg.launcher = "none"
        # no validation during training: the run evaluates each fit on the test split (evaluate())
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
        for loader in ("train_dataloader", "test_dataloader"):
            if not cfg[loader].get("num_workers"):
                cfg[loader].persistent_workers = False  # torch refuses persistent workers without workers
        return cfg

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        return checked_train_ids(self.name, ids, len(self.pool))

    # ---- training

    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        """Train with the OpenMMLab runner on these global ids (resuming the fit's checkpoints)."""
        if warm_start:
            raise TaskError(f"{self.name}: the OpenMMLab tasks train from scratch (no warm_start)")
        ids = self.check_ids(train_ids)
        if self.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="geal-openmmlab-")
            self.work_dir = Path(self._tmp.name)
        fit_dir = Path(self.work_dir)
        fit_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.compose(ids, fit_dir)
        mm_dir = Path(cfg.work_dir)
        digest = hashlib.sha256(
            (",".join(self.pool.ids[i] for i in ids) + "\n" + cfg.pretty_text).encode()
        ).hexdigest()
        record_path = fit_dir / FIT_RECORD
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        if record.get("digest") != digest and mm_dir.exists():
            log.info(
                "%s: %s holds another selection's or config's training: starting afresh", self.name, mm_dir
            )
            shutil.rmtree(mm_dir)
            record = {}
        mm_dir.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps({"digest": digest, "complete": False}))
        cfg.dump(str(mm_dir / "config.py"))

        from mmengine.runner import Runner, find_latest_checkpoint

        finished = (
            record.get("complete") and record.get("checkpoint") and Path(record["checkpoint"]).is_file()
        )
        latest = find_latest_checkpoint(str(mm_dir))
        cfg.resume = bool(latest) and not finished
        cfg.load_from = record["checkpoint"] if finished else None
        cfg.experiment_name = f"{self.name}_n{len(ids)}_{time.strftime('%Y%m%d_%H%M%S')}_{digest[:8]}"
        if cfg.get("visualizer"):
            # mmengine keeps one Visualizer per name for the process: the configs' fixed name would make a
            # later fit reuse the first fit's (writing into its, possibly removed, work dir)
            cfg.visualizer.name = cfg.experiment_name
        prefix = f"budget_{len(ids)}/train"
        last: dict[str, float] = {}
        t0 = time.perf_counter()
        with compat.trusted_checkpoints(mm_dir):
            runner = Runner.from_cfg(cfg)
            from mmengine.registry import DATASETS  # builds in the runner's default scope (mmdet / mmseg)

            probe = copy.deepcopy(cfg.train_dataloader.dataset)
            _no_serialize(probe)  # mmengine cannot serialise an empty list; check_loaded says what happened
            self.last_loaded = self.loaded_ids(DATASETS.build(probe))
            (fit_dir / "loaded_ids.txt").write_text("".join(f"{x}\n" for x in self.last_loaded))
            self.check_loaded(ids)
            if finished:
                log.info(
                    "%s: the fit on %d images is complete: loading %s", self.name, len(ids), cfg.load_from
                )
                runner.load_or_resume()
                end = start = int(record.get("iters", 0))
                last.update(record.get("stats", {}))
            else:
                runner.register_hook(
                    metrics_hook(self.logger, prefix, self.log_interval, last), priority="LOW"
                )
                for hook in self.extra_hooks:
                    runner.register_hook(hook)
                if latest:
                    log.info("%s: resuming from %s", self.name, latest)
                runner.train()
                end, start = int(runner.iter), int(last.get("start_iter", 0))
        latest = find_latest_checkpoint(str(mm_dir))
        self.runner = runner
        stats = {k: v for k, v in last.items() if k not in ("iter", "start_iter")}
        record_path.write_text(
            json.dumps(
                {"digest": digest, "complete": True, "checkpoint": latest, "iters": end, "stats": stats}
            )
        )
        return {
            **stats,
            "iters": float(end),
            "resumed_from_iter": float(start),
            "n_train": float(len(ids)),
            "n_loaded": float(len(self.last_loaded)),
            "train_s": time.perf_counter() - t0,
        }

    def check_loaded(self, ids: Sequence[int]) -> None:
        """The training dataset holds only selected images (and says which selected ones it filtered)."""
        selected = [self.pool.ids[i] for i in ids]
        extra = sorted(set(self.last_loaded) - set(selected))
        if extra:
            raise TaskError(
                f"{self.name}: the OpenMMLab dataset loaded images outside the selection: {extra[:5]}"
            )
        if not self.last_loaded:
            raise TaskError(
                f"{self.name}: the OpenMMLab dataset kept none of the {len(ids)} selected images (its "
                "filter_cfg drops images without annotations): select more images"
            )
        dropped = len(set(selected) - set(self.last_loaded))
        if dropped:
            log.info(
                "%s: the OpenMMLab dataset filtered %d of the %d selected images",
                self.name,
                dropped,
                len(ids),
            )

    def test_metrics(self) -> dict[str, float]:
        """The runner's test loop on the test pool with the last fitted model: {metric: value}."""
        if self.runner is None:
            raise TaskError(f"{self.name}: evaluate() before fit()")
        return {k: float(v) for k, v in self.runner.test().items()}
