"""Read what runs left on disk: the only input of ``geal-report`` (no run is re-executed or re-composed).

A *run dir* is a folder holding ``metrics.json`` (``geal-run``), ``selection.json`` (``geal-select``) or a
Hydra ``.hydra/`` folder (a job that started). Below a multirun dir every job is one run dir; the sweep's
``multirun.yaml`` lists the jobs that were planned, so jobs that never started are found too. Every run is
kept with a status, and the reports show the ones that did not finish as gaps and list them:

* ``done``: ``metrics.json`` holds every planned budget and the run's wall times;
* ``incomplete``: ``metrics.json`` lacks some planned budgets or the final wall times (interrupted / running);
* ``failed``: the job started (``.hydra/``) but wrote no ``metrics.json``; ``failure.json`` (written by the
  job's failure callback) gives the error when there is one;
* ``not started``: planned in ``multirun.yaml`` but no job dir has its overrides;
* ``selection``: a ``geal-select`` run (no training by design; used by the efficiency table).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

#: config keys that never define a row of a table: they vary between seeds, jobs or machines, or they set
#: where and how results are written rather than what is measured
NON_SETTING_KEYS = (
    "seed",
    "budgets",
    "budget",
    "paths",
    "hydra",
    "output",
    "extraction",
    "device",
    "task_name",
    "logger",
    "selection_file",
    "labeled",
)

DONE, INCOMPLETE, FAILED, NOT_STARTED, SELECTION = "done", "incomplete", "failed", "not started", "selection"


@dataclass(frozen=True)
class RunRecord:
    """One run (or planned job) and what it measured.

    values:  budget → {metric: value} of the budgets that finished
    planned: budgets the run's config asked for (``budgets``; ``budget`` for a geal-select run)
    config:  the run's resolved config (``metrics.json``'s, else ``.hydra/config.yaml``, else ``{}``)
    seconds: ``metrics.json`` ``seconds`` (selection / fit / total and any other wall times a runner adds)
    run_infos: every ``run_info.json`` of the run (one per selection it made), for timings and the device
    """

    directory: Path
    status: str
    method: str
    seed: int | None
    values: dict[int, dict[str, float]] = field(default_factory=dict)
    planned: tuple[int, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    run_infos: tuple[dict[str, Any], ...] = ()
    reason: str = ""
    mtime: float = 0.0  # of metrics.json: which of two runs of one seed is the later

    @property
    def missing_budgets(self) -> list[int]:
        return [b for b in self.planned if b not in self.values]

    def setting(self, key: str) -> Any:
        """The value of a dotted config key (``selector.clusters.tau``), ``method`` or ``seed``; None when
        absent."""
        if key == "method":
            return self.method
        if key == "seed":
            return self.seed
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


@dataclass
class Collected:
    runs: list[RunRecord]

    @property
    def trained(self) -> list[RunRecord]:
        """geal-run runs, whatever their status (rows and budgets of the tables come from these)."""
        return [r for r in self.runs if r.status != SELECTION]

    @property
    def problems(self) -> list[RunRecord]:
        """Runs that did not finish: listed by every report, shown as gaps in the tables."""
        return [r for r in self.runs if r.status in (INCOMPLETE, FAILED, NOT_STARTED)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not readable JSON ({type(err).__name__}: {err}): delete or fix it"
        ) from err
    if not isinstance(doc, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return doc


def _hydra_config(run_dir: Path) -> dict[str, Any]:
    """``.hydra/config.yaml`` resolved where possible (``${hydra:...}`` cannot be resolved outside a job)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    import hydra.core.utils  # noqa: F401  (registers Hydra's resolvers)
    from omegaconf import OmegaConf  # Hydra's own format; resolvers such as ${now:} come with hydra

    cfg = OmegaConf.load(path)
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside the job: keep the raw values
        out = OmegaConf.to_container(cfg, resolve=False)
    return out if isinstance(out, dict) else {}


