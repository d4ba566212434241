"""The run loop of ``geal-run``: select → train → evaluate → record, for every cycle of a schedule.

Plain typed arguments (``geal/run/cli.py`` builds everything from the config). A schedule
(:class:`~geal.run.schedule.CycleSchedule`) becomes a list of :class:`~geal.run.schedule.CyclePlan`; each
cycle first **selects** ``n_select`` new images (cycle 0: by the run's selector, by the ``initial_draw``
selector, or given ids; cycle ``k ≥ 1``: by the run's selector, from the images still unlabeled, with the
task model of cycle ``k-1`` in its context), then **trains** the task at each of its budgets and
**evaluates** it. The one-pass schedule (what ``geal-run`` runs without ``cycles=``) is one selection
trained at every budget of ``budgets`` (one selection per budget for a non-nested selector).

The task receives its context (:meth:`geal.api.task.Task.setup`) and the selector binds to it
(:meth:`geal.api.selector.Selector.bind_task`) right before the first fit — after the first selection, so
feature extraction the task shares with the selector counts as selection time.

Index spaces: every id here is a **global id** (a position in ``pool.ids``); ``image_ids`` appear only in
the files written for people.

Files written into ``out_dir`` (all atomically, rewritten as the run goes):

- ``label_state.json`` — the resume file (geal.run.label_state): a finished selection is never redone and a
  finished budget never retrained; an interrupted torch fit resumes from its checkpoint;
- ``metrics.json`` / ``metrics.jsonl`` — the header (method, seed, task, pool, config, ``pipeline``,
  ``schedule``), one :class:`~geal.run.label_state.BudgetResult` per budget, and ``seconds`` (flat floats:
  ``selection``, ``fit``, ``total``; an active-learning schedule adds ``eval``, ``acquisition`` and
  ``recovery``);
- each selection's files (geal.run.outputs.run_selection: ``selection.json``, ``selected_ids.txt``,
  ``run_info.json``, ``splits/``): in the run dir itself for the one-pass schedule (in ``budget_<b>/`` for
  each selection of a non-nested selector), in ``cycles/cycle_XX/`` for an active-learning schedule, whose
  run dir also gets the whole labeled set in labeling order (``selection.json``, with the cycle of every
  id under ``info.cycle_of``, readable by ``geal-run selection_file=...``) and a ``run_info.json``;
- ``task/budget_XXXXXX/`` — the work dir of each training (checkpoints of the torch tasks).

``acquisition_s`` is the wall time the labeled set of a budget cost to *choose*: every selection up to its
cycle, plus — for selectors that use the task model (``Selector.requires`` has ``task.*``) — the trainings
of the earlier cycles whose models made those selections. Evaluation-only trainings are not counted; the
time an interrupted run spends refitting a lost model on resume is recorded as ``recovery_s``.

(The schedule and its plan live in geal.run.schedule, the resume file in geal.run.label_state; what is left
here is the loop itself, one class whose steps share the run's state, hence the module's length.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector
from geal.api.task import MetricsLogger, Task, TaskContext
from geal.run.label_state import BudgetResult, CycleRecord, LabelState, differing_keys
from geal.run.outputs import git_state, run_selection, versions, write_run_info, write_selection
from geal.run.schedule import CyclePlan, CycleSchedule, check_task_provides, cycle_seed, plan_cycles
from geal.util.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

#: config keys that do not change what a run computes: a rerun that differs only in them still resumes
NOT_RESUME_KEYS = ("output", "logger", "extraction.progress")


@dataclass
class CycleRunOutput:
    results: list[BudgetResult]
    state: LabelState
    seconds: dict[str, float]
    files: dict[str, str]


def without_keys(config: dict[str, Any], dotted: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` without the dotted keys ``dotted``."""
    out = json.loads(json.dumps(config, default=str))
    for key in dotted:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


