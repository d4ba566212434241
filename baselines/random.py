"""Uniform random selection (seeded)."""

from __future__ import annotations

from typing import ClassVar

import torch

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector


class RandomSelector(Selector):
    """A seeded random permutation of the pickable images; smaller budgets are prefixes of larger ones."""

    nested: ClassVar[bool] = True

    def __init__(self, name: str = "random") -> None:
        self.name = name

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        order = torch.randperm(len(pool), generator=ctx.generator()).tolist()
        taken = {int(i) for i in ctx.labeled} | {int(i) for i in ctx.excluded}
        picks = [i for i in order if i not in taken][:budget]
        return Selection(picks, [float("nan")] * len(picks))
