"""What verifying the feature cache costs on a hit: digests checked vs the same reads unchecked, same process.

A GEAL cache hit reads the store's global features and validity (checked on open) and one knowledge-cluster
cache (each file checked when read); tokens are only read (and checked) when clusters must be computed.
Synthetic stores of the real shapes, written by the real writers (so with their digests):

* ``mnist5k``: 4,000 images, ViT-S/14 global features (384), a K=25 float32 cluster cache (the hit of a
  GEAL run on the MNIST-5k default);
* ``100k``: 100,000 images, global features and validity only (a Core-Set hit on a large pool).

Each case times ``--repeats`` hits with a fresh store object (so every digest is checked again), page cache
warm, verified and unverified interleaved; the median of each, and the ratio. Also the per-image
fingerprint cost: one ``stat`` per file over ``--files`` files (VOC07+12 trainval has 16,551).

Usage: python scripts/bench_verify.py [--repeats 5] [--files 16551] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_record import BenchRecorder, add_out_argument

from geal.features.clusters import ClusterCache
from geal.features.store import FeatureStore, ShardData, fingerprint
from geal.method.knowledge import ClusterSettings


def build(root: Path, n: int, dim: int, k: int | None, seed: int = 0) -> tuple[Path, dict]:
    """A global store of ``n`` images (and a K-cluster float32 cache when ``k``), shards of 512."""
    rng = np.random.default_rng(seed)
    key = {"bench": "verify", "n": n}
    store = FeatureStore.open(root, key, n, 512, label=f"bench-{n}", contents="global")
    cache = ClusterCache(store, ClusterSettings(k=k), compact=False) if k else None
    if cache is not None:
        cache.create()
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        m = stop - start
        data = ShardData(None, None, rng.standard_normal((m, dim), dtype=np.float32), np.ones(m, bool), [])
        store.write_shard(shard, data)
        if cache is not None and k:
            cents = rng.standard_normal((m, k, dim), dtype=np.float32)
            cache.write_shard(shard, cents, np.ones((m, k), bool))
    return root, key


def hit(root: Path, key: dict, n: int, k: int | None, verify: bool) -> float:
    t0 = time.perf_counter()
    store = FeatureStore.open(root, key, n, 512, label=f"bench-{n}", contents="global")
    store.verify_reads = verify
    if verify:
        assert not store.check()
    store.global_features()
    valid = store.valid()
    if k:
        ClusterCache(store, ClusterSettings(k=k), compact=False).read(valid, verify=verify)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--files", type=int, default=16551)
    add_out_argument(parser)
    args = parser.parse_args()
    rec = BenchRecorder("bench_verify", args.out, repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench_verify_") as tmp:
        for name, n, k in (("mnist5k", 4000, 25), ("100k", 100_000, None)):
            root, key = build(Path(tmp) / name, n, 384, k)
            hit(root, key, n, k, True)  # warm the page cache
            plain, checked = [], []
            for _ in range(args.repeats):
                plain.append(hit(root, key, n, k, False))
                checked.append(hit(root, key, n, k, True))
            a, b = statistics.median(plain), statistics.median(checked)
            size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
            rec.emit(
                name,
                f"verify {name}: {n:,} images, {size:,.0f} MB read per hit: hit {a:.3f}s unverified, "
                f"{b:.3f}s verified: {b / a:.2f}x (+{100 * (b - a) / a:.0f}% of the hit)",
                images=n,
                unverified_s=a,
                verified_s=b,
                ratio=b / a,
            )
        files = Path(tmp) / "files"
        files.mkdir()
        paths = [files / f"{i:06d}.jpg" for i in range(args.files)]
        for p in paths:
            p.write_bytes(b"x")
        t0 = time.perf_counter()
        for p in paths:
            fingerprint(p)
        dt = time.perf_counter() - t0
        rec.emit(
            "fingerprints",
            f"verify fingerprints: stat of {args.files:,} files {1000 * dt:.0f} ms (page cache warm)",
            files=args.files,
            seconds=dt,
        )


if __name__ == "__main__":
    main()
