"""Image typicality and the GEAL variants built on it (density-weighted k-center, the typicality filter,
GEAL-typical): known answers on hand-built points and knowledge clusters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException

from geal.api.features import KnowledgeClusterSet
from geal.api.selector import SelectionContext
from geal.features.store import ShardData
from geal.method.kcenter import d2_sampling, kcenter_greedy
from geal.method.typicality import (
    TypicalitySettings,
    drop_least_typical,
    image_descriptors,
    image_typicality,
    typical_cluster_picks,
)
from tests.conftest import CountingFactory
from tests.test_selectors import BlankPool, filled_provider, make_selector


# ------------------------------------------------------------------ weighted k-center / D²
def test_weighted_kcenter_trades_distance_for_weight() -> None:
    """Points on a line, one per group; centre 0 labeled. Plain k-center takes the far point 10 first;
    with weight 0.05 on it (score 0.5) the near point 2 (score 2) comes first, then 10 (0.4 < 8 × 0.05)."""
    points = torch.tensor([[0.0], [2.0], [10.0]])
    groups = torch.arange(3)
    plain = kcenter_greedy(points, groups, 2, distance="euclidean", initial=[0])
    assert plain.order == [2, 1]
    weighted = kcenter_greedy(
        points, groups, 2, distance="euclidean", initial=[0], weights=torch.tensor([1.0, 1.0, 0.05])
    )
    assert weighted.order == [1, 2]
    assert weighted.scores == pytest.approx([2.0, 0.4])
    with pytest.raises(ValueError, match="weights must be"):
        kcenter_greedy(points, groups, 1, distance="euclidean", weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"weights must be \(G,\)"):
        kcenter_greedy(points, groups, 1, distance="euclidean", weights=torch.ones(2))


@pytest.mark.parametrize("pruning", ["none", "bounds"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weighted_kcenter_equals_a_brute_force_reference(pruning: str, dtype: torch.dtype) -> None:
    """Grouped points, random weights, both distances, the exact scan and the lazy bounded path: each pick
    is the argmax of min-distance × weight."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(600, 5))).to(dtype)
    groups = torch.from_numpy(rng.integers(0, 200, 600))
    w = torch.from_numpy(rng.uniform(0.1, 1.0, 200)).to(dtype)
    for distance in ("cosine", "euclidean"):
        got = kcenter_greedy(
            x, groups, 30, distance=distance, initial=[3], weights=w, pruning=pruning, block_size=8
        ).order
        xn = torch.nn.functional.normalize(x, dim=1) if distance == "cosine" else x
        chosen, order = {3}, []
        for _ in range(30):
            centres = xn[torch.isin(groups, torch.tensor(sorted(chosen)))]
            if distance == "cosine":
                d = (1 - (xn @ centres.T).amax(1)).clamp_min(0)
            else:
                d = torch.cdist(xn, centres).amin(1)
            score = d.to(dtype) * w[groups]
            score[torch.isin(groups, torch.tensor(sorted(chosen)))] = -math.inf
            g = int(groups[int(score.argmax())])
            order.append(g)
            chosen.add(g)
        assert got == order, distance


def test_d2_never_draws_a_zero_weight_group_while_others_remain() -> None:
    points = torch.tensor([[0.0], [1.0], [2.0], [30.0]])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        res = d2_sampling(
            points, torch.arange(4), 3, distance="euclidean", initial=[0], weights=w, generator=gen
        )
        assert res.order[:2] in ([1, 2], [2, 1]) and res.order[2] == 3


