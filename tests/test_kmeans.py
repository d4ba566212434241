"""Batched per-image k-means (geal.method.kmeans)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geal.method.kmeans import batched_kmeans, init_centroids, per_image_kmeans


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_batch(seed: int, B: int = 6, P: int = 20, D: int = 8, p_valid: float = 0.7):
    g = gen(seed)
    pts = torch.randn(B, P, D, generator=g)
    mask = torch.rand(B, P, generator=g) < p_valid
    return pts, mask


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(1, 5),
    P=st.integers(0, 25),
    k=st.integers(1, 8),
    metric=st.sampled_from(["euclidean", "cosine"]),
    init=st.sampled_from(["kmeans++", "random"]),
)
def test_at_most_k_valid_clusters_and_consistent_assignments(seed, B, P, k, metric, init):
    pts, mask = random_batch(seed, B=B, P=P, D=4, p_valid=0.6)
    res = batched_kmeans(pts, mask, k, metric=metric, init=init, generator=gen(seed))
    assert res.centroids.shape == (B, k, 4) and res.valid.shape == (B, k) and res.assignments.shape == (B, P)
    n_valid = mask.sum(1)
    assert (res.valid.sum(1) <= torch.clamp(n_valid, max=k)).all()
    assert ((res.valid.sum(1) >= 1) | (n_valid == 0)).all()
    assert (res.assignments[~mask] == -1).all()
    a = res.assignments[mask]
    assert ((a >= 0) & (a < k)).all()
    # every valid point sits in a valid cluster, and every valid cluster owns a point
    for b in range(B):
        owned = set(res.assignments[b][mask[b]].tolist())
        assert owned == set(res.valid[b].nonzero().squeeze(1).tolist())
    if metric == "cosine":
        norms = res.centroids[res.valid].norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_recovers_well_separated_blobs(metric):
    # 3 images, 4 blobs each (different blob centres per image, varied sizes, padding between images)
    g = gen(0)
    B, k, D, P = 3, 4, 6, 60
    pts = torch.zeros(B, P, D)
    mask = torch.zeros(B, P, dtype=torch.bool)
    expected = []
    for b in range(B):
        centres = torch.eye(D)[:k] * 100.0 + torch.randn(k, D, generator=g)  # far apart, also in angle
        sizes = [5, 9, 13, 20 - b]
        rows, start = [], 0
        for j, s in enumerate(sizes):
            blob = centres[j] + 0.05 * torch.randn(s, D, generator=g)
            pts[b, start : start + s] = blob
            rows.append(blob)
            start += s
        mask[b, :start] = True
        pts[b, start:] = 1e3  # padding values far away: must be ignored
        blobs = [torch.nn.functional.normalize(r, dim=1) if metric == "cosine" else r for r in rows]
        means = torch.stack([r.mean(0) for r in blobs])
        if metric == "cosine":
            means = torch.nn.functional.normalize(means, dim=1)
        expected.append(means)
    for seed in range(5):
        res = batched_kmeans(pts, mask, k, metric=metric, generator=gen(seed))
        assert res.valid.all()
        for b in range(B):
            got = res.centroids[b]
            # match every expected blob mean to its nearest centroid: a bijection, and ≈ equal
            nearest = torch.cdist(expected[b], got).argmin(1)
            assert sorted(nearest.tolist()) == list(range(k))
            torch.testing.assert_close(got[nearest], expected[b], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("init", ["kmeans++", "random"])
@pytest.mark.parametrize("seed", range(4))
def test_batched_equals_per_image_loop(metric, init, seed):
    pts, mask = random_batch(seed, B=12, P=30, D=8, p_valid=0.8)
    mask[0] = False  # an image with no points
    mask[1, 4:] = False  # an image with ≤ k points
    a = batched_kmeans(pts, mask, 5, metric=metric, init=init, generator=gen(seed))
    b = per_image_kmeans(pts, mask, 5, metric=metric, init=init, generator=gen(seed))
    torch.testing.assert_close(a.centroids, b.centroids, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.valid, b.valid)
    assert torch.equal(a.assignments, b.assignments)
    # and with explicit initial centroids
    c0 = init_centroids(pts, mask, 5, metric=metric, init=init, generator=gen(seed + 100))
    a = batched_kmeans(pts, mask, 5, metric=metric, initial_centroids=c0, iters=3)
    b = per_image_kmeans(pts, mask, 5, metric=metric, initial_centroids=c0, iters=3)
    torch.testing.assert_close(a.centroids, b.centroids, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.assignments, b.assignments)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_padded_points_never_influence_centroids(metric, init):
    pts, mask = random_batch(7, B=8, P=25, D=5, p_valid=0.6)
    a = batched_kmeans(pts, mask, 4, metric=metric, init=init, generator=gen(1))
    other = pts.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 5, generator=gen(99)) * 1e4
    b = batched_kmeans(other, mask, 4, metric=metric, init=init, generator=gen(1))
    assert torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.valid, b.valid) and torch.equal(a.assignments, b.assignments)


def test_images_with_at_most_k_points_return_their_points():
    pts = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3) + 1
    mask = torch.tensor([[False, True, False, True, True, False], [True] * 6])
    res = batched_kmeans(pts, mask, 6, generator=gen(0))
    torch.testing.assert_close(res.centroids[0, :3], pts[0, [1, 3, 4]])
    assert res.valid[0].tolist() == [True, True, True, False, False, False]
    assert (res.centroids[0, 3:] == 0).all()
    assert res.assignments[0].tolist() == [-1, 0, -1, 1, 2, -1]
    torch.testing.assert_close(res.centroids[1], pts[1])  # exactly k points
    assert res.valid[1].all()
    cos = batched_kmeans(pts, mask, 6, metric="cosine")
    torch.testing.assert_close(cos.centroids[0, :3], torch.nn.functional.normalize(pts[0, [1, 3, 4]], dim=1))


def test_empty_cluster_keeps_its_previous_centroid_and_is_invalid():
    pts = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    c0 = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [500.0, 500.0]]])
    res = batched_kmeans(pts, mask, 3, initial_centroids=c0)
    torch.testing.assert_close(res.centroids[0], torch.tensor([[0.0, 0.5], [10.0, 0.5], [500.0, 500.0]]))
    assert res.valid[0].tolist() == [True, True, False]
    assert res.assignments[0].tolist() == [0, 0, 1, 1]


def test_duplicate_points_and_determinism():
    pts = torch.ones(2, 12, 3)
    pts[1, 6:] = 2.0
    mask = torch.ones(2, 12, dtype=torch.bool)
    res = batched_kmeans(pts, mask, 4, generator=gen(0))  # every d² is 0 after one centre: no crash
    assert res.valid.sum(1).tolist() == [1, 2]
    a = batched_kmeans(*random_batch(3), 4, generator=gen(5))
    b = batched_kmeans(*random_batch(3), 4, generator=gen(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kmeanspp_seeds_the_same_points_from_all_distances_at_once_or_one_seed_at_a_time(monkeypatch, metric):
    """The Gram route (all P×P distances of an image in one product) and the per-seed products draw the same
    points, none twice, whatever the chunking; and a seed lands on each of k far-apart blobs."""
    import geal.method.kmeans as km

    g = gen(11)
    centres = 20.0 * torch.randn(40, 6, 16, generator=g)  # 6 far-apart blobs per image
    which = torch.arange(48).remainder(6)
    pts = centres[:, which] + 0.01 * torch.randn(40, 48, 16, generator=g)
    mask = torch.rand(40, 48, generator=g) < 0.9
    mask[:, :6] = True  # every blob keeps a point
    gram = init_centroids(pts, mask, 6, metric=metric, generator=gen(2))
    monkeypatch.setattr(km, "_GRAM_MAX_POINTS_PER_SEED", 0)  # one matrix-vector product per seed
    monkeypatch.setattr(km, "_seed_chunk", lambda x, k: 7)  # and other chunks
    per_seed = init_centroids(pts, mask, 6, metric=metric, generator=gen(2))
    assert torch.equal(gram, per_seed)
    x = km._prepare(pts, metric)
    same = (gram[:, :, None, :] == x[:, None, :, :]).all(-1)  # (B,k,P): seed j is point p
    assert (same.sum(-1) == 1).all()  # every seed is exactly one of the image's points
    seeded = same.int().argmax(-1)  # (B,k)
    assert all(mask[b, seeded[b]].all() for b in range(40))  # valid points only
    assert all(len(set(row)) == 6 for row in seeded.tolist())  # never the same point twice
    assert all(len(set(row)) == 6 for row in which[seeded].tolist())  # one seed per blob


def test_input_dtypes_and_validation():
    pts, mask = random_batch(0)
    res = batched_kmeans(pts.half(), mask, 3, generator=gen(0))
    assert res.centroids.dtype == torch.float32
    assert batched_kmeans(pts.double(), mask, 3, generator=gen(0)).centroids.dtype == torch.float64
    with pytest.raises(ValueError, match="k must be"):
        batched_kmeans(pts, mask, 0)
    with pytest.raises(ValueError, match="mask"):
        batched_kmeans(pts, mask.float(), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric"):
        batched_kmeans(pts, mask, 3, metric="manhattan")  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cuda_equals_cpu(metric):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pts, mask = random_batch(0, B=64, P=40, D=16, p_valid=0.8)
    c0 = init_centroids(pts, mask, 5, metric=metric, init="kmeans++", generator=gen(3))
    cpu = batched_kmeans(pts, mask, 5, metric=metric, initial_centroids=c0)
    cuda = batched_kmeans(pts.cuda(), mask.cuda(), 5, metric=metric, initial_centroids=c0.cuda())
    torch.testing.assert_close(cuda.centroids.cpu(), cpu.centroids, atol=1e-4, rtol=1e-4)
    assert (cuda.assignments.cpu() == cpu.assignments).float().mean() > 0.99
