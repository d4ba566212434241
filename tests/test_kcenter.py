"""k-center greedy and D² sampling over grouped points (geal.method.kcenter)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from geal.method.kcenter import GreedyResult, KCenterOptions, d2_sampling, kcenter_greedy
from geal.method.kcenter.lazy import LazyState
from geal.method.kcenter.state import State


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests run thousands of ops on tiny tensors: on a shared, busy CPU each op that wakes a second
    OpenMP thread waits milliseconds for it (measured ~12 ms per op at load 8 on 2 cores). One thread
    keeps the module fast; it changes no result (the tests compare results, not speed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- plain NumPy reference (float64)


def np_distances(x: np.ndarray, distance: str) -> np.ndarray:
    """Full (M, M) distance matrix, written plainly."""
    x = np.asarray(x, dtype=np.float64)
    if distance == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.maximum(1.0 - xn @ xn.T, 0.0)
    diff = x[:, None, :] - x[None, :, :]
    return np.sqrt((diff**2).sum(-1))


def np_kcenter(x: np.ndarray, groups: np.ndarray, budget: int, distance: str, initial=(), first=None):
    """Naive greedy k-center over groups → (order, scores); ``first``: the seed group when no initial."""
    dist = np_distances(x, distance)
    selected: list[int] = list(initial)
    order, scores = [], []
    if not selected:
        order.append(first)
        scores.append(math.nan)
        selected.append(first)
    while len(order) < budget:
        centers = np.isin(groups, selected)
        mind = dist[:, centers].min(axis=1)
        mind[np.isin(groups, selected)] = -np.inf
        i = int(np.argmax(mind))  # first maximum = lowest point index
        order.append(int(groups[i]))
        scores.append(float(mind[i]))
        selected.append(int(groups[i]))
    return order, scores


def radius(x: np.ndarray, groups: np.ndarray, chosen, distance: str) -> float:
    """Max over all points of the min distance to the points of the chosen groups."""
    dist = np_distances(x, distance)
    return float(dist[:, np.isin(groups, list(chosen))].min(axis=1).max())


def random_set(seed: int, n_groups: int, dim: int = 5, max_per_group: int = 4):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_per_group + 1, size=n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    perm = rng.permutation(groups.size)  # points of a group are not contiguous
    groups = groups[perm]
    x = rng.normal(size=(groups.size, dim))
    return x, groups


# ---------------------------------------------------------------- known answers


def test_known_answer_euclidean_with_initial_set():
    # 1-D line (plus one point off it), groups = images:
    #   g0: (0,0),(1,0)   g1: (10,0)   g2: (4,0),(5,0)   g3: (0,7)   g4: (20,0)
    # Start from the labeled set {g0}. Min distances to {(0,0),(1,0)}:
    #   g1: 9, g2: 3 / 4, g3: 7, g4: 19             -> pick g4 (score 19)
    # + centre (20,0): g1: min(9,10)=9, g2: 4, g3: 7 -> pick g1 (9)
    # + centre (10,0): g2: min(4,5)=4, g3: 7         -> pick g3 (7)
    # + centre (0,7):  g2: 4                          -> pick g2 (4)
    pts = torch.tensor([[0, 0], [1, 0], [10, 0], [4, 0], [5, 0], [0, 7], [20, 0]], dtype=torch.float32)
    grp = torch.tensor([0, 0, 1, 2, 2, 3, 4])
    res = kcenter_greedy(pts, grp, 4, distance="euclidean", initial=[0])
    assert res.order == [4, 1, 3, 2]
    assert res.scores == pytest.approx([19.0, 9.0, 7.0, 4.0], abs=1e-4)


def test_known_answer_cosine_with_initial_set():
    # unit circle: g0 at 0°, g1 at 90°, g2 at 180°, g3 = {45°, 135°}; cosine distance 1 − cos(angle).
    # From {g0}: g1: 1, g2: 2, g3: 1−cos45 = 0.293 / 1+cos45 = 1.707    -> pick g2 (2)
    # + 180°:   g1: min(1, 1) = 1, g3: 45° 0.293, 135° min(1.707, 0.293) -> pick g1 (1)
    # + 90°:    g3: 45° min(0.293, 0.293) = 0.293                         -> pick g3 (0.293)
    ang = torch.tensor([0.0, 90.0, 180.0, 45.0, 135.0]) * math.pi / 180
    pts = torch.stack([ang.cos(), ang.sin()], 1) * torch.tensor([[1.0], [2.0], [3.0], [0.5], [4.0]])
    grp = torch.tensor([0, 1, 2, 3, 3])
    res = kcenter_greedy(pts, grp, 3, distance="cosine", initial=[0])
    c45 = 1 - math.cos(math.pi / 4)
    assert res.order == [2, 1, 3]
    assert res.scores == pytest.approx([2.0, 1.0, c45], abs=1e-5)


def test_ties_go_to_lowest_point_index():
    # g2's point (index 1) and g1's point (index 2) are both at distance 5 from g0: index 1 wins.
    pts = torch.tensor([[0.0, 0.0], [5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    grp = torch.tensor([0, 2, 1, 3])
    res = kcenter_greedy(pts, grp, 1, distance="euclidean", initial=[0])
    assert res.order == [2]


def test_random_seed_group_is_first_and_deterministic():
    x, g = random_set(0, 12)
    pts, grp = torch.from_numpy(x), torch.from_numpy(g)
    a = kcenter_greedy(pts, grp, 6, generator=gen(3))
    b = kcenter_greedy(pts, grp, 6, generator=gen(3))
    assert a == b
    assert math.isnan(a.scores[0]) and all(s >= 0 for s in a.scores[1:])
    firsts = {kcenter_greedy(pts, grp, 1, generator=gen(s)).order[0] for s in range(40)}
    assert len(firsts) > 5  # the seed group really is drawn from the generator


# ---------------------------------------------------------------- against the NumPy reference


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(6))
def test_same_order_as_numpy_reference(distance, dtype, seed):
    x, g = random_set(seed, 25)
    pts, grp = torch.from_numpy(x).to(dtype), torch.from_numpy(g)
    budget = 15
    # random seed group
    res = kcenter_greedy(pts, grp, budget, distance=distance, generator=gen(seed), chunk_size=7)
    ref_order, ref_scores = np_kcenter(x, g, budget, distance, first=res.order[0])
    assert res.order == ref_order
    np.testing.assert_allclose(res.scores[1:], ref_scores[1:], rtol=1e-5, atol=1e-5)
    # from an initial labeled set
    initial = [seed % 25, (seed * 7 + 3) % 25]
    res = kcenter_greedy(pts, grp, budget, distance=distance, initial=initial, chunk_size=1000)
    ref_order, ref_scores = np_kcenter(x, g, budget, distance, initial=initial)
    assert res.order == ref_order
    assert not set(res.order) & set(initial)
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_chunk_size_does_not_change_the_result():
    x, g = random_set(11, 40)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    results = {
        tuple(kcenter_greedy(pts, grp, 30, generator=gen(0), chunk_size=c).order) for c in (1, 5, 65536)
    }
    assert len(results) == 1


# ---------------------------------------------------------------- properties

sets = st.builds(random_set, st.integers(0, 10_000), st.integers(3, 14), st.integers(1, 4), st.integers(1, 3))


@settings(max_examples=40, deadline=None)
@given(
    data=sets,
    distance=st.sampled_from(["cosine", "euclidean"]),
    seed=st.integers(0, 100),
    frac=st.floats(0, 1),
)
def test_prefix_property_and_radius_never_grows(data, distance, seed, frac):
    x, g = data
    n = int(g.max()) + 1
    pts, grp = torch.from_numpy(x), torch.from_numpy(g)
    full = kcenter_greedy(pts, grp, n, distance=distance, generator=gen(seed))
    assert sorted(full.order) == list(range(n))  # no repeats, every group once
    small_budget = int(frac * n)
    small = kcenter_greedy(pts, grp, small_budget, distance=distance, generator=gen(seed))
    assert small.order == full.order[:small_budget]
    radii = [radius(x, g, full.order[: t + 1], distance) for t in range(n)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(radii))
    assert radii[-1] == pytest.approx(0.0, abs=1e-9)
    # the score of each pick is the radius of the set before it (over the not yet selected points)
    for t in range(1, n):
        assert full.scores[t] == pytest.approx(radii[t - 1], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 9), budget=st.integers(1, 4), with_initial=st.booleans())
def test_within_twice_the_optimal_radius(seed, n, budget, with_initial):
    # one point per image (the Core-Set case), euclidean (a metric): greedy ≤ 2 × optimal, brute force.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) * rng.uniform(0.1, 10, size=(n, 1))
    g = np.arange(n)
    initial = [0] if with_initial else []
    budget = min(budget, n - len(initial))
    res = kcenter_greedy(
        torch.from_numpy(x),
        torch.from_numpy(g),
        budget,
        distance="euclidean",
        initial=initial,
        generator=gen(seed),
    )
    greedy_r = radius(x, g, initial + res.order, "euclidean")
    candidates = [i for i in range(n) if i not in initial]
    optimal_r = min(
        radius(x, g, initial + list(c), "euclidean") for c in itertools.combinations(candidates, budget)
    )
    assert greedy_r <= 2 * optimal_r + 1e-9


@pytest.mark.parametrize("fn", [kcenter_greedy, d2_sampling])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_no_repeats_when_all_features_identical(fn, distance):
    pts = torch.ones(30, 4)
    grp = torch.tensor([i % 10 for i in range(30)])
    res = fn(pts, grp, 10, distance=distance, generator=gen(0))
    assert sorted(res.order) == list(range(10))
    res = fn(pts, grp, 7, distance=distance, initial=[2, 5], generator=gen(1))
    assert len(set(res.order)) == 7 and not {2, 5} & set(res.order)
    assert all(s == pytest.approx(0.0, abs=1e-2) for s in res.scores)


@pytest.mark.parametrize("fn", [kcenter_greedy, d2_sampling])
def test_empty_and_ineligible_groups_never_picked(fn):
    rng = np.random.default_rng(0)
    g = np.array([0, 0, 2, 3, 3, 5, 6, 8])  # groups 1, 4, 7, 9 have no points
    x = rng.normal(size=(g.size, 3))
    eligible = torch.ones(10, dtype=torch.bool)
    eligible[[3, 8]] = False  # 3 and 8 have points but may not be picked
    pickable = {0, 2, 5, 6}
    for seed in range(10):
        res = fn(torch.from_numpy(x), torch.from_numpy(g), 4, eligible=eligible, generator=gen(seed))
        assert set(res.order) == pickable
    with pytest.raises(ValueError, match="exceeds the 4 pickable groups"):
        fn(torch.from_numpy(x), torch.from_numpy(g), 5, eligible=eligible, generator=gen(0))
    with pytest.raises(ValueError, match="exceeds the 2 pickable groups"):
        fn(torch.from_numpy(x), torch.from_numpy(g), 3, eligible=eligible, initial=[0, 5])
    # ineligible groups in the initial set still act as centres
    res = fn(torch.from_numpy(x), torch.from_numpy(g), 2, eligible=eligible, initial=[3, 8], generator=gen(0))
    assert set(res.order) <= pickable


def test_budget_zero_and_bad_arguments():
    pts, grp = torch.randn(5, 3), torch.arange(5)
    assert kcenter_greedy(pts, grp, 0) == GreedyResult([], [])
    with pytest.raises(ValueError, match="distance"):
        kcenter_greedy(pts, grp, 1, distance="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial group id"):
        kcenter_greedy(pts, grp, 1, initial=[7])
    with pytest.raises(ValueError, match="groups must be"):
        kcenter_greedy(pts, grp[:3], 1)


def test_progress_bar_runs():
    pts, grp = torch.randn(40, 3), torch.arange(40) // 2
    assert len(kcenter_greedy(pts, grp, 5, generator=gen(0), progress=True).order) == 5


# ---------------------------------------------------------------- D² sampling


def test_d2_draws_proportional_to_squared_distance():
    # fixed initial set, budget 1: P(group) = Σ_{its points} d² / Σ_all d²  (chi-square, p > 0.001)
    rng = np.random.default_rng(5)
    g = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    x = rng.normal(size=(g.size, 3))
    initial = [0]
    dist = np_distances(x, "euclidean")
    mind = dist[:, g == 0].min(axis=1)
    mind[g == 0] = 0.0
    groups_left = [1, 2, 3, 4, 5]
    expected_p = np.array([(mind[g == h] ** 2).sum() for h in groups_left])
    expected_p /= expected_p.sum()
    pts, grp = torch.from_numpy(x), torch.from_numpy(g)
    n = 3000
    draws = [
        d2_sampling(pts, grp, 1, distance="euclidean", initial=initial, generator=gen(s)).order[0]
        for s in range(n)
    ]
    observed = np.array([draws.count(h) for h in groups_left])
    assert observed.sum() == n
    assert chisquare(observed, expected_p * n).pvalue > 1e-3


def test_d2_score_is_drawn_points_distance_and_uniform_when_all_zero():
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    res = d2_sampling(pts, torch.tensor([0, 1]), 1, distance="euclidean", initial=[0])
    assert res.order == [1] and res.scores == pytest.approx([5.0])
    # all remaining distances 0 → every remaining group reachable
    pts = torch.zeros(6, 2)
    firsts = {
        d2_sampling(pts, torch.arange(6), 1, distance="euclidean", initial=[0], generator=gen(s)).order[0]
        for s in range(60)
    }
    assert firsts == {1, 2, 3, 4, 5}


def test_d2_deterministic_for_a_seed():
    x, g = random_set(2, 20)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    assert d2_sampling(pts, grp, 10, generator=gen(4)) == d2_sampling(pts, grp, 10, generator=gen(4))


# ---------------------------------------------------------------- pruned updates = the full scan


def clustered_set(seed: int, n_groups: int, per_group: int = 5, dim: int = 16, n_modes: int = 12):
    """Points around a few far-apart modes (the structure the bounds exploit), groups mixing modes."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(n_modes, dim)) * 4.0
    groups = np.repeat(np.arange(n_groups), per_group)
    which = rng.integers(n_modes, size=groups.size)
    x = modes[which] + rng.normal(size=(groups.size, dim)) * rng.uniform(0.2, 1.0, size=(groups.size, 1))
    perm = rng.permutation(groups.size)
    return x[perm], groups[perm]


