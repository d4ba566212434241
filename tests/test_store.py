"""Feature stages: what the token store keeps, cache hits never run the network, interrupted extraction
resumes; the knowledge-cluster cache (computed during extraction or from the store, once per setting)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import geal.features.clusters
import geal.features.provider
from geal.api.features import FeatureRequest
from geal.features.clusters import (
    ClusterCache,
    ClustersNotStoredError,
    compute_knowledge_clusters,
)
from geal.features.extract import ExtractionSettings
from geal.features.provider import FeatureProvider
from geal.features.store import FeatureStore, StoreMismatchError
from geal.method.knowledge import ClusterSettings
from geal.util.io import stable_hash
from tests.conftest import TINY_VIT, CountingFactory, SquaresPool

SETTINGS = ExtractionSettings(batch_size=4, num_workers=0, amp="none", shard_size=8, progress=False)
DENSE = FeatureRequest.dense()  # GEAL's request: the tokens of its (default) layers


def provider(pool, factory, cache_dir: Path, device: str = "cpu", **kw) -> FeatureProvider:
    settings = ExtractionSettings(**{**SETTINGS.__dict__, **kw})
    return FeatureProvider(
        pool, factory, {"tiny": TINY_VIT}, cache_dir, settings, torch.device(device), "tiny"
    )


def test_store_holds_tokens_attention_global(squares: SquaresPool, cache_dir: Path) -> None:
    factory = CountingFactory()
    store = provider(squares, factory, cache_dir).store()
    assert factory.builds == 1 and factory.images == 24
    assert store.n_shards == 3 and store.complete
    shards = list(store.iter_shards())
    assert [(a, b) for a, b, _ in shards] == [(0, 8), (8, 16), (16, 24)]
    arrays = shards[0][2]
    assert arrays["tokens"].dtype == np.float16 and arrays["tokens"].shape == (8, 16, 32)
    assert arrays["attention"].shape == (8, 2, 16)
    sums = arrays["attention"].sum(-1)  # raw CLS→patch rows: each head's mass on the patches
    assert (sums > 0).all() and (sums <= 1 + 1e-5).all()
    assert store.global_features().shape == (24, 32)
    assert store.valid().all() and store.skipped() == []
    # stored values are what the backbone computes for the preprocessed image
    from geal.features.extract import build_transform

    model = factory()
    x = build_transform(model.preprocessing)(squares.load(5))[None]
    out = model.extract(x)
    np.testing.assert_allclose(np.asarray(arrays["tokens"][5], np.float32), out.tokens[0].numpy(), atol=2e-2)
    np.testing.assert_allclose(store.global_features()[5], out.global_feature[0].numpy(), atol=1e-5)
    # never inside a dataset folder: everything lives under the cache dir
    assert cache_dir in store.directory.parents


def test_cache_hit_never_calls_the_network(squares: SquaresPool, cache_dir: Path, monkeypatch) -> None:
    provider(squares, CountingFactory(), cache_dir).store()

    def forbidden():
        raise AssertionError("the backbone must not be built on a cache hit")

    p = provider(squares, forbidden, cache_dir)
    a = p.knowledge_clusters(DENSE, ClusterSettings(tau=0.5, k=3, kmeans_iters=5))
    b = p.knowledge_clusters(
        DENSE, ClusterSettings(tau=0.8, k=5, kmeans_iters=5)
    )  # new τ/K: still no network
    assert p.timings.extraction_cache_hit is True and p.timings.extraction is None
    assert p.timings.clusters_cache_hit is False and p.timings.clusters_in_extraction is False
    assert a.features.shape[1] == 32 and np.all(np.bincount(a.owners, minlength=24) <= 3)
    assert np.bincount(b.owners, minlength=24).max() <= 5 and b.features.shape[0] > a.features.shape[0]

    # the second stage is cached too: the same settings do not re-run k-means
    def no_kmeans(*args, **kwargs):
        raise AssertionError("knowledge clusters must come from the cache")

    monkeypatch.setattr(geal.features.clusters, "shard_knowledge_clusters", no_kmeans)
    again = p.knowledge_clusters(DENSE, ClusterSettings(tau=0.5, k=3, kmeans_iters=5))
    np.testing.assert_array_equal(again.features, a.features)
    np.testing.assert_array_equal(again.owners, a.owners)
    assert p.timings.clusters_cache_hit is True


def test_one_store_serves_geal_and_global_requests_and_keeps_its_key(squares, tmp_path: Path) -> None:
    """GEAL's request (tokens of the default layers) and a global-only request (Core-Set) share one store, a
    store of other layers is another one, and a dense store's key is the documented one (version 2: raw
    per-head attention rows; a version-1 store is in another directory, never reused)."""
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    p = provider(squares, CountingFactory(), tmp_path)
    p.knowledge_clusters(DENSE, settings)

    def forbidden():
        raise AssertionError("the global features are in GEAL's store")

    q = provider(squares, forbidden, tmp_path)
    pool_features = q.global_features()
    assert q.timings.extraction_cache_hit is True and q.timings.store_dir == p.timings.store_dir
    assert pool_features.features.shape == (24, 32) and pool_features.valid.all()
    key = {
        "store_version": 2,
        "backbone": {"tiny": TINY_VIT},
        "layers": {"feature": -2, "attention": -1},
        "amp": "none",
        "decode": "workers",
        "pool": squares.identity(),
    }
    assert Path(p.timings.store_dir).name == f"tiny-squares-{stable_hash(key)}"
    other = provider(squares, CountingFactory(), tmp_path).store(FeatureRequest.dense(feature_layer=-1))
    assert str(other.directory) != p.timings.store_dir
    with pytest.raises(ValueError, match=r"FeatureRequest\.dense"):
        p.knowledge_clusters(FeatureRequest.global_only(), settings)


def test_resume_after_interruption(squares: SquaresPool, tmp_path: Path) -> None:
    # 3 shards of 8 images, batches of 4: interrupt during the 4th batch (after the first shard was written)
    failing = CountingFactory(fail_after_batches=3)
    with pytest.raises(KeyboardInterrupt):
        provider(squares, failing, tmp_path / "a").store()
    p = provider(squares, CountingFactory(), tmp_path / "a")
    store_dir = next((tmp_path / "a" / "features").iterdir())
    done = sorted(d.name for d in store_dir.iterdir() if d.is_dir())
    assert done == ["shard_00000"]  # the half-filled second shard left nothing behind
    resumed = CountingFactory()
    p = provider(squares, resumed, tmp_path / "a")
    store = p.store()
    assert resumed.images == 16  # only the two missing shards were extracted
    assert p.timings.extraction.shards_written == [1, 2]
    reference = provider(squares, CountingFactory(), tmp_path / "b").store()
    for (_, _, x), (_, _, y) in zip(store.iter_shards(), reference.iter_shards(), strict=True):
        for name in ("tokens", "attention", "global", "valid"):
            np.testing.assert_array_equal(np.asarray(x[name]), np.asarray(y[name]))


def test_temporary_shard_is_never_taken_as_complete(squares: SquaresPool, cache_dir: Path) -> None:
    p = provider(squares, CountingFactory(), cache_dir)
    store = p.store()
    # simulate a crash in the middle of writing shard 1: only a temporary directory remains
    final = store.shard_dir(1)
    tmp = final.parent / f".{final.name}.crash.tmp"
    final.rename(tmp)
    (tmp / "meta.json").unlink()
    assert store.missing_shards() == [1]
    factory = CountingFactory()
    provider(squares, factory, cache_dir).store()
    assert factory.images == 8 and not tmp.exists()


def test_manifest_mismatch_is_a_clear_error(squares: SquaresPool, cache_dir: Path) -> None:
    store = provider(squares, CountingFactory(), cache_dir).store()
    manifest = store.directory / "manifest.json"
    data = json.loads(manifest.read_text())
    data["version"] = 0
    manifest.write_text(json.dumps(data))
    with pytest.raises(StoreMismatchError, match="Delete that directory"):
        provider(squares, CountingFactory(), cache_dir).store()


def test_unreadable_image_raise_names_the_file(cache_dir: Path) -> None:
    pool = SquaresPool(10, broken=[7])
    with pytest.raises(OSError, match=r"/virtual/squares/sq_0007\.png"):
        provider(pool, CountingFactory(), cache_dir).store()


def test_unreadable_image_skip_is_recorded_and_never_selected(cache_dir: Path) -> None:
    pool = SquaresPool(10, broken=[7])
    p = provider(pool, CountingFactory(), cache_dir, on_error="skip")
    store = p.store()
    assert store.valid().tolist() == [i != 7 for i in range(10)]
    assert [s["image_id"] for s in store.skipped()] == ["sq_0007"]
    clusters = p.knowledge_clusters(DENSE, ClusterSettings(k=2, kmeans_iters=5))
    assert 7 not in set(clusters.owners.tolist()) and set(clusters.owners.tolist()) == set(range(10)) - {7}
    assert clusters.valid.tolist() == store.valid().tolist()


# ---------------------------------------------------------------- jobs sharing a cache dir


def _parallel_job(rank: int, cache_dir: str, out_dir: str, store_first: bool) -> None:
    """One sweep job: features of the squares pool and one cluster setting (counts what it computed)."""
    torch.set_num_threads(1)
    computed: list[int] = []
    original = geal.features.clusters.shard_knowledge_clusters

    def counting(*args, **kwargs):
        computed.append(1)
        return original(*args, **kwargs)

    geal.features.clusters.shard_knowledge_clusters = counting
    factory = CountingFactory()
    p = provider(SquaresPool(24), factory, Path(cache_dir))
    Path(out_dir, f"ready{rank}").touch()  # start together
    while not all(Path(out_dir, f"ready{r}").exists() for r in range(2)):
        time.sleep(0.002)
    if store_first:  # stage 1 alone (Core-Set's request), then stage 2 from the stored tokens
        p.store()
    clusters = p.knowledge_clusters(DENSE, ClusterSettings(k=3, kmeans_iters=5))
    Path(out_dir, f"job{rank}.json").write_text(
        json.dumps(
            {
                "builds": factory.builds,
                "images": factory.images,
                "kmeans_shards": len(computed),
                "owners": clusters.owners.tolist(),
                "features": clusters.features.tolist(),
            }
        )
    )


@pytest.mark.parametrize("store_first", [True, False], ids=["store_then_clusters", "clusters_in_extraction"])
def test_parallel_jobs_extract_and_cluster_once(tmp_path: Path, store_first: bool) -> None:
    # two processes ask for the same store and clusters at the same moment: one computes, one waits
    mp.spawn(_parallel_job, args=(str(tmp_path / "cache"), str(tmp_path), store_first), nprocs=2, join=True)
    jobs = [json.loads((tmp_path / f"job{r}.json").read_text()) for r in range(2)]
    assert sorted(j["builds"] for j in jobs) == [0, 1]  # the network ran in one job only
    assert sum(j["images"] for j in jobs) == 24
    assert sorted(j["kmeans_shards"] for j in jobs) == [0, 3]  # and k-means too, once per shard
    assert jobs[0]["owners"] == jobs[1]["owners"] and jobs[0]["features"] == jobs[1]["features"]


# ---------------------------------------------------------------- clusters-only stores


def test_clusters_only_store_keeps_global_features_and_the_same_clusters(squares, tmp_path: Path) -> None:
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    full = provider(squares, CountingFactory(), tmp_path / "full")
    want = full.knowledge_clusters(DENSE, settings)
    slim = provider(squares, CountingFactory(), tmp_path / "slim", cache_mode="clusters_only")
    got = slim.knowledge_clusters(DENSE, settings)
    store = slim.store(DENSE)
    assert store.contents == "global" and not store.keeps_tokens
    assert {p.name for p in store.shard_dir(0).iterdir()} == {"global.npy", "valid.npy", "meta.json"}
    cache = ClusterCache.of(store, settings)  # the clusters live in the one cluster cache, compact
    assert cache.complete and cache.directory.parent == store.directory / "clusters"
    with np.load(cache.shard_path(0)) as part:
        assert part["features"].dtype == np.float16 and part["counts"].shape == (8,)
    np.testing.assert_array_equal(got.owners, want.owners)  # the same clusters, to fp16 rounding
    np.testing.assert_allclose(got.features, want.features, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(store.global_features(), full.store().global_features())
    np.testing.assert_array_equal(slim.global_features().features, full.global_features().features)
    assert slim.timings.store_dir == str(store.directory)  # Core-Set's request: the same slim store
    assert store.disk_bytes() < full.store().disk_bytes()
    # another setting was not kept: a clear error naming the difference and the fix
    with pytest.raises(ClustersNotStoredError, match=r"'k': 3.*'k': 5.*cache_mode=full"):
        slim.knowledge_clusters(DENSE, ClusterSettings(tau=0.6, k=5, kmeans_iters=5))
    # a clusters-only store filled for a selector that needs no clusters (Core-Set) keeps none
    bare = provider(squares, CountingFactory(), tmp_path / "bare", cache_mode="clusters_only")
    bare.global_features()
    with pytest.raises(ClustersNotStoredError, match="holds no knowledge clusters"):
        bare.knowledge_clusters(DENSE, settings)


def test_resumed_clusters_only_extraction_completes_the_setting_it_started_with(squares, tmp_path) -> None:
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    with pytest.raises(KeyboardInterrupt):  # interrupted after the first shard was written
        interrupted = provider(
            squares, CountingFactory(fail_after_batches=3), tmp_path / "a", cache_mode="clusters_only"
        )
        interrupted.knowledge_clusters(DENSE, settings)
    p = provider(squares, CountingFactory(), tmp_path / "a", cache_mode="clusters_only")
    p.global_features()  # resumed by a request that names no clusters: the started setting is completed
    assert p.timings.extraction.shards_written == [1, 2]
    got = p.knowledge_clusters(DENSE, settings)
    assert p.timings.clusters_in_extraction is True and p.timings.clusters_cache_hit is False
    want = provider(squares, CountingFactory(), tmp_path / "b").knowledge_clusters(DENSE, settings)
    np.testing.assert_array_equal(got.owners, want.owners)
    np.testing.assert_allclose(got.features, want.features, rtol=2e-3, atol=2e-3)


def test_extraction_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="cache_mode"):
        ExtractionSettings(cache_mode="dense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shard_size"):
        ExtractionSettings(shard_size=0)


def test_fp16_tokens_are_kept_as_they_are_unless_not_finite() -> None:
    from geal.features.store import fp16_if_in_range

    a = np.array([[1.5, -2.0], [65504.0, 0.0]], dtype=np.float16)
    assert fp16_if_in_range(a) is a
    b = a.copy()
    b[1, 1] = np.inf
    out = fp16_if_in_range(b)
    assert out.dtype == np.float32 and np.isinf(out[1, 1]) and out[0, 0] == 1.5
    c = np.array([1.0, 70000.0], dtype=np.float32)
    assert fp16_if_in_range(c).dtype == np.float32
    assert fp16_if_in_range(np.array([1.0, -3.25], dtype=np.float32)).dtype == np.float16


def test_fp16_if_in_range_on_tensors_rounds_like_numpy_and_widens_the_whole_array() -> None:
    from geal.features.store import fp16_if_in_range

    g = torch.Generator().manual_seed(0)
    wide = torch.randn(64, 5, generator=g) * 300.0
    for t in (wide, wide.bfloat16()):
        out = fp16_if_in_range(t)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float16
        np.testing.assert_array_equal(out.numpy(), fp16_if_in_range(t.float().numpy()))  # numpy's rounding
    half = wide.half()
    assert fp16_if_in_range(half) is half
    for bad in (float("nan"), float("inf"), -1e6, 65504.0):
        t = wide.clone()
        t[7, 2] = bad
        out = fp16_if_in_range(t)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, t, rtol=0, atol=0, equal_nan=True)  # not rounded
    h = half.clone()
    h[3, 1] = float("-inf")
    assert fp16_if_in_range(h).dtype == torch.float32
    assert fp16_if_in_range(torch.empty(0, 3)).dtype == torch.float16


def test_shard_buffer_keeps_a_shard_in_fp16_unless_one_batch_leaves_its_range() -> None:
    from geal.features.extract import _ShardBuffer

    third = 1.0 / 3.0

    def filled(second: list[list[float]]) -> _ShardBuffer:
        buf = _ShardBuffer(4)
        for rows, tokens in ((slice(0, 2), [[1.0, third], [3.0, 4.0]]), (slice(2, 4), second)):
            buf.add("tokens", rows, torch.tensor(tokens))
            buf.add("attention", rows, torch.ones(2, 1, 2, dtype=torch.bfloat16))
            buf.add("global", rows, torch.tensor(tokens)[:, :1])
        buf.valid[:] = True
        return buf

    data = filled([[0.5, 2.0], [third, 0.0]]).shard([])
    assert data.tokens.dtype == torch.float16 and data.attention.dtype == torch.float32
    assert data.tokens[0, 1] == torch.tensor(third).half() and data.global_feature[3, 0] == torch.tensor(
        third
    )
    data = filled([[1e6, 0.5], [third, 0.0]]).shard([])
    assert data.tokens.dtype == torch.float32  # the whole shard widened, the fitting batch not rounded either
    assert data.tokens[0, 1] == torch.tensor(third) and data.tokens[2, 0] == 1e6


@pytest.mark.parametrize("in_writer", [False, True])
def test_clusters_only_sink_in_either_thread_stores_the_same(squares, tmp_path, monkeypatch, in_writer):
    """On a GPU the k-means of each extracted shard runs in the writer thread, on a CPU in the main loop:
    the stored clusters are the same either way."""
    import geal.features.extract

    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    here = provider(squares, CountingFactory(), tmp_path / "main", cache_mode="clusters_only")
    want = here.knowledge_clusters(DENSE, settings)
    monkeypatch.setattr(geal.features.extract, "_transform_in_writer", lambda device: in_writer)
    other = provider(squares, CountingFactory(), tmp_path / "other", cache_mode="clusters_only")
    got = other.knowledge_clusters(DENSE, settings)
    np.testing.assert_array_equal(got.owners, want.owners)
    np.testing.assert_array_equal(got.features, want.features)


# ---------------------------------------------------------------- clusters computed during a full extraction


@pytest.mark.parametrize("in_writer", [False, True])
def test_full_extraction_writes_the_cluster_cache_compute_would(tmp_path, monkeypatch, in_writer) -> None:
    """store(clusters=S) of a full store clusters each shard as it is extracted (in the main loop on a CPU,
    in the writer thread on a GPU) and writes the cache that knowledge_clusters() computes from a finished
    store: the same files, keys, dtypes and arrays, and the clusters of compute_knowledge_clusters over the
    finished store (skipped images too)."""
    import geal.features.extract

    monkeypatch.setattr(geal.features.extract, "_transform_in_writer", lambda device: in_writer)
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    pool = SquaresPool(20, broken=[3, 17])  # shards of 8, 8 and 4 images, two of them unreadable
    p = provider(pool, CountingFactory(), tmp_path / "a", on_error="skip")
    store = p.store(DENSE, clusters=settings)
    cache = ClusterCache.of(store, settings)
    assert cache.complete
    want = compute_knowledge_clusters(store, settings, torch.device("cpu"), progress=False)
    assert {3, 17}.isdisjoint(want.owners.tolist())
    # the cache knowledge_clusters() computes from the stored tokens, from another store of the same pool
    other = provider(pool, CountingFactory(), tmp_path / "b", on_error="skip")
    other.store()
    other.knowledge_clusters(DENSE, settings)
    assert other.timings.clusters_in_extraction is False and other.timings.clusters_cache_hit is False
    ref_cache = ClusterCache.of(other.store(DENSE), settings)
    assert (cache.directory / "manifest.json").read_text() == (
        ref_cache.directory / "manifest.json"
    ).read_text()
    for shard in range(store.n_shards):
        with np.load(cache.shard_path(shard)) as got, np.load(ref_cache.shard_path(shard)) as ref:
            assert sorted(got.files) == sorted(ref.files) == ["counts", "digest", "features"]
            for name in got.files:
                assert got[name].dtype == ref[name].dtype
                np.testing.assert_array_equal(got[name], ref[name])
            assert got["features"].dtype == np.float32
    got = cache.read(store.valid())
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.owners, want.owners)
    assert got.features.dtype == np.float32 and got.owners.dtype == np.int64
    np.testing.assert_array_equal(got.valid, store.valid())


@pytest.mark.gpu
def test_cuda_extraction_stores_what_the_cpu_stores_and_clusters_each_shard_on_the_device(tmp_path) -> None:
    """On a GPU the shards stay on the device until the writer thread: it clusters them there (its own
    stream) and copies them to pinned host memory. The clusters equal those computed from the finished
    store on the same device, bit for bit; a clusters-only store keeps the same; tokens match the CPU's."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    pool = SquaresPool(20, broken=[3, 17])
    kw = {"on_error": "skip", "num_workers": 1}
    gpu = provider(pool, CountingFactory(), tmp_path / "gpu", "cuda", **kw)
    in_extraction = gpu.knowledge_clusters(DENSE, settings)
    assert gpu.timings.clusters_in_extraction is True
    store = gpu.store(DENSE)
    want = compute_knowledge_clusters(store, settings, torch.device("cuda"), progress=False)
    np.testing.assert_array_equal(in_extraction.owners, want.owners)
    np.testing.assert_array_equal(in_extraction.features, want.features)
    only = provider(pool, CountingFactory(), tmp_path / "only", "cuda", cache_mode="clusters_only", **kw)
    got = only.knowledge_clusters(DENSE, settings)
    np.testing.assert_array_equal(got.owners, want.owners)
    np.testing.assert_array_equal(got.features, want.features)
    cpu_store = provider(pool, CountingFactory(), tmp_path / "cpu", **kw).store()
    np.testing.assert_array_equal(store.valid(), cpu_store.valid())
    np.testing.assert_allclose(store.global_features(), cpu_store.global_features(), atol=1e-2)
    for (_, _, g), (_, _, c) in zip(store.iter_shards(), cpu_store.iter_shards(), strict=True):
        assert g["tokens"].dtype == c["tokens"].dtype == np.float16
        np.testing.assert_allclose(
            np.asarray(g["tokens"], np.float32), np.asarray(c["tokens"], np.float32), atol=2e-2
        )
        np.testing.assert_allclose(g["attention"], c["attention"], atol=1e-3)


