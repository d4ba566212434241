"""Knowledge clusters (docs/design.md §1.2–1.4): importance map → τ-mass filter → per-image k-means.

* :func:`reduce_heads` turns the last block's CLS→patch attention (B,H,N) into one importance map (B,N) per
  image: the raw rows averaged over heads, then renormalised to sum 1 over patches (the released code's
  order; the backbone does not rescale heads, so a head that mostly attends to CLS weighs less).
* :func:`importance_mask` keeps the most attended patches that together hold a fraction τ of the mass
  (sort ascending, cumulative sum, keep where cumsum > 1 − τ).
* :func:`knowledge_clusters` applies both, falls back to one patch when nothing is kept, and clusters each
  image's kept patch features with :func:`geal.method.kmeans.batched_kmeans` (all images at once).
* :class:`ClusterSettings` is every setting of those steps in one value: the GEAL selector's
  ``selector.clusters`` config node, passed as is to :func:`knowledge_clusters`, and (with the algorithm's
  version) the key of the knowledge-cluster cache (:mod:`geal.features.clusters`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from geal.method.kmeans import batched_kmeans
from geal.util.settings import settings_from_node

__all__ = ["ClusterSettings", "importance_mask", "knowledge_clusters", "reduce_heads"]

log = logging.getLogger(__name__)

HeadReduction = Literal["mean", "max"]
EmptyFallback = Literal["max_norm", "max_attention", "all"]
KMeansMetric = Literal["euclidean", "cosine"]
KMeansInit = Literal["kmeans++", "random"]


@dataclass(frozen=True)
class ClusterSettings:
    """Everything that determines the knowledge clusters of an image (docs/design.md, the method's steps
    2–4): the GEAL selector's ``selector.clusters`` config node (geal/conf/selector/geal.yaml says why each
    key is what it is).

    tau:            keep the most attended patches holding this fraction of the attention mass, in (0, 1]
    k:              knowledge clusters per image (≥ 1)
    head_reduction: ``mean`` | ``max`` over attention heads
    empty_fallback: what an image keeps when the filter keeps nothing: ``max_norm`` | ``max_attention`` |
                    ``all``
    kmeans_*:       the per-image k-means (metric ``euclidean`` | ``cosine``, init ``kmeans++`` | ``random``);
                    ``kmeans_seed`` seeds every chunk's generator (with the chunk's first global id)
    batch_images:   images clustered together; part of the key, as it orders the random draws
    """

    tau: float = 0.5
    k: int = 25
    head_reduction: HeadReduction = "mean"
    empty_fallback: EmptyFallback = "max_norm"
    kmeans_metric: KMeansMetric = "euclidean"
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-4
    kmeans_init: KMeansInit = "kmeans++"
    kmeans_seed: int = 0
    batch_images: int = 256

    def __post_init__(self) -> None:
        if not 0.0 < float(self.tau) <= 1.0:
            raise ValueError(
                f"clusters.tau must lie in (0, 1] (fraction of attention mass kept), got {self.tau}"
            )
        for name in ("k", "kmeans_iters", "batch_images"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"clusters.{name} must be ≥ 1, got {getattr(self, name)}")
        choices = {
            "head_reduction": HeadReduction,
            "empty_fallback": EmptyFallback,
            "kmeans_metric": KMeansMetric,
            "kmeans_init": KMeansInit,
        }
        for name, kind in choices.items():
            if getattr(self, name) not in get_args(kind):
                raise ValueError(
                    f"clusters.{name} must be one of {list(get_args(kind))}, got {getattr(self, name)!r}"
                )

    @classmethod
    def from_config(cls, node: ClusterSettings | Mapping[str, Any] | None) -> ClusterSettings:
        """``node`` as settings: a ClusterSettings as is, a mapping (a config node) checked key by key, None:
        the defaults. An unknown key is an error naming it and the valid ones."""
        return settings_from_node(cls, node, "clusters")


def reduce_heads(attention: Tensor, how: HeadReduction = "mean") -> Tensor:
    """Reduce per-head attention (B,H,N) to an importance map (B,N) summing to 1 over N (float32).

    ``how``: "mean" (the paper) or "max" over heads. Attention is expected non-negative: the raw CLS→patch
    softmax rows (each head's mass on the patches, not rescaled per head: the heads are reduced first and
    the result renormalised, as the released code does), or CNN feature norms with H = 1. A row whose
    reduced values sum to 0 becomes uniform; rows with non-finite values stay non-finite (the filter then
    keeps nothing and the caller's fallback applies).
    """
    if attention.ndim != 3:
        raise ValueError(f"attention must be (B, heads, N), got shape {tuple(attention.shape)}")
    a = attention.to(torch.float64 if attention.dtype == torch.float64 else torch.float32)
    if how == "mean":
        r = a.mean(dim=1)
    elif how == "max":
        r = a.amax(dim=1)
    else:
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    total = r.sum(dim=1, keepdim=True)
    uniform = torch.full_like(r, 1.0 / max(r.shape[1], 1))
    return torch.where(total == 0, uniform, r / torch.where(total == 0, torch.ones_like(total), total))


def importance_mask(importance: Tensor, tau: float) -> Tensor:
    """Keep the most important patches holding a fraction ``tau`` of the mass: (B,N) → bool (B,N).

    Per image: sort ascending (stable, so among equal values the lower index is dropped first), cumulative
    sum, keep where cumsum > 1 − τ, mapped back to the original positions. The map is renormalised to sum 1
    first and the sums run in float64, so for a non-negative map with a positive finite total at least one
    patch is kept and the kept mass is ≥ τ; the kept set is the smallest one of most important patches
    with mass ≥ τ. Rows with zero total or non-finite values keep nothing. ``tau`` must lie in (0, 1].
    """
    tau = float(tau)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must lie in (0, 1] (fraction of attention mass kept), got {tau}")
    if importance.ndim != 2:
        raise ValueError(f"importance must be (B, N), got shape {tuple(importance.shape)}")
    imp = importance.to(torch.float64)
    sorted_vals, order = torch.sort(imp, dim=1, stable=True)
    csum = sorted_vals.cumsum(dim=1)
    total = csum[:, -1:] if csum.shape[1] > 0 else csum.new_zeros(csum.shape[0], 1)
    keep_sorted = (csum / total) > (1.0 - tau)  # zero total → NaN/inf comparisons; handled below
    keep_sorted &= (total > 0) & torch.isfinite(total)
    mask = torch.zeros_like(keep_sorted)
    mask.scatter_(1, order, keep_sorted)
    return mask


def _fallback(keep: Tensor, tokens: Tensor, importance: Tensor, how: EmptyFallback) -> Tensor:
    """Fill images whose mask is empty: one max-norm patch, one max-attention patch, or all patches."""
    empty = ~keep.any(dim=1)
    n_empty = int(empty.sum())
    if n_empty == 0:
        return keep
    log.debug("importance filter kept nothing for %d image(s): fallback %r", n_empty, how)
    keep = keep.clone()
    if how == "all":
        keep[empty] = True
        return keep
    if how == "max_norm":
        score = tokens.norm(dim=-1)
    elif how == "max_attention":
        score = torch.nan_to_num(importance.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    else:
        raise ValueError(f"empty_fallback must be 'max_norm', 'max_attention' or 'all', got {how!r}")
    best = score.argmax(dim=1)
    rows = empty.nonzero().squeeze(1)
    keep[rows, best[rows]] = True
    return keep


def knowledge_clusters(
    tokens: Tensor,
    attention: Tensor,
    settings: ClusterSettings | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Knowledge clusters of a batch of images: tokens (B,N,D), attention (B,H,N) → (B,k,D) f32, (B,k) bool.

    With ``settings`` (default: :class:`ClusterSettings`'s defaults), filters each image's patches with
    :func:`importance_mask` on :func:`reduce_heads` (``tau``, ``head_reduction``); an image that keeps nothing
    keeps ``empty_fallback`` ("max_norm": its patch with the largest feature norm; "max_attention": its most
    attended patch; "all": every patch). The kept patch features of every image are then clustered
    separately (batched k-means, ``k`` clusters, ``kmeans_*``, random draws from ``generator``); an image
    keeping ≤ k patches gets its kept patches as clusters, and ``valid`` marks the real clusters. Computed in
    float32 whatever the input dtype (e.g. fp16 memory-mapped stores), on the tokens' device. With
    ``kmeans_metric="cosine"`` (spherical k-means) the centroids are unit vectors. (``kmeans_seed`` and
    ``batch_images`` are the caller's: they say how a pool is split into batches and seeded, see
    :func:`geal.features.clusters.shard_knowledge_clusters`.)
    """
    s = settings if settings is not None else ClusterSettings()
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(tokens.shape)}")
    if attention.ndim != 3 or attention.shape[0] != tokens.shape[0] or attention.shape[2] != tokens.shape[1]:
        raise ValueError(
            f"attention must be (B, heads, N) = ({tokens.shape[0]}, H, {tokens.shape[1]}), "
            f"got shape {tuple(attention.shape)}"
        )
    x = tokens.to(torch.float32)
    importance = reduce_heads(attention.to(device=x.device, dtype=torch.float32), s.head_reduction)
    keep = _fallback(importance_mask(importance, s.tau), x, importance, s.empty_fallback)
    B, _, D = x.shape
    # compact the kept patches to the front so k-means works on P = max kept count, not N
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    P = int(keep.sum(dim=1).max()) if B > 0 else 0
    idx = order[:, :P]
    pts = x.gather(1, idx.unsqueeze(-1).expand(B, P, D))
    msk = keep.gather(1, idx)
    res = batched_kmeans(
        pts,
        msk,
        s.k,
        iters=s.kmeans_iters,
        tol=s.kmeans_tol,
        metric=s.kmeans_metric,
        init=s.kmeans_init,
        generator=generator,
    )
    return res.centroids.to(torch.float32), res.valid