def both(fn, pts, grp, budget, seed=0, **kw):
    """The full scan's and the bounded path's result, each with a fresh generator seeded ``seed``."""
    full = fn(pts, grp, budget, pruning="none", generator=gen(seed), **kw)
    pruned = fn(pts, grp, budget, pruning="bounds", block_size=8, generator=gen(seed), **kw)
    return full, pruned


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("seed", range(3))
def test_bounds_pick_exactly_what_the_full_scan_picks(distance, kind, seed):
    x, g = clustered_set(seed, 100) if kind == "clustered" else random_set(seed, 100, dim=8, max_per_group=6)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    n = int(g.max()) + 1
    # from a random seed group, all the way to the last group
    full, pruned = both(kcenter_greedy, pts, grp, n, seed, distance=distance)
    assert pruned.order == full.order and sorted(full.order) == list(range(n))
    np.testing.assert_allclose(pruned.scores[1:], full.scores[1:], rtol=1e-5, atol=1e-5)
    # from an initial labeled set, with ineligible groups (never picked, still never centres)
    eligible = torch.ones(n, dtype=torch.bool)
    eligible[torch.from_numpy(np.random.default_rng(seed).choice(n, 15, replace=False))] = False
    initial = [int(i) for i in np.random.default_rng(seed + 1).choice(n, 10, replace=False)]
    budget = int((eligible & ~torch.isin(torch.arange(n), torch.tensor(initial))).sum()) - 5
    full, pruned = both(
        kcenter_greedy, pts, grp, budget, distance=distance, initial=initial, eligible=eligible
    )
    assert pruned.order == full.order
    assert not set(pruned.order) & (set(initial) | set(torch.nonzero(~eligible).squeeze(1).tolist()))
    np.testing.assert_allclose(pruned.scores, full.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_bounds_with_duplicate_points_and_float64(distance):
    """Exact duplicates (a centre's copies are at distance exactly 0, the others tie) pick the full scan's
    order, in float32 and float64. The parallel copies are scaled by a power of two, so that for cosine
    they normalise to the same bits as the originals: copies ×3 differ from them in the last bit, and which
    of two such near-equal points a path picks depends on how each product rounds, which differs between
    product shapes and CPUs (one CPU picked the other copy of such a pair, another did not): near-ties
    within rounding are not defined."""
    x, g = random_set(4, 120, dim=6)
    x = np.concatenate([x, x[:80], x[:40] * 4.0])  # exact duplicates (and, for cosine, parallel copies)
    g = np.concatenate([g, g[:80] + 120, np.arange(40) % 25 + 200])
    for dtype in (torch.float32, torch.float64):
        pts, grp = torch.from_numpy(x).to(dtype), torch.from_numpy(g)
        present = sorted(set(g.tolist()))
        full, pruned = both(kcenter_greedy, pts, grp, len(present), 2, distance=distance)
        assert pruned.order == full.order and sorted(full.order) == present


def test_bounds_do_skip_work_on_clustered_points():
    # the equivalence above would be vacuous if the bounded path computed everything anyway
    x, g = clustered_set(0, 300, dim=16, n_modes=30)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    st = LazyState(pts, grp, "cosine", None, 65536, block_size=8)
    st.add_group(0)
    for _ in range(150):
        st.add_group(int(st.groups[st.farthest()]))
    assert st.stats["updated"] < 0.5 * st.n_centers * x.shape[0]


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_d2_bounds_draw_exactly_what_the_full_scan_draws(distance):
    x, g = clustered_set(5, 120)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    for seed in range(3):
        full, pruned = both(d2_sampling, pts, grp, 80, seed, distance=distance)
        assert pruned.order == full.order
        np.testing.assert_allclose(pruned.scores[1:], full.scores[1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_d2_runs_the_exact_scan_whatever_the_pruning(distance):
    """D² needs every distance at every draw: ``pruning="bounds"`` (and "auto" on a large set) keeps the
    exact scan's state (so the draws are the full scan's by construction); k-center's takes the lazy one."""
    from geal.method.kcenter.api import make_state

    x, g = clustered_set(3, 200, per_group=5, dim=3, n_modes=40)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    for pruning in ("bounds", "auto"):
        options = KCenterOptions(auto_bounds_min_points=1)
        assert type(make_state(pts, grp, distance, None, 65536, False, pruning, 8, options)) is State
    lazy = make_state(pts, grp, distance, None, 65536, True, "bounds", 8)
    assert isinstance(lazy, LazyState)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize(("max_kept", "test_elements"), [(1.0, 1 << 22), (0.5, 1 << 22), (0.5, 64)])
def test_refreshes_of_many_points_by_blocks_keep_the_full_scans_distances(distance, max_kept, test_elements):
    """Refreshes of many points (the catch-up before full scans) go block by block, each block reading only
    the centres its bound keeps. Here every refresh of 32+ points does (``max_kept`` 1.0: the bound always
    taken; 0.5: some groups of blocks decline it and take the plain pass; ``test_elements`` 64: many groups
    of a few blocks each), and after every pick each up-to-date point's distance is the full scan's (up
    to float32 rounding: a refresh's products have other shapes than the full scan's, and euclidean distances
    come from ‖x‖² + ‖c‖² − 2x·c), and so are the picks."""
    options = KCenterOptions(
        block_refresh_min_rows=32,
        block_refresh_min_centres=1,
        block_refresh_max_kept=max_kept,
        block_test_elements=test_elements,
    )
    x, g = clustered_set(2, 200, per_group=4, dim=8, n_modes=20)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    st = LazyState(pts, grp, distance, None, 65536, block_size=8, options=options)
    reference = State(pts, grp, distance, None, 65536)
    st.add_group(0)
    reference.add_group(0)
    checked = 0
    for _ in range(150):
        i = st.farthest()
        assert i == reference.farthest()
        current = (st.last_seen == st.cmat.shape[0]) & ~st.blocked
        torch.testing.assert_close(st.mind[current], reference.mind[current], rtol=1e-4, atol=1e-5)
        checked += int(current.sum())
        st.add_group(int(st.groups_host[i]))
        reference.add_group(int(st.groups_host[i]))
    assert st.stats["block_refreshes"] > (20 if test_elements == 64 else 0) and checked > 150


def test_pruning_argument_is_checked():
    pts, grp = torch.randn(5, 3), torch.arange(5)
    with pytest.raises(ValueError, match="pruning"):
        kcenter_greedy(pts, grp, 1, pruning="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_size"):
        kcenter_greedy(pts, grp, 1, pruning="bounds", block_size=0)


@pytest.mark.gpu
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("fn", [kcenter_greedy, d2_sampling])
def test_cuda_picks_what_the_cpu_picks(fn, distance):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, g = clustered_set(0, 300)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    cpu = fn(pts, grp, 150, distance=distance, generator=gen(1), initial=[3, 7])
    # the generator stays on the CPU (D² draws): same draws whatever device holds the points
    cuda = fn(pts.cuda(), grp.cuda(), 150, distance=distance, generator=gen(1), initial=[3, 7])
    assert cuda.order == cpu.order
    np.testing.assert_allclose(cuda.scores, cpu.scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_lazy_path_picks_what_the_full_scan_picks(distance, kind):
    """The lazy path (numpy bookkeeping, torch products) picks the full scan's points: the same order, and
    scores equal up to the rounding of products of other shapes."""
    x, g = clustered_set(5, 150) if kind == "clustered" else random_set(5, 150, dim=8, max_per_group=6)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    budget = int(g.max()) - 2

    def run(pruning):
        kw = {"distance": distance, "pruning": pruning, "block_size": 8, "generator": gen(2)}
        return kcenter_greedy(pts, grp, budget, **kw)

    lazy, full = run("bounds"), run("none")
    assert lazy.order == full.order
    np.testing.assert_allclose(lazy.scores[1:], full.scores[1:], rtol=1e-5, atol=1e-5)


def test_options_drive_the_lazy_path_without_changing_picks():
    """Other tuning constants (tiny first passes, eager switch never / always, bounds for every refresh)
    take other paths through the lazy code; the picks stay those of the default options."""
    x, g = clustered_set(7, 200, per_group=4, dim=8, n_modes=20)
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    kw = {"distance": "euclidean", "pruning": "bounds", "block_size": 8}
    want = kcenter_greedy(pts, grp, 150, generator=gen(3), **kw).order
    for options in (
        KCenterOptions(lazy_first_blocks=1, lazy_max_blocks=2, lloyd_steps=0, partition_seed=5),
        KCenterOptions(eager_when=1e9, lazy_bound_rows=10**6, lazy_bound_max_fraction=1.0),
        KCenterOptions(eager_when=0.0, lazy_centers=8, center_block=3),
    ):
        assert kcenter_greedy(pts, grp, 150, generator=gen(3), options=options, **kw).order == want


def test_options_are_checked_and_frozen():
    with pytest.raises(ValueError, match="center_block"):
        KCenterOptions(center_block=0)
    with pytest.raises(AttributeError):
        KCenterOptions().center_block = 2  # type: ignore[misc]


@pytest.mark.parametrize("pruning", ["none", "bounds"])
@pytest.mark.parametrize("dim", [6, 384])
def test_euclidean_near_duplicates_come_in_distance_order(pruning, dim):
    """Near-duplicates far below the largest norm keep their distances: ‖a‖² + ‖b‖² − 2a·b loses them to
    cancellation (its rounding is ~γ·norm², i.e. ~1.4% of the norm after the square root at D = 384), so
    such pairs are recomputed from the difference; only float rounding of that is lost. Group 1 (norm 100)
    sets the largest norm; groups 2–4 lie 0.1, 0.5 and 1.0 from the labeled group 0: the farthest first."""
    x = torch.zeros(5, dim, dtype=torch.float32)
    x[:, 0] = 10.0
    x[1, 0], x[1, 1] = 0.0, 100.0
    x[2, 2], x[3, 2], x[4, 2] = 0.1, 0.5, 1.0
    res = kcenter_greedy(x, torch.arange(5), 3, distance="euclidean", initial=[0, 1], pruning=pruning)
    assert res.order == [4, 3, 2]
    np.testing.assert_allclose(res.scores, [1.0, 0.5, 0.1], rtol=1e-4)
    # exact duplicates still tie at exactly 0, and D² scores are the drawn point's distance
    dup = torch.cat([x, x[2:3]])
    res = kcenter_greedy(dup, torch.arange(6), 4, distance="euclidean", initial=[0, 1], pruning=pruning)
    assert res.order[:3] == [4, 3, 2] and res.scores[3] == 0.0
    d2 = d2_sampling(x, torch.arange(5), 3, distance="euclidean", initial=[0, 1], generator=gen(0))
    assert sorted(d2.order) == [2, 3, 4] and all(s > 0.09 for s in d2.scores)


@pytest.mark.parametrize("seed", range(3))
def test_euclidean_near_duplicate_clouds_follow_the_difference_reference(seed):
    """Clouds of near-duplicates (offsets 0.02–0.8 around points of norm ~100, below the formula's ~1.4%
    rounding floor at D = 384) pick in the order of the plain ‖a − b‖ reference (the released distance)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (6, 384))
    base *= 100.0 / np.linalg.norm(base, axis=1, keepdims=True)
    x = np.repeat(base, 8, axis=0) + rng.normal(0, 1, (48, 384)) * rng.uniform(1e-3, 4e-2, (48, 1))
    g = np.arange(48) // 2  # two points per image
    pts, grp = torch.from_numpy(x).float(), torch.from_numpy(g)
    want, want_scores = np_kcenter(x.astype(np.float32), g, 20, "euclidean", initial=[0])
    for pruning in ("none", "bounds"):
        res = kcenter_greedy(pts, grp, 20, distance="euclidean", initial=[0], pruning=pruning, block_size=4)
        assert res.order == want
        np.testing.assert_allclose(res.scores, want_scores, rtol=1e-4)
