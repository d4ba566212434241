"""The distance state of one selection, kept by the exact scan: every point against every new centre.

:class:`State` holds the points (normalised for cosine), the group index, the running min-distance vector
``mind`` and which points are blocked (their group is selected, ineligible or empty). After each pick one
matrix product of all points against the new centres updates ``mind``, chunked over the points
(:meth:`State.full_update`); :meth:`State.distances` is the one distance formula of every update path, the
lazy one (:mod:`geal.method.kcenter.lazy`) and the sharded one included, so all compute the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geal.method.kcenter.options import DEFAULT_OPTIONS, KCenterOptions

__all__ = ["State", "check_inputs"]


def check_inputs(points: Tensor, groups: Tensor, distance: str, chunk_size: int) -> None:
    """ValueError unless points (M,D), groups (M,) integer, a known distance and chunk_size ≥ 1."""
    if points.ndim != 2:
        raise ValueError(f"points must be (M, D), got shape {tuple(points.shape)}")
    if groups.ndim != 1 or groups.shape[0] != points.shape[0]:
        raise ValueError(f"groups must be (M,) = ({points.shape[0]},), got shape {tuple(groups.shape)}")
    if groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise ValueError(f"groups must be an integer tensor, got {groups.dtype}")
    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


class State:
    """Points x (M,D) in the work dtype (float64 for float64 points, else float32; unit rows for cosine),
    sq (M,) their squared norms (euclidean only), groups (M,) long, mind (M,) the distance to the selected
    set (inf before any centre), blocked (M,) bool, selected / pickable (G,) bool."""

    lazy = False  # the exact scan; :class:`geal.method.kcenter.lazy.LazyState` is the lazy one

    def __init__(
        self,
        points: Tensor,
        groups: Tensor,
        distance: str,
        eligible: Tensor | None,
        chunk_size: int,
        options: KCenterOptions = DEFAULT_OPTIONS,
    ) -> None:
        check_inputs(points, groups, distance, chunk_size)
        self.options = options
        dev = points.device
        dt = torch.float64 if points.dtype == torch.float64 else torch.float32
        x = points.to(dt)
        if distance == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
        self.x = x
        self.sq = (x * x).sum(1) if distance == "euclidean" else None
        self.distance = distance
        # on a GPU the chunk only bounds memory (2^20 points x C centres x 4 B); small chunks cost launches
        self.chunk = int(chunk_size) if dev.type == "cpu" else max(int(chunk_size), options.gpu_min_chunk)
        self._index_groups(groups, eligible)
        M = x.shape[0]
        self.mind = torch.full((M,), math.inf, dtype=dt, device=dev)
        self.point_weight: Tensor | None = None  # (M,) each point's group weight (:meth:`weigh`)
        # worst-case rounding of one dot product over D terms (plus the few additions around it)
        self.u = torch.finfo(dt).eps / 2
        self.gamma = (x.shape[1] + 4) * self.u
        self.norm_max = 1.0 if self.sq is None else (float(self.sq.max().sqrt()) if M else 0.0)
        # cosine: a distance this small is rounding noise of 1 − x·c (the released code's formula too): set
        # to exactly 0, the same bound for every update path, so duplicates tie exactly.
        # euclidean: ‖a‖² + ‖b‖² − 2a·b is off by up to 8γ·norm² (≈ 1.4% of the largest norm after the
        # square root at D = 384), so a pair whose squared distance comes out below that is recomputed from
        # the difference ‖a − b‖² in float64 (what the released code computes): near-duplicates keep their
        # distances (only float rounding is lost) and exact duplicates come out as exactly 0
        self.zero_floor = 4.0 * self.gamma if distance == "cosine" else 0.0
        self.exact_below = 8.0 * self.gamma * self.norm_max**2 if distance == "euclidean" else 0.0
        self.threads = torch.get_num_threads()  # the caller's setting (the lazy loop runs on one)
        self.n_centers = 0
        self.last_added = 0
        # point-centre distances computed; the lazy path's argmax passes and its block-by-block refreshes
        self.stats = dict.fromkeys(("updated", "steps", "pairs_tested", "refreshes", "block_refreshes"), 0)

    def _index_groups(self, groups: Tensor, eligible: Tensor | None) -> None:
        """groups, groups_host, G, point_order, offsets, pickable, blocked and selected from the inputs."""
        dev = self.x.device
        M = self.x.shape[0]
        self.groups = groups.to(device=dev, dtype=torch.long)
        self.groups_host = self.groups.cpu()  # group of a picked point without a device sync
        if M and int(self.groups.min()) < 0:
            raise ValueError("group ids must be >= 0")
        if eligible is not None:
            if eligible.ndim != 1 or eligible.dtype != torch.bool:
                raise ValueError("eligible must be a 1-D bool tensor (one entry per group)")
            self.G = int(eligible.numel())
            if M and int(self.groups.max()) >= self.G:
                raise ValueError(f"group id {int(self.groups.max())} >= eligible.numel() = {self.G}")
            elig = eligible.to(dev)
        else:
            self.G = int(self.groups.max()) + 1 if M else 0
            elig = torch.ones(self.G, dtype=torch.bool, device=dev)
        counts = torch.bincount(self.groups, minlength=self.G)
        self.point_order = torch.sort(self.groups, stable=True).indices  # points grouped by group id
        self.offsets = [0, *torch.cumsum(counts, 0).tolist()]
        self.pickable = elig & (counts > 0)  # (G,)
        self.blocked = ~self.pickable[self.groups] if M else torch.zeros(0, dtype=torch.bool, device=dev)
        self.selected = torch.zeros(self.G, dtype=torch.bool, device=dev)

    # ------------------------------------------------------------------ groups
    def members(self, g: int) -> Tensor:
        """Point indices of group ``g`` (long), ascending."""
        return self.point_order[self.offsets[g] : self.offsets[g + 1]]

    def n_pickable_left(self) -> int:
        return int((self.pickable & ~self.selected).sum())

    def add_group(self, g: int) -> None:
        """Mark group ``g`` selected: block its points and make them centres."""
        self.selected[g] = True
        idx = self.members(g)
        if idx.numel() == 0:
            return
        self.blocked[idx] = True
        for s in range(0, idx.numel(), self.options.center_block):
            self.add_centers(idx[s : s + self.options.center_block])

    def add_centers(self, center_idx: Tensor) -> None:
        """mind ← min(mind, distance to the points ``center_idx``), for every point."""
        self.n_centers += int(center_idx.numel())
        self.last_added = int(center_idx.numel())
        self.stats["steps"] += 1
        self.full_update(center_idx)

    # ------------------------------------------------------------------ distances
    def distances(self, pts: Tensor | slice, centers: Tensor, c_sq: Tensor | None) -> Tensor:
        """Distance of the points ``pts`` to their nearest centre among ``centers`` (C,D) (``c_sq`` (C,)
        their squared norms, euclidean only): the one formula of every update path."""
        x = self.x[pts] if isinstance(pts, slice) else self.x.index_select(0, pts)
        dots = x @ centers.T  # (n, C)
        if self.sq is None:
            d = (1.0 - dots.amax(dim=1)).clamp_min_(0.0)
            return d.masked_fill_(d <= self.zero_floor, 0.0)
        assert c_sq is not None
        d2 = self.sq[pts][:, None] + c_sq[None, :] - 2.0 * dots
        near = (d2 <= self.exact_below).nonzero()  # pairs the formula cannot tell from 0: from the difference
        step = self.options.exact_pairs
        for s in range(0, near.shape[0], step):
            r, c = near[s : s + step].unbind(1)
            diff = x.index_select(0, r).to(torch.float64) - centers.index_select(0, c).to(torch.float64)
            d2[r, c] = diff.square_().sum(1).to(d2.dtype)
        return d2.amin(dim=1).clamp_min_(0.0).sqrt_()

    def full_update(self, center_idx: Tensor) -> None:
        """The exact scan: every point against the centres ``center_idx``, ``chunk`` points at a time."""
        M = self.x.shape[0]
        centers = self.x.index_select(0, center_idx)
        c_sq = self.sq[center_idx] if self.sq is not None else None
        for s in range(0, M, self.chunk):
            e = min(s + self.chunk, M)
            d = self.distances(slice(s, e), centers, c_sq)
            torch.minimum(self.mind[s:e], d, out=self.mind[s:e])
        self.stats["updated"] += M * int(center_idx.numel())

    # ------------------------------------------------------------------ picks
    def random_group(self, generator: torch.Generator | None) -> int:
        """A pickable, unselected group drawn uniformly with ``generator``."""
        cand = (self.pickable & ~self.selected).nonzero().squeeze(1)
        gdev = generator.device if generator is not None else torch.device("cpu")
        j = int(torch.randint(cand.numel(), (1,), generator=generator, device=gdev))
        return int(cand[j])

    def weigh(self, group_weights: Tensor) -> None:
        """Scale every point's distance by its group's weight (G,) (non-negative, finite) when picking: the
        sampler then maximises (k-center) or draws ∝ the square of (D²) ``distance × weight``."""
        if group_weights.ndim != 1 or group_weights.numel() != self.G:
            raise ValueError(f"weights must be (G,) = ({self.G},), got shape {tuple(group_weights.shape)}")
        w = group_weights.to(device=self.x.device, dtype=self.mind.dtype)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and >= 0")
        self.point_weight = w[self.groups]

    def scores(self) -> Tensor:
        """(M,) what the samplers rank: the distance to the selected set, times the weight if any."""
        return self.mind if self.point_weight is None else self.mind * self.point_weight

    def farthest(self) -> int:
        """The unblocked point with the largest (weighted) distance (lowest index among equals)."""
        return int(self.scores().masked_fill(self.blocked, -math.inf).argmax())

    def d2_weights(self) -> Tensor:
        """(M,) draw weights: (weighted) distance² where unblocked, else 0 (uniform if all those are 0)."""
        ok = ~self.blocked
        scores = self.scores()
        w = torch.where(ok, scores, torch.zeros_like(scores)).square()
        if not bool(w.sum() > 0):
            w = ok.to(self.mind.dtype)  # every remaining distance is 0: uniform among them
        return w
