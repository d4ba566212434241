"""Struct-mode schemas for the settings that are not instantiated objects (a misspelled key fails at once).

The instantiated groups (``data``, ``backbone``, ``selector``) are checked against their ``_target_``'s
constructor signature instead (:func:`check_target_kwargs`), before anything runs; a nested node that a
constructor takes as a dataclass (``selector.clusters``) against that dataclass's fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

#: the Hydra config root: geal/conf/ (the shared groups, the three roots) with one folder per command for its
#: experiments (geal/conf/run/experiment/, geal/conf/select/experiment/), added to that command's search path
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"

#: keys of the ``data`` group that are not the pool's constructor arguments: how the run treats unreadable
#: images, and the dataset's test split (a pool config of its own, used by geal-run's task)
POOL_RUN_KEYS = ("on_error", "test")
#: keys of the ``task`` group read by the run, not passed to the task's constructor
TASK_RUN_KEYS = ("test_data",)


@dataclass
class PathsConfig:
    data_dir: str = MISSING
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class OutputConfig:
    split_name: str = "${selector.name}_${budget}"
    write_dataset_split: bool = False  # True: write the native split file inside the dataset folder
    summary: bool = True


@dataclass
class SelectConfig:
    data: Any = MISSING
    backbone: Any = MISSING
    selector: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    extraction: Any = MISSING  # geal/conf/extraction/default.yaml (schema: ExtractionSettings)
    output: OutputConfig = field(default_factory=OutputConfig)
    budget: int = 100
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    labeled: str | None = None  # file of already-labeled image ids (.txt, or a selection.json)
    task_name: str = "select"


@dataclass
class RunOutputConfig:
    write_dataset_split: bool = False
    summary: bool = True
    resume: bool = True  # a rerun into the same run dir continues from its label_state.json


@dataclass
class CyclesConfig:
    """geal-run's schedule (``geal/conf/cycles/``; see geal.run.schedule.CycleSchedule).

    initial: auto | draw | selector | labeled — how cycle 0's set is chosen (auto: the run's selector when it
    can pick from nothing, i.e. one-pass selectors, else ``initial_draw``); initial_size null with
    n_cycles 0 = the one-pass schedule (geal/conf/cycles/one_pass.yaml, the default: select once, train at
    every budget of ``budgets``).
    """

    name: str = "cycles"
    initial: str = "auto"
    initial_size: int | None = 1000
    step: int = 1000
    n_cycles: int = 9
    reinit: bool = True  # false: warm-start each training from the previous one (task must support it)
    initial_draw: Any = None  # a selector config (_target_) that draws the initial set (random by default)


@dataclass
class RunConfig:
    """geal-run: select (or load a selection) → train the task per budget → evaluate → metrics.json, over
    the schedule ``cycles`` (one pass at ``budgets`` by default)."""

    data: Any = MISSING
    backbone: Any = MISSING
    selector: Any = MISSING
    task: Any = MISSING
    logger: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    extraction: Any = MISSING  # geal/conf/extraction/default.yaml (schema: ExtractionSettings)
    output: RunOutputConfig = field(default_factory=RunOutputConfig)
    budgets: list[int] | None = None  # the one-pass schedule's; an active-learning schedule sets its own
    seed: int = 0
    device: str = "auto"
    labeled: str | None = None
    selection_file: str | None = None  # a selection.json of an earlier run: train on it, select nothing
    cycles: CyclesConfig | None = None  # geal/conf/cycles/: one_pass (select once, train per budget), cycles
    task_name: str = "run"


@dataclass
class ContactSheetConfig:
    max_images: int = 100  # the first ones of the selection
    columns: int = 10
    thumb_size: int = 112  # pixels per tile


@dataclass
class VisualizeConfig:
    """geal-visualize: knowledge-cluster figure, contact sheet, histograms (see geal/conf/visualize.yaml)."""

    data: Any = MISSING
    backbone: Any = MISSING
    selector: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    extraction: Any = MISSING  # geal/conf/extraction/default.yaml (schema: ExtractionSettings)
    contact_sheet: ContactSheetConfig = field(default_factory=ContactSheetConfig)
    figures: list[str] = field(default_factory=lambda: ["clusters", "contact_sheet", "histograms"])
    selection: str | None = None  # a selection.json of this pool (geal-select / geal-run)
    compare: list[str] = field(default_factory=list)  # more selection.json files for the histograms
    images: list[str] = field(default_factory=list)  # image ids for the cluster figure
    n_images: int = 6  # without images: the first n of the selection (else of the pool)
    seed: int = 0  # the random draw the histograms compare with
    device: str = "auto"
    task_name: str = "visualize"


def job_dir_name(settings: str) -> str:
    """A sweep job's folder name from its settings (Hydra's ``override_dirname``, e.g.
    ``seed=0,selector=geal``): the same settings always get the same folder, whatever the job's position in
    the sweep, so a sweep rerun with more seeds or selectors finds its finished jobs. A path value is
    shortened to its last part, and then the name ends with a hash of the full settings (two roots with the
    same last part never share a folder); a name over 200 characters is cut, with that hash too."""
    name = _PATH_VALUE.sub(lambda m: Path(m.group(0)).name or "_", settings)
    if name != settings or len(name) > 200:
        name = f"{name[:180]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
    return name or "job"


#: a setting's value that is a path (``data.root=/datasets/VOCdevkit``): up to the next setting or bracket
_PATH_VALUE = re.compile(r"(?<==)[^,=\[\]]*/[^,=\[\]]*")


def register_schemas() -> None:
    """The roots' struct schemas; ``${geal_conf:<command>}``: the file:// URL of a command's own config
    folder (its experiments), which each root puts in its ``hydra.searchpath``; ``${geal_job_dir:...}``
    (:func:`job_dir_name`), a sweep job's folder."""
    if not OmegaConf.has_resolver("geal_conf"):
        OmegaConf.register_new_resolver("geal_conf", lambda command: (CONFIG_DIR / str(command)).as_uri())
    if not OmegaConf.has_resolver("geal_job_dir"):
        OmegaConf.register_new_resolver("geal_job_dir", lambda settings: job_dir_name(str(settings)))
    ConfigStore.instance().store(name="select_schema", node=SelectConfig)
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    ConfigStore.instance().store(name="visualize_schema", node=VisualizeConfig)