def _overrides(run_dir: Path) -> tuple[str, ...]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ()
    items = yaml.safe_load(path.read_text()) or []
    return tuple(str(x) for x in items)


def _method_of(config: dict[str, Any], fallback: str) -> str:
    selector = config.get("selector")
    if isinstance(selector, dict) and selector.get("name"):
        return str(selector["name"])
    return fallback


def _planned(config: dict[str, Any]) -> tuple[int, ...]:
    """The budgets a run will score: ``initial_size + k · step`` (k = 0..n_cycles) for an active-learning
    cycle schedule (geal.run.loop.plan_cycles), else (and for the one-pass schedule) ``budgets``."""
    cycles = config.get("cycles")
    if isinstance(cycles, dict) and cycles.get("initial_size") is not None:
        try:
            size, step, n = int(cycles["initial_size"]), int(cycles.get("step") or 0), int(cycles["n_cycles"])
        except (KeyError, TypeError, ValueError):
            return ()
        return tuple(size + k * step for k in range(n + 1))
    budgets = config.get("budgets")
    if isinstance(budgets, list):
        try:
            return tuple(sorted({int(b) for b in budgets}))
        except (TypeError, ValueError):
            return ()
    return ()


def read_run(run_dir: Path) -> RunRecord:
    """The record of one run dir (ValueError naming the file when an output file is malformed)."""
    run_dir = Path(run_dir)
    overrides = _overrides(run_dir)
    infos = tuple(_read_json(p) for p in sorted(run_dir.rglob("run_info.json")))
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        doc = _read_json(metrics)
        try:
            values = {
                int(r["budget"]): {str(k): float(v) for k, v in r["metrics"].items()} for r in doc["results"]
            }
            method = str(doc.get("method") or doc["selector"])
            seed = int(doc["seed"])
            seconds = {str(k): float(v) for k, v in (doc.get("seconds") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                f"{metrics} is not a geal-run metrics.json ({type(err).__name__}: {err}): it needs 'method' "
                f"or 'selector', 'seed' and 'results' [{{budget, metrics}}]; delete it or rerun that job"
            ) from err
        config = doc.get("config") if isinstance(doc.get("config"), dict) else _hydra_config(run_dir)
        planned = _planned(config) or tuple(sorted(values))
        missing = [b for b in planned if b not in values]
        status = DONE if not missing and seconds else INCOMPLETE
        reason = ""
        if missing:
            reason = f"no result for budget(s) {', '.join(map(str, missing))}"
        elif not seconds:
            reason = "metrics.json has no final wall times (interrupted or still running)"
        mtime = metrics.stat().st_mtime
        return RunRecord(
            run_dir, status, method, seed, values, planned, config, overrides, seconds, infos, reason, mtime
        )
    selection = run_dir / "selection.json"
    config = _hydra_config(run_dir)
    if selection.is_file() and "budget" in config and "budgets" not in config:
        doc = _read_json(selection)
        return RunRecord(
            run_dir,
            SELECTION,
            str(doc.get("selector") or _method_of(config, "?")),
            int(doc["seed"]) if doc.get("seed") is not None else None,
            planned=(int(doc.get("budget") or 0),),
            config=doc.get("config") if isinstance(doc.get("config"), dict) else config,
            overrides=overrides,
            run_infos=infos,
        )
    failure = run_dir / "failure.json"
    reason = "no metrics.json (failed, interrupted or still running)"
    if failure.is_file():
        doc = _read_json(failure)
        reason = f"failed: {doc.get('error', '?')}: {doc.get('message', '')}".strip()
    seed = config.get("seed")
    return RunRecord(
        run_dir,
        FAILED,
        _method_of(config, "?"),
        int(seed) if isinstance(seed, int) else None,
        planned=_planned(config),
        config=config,
        overrides=overrides,
        run_infos=infos,
        reason=reason,
    )


def _run_dirs(root: Path) -> list[Path]:
    found = {p.parent for p in root.rglob("metrics.json")}
    found |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in root.rglob("selection.json") if (p.parent / ".hydra").is_dir()}
    # a selection written inside a geal-run dir (budget_<b>/ of non-nested selectors) is part of that run
    return sorted(d for d in found if not any(parent in found for parent in d.parents))


