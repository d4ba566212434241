"""Importance maps, the τ-mass filter and knowledge clusters (geal.method.knowledge)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import geal.method.knowledge as knowledge
from geal.method.kmeans import batched_kmeans
from geal.method.knowledge import ClusterSettings, importance_mask, knowledge_clusters, reduce_heads


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- reduce_heads


@pytest.mark.parametrize("how", ["mean", "max"])
def test_reduce_heads_rows_sum_to_one(how):
    att = torch.rand(5, 6, 50, generator=gen(0)).half()
    imp = reduce_heads(att, how)
    assert imp.shape == (5, 50) and imp.dtype == torch.float32
    torch.testing.assert_close(imp.sum(1), torch.ones(5))
    raw = att.float().mean(1) if how == "mean" else att.float().amax(1)
    torch.testing.assert_close(imp, raw / raw.sum(1, keepdim=True))


def test_reduce_heads_known_values_and_zero_rows():
    att = torch.tensor([[[1.0, 3.0, 0.0], [3.0, 1.0, 0.0]]])  # 1 image, 2 heads, 3 patches
    assert reduce_heads(att, "mean").tolist() == [[0.5, 0.5, 0.0]]
    assert reduce_heads(att, "max").tolist() == [[0.5, 0.5, 0.0]]
    att = torch.tensor([[[0.0, 4.0, 0.0], [2.0, 0.0, 2.0]]])
    assert reduce_heads(att, "mean").tolist() == [[0.25, 0.5, 0.25]]
    assert reduce_heads(att, "max").tolist() == [[0.25, 0.5, 0.25]]
    torch.testing.assert_close(reduce_heads(torch.zeros(1, 2, 4)), torch.full((1, 4), 0.25))
    with pytest.raises(ValueError, match="how"):
        reduce_heads(att, "median")  # type: ignore[arg-type]


def test_heads_are_averaged_raw_then_renormalised_as_released():
    """The released code (and docs/design.md §1.2) averages the raw CLS→patch attention over heads, then
    renormalises over patches. Head 0 spends most of its mass on the CLS token itself, so rescaling each head
    to sum 1 before averaging would weigh it as much as head 1 and keep another patch at τ = 0.5."""
    raw = torch.tensor([[[0.05, 0.05, 0.05, 0.05], [0.6, 0.1, 0.1, 0.2]]])  # 1 image, 2 heads, 4 patches
    released = importance_mask(reduce_heads(raw, "mean"), 0.5)
    assert released.tolist() == [[True, False, False, False]]  # (0.325, .075, .075, .125) / 0.6
    per_head_first = raw / raw.sum(-1, keepdim=True)
    assert importance_mask(per_head_first.mean(1), 0.5).tolist() == [[True, False, False, True]]
    # the whole step: the clusters of an image keeping one patch are that patch
    tokens = torch.arange(8.0).reshape(1, 4, 2)
    feats, valid = knowledge_clusters(tokens, raw, ClusterSettings(tau=0.5, k=2), generator=gen(0))
    assert valid.tolist() == [[True, False]] and feats[0, 0].tolist() == [0.0, 1.0]


# ---------------------------------------------------------------- importance_mask


def test_importance_mask_known_example():
    # importance (exact binary fractions): [1/8, 3/8, 1/16, 1/4, 3/16]
    # ascending: 1/16 (#2), 1/8 (#0), 3/16 (#4), 1/4 (#3), 3/8 (#1); cumsum 1/16, 3/16, 6/16, 10/16, 16/16.
    # τ = 0.5   → keep cumsum > 8/16: #3, #1 (mass 10/16): the smallest most-attended set with mass ≥ 0.5
    # τ = 10/16 → keep cumsum > 6/16: #3, #1 (mass exactly τ)
    # τ = 11/16 → keep cumsum > 5/16: #4, #3, #1
    # τ = 0.3   → keep cumsum > 0.7:  #1 alone (3/8 ≥ 0.3)
    # τ = 1     → keep cumsum > 0:    everything with positive mass
    imp = torch.tensor([[1 / 8, 3 / 8, 1 / 16, 1 / 4, 3 / 16]])
    assert importance_mask(imp, 0.5).tolist() == [[False, True, False, True, False]]
    assert importance_mask(imp, 10 / 16).tolist() == [[False, True, False, True, False]]
    assert importance_mask(imp, 11 / 16).tolist() == [[False, True, False, True, True]]
    assert importance_mask(imp, 0.3).tolist() == [[False, True, False, False, False]]
    assert importance_mask(imp, 1.0).tolist() == [[True] * 5]
    assert importance_mask(torch.tensor([[0.0, 0.5, 0.5]]), 1.0).tolist() == [[False, True, True]]


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5, math.nan])
def test_importance_mask_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must lie in"):
        importance_mask(torch.full((1, 4), 0.25), tau)


maps = arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(1, 40)),
    elements=st.one_of(st.just(0.0), st.floats(1e-6, 10.0)),
)


@settings(max_examples=80, deadline=None)
@given(raw=maps, tau=st.floats(1e-6, 1.0), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_importance_mask_keeps_at_least_one_patch_and_tau_of_the_mass(raw, tau, dtype):
    raw[:, 0] += 1e-3  # a positive total in every row
    imp = torch.from_numpy(raw / raw.sum(1, keepdims=True)).to(dtype)
    keep = importance_mask(imp, tau)
    assert keep.shape == imp.shape and keep.dtype == torch.bool
    assert keep.any(1).all()
    v = imp.double()
    for b in range(v.shape[0]):
        kept, dropped = v[b][keep[b]], v[b][~keep[b]]
        mass = kept.sum() / v[b].sum()
        assert mass >= tau - 1e-9
        # most attended: nothing dropped outweighs anything kept
        if dropped.numel():
            assert dropped.max() <= kept.min()
        # minimal: without its least attended patch the kept set holds less than τ
        assert (kept.sum() - kept.min()) / v[b].sum() < tau + 1e-9


def test_importance_mask_keeps_nothing_for_rows_without_mass():
    keep = importance_mask(torch.tensor([[0.0, 0.0, 0.0], [math.nan, 0.5, 0.5], [0.25, 0.25, 0.5]]), 0.5)
    assert keep.tolist() == [[False] * 3, [False] * 3, [False, False, True]]


# ---------------------------------------------------------------- knowledge_clusters


def test_empty_mask_fallback_picks_the_max_norm_patch():
    tokens = torch.randn(2, 10, 4, generator=gen(0))
    tokens[0, 6] *= 50  # the largest feature norm of image 0
    att = torch.rand(2, 3, 10, generator=gen(1))
    att[0, 1, 2] = math.nan  # broken attention (e.g. fp16 overflow): the filter keeps nothing
    cents, valid = knowledge_clusters(tokens.half(), att, ClusterSettings(tau=0.5, k=3))
    assert valid[0].tolist() == [True, False, False]
    torch.testing.assert_close(cents[0, 0], tokens[0, 6].half().float())
    assert valid[1].sum() >= 1


@pytest.mark.parametrize(
    ("fallback", "expected_kept"), [("max_norm", [6]), ("max_attention", [3]), ("all", list(range(10)))]
)
def test_every_fallback(monkeypatch, fallback, expected_kept):
    tokens = torch.randn(1, 10, 4, generator=gen(0))
    tokens[0, 6] *= 50
    att = torch.full((1, 2, 10), 0.05)
    att[0, :, 3] = 0.5
    nothing_kept = lambda imp, tau: torch.zeros_like(imp, dtype=torch.bool)  # noqa: E731
    monkeypatch.setattr(knowledge, "importance_mask", nothing_kept)
    cents, valid = knowledge_clusters(tokens, att, ClusterSettings(k=10, empty_fallback=fallback))
    assert valid[0].sum() == len(expected_kept)
    torch.testing.assert_close(cents[0, : len(expected_kept)], tokens[0, expected_kept])


def test_images_keeping_at_most_k_patches_get_their_patches():
    tokens = torch.randn(2, 16, 5, generator=gen(2))
    att = torch.full((2, 4, 16), 1e-4)
    att[0, :, [2, 9, 11]] = 1.0  # image 0: three patches hold almost all attention
    att[1] = torch.rand(4, 16, generator=gen(3))
    cents, valid = knowledge_clusters(tokens, att, ClusterSettings(tau=0.5, k=4))
    kept0 = importance_mask(reduce_heads(att[:1]), 0.5)[0].nonzero().squeeze(1).tolist()
    assert set(kept0) <= {2, 9, 11} and len(kept0) >= 2
    assert valid[0].sum() == len(kept0)
    torch.testing.assert_close(cents[0, : len(kept0)], tokens[0, kept0])


def test_same_as_batched_kmeans_on_the_kept_patches():
    # the compaction of kept patches to the front changes nothing: same seed → same clusters
    tokens = torch.randn(5, 64, 8, generator=gen(4))
    att = torch.rand(5, 6, 64, generator=gen(5)) ** 4
    for metric in ("euclidean", "cosine"):
        settings = ClusterSettings(tau=0.7, k=4, kmeans_metric=metric)
        cents, valid = knowledge_clusters(tokens, att, settings, generator=gen(6))
        keep = importance_mask(reduce_heads(att), 0.7)
        ref = batched_kmeans(tokens, keep, 4, metric=metric, generator=gen(6))
        torch.testing.assert_close(cents, ref.centroids)
        assert torch.equal(valid, ref.valid)


def test_recovers_blobs_among_the_attended_patches():
    # 40 attended patches in 2 tight blobs, 60 background patches with almost no attention
    g = gen(7)
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    tokens = torch.randn(1, 100, 3, generator=g) * 3 + torch.tensor([0.0, 0.0, 20.0])
    tokens[0, :20] = centres[0] + 0.01 * torch.randn(20, 3, generator=g)
    tokens[0, 20:40] = centres[1] + 0.01 * torch.randn(20, 3, generator=g)
    att = torch.full((1, 2, 100), 1e-5)
    att[0, :, :40] = 1.0
    # τ = 0.999: the background holds ~1.5e-5 of the mass, so exactly the 40 blob patches are kept
    cents, valid = knowledge_clusters(tokens, att, ClusterSettings(tau=0.999, k=2), generator=gen(0))
    assert valid.all()
    got = cents[0][cents[0][:, 0].argsort(descending=True)]
    torch.testing.assert_close(got, torch.stack([tokens[0, :20].mean(0), tokens[0, 20:40].mean(0)]))


def test_shapes_dtypes_and_validation():
    tokens = torch.randn(3, 20, 6).half()
    att = torch.rand(3, 2, 20).half()
    cents, valid = knowledge_clusters(tokens, att, ClusterSettings(k=5), generator=gen(0))
    assert cents.shape == (3, 5, 6) and cents.dtype == torch.float32 and valid.shape == (3, 5)
    assert cents.device == tokens.device
    with pytest.raises(ValueError, match="tau"):
        knowledge_clusters(tokens, att, ClusterSettings(tau=0.0))
    with pytest.raises(ValueError, match="attention must be"):
        knowledge_clusters(tokens, att[:, :, :5])
    with pytest.raises(ValueError, match="empty_fallback"):
        knowledge_clusters(tokens, att.float() * math.nan, ClusterSettings(empty_fallback="none"))  # type: ignore[arg-type]
