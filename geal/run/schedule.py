"""How the labeled set grows: a schedule (``geal/conf/cycles/``) and the plan of cycles the run loop follows.

A :class:`CycleSchedule` is either

* the **one-pass schedule** (``initial_size=None``, ``n_cycles=0``; ``geal/conf/cycles/one_pass.yaml``, what
  ``geal-run`` runs by default): the selection is made once and the task is trained at each of the run's
  ``budgets``; a nested selector selects the largest budget once and every budget trains on its prefix, a
  non-nested one selects each budget afresh (one selection per budget); or
* an **active-learning schedule** (``initial_size`` images, then ``n_cycles`` cycles of ``step`` more): the
  budgets are ``initial_size + k * step``, and every cycle after the first is picked with the previous
  cycle's task model at hand.

:func:`plan_cycles` turns a schedule into :class:`CyclePlan` s, one per selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from geal.api.selector import Selector
from geal.api.task import Task

InitialKind = Literal["auto", "draw", "selector", "labeled"]
Draw = Literal["draw", "selector", "labeled"]


@dataclass(frozen=True)
class CycleSchedule:
    """How the labeled set grows.

    initial:      how cycle 0's set is drawn: ``draw`` (the ``initial_draw`` selector, random by default),
                  ``selector`` (the run's selector: one-pass selectors), ``labeled`` (given ids: the
                  ``labeled`` file of an active-learning run, the ``selection_file`` of a one-pass run),
                  ``auto`` (``selector`` when the run's selector is ``cold_start``, else ``draw``).
    initial_size: images in the initial set; ``None`` (with ``n_cycles=0``) is the one-pass schedule.
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

    @property
    def one_pass(self) -> bool:
        """The one-pass schedule: selected once, trained at the run's ``budgets``."""
        return self.initial_size is None

    def budgets(self) -> list[int]:
        """The budgets of an active-learning schedule (``initial_size + k * step``); [] for one pass."""
        if self.initial_size is None:
            return []
        return [self.initial_size + k * self.step for k in range(self.n_cycles + 1)]


#: the schedule of ``geal-run`` without an active-learning schedule (``geal/conf/cycles/one_pass.yaml``)
ONE_PASS = CycleSchedule(initial="selector", initial_size=None, step=0, n_cycles=0, reinit=True)


@dataclass(frozen=True)
class CyclePlan:
    """One selection: pick ``n_select`` new images (``draw`` says how), then train/evaluate at each budget
    of ``eval_budgets`` (sizes of prefixes of the cycle's labeled set; the last is the whole set).

    restart: the selection starts again from the run's pre-labeled ids instead of adding to the previous
    cycles' picks, and its trainings use only its own picks (the one-pass schedule of a non-nested
    selector: one selection per budget).
    """

    cycle: int
    draw: Draw
    n_select: int
    eval_budgets: tuple[int, ...]
    restart: bool = False


def check_budgets(budgets: Sequence[int]) -> list[int]:
    """Sorted unique positive budgets (ValueError naming the fix otherwise)."""
    if not budgets:
        raise ValueError("budgets is empty: give at least one, e.g. budgets=[100]")
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or b <= 0]
    if bad:
        raise ValueError(f"budgets must be positive integers, got {bad}")
    return sorted(set(budgets))


def _selector_name(selector: Selector) -> str:
    return str(getattr(selector, "name", type(selector).__name__))


def check_first_pick(selector: Selector, initial: str, one_pass: bool, n_labeled_before: int) -> None:
    """Cycle 0 picked by the run's selector: it must be able to pick without a trained task model, and
    from nothing unless the run starts from labeled ids."""
    name = _selector_name(selector)
    task_needs = sorted(r for r in selector.requires if r.startswith("task."))
    if one_pass and task_needs:
        raise ValueError(
            f"selector {name} needs {task_needs}, which a one-pass selection does not provide: run it in "
            "active-learning cycles (geal-run cycles=demo, see geal/conf/cycles/)"
        )
    if one_pass and not selector.cold_start and not n_labeled_before:
        raise ValueError(
            f"selector {name} cannot pick from nothing (it needs a labeled set): pass labeled=FILE, or run "
            "it in active-learning cycles (geal-run cycles=demo draws a random initial set)"
        )
    if not one_pass and initial == "selector" and not selector.cold_start:
        raise ValueError(
            f"cycles.initial=selector, but selector {name} cannot pick from nothing (it needs a trained task "
            "model or a labeled set): use cycles.initial=draw (random initial set) or cycles.initial=labeled "
            "with labeled=FILE"
        )


def plan_cycles(
    schedule: CycleSchedule,
    selector: Selector,
    budgets: Sequence[int] = (),
    n_given: int | None = None,
    pool_size: int | None = None,
    n_labeled_before: int = 0,
) -> list[CyclePlan]:
    """The cycles of ``schedule`` for ``selector``.

    budgets:          the run's budgets, used only by the one-pass schedule.
    n_given:          the number of given ids when ``initial == "labeled"``.
    n_labeled_before: ids labeled before the run that the one-pass selection starts from (``labeled=``).
    """
    auto: Draw = "selector" if selector.cold_start else "draw"
    initial: Draw = auto if schedule.initial == "auto" else schedule.initial
    if initial == "selector":
        check_first_pick(selector, initial, schedule.one_pass, n_labeled_before)
    if initial == "labeled" and not n_given:
        raise ValueError(
            "cycles.initial=labeled needs a non-empty labeled=FILE (image ids or a selection.json)"
        )
    if schedule.one_pass:
        wanted = check_budgets([int(b) for b in budgets])
        if initial == "labeled" and n_given != wanted[-1]:
            raise ValueError(f"the one-pass schedule trains up to {wanted[-1]} given ids, got {n_given}")
        if initial == "selector" and not selector.nested and len(wanted) > 1:
            plans = [CyclePlan(k, "selector", b, (b,), restart=True) for k, b in enumerate(wanted)]
        else:
            plans = [CyclePlan(0, initial, wanted[-1], tuple(wanted))]
    else:
        size = schedule.initial_size
        assert size is not None
        if initial == "labeled" and size != n_given:
            raise ValueError(
                f"cycles.initial_size={size} but the labeled file holds {n_given} images: set "
                f"cycles.initial_size={n_given}"
            )
        plans = [CyclePlan(0, initial, size, (size,))]
        for k in range(1, schedule.n_cycles + 1):
            plans.append(CyclePlan(k, "selector", schedule.step, (size + k * schedule.step,)))
    total = max(p.eval_budgets[-1] for p in plans)
    if pool_size is not None and total > pool_size:
        raise ValueError(
            f"the schedule labels {total} images but the pool has {pool_size}: lower the budgets, "
            "cycles.initial_size, cycles.step or cycles.n_cycles"
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
    name = _selector_name(selector)
    task_name = getattr(task, "name", type(task).__name__)
    needed = sorted(r.removeprefix("task.") for r in selector.requires if r.startswith("task."))
    missing = [m for m in needed if m not in task.provides]
    if missing:
        raise ValueError(
            f"selector {name} needs task method(s) {missing}, but task {task_name} provides only "
            f"{sorted(task.provides)}: pick a task that provides them (a classifier for predict_proba, a "
            "torch-engine task such as small_cnn for add_plugin) or another selector"
        )
    if not reinit and "warm_start" not in task.provides:
        raise ValueError(
            f"cycles.reinit=false (warm start) but task {task_name} cannot warm-start (no 'warm_start' in"
            " its provides): use cycles.reinit=true"
        )