# ------------------------------------------------------------------ descriptors and typicality
def test_image_descriptors_are_normalised_means_of_normalised_clusters() -> None:
    clusters = KnowledgeClusterSet(
        features=np.array([[2.0, 0.0], [0.0, 5.0], [3.0, 4.0]], np.float32),
        owners=np.array([0, 0, 2]),
        valid=np.array([True, False, True]),
    )
    desc = image_descriptors(clusters, 3).numpy()
    np.testing.assert_allclose(desc[0], [math.sqrt(0.5), math.sqrt(0.5)], rtol=1e-6)
    np.testing.assert_array_equal(desc[1], [0.0, 0.0])  # no cluster: unreadable image
    np.testing.assert_allclose(desc[2], [0.6, 0.8], rtol=1e-6)


def test_image_typicality_against_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    usable = np.ones(30, bool)
    usable[[4, 9]] = False
    got = image_typicality(torch.from_numpy(x), torch.from_numpy(usable), knn=5).numpy()
    rows = np.flatnonzero(usable)
    d = np.sqrt(((x[rows, None] - x[None, rows]) ** 2).sum(-1))
    mean5 = np.sort(d, 1)[:, 1:6].mean(1)
    expected = (1 / mean5) / (1 / mean5).max()
    np.testing.assert_allclose(got[rows], expected, rtol=1e-4)
    assert got[4] == got[9] == 0.0 and got.max() == pytest.approx(1.0)


def test_drop_least_typical_keeps_the_budget_and_the_labeled() -> None:
    typ = torch.tensor([0.9, 0.1, 0.5, 0.2, 1.0, 0.3])
    labeled = torch.tensor([False, True, False, False, False, False])
    eligible = torch.ones(6, dtype=torch.bool)
    assert drop_least_typical(eligible, labeled, typ, 0.4, budget=1) == 2  # 40% of the 5 pickable
    assert eligible.tolist() == [True, True, True, False, True, False]  # 0.2 and 0.3 dropped, labeled kept
    eligible = torch.ones(6, dtype=torch.bool)
    assert drop_least_typical(eligible, labeled, typ, 0.9, budget=4) == 1  # never below the budget
    assert eligible.tolist() == [True, True, True, False, True, True]


def test_typicality_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="drop_fraction"):
        TypicalitySettings(drop_fraction=1.0)
    with pytest.raises(ValueError, match="density_weight"):
        TypicalitySettings(density_weight=-1)
    with pytest.raises(InstantiationException, match=r"typicality has unknown key\(s\) \['alpha'\]"):
        make_selector("geal", typicality={"alpha": 1.0})
    with pytest.raises(InstantiationException, match="k-center options: geal_typical picks"):
        make_selector(
            "geal",
            _target_="geal.method.geal_selector.GEALTypicalSelector",
            typicality={"density_weight": 1.0},
        )


# ------------------------------------------------------------------ the selectors on hand-built clusters
CONCEPTS, PER_CONCEPT, OUTLIERS, D = 3, 6, 3, 16
N_IMAGES = CONCEPTS * PER_CONCEPT + OUTLIERS  # images 0-17: concepts 0,0,..,2; 18-20: one-off outliers


def outlier_features(seed: int = 0) -> tuple[ShardData, np.ndarray]:
    """Every image's two object patches (attention 0.4 each) along its direction, six weak background
    patches. Concept directions share a component (cosine 0.5 to each other); each outlier has a direction
    of its own (cosine 0 to everything): farther from the concepts than they are from each other, so
    farthest-first picks the outliers right after the first image. Returns the shard and the concept of
    each image (-1: outlier)."""
    rng = np.random.default_rng(seed)
    concept = np.r_[np.repeat(np.arange(CONCEPTS), PER_CONCEPT), np.full(OUTLIERS, -1)]
    basis = np.eye(D)
    tokens = np.zeros((N_IMAGES, 8, D))
    for i in range(N_IMAGES):
        c = concept[i]
        direction = basis[c] + basis[D - 1] if c >= 0 else basis[4 + i - CONCEPTS * PER_CONCEPT]
        tokens[i, :2] = 5 * direction / np.linalg.norm(direction) + rng.normal(0, 0.05, (2, D))
        tokens[i, 2:] = rng.normal(0, 0.05, (6, D))
    attention = np.full((N_IMAGES, 2, 8), 0.2 / 6)
    attention[:, :, :2] = 0.4
    data = ShardData(
        tokens.astype(np.float16),
        attention.astype(np.float32),
        tokens.mean(1).astype(np.float32),
        np.ones(N_IMAGES, dtype=bool),
        [],
    )
    return data, concept


