"""The cycle runner: bookkeeping (sizes per cycle, no id twice), resume, timings, one-pass as one cycle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from baselines.acquisition import EntropySelector, MarginSelector
from baselines.random import RandomSelector
from downstream.tasks.linear_probe import LinearProbeTask
from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector
from geal.api.task import Task
from geal.run.loop import CycleRunner, CycleSchedule, plan_cycles, run_cycles


class LabelOnlyPool(ImagePool):
    """n ids with labels; images are never loaded (the tasks here read precomputed features)."""

    name = "blobs"

    def __init__(self, labels: Sequence[int]) -> None:
        self._labels = [int(v) for v in labels]

    @property
    def ids(self) -> Sequence[str]:
        return [f"blob_{i:04d}" for i in range(len(self._labels))]

    @property
    def labels(self) -> Sequence[int]:
        return self._labels

    def load(self, index: int) -> Image.Image:
        raise AssertionError("the blob pool has no images")


def blobs(n: int, seed: int, classes: int = 3, dim: int = 8, spread: float = 1.6):
    """Gaussian blobs: (n, dim) features, (n,) labels; overlapping enough that selection matters."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (classes, dim))
    y = np.arange(n) % classes
    return (centers[y] + rng.normal(0, spread, (n, dim))).astype(np.float32), y


@pytest.fixture
def probe_setup():
    x, y = blobs(240, 0)
    xt, yt = blobs(90, 1)
    pool = LabelOnlyPool(y)

    def make_task() -> LinearProbeTask:
        return LinearProbeTask.from_arrays(x, y, xt, yt, max_iter=300)

    return pool, make_task


class Interrupting(Task):
    """Wraps a task; raises KeyboardInterrupt at fit number ``fail_at`` (0-based), counting fits."""

    provides: ClassVar[frozenset[str]] = frozenset({"predict_proba"})

    def __init__(self, inner: LinearProbeTask, fail_at: int | None = None) -> None:
        self.inner, self.fail_at, self.fits = inner, fail_at, []

    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        if self.fail_at is not None and len(self.fits) == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        self.fits.append(list(train_ids))
        return self.inner.fit(train_ids, warm_start=warm_start)

    def evaluate(self) -> dict[str, float]:
        return self.inner.evaluate()

    def predict_proba(self, ids: Sequence[int], mc_samples: int = 0):
        return self.inner.predict_proba(ids, mc_samples)


def run(pool, task, selector, out: Path, schedule: CycleSchedule, seed: int = 0, **kw):
    header = {"method": selector.name, "selector": selector.name, "seed": seed, "task": "probe"}
    return run_cycles(
        task,
        selector,
        pool,
        schedule,
        out,
        header,
        SelectionContext(seed=seed),
        initial_draw=RandomSelector(),
        **kw,
    )


SCHEDULE = CycleSchedule(initial="auto", initial_size=12, step=6, n_cycles=3)


def test_bookkeeping_sizes_no_repeats_and_outputs(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup
    task = Interrupting(make_task())
    done = run(pool, task, EntropySelector(), tmp_path, SCHEDULE)
    state = json.loads((tmp_path / "label_state.json").read_text())
    order, cycle_of = state["order"], state["cycle_of"]
    assert len(order) == len(set(order)) == 12 + 3 * 6
    assert [cycle_of.count(c) for c in range(4)] == [12, 6, 6, 6]
    assert cycle_of == sorted(cycle_of)  # labeling order follows the cycles
    # each training saw exactly the labeled set of its cycle, growing by prefixes
    assert task.fits == [order[:12], order[:18], order[:24], order[:30]]
    # cycle 0 is the seeded random draw, i.e. the first picks of selector=random with the same seed
    random_first = RandomSelector().select(pool, 12, SelectionContext(seed=0)).global_ids
    assert order[:12] == random_first
    # each later cycle picked the most uncertain unlabeled images of the previous cycle's model
    check = make_task()
    check.fit(order[:12])
    unlabeled = sorted(set(range(len(pool))) - set(order[:12]))
    expected = EntropySelector().select(pool, 6, SelectionContext(labeled=order[:12], seed=0, task=check))
    assert order[12:18] == expected.global_ids
    assert len(unlabeled) == len(pool) - 12

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["budget"] for r in metrics["results"]] == [12, 18, 24, 30]
    assert [r["cycle"] for r in metrics["results"]] == [0, 1, 2, 3]
    acq = [r["acquisition_s"] for r in metrics["results"]]
    assert acq == sorted(acq) and acq[-1] > acq[0]
    # the acquisition cost of a task-using selector includes the trainings that chose the batches
    r = metrics["results"]
    assert acq[2] == pytest.approx(sum(x["select_s"] for x in r[:3]) + r[0]["fit_s"] + r[1]["fit_s"])
    assert set(metrics["seconds"]) >= {"selection", "fit", "eval", "acquisition", "total"}
    assert all(isinstance(v, float) for v in metrics["seconds"].values())
    assert metrics["pipeline"] == "cycles" and metrics["schedule"]["n_cycles"] == 3
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["budget"] for line in lines] == [12, 18, 24, 30]
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["global_ids"] == order and sel["image_ids"] == [pool.ids[i] for i in order]
    assert sel["info"]["cycle_of"] == cycle_of
    for c in range(4):
        cyc = json.loads((tmp_path / "cycles" / f"cycle_{c:02d}" / "selection.json").read_text())
        assert cyc["global_ids"] == [i for i, k in zip(order, cycle_of, strict=True) if k == c]
        assert cyc["labeled_global_ids"] == order[: len(cyc["labeled_global_ids"])]
    assert [r.budget for r in done.results] == [12, 18, 24, 30]


