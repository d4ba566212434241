"""torch.distributed scale-out (geal.features.distributed) with 2 gloo processes on CPU.

One spawn of two ranks runs every case (process start-up dominates the cost): the distributed extraction
(a rank failing mid-way, then the job rerun) and the sharded k-center; the parent compares with what a
single process computes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geal.api.features import FeatureRequest
from geal.features.clusters import ClusterCache
from geal.features.distributed import extract_distributed
from geal.features.extract import ExtractionSettings
from geal.features.provider import FeatureProvider
from geal.method.kcenter import kcenter_greedy, kcenter_greedy_sharded
from geal.method.knowledge import ClusterSettings
from tests.conftest import TINY_VIT, CountingFactory, SquaresPool

SETTINGS = ExtractionSettings(batch_size=4, num_workers=0, amp="none", shard_size=8, progress=False)
CLUSTERS = ClusterSettings(k=3, kmeans_iters=5)
N_IMAGES = 40  # 5 shards of 8


class FailingFactory(CountingFactory):
    """The tiny ViT, failing (as a crashed GPU would) after some batches."""

    def __call__(self):
        model = super().__call__()
        inner = model.extract

        def extract(images, *args, **kwargs):
            if self.batches >= 1:
                raise RuntimeError("simulated device failure")
            return inner(images, *args, **kwargs)

        model.extract = extract
        return model


def provider(cache_dir: Path, factory) -> FeatureProvider:
    return FeatureProvider(
        SquaresPool(N_IMAGES), factory, {"tiny": TINY_VIT}, cache_dir, SETTINGS, torch.device("cpu"), "tiny"
    )


def selection_cases() -> list[dict]:
    """Grouped points (some duplicated, groups spanning the rank boundary) and the arguments of each run."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=60)
    groups = np.repeat(np.arange(60), sizes)
    x = rng.normal(size=(groups.size, 8))
    x[-10:] = x[:10]  # duplicated points in other groups
    eligible = np.ones(60, dtype=bool)
    eligible[[3, 17, 41]] = False
    return [
        {"x": x, "groups": groups, "budget": 40, "distance": "cosine", "initial": [], "eligible": None},
        {
            "x": x,
            "groups": groups,
            "budget": 30,
            "distance": "euclidean",
            "initial": [5, 9, 50],
            "eligible": eligible,
        },
    ]


def _split(n: int, rank: int, world: int) -> slice:
    cut = [round(n * r / world) + (3 if 0 < r < world else 0) for r in range(world + 1)]  # uneven slices
    return slice(cut[rank], cut[rank + 1])


def _worker(rank: int, world: int, init_file: str, cache_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out: dict = {}
    try:
        # 1. extraction: rank 1 fails after one batch; the whole job reports it on every rank
        factory = FailingFactory() if rank == 1 else CountingFactory()
        try:
            extract_distributed(provider(Path(cache_dir), factory))
            out["first_error"] = None
        except RuntimeError as err:
            out["first_error"] = str(err)
        # 2. the job is run again: only the shards still missing are extracted
        again = CountingFactory()
        p = provider(Path(cache_dir), again)
        store = extract_distributed(p)
        out["rerun_images"] = again.images
        out["complete"] = store.complete
        # 3. GEAL's request under torchrun, on a fresh cache: each rank clusters the shards it extracts
        clustered = provider(Path(cache_dir) / "geal", CountingFactory())
        clusters = clustered.knowledge_clusters(FeatureRequest.dense(), CLUSTERS)
        out["clusters_in_extraction"] = clustered.timings.clusters_in_extraction
        out["clusters_extracted_shards"] = (
            clustered.timings.extraction.shards_written if clustered.timings.extraction else []
        )
        out["cluster_owners"] = clusters.owners.tolist()
        # 4. sharded k-center over each rank's slice of the points
        out["picks"] = []
        for case in selection_cases():
            part = _split(len(case["groups"]), rank, world)
            eligible = None if case["eligible"] is None else torch.from_numpy(case["eligible"])
            res = kcenter_greedy_sharded(
                torch.from_numpy(case["x"][part]).float(),
                torch.from_numpy(case["groups"][part]),
                case["budget"],
                distance=case["distance"],
                initial=case["initial"],
                eligible=eligible,
                generator=torch.Generator().manual_seed(7),
            )
            out["picks"].append({"order": res.order, "scores": res.scores})
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    root = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    mp.spawn(_worker, args=(2, str(root / "init"), str(root / "cache"), str(root)), nprocs=2, join=True)
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)], root / "cache"


