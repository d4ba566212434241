"""The tuning constants of k-center / D² (:class:`KCenterOptions`): how fast, never what is picked.

Every field trades time (or memory) against something else; none changes a pick, a score or a draw. The
defaults are the measured ones; tests set small values to drive rare paths on small inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_OPTIONS", "Distance", "KCenterOptions", "Pruning"]

Distance = Literal["cosine", "euclidean"]
Pruning = Literal["auto", "bounds", "none"]


@dataclass(frozen=True)
class KCenterOptions:
    """How the distances are kept up to date (see :mod:`geal.method.kcenter` for the two paths).

    Full scan, any device:
    gpu_min_chunk:   points per full-scan chunk at least off the CPU (a chunk there only bounds memory,
                     2^20 points × C centres × 4 B, and each chunk costs kernel launches)
    center_block:    centres per update when a large initial set or group is added (memory vs passes)
    gather_rows:     rows per all-gather when the sharded variant adds its initial groups (memory of the
                     padded buffers vs the number of collectives)
    exact_pairs:     euclidean near-zero pairs recomputed from their difference per batch (memory only)

    Bounded lazy k-center (CPU):
    auto_bounds_min_points: ``pruning="auto"`` takes the lazy path from this many points up (below, a full
                     scan per step costs less than building and keeping the blocks)
    partition_seed:  seed of the block partition's k-means (another seed: other blocks, the same picks)
    lloyd_steps:     refinements of the block anchors (tighter blocks prune more; each costs a pass up front)
    parallel_pairs:  lazy matrix products with this many point-centre pairs or more use every torch
                     thread, smaller ones one (an OpenMP wake-up costs more than a small product)
    eager_when:      full scans for a while when one argmax computed this fraction of a full scan's pairs
                     (early on laziness costs nearly a full scan, through slower gathers)
    eager_first_backoff: ... for this many picks first, doubling while it keeps happening
    lazy_centers:    centres per matrix product when stale points catch up (memory vs product count)
    lazy_bound_rows: refreshes of at most this many points read only the centres the bounds keep (more
                     rows: the bound test costs more than it saves)
    lazy_bound_max_fraction: ... unless the bounds keep more than this fraction of the pending centres
                     (then the plain pass is cheaper)
    lazy_bound_max_skip: ... after such a refresh the next 1, 2, 4, … (at most this) skip the bound test
    block_refresh_min_rows: refreshes of this many points or more go block by block, each block reading
                     only the centres its bound keeps
    block_refresh_min_centres: ... when this many centres or more are pending (fewer: the per-block
                     overhead wins)
    block_refresh_max_kept: ... unless the bounds keep more than this fraction of the pending pairs (the
                     plain pass streams them faster than per-block gathers)
    block_test_elements: ... tested in groups of blocks of at most this many (block, centre) pairs (memory
                     of the test arrays vs their count)
    lazy_first_blocks: blocks refreshed by an argmax's first pass (more: fewer passes, more rows each)
    lazy_max_blocks: ... doubling per pass up to this many
    """

    gpu_min_chunk: int = 1 << 20
    center_block: int = 256
    gather_rows: int = 4096
    exact_pairs: int = 1 << 16
    auto_bounds_min_points: int = 16384
    partition_seed: int = 0
    lloyd_steps: int = 2
    parallel_pairs: int = 2**21
    eager_when: float = 0.5
    eager_first_backoff: int = 4
    lazy_centers: int = 8192
    lazy_bound_rows: int = 256
    lazy_bound_max_fraction: float = 0.5
    lazy_bound_max_skip: int = 64
    block_refresh_min_rows: int = 4096
    block_refresh_min_centres: int = 2048
    block_refresh_max_kept: float = 0.25
    block_test_elements: int = 1 << 22
    lazy_first_blocks: int = 8
    lazy_max_blocks: int = 512

    def __post_init__(self) -> None:
        positive = (
            "gpu_min_chunk",
            "center_block",
            "gather_rows",
            "exact_pairs",
            "lazy_centers",
            "lazy_first_blocks",
        )
        for name in (*positive, "lazy_max_blocks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"KCenterOptions.{name} must be >= 1, got {getattr(self, name)}")


DEFAULT_OPTIONS = KCenterOptions()