@pytest.mark.parametrize("fail_at", [1, 3])
def test_resume_reproduces_the_uninterrupted_label_state(probe_setup, tmp_path: Path, fail_at: int) -> None:
    pool, make_task = probe_setup
    run(pool, Interrupting(make_task()), EntropySelector(), tmp_path / "full", SCHEDULE, seed=3)
    with pytest.raises(KeyboardInterrupt):
        run(
            pool,
            Interrupting(make_task(), fail_at=fail_at),
            EntropySelector(),
            tmp_path / "cut",
            SCHEDULE,
            seed=3,
        )
    partial = json.loads((tmp_path / "cut" / "label_state.json").read_text())
    assert len(partial["cycles"]) == fail_at + 1  # the selection of the interrupted cycle was kept
    assert sum(1 for c in partial["cycles"] if c["results"]) == fail_at
    resumed_task = Interrupting(make_task())
    run(pool, resumed_task, EntropySelector(), tmp_path / "cut", SCHEDULE, seed=3)
    # the resumed run trained only what was missing (plus nothing: the interrupted cycle's batch was chosen)
    assert len(resumed_task.fits) == 4 - fail_at
    full = json.loads((tmp_path / "full" / "label_state.json").read_text())
    cut = json.loads((tmp_path / "cut" / "label_state.json").read_text())
    assert cut["order"] == full["order"] and cut["cycle_of"] == full["cycle_of"]
    m_full = json.loads((tmp_path / "full" / "metrics.json").read_text())["results"]
    m_cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())["results"]
    assert [r["metrics"] for r in m_cut] == [r["metrics"] for r in m_full]


class FailingOnce(Selector):
    """Entropy, but raises KeyboardInterrupt during the selection of cycle ``fail_cycle`` (once)."""

    requires: ClassVar[frozenset[str]] = frozenset({"task.predict_proba"})
    cold_start: ClassVar[bool] = False

    def __init__(self, fail_labeled: int) -> None:
        self.name, self.inner, self.fail_labeled, self.failed = (
            "entropy",
            EntropySelector(),
            fail_labeled,
            False,
        )

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        if len(ctx.labeled) == self.fail_labeled and not self.failed:
            self.failed = True
            raise KeyboardInterrupt("interrupted while selecting")
        return self.inner._select(pool, budget, ctx)


