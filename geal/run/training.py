"""Train and score a task on growing prefixes of one selection; write ``metrics.json`` / ``metrics.jsonl``.

Plain typed arguments (the entry point builds everything). For each budget, in increasing order, the task
is fitted from scratch on the first ``budget`` global ids of the selection and evaluated on its own test
split; each result is appended to ``metrics.jsonl`` as soon as it exists and ``metrics.json`` is rewritten
atomically, so an interrupted run keeps every finished budget and a rerun skips them (``resume=True``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from geal.api.task import Task
from geal.util.io import atomic_write_json, stable_hash

log = logging.getLogger(__name__)


class MetricsLogger(Protocol):
    """What the budget loop needs from a run logger (geal.report.loggers.RunLogger fits)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None: ...

    def log_summary(self, values: dict[str, Any]) -> None: ...


@dataclass
class BudgetResult:
    budget: int
    metrics: dict[str, float]
    fit: dict[str, float]
    fit_s: float
    eval_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "metrics": self.metrics,
            "fit": self.fit,
            "fit_s": self.fit_s,
            "eval_s": self.eval_s,
        }


#: what must match for a rerun into the same dir to reuse its finished budgets (``config.task`` included:
#: the task's settings; timings, progress bars or the device may differ)
RESUME_KEYS = ("method", "seed", "task", "pool_identity", "selection_sha256", "config.task")


def _resume_value(doc: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None  # type: ignore[assignment]
    return doc


def selection_hash(selections: Mapping[int, Sequence[int]]) -> str:
    """Hash of the global ids trained at each budget (what a resumed run must train on again)."""
    return stable_hash({str(b): [int(i) for i in ids] for b, ids in sorted(selections.items())}, length=64)


def check_budgets(budgets: Sequence[int], n_selected: int) -> list[int]:
    """Sorted unique positive budgets, each at most the selection's length (ValueError otherwise)."""
    if not budgets:
        raise ValueError("budgets is empty: give at least one, e.g. budgets=[100]")
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or b <= 0]
    if bad:
        raise ValueError(f"budgets must be positive integers, got {bad}")
    out = sorted(set(budgets))
    if out[-1] > n_selected:
        raise ValueError(
            f"budget {out[-1]} is larger than the selection ({n_selected} images): "
            f"lower the budget or select more images"
        )
    return out


def train_on_budgets(
    task: Task,
    selections: Mapping[int, Sequence[int]],
    out_dir: Path,
    header: dict[str, Any],
    logger: MetricsLogger | None = None,
    resume: bool = True,
) -> list[BudgetResult]:
    """Fit ``task`` on ``selections[b]`` (global ids) and evaluate it, for each budget ``b``.

    For a nested selector every ``selections[b]`` is the prefix of length ``b`` of one selection.

    header: run-level fields written at the top of ``metrics.json`` (method, seed, task, pool, config...).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = check_budgets(list(selections), max(len(v) for v in selections.values()))
    short = [b for b in todo if len(selections[b]) != b]
    if short:
        raise ValueError(f"selections for budgets {short} do not hold exactly that many images")
    header = {**header, "selection_sha256": selection_hash(selections)}
    done: dict[int, BudgetResult] = {}
    jsonl = out_dir / "metrics.jsonl"
    previous = out_dir / "metrics.json"
    if resume and jsonl.exists() and previous.exists():
        old = json.loads(previous.read_text())
        ours = json.loads(json.dumps(header))
        differ = [k for k in RESUME_KEYS if _resume_value(old, k) != _resume_value(ours, k)]
        if differ:
            raise ValueError(
                f"{out_dir} holds results of another run (its metrics.json differs in {differ}): "
                f"use a new output dir (hydra.run.dir=...), output.resume=false, or delete {jsonl}"
            )
    if resume and jsonl.exists():
        for line in jsonl.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[int(row["budget"])] = BudgetResult(**row)
        if done:
            log.info("resuming: budgets %s already trained (%s)", sorted(done), jsonl)
    elif jsonl.exists():
        jsonl.unlink()

    results: list[BudgetResult] = []
    for budget in todo:
        if budget in done:
            results.append(done[budget])
            continue
        ids = [int(i) for i in selections[budget]]
        log.info("budget %d: training %s on %d images", budget, type(task).__name__, len(ids))
        t0 = time.perf_counter()
        fit_stats = task.fit(ids)
        t1 = time.perf_counter()
        metrics = task.evaluate()
        t2 = time.perf_counter()
        result = BudgetResult(
            budget,
            {k: float(v) for k, v in metrics.items()},
            {k: float(v) for k, v in (fit_stats or {}).items()},
            t1 - t0,
            t2 - t1,
        )
        log.info(
            "budget %d: %s (fit %.1f s)",
            budget,
            ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()),
            result.fit_s,
        )
        with jsonl.open("a") as fh:
            fh.write(json.dumps(result.as_dict()) + "\n")
        if logger is not None:
            logger.log_metrics(
                {**{f"test/{k}": v for k, v in result.metrics.items()}, "time/fit_s": result.fit_s},
                step=budget,
            )
        results.append(result)
        write_metrics(out_dir, header, results)
    write_metrics(out_dir, header, results)
    if logger is not None:
        logger.log_summary({"final": results[-1].as_dict(), "budgets": [r.budget for r in results]})
    return results


def write_metrics(
    out_dir: Path,
    header: dict[str, Any],
    results: Sequence[BudgetResult],
    seconds: dict[str, float] | None = None,
) -> Path:
    """``metrics.json``: the header, one entry per finished budget, and the run's wall times once known
    (atomic rewrite)."""
    path = Path(out_dir) / "metrics.json"
    doc = {**header, "results": [r.as_dict() for r in results]}
    if seconds is not None:
        doc["seconds"] = seconds
    atomic_write_json(path, doc)
    return path