def check_known_keys(cfg: DictConfig, schema: type, where: str = "") -> None:
    """Fail naming the key if ``cfg`` has a key its struct ``schema`` (a dataclass) does not declare: Hydra
    lets ``+key=value`` add one to a struct config, which would otherwise be accepted and ignored. Nodes
    typed with a dataclass are checked the same way; the groups (``Any``) are checked by their builders."""
    names = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in cfg:
        key = str(key)
        if key not in names:
            raise ValueError(
                f"unknown setting '{where}{key}' (added with '+'?): valid keys here are {sorted(names)}; "
                f"GEAL's τ is selector.clusters.tau, K selector.clusters.k"
            )
        value = cfg.get(key)
        if isinstance(value, DictConfig):
            for option in (hints[key], *typing.get_args(hints[key])):
                if isinstance(option, type) and dataclasses.is_dataclass(option):
                    check_known_keys(value, option, f"{where}{key}.")
                    break


def check_target_kwargs(node: DictConfig | dict, group: str, ignore: tuple[str, ...] = ()) -> None:
    """Fail now, with the group's name, if a config node has keys its ``_target_`` does not accept; a
    nested node passed to a parameter typed with a dataclass (``selector.clusters``: ClusterSettings) is
    checked against that dataclass's fields."""
    target = node.get("_target_")
    if target is None:
        raise ValueError(
            f"config group '{group}' has no _target_: pick one of the files in geal/conf/{group}/"
        )
    module_name, _, attr = str(target).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{group}._target_={target} cannot be imported: {err}") from err
    params = inspect.signature(obj).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(k for k in node if not str(k).startswith("_") and k not in params and k not in ignore)
    if unknown:
        raise ValueError(
            f"{group} config has key(s) {unknown} that {target} does not take; "
            f"valid keys: {sorted(k for k in params if k != 'self')}"
        )
    for name, schema in _dataclass_params(obj).items():
        value = node.get(name)
        if not isinstance(value, (DictConfig, dict)) or "_target_" in value:
            continue
        fields = [f.name for f in dataclasses.fields(schema)]
        nested_unknown = sorted(str(k) for k in value if k not in fields)
        if nested_unknown:
            raise ValueError(
                f"{group}.{name} config has key(s) {nested_unknown} that "
                f"{schema.__module__}.{schema.__qualname__} does not take; valid keys: {fields}"
            )


def _dataclass_params(obj: Callable[..., Any]) -> dict[str, type]:
    """The parameters of ``obj`` (a class: of its constructor) whose annotation names a dataclass (alone or
    in a union, e.g. ``ClusterSettings | Mapping[str, Any] | None``)."""
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # an annotation that does not resolve at run time: no nested check
        return {}
    out: dict[str, type] = {}
    for name, hint in hints.items():
        for option in (hint, *typing.get_args(hint)):
            if isinstance(option, type) and dataclasses.is_dataclass(option):
                out[name] = option
                break
    return out