def test_resume_after_an_interrupted_selection_refits_the_model(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup
    run(pool, Interrupting(make_task()), EntropySelector(), tmp_path / "full", SCHEDULE, seed=1)
    with pytest.raises(KeyboardInterrupt):
        run(pool, Interrupting(make_task()), FailingOnce(18), tmp_path / "cut", SCHEDULE, seed=1)
    resumed = Interrupting(make_task())
    run(pool, resumed, EntropySelector(), tmp_path / "cut", SCHEDULE, seed=1)
    state = json.loads((tmp_path / "cut" / "label_state.json").read_text())
    full = json.loads((tmp_path / "full" / "label_state.json").read_text())
    assert state["order"] == full["order"]
    # the model of budget 18 was refitted to select cycle 2, then budgets 24 and 30 trained
    assert [len(f) for f in resumed.fits] == [18, 24, 30]
    assert state["recovery_s"] > 0


def test_resume_refuses_another_runs_state(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup
    run(pool, Interrupting(make_task()), EntropySelector(), tmp_path, SCHEDULE, seed=0)
    with pytest.raises(ValueError, match=r"belongs to another run.*seed"):
        run(pool, Interrupting(make_task()), EntropySelector(), tmp_path, SCHEDULE, seed=5)
    # resume=False starts over
    run(pool, Interrupting(make_task()), EntropySelector(), tmp_path, SCHEDULE, seed=5, resume=False)
    assert json.loads((tmp_path / "metrics.json").read_text())["seed"] == 5


def test_one_pass_selector_runs_as_a_single_cycle(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup
    task = Interrupting(make_task())
    schedule = CycleSchedule(initial="selector", initial_size=None, step=0, n_cycles=0)
    run(pool, task, RandomSelector(), tmp_path, schedule, budgets=[20, 5, 10])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["budget"] for r in metrics["results"]] == [5, 10, 20]
    assert {r["cycle"] for r in metrics["results"]} == {0}
    picks = RandomSelector().select(pool, 20, SelectionContext(seed=0)).global_ids
    assert task.fits == [picks[:5], picks[:10], picks[:20]]
    # one selection serves every budget: the same select and acquisition time for each
    assert len({r["select_s"] for r in metrics["results"]}) == 1
    assert metrics["results"][0]["acquisition_s"] == metrics["results"][0]["select_s"]


def test_one_pass_selector_in_cycles_continues_from_its_own_picks(probe_setup, tmp_path: Path) -> None:
    """initial=auto: a cold-start selector draws cycle 0 itself; its fits are not counted as acquisition."""
    pool, make_task = probe_setup
    run(pool, Interrupting(make_task()), RandomSelector(), tmp_path, SCHEDULE)
    state = json.loads((tmp_path / "label_state.json").read_text())
    assert [c["drawn_by"] for c in state["cycles"]] == ["random"] * 4
    r = json.loads((tmp_path / "metrics.json").read_text())["results"]
    assert r[3]["acquisition_s"] == pytest.approx(sum(x["select_s"] for x in r))


def test_labeled_file_starts_the_cycles(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup
    start = list(range(0, 60, 5))
    with pytest.raises(ValueError, match="one-pass schedule"):
        CycleSchedule(initial="labeled", initial_size=None, step=6, n_cycles=2)
    schedule = CycleSchedule(initial="labeled", initial_size=12, step=6, n_cycles=2)
    task = Interrupting(make_task())
    run(pool, task, MarginSelector(), tmp_path, schedule, initial_ids=start)
    state = json.loads((tmp_path / "label_state.json").read_text())
    assert state["order"][:12] == start and len(state["order"]) == 24
    assert not set(start) & set(state["order"][12:])


def test_start_up_errors_name_the_fix(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup

    class NoProba(Task):
        def fit(self, train_ids, warm_start=False):
            raise AssertionError("must fail before any training")

        def evaluate(self):
            return {}

    with pytest.raises(ValueError, match=r"needs task method\(s\) \['predict_proba'\].*provides only"):
        run(pool, NoProba(), EntropySelector(), tmp_path, SCHEDULE)
    with pytest.raises(ValueError, match="cannot pick from nothing"):
        plan_cycles(CycleSchedule(initial="selector"), EntropySelector())
    with pytest.raises(ValueError, match="pool has 240"):
        plan_cycles(CycleSchedule(initial_size=200, step=50, n_cycles=1), EntropySelector(), pool_size=240)
    with pytest.raises(ValueError, match="warm start"):
        run(
            pool,
            Interrupting(make_task()),
            EntropySelector(),
            tmp_path,
            CycleSchedule(initial_size=12, step=6, n_cycles=1, reinit=False),
        )


def test_warm_start_resume_replays_the_chain(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup
    schedule = CycleSchedule(initial="auto", initial_size=12, step=6, n_cycles=3, reinit=False)
    run(pool, make_task(), EntropySelector(), tmp_path / "full", schedule, seed=2)

    class Cut(LinearProbeTask):
        calls = 0

        def fit(self, train_ids, warm_start=False):
            Cut.calls += 1
            if Cut.calls == 3:
                raise KeyboardInterrupt
            return super().fit(train_ids, warm_start=warm_start)

    x, y = blobs(240, 0)
    xt, yt = blobs(90, 1)
    with pytest.raises(KeyboardInterrupt):
        run(
            pool,
            Cut.from_arrays(x, y, xt, yt, max_iter=300),
            EntropySelector(),
            tmp_path / "cut",
            schedule,
            seed=2,
        )
    run(pool, make_task(), EntropySelector(), tmp_path / "cut", schedule, seed=2)
    full = json.loads((tmp_path / "full" / "label_state.json").read_text())
    cut = json.loads((tmp_path / "cut" / "label_state.json").read_text())
    assert cut["order"] == full["order"]
    assert [r["metrics"] for c in cut["cycles"] for r in c["results"]] == [
        r["metrics"] for c in full["cycles"] for r in c["results"]
    ]


def test_runner_rejects_a_selection_that_repeats_labeled_ids(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup

    class Repeats(Selector):
        name = "bad"

        def _select(self, pool, budget, ctx):
            return Selection(list(range(budget)), [0.0] * budget)

    plans = plan_cycles(CycleSchedule(initial="selector", initial_size=5, step=5, n_cycles=1), Repeats())
    runner = CycleRunner(
        Interrupting(make_task()), Repeats(), pool, plans, tmp_path, {"seed": 0}, SelectionContext()
    )
    with pytest.raises(RuntimeError, match="already labeled"):
        runner.run()


def test_initial_draw_must_pick_from_nothing(probe_setup, tmp_path: Path) -> None:
    pool, make_task = probe_setup
    plans = plan_cycles(SCHEDULE, EntropySelector())
    with pytest.raises(ValueError, match="initial_draw=margin cannot pick from nothing"):
        CycleRunner(
            Interrupting(make_task()),
            EntropySelector(),
            pool,
            plans,
            tmp_path,
            {"seed": 0},
            SelectionContext(),
            initial_draw=MarginSelector(),
        )
