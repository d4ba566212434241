"""Core-Set (Sener & Savarese) over off-the-shelf global features of the same pretrained backbone.

The "off-the-shelf features" baseline of the paper: k-center greedy where each image is one point (its global
feature), using the same k-center implementation as GEAL (``geal.method.kcenter``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector, eligible_mask
from geal.method.kcenter import kcenter_greedy


class CoreSetSelector(Selector):
    """k-center greedy over global features (``distance`` cosine or euclidean)."""

    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    nested: ClassVar[bool] = True

    def __init__(
        self,
        name: str = "coreset",
        distance: Literal["cosine", "euclidean"] = "cosine",
        chunk_size: int = 65536,
    ) -> None:
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"selector.distance must be 'cosine' or 'euclidean', got {distance!r}")
        self.name = name
        self.distance = distance
        self.chunk_size = chunk_size

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        assert ctx.features is not None, "the pipeline provides features to selectors that require them"
        pool_features = ctx.features.global_features()  # from the store GEAL reads too: one extraction
        points = torch.from_numpy(pool_features.features).to(ctx.device)
        eligible = eligible_mask(len(pool), ctx, ctx.device, pool_features.valid, budget)
        result = kcenter_greedy(
            points,
            torch.arange(len(pool), device=ctx.device),
            budget,
            distance=self.distance,
            initial=list(ctx.labeled),
            eligible=eligible,
            generator=ctx.generator("cpu"),  # same seed, same picks on every device
            chunk_size=self.chunk_size,
            progress=ctx.progress,
        )
        return Selection([int(i) for i in result.order], [float(s) for s in result.scores])
