"""Command-line entry points (the only module that sees a Hydra ``DictConfig``).

``geal-select``: build the pool → (extract features if the selector needs them and they are not cached) →
select → write selection.json, the id list, the native split file and run_info.json into Hydra's run dir.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from geal.api.pool import ImagePool
from geal.api.selector import SelectionContext, Selector
from geal.api.task import Task
from geal.features.extract import ExtractionSettings
from geal.features.provider import FeatureProvider
from geal.report.loggers.base import RunLogger
from geal.report.tables import ReportOptions, report
from geal.run.device_lease import DeviceSlot, cuda_slots, current_lease, lease_device, set_current_lease
from geal.run.loop import CycleSchedule, run_cycles
from geal.run.outputs import load_selection, read_labeled_ids, run_selection
from geal.run.schemas import POOL_RUN_KEYS, TASK_RUN_KEYS, check_target_kwargs, register_schemas
from geal.run.training import check_budgets, selection_hash, train_on_budgets, write_metrics
from geal.util.distributed import init_from_env as init_distributed_from_env
from geal.util.io import atomic_write_json
from geal.util.resources import sha256_file

#: the Hydra config root (the repository's conf/; the package is installed editable, see README)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

log = logging.getLogger("geal")
register_schemas()


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available, else cpu; an explicit unavailable device is an error with the fix.

    In a job holding a device lease (:class:`DeviceLeaseCallback`), ``auto`` and ``cuda`` are the leased
    device, so parallel jobs of a sweep never share a GPU."""
    lease = current_lease()
    if lease is not None and name in ("auto", "cuda", lease.device):
        return torch.device(lease.device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but CUDA is not available here: use device=cpu or device=auto")
    return device


class DeviceLeaseCallback(Callback):
    """``hydra.callbacks.device_lease``: a job on CUDA (``device`` auto / cuda / cuda:N) first leases a
    device slot (geal.run.device_lease), so parallel jobs on one machine never oversubscribe a GPU: ``auto``
    prefers ``cuda:<job.num % n_gpus>`` and takes any free GPU, ``cuda:N`` waits for that GPU. The lease
    ends with the job (or with its process)."""

    def __init__(self, slots_per_device: int = 1, timeout_s: float | None = None) -> None:
        self.slots_per_device = int(slots_per_device)
        self.timeout_s = timeout_s

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        requested = str(config.get("device", "auto"))
        slots: list[DeviceSlot] = cuda_slots() if requested != "cpu" else []
        if requested.startswith("cuda:"):
            slots = [s for s in slots if s.device == str(torch.device(requested))]
        elif requested not in ("auto", "cuda"):
            slots = []
        if not slots:
            return  # cpu, or CUDA absent (resolve_device then says what is wrong)
        num = OmegaConf.select(config, "hydra.job.num", default=0) or 0
        set_current_lease(lease_device(slots, int(num), self.slots_per_device, timeout_s=self.timeout_s))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        lease = current_lease()
        if lease is not None:
            lease.release()
        set_current_lease(None)


class FailureRecordCallback(Callback):
    """``hydra.callbacks.failure_record``: a job that raises writes ``failure.json`` (error, message,
    traceback, overrides) into its run dir, so ``geal-report`` lists why it is missing; a job that
    succeeds removes a stale one."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        out_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir", default=".")))
        path = out_dir / "failure.json"
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            cause = err
            while isinstance(cause, BaseException) and cause.__cause__ is not None:
                cause = cause.__cause__  # Hydra wraps errors of instantiate(): name the original one
            doc = {
                "error": type(cause).__name__,
                "raised_as": type(err).__name__,
                "message": str(err),
                "traceback": traceback.format_exception(err) if isinstance(err, BaseException) else [],
                "overrides": list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []),
            }
            atomic_write_json(path, doc)
            log.error("job failed (%s: %s); recorded in %s", doc["error"], doc["message"], path)
        elif path.exists():
            path.unlink()


def file_fingerprint(path: str) -> dict[str, Any]:
    """Identity of a weights file: size and sha256 of its content."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"backbone.checkpoint={path} does not exist: pass the path of a .pth/.safetensors file"
        )
    return {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def backbone_key(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the backbone's outputs: its resolved config plus the content of its weights file."""
    node = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(node, dict)
    # where converted weights are cached does not change them
    key = {k: v for k, v in node.items() if k not in ("cache_dir",)}
    if node.get("checkpoint"):
        key["checkpoint"] = file_fingerprint(str(node["checkpoint"]))
    return key


def build_pool(cfg: DictConfig) -> ImagePool:
    check_target_kwargs(cfg, "data", ignore=POOL_RUN_KEYS)
    kwargs = {k: v for k, v in cfg.items() if k not in POOL_RUN_KEYS}
    return instantiate(OmegaConf.create(kwargs), _convert_="all")


def feature_provider(cfg: DictConfig, pool: ImagePool, device: torch.device) -> FeatureProvider:
    """The cached features of ``pool`` under the configured backbone (extracted on first use)."""
    check_target_kwargs(cfg.backbone, "backbone")
    return FeatureProvider(
        pool,
        backbone_factory=lambda: instantiate(cfg.backbone, _convert_="all"),
        backbone_key=backbone_key(cfg.backbone),
        cache_dir=Path(cfg.paths.cache_dir),
        settings=ExtractionSettings(
            batch_size=cfg.extraction.batch_size,
            num_workers=cfg.extraction.num_workers,
            amp=cfg.extraction.amp,
            shard_size=cfg.extraction.shard_size,
            on_error=cfg.data.get("on_error", "raise"),
            progress=cfg.extraction.progress,
            cache_mode=cfg.extraction.cache_mode,
            decode=cfg.extraction.decode,
        ),
        device=device,
        label=str(cfg.backbone.get("name", "backbone")),
    )


def build_context(
    cfg: DictConfig, pool: ImagePool, selector: Selector, device: torch.device
) -> SelectionContext:
    labeled = read_labeled_ids(Path(cfg.labeled), pool) if cfg.labeled else []
    features = feature_provider(cfg, pool, device) if "features" in selector.requires else None
    unsupported = sorted(r for r in selector.requires if r != "features")
    if unsupported:
        raise ValueError(
            f"selector {cfg.selector.get('name')} needs {unsupported}, which a one-pass selection does not "
            "provide: run it in active-learning cycles (geal-run cycles=demo, see conf/cycles/)"
        )
    return SelectionContext(
        labeled=labeled, seed=cfg.seed, device=device, features=features, progress=cfg.extraction.progress
    )


def summarize(result: Any, pool: ImagePool, stage_times: dict[str, float]) -> str:
    """A short human summary of a selection run (printed by the CLI)."""
    sel = result.selection
    lines = [f"selected {len(sel.global_ids)} of {len(pool)} images from {pool.name}"]
    shown = ", ".join(pool.ids[i] for i in sel.global_ids[:10])
    lines.append(f"  first picks: {shown}{' ...' if len(sel.global_ids) > 10 else ''}")
    cov = result.run_info.get("class_coverage")
    if cov:
        lines.append(f"  classes covered: {cov['classes_selected']} of {cov['classes_in_pool']} in the pool")
        lines.append(
            "  selected per class: " + ", ".join(f"{k}:{v}" for k, v in cov["selected_histogram"].items())
        )
    feats = result.run_info.get("features") or {}
    if feats:
        clusters = "hit" if feats["clusters_cache_hit"] else "computed"
        if feats.get("clusters_in_extraction"):
            clusters = "computed during extraction"  # (their time is part of the extraction's)
        lines.append(
            f"  feature cache: {'hit' if feats['extraction_cache_hit'] else 'miss (extracted)'}; "
            f"knowledge clusters: {clusters}"
        )
    lines.append(
        "  time per stage: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in stage_times.items())
    )
    lines.append(f"  outputs: {Path(result.files['selection']).parent}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="select")
def select_main(cfg: DictConfig) -> None:
    """``geal-select``: one selection run (see conf/select.yaml); under ``torchrun`` every rank extracts
    its share of the features and the k-center runs sharded (geal.features.distributed)."""
    t_start = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    init_distributed_from_env()
    device = resolve_device(cfg.device)
    check_target_kwargs(cfg.selector, "selector")
    selector: Selector = instantiate(cfg.selector, _convert_="all")

    t0 = time.perf_counter()
    pool = build_pool(cfg.data)
    pool_s = time.perf_counter() - t0
    log.info("pool %s: %d images", pool.name, len(pool))
    ctx = build_context(cfg, pool, selector, device)

    result = run_selection(
        pool,
        selector,
        cfg.budget,
        ctx,
        out_dir,
        split_name=cfg.output.split_name,
        write_dataset_split=cfg.output.write_dataset_split,
        extra_info={
            "config_file": str(out_dir / ".hydra" / "config.yaml"),
            "derived": {"device": str(device), "pool_size": len(pool)},
        },
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )
    stage_times = {"pool": pool_s, **result.timings, "total": time.perf_counter() - t_start}
    if cfg.output.summary:
        print(summarize(result, pool, stage_times), file=sys.stdout)  # the CLI's own output, not logging


def _target_object(node: DictConfig) -> Any:
    module_name, _, attr = str(node._target_).rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def _target_params(node: DictConfig) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(_target_object(node)).parameters)


def check_task_inputs(cfg: DictConfig, pool: ImagePool) -> ImagePool | None:
    """The task's cheap pre-flight checks (config keys, labels, a non-empty test split), run before any
    selection work so a bad task fails in seconds; returns the test pool when the task asks for one."""
    node = cfg.task
    check_target_kwargs(node, "task", ignore=TASK_RUN_KEYS)
    task_class = _target_object(node)
    if isinstance(task_class, type) and issubclass(task_class, Task):
        settings = OmegaConf.to_container(node, resolve=True)
        assert isinstance(settings, dict)
        task_class.check_settings(settings)
    wants = set(_target_params(node))
    test_pool: ImagePool | None = None
    if wants & {"test_pool", "test_features", "test_labels"}:
        if node.get("test_data") is None:
            raise ValueError(
                f"task {node.get('name')} needs a test split: set task.test_data (a pool config)"
            )
        test_pool = build_pool(node.test_data)
        if len(test_pool) == 0:
            raise ValueError(f"the test split of task {node.get('name')} ({test_pool.name}) is empty")
    for name, pool_ in (("train", pool), ("test", test_pool)):
        if f"{name}_labels" in wants and (pool_ is None or pool_.labels is None):
            raise ValueError(
                f"task {node.get('name')} needs labels, but pool '{getattr(pool_, 'name', None)}' "
                f"has none: use a labeled dataset (class folders, MNIST, Pets) or another task"
            )
    return test_pool


def build_task(
    cfg: DictConfig,
    pool: ImagePool,
    device: torch.device,
    work_dir: Path,
    logger: RunLogger | None = None,
    test_pool: ImagePool | None = None,
) -> Task:
    """Instantiate ``cfg.task`` with the runtime objects its constructor asks for (by parameter name):
    ``pool``, ``test_pool`` (from ``task.test_data``), ``device``, ``work_dir``, ``seed``, ``progress``,
    ``logger`` (the run logger, for per-epoch metrics), and for feature-based tasks ``train_features`` /
    ``test_features`` (the backbone's global features from the feature store) and ``train_labels`` /
    ``test_labels``. ``test_pool``: the one :func:`check_task_inputs` returned (checked again when None)."""
    node = cfg.task
    if test_pool is None:
        test_pool = check_task_inputs(cfg, pool)
    wants = set(_target_params(node))
    runtime: dict[str, Any] = {}
    for name, pool_ in (("train", pool), ("test", test_pool)):
        if pool_ is None:
            continue
        if f"{name}_labels" in wants:
            runtime[f"{name}_labels"] = np.asarray(pool_.labels)
        if f"{name}_features" in wants:
            runtime[f"{name}_features"] = feature_provider(cfg, pool_, device).store().global_features()
    available = {
        "pool": pool,
        "test_pool": test_pool,
        "device": device,
        "work_dir": work_dir,
        "seed": cfg.seed,
        "progress": cfg.extraction.progress,
        "logger": logger,
    }
    runtime.update({k: v for k, v in available.items() if k in wants})
    kwargs = OmegaConf.to_container(node, resolve=True)
    assert isinstance(kwargs, dict)
    for key in TASK_RUN_KEYS:
        kwargs.pop(key, None)
    return instantiate(OmegaConf.create(kwargs), **runtime, _convert_="all")


def sweep_names(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(group, run name) of a multirun job: the sweep's dir name (prefixed by ``task_name`` unless it is
    that name) and the job's overrides (``selector=geal,seed=1``); (None, None) outside a multirun."""
    try:
        hc = HydraConfig.get()
    except ValueError:  # not under Hydra (called from Python)
        return None, None
    if str(hc.mode) != "RunMode.MULTIRUN":
        return None, None
    sweep = Path(str(hc.sweep.dir)).name
    group = sweep if sweep == str(cfg.task_name) else f"{cfg.task_name}:{sweep}"
    return group, str(hc.job.override_dirname) or f"job{hc.job.num}"


def build_logger(cfg: DictConfig, out_dir: Path) -> RunLogger:
    """Instantiate ``cfg.logger``; its ``save_dir`` defaults to the run dir. In a multirun sweep a null
    ``group`` becomes the sweep's name (all jobs of one sweep share it) and a null ``name`` the job's
    overrides."""
    check_target_kwargs(cfg.logger, "logger")
    params = _target_params(cfg.logger)
    extra: dict[str, Any] = {}
    if "save_dir" in params and cfg.logger.get("save_dir") is None:
        extra["save_dir"] = str(out_dir)
    group, name = sweep_names(cfg)
    if "group" in params and cfg.logger.get("group") is None and group is not None:
        extra["group"] = group
    if "group" in params and "name" in params and cfg.logger.get("name") is None and name is not None:
        extra["name"] = name
    return instantiate(cfg.logger, **extra, _convert_="all")


def selections_for_budgets(
    cfg: DictConfig, pool: ImagePool, selector: Selector, device: torch.device, out_dir: Path
) -> tuple[dict[int, list[int]], dict[str, Any]]:
    """budget → global ids: from ``selection_file``, or one selection (nested selectors) or one per budget."""
    budgets = sorted(set(int(b) for b in cfg.budgets))
    if cfg.selection_file:
        ids, doc = load_selection(Path(cfg.selection_file), pool)
        if budgets[-1] > len(ids):
            raise ValueError(
                f"budgets go up to {budgets[-1]} but {cfg.selection_file} holds {len(ids)} images: lower the "
                f"budgets or select more"
            )
        if not doc.get("nested", False) and len(budgets) > 1:
            log.warning(
                "%s comes from a non-nested selector (%s): smaller budgets use its prefixes",
                cfg.selection_file,
                doc.get("selector"),
            )
        return {b: ids[:b] for b in budgets}, {"selection_file": str(cfg.selection_file)}
    ctx = build_context(cfg, pool, selector, device)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    plan = [budgets[-1]] if selector.nested else budgets
    out: dict[int, list[int]] = {}
    timings: dict[str, Any] = {}
    for b in plan:
        sub = out_dir if selector.nested else out_dir / f"budget_{b}"
        result = run_selection(
            pool,
            selector,
            b,
            ctx,
            sub,
            split_name=f"{cfg.selector.name}_{b}",
            write_dataset_split=cfg.output.write_dataset_split,
            extra_info={"derived": {"device": str(device), "pool_size": len(pool)}},
            config=config,
        )
        timings[str(b)] = {
            **result.timings,
            **{f"info/{k}": v for k, v in result.selection.info.items()},
        }
        ids = list(result.selection.global_ids)
        if selector.nested:
            out = {budget: ids[:budget] for budget in budgets}
        else:
            out[b] = ids
    return out, {"selection_stats": timings}


def run_cycle_schedule(
    cfg: DictConfig, out_dir: Path, device: torch.device, selector: Selector, pool: ImagePool, t_start: float
) -> None:
    """geal-run with ``cycles=...``: the active-learning cycles of :mod:`geal.run.loop` (train → evaluate →
    select → record), resumable from ``label_state.json``; a one-pass selector runs as a single cycle."""
    node = cfg.cycles
    schedule = CycleSchedule(
        initial="labeled" if cfg.labeled and node.initial == "auto" else node.initial,
        initial_size=node.initial_size,
        step=node.step,
        n_cycles=node.n_cycles,
        reinit=node.reinit,
    )
    if cfg.labeled and schedule.initial != "labeled":
        raise ValueError(
            f"labeled={cfg.labeled} with cycles.initial={node.initial}: the cycles start from the labeled "
            "file only with cycles.initial=labeled (or auto)"
        )
    initial_ids = read_labeled_ids(Path(cfg.labeled), pool) if schedule.initial == "labeled" else []
    initial_draw: Selector | None = None
    if node.initial_draw is not None:
        check_target_kwargs(node.initial_draw, "cycles.initial_draw")
        initial_draw = instantiate(node.initial_draw, _convert_="all")
    needs_features = any("features" in s.requires for s in (selector, initial_draw) if s is not None)
    context = SelectionContext(
        seed=cfg.seed,
        device=device,
        features=feature_provider(cfg, pool, device) if needs_features else None,
        progress=cfg.extraction.progress,
    )
    with build_logger(cfg, out_dir) as logger:
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        logger.log_config(config)
        task = build_task(cfg, pool, device, out_dir / "task", logger=logger)
        header = run_header(cfg, pool, task, config)
        done = run_cycles(
            task,
            selector,
            pool,
            schedule,
            out_dir,
            header,
            context,
            initial_draw=initial_draw,
            initial_ids=initial_ids,
            budgets=[int(b) for b in cfg.budgets],
            logger=logger,
            resume=cfg.output.resume,
            config=config,
        )
    if cfg.output.summary:
        lines = [f"{header['method']} on {pool.name}, task {header['task']}, seed {cfg.seed}, cycles:"]
        for r in done.results:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
            lines.append(
                f"  cycle {r.cycle:>2}  budget {r.budget:>6}: {shown}  (fit {r.fit_s:.1f}s, select "
                f"{r.select_s:.1f}s, acquisition so far {r.acquisition_s:.1f}s)"
            )
        lines.append(
            f"  selection {done.seconds['selection']:.1f}s, fit {done.seconds['fit']:.1f}s, total "
            f"{time.perf_counter() - t_start:.1f}s this process"
        )
        lines.append(f"  outputs: {out_dir}")
        print("\n".join(lines), file=sys.stdout)  # the CLI's own output, not logging


def run_header(cfg: DictConfig, pool: ImagePool, task: Task, config: dict[str, Any]) -> dict[str, Any]:
    """The fields that say which run produced a ``metrics.json`` (method, seed, task, pool, config)."""
    return {
        "method": str(cfg.selector.name),
        "selector": str(cfg.selector.name),
        "seed": int(cfg.seed),
        "task": str(cfg.task.get("name", type(task).__name__)),
        "pool": pool.name,
        "pool_identity": pool.identity(),
        "config": config,
    }


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="run")
def run_main(cfg: DictConfig) -> None:
    """``geal-run``: select → train the task on each budget → evaluate → metrics (see conf/run.yaml)."""
    t_start = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    check_target_kwargs(cfg.selector, "selector")
    selector: Selector = instantiate(cfg.selector, _convert_="all")
    pool = build_pool(cfg.data)
    log.info("pool %s: %d images", pool.name, len(pool))
    if cfg.cycles is not None:
        run_cycle_schedule(cfg, out_dir, device, selector, pool, t_start)
        return
    check_budgets(list(cfg.budgets), len(pool))
    with build_logger(cfg, out_dir) as logger:
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        logger.log_config(config)
        # a missing label or test split fails before any selection work; the task itself is built after
        # the selection so that feature extraction it shares with the selector counts as selection time
        test_pool = check_task_inputs(cfg, pool)
        t0 = time.perf_counter()
        selections, selection_info = selections_for_budgets(cfg, pool, selector, device, out_dir)
        selection_s = time.perf_counter() - t0
        task = build_task(cfg, pool, device, out_dir / "task", logger=logger, test_pool=test_pool)
        header = {
            **run_header(cfg, pool, task, config),
            "selection_sha256": selection_hash(selections),
            **selection_info,
        }
        results = train_on_budgets(task, selections, out_dir, header, logger=logger, resume=cfg.output.resume)
        seconds = {
            "selection": selection_s,
            "fit": sum(r.fit_s for r in results),
            "total": time.perf_counter() - t_start,
        }
        write_metrics(out_dir, header, results, seconds)
        logger.log_summary({"seconds": seconds, "selection": selection_info})
    if cfg.output.summary:
        lines = [f"{header['method']} on {pool.name}, task {header['task']}, seed {cfg.seed}:"]
        for r in results:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
            lines.append(f"  budget {r.budget:>6}: {shown}  (fit {r.fit_s:.1f}s)")
        lines.append(f"  selection {seconds['selection']:.1f}s, total {seconds['total']:.1f}s")
        lines.append(f"  outputs: {out_dir}")
        print("\n".join(lines), file=sys.stdout)  # the CLI's own output, not logging


VISUALIZE_FIGURES = ("clusters", "contact_sheet", "histograms")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="visualize")
def visualize_main(cfg: DictConfig) -> None:
    """``geal-visualize``: knowledge-cluster figure, contact sheet, histograms (see conf/visualize.yaml)."""
    from geal.report import visualize  # matplotlib is only needed here

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    unknown = sorted(set(cfg.figures) - set(VISUALIZE_FIGURES))
    if unknown:
        raise ValueError(
            f"figures={list(cfg.figures)}: unknown {unknown}; choose from {list(VISUALIZE_FIGURES)}"
        )
    device = resolve_device(cfg.device)
    pool = build_pool(cfg.data)
    selected: list[int] = []
    picked_by = ""
    if cfg.selection:
        selected, doc = load_selection(Path(cfg.selection), pool)
        picked_by = f"{doc.get('selector')} (seed {doc.get('seed')}) on {pool.name}"
    files: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if "clusters" in cfg.figures:
        check_target_kwargs(cfg.selector, "selector")
        selector = instantiate(cfg.selector, _convert_="all")
        settings = getattr(selector, "clusters", None)
        if settings is None:
            raise ValueError(
                f"the cluster figure shows GEAL's knowledge clusters: use selector=geal (its "
                f"selector.clusters settings), not {cfg.selector.get('name')}"
            )
        ids = pool.index_of(list(cfg.images)) if cfg.images else (selected or list(range(len(pool))))
        ids = ids if cfg.images else ids[: cfg.n_images]
        provider = feature_provider(cfg, pool, device)
        clusters = provider.knowledge_clusters(selector.request, settings)
        store = provider.store(selector.request)
        items = visualize.image_clusters(store, clusters, ids, settings, pool.ids)
        title = f"{pool.name}, {cfg.backbone.name}: τ={settings.tau:g}, K={settings.k}"
        files["clusters"] = str(
            visualize.cluster_figure(pool, items, out_dir / "knowledge_clusters.png", settings, title)
        )
    for figure in ("contact_sheet", "histograms"):
        if figure in cfg.figures and not selected:
            skipped[figure] = "needs selection=PATH (a selection.json of this pool)"
    if "contact_sheet" in cfg.figures and selected:
        shown = selected[: cfg.contact_sheet.max_images]
        files["contact_sheet"] = str(
            visualize.contact_sheet(
                pool,
                shown,
                out_dir / "contact_sheet.png",
                columns=cfg.contact_sheet.columns,
                thumb=cfg.contact_sheet.thumb_size,
                title=f"{picked_by}: first {len(shown)} of {len(selected)} picks, in selection order",
                progress=cfg.extraction.progress,
            )
        )
    if "histograms" in cfg.figures and selected:
        others = {}
        for path in cfg.compare:
            ids, doc = load_selection(Path(path), pool)
            # the same number of images as the selection: the prefix (a nested selector's smaller budget)
            ids = ids[: len(selected)]
            others[f"{doc.get('selector')} (seed {doc.get('seed')}, {Path(path).parent.name})"] = ids
        try:
            hist = visualize.selection_histograms(pool, selected, cfg.seed, others, cfg.extraction.progress)
        except ValueError as err:  # a pool without labels or annotations
            skipped["histograms"] = str(err)
        else:
            files["histograms"] = str(visualize.histogram_figure(hist, out_dir / "histograms.png"))
            atomic_write_json(out_dir / "histograms.json", hist.as_dict())
            files["histograms_json"] = str(out_dir / "histograms.json")
    for figure, why in skipped.items():
        log.warning("%s not drawn: %s", figure, why)
    atomic_write_json(
        out_dir / "visualize.json",
        {"files": files, "skipped": skipped, "config": OmegaConf.to_container(cfg, resolve=True)},
    )
    lines = [*(f"{k}: {v}" for k, v in files.items()), *(f"{k}: skipped ({v})" for k, v in skipped.items())]
    print("\n".join(lines), file=sys.stdout)  # the CLI's own output


