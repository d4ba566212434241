"""The one k-center / D² implementation, shared by GEAL (clusters grouped by image) and Core-Set.

Points (M,D) belong to groups (images): ``groups[i]`` is the global id of point ``i``'s image. The
distance of a point to the selected set is its minimum distance to any point of any selected group.

* :func:`kcenter_greedy` (GEAL's Algorithm 1): start from the ``initial`` (already labeled) groups, or — when
  there are none — from one random eligible group drawn with ``generator`` (score NaN); then repeatedly take
  the point farthest from the selected set and add its **whole** group (all its points become centres).
* :func:`d2_sampling`: the same, but the next point is drawn with probability ∝ distance² (uniformly among
  the remaining points when every remaining distance is 0).
* :func:`kcenter_greedy_sharded`: :func:`kcenter_greedy` with the points split across ``torch.distributed``
  ranks (the exact scan on each rank's slice).

A selected group is never picked twice (its points are masked out of the argmax/draw, so repeated features
or all-zero distances cannot select it again); groups with no points or ``eligible=False`` are never
picked. Ties go to the lowest point index. Distances: ``"cosine"`` = 1 − cos on L2-normalised points
(normalised once); ``"euclidean"`` = sqrt(max(‖a‖²+‖b‖²−2a·b, 0)), except that a pair whose squared distance
comes out within that formula's worst-case rounding (8γ·‖x‖²_max, γ ≈ (D+4)·2⁻²⁴ in float32: ≈ 1.4% of the
largest norm after the square root at D = 384) is recomputed as ‖a−b‖² in float64, so near-duplicates keep
their distances (order by distance, not index) and exact duplicates are exactly 0; for cosine a distance
within the rounding of 1 − a·b (4γ) is taken as exactly 0 (the released code's formula), so duplicated
points tie exactly whatever batch computed them. Work is float32 (float64 when the points are float64).
For ``kcenter_greedy`` with a fixed seed a smaller budget is a prefix of a larger one.

How the distances are kept (``pruning``; never what they are — picks, scores and draws are the same):

* ``"none"`` — the exact scan (:mod:`~geal.method.kcenter.state`): after each pick, one matrix product of
  all points against the new centres updates the running min-distance vector, chunked over the points by
  ``chunk_size`` (on a GPU at least ``KCenterOptions.gpu_min_chunk`` points a chunk: there a chunk only
  bounds memory, and each one costs kernel launches). D² always runs it: it needs every distance at every
  draw (a bounded eager update measured no faster).
* ``"bounds"`` — k-center on a CPU takes the lazy path (:mod:`~geal.method.kcenter.lazy`): only the
  distances an argmax needs are computed, with the exact scan's formula (so the same numbers), through a
  static partition of the points into blocks of about ``block_size`` around anchors
  (:mod:`~geal.method.kcenter.blocks`) and the triangle inequality (:func:`.lazy.refresh`).
  Off the CPU (the lazy bookkeeping lives on the host) and for D² it is the exact scan.
* ``"auto"`` (default) — ``"bounds"`` from ``KCenterOptions.auto_bounds_min_points`` points up; the exact
  scan on smaller sets (it costs less than the blocks) and on GPUs (a full scan per step is a fraction of a
  millisecond there, and the lazy path's many small steps are not).

:class:`KCenterOptions` collects the tuning constants of both paths (each trades time or memory, none
changes a result); every function takes one as ``options``.

Modules: ``options`` (the constants), ``state`` (the exact scan), ``blocks`` (the partition), ``lazy`` (the
lazy k-center path and its refreshes), ``api`` (the two selection loops), ``sharded`` (torch.distributed).
"""

from geal.method.kcenter.api import GreedyResult, d2_sampling, kcenter_greedy
from geal.method.kcenter.options import Distance, KCenterOptions
from geal.method.kcenter.sharded import kcenter_greedy_sharded

__all__ = [
    "Distance",
    "GreedyResult",
    "KCenterOptions",
    "d2_sampling",
    "kcenter_greedy",
    "kcenter_greedy_sharded",
]