@pytest.fixture
def outlier_ctx(tmp_path: Path):
    pool = BlankPool(N_IMAGES)
    data, concept = outlier_features()
    prov = filled_provider(pool, tmp_path, CountingFactory(), data)
    return (
        pool,
        (lambda seed=0, labeled=(): SelectionContext(labeled=list(labeled), seed=seed, features=prov)),
        concept,
    )


CLUSTERS = {"k": 2, "kmeans_iters": 20}


@pytest.mark.parametrize("seed", range(4))
def test_paper_geal_takes_the_outliers_right_after_its_first_pick(outlier_ctx, seed: int) -> None:
    pool, ctx, concept = outlier_ctx
    sel = make_selector("geal", clusters=CLUSTERS).select(pool, 4, ctx(seed))
    # the outliers not picked first are the next picks: farthest from everything
    assert set(concept[sel.global_ids[1:4]]) == {-1} or concept[sel.global_ids[0]] == -1
    assert (concept[sel.global_ids] == -1).sum() == 3


@pytest.mark.parametrize("seed", range(4))
def test_density_weighted_geal_covers_the_concepts_before_any_outlier(outlier_ctx, seed: int) -> None:
    pool, ctx, concept = outlier_ctx
    sel = make_selector("geal", clusters=CLUSTERS, typicality={"knn": 5, "density_weight": 1.0}).select(
        pool, 6, ctx(seed)
    )
    picked = concept[sel.global_ids]
    first_outlier = next((n for n, c in enumerate(picked) if c == -1 and n > 0), len(picked))
    assert set(picked[:first_outlier]) >= {0, 1, 2}  # every concept before the first (non-random) outlier
    assert sel.info["n_clusters"] == 2 * N_IMAGES


@pytest.mark.parametrize("seed", range(4))
def test_typicality_filter_never_picks_the_outliers(outlier_ctx, seed: int) -> None:
    pool, ctx, concept = outlier_ctx
    sel = make_selector("geal", clusters=CLUSTERS, typicality={"knn": 5, "drop_fraction": 0.15}).select(
        pool, 6, ctx(seed)
    )
    assert sel.info["dropped_least_typical"] == 3  # 15% of 21
    assert -1 not in concept[sel.global_ids] and set(concept[sel.global_ids[:4]]) == {0, 1, 2}


@pytest.mark.parametrize("seed", range(3))
def test_geal_typical_takes_one_central_image_per_concept(outlier_ctx, seed: int) -> None:
    pool, ctx, concept = outlier_ctx
    selector = make_selector(
        "geal",
        _target_="geal.method.geal_selector.GEALTypicalSelector",
        clusters=CLUSTERS,
        typicality={"knn": 5, "min_cluster_size": 3},
    )
    assert not selector.nested
    sel = selector.select(pool, 3, ctx(seed))
    assert sorted(concept[sel.global_ids]) == [0, 1, 2]
    # the same as TypiClust's picks over the images' descriptors
    clusters = ctx().features.knowledge_clusters(selector.request, selector.clusters)
    desc = image_descriptors(clusters, N_IMAGES)
    ref = typical_cluster_picks(desc, np.zeros(N_IMAGES, bool), 3, seed, min_cluster_size=3, knn=5)
    assert sel.global_ids == ref.rows
    # continuing from a labeled set: never a labeled image, the unlabeled concept comes first
    more = selector.select(pool, 1, ctx(seed, labeled=[0, 1, 2, 6, 7, 8]))
    assert concept[more.global_ids[0]] == 2
