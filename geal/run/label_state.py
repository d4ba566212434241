"""What a run has done so far: its per-budget results and ``label_state.json``, the run's one resume file.

``label_state.json`` records which cycle labeled each global id (in labeling order), each cycle's seed,
selection time and results, and the run's elapsed and recovery time. The run loop (geal.run.loop)
rewrites it after every selection and every evaluation, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: bumped when the meaning of label_state.json changes
LABEL_STATE_VERSION = 1


@dataclass
class BudgetResult:
    """One trained and evaluated budget.

    budget: images trained on. metrics: the task's test metrics, and ``classes_covered`` (distinct classes
    among those images) when the pool has labels. fit: the task's final training stats.
    fit_s / eval_s: wall times of the fit and the evaluation. cycle: the cycle whose labeled set it is.
    n_labeled: the size of that set. select_s: that cycle's selection time. acquisition_s: what choosing
    the set cost (its selections, plus for task-using selectors the trainings that chose it).
    """

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
    results: list[BudgetResult] = field(default_factory=list)


@dataclass
class LabelState:
    """Which cycle labeled each global id, in labeling order; per-cycle records; recovery time.

    An id appears once per labeled set: twice only when a later cycle restarts from the run's starting point
    (the one-pass schedule of a non-nested selector, see geal.run.schedule.CyclePlan).
    """

    identity: dict[str, Any]
    order: list[int] = field(default_factory=list)
    cycle_of: list[int] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    cycles: list[CycleRecord] = field(default_factory=list)
    recovery_s: float = 0.0
    elapsed_s: float = 0.0

    def record(self, cycle: int) -> CycleRecord | None:
        return next((c for c in self.cycles if c.cycle == cycle), None)

    def results(self) -> list[BudgetResult]:
        return [r for c in self.cycles for r in c.results]

    def ids_of(self, first_cycle: int, last_cycle: int) -> list[int]:
        """The ids labeled by cycles ``first_cycle..last_cycle``, in labeling order."""
        return [i for i, c in zip(self.order, self.cycle_of, strict=True) if first_cycle <= c <= last_cycle]

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
                    results=[BudgetResult(**r) for r in c["results"]],
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
        per_cycle = Counter(zip(state.cycle_of, state.order, strict=False))
        if len(state.order) != len(state.cycle_of) or any(n > 1 for n in per_cycle.values()):
            raise ValueError(f"{path} is corrupt: ids repeat or cycle_of does not match order; delete it")
        return state


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like documents (for error messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted({*a, *b}) for d in differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "(root)"]