def report_main(argv: Sequence[str] | None = None) -> None:
    """``geal-report DIR``: the paper-layout tables (mean ± std over seeds, number of seeds) as Markdown, CSV
    and LaTeX, metric-vs-budget plots (PNG, SVG), the efficiency table, and the runs that did not finish."""
    parser = argparse.ArgumentParser(prog="geal-report", description=report_main.__doc__)
    parser.add_argument("root", type=Path, help="a geal-run output or multirun dir (or a folder of them)")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric to tabulate (repeatable; 'all': every one; default: the headline metric, e.g. top1)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="KEY",
        help="what a row is: 'method' and/or dotted config keys (e.g. selector.clusters.tau "
        "selector.clusters.k selector.distance, the ablation layout); default: method + the settings the "
        "sweep varied",
    )
    parser.add_argument("--methods", nargs="+", default=None, help="order (and subset) of the methods")
    parser.add_argument(
        "--budgets", nargs="+", type=int, default=None, help="the budget columns (default: every budget run)"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="multiply values (default: 100 for fractions)"
    )
    parser.add_argument("--digits", type=int, default=1, help="decimals in the tables")
    parser.add_argument("--best", choices=("max", "min", "none"), default="max", help="bold in LaTeX")
    parser.add_argument("--out", type=Path, default=None, help="where to write results.* (default: root)")
    parser.add_argument("--title", default="", help="title of the report and the plots")
    parser.add_argument("--wandb-project", default=None, help="also log the tables and plots to wandb")
    parser.add_argument("--wandb-entity", default=None)
    parser.add_argument(
        "--wandb-mode", choices=("online", "offline", "disabled"), default=None, help="default: $WANDB_MODE"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = ReportOptions(
        metrics=args.metric,
        rows=args.rows,
        methods=args.methods,
        budgets=args.budgets,
        scale=args.scale,
        digits=args.digits,
        title=args.title,
        best=None if args.best == "none" else args.best,
        wandb_project=args.wandb_project,
        wandb_mode=args.wandb_mode,
        wandb_entity=args.wandb_entity,
    )
    try:
        done = report(args.root, args.out, options)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"geal-report: error: {err}\n")
    print(done.markdown, file=sys.stdout)  # the CLI's own output
    for kind, path in done.files.items():
        print(f"{kind}: {path}", file=sys.stdout)
    if done.wandb_dir:
        print(f"wandb run: {done.wandb_dir}", file=sys.stdout)


if __name__ == "__main__":
    select_main()
