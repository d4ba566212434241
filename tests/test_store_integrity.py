"""Issue 19, "the feature cache never lies": every cache hit is as trustworthy as a fresh run.

Skipped images are part of the cached record; damaged, truncated, partial or stale shards and cluster files
are detected (per-array digests), quarantined and rebuilt; features that are not finite are an error
naming the images; changed images are re-extracted; settings are validated.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geal.api.features import FeatureRequest
from geal.api.selector import SelectionContext
from geal.features.clusters import ClusterCache
from geal.features.extract import ExtractionSettings
from geal.features.provider import FeatureProvider
from geal.method.knowledge import ClusterSettings
from tests.conftest import TINY_VIT, CountingFactory, SquaresPool

SETTINGS = ExtractionSettings(batch_size=4, num_workers=0, amp="none", shard_size=8, progress=False)
DENSE = FeatureRequest.dense()
CLUSTERS = ClusterSettings(k=2, kmeans_iters=5)


def provider(pool, factory, cache_dir: Path, **kw) -> FeatureProvider:
    settings = ExtractionSettings(**{**SETTINGS.__dict__, **kw})
    return FeatureProvider(
        pool, factory, {"tiny": TINY_VIT}, cache_dir, settings, torch.device("cpu"), "tiny"
    )


def store_dir(cache_dir: Path) -> Path:
    return next(d for d in (cache_dir / "features").iterdir() if d.is_dir())


def flip_bytes(path: Path, at_fraction: float = 0.75, n: int = 8) -> None:
    """Overwrite ``n`` bytes inside the file (same size), past the .npy header."""
    data = bytearray(path.read_bytes())
    at = max(int(len(data) * at_fraction), 128)
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def reference(squares: SquaresPool, tmp_path: Path):
    p = provider(squares, CountingFactory(), tmp_path / "ref")
    return p.global_features(), p.knowledge_clusters(DENSE, CLUSTERS)


# ---------------------------------------------------------------- defect 1: skipped images on a hit


def test_a_hit_reports_the_skips_of_the_extraction_that_made_the_store(cache_dir: Path) -> None:
    pool = SquaresPool(10, broken=[7])
    first = provider(pool, CountingFactory(), cache_dir, on_error="skip")
    first.store()
    assert [s["image_id"] for s in first.timings.skipped] == ["sq_0007"]
    again = provider(pool, CountingFactory(), cache_dir, on_error="skip")
    again.store()
    assert again.timings.extraction_cache_hit is True
    assert [s["image_id"] for s in again.timings.skipped] == ["sq_0007"]


def test_on_error_raise_on_a_store_that_skipped_images_raises_like_a_fresh_run(cache_dir: Path) -> None:
    pool = SquaresPool(10, broken=[7])
    provider(pool, CountingFactory(), cache_dir, on_error="skip").store()
    with pytest.raises(OSError, match=r"/virtual/squares/sq_0007\.png") as hit:
        provider(pool, CountingFactory(), cache_dir).store()
    with pytest.raises(OSError) as fresh:
        provider(pool, CountingFactory(), cache_dir / "fresh").store()
    assert str(hit.value) == str(fresh.value)


# ---------------------------------------------------------------- defect 2: damaged arrays, digests


@pytest.mark.parametrize("array", ["tokens", "attention", "global", "valid"])
def test_same_size_damage_of_any_array_is_detected_quarantined_and_re_extracted(
    squares: SquaresPool, tmp_path: Path, array: str, caplog
) -> None:
    want_global, want_clusters = reference(squares, tmp_path)
    cache_dir = tmp_path / "a"
    provider(squares, CountingFactory(), cache_dir).store(DENSE)
    directory = store_dir(cache_dir)
    damaged = directory / "shard_00001" / f"{array}.npy"
    if array == "valid":  # all False: the shard's images would silently vanish from selection
        arr = np.load(damaged)
        data = bytearray(damaged.read_bytes())
        data[len(data) - arr.size :] = bytes(arr.size)
        damaged.write_bytes(bytes(data))
    else:
        flip_bytes(damaged)
    factory = CountingFactory()
    p = provider(squares, factory, cache_dir)
    with caplog.at_level(logging.WARNING):
        got_global = p.global_features()
        got_clusters = p.knowledge_clusters(DENSE, CLUSTERS)
    assert factory.images == 8  # the damaged shard only, re-extracted
    assert "shard_00001" in caplog.text
    quarantined = list((directory / "quarantine").glob("*shard_00001*"))
    assert quarantined, "the damaged shard is kept for inspection, not deleted"
    np.testing.assert_array_equal(got_global.features, want_global.features)
    np.testing.assert_array_equal(got_global.valid, want_global.valid)
    np.testing.assert_array_equal(got_clusters.features, want_clusters.features)
    np.testing.assert_array_equal(got_clusters.owners, want_clusters.owners)


def test_damaged_cluster_file_is_detected_and_recomputed(
    squares: SquaresPool, tmp_path: Path, caplog
) -> None:
    _, want = reference(squares, tmp_path)
    cache_dir = tmp_path / "a"
    p = provider(squares, CountingFactory(), cache_dir)
    store = p.store(DENSE, clusters=CLUSTERS)
    path = ClusterCache.of(store, CLUSTERS).shard_path(1)
    flip_bytes(path, at_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        got = provider(squares, CountingFactory(), cache_dir).knowledge_clusters(DENSE, CLUSTERS)
    assert "shard_00001.npz" in caplog.text
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.owners, want.owners)


def test_features_that_are_not_finite_are_an_error_naming_the_images(squares, cache_dir: Path) -> None:
    p = provider(squares, CountingFactory(), cache_dir)
    store = p.store()
    # a store written with NaN features (a broken backbone), its digests consistent with its content
    path = store.shard_dir(0) / "global.npy"
    arr = np.load(path)
    arr[3, 0] = np.nan
    np.save(path, arr)
    meta_path = store.shard_dir(0) / "meta.json"
    meta = json.loads(meta_path.read_text())
    from geal.util.digest import file_digest

    meta["digests"]["global"] = file_digest(path)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"not finite.*sq_0003"):
        provider(squares, CountingFactory(), cache_dir).global_features()


def test_a_shard_without_digests_is_not_trusted_but_rebuilt(squares: SquaresPool, cache_dir: Path) -> None:
    provider(squares, CountingFactory(), cache_dir).store()
    meta_path = store_dir(cache_dir) / "shard_00002" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("digests")
    meta_path.write_text(json.dumps(meta))
    factory = CountingFactory()
    provider(squares, factory, cache_dir).global_features()
    assert factory.images == 8 and factory.builds == 1  # that shard only


# ---------------------------------------------------------------- defect 3: truncated / partial files


@pytest.mark.parametrize("name", ["tokens.npy", "global.npy", "meta.json"])
def test_truncated_shard_files_are_rebuilt(squares: SquaresPool, cache_dir: Path, name: str) -> None:
    provider(squares, CountingFactory(), cache_dir).store(DENSE)
    path = store_dir(cache_dir) / "shard_00000" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    factory = CountingFactory()
    p = provider(squares, factory, cache_dir)
    p.knowledge_clusters(DENSE, CLUSTERS)
    assert factory.images == 8


def test_truncated_cluster_file_is_rebuilt(squares: SquaresPool, cache_dir: Path) -> None:
    p = provider(squares, CountingFactory(), cache_dir)
    store = p.store(DENSE, clusters=CLUSTERS)
    path = ClusterCache.of(store, CLUSTERS).shard_path(0)
    path.write_bytes(path.read_bytes()[:100])
    got = provider(squares, CountingFactory(), cache_dir).knowledge_clusters(DENSE, CLUSTERS)
    assert set(got.owners.tolist()) == set(range(len(squares)))


def test_a_shard_folder_missing_its_meta_never_blocks_a_rerun(squares: SquaresPool, cache_dir: Path) -> None:
    provider(squares, CountingFactory(), cache_dir).store()
    (store_dir(cache_dir) / "shard_00001" / "meta.json").unlink()
    for _ in range(2):
        factory = CountingFactory()
        provider(squares, factory, cache_dir).global_features()
    assert factory.images == 0  # the second rerun is a plain hit


def test_a_killed_writers_temp_folder_never_blocks_a_rerun(squares: SquaresPool, cache_dir: Path) -> None:
    provider(squares, CountingFactory(), cache_dir).store()
    directory = store_dir(cache_dir)
    final = directory / "shard_00002"
    killed = directory / ".shard_00002.killed.tmp"
    final.rename(killed)
    (killed / "meta.json").unlink()
    (killed / "tokens.npy").write_bytes(b"\x93NUMPY partial")
    factory = CountingFactory()
    provider(squares, factory, cache_dir).global_features()
    assert factory.images == 8 and not killed.exists()


# ---------------------------------------------------------------- defect 4: images changed in place


def test_images_changed_in_place_are_re_extracted(tmp_path: Path) -> None:
    from downstream.datasets import synthetic
    from downstream.datasets.folder import ImageFolderPool

    synthetic.make_image_folder(tmp_path / "photos", n_per_class=6)
    pool = ImageFolderPool(tmp_path / "photos")
    first = provider(pool, CountingFactory(), tmp_path / "cache").global_features()
    # replace two images under the same names by two others of the pool
    a, b = pool.file_path(0), pool.file_path(9)
    assert a is not None and b is not None
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    later = time.time() + 5
    os.utime(a, (later, later))
    os.utime(b, (later, later))
    factory = CountingFactory()
    p = provider(ImageFolderPool(tmp_path / "photos"), factory, tmp_path / "cache")
    second = p.global_features()
    assert factory.images == 16  # the two shards (of 8) holding images 0 and 9
    assert p.timings.refreshed_images == 2
    np.testing.assert_allclose(second.features[0], first.features[9], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second.features[9], first.features[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- defect 5: random vs unreadable images


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_random_never_picks_unreadable_images(tmp_path: Path, on_error: str) -> None:
    from baselines.random import RandomSelector
    from downstream.datasets import synthetic
    from downstream.datasets.folder import ImageFolderPool
    from geal.run.outputs import run_selection

    synthetic.make_image_folder(tmp_path / "photos", n_per_class=4)  # 12 images
    pool = ImageFolderPool(tmp_path / "photos")
    broken = {2, 7}
    for i in broken:
        path = pool.file_path(i)
        path.write_bytes(path.read_bytes()[:60])  # truncated JPEGs
    ctx = SelectionContext(seed=0, on_error=on_error)
    out = tmp_path / "out"
    if on_error == "raise":
        with pytest.raises(OSError, match=r"(square|circle|triangle)_00[0-3]\.jpg"):
            run_selection(pool, RandomSelector(), 11, ctx, out, split_name="r")
        assert not (out / "selection.json").exists()
        return
    result = run_selection(pool, RandomSelector(), 10, ctx, out, split_name="r")
    assert sorted(result.selection.global_ids) == sorted(set(range(12)) - broken)
    # only the picks are decoded: the unreadable images the draw hit are reported
    reported = {int(s["global_id"]) for s in result.run_info["features"]["skipped_images"]}
    assert reported and reported <= broken


# ---------------------------------------------------------------- defect 7: settings


def test_on_error_is_validated() -> None:
    with pytest.raises(ValueError, match=r"on_error.*'raise', 'skip'"):
        ExtractionSettings(on_error="raisee")  # type: ignore[arg-type]


# ---------------------------------------------------------------- defect 6: checkpoints


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", b"\x80\x02garbage pickle"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_or_empty_checkpoint_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, suffix
) -> None:
    from geal.features.backbones.vit import load_state_dict_file

    path = tmp_path / f"weights{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_state_dict_file(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "weights_only" not in message


def test_damaged_converted_imgfocus_weights_are_converted_again(tmp_path: Path) -> None:
    import geal.features.backbones.imgfocus as imgfocus_mod

    first = imgfocus_mod.ImgFocusViT(cache_dir=str(tmp_path))
    path = imgfocus_mod.converted_weights_path(tmp_path, 224)
    path.write_bytes(path.read_bytes()[:1000])  # truncated: a SafetensorError before the fix
    again = imgfocus_mod.ImgFocusViT(cache_dir=str(tmp_path))
    x = torch.rand(1, 3, 224, 224)
    assert torch.equal(again.extract(x).tokens, first.extract(x).tokens)


# ---------------------------------------------------------------- defect 2: clusters-only stores


def test_damaged_cluster_file_of_a_clusters_only_store_re_extracts_its_shard(squares, tmp_path: Path) -> None:
    cache_dir = tmp_path / "a"
    p = provider(squares, CountingFactory(), cache_dir, cache_mode="clusters_only")
    want = p.knowledge_clusters(DENSE, CLUSTERS)
    store = p.open_store(DENSE)
    flip_bytes(ClusterCache.of(store, CLUSTERS).shard_path(2), at_fraction=0.5)
    factory = CountingFactory()
    got = provider(squares, factory, cache_dir, cache_mode="clusters_only").knowledge_clusters(
        DENSE, CLUSTERS
    )
    assert factory.images == 8  # shard 2, extracted again (no tokens to recompute its clusters from)
    np.testing.assert_array_equal(got.owners, want.owners)
    np.testing.assert_allclose(got.features, want.features)


# ---------------------------------------------------------------- defect 8: lock wait, Ctrl-C


def test_waiting_for_another_jobs_lock_is_not_booked_as_work(squares: SquaresPool, cache_dir: Path) -> None:
    import threading

    p = provider(squares, CountingFactory(), cache_dir)
    store = p.open_store()
    held, release = threading.Event(), threading.Event()

    def other_job() -> None:
        with store.lock("another job"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=other_job)
    thread.start()
    held.wait(5)
    threading.Timer(1.0, release.set).start()
    p.store()
    thread.join()
    assert p.timings.extra["lock_wait_s"] >= 0.9
    assert p.timings.extra["store_check_s"] < 0.9


def test_ctrl_c_prints_one_line_writes_failure_json_and_exits_130(tmp_path: Path, capsys) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from geal.run.cli import one_line_errors
    from tests.test_configs import compose_root

    cfg = compose_root("select", "seed=1")
    cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)

    def interrupted(cfg) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as code:
        one_line_errors(interrupted)(OmegaConf.create({}))
    assert code.value.code == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume" in err
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["error"] == "KeyboardInterrupt" and failure["overrides"] == [
        "paths.data_dir=/data",
        "seed=1",
    ]
