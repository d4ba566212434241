"""The active-learning cycle runner: draw an initial set, then train → evaluate → select → record, per cycle.

Plain typed arguments (``geal/run/cli.py`` builds everything from the config). A schedule
(:class:`CycleSchedule`) becomes a list of :class:`CyclePlan`: cycle ``k`` first **selects** ``n_select``
new images (cycle 0: the initial set, drawn by the ``initial_draw`` selector, by the run's selector, or read
from a file; cycle ``k ≥ 1``: by the run's selector, from the images still unlabeled, with the task model of
cycle ``k-1`` in its context), then **trains** the task on the labeled set and **evaluates** it. A one-pass
selector runs in the same runner as a single cycle (it selects the largest budget once and every budget is
trained on its prefix), so both pipelines write the same outputs: a metric and a wall time per budget.

Index spaces: every id here is a **global id** (a position in ``pool.ids``); ``image_ids`` appear only in
the files written for people.

Files written into ``out_dir`` (all atomically, rewritten as the run goes):

- ``label_state.json`` — which cycle labeled each id (labeling order), each cycle's seed, selection time and
  results; rewritten after every selection and every evaluation, so an interrupted run resumes where it
  stopped (a finished selection is never redone; an unfinished training is redone from scratch);
- ``metrics.json`` / ``metrics.jsonl`` — the header, one result per budget (the fields of
  ``geal.run.training.BudgetResult`` plus ``cycle``, ``select_s``, ``acquisition_s``, ``n_labeled``) and
  ``seconds`` (flat floats: ``selection``, ``fit``, ``eval``, ``acquisition``, ``total``);
- ``selection.json`` / ``selected_ids.txt`` — the whole labeled set in labeling order (readable by
  ``geal-run selection_file=...``), with the cycle of every id under ``info.cycle_of``;
- ``cycles/cycle_XX/`` — each cycle's own selection outputs (``geal.run.outputs.run_selection``).

``acquisition_s`` is the wall time the labeled set of a budget cost to *choose*: every selection up to its
cycle, plus — for selectors that use the task model (``Selector.requires`` has ``task.*``) — the trainings
of the earlier cycles whose models made those selections. Evaluation-only trainings are not counted; the
time an interrupted run spends refitting a lost model on resume is recorded as ``recovery_s``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector
from geal.api.task import Task
from geal.run.outputs import git_state, run_selection, versions
from geal.run.training import MetricsLogger
from geal.util.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

InitialKind = Literal["auto", "draw", "selector", "labeled"]
#: bumped when the meaning of label_state.json changes
LABEL_STATE_VERSION = 1


@dataclass(frozen=True)
class CycleSchedule:
    """How the labeled set grows.

    initial:      how cycle 0's set is drawn: ``draw`` (the ``initial_draw`` selector, random by default),
                  ``selector`` (the run's selector: one-pass selectors), ``labeled`` (the ids of a file),
                  ``auto`` (``selector`` when the run's selector is ``cold_start``, else ``draw``).
    initial_size: images in the initial set; ``None`` with ``n_cycles=0`` is the one-pass schedule: the
                  initial set is the largest of the run's budgets and every budget is trained on its prefix.
    step:         images selected per later cycle.
    n_cycles:     selection cycles after the initial set (budgets ``initial_size + k * step``, k = 0..n).
    reinit:       True: every training starts from a fresh model; False: it warm-starts from the previous
                  training's model (the task must list ``warm_start`` in ``provides``).
    """

    initial: InitialKind = "auto"
    initial_size: int | None = 1000
    step: int = 1000
    n_cycles: int = 9
    reinit: bool = True

    def __post_init__(self) -> None:
        if self.initial not in ("auto", "draw", "selector", "labeled"):
            raise ValueError(f"cycles.initial must be auto, draw, selector or labeled, got {self.initial!r}")
        if isinstance(self.n_cycles, bool) or not isinstance(self.n_cycles, int) or self.n_cycles < 0:
            raise ValueError(f"cycles.n_cycles must be an integer ≥ 0, got {self.n_cycles!r}")
        if self.n_cycles > 0 and (not isinstance(self.step, int) or self.step <= 0):
            raise ValueError(f"cycles.step must be a positive integer, got {self.step!r}")
        if self.initial_size is None and self.n_cycles != 0:
            raise ValueError(
                "cycles.initial_size=null is the one-pass schedule (select the largest budget once): it needs"
                " cycles.n_cycles=0; give an initial_size for a multi-cycle schedule"
            )
        if self.initial_size is not None and (
            isinstance(self.initial_size, bool)
            or not isinstance(self.initial_size, int)
            or self.initial_size <= 0
        ):
            raise ValueError(
                f"cycles.initial_size must be a positive integer or null, got {self.initial_size!r}"
            )


@dataclass(frozen=True)
class CyclePlan:
    """One cycle: select ``n_select`` new images (``draw`` says how), then train/evaluate at each budget
    of ``eval_budgets`` (sizes of prefixes of the labeling order; the last is the whole labeled set)."""

    cycle: int
    draw: Literal["draw", "selector", "labeled"]
    n_select: int
    eval_budgets: tuple[int, ...]


def plan_cycles(
    schedule: CycleSchedule,
    selector: Selector,
    budgets: Sequence[int] = (),
    n_labeled_file: int | None = None,
    pool_size: int | None = None,
) -> list[CyclePlan]:
    """The cycles of ``schedule`` for ``selector``.

    budgets:        the run's budgets, used only by the one-pass schedule (``initial_size=None``).
    n_labeled_file: the size of the ``labeled`` file's set when ``initial == "labeled"``.
    """
    initial = schedule.initial
    if initial == "auto":
        initial = "selector" if selector.cold_start else "draw"
    if initial == "selector" and not selector.cold_start:
        raise ValueError(
            f"cycles.initial=selector, but selector {getattr(selector, 'name', type(selector).__name__)} "
            "cannot pick from nothing (it needs a trained task model or a labeled set): use "
            "cycles.initial=draw (random initial set) or cycles.initial=labeled with labeled=FILE"
        )
    size = schedule.initial_size
    if initial == "labeled":
        if not n_labeled_file:
            raise ValueError(
                "cycles.initial=labeled needs a non-empty labeled=FILE (image ids or a selection.json)"
            )
        if size is not None and size != n_labeled_file:
            raise ValueError(
                f"cycles.initial_size={size} but the labeled file holds {n_labeled_file} images: set "
                f"cycles.initial_size={n_labeled_file} or null"
            )
        size = n_labeled_file
    if size is None:
        wanted = sorted({int(b) for b in budgets})
        if not wanted or wanted[0] <= 0:
            raise ValueError(f"the one-pass schedule needs positive budgets, got {list(budgets)}")
        plans = [CyclePlan(0, initial, wanted[-1], tuple(wanted))]  # type: ignore[arg-type]
    else:
        plans = [CyclePlan(0, initial, size, (size,))]  # type: ignore[arg-type]
        for k in range(1, schedule.n_cycles + 1):
            plans.append(CyclePlan(k, "selector", schedule.step, (size + k * schedule.step,)))
    total = plans[-1].eval_budgets[-1]
    if pool_size is not None and total > pool_size:
        raise ValueError(
            f"the schedule labels {total} images but the pool has {pool_size}: lower cycles.initial_size, "
            "cycles.step or cycles.n_cycles"
        )
    return plans


def cycle_seed(seed: int, cycle: int) -> int:
    """The seed of cycle ``cycle``'s selection: the run's seed for cycle 0 (so a random initial set equals
    ``selector=random``'s first picks), an independent stream per later cycle (numpy SeedSequence)."""
    if cycle == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(cycle)]).generate_state(1)[0])


