"""k-center greedy and D² sampling over grouped points, shared by GEAL (clusters grouped by image) and
Core-Set; :func:`kcenter_greedy_sharded` splits the points across ``torch.distributed`` ranks."""

from geal.method.kcenter.greedy import Distance, GreedyResult, d2_sampling, kcenter_greedy
from geal.method.kcenter.sharded import kcenter_greedy_sharded

__all__ = ["Distance", "GreedyResult", "d2_sampling", "kcenter_greedy", "kcenter_greedy_sharded"]