def test_clusters_computed_in_extraction_are_not_read_back(squares, tmp_path, monkeypatch) -> None:
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    p = provider(squares, CountingFactory(), tmp_path)
    store = p.store(DENSE, clusters=settings)
    want = compute_knowledge_clusters(store, settings, torch.device("cpu"), progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("the clusters were computed during extraction: no k-means now")

    reading = FeatureStore._shard_arrays

    def without_tokens(self, shard: int, keep: bool = True):  # any read of the tokens fails
        return {k: v for k, v in reading(self, shard, keep).items() if k not in ("tokens", "attention")}

    monkeypatch.setattr(geal.features.clusters, "shard_knowledge_clusters", forbidden)
    monkeypatch.setattr(FeatureStore, "_shard_arrays", without_tokens)
    for _ in range(2):  # read from the cache the extraction wrote, each time
        got = p.knowledge_clusters(DENSE, settings)
        np.testing.assert_array_equal(got.features, want.features)
        np.testing.assert_array_equal(got.owners, want.owners)
        # honest timings: not a cache hit of an earlier run, computed (and timed) in the extraction
        assert p.timings.clusters_cache_hit is False and p.timings.clusters_in_extraction is True
    assert p.timings.extraction is not None and p.timings.extraction.shards_written == [0, 1, 2]
    # a later run finds them in the cache
    later = provider(squares, CountingFactory(), tmp_path)
    got = later.knowledge_clusters(DENSE, settings)
    np.testing.assert_array_equal(got.features, want.features)
    assert later.timings.clusters_cache_hit is True and later.timings.clusters_in_extraction is False


def count_cluster_computations(monkeypatch) -> list[list[int]]:
    """Records the shards each computation of clusters from the stored tokens covers, while still running
    it."""
    computed: list[list[int]] = []
    original = geal.features.provider.compute_cluster_shards

    def counting(store, cache, shards, *args, **kwargs):
        computed.append(sorted(shards))
        return original(store, cache, shards, *args, **kwargs)

    monkeypatch.setattr(geal.features.provider, "compute_cluster_shards", counting)
    return computed


def test_resumed_full_extraction_keeps_the_clusters_of_every_extracted_shard(squares, tmp_path, monkeypatch):
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    with pytest.raises(KeyboardInterrupt):  # interrupted after the first shard was written
        provider(squares, CountingFactory(fail_after_batches=3), tmp_path / "a").store(
            DENSE, clusters=settings
        )
    p = provider(squares, CountingFactory(), tmp_path / "a")
    store = p.store(DENSE, clusters=settings)
    assert p.timings.extraction.shards_written == [1, 2]
    assert ClusterCache.of(store, settings).complete  # shard 0's clusters were written with it
    computed = count_cluster_computations(monkeypatch)
    got = p.knowledge_clusters(DENSE, settings)
    assert computed == []
    assert p.timings.clusters_cache_hit is False and p.timings.clusters_in_extraction is True
    fresh = provider(squares, CountingFactory(), tmp_path / "b")
    want = fresh.knowledge_clusters(DENSE, settings)
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.owners, want.owners)


