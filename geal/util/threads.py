"""Scoped torch intra-op thread count, for CPU loops of many small tensor ops.

Every torch op above a small size runs an OpenMP parallel region; when the loop's tensors are small
(a k-means chunk of ~2 MB, the lazy k-center's few rows), the region's wake-up and join cost more than the
work, and on a busy machine they cost milliseconds (2 threads on 2 busy cores: ~12 ms per small op,
~40× slower batched k-means than with 1 thread). Such loops run on one thread and switch
back to the caller's setting for their few large matrix products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["intra_op_threads"]


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads; the previous count is restored afterwards."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
