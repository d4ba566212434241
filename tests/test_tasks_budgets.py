"""The budget loop (geal.run.training): one fit per budget on the selection's prefix, metrics.jsonl written as
budgets finish, and a rerun that skips the finished budgets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from geal.api.task import Task
from geal.run.training import check_budgets, train_on_budgets


class PrefixTask(Task):
    """Scores a fit by the ids it got (so the test knows what each budget trained on); can crash."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.fits: list[list[int]] = []
        self.crash_at = crash_at

    def fit(self, train_ids: Sequence[int]) -> dict[str, float]:
        if self.crash_at is not None and len(train_ids) == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        self.fits.append(list(train_ids))
        return {"n_train": float(len(train_ids))}

    def evaluate(self) -> dict[str, float]:
        ids = self.fits[-1]
        return {"top1": sum(ids) / 100.0, "first": float(ids[0])}


SELECTION = [7, 3, 9, 1, 4, 8, 2, 0]
HEADER = {"method": "geal", "seed": 0, "task": "prefix", "pool_identity": {"ids_sha256": "x"}, "config": {}}


def selections(budgets: Sequence[int]) -> dict[int, list[int]]:
    return {b: SELECTION[:b] for b in budgets}


def test_each_budget_trains_on_its_prefix(tmp_path: Path) -> None:
    task = PrefixTask()
    results = train_on_budgets(task, selections([2, 5, 8]), tmp_path, HEADER)
    assert task.fits == [[7, 3], [7, 3, 9, 1, 4], SELECTION]
    assert [r.metrics["top1"] for r in results] == [0.10, 0.24, 0.34]
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["method"] == "geal" and [r["budget"] for r in doc["results"]] == [2, 5, 8]
    assert doc["results"][1]["fit"] == {"n_train": 5.0} and doc["results"][1]["metrics"]["first"] == 7.0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["budget"] for line in lines] == [2, 5, 8]


def test_interrupted_budget_loop_resumes_where_it_stopped(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train_on_budgets(PrefixTask(crash_at=5), selections([2, 5, 8]), tmp_path, HEADER)
    done = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["budget"] for r in done["results"]] == [2]  # what finished is on disk
    task = PrefixTask()
    results = train_on_budgets(task, selections([2, 5, 8]), tmp_path, HEADER)
    assert task.fits == [SELECTION[:5], SELECTION]  # budget 2 was not trained again
    assert [r.budget for r in results] == [2, 5, 8] and results[0].metrics["top1"] == 0.10
    # another selection in the same dir: refused, with the ways out
    other = {b: sorted(SELECTION)[:b] for b in (2, 5, 8)}
    with pytest.raises(ValueError, match=r"selection_sha256.*output.resume=false"):
        train_on_budgets(PrefixTask(), other, tmp_path, HEADER)
    # resume=False starts over
    fresh = PrefixTask()
    train_on_budgets(fresh, selections([2, 5, 8]), tmp_path, HEADER, resume=False)
    assert len(fresh.fits) == 3


def test_budget_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_budgets([], 10)
    with pytest.raises(ValueError, match="positive integers"):
        check_budgets([0, 3], 10)
    with pytest.raises(ValueError, match="larger than the selection"):
        check_budgets([3, 11], 10)
    assert check_budgets([5, 2, 5], 10) == [2, 5]
