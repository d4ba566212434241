"""The one-pass schedule of the run loop (geal.run.loop): one fit per budget on the selection's prefix,
metrics.jsonl written as budgets finish, and a rerun that skips the finished budgets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector
from geal.api.task import Task
from geal.run.loop import run_cycles
from geal.run.schedule import ONE_PASS, check_budgets, plan_cycles


class PrefixTask(Task):
    """Scores a fit by the ids it got (so the test knows what each budget trained on); can crash."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.fits: list[list[int]] = []
        self.crash_at = crash_at

    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        if self.crash_at is not None and len(train_ids) == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        self.fits.append(list(train_ids))
        return {"n_train": float(len(train_ids))}

    def evaluate(self) -> dict[str, float]:
        ids = self.fits[-1]
        return {"top1": sum(ids) / 100.0, "first": float(ids[0])}


class TenIds(ImagePool):
    name = "ten"

    @property
    def ids(self) -> Sequence[str]:
        return [f"im{i}" for i in range(10)]

    def load(self, index: int) -> Image.Image:
        raise AssertionError("no image is read")


class Fixed(Selector):
    """Picks the first ``budget`` of a fixed order (nested, like k-center)."""

    nested: ClassVar[bool] = True

    def __init__(self, order: Sequence[int], name: str = "fixed") -> None:
        self.order, self.name, self.calls = list(order), name, 0

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        self.calls += 1
        return Selection(self.order[:budget], [float("nan")] * budget)


SELECTION = [7, 3, 9, 1, 4, 8, 2, 0]
HEADER = {"method": "fixed", "seed": 0, "task": "prefix", "config": {}}


def one_pass(task: Task, out: Path, selector: Selector | None = None, header: dict = HEADER, **kw):
    selector = selector or Fixed(SELECTION)
    pool, ctx = TenIds(), SelectionContext()
    return run_cycles(task, selector, pool, ONE_PASS, out, header, ctx, budgets=[2, 5, 8], **kw)


def test_each_budget_trains_on_its_prefix(tmp_path: Path) -> None:
    task = PrefixTask()
    done = one_pass(task, tmp_path)
    assert task.fits == [[7, 3], [7, 3, 9, 1, 4], SELECTION]
    assert [r.metrics["top1"] for r in done.results] == [0.10, 0.24, 0.34]
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["method"] == "fixed" and [r["budget"] for r in doc["results"]] == [2, 5, 8]
    assert doc["results"][1]["fit"] == {"n_train": 5.0} and doc["results"][1]["metrics"]["first"] == 7.0
    assert set(doc["seconds"]) == {"selection", "fit", "total"} and doc["pipeline"] == "one_pass"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["budget"] for line in lines] == [2, 5, 8]
    # one nested selection serves every budget, written into the run dir itself
    assert json.loads((tmp_path / "selection.json").read_text())["global_ids"] == SELECTION
    assert json.loads((tmp_path / "run_info.json").read_text())["budget"] == 8


def test_interrupted_budget_loop_resumes_where_it_stopped(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        one_pass(PrefixTask(crash_at=5), tmp_path)
    done = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["budget"] for r in done["results"]] == [2]  # what finished is on disk
    task, selector = PrefixTask(), Fixed(SELECTION)
    results = one_pass(task, tmp_path, selector).results
    assert task.fits == [SELECTION[:5], SELECTION]  # budget 2 was not trained again
    assert selector.calls == 0  # nor was the selection redone
    assert [r.budget for r in results] == [2, 5, 8] and results[0].metrics["top1"] == 0.10
    # another run in the same dir: refused, with the ways out
    other = {**HEADER, "method": "sorted"}
    with pytest.raises(ValueError, match=r"belongs to another run \(differs in \['method'\]\).*resume=false"):
        one_pass(PrefixTask(), tmp_path, Fixed(sorted(SELECTION), name="sorted"), header=other)
    # resume=False starts over
    fresh = PrefixTask()
    one_pass(fresh, tmp_path, resume=False)
    assert len(fresh.fits) == 3


def test_a_non_nested_selector_selects_each_budget_afresh(tmp_path: Path) -> None:
    class Fresh(Fixed):
        nested: ClassVar[bool] = False

        def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
            self.calls += 1
            assert list(ctx.labeled) == [6] and ctx.seed == 3  # the run's starting point, every time
            picks = [i for i in SELECTION[::-1] if i != 6][:budget]
            return Selection(picks, [float("nan")] * budget)

    task, selector = PrefixTask(), Fresh(SELECTION, name="fresh")
    run_cycles(
        task,
        selector,
        TenIds(),
        ONE_PASS,
        tmp_path,
        HEADER,
        SelectionContext(labeled=[6], seed=3),
        budgets=[2, 5],
    )
    assert selector.calls == 2 and task.fits == [[0, 2], [0, 2, 8, 4, 1]]
    for b in (2, 5):  # one selection per budget, in its own folder
        sel = json.loads((tmp_path / f"budget_{b}" / "selection.json").read_text())
        assert len(sel["global_ids"]) == b and sel["labeled_global_ids"] == [6]
    assert not (tmp_path / "selection.json").exists()
    state = json.loads((tmp_path / "label_state.json").read_text())
    assert [c["seed"] for c in state["cycles"]] == [3, 3]


def test_budget_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_budgets([])
    with pytest.raises(ValueError, match="positive integers"):
        check_budgets([0, 3])
    with pytest.raises(ValueError, match="the pool has 10"):
        plan_cycles(ONE_PASS, Fixed(SELECTION), [3, 11], pool_size=10)
    assert check_budgets([5, 2, 5]) == [2, 5]