def check_task_provides(selector: Selector, task: Task, reinit: bool = True) -> None:
    """Fail at start-up when the selector needs task methods the task does not provide (or warm start is
    asked of a task that cannot)."""
    name = getattr(selector, "name", type(selector).__name__)
    task_name = getattr(task, "name", type(task).__name__)
    needed = sorted(r.removeprefix("task.") for r in selector.requires if r.startswith("task."))
    missing = [m for m in needed if m not in task.provides]
    if missing:
        raise ValueError(
            f"selector {name} needs task method(s) {missing}, but task {task_name} provides only "
            f"{sorted(task.provides)}: pick a task that provides them (e.g. a classifier for predict_proba) "
            "or another selector"
        )
    if not reinit and "warm_start" not in task.provides:
        raise ValueError(
            f"cycles.reinit=false (warm start) but task {task_name} cannot warm-start (no 'warm_start' in"
            " its provides): use cycles.reinit=true"
        )


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like documents (for error messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted({*a, *b}) for d in differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "(root)"]


@dataclass
class CycleResult:
    """One trained and evaluated budget (the fields of ``geal.run.training.BudgetResult`` and the cycle's)."""

    budget: int
    metrics: dict[str, float]
    fit: dict[str, float]
    fit_s: float
    eval_s: float
    cycle: int
    n_labeled: int
    select_s: float
    acquisition_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CycleRecord:
    """What label_state.json keeps per cycle."""

    cycle: int
    seed: int
    drawn_by: str
    n_selected: int
    select_s: float
    selection_info: dict[str, Any] = field(default_factory=dict)
    results: list[CycleResult] = field(default_factory=list)


