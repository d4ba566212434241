"""Build the run's objects from its Hydra config: device, pool, selector, feature sources, task and its
context, schedule, logger. The entry points (geal/run/cli.py) call these in order; every check that can
fail without touching an image runs here, before any selection work.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from geal.api.pool import ImagePool
from geal.api.selector import SelectionContext, Selector
from geal.api.task import MetricsLogger, Task, TaskContext
from geal.features.extract import ExtractionSettings
from geal.features.provider import FeatureProvider
from geal.report.loggers.base import RunLogger
from geal.run.device_lease import current_lease
from geal.run.outputs import load_selection, read_labeled_ids
from geal.run.schedule import ONE_PASS, CycleSchedule, check_budgets
from geal.run.schemas import POOL_RUN_KEYS, TASK_RUN_KEYS, check_known_keys, check_target_kwargs
from geal.util.resources import sha256_file

log = logging.getLogger("geal")


def expand_home_paths(cfg: DictConfig) -> None:
    """Give the home folder to every setting that starts with ``~`` (``data.root=~/photos``,
    ``paths.cache_dir=~/cache``, a checkpoint...), as a shell does: a value with ``~`` reaches a job only
    quoted, and the pools, caches and loaders take paths as given. Interpolations are resolved first (an
    environment variable holding ``~/...``); Hydra's own node is left alone."""

    def walk(node: DictConfig | ListConfig) -> None:
        keys = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))
        for key in keys:
            if isinstance(node, DictConfig) and key == "hydra" and node is cfg:
                continue
            if OmegaConf.is_missing(node, key):  # ??? stays for its own check
                continue
            try:
                value = node[key]  # type: ignore[index]  # a DictConfig key or a ListConfig position
            except Exception:  # an interpolation that resolves only later (e.g. ${hydra:...} outside a job)
                if OmegaConf.is_interpolation(node, key):  # type: ignore[arg-type]
                    continue
                raise
            if isinstance(value, DictConfig | ListConfig):
                walk(value)
            elif isinstance(value, str) and (value == "~" or value.startswith("~/")):
                node[key] = os.path.expanduser(value)  # type: ignore[index]

    walk(cfg)


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available, else cpu; an explicit unavailable device is an error with the fix.

    In a job holding a device lease (geal.run.callbacks.DeviceLeaseCallback), ``auto`` and ``cuda`` are the
    leased device, so parallel jobs of a sweep never share a GPU."""
    lease = current_lease()
    if lease is not None and name in ("auto", "cuda", lease.device):
        return torch.device(lease.device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch lists its two dozen backends; these are the ones that mean something here
        raise ValueError(f"device={name} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but CUDA is not available here: use device=cpu or device=auto")
    return device


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
    key = {str(k): v for k, v in node.items() if k not in ("cache_dir",)}
    if node.get("checkpoint"):
        key["checkpoint"] = file_fingerprint(str(node["checkpoint"]))
    return key


def build_pool(cfg: DictConfig) -> ImagePool:
    """The pool of a ``data`` config (or of a task's ``test_data``)."""
    check_target_kwargs(cfg, "data", ignore=POOL_RUN_KEYS)
    kwargs = {k: v for k, v in cfg.items() if k not in POOL_RUN_KEYS}
    return instantiate(OmegaConf.create(kwargs), _convert_="all")


def build_selector(node: DictConfig, group: str = "selector") -> Selector:
    """The selector of a config node (``selector``, ``cycles.initial_draw``); a key its class does not take
    fails naming the group."""
    check_target_kwargs(node, group)
    return instantiate(node, _convert_="all")


def check_settings(cfg: DictConfig, schema: type) -> None:
    """What every entry point checks first: no key outside its struct ``schema`` (``+key=...`` included),
    and valid extraction settings and ``data.on_error`` (whether or not features are needed)."""
    check_known_keys(cfg, schema)
    extraction_settings(cfg)


def extraction_settings(cfg: DictConfig) -> ExtractionSettings:
    """``extraction`` (geal/conf/extraction/default.yaml) as :class:`ExtractionSettings`, which validates
    every value; ``data.on_error`` says how the pass treats unreadable images."""
    values = OmegaConf.to_container(cfg.extraction, resolve=True)
    assert isinstance(values, dict)
    known = {f.name for f in dataclasses.fields(ExtractionSettings)} - {"on_error"}
    unknown = sorted(set(map(str, values)) - known)
    if unknown:
        raise ValueError(f"extraction has unknown key(s) {unknown}; valid keys: {sorted(known)}")
    settings = {str(k): v for k, v in values.items()}
    return ExtractionSettings(**settings, on_error=cfg.data.get("on_error", "raise"))


def feature_provider(cfg: DictConfig, pool: ImagePool, device: torch.device) -> FeatureProvider:
    """The cached features of ``pool`` under the configured backbone (extracted on first use)."""
    check_target_kwargs(cfg.backbone, "backbone")
    return FeatureProvider(
        pool,
        backbone_factory=lambda: instantiate(cfg.backbone, _convert_="all"),
        backbone_key=backbone_key(cfg.backbone),
        cache_dir=Path(cfg.paths.cache_dir),
        settings=extraction_settings(cfg),
        device=device,
        label=str(cfg.backbone.get("name", "backbone")),
    )


def build_selection_context(
    cfg: DictConfig,
    pool: ImagePool,
    device: torch.device,
    selectors: list[Selector],
    labeled: list[int],
) -> SelectionContext:
    """The context shared by a run's selections: ``labeled`` ids to start from, the seed, the device, and
    the pool's features when one of ``selectors`` requires them."""
    needs_features = any("features" in s.requires for s in selectors)
    return SelectionContext(
        labeled=labeled,
        seed=cfg.seed,
        device=device,
        features=feature_provider(cfg, pool, device) if needs_features else None,
        progress=cfg.extraction.progress,
        on_error=str(cfg.data.get("on_error", "raise")),
    )


def build_select_context(
    cfg: DictConfig, pool: ImagePool, selector: Selector, device: torch.device
) -> SelectionContext:
    """geal-select's context: the ``labeled`` file's ids; a selector that needs a trained task is refused."""
    unsupported = sorted(r for r in selector.requires if r != "features")
    if unsupported:
        raise ValueError(
            f"selector {cfg.selector.get('name')} needs {unsupported}, which a one-pass selection does not "
            "provide: run it in active-learning cycles (geal-run cycles=demo, see geal/conf/cycles/)"
        )
    labeled = read_labeled_ids(Path(cfg.labeled), pool) if cfg.labeled else []
    return build_selection_context(cfg, pool, device, [selector], labeled)


def build_task(node: DictConfig) -> Task:
    """The task of the ``task`` config from its settings alone (a typo or a bad setting fails now, before
    any selection work); it receives its context later (:func:`build_task_context`, ``Task.setup``)."""
    check_target_kwargs(node, "task", ignore=TASK_RUN_KEYS)
    settings = OmegaConf.to_container(node, resolve=True)
    assert isinstance(settings, dict)
    for key in TASK_RUN_KEYS:
        settings.pop(key, None)
    task = instantiate(OmegaConf.create(settings), _convert_="all")
    if not isinstance(task, Task):
        raise ValueError(f"task._target_={node._target_} is not a geal.api.task.Task")
    return task


def build_task_context(
    cfg: DictConfig,
    task: Task,
    pool: ImagePool,
    device: torch.device,
    work_dir: Path,
    logger: MetricsLogger | None,
) -> TaskContext:
    """What ``task.setup`` will get: the test split of ``task.test_data`` (when the task needs one), the
    feature sources of both pools (when it needs features), device, work dir, seed, logger. The task's
    ``needs`` are checked now (labels, a non-empty test split, annotations), before any selection."""
    test_data = cfg.task.get("test_data")
    needs_test = "test_split" in task.needs and test_data is not None
    unset = [k for k in test_data if OmegaConf.is_missing(test_data, k)] if needs_test else []
    if unset:  # e.g. an image folder, which has no test split of its own
        name = getattr(task, "name", type(task).__name__)
        raise ValueError(
            f"task {name} needs a test split: set data.test.{unset[0]}=... (for an image folder, "
            f"data.test.root=DIR, another folder of the same classes)"
        )
    test_pool = build_pool(test_data) if needs_test else None
    features = "features" in task.needs
    ctx = TaskContext(
        pool=pool,
        test_pool=test_pool,
        device=device,
        work_dir=work_dir,
        seed=int(cfg.seed),
        progress=bool(cfg.extraction.progress),
        logger=logger,
        features=feature_provider(cfg, pool, device) if features else None,
        test_features=feature_provider(cfg, test_pool, device) if features and test_pool else None,
    )
    task.check_context(ctx)
    return ctx


def build_schedule(cfg: DictConfig) -> tuple[CycleSchedule, list[int]]:
    """The schedule (``cycles``; none: the one-pass schedule) and the one-pass ``budgets``. The budgets
    come from one place: ``budgets`` for the one-pass schedule, the schedule itself otherwise."""
    node = cfg.cycles
    schedule = ONE_PASS
    if node is not None:
        schedule = CycleSchedule(node.initial, node.initial_size, node.step, node.n_cycles, node.reinit)
    budgets = [int(b) for b in cfg.budgets] if cfg.budgets is not None else []
    name = node.name if node is not None else "one_pass"
    if schedule.one_pass:
        return schedule, check_budgets(budgets)
    if budgets:
        raise ValueError(
            f"budgets={budgets} and cycles={name} both set the budgets: drop budgets=... (cycles={name} "
            f"trains at {schedule.budgets()}) or drop cycles={name} (one pass at budgets {budgets})"
        )
    if cfg.selection_file:
        raise ValueError(
            f"selection_file={cfg.selection_file} trains on an earlier selection in one pass, but "
            f"cycles={name} selects as it goes: drop cycles={name} or drop selection_file"
        )
    return schedule, []


@dataclass
class RunStart:
    """Where a geal-run starts: its schedule (cycle 0's ``initial`` resolved), the ids cycle 0 is given
    (``initial_ids``), the ids labeled before the run that a one-pass selection starts from, the
    ``initial_draw`` selector, and what the metrics header adds (``selection_file``)."""

    schedule: CycleSchedule
    initial_ids: list[int] = field(default_factory=list)
    labeled_before: list[int] = field(default_factory=list)
    initial_draw: Selector | None = None
    header: dict[str, Any] = field(default_factory=dict)


def build_start(cfg: DictConfig, schedule: CycleSchedule, budgets: list[int], pool: ImagePool) -> RunStart:
    """``selection_file`` (one pass: train on its prefixes) and ``labeled`` (one pass: the ids the
    selection starts from; active learning: cycle 0's set)."""
    node = cfg.cycles
    draw = None
    if node is not None and node.initial_draw is not None:
        draw = build_selector(node.initial_draw, "cycles.initial_draw")
    if schedule.one_pass and cfg.selection_file:
        if cfg.labeled:
            raise ValueError(
                "give labeled=... (select from there) or selection_file=... (train on it), not both"
            )
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
        given = dataclasses.replace(schedule, initial="labeled")
        return RunStart(given, ids[: budgets[-1]], [], draw, {"selection_file": str(cfg.selection_file)})
    labeled = read_labeled_ids(Path(cfg.labeled), pool) if cfg.labeled else []
    if schedule.one_pass:
        return RunStart(schedule, [], labeled, draw)
    if cfg.labeled and schedule.initial == "auto":
        schedule = dataclasses.replace(schedule, initial="labeled")
    if cfg.labeled and schedule.initial != "labeled":
        raise ValueError(
            f"labeled={cfg.labeled} with cycles.initial={schedule.initial}: the cycles start from the "
            "labeled file only with cycles.initial=labeled (or auto)"
        )
    return RunStart(schedule, labeled, [], draw)


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
    module_name, _, attr = str(cfg.logger._target_).rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module_name), attr)).parameters
    extra: dict[str, Any] = {}
    if "save_dir" in params and cfg.logger.get("save_dir") is None:
        extra["save_dir"] = str(out_dir)
    group, name = sweep_names(cfg)
    if "group" in params and cfg.logger.get("group") is None and group is not None:
        extra["group"] = group
    if "group" in params and "name" in params and cfg.logger.get("name") is None and name is not None:
        extra["name"] = name
    return instantiate(cfg.logger, **extra, _convert_="all")