def test_distributed_extraction_equals_one_process_and_survives_a_failed_rank(two_ranks, tmp_path):
    outs, cache = two_ranks
    for out in outs:  # every rank learns that rank 1 failed, and how to finish
        assert "failed on rank(s) [1]" in out["first_error"] and "run the job again" in out["first_error"]
        assert out["complete"]
    # rerun: rank 0's shards of the first attempt were kept; only rank 1's missing shards ran again
    # (5 shards: rank 0 had shards 0, 2, 4 = 24 images; rank 1 wrote nothing but lost its first batch)
    assert outs[0]["rerun_images"] + outs[1]["rerun_images"] == 16
    distributed = provider(cache, CountingFactory()).store()
    single = provider(tmp_path / "single", CountingFactory()).store()
    for (a0, a1, a), (b0, b1, b) in zip(distributed.iter_shards(), single.iter_shards(), strict=True):
        assert (a0, a1) == (b0, b1)
        for name in ("tokens", "attention", "global", "valid"):
            assert np.asarray(a[name]).tobytes() == np.asarray(b[name]).tobytes(), name
    p = provider(cache, CountingFactory())
    got = p.knowledge_clusters(FeatureRequest.dense(), CLUSTERS)
    q = provider(tmp_path / "single", CountingFactory())
    want = q.knowledge_clusters(FeatureRequest.dense(), CLUSTERS)
    np.testing.assert_array_equal(got.owners, want.owners)
    np.testing.assert_array_equal(got.features, want.features)
    # the clusters computed by each rank during its share of the extraction: the single process's, bit for bit
    geal = provider(cache / "geal", CountingFactory())
    assert sorted(outs[0]["clusters_extracted_shards"] + outs[1]["clusters_extracted_shards"]) == list(
        range(5)
    )
    assert all(out["clusters_in_extraction"] for out in outs)
    assert all(out["cluster_owners"] == want.owners.tolist() for out in outs)
    in_extraction = geal.knowledge_clusters(FeatureRequest.dense(), CLUSTERS)
    assert geal.timings.clusters_cache_hit is True  # read from the cache the ranks wrote
    np.testing.assert_array_equal(in_extraction.owners, want.owners)
    np.testing.assert_array_equal(in_extraction.features, want.features)
    assert ClusterCache.of(geal.store(FeatureRequest.dense()), CLUSTERS).complete


def test_sharded_kcenter_equals_one_process(two_ranks):
    outs, _ = two_ranks
    for i, case in enumerate(selection_cases()):
        eligible = None if case["eligible"] is None else torch.from_numpy(case["eligible"])
        want = kcenter_greedy(
            torch.from_numpy(case["x"]).float(),
            torch.from_numpy(case["groups"]),
            case["budget"],
            distance=case["distance"],
            initial=case["initial"],
            eligible=eligible,
            generator=torch.Generator().manual_seed(7),
            pruning="none",
        )
        for out in outs:  # both ranks return the single-process result
            assert out["picks"][i]["order"] == want.order
            np.testing.assert_allclose(out["picks"][i]["scores"][1:], want.scores[1:], rtol=1e-5, atol=1e-6)
        if case["initial"]:
            assert not set(want.order) & set(case["initial"])
