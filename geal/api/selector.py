"""The selector contract: ``select(pool, budget, ctx) -> Selection`` with explicit index spaces.

A selector returns **global ids** (positions in ``pool.ids``) in selection order. What a selector needs
(``features`` from the feature store, a ``task`` with some methods) is declared in ``requires`` so the
pipeline can prepare it — and fail at start-up when it cannot — without special cases per selector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from geal.api.features import FeatureSource

if TYPE_CHECKING:
    from geal.api.pool import ImagePool


class SelectionError(ValueError):
    """A selection request that cannot be satisfied (bad budget, empty pool, unknown labeled ids...)."""


@dataclass
class Selection:
    """An ordered selection.

    global_ids: picked global ids, first pick first.
    scores:     per pick, the selector's reason (k-center: distance to the selected set at pick time;
                NaN where undefined, e.g. random picks or the seed image).
    info:       selector-specific statistics (numbers of clusters, sizes...), JSON-serialisable.
    """

    global_ids: list[int]
    scores: list[float]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.global_ids) != len(self.scores):
            raise ValueError("global_ids and scores must have the same length")

    def prefix(self, budget: int) -> Selection:
        return Selection(self.global_ids[:budget], self.scores[:budget], dict(self.info))


@dataclass
class SelectionContext:
    """Everything a selector may use besides the pool and the budget.

    labeled:  global ids already labeled (never returned again; k-center starts from them).
    seed:     the run's seed; selectors draw randomness only from ``generator()``.
    device:   where tensor work runs.
    features: the pool's features (present when the selector requires "features"), see
              :mod:`geal.api.features`.
    excluded: global ids that must never be picked (e.g. images skipped as unreadable).
    task:     the task model handle, for traditional methods.
    progress: show progress bars for long selection work (``extraction.progress`` in the config).
    on_error: ``data.on_error``: what an unreadable image does (``raise``: stops the run naming it;
              ``skip``: it is never picked).
    """

    labeled: Sequence[int] = ()
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    features: FeatureSource | None = None
    excluded: Sequence[int] = ()
    task: Any = None
    progress: bool = True
    on_error: str = "raise"

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded from ``seed`` (same seed → same draws, whatever ran before)."""
        gen = torch.Generator(device=device)
        gen.manual_seed(int(self.seed))
        return gen


class Selector(ABC):
    """Base class of every selector. Subclasses implement ``_select``; ``select`` validates the request."""

    #: what the pipeline must provide in the context: "features" and/or "task.<method>" (a method the task
    #: lists in ``Task.provides``, checked before any selection work)
    requires: ClassVar[frozenset[str]] = frozenset()
    #: True when the picks for a smaller budget are a prefix of those for a larger one (same seed)
    nested: ClassVar[bool] = False
    #: True when the selector can pick from an empty labeled set with no trained task (one-pass selectors);
    #: the cycle runner (geal.run.loop) draws the initial set of the others (Learn-Loss, VAAL, acquisition
    #: functions) with its ``initial_draw`` selector instead
    cold_start: ClassVar[bool] = True

    def bind_task(self, task: Any) -> None:  # noqa: B027 - optional hook
        """Called once by the run loop (geal.run.loop) after the task is set up (``Task.setup``) and before
        its first ``fit``.

        Selectors that train something jointly with the task model (Learn-Loss attaches its loss-prediction
        module as a training plugin, geal.api.training) do it here; the others ignore it.
        """

    def select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        available = validate_request(len(pool), budget, ctx)
        selection = self._select(pool, budget, ctx)
        check_selection(selection, budget, available, ctx)
        return selection

    @abstractmethod
    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        """Return exactly ``budget`` new global ids (validated by ``select``)."""


def validate_request(pool_size: int, budget: int, ctx: SelectionContext) -> int:
    """Raise SelectionError for impossible requests; return how many images can still be picked."""
    if pool_size == 0:
        raise SelectionError(
            "The pool is empty: check data.root (or the dataset's split list) and try again."
        )
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise SelectionError(f"budget must be a positive integer, got {budget!r} (set budget=N).")
    bad = sorted({i for i in [*ctx.labeled, *ctx.excluded] if not 0 <= int(i) < pool_size})
    if bad:
        raise SelectionError(
            f"{len(bad)} labeled/excluded global id(s) are outside the pool of {pool_size} images, "
            f"e.g. {bad[:5]}: were they produced for another dataset?"
        )
    unavailable = {int(i) for i in ctx.labeled} | {int(i) for i in ctx.excluded}
    available = pool_size - len(unavailable)
    if budget > available:
        raise SelectionError(
            f"budget={budget} is larger than the {available} images that can still be picked "
            f"(pool {pool_size}, already labeled {len(set(ctx.labeled))}, "
            f"excluded {len(set(ctx.excluded))}): "
            f"lower the budget to at most {available}."
        )
    return available


def check_selection(selection: Selection, budget: int, available: int, ctx: SelectionContext) -> None:
    """Guard the contract: exactly ``budget`` unique, pickable ids."""
    ids = selection.global_ids
    forbidden = {int(i) for i in ctx.labeled} | {int(i) for i in ctx.excluded}
    if len(ids) != budget or len(set(ids)) != len(ids) or forbidden.intersection(ids):
        raise RuntimeError(
            f"selector returned {len(ids)} ids ({len(set(ids))} unique, "
            f"{len(forbidden.intersection(ids))} already labeled/excluded) for budget {budget}: "
            "this is a bug."
        )
    if not all(isinstance(s, float) for s in selection.scores):
        raise RuntimeError("selector scores must be Python floats (NaN where undefined)")


def labeled_mask(n_images: int, ctx: SelectionContext, device: torch.device) -> torch.Tensor:
    """(n_images,) bool on ``device``: True for the context's labeled ids."""
    labeled = torch.zeros(n_images, dtype=torch.bool, device=device)
    if len(ctx.labeled):
        labeled[torch.as_tensor(list(ctx.labeled), dtype=torch.long, device=device)] = True
    return labeled


def eligible_mask(
    n_images: int, ctx: SelectionContext, device: torch.device, valid: np.ndarray, budget: int
) -> torch.Tensor:
    """(n_images,) bool: False for excluded ids and for images the store skipped as unreadable
    (``valid`` (n_images,) from the feature source). Labeled ids stay True: the sampler's ``initial``
    handles them. Raises SelectionError when fewer than ``budget`` new images remain pickable."""
    mask = torch.from_numpy(np.asarray(valid, dtype=bool).copy()).to(device)
    if len(ctx.excluded):
        mask[torch.as_tensor(list(ctx.excluded), dtype=torch.long, device=device)] = False
    pickable = int((mask & ~labeled_mask(n_images, ctx, device)).sum())
    if budget > pickable:
        n_skipped = int((~torch.from_numpy(np.asarray(valid, dtype=bool))).sum())
        raise SelectionError(
            f"budget={budget} but only {pickable} images can be picked: {n_skipped} image(s) were skipped "
            f"as unreadable at extraction (listed in the feature store's meta.json 'skipped'). "
            f"Lower the budget or fix those files."
        )
    return mask