class CycleRunner:
    """Runs a plan of cycles for one task, selector and pool; see the module docstring.

    task:          the task (``fit``/``evaluate``; a selector's ``task.*`` needs are checked here).
    selector:      picks cycles ``k ≥ 1`` (and cycle 0 when its draw is ``selector``).
    context:       the shared selection context (seed, device, features, excluded, and ``labeled``: ids
                   labeled before the run, which every selection starts from but no training uses);
                   ``labeled``, ``seed`` and ``task`` are set per cycle.
    header:        run-level fields of metrics.json (method, selector, seed, task, pool, config...).
    task_context:  given to ``task.setup`` before the first fit (None: the task is set up already).
    initial_draw:  picks cycle 0 when its draw is ``draw`` (e.g. ``baselines.random.RandomSelector``).
    initial_ids:   cycle 0's set when its draw is ``labeled`` (global ids).
    one_pass:      the plans come from the one-pass schedule (file layout and ``seconds``, see the module).
    started:       ``time.perf_counter()`` when the run started (default: when :meth:`run` starts).
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
        *,
        task_context: TaskContext | None = None,
        initial_draw: Selector | None = None,
        initial_ids: Sequence[int] = (),
        reinit: bool = True,
        one_pass: bool = False,
        logger: MetricsLogger | None = None,
        resume: bool = True,
        config: dict[str, Any] | None = None,
        write_dataset_split: bool = False,
        started: float | None = None,
    ) -> None:
        if not plans:
            raise ValueError("the cycle plan is empty")
        if plans[0].draw == "draw" and initial_draw is None:
            raise ValueError(
                "cycle 0 is drawn by cycles.initial_draw, but none was given (set cycles.initial_draw)"
            )
        if plans[0].draw == "labeled" and len(initial_ids) != plans[0].n_select:
            raise ValueError(f"cycle 0 needs {plans[0].n_select} labeled ids, got {len(initial_ids)}")
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
        self.task_context = task_context
        self.initial_draw = initial_draw
        self.initial_ids = [int(i) for i in initial_ids]
        self.reinit, self.one_pass = reinit, one_pass
        self.logger = logger
        self.resume = resume
        self.config = config
        self.write_dataset_split = write_dataset_split
        self.started = started
        self.uses_task = any(r.startswith("task.") for r in selector.requires)
        #: every training in order: (cycle, budget)
        self.fits = [(p.cycle, b) for p in self.plans for b in p.eval_budgets]
        #: the fit whose model the task holds now (index into self.fits), None before any fit
        self.model_at: int | None = None
        #: set once the task is set up and the selector bound to it (before the first fit)
        self.task_ready = False
        #: a grown run (see :meth:`grow`): the earlier picks and the results kept for their budgets
        self.grown_from: tuple[list[int], list[BudgetResult], dict[Path, bytes]] | None = None
        #: the task's work dir; each training gets its own sub-folder, so a resumed run finds its checkpoint
        self.task_dir: Path | None = None
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
                    # the run's settings, less those that do not change results
                    "config": without_keys(self.header.get("config") or {}, NOT_RESUME_KEYS),
                    "plan": [asdict(p) for p in self.plans],
                    "reinit": self.reinit,
                    "initial_ids": self.initial_ids,
                    "labeled_before": [int(i) for i in self.context.labeled],
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
            if not self.can_grow(diff):
                raise ValueError(
                    f"{path} belongs to another run (differs in {diff}): use a new run dir "
                    f"(hydra.run.dir=...), output.resume=false to start over, or delete {path}"
                )
            state = self.grow(state, identity)
        if any(len(set(ids)) != len(ids) for ids in (self.labeled_ids(state, c.cycle) for c in state.cycles)):
            raise ValueError(f"{path} is corrupt: an id was labeled twice; delete it")
        log.info(
            "resuming %s: %d labeled ids, cycles with a selection %s, budgets already trained %s",
            path,
            len(state.order),
            [c.cycle for c in state.cycles],
            [r.budget for r in state.results()],
        )
        return state

    def can_grow(self, diff: list[str]) -> bool:
        """A finished one-pass run of a nested selector takes new budgets (its selection for a smaller
        budget is a prefix of the one for a larger); nothing else about it may change."""
        nested = len(self.plans) == 1 and not self.plans[0].restart
        return self.one_pass and nested and set(diff) <= {"plan", "config.budgets"}

    def grow(self, state: LabelState, identity: dict[str, Any]) -> LabelState:
        """``state`` under the run's new budgets: the trained budgets that are still asked for are kept;
        a selection smaller than the new largest budget is made again (:meth:`run` checks that the earlier
        picks are its prefix and puts the kept results back)."""
        plan = self.plans[0]
        record = state.record(plan.cycle)
        kept = [r for r in record.results if r.budget in plan.eval_budgets] if record else []
        log.info(
            "the run in %s grows: budgets %s -> %s (kept: %s)",
            self.out_dir,
            [r.budget for r in record.results] if record else [],
            list(plan.eval_budgets),
            [r.budget for r in kept],
        )
        state.identity = identity
        if record is not None:
            record.results = kept
        if record is not None and len(state.order) < plan.n_select:
            names = ("selection.json", "selected_ids.txt", "run_info.json")  # what the new selection rewrites
            written = {
                self.out_dir / n: (self.out_dir / n).read_bytes()
                for n in names
                if (self.out_dir / n).is_file()
            }
            self.grown_from = (list(state.order), kept, written)
            state.order, state.cycle_of, state.scores, state.cycles = [], [], [], []
        return state

    def labeled_ids(self, state: LabelState, cycle: int) -> list[int]:
        """The labeled set after cycle ``cycle``, in labeling order: every id labeled since the last cycle
        that started afresh (cycle 0, or a restart: see CyclePlan)."""
        first = max(p.cycle for p in self.plans if p.cycle <= cycle and (p.cycle == 0 or p.restart))
        return state.ids_of(first, cycle)

    def save(self, state: LabelState, seconds: dict[str, float] | None = None) -> None:
        """Rewrite label_state.json, metrics.json / metrics.jsonl and (active learning) the labeled set."""
        state.elapsed_s = self.elapsed()
        atomic_write_json(self.state_path, state.to_json())
        results = [r.as_dict() for r in state.results()]
        doc = {**self.header, "results": results, **({"seconds": seconds} if seconds is not None else {})}
        atomic_write_json(self.out_dir / "metrics.json", doc)
        lines = "".join(json.dumps(r) + "\n" for r in results)
        atomic_write_bytes(self.out_dir / "metrics.jsonl", lines.encode())
        if not self.one_pass:
            scores = [float("nan") if v is None else v for v in state.scores]
            info = {"pipeline": "cycles", "cycle_of": state.cycle_of}
            write_selection(
                self.out_dir,
                self.pool,
                Selection(list(state.order), scores, info),
                selector=self.selector_name,
                budget=len(state.order),
                seed=int(self.context.seed),
                nested=False,
                config=self.config,
            )

    def elapsed(self) -> float:
        """Seconds this run has taken, the interrupted runs it resumes included."""
        return self.base_elapsed + (time.perf_counter() - self.t0)

    # ------------------------------------------------------------------------------------------ steps

    def select(self, plan: CyclePlan, state: LabelState) -> CycleRecord:
        """Cycle ``plan.cycle``'s selection (the task model of the previous cycle is in place)."""
        seed = int(self.context.seed) if plan.restart else cycle_seed(self.context.seed, plan.cycle)
        before = [] if plan.cycle == 0 or plan.restart else self.labeled_ids(state, plan.cycle - 1)
        if plan.draw == "labeled":
            t0 = time.perf_counter()
            picks = Selection(
                list(self.initial_ids), [float("nan")] * len(self.initial_ids), {"from": "labeled"}
            )
            select_s, drawn_by = time.perf_counter() - t0, "labeled"
        else:
            selector = self.initial_draw if plan.draw == "draw" else self.selector
            assert selector is not None
            drawn_by = str(getattr(selector, "name", type(selector).__name__))
            ctx = SelectionContext(
                labeled=[*self.context.labeled, *before],
                seed=seed,
                device=self.context.device,
                features=self.context.features,
                excluded=list(self.context.excluded),
                task=self.task,
                progress=self.context.progress,
                on_error=self.context.on_error,
            )
            log.info(
                "cycle %d: %s selects %d of %d unlabeled images",
                plan.cycle,
                drawn_by,
                plan.n_select,
                len(self.pool) - len(ctx.labeled),
            )
            result = run_selection(
                self.pool,
                selector,
                plan.n_select,
                ctx,
                self.selection_dir(plan),
                split_name=self.split_name(plan),
                write_dataset_split=self.write_dataset_split,
                extra_info=self.selection_info(plan, seed),
                config=self.config,
            )
            picks, select_s = result.selection, result.timings["selection_total_s"]
        if set(before).intersection(picks.global_ids) or len(picks.global_ids) != plan.n_select:
            raise RuntimeError(f"cycle {plan.cycle}: the selection repeats labeled ids or has the wrong size")
        state.order.extend(int(i) for i in picks.global_ids)
        state.cycle_of.extend([plan.cycle] * len(picks.global_ids))
        state.scores.extend(None if s != s else float(s) for s in picks.scores)
        record = CycleRecord(plan.cycle, seed, drawn_by, len(picks.global_ids), select_s, dict(picks.info))
        state.cycles.append(record)
        if self.logger is not None:
            n_labeled = len(before) + len(picks.global_ids)
            self.logger.log_metrics(
                {"select_s": select_s, "n_selected": float(record.n_selected), "n_labeled": float(n_labeled)},
                step=n_labeled,
                prefix="cycle",
            )
        return record

    def selection_dir(self, plan: CyclePlan) -> Path:
        if not self.one_pass:
            return self.out_dir / "cycles" / f"cycle_{plan.cycle:02d}"
        return self.out_dir / f"budget_{plan.n_select}" if plan.restart else self.out_dir

    def split_name(self, plan: CyclePlan) -> str:
        if not self.one_pass:
            return f"{self.selector_name}_cycle{plan.cycle:02d}"
        return f"{self.selector_name}_{plan.n_select}"

    def selection_info(self, plan: CyclePlan, seed: int) -> dict[str, Any]:
        """What a selection's run_info.json adds to the selection's own record."""
        if self.one_pass:
            return {"derived": {"device": str(self.context.device), "pool_size": len(self.pool)}}
        return {"cycle": plan.cycle, "cycle_seed": seed}

    def prepare_task(self) -> None:
        """Set the task up and bind the selector to it, once, before the first fit."""
        if self.task_ready:
            return
        if self.task_context is not None:
            self.task.setup(self.task_context)
        self.task_dir = self.task.work_dir
        self.selector.bind_task(self.task)  # e.g. Learn-Loss attaches its loss-prediction plugin
        self.task_ready = True

    def fit(self, index: int, state: LabelState) -> tuple[dict[str, float], float]:
        """Train fit ``index`` (warm-started from fit ``index-1`` unless reinit): (stats, seconds)."""
        self.prepare_task()
        cycle, budget = self.fits[index]
        ids = self.labeled_ids(state, cycle)[:budget]
        warm = not self.reinit and index > 0
        if warm and self.model_at != index - 1:
            self.ensure_model(index - 1, state)
        if self.task_dir is not None:
            self.task.work_dir = self.task_dir / f"budget_{budget:06d}"
        t0 = time.perf_counter()
        stats = self.task.fit(ids, warm_start=warm)
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

    def train_and_evaluate(self, index: int, plan: CyclePlan, record: CycleRecord, state: LabelState) -> None:
        """Fit ``index`` (budget ``self.fits[index][1]`` of ``plan``), evaluate it, record the result."""
        budget = self.fits[index][1]
        log.info("cycle %d: training %s on %d labeled images", plan.cycle, type(self.task).__name__, budget)
        fit_stats, fit_s = self.fit(index, state)
        t0 = time.perf_counter()
        metrics = {k: float(v) for k, v in self.task.evaluate().items()}
        eval_s = time.perf_counter() - t0
        labels = self.pool.labels
        if labels is not None:  # what the labeled set covers: distinct classes among its images
            ids = self.labeled_ids(state, plan.cycle)[:budget]
            metrics["classes_covered"] = float(len({labels[i] for i in ids}))
        result = BudgetResult(
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
        record.results.sort(key=lambda r: r.budget)  # a grown run may add a budget below the trained ones
        self.save(state)
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

    def acquisition_seconds(self, state: LabelState, cycle: int) -> float:
        """The selections that made cycle ``cycle``'s labeled set plus, for task-using selectors, the
        trainings whose models chose them."""
        first = max(p.cycle for p in self.plans if p.cycle <= cycle and (p.cycle == 0 or p.restart))
        lineage = [c for c in state.cycles if first <= c.cycle <= cycle]
        total = sum(c.select_s for c in lineage)
        if self.uses_task:
            # the model trained on each earlier cycle's whole labeled set
            total += sum(c.results[-1].fit_s for c in lineage if c.cycle < cycle and c.results)
        return total

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> CycleRunOutput:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.t0 = self.started if self.started is not None else time.perf_counter()
        self.base_elapsed = 0.0
        state = self.load_state()
        self.base_elapsed = state.elapsed_s
        if not self.one_pass:
            self.write_run_info()
        index = 0
        for plan in self.plans:
            record = state.record(plan.cycle)
            if record is None:
                if plan.cycle > 0 and self.uses_task and not plan.restart:
                    self.ensure_model(index - 1, state)  # the model of the previous cycle's full labeled set
                record = self.select(plan, state)
                if self.grown_from is not None:  # a grown run: the earlier picks must be the new prefix
                    earlier, kept, written = self.grown_from
                    if state.order[: len(earlier)] != earlier:
                        for path, data in written.items():  # the run dir stays as it was
                            atomic_write_bytes(path, data)
                        raise ValueError(
                            f"{self.state_path}: the selector's {len(state.order)} picks do not start with "
                            f"the run's earlier {len(earlier)}, so the run cannot grow; use a new run dir"
                        )
                    record.results = kept
                self.save(state)
            done = {r.budget for r in record.results}
            for budget in plan.eval_budgets:
                if budget not in done:
                    self.train_and_evaluate(index, plan, record, state)
                index += 1
        return self.finish(state)

    def finish(self, state: LabelState) -> CycleRunOutput:
        """The run's wall times, the final metrics.json and the logger's summary."""
        results = state.results()
        seconds = {"selection": sum(c.select_s for c in state.cycles), "fit": sum(r.fit_s for r in results)}
        if not self.one_pass:
            seconds["eval"] = sum(r.eval_s for r in results)
            seconds["acquisition"] = results[-1].acquisition_s
            seconds["recovery"] = state.recovery_s
        seconds["total"] = self.elapsed()
        self.save(state, seconds)
        if self.logger is not None:
            self.logger.log_summary({"final": results[-1].as_dict(), "seconds": seconds})
        names = ("label_state.json", "metrics.json", "metrics.jsonl", "selection.json", "run_info.json")
        files = {n: str(self.out_dir / n) for n in names if (self.out_dir / n).is_file()}
        return CycleRunOutput(results, state, seconds, files)

    def write_run_info(self) -> None:
        """An active-learning run's own run_info.json (each selection writes its own in its cycle dir)."""
        write_run_info(
            self.out_dir,
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
    task_context: TaskContext | None = None,
    initial_draw: Selector | None = None,
    initial_ids: Sequence[int] = (),
    budgets: Sequence[int] = (),
    logger: MetricsLogger | None = None,
    resume: bool = True,
    config: dict[str, Any] | None = None,
    write_dataset_split: bool = False,
    started: float | None = None,
) -> CycleRunOutput:
    """Plan ``schedule`` for ``selector`` and run it (see :class:`CycleRunner`). ``budgets``: the budgets
    of the one-pass schedule (an active-learning schedule has its own)."""
    n_given, n_before = len(initial_ids) or None, len(context.labeled)
    plans = plan_cycles(schedule, selector, budgets, n_given, len(pool), n_labeled_before=n_before)
    pipeline = "one_pass" if schedule.one_pass else "cycles"
    header = {**header, "pipeline": pipeline, "schedule": asdict(schedule)}
    runner = CycleRunner(
        task,
        selector,
        pool,
        plans,
        out_dir,
        header,
        context,
        task_context=task_context,
        initial_draw=initial_draw,
        initial_ids=initial_ids,
        reinit=schedule.reinit,
        one_pass=schedule.one_pass,
        logger=logger,
        resume=resume,
        config=config,
        write_dataset_split=write_dataset_split,
        started=started,
    )
    return runner.run()