def test_shards_extracted_without_clusters_get_them_from_the_store(squares, tmp_path, monkeypatch) -> None:
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    with pytest.raises(KeyboardInterrupt):  # a Core-Set run (no clusters), interrupted after shard 0
        provider(squares, CountingFactory(fail_after_batches=3), tmp_path / "a").store()
    p = provider(squares, CountingFactory(), tmp_path / "a")
    computed = count_cluster_computations(monkeypatch)
    got = p.knowledge_clusters(DENSE, settings)  # resumes the extraction with the clusters of shards 1, 2
    assert p.timings.extraction.shards_written == [1, 2] and computed == [[0]]
    assert p.timings.clusters_cache_hit is False and p.timings.clusters_in_extraction is False
    fresh = provider(squares, CountingFactory(), tmp_path / "b")
    fresh.store()
    want = fresh.knowledge_clusters(DENSE, settings)
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.owners, want.owners)


def test_other_cluster_settings_are_computed_from_the_full_store(squares, tmp_path, monkeypatch) -> None:
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    other = ClusterSettings(tau=0.8, k=4, kmeans_iters=5)
    plain = provider(squares, CountingFactory(), tmp_path / "b")  # clusters during extraction: the reference
    want = plain.knowledge_clusters(DENSE, other)
    p = provider(squares, CountingFactory(), tmp_path / "a")
    store = p.store(DENSE, clusters=settings)
    assert not ClusterCache.of(store, other).directory.exists()
    computed = count_cluster_computations(monkeypatch)
    got = p.knowledge_clusters(DENSE, other)
    assert computed == [[0, 1, 2]]
    assert p.timings.clusters_cache_hit is False and p.timings.clusters_in_extraction is False
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.owners, want.owners)
    p.knowledge_clusters(DENSE, settings)  # the setting of the extraction: still no computation
    assert computed == [[0, 1, 2]]


def test_clusters_only_extraction_reports_clusters_computed_in_it(squares, tmp_path) -> None:
    settings = ClusterSettings(tau=0.6, k=3, kmeans_iters=5)
    p = provider(squares, CountingFactory(), tmp_path, cache_mode="clusters_only")
    p.knowledge_clusters(DENSE, settings)
    assert p.timings.clusters_cache_hit is False and p.timings.clusters_in_extraction is True
    later = provider(squares, CountingFactory(), tmp_path, cache_mode="clusters_only")
    later.knowledge_clusters(DENSE, settings)
    assert later.timings.clusters_cache_hit is True and later.timings.clusters_in_extraction is False


def test_cluster_settings_reject_bad_values_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"clusters\.tau"):
        ClusterSettings(tau=0.0)
    with pytest.raises(ValueError, match=r"clusters\.kmeans_metric"):
        ClusterSettings(kmeans_metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['taux'\]"):
        ClusterSettings.from_config({"taux": 0.5})
    assert ClusterSettings.from_config({"tau": 0.4, "k": 5}) == ClusterSettings(tau=0.4, k=5)