@dataclass
class LabelState:
    """Which cycle labeled each global id, in labeling order; per-cycle records; recovery time."""

    identity: dict[str, Any]
    order: list[int] = field(default_factory=list)
    cycle_of: list[int] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    cycles: list[CycleRecord] = field(default_factory=list)
    recovery_s: float = 0.0
    elapsed_s: float = 0.0

    def record(self, cycle: int) -> CycleRecord | None:
        return next((c for c in self.cycles if c.cycle == cycle), None)

    def results(self) -> list[CycleResult]:
        return [r for c in self.cycles for r in c.results]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": LABEL_STATE_VERSION,
            "identity": self.identity,
            "order": self.order,
            "cycle_of": self.cycle_of,
            "scores": self.scores,
            "cycles": [
                {
                    **{k: v for k, v in asdict(c).items() if k != "results"},
                    "results": [r.as_dict() for r in c.results],
                }
                for c in self.cycles
            ],
            "finished_cycles": sum(1 for c in self.cycles if c.results),
            "recovery_s": self.recovery_s,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path) -> LabelState:
        try:
            if doc.get("version") != LABEL_STATE_VERSION:
                raise ValueError(f"version {doc.get('version')} (this code reads {LABEL_STATE_VERSION})")
            cycles = [
                CycleRecord(
                    cycle=int(c["cycle"]),
                    seed=int(c["seed"]),
                    drawn_by=str(c["drawn_by"]),
                    n_selected=int(c["n_selected"]),
                    select_s=float(c["select_s"]),
                    selection_info=dict(c.get("selection_info") or {}),
                    results=[CycleResult(**r) for r in c["results"]],
                )
                for c in doc["cycles"]
            ]
            state = cls(
                identity=doc["identity"],
                order=[int(i) for i in doc["order"]],
                cycle_of=[int(i) for i in doc["cycle_of"]],
                scores=list(doc["scores"]),
                cycles=cycles,
                recovery_s=float(doc.get("recovery_s", 0.0)),
                elapsed_s=float(doc.get("elapsed_s", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{path} is not a label state this code can resume ({type(err).__name__}: {err}): delete it "
                "or use a new run dir (hydra.run.dir=...)"
            ) from err
        if len(state.order) != len(state.cycle_of) or len(set(state.order)) != len(state.order):
            raise ValueError(f"{path} is corrupt: ids repeat or cycle_of does not match order; delete it")
        return state


@dataclass
class CycleRunOutput:
    results: list[CycleResult]
    state: LabelState
    seconds: dict[str, float]
    files: dict[str, str]


class CycleRunner:
    """Runs a plan of cycles for one task, selector and pool; see the module docstring.

    task:         the task (``fit``/``evaluate``; a selector's ``task.*`` needs are checked here).
    selector:     picks cycles ``k ≥ 1`` (and cycle 0 when its draw is ``selector``).
    initial_draw: picks cycle 0 when its draw is ``draw`` (e.g. ``baselines.random.RandomSelector``).
    initial_ids:  cycle 0's set when its draw is ``labeled`` (global ids).
    context:      the shared selection context (seed, device, features, excluded); ``labeled``, ``seed`` and
                  ``task`` are set per cycle.
    header:       run-level fields of metrics.json (method, selector, seed, task, pool, config...).
    """

    def __init__(
        self,
        task: Task,
        selector: Selector,
        pool: ImagePool,
        plans: Sequence[CyclePlan],
        out_dir: Path,
        header: dict[str, Any],
        context: SelectionContext,
        initial_draw: Selector | None = None,
        initial_ids: Sequence[int] = (),
        reinit: bool = True,
        logger: MetricsLogger | None = None,
        resume: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        if not plans:
            raise ValueError("the cycle plan is empty")
        if plans[0].draw == "draw" and initial_draw is None:
            raise ValueError(
                "cycle 0 is drawn by cycles.initial_draw, but none was given (set cycles.initial_draw)"
            )
        if plans[0].draw == "labeled" and len(initial_ids) != plans[0].n_select:
            raise ValueError(f"cycle 0 needs {plans[0].n_select} labeled ids, got {len(initial_ids)}")
        selector.bind_task(task)  # e.g. Learn-Loss attaches its loss-prediction plugin (→ predict_loss)
        check_task_provides(selector, task, reinit)
        if plans[0].draw == "draw" and initial_draw is not None and not initial_draw.cold_start:
            raise ValueError(
                f"cycles.initial_draw={getattr(initial_draw, 'name', type(initial_draw).__name__)} cannot "
                "pick from nothing (no trained model or labeled set yet): use a one-pass selector (random, "
                "geal, coreset_cos)"
            )
        self.task, self.selector, self.pool = task, selector, pool
        self.plans = list(plans)
        self.out_dir = Path(out_dir)
        self.header = header
        self.context = context
        self.initial_draw = initial_draw
        self.initial_ids = [int(i) for i in initial_ids]
        self.reinit = reinit
        self.logger = logger
        self.resume = resume
        self.config = config
        self.uses_task = any(r.startswith("task.") for r in selector.requires)
        #: every training in order: (cycle, budget)
        self.fits = [(p.cycle, b) for p in self.plans for b in p.eval_budgets]
        #: the fit whose model the task holds now (index into self.fits), None before any fit
        self.model_at: int | None = None
        #: tasks that checkpoint into ``work_dir`` (the torch engine) get one sub-folder per training, so a
        #: resumed run reloads a finished model from its checkpoint instead of training it again
        base = getattr(task, "work_dir", None)
        self.task_work_dir = Path(base) if base is not None else None
        self.selector_name = str(getattr(selector, "name", type(selector).__name__))

    # ------------------------------------------------------------------------------------------ state

    @property
    def state_path(self) -> Path:
        return self.out_dir / "label_state.json"

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to resume this run's label state."""
        return json.loads(
            json.dumps(
                {
                    **{k: v for k, v in self.header.items() if k != "config"},
                    # the run's settings, less those that do not change results (output.*)
                    "config": {k: v for k, v in (self.header.get("config") or {}).items() if k != "output"},
                    "plan": [asdict(p) for p in self.plans],
                    "reinit": self.reinit,
                    "initial_ids": self.initial_ids,
                },
                default=str,
            )
        )

    def load_state(self) -> LabelState:
        identity = self.identity()
        path = self.state_path
        if not path.exists():
            return LabelState(identity)
        if not self.resume:
            log.info("output.resume=false: starting over (replacing %s)", path)
            return LabelState(identity)
        state = LabelState.from_json(json.loads(path.read_text()), path)
        if state.identity != identity:
            diff = differing_keys(identity, state.identity)
            raise ValueError(
                f"{path} belongs to another run (differs in {diff}): use a new run dir (hydra.run.dir=...), "
                f"output.resume=false to start over, or delete {path}"
            )
        done = [r.budget for r in state.results()]
        log.info(
            "resuming %s: %d labeled ids, cycles with a selection %s, budgets already trained %s",
            path,
            len(state.order),
            [c.cycle for c in state.cycles],
            done,
        )
        return state

    def save(self, state: LabelState, started: float, base_elapsed: float) -> None:
        state.elapsed_s = base_elapsed + (time.perf_counter() - started)
        atomic_write_json(self.state_path, state.to_json())
        results = state.results()
        atomic_write_json(
            self.out_dir / "metrics.json", {**self.header, "results": [r.as_dict() for r in results]}
        )
        atomic_write_bytes(
            self.out_dir / "metrics.jsonl", "".join(json.dumps(r.as_dict()) + "\n" for r in results).encode()
        )
        self.write_selection(state)

    def write_selection(self, state: LabelState) -> None:
        """The whole labeled set in labeling order, in the format of geal-select's selection.json."""
        image_ids = [self.pool.ids[i] for i in state.order]
        doc = {
            "selector": self.selector_name,
            "pool": self.pool.name,
            "pool_identity": self.pool.identity(),
            "budget": len(state.order),
            "seed": int(self.context.seed),
            "nested": False,
            "global_ids": state.order,
            "image_ids": image_ids,
            "scores": state.scores,
            "labeled_global_ids": [],
            "info": {"pipeline": "cycles", "cycle_of": state.cycle_of},
            "config": self.config,
        }
        atomic_write_json(self.out_dir / "selection.json", doc)
        atomic_write_bytes(self.out_dir / "selected_ids.txt", "".join(f"{i}\n" for i in image_ids).encode())

    # ------------------------------------------------------------------------------------------ steps

    def select(self, plan: CyclePlan, state: LabelState) -> CycleRecord:
        """Cycle ``plan.cycle``'s selection (the task model of the previous cycle is in place)."""
        seed = cycle_seed(self.context.seed, plan.cycle)
        if plan.draw == "labeled":
            t0 = time.perf_counter()
            picks = Selection(
                list(self.initial_ids), [float("nan")] * len(self.initial_ids), {"from": "labeled"}
            )
            select_s = time.perf_counter() - t0
            drawn_by = "labeled"
        else:
            selector = self.initial_draw if plan.draw == "draw" else self.selector
            assert selector is not None
            drawn_by = str(getattr(selector, "name", type(selector).__name__))
            ctx = SelectionContext(
                labeled=list(state.order),
                seed=seed,
                device=self.context.device,
                features=self.context.features,
                excluded=list(self.context.excluded),
                task=self.task,
                progress=self.context.progress,
            )
            log.info(
                "cycle %d: %s selects %d of %d unlabeled images",
                plan.cycle,
                drawn_by,
                plan.n_select,
                len(self.pool) - len(state.order),
            )
            result = run_selection(
                self.pool,
                selector,
                plan.n_select,
                ctx,
                self.out_dir / "cycles" / f"cycle_{plan.cycle:02d}",
                split_name=f"{self.selector_name}_cycle{plan.cycle:02d}",
                extra_info={"cycle": plan.cycle, "cycle_seed": seed},
                config=self.config,
            )
            picks = result.selection
            select_s = result.timings["selection_total_s"]
        taken = set(state.order)
        if taken.intersection(picks.global_ids) or len(picks.global_ids) != plan.n_select:
            raise RuntimeError(f"cycle {plan.cycle}: the selection repeats labeled ids or has the wrong size")
        state.order.extend(int(i) for i in picks.global_ids)
        state.cycle_of.extend([plan.cycle] * len(picks.global_ids))
        state.scores.extend(None if s != s else float(s) for s in picks.scores)
        record = CycleRecord(plan.cycle, seed, drawn_by, len(picks.global_ids), select_s, dict(picks.info))
        state.cycles.append(record)
        if self.logger is not None:
            self.logger.log_metrics(
                {
                    "select_s": select_s,
                    "n_selected": float(record.n_selected),
                    "n_labeled": float(len(state.order)),
                },
                step=len(state.order),
                prefix="cycle",
            )
        return record

    def fit(self, index: int, state: LabelState) -> tuple[dict[str, float], float]:
        """Train fit ``index`` (warm-started from fit ``index-1`` unless reinit): (stats, seconds)."""
        _, budget = self.fits[index]
        ids = state.order[:budget]
        warm = not self.reinit and index > 0
        if warm and self.model_at != index - 1:
            self.ensure_model(index - 1, state)
        if self.task_work_dir is not None:
            self.task.work_dir = self.task_work_dir / f"budget_{budget:06d}"  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        stats = self.task.fit(ids, warm_start=True) if warm else self.task.fit(ids)  # type: ignore[call-arg]
        seconds = time.perf_counter() - t0
        self.model_at = index
        return {k: float(v) for k, v in (stats or {}).items()}, seconds

    def ensure_model(self, index: int, state: LabelState) -> None:
        """Make the task hold fit ``index``'s model again after a resume (refit; warm start: replay).

        Deterministic tasks give back the very model the interrupted run had."""
        if self.model_at == index:
            return
        t0 = time.perf_counter()
        first = index if self.reinit else (self.model_at + 1 if self.model_at is not None else 0)
        log.info(
            "resume: refitting the model of budget %d to continue (fits %d..%d)",
            self.fits[index][1],
            first,
            index,
        )
        for i in range(first, index + 1):
            self.fit(i, state)
        state.recovery_s += time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> CycleRunOutput:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        state = self.load_state()
        base_elapsed = state.elapsed_s
        self.write_run_info()
        index = 0
        for plan in self.plans:
            record = state.record(plan.cycle)
            if record is None:
                if plan.cycle > 0 and self.uses_task:
                    self.ensure_model(index - 1, state)  # the model of the previous cycle's full labeled set
                record = self.select(plan, state)
                self.save(state, started, base_elapsed)
            done = {r.budget for r in record.results}
            for budget in plan.eval_budgets:
                if budget in done:
                    index += 1
                    continue
                log.info(
                    "cycle %d: training %s on %d labeled images", plan.cycle, type(self.task).__name__, budget
                )
                fit_stats, fit_s = self.fit(index, state)
                t0 = time.perf_counter()
                metrics = {k: float(v) for k, v in self.task.evaluate().items()}
                eval_s = time.perf_counter() - t0
                result = CycleResult(
                    budget=budget,
                    metrics=metrics,
                    fit=fit_stats,
                    fit_s=fit_s,
                    eval_s=eval_s,
                    cycle=plan.cycle,
                    n_labeled=budget,
                    select_s=record.select_s,
                    acquisition_s=self.acquisition_seconds(state, plan.cycle),
                )
                record.results.append(result)
                self.save(state, started, base_elapsed)
                log.info(
                    "cycle %d, budget %d: %s (fit %.1f s, select %.1f s)",
                    plan.cycle,
                    budget,
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                    fit_s,
                    record.select_s,
                )
                if self.logger is not None:
                    self.logger.log_metrics(
                        {
                            **{f"test/{k}": v for k, v in metrics.items()},
                            "time/fit_s": fit_s,
                            "time/eval_s": eval_s,
                            "time/select_s": record.select_s,
                            "time/acquisition_s": result.acquisition_s,
                            "cycle": float(plan.cycle),
                        },
                        step=budget,
                    )
                index += 1
        results = state.results()
        seconds = {
            "selection": sum(c.select_s for c in state.cycles),
            "fit": sum(r.fit_s for r in results),
            "eval": sum(r.eval_s for r in results),
            "acquisition": results[-1].acquisition_s,
            "recovery": state.recovery_s,
            "total": base_elapsed + (time.perf_counter() - started),
        }
        state.elapsed_s = seconds["total"]
        atomic_write_json(self.state_path, state.to_json())
        atomic_write_json(
            self.out_dir / "metrics.json",
            {**self.header, "results": [r.as_dict() for r in results], "seconds": seconds},
        )
        if self.logger is not None:
            self.logger.log_summary({"final": results[-1].as_dict(), "seconds": seconds})
        files = {
            name: str(self.out_dir / name)
            for name in (
                "label_state.json",
                "metrics.json",
                "metrics.jsonl",
                "selection.json",
                "run_info.json",
            )
        }
        return CycleRunOutput(results, state, seconds, files)

    def acquisition_seconds(self, state: LabelState, cycle: int) -> float:
        """Selections up to ``cycle`` plus, for task-using selectors, the trainings that chose them."""
        total = sum(c.select_s for c in state.cycles if c.cycle <= cycle)
        if self.uses_task:
            for c in state.cycles:
                if c.cycle < cycle and c.results:
                    total += c.results[-1].fit_s  # the model trained on cycle c's whole labeled set
        return total

    def write_run_info(self) -> None:
        atomic_write_json(
            self.out_dir / "run_info.json",
            {
                "pipeline": "cycles",
                "git": git_state(),
                "versions": versions(),
                "device": str(self.context.device),
                "torch_threads": torch.get_num_threads(),
                "pool": {"name": self.pool.name, "n_images": len(self.pool)},
                "selector": self.selector_name,
                "selector_requires": sorted(self.selector.requires),
                "initial_draw": getattr(self.initial_draw, "name", None),
                "plan": [asdict(p) for p in self.plans],
                "reinit": self.reinit,
                "cycle_seeds": {p.cycle: cycle_seed(self.context.seed, p.cycle) for p in self.plans},
            },
        )


def run_cycles(
    task: Task,
    selector: Selector,
    pool: ImagePool,
    schedule: CycleSchedule,
    out_dir: Path,
    header: dict[str, Any],
    context: SelectionContext,
    *,
    initial_draw: Selector | None = None,
    initial_ids: Sequence[int] = (),
    budgets: Sequence[int] = (),
    logger: MetricsLogger | None = None,
    resume: bool = True,
    config: dict[str, Any] | None = None,
) -> CycleRunOutput:
    """Plan ``schedule`` for ``selector`` and run it (see :class:`CycleRunner`)."""
    plans = plan_cycles(schedule, selector, budgets, len(initial_ids) or None, len(pool))
    header = {**header, "pipeline": "cycles", "schedule": asdict(schedule)}
    runner = CycleRunner(
        task,
        selector,
        pool,
        plans,
        out_dir,
        header,
        context,
        initial_draw=initial_draw,
        initial_ids=initial_ids,
        reinit=schedule.reinit,
        logger=logger,
        resume=resume,
        config=config,
    )
    return runner.run()