def planned_jobs(multirun_yaml: Path) -> list[tuple[str, ...]]:
    """The override lists of every job a basic-sweeper multirun planned (Hydra's own expansion of
    ``hydra.sweeper.params`` and the command line), or [] when the sweep cannot be expanded."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(multirun_yaml)
    sweeper = OmegaConf.select(cfg, "hydra.sweeper._target_", default="") or ""
    if not str(sweeper).endswith("BasicSweeper"):
        log.warning(
            "%s: sweeper %s is not Hydra's basic sweeper; jobs that never started are not listed",
            multirun_yaml,
            sweeper,
        )
        return []
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    task = list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])
    try:
        # Hydra's sweep expansion (private module of the pinned hydra-core 1.3): the same code that
        # planned the jobs, so the expected override strings match the jobs' .hydra/overrides.yaml
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        lines = [f"{k}={v}" for k, v in params.items()] + [str(x) for x in task]
        overrides = OverridesParser.create().parse_overrides(lines)
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception as err:  # a Hydra version with another internal API: say so, do not guess
        log.warning(
            "%s: could not expand the sweep (%s); jobs that never started are not listed", multirun_yaml, err
        )
        return []
    return [tuple(job) for batch in batches for job in batch]


def _not_started(multirun_yaml: Path, runs: Sequence[RunRecord]) -> list[RunRecord]:
    sweep_dir = multirun_yaml.parent
    present = {tuple(sorted(r.overrides)) for r in runs if sweep_dir in r.directory.parents}
    out = []
    for num, job in enumerate(planned_jobs(multirun_yaml)):
        if tuple(sorted(job)) in present:
            continue
        chosen = dict(o.split("=", 1) for o in job if "=" in o and not o.startswith(("+", "~")))
        seed = chosen.get("seed")
        out.append(
            RunRecord(
                sweep_dir / str(num),
                NOT_STARTED,
                # the option name: geal/conf/selector/<name>.yaml sets selector.name to its file name
                chosen.get("selector", "?"),
                int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
                overrides=job,
                reason="planned in multirun.yaml, never started (no job dir with these overrides)",
            )
        )
    return out


def collect(root: Path) -> Collected:
    """Every run below ``root`` (a run dir, a multirun dir, or a folder of them), with its status."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: pass a geal-run output or multirun dir")
    runs = [read_run(d) for d in _run_dirs(root)]
    for multirun in sorted(root.rglob("multirun.yaml")):
        runs += _not_started(multirun, runs)
    return Collected(runs)


def varying_settings(runs: Iterable[RunRecord]) -> list[str]:
    """Dotted config keys whose value differs between runs of the same method (seeds aside): the
    settings a sweep varied (τ, K, distance, data...). Keys that always vary together count once (the one
    ending in ``name``, else the shortest)."""
    runs = [r for r in runs if r.config]
    by_method: dict[str, list[dict[str, str]]] = {}
    for r in runs:
        by_method.setdefault(r.method, []).append(_flatten(r.config))
    keys: set[str] = set()
    for flats in by_method.values():
        for key in set().union(*flats):
            if key.split(".")[0] in NON_SETTING_KEYS:
                continue
            if len({f.get(key) for f in flats}) > 1:
                keys.add(key)
    # one key per partition of the runs
    flats_all = [_flatten(r.config) for r in runs]
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key in sorted(keys):
        signature = tuple(_partition([f.get(key) for f in flats_all]))
        groups.setdefault(signature, []).append(key)
    chosen = [min(ks, key=lambda k: (not k.endswith("name"), len(k), k)) for ks in groups.values()]
    return sorted(chosen)


def _partition(values: list[Any]) -> list[int]:
    first: dict[Any, int] = {}
    return [first.setdefault(v, len(first)) for v in values]


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(node, sort_keys=True)
    return out
