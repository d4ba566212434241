"""Selector contract (every selector) and known answers for GEAL and Core-Set on hand-built features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from geal.api.features import FeatureRequest
from geal.api.pool import ImagePool
from geal.api.selector import SelectionContext, SelectionError, Selector
from geal.features.extract import ExtractionSettings
from geal.features.provider import FeatureProvider
from geal.features.store import ShardData
from geal.method.knowledge import ClusterSettings
from tests.conftest import TINY_VIT, CountingFactory, SquaresPool

CONF = Path(__file__).resolve().parents[1] / "geal" / "conf" / "selector"
SETTINGS = ExtractionSettings(batch_size=8, num_workers=0, amp="none", shard_size=16, progress=False)


def make_selector(name: str, **overrides: object) -> Selector:
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides)
    return instantiate(cfg, _convert_="all")


def provider(pool: ImagePool, cache_dir: Path, factory: CountingFactory | None = None) -> FeatureProvider:
    return FeatureProvider(
        pool,
        factory or CountingFactory(),
        {"tiny": TINY_VIT},
        cache_dir,
        SETTINGS,
        torch.device("cpu"),
        "tiny",
    )


# ------------------------------------------------------------------ the contract, for every selector
SELECTORS = {
    "geal_kcenter": ("geal", {"clusters": {"k": 3, "kmeans_iters": 10}}),
    "geal_d2": ("geal", {"clusters": {"k": 3, "kmeans_iters": 10}, "sampler": "d2"}),
    "geal_euclidean": ("geal", {"clusters": {"k": 2, "kmeans_iters": 10}, "distance": "euclidean"}),
    "random": ("random", {}),
    "coreset_cos": ("coreset_cos", {}),
    "coreset_euc": ("coreset_euc", {}),
    "typiclust": ("typiclust", {}),
    "typiclust_standardized": ("typiclust", {"standardize": True}),
    "probcover": ("probcover", {"n_classes": 3}),
    "maxherding": ("maxherding", {}),
    "usl": ("usl", {}),
    "kmeans_nearest": ("kmeans_nearest", {}),
    "activeft": ("activeft", {"iterations": 30}),
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pool() -> SquaresPool:
    return SquaresPool(40)


def ctx_for(pool: ImagePool, cache: Path, seed: int = 0, labeled=(), excluded=()) -> SelectionContext:
    return SelectionContext(
        labeled=list(labeled),
        seed=seed,
        device=torch.device("cpu"),
        features=provider(pool, cache),
        excluded=list(excluded),
    )


@pytest.mark.parametrize("which", sorted(SELECTORS))
def test_contract(which: str, pool: SquaresPool, shared_cache: Path) -> None:
    name, overrides = SELECTORS[which]
    selector = make_selector(name, **overrides)
    labeled, excluded = [3, 17, 29], [5, 6]
    sel = selector.select(pool, 12, ctx_for(pool, shared_cache, 1, labeled, excluded))
    ids = sel.global_ids
    assert len(ids) == 12 and len(set(ids)) == 12
    assert all(0 <= i < len(pool) for i in ids)
    assert not set(ids) & set(labeled) and not set(ids) & set(excluded)
    assert len(sel.scores) == 12 and all(isinstance(s, float) for s in sel.scores)
    # deterministic for a seed, with a fresh selector and context
    again = make_selector(name, **overrides).select(
        pool, 12, ctx_for(pool, shared_cache, 1, labeled, excluded)
    )
    assert again.global_ids == ids
    if selector.nested:
        smaller = selector.select(pool, 5, ctx_for(pool, shared_cache, 1, labeled, excluded))
        assert smaller.global_ids == ids[:5]


@pytest.mark.parametrize("which", ["geal_kcenter", "coreset_cos"])
def test_progress_bar_follows_the_context(
    which: str, pool: SquaresPool, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, overrides = SELECTORS[which]
    shown = []
    for progress in (True, False):
        ctx = ctx_for(pool, shared_cache)
        ctx.progress = progress
        make_selector(name, **overrides).select(pool, 6, ctx)
        shown.append("kcenter selection" in capsys.readouterr().err)
    assert shown == [True, False]


@pytest.mark.parametrize("which", ["geal_kcenter", "random", "coreset_cos"])
def test_budget_errors(which: str, pool: SquaresPool, shared_cache: Path) -> None:
    name, overrides = SELECTORS[which]
    selector = make_selector(name, **overrides)
    with pytest.raises(SelectionError, match="at most 37"):
        selector.select(pool, 38, ctx_for(pool, shared_cache, labeled=[0, 1, 2]))
    with pytest.raises(SelectionError, match="positive integer"):
        selector.select(pool, 0, ctx_for(pool, shared_cache))
    with pytest.raises(SelectionError, match="outside the pool"):
        selector.select(pool, 2, ctx_for(pool, shared_cache, labeled=[40]))
    # the whole pool is a valid budget
    assert sorted(selector.select(pool, 40, ctx_for(pool, shared_cache)).global_ids) == list(range(40))


def test_random_differs_by_seed_and_is_uniformish(pool: SquaresPool, shared_cache: Path) -> None:
    sel = make_selector("random")
    a = sel.select(pool, 10, ctx_for(pool, shared_cache, seed=0)).global_ids
    b = sel.select(pool, 10, ctx_for(pool, shared_cache, seed=1)).global_ids
    assert a != b
    counts = np.zeros(len(pool))
    for seed in range(300):
        counts[sel.select(pool, 4, ctx_for(pool, shared_cache, seed=seed)).global_ids] += 1
    assert counts.min() > 5 and counts.max() < 60  # expectation 30 per image


def test_geal_skips_unreadable_images(tmp_path: Path) -> None:
    pool = SquaresPool(12, broken=[4, 9])
    factory = CountingFactory()
    prov = FeatureProvider(
        pool,
        factory,
        {"tiny": TINY_VIT},
        tmp_path,
        ExtractionSettings(batch_size=4, num_workers=0, amp="none", shard_size=8, on_error="skip"),
        torch.device("cpu"),
        "tiny",
    )
    ctx = SelectionContext(seed=0, features=prov)
    sel = make_selector("geal", clusters={"k": 2, "kmeans_iters": 5}).select(pool, 10, ctx)
    assert sorted(sel.global_ids) == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]
    with pytest.raises(SelectionError, match="skipped as unreadable"):
        make_selector("coreset_cos").select(pool, 11, SelectionContext(seed=0, features=prov))


# ------------------------------------------------------------------ known answers on hand-built features
class BlankPool(ImagePool):
    """A pool whose features are written directly into the store (images are never read)."""

    name = "blank"

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def ids(self) -> list[str]:
        return [f"img_{i:03d}" for i in range(self.n)]

    def load(self, index: int):  # pragma: no cover - the store is filled by the test
        raise AssertionError("the network must not run: the store is complete")


CONCEPTS = 3
PER_CONCEPT = 6  # images 0-5 show concept 0, 6-11 concept 1, 12-17 concept 2
D = 16


def concept_features(seed: int = 0) -> tuple[ShardData, np.ndarray]:
    """Each image: 2 object patches (attention 0.4 each) near its concept's direction, 6 background
    patches (0.2/6 each) along a direction unique to the image (far from everything). The global feature
    is dominated by the background. Returns the shard and the concept of each image."""
    rng = np.random.default_rng(seed)
    n = CONCEPTS * PER_CONCEPT
    concept = np.repeat(np.arange(CONCEPTS), PER_CONCEPT)
    basis = np.eye(D)
    tokens = np.zeros((n, 8, D))
    for i in range(n):
        tokens[i, :2] = basis[concept[i]] * 5 + rng.normal(0, 0.05, (2, D))
        bg = rng.normal(0, 1, D)
        bg[:CONCEPTS] = 0
        tokens[i, 2:] = 5 * bg / np.linalg.norm(bg) + rng.normal(0, 0.05, (6, D))
    attention = np.full((n, 2, 8), 0.2 / 6)
    attention[:, :, :2] = 0.4
    global_feature = tokens[:, 2:].mean(1) + 0.2 * tokens[:, :2].mean(1)
    data = ShardData(
        tokens.astype(np.float16),
        attention.astype(np.float32),
        global_feature.astype(np.float32),
        np.ones(n, dtype=bool),
        [],
    )
    return data, concept


def filled_provider(pool: ImagePool, cache: Path, factory: CountingFactory, data: ShardData):
    """A provider whose store already holds ``data`` (so the network never runs)."""
    prov = provider(pool, cache, factory)
    store = prov.open_store(FeatureRequest.dense())  # the store GEAL's request (default layers) reads
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(
            shard,
            ShardData(data.tokens[a:b], data.attention[a:b], data.global_feature[a:b], data.valid[a:b], []),
        )
    assert store.complete
    return prov


@pytest.fixture
def concept_ctx(tmp_path: Path):
    pool = BlankPool(CONCEPTS * PER_CONCEPT)
    factory = CountingFactory()
    data, concept = concept_features()
    prov = filled_provider(pool, tmp_path, factory, data)

    def ctx(seed: int = 0, labeled=()) -> SelectionContext:
        return SelectionContext(labeled=list(labeled), seed=seed, features=prov)

    yield pool, ctx, concept
    assert factory.builds == 0


@pytest.mark.parametrize("sampler", ["kcenter", "d2"])
@pytest.mark.parametrize("seed", range(5))
def test_geal_covers_every_concept_first(concept_ctx, sampler: str, seed: int) -> None:
    """With τ = 0.5 only the object patches survive the filter: the first 3 picks cover the 3 concepts."""
    pool, ctx, concept = concept_ctx
    sel = make_selector("geal", clusters={"k": 2, "kmeans_iters": 20}, sampler=sampler).select(
        pool, 3, ctx(seed)
    )
    if sampler == "kcenter":
        assert sorted(concept[sel.global_ids]) == [0, 1, 2]
        assert np.isnan(sel.scores[0]) and sel.scores[1] > 0.9 and sel.scores[2] > 0.9
    else:  # D² with an almost-zero within-concept distance: the same concepts, drawn
        assert sorted(concept[sel.global_ids]) == [0, 1, 2]


def test_geal_starts_from_labeled_set(concept_ctx) -> None:
    pool, ctx, concept = concept_ctx
    labeled = [0, 7]  # concepts 0 and 1 already labeled
    sel = make_selector("geal", clusters={"k": 2, "kmeans_iters": 20}).select(pool, 1, ctx(0, labeled))
    assert concept[sel.global_ids[0]] == 2 and sel.scores[0] > 0.9


def test_without_the_attention_filter_background_drives_the_picks(concept_ctx) -> None:
    """τ = 1 keeps the per-image background clusters; Core-Set on the background-dominated global feature
    likewise: neither is guaranteed to cover the concepts first — over seeds they miss at least once."""
    pool, ctx, concept = concept_ctx
    geal_all = make_selector("geal", clusters={"k": 2, "kmeans_iters": 20, "tau": 1.0})
    coreset = make_selector("coreset_cos")
    missed = {"geal_tau1": 0, "coreset": 0}
    for seed in range(10):
        if len(set(concept[geal_all.select(pool, 3, ctx(seed)).global_ids])) < 3:
            missed["geal_tau1"] += 1
        if len(set(concept[coreset.select(pool, 3, ctx(seed)).global_ids])) < 3:
            missed["coreset"] += 1
    assert missed["geal_tau1"] > 0 and missed["coreset"] > 0, missed


@pytest.mark.parametrize("name", ["coreset_cos", "coreset_euc"])
@pytest.mark.parametrize("seed", range(4))
def test_coreset_picks_one_image_per_blob_first(tmp_path: Path, name: str, seed: int) -> None:
    """5 separated blobs of global features (distinct directions, so cosine separates them too)."""
    rng = np.random.default_rng(seed)
    n_blobs, per_blob = 5, 7
    blob = rng.permutation(np.repeat(np.arange(n_blobs), per_blob))
    n = blob.size
    global_feature = (np.eye(D)[blob] * 10 + rng.normal(0, 0.3, (n, D))).astype(np.float32)
    data = ShardData(
        np.zeros((n, 8, D), np.float16),
        np.full((n, 2, 8), 1 / 8, np.float32),
        global_feature,
        np.ones(n, dtype=bool),
        [],
    )
    factory = CountingFactory()
    pool = BlankPool(n)
    prov = filled_provider(pool, tmp_path, factory, data)
    sel = make_selector(name).select(pool, n_blobs, SelectionContext(seed=seed, features=prov))
    assert sorted(blob[sel.global_ids]) == list(range(n_blobs))
    assert factory.builds == 0


def test_selector_configs_validate_values() -> None:
    with pytest.raises(InstantiationException, match="sampler"):
        make_selector("geal", sampler="kmeans")
    with pytest.raises(InstantiationException, match=r"selector\.clusters\.tau"):
        make_selector("geal", clusters={"tau": 0.0})
    with pytest.raises(InstantiationException, match=r"selector\.clusters has unknown key\(s\) \['taux'\]"):
        make_selector("geal", clusters={"taux": 0.5})
    with pytest.raises(InstantiationException, match="distance"):
        make_selector("coreset_cos", distance="manhattan")


def test_geal_takes_its_cluster_settings_as_one_value() -> None:
    """``selector.clusters`` is ClusterSettings: the YAML's values, merged overrides and all, as is."""
    geal = make_selector("geal", clusters={"tau": 0.4, "k": 5})
    assert geal.clusters == ClusterSettings(tau=0.4, k=5)
    assert make_selector("geal").clusters == ClusterSettings()  # the YAML's defaults are the dataclass's
    assert geal.request == FeatureRequest.dense(-2, -1)
    assert not hasattr(make_selector("coreset_cos"), "feature_layer")  # Core-Set asks for global features


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("geal", {"clusters": {"k": 2, "kmeans_iters": 20}, "sampler": "kcenter"}),
        ("geal", {"clusters": {"k": 2, "kmeans_iters": 20}, "sampler": "d2"}),
        ("coreset_cos", {}),
    ],
)
def test_draws_come_from_a_cpu_generator_whatever_the_device(
    concept_ctx, monkeypatch: pytest.MonkeyPatch, name: str, settings: dict
) -> None:
    """Same seed, same picks on every device: the first image and the D² draws come from a CPU generator.

    A GPU's generator draws another stream than the CPU's for the same seed. Forced here on the CPU: the
    context's device is ``cpu:0`` (computes on the CPU, but is not the plain CPU device) and a generator
    asked for any device other than the plain CPU draws another stream, as a CUDA one would."""
    pool, ctx, _ = concept_ctx
    cpu = [make_selector(name, **settings).select(pool, 8, ctx(seed)).global_ids for seed in range(4)]
    real = SelectionContext.generator
    asked: list[torch.device] = []

    def device_stream(self: SelectionContext, device: torch.device | str = "cpu") -> torch.Generator:
        asked.append(torch.device(device))
        gen = real(self, "cpu")
        if torch.device(device) != torch.device("cpu"):
            gen.manual_seed(int(self.seed) + 1_000_003)  # a device's own stream
        return gen

    monkeypatch.setattr(SelectionContext, "generator", device_stream)
    on_device = []
    for seed in range(4):
        c = ctx(seed)
        c.device = torch.device("cpu", 0)
        on_device.append(make_selector(name, **settings).select(pool, 8, c).global_ids)
    assert asked and all(d == torch.device("cpu") for d in asked)
    assert on_device == cpu
    assert len({tuple(ids) for ids in cpu}) > 1  # the seed does draw the picks
