"""The knowledge-cluster cache (second feature stage): one per (token store, cluster settings), sharded like
the store.

Layout, in a ``clusters/`` folder of the token store's directory (so the store's key is part of the cache's
key, and deleting a store deletes what was derived from it; the store itself never looks inside)::

    <store dir>/clusters/<hash of the settings and CLUSTERS_VERSION>/
        manifest.json       the settings, CLUSTERS_VERSION, the centroids' dtype, the store's sizes
        shard_00000.npz     the clusters of the images of the store's shard 0: features (m, D) centroids of
                            the valid clusters, image by image; counts (n,) int32 clusters per image;
                            digest: the xxh3_64 of both (written with them; verified on every read)
        shard_00001.npz ...
        .lock               held by the job computing missing shards from the stored tokens

Every consumer reads the clusters from this cache (:meth:`ClusterCache.read`), however they were computed:

* **during extraction** — the extraction hands each finished shard, still on its device, to a
  :class:`ClusterShardWriter`, which clusters it there; the writer thread writes that cluster shard, then
  the store's shard. A cold run never reads tokens back, and no more than one shard's clusters sit in memory
  before they are written, whatever the pool's size;
* **from the stored tokens** — the shards still missing (a store extracted for another setting, or for a
  selector that needs no clusters; shards an interrupted or distributed run extracted without them) are
  computed from the token store under the cache's lock, so parallel jobs compute each setting once.

Per shard, images are clustered ``batch_images`` at a time, each chunk with its own generator seeded from
(``kmeans_seed``, the chunk's first global id) (:func:`shard_knowledge_clusters`): a shard's clusters do not
depend on which job, rank or resumed run computes it, nor on whether it is computed during extraction or
from the store.

A store that keeps only global features (``extraction.cache_mode=clusters_only``) has no tokens to compute
clusters from later: its caches are filled during extraction only, with compact centroids (fp16 where in
range, as the tokens of a dense store), for the setting its first extraction was started with (a resumed
extraction continues that setting, :func:`started_settings`); any other setting is a
:class:`ClustersNotStoredError` that says how to get it. A dense store's caches keep float32 centroids.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from geal.api.features import KnowledgeClusterSet
from geal.features.store import (
    DamagedFileError,
    FeatureStore,
    ShardArray,
    ShardData,
    StoreMismatchError,
    fp16_if_in_range,
)
from geal.method.knowledge import ClusterSettings, knowledge_clusters
from geal.util.digest import arrays_digest, known_algorithm
from geal.util.io import atomic_write_bytes, atomic_write_json, stable_hash
from geal.util.locks import file_lock

log = logging.getLogger(__name__)

#: bump when the knowledge clusters computed for the same settings, or the cache's layout, change (old caches
#: are then ignored)
CLUSTERS_VERSION = 3


class ClustersNotStoredError(RuntimeError):
    """A token store without tokens does not hold the knowledge clusters a selector asks for."""


class DamagedClusterShardError(DamagedFileError):
    """A cluster shard file is damaged (truncated, unreadable, no digest, digest mismatch): the provider
    quarantines and recomputes it."""

    what = "knowledge-cluster file"
    remedy = "it is recomputed automatically; else delete {directory} to compute it again."


def cluster_identity(settings: ClusterSettings) -> dict[str, Any]:
    """What determines the clusters of a token store: the settings and the algorithm's version."""
    return {**asdict(settings), "clusters_version": CLUSTERS_VERSION}


class ClusterCache:
    """The knowledge clusters of ``settings`` over the tokens of ``store`` (see the module docstring).

    ``compact``: centroids kept in fp16 where in range (the caches of a store without tokens).
    """

    def __init__(self, store: FeatureStore, settings: ClusterSettings, compact: bool) -> None:
        self.store = store
        self.settings = settings
        self.compact = compact
        self.identity = cluster_identity(settings)
        self.directory = store.directory / "clusters" / stable_hash(self.identity)

    @classmethod
    def of(cls, store: FeatureStore, settings: ClusterSettings) -> ClusterCache:
        """The cache of ``settings`` for ``store``: compact for a store without tokens."""
        return cls(store, settings, compact=not store.keeps_tokens)

    # ------------------------------------------------------------------ manifest, shards, lock
    def _manifest(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "centroids": "float16 where in range" if self.compact else "float32",
            "n_images": self.store.n_images,
            "shard_size": self.store.shard_size,
        }

    def create(self) -> None:
        """Write the manifest (once; an existing one is checked)."""
        path = self.directory / "manifest.json"
        if path.exists():
            self._check_manifest()
        else:
            atomic_write_json(path, self._manifest())

    def _check_manifest(self) -> None:
        path = self.directory / "manifest.json"
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StoreMismatchError(f"{path} is unreadable ({err}): delete {self.directory}") from err
        want = json.loads(json.dumps(self._manifest()))
        if found != want:
            diff = sorted(k for k in want if found.get(k) != want[k])
            raise StoreMismatchError(
                f"knowledge-cluster cache {self.directory} was written for something else (differs in: "
                f"{', '.join(diff)}): delete that directory to compute it again"
            )

    def shard_path(self, shard: int) -> Path:
        return self.directory / f"shard_{shard:05d}.npz"

    def missing_shards(self) -> list[int]:
        if not (self.directory / "manifest.json").exists():
            return list(range(self.store.n_shards))
        return [s for s in range(self.store.n_shards) if not self.shard_path(s).exists()]

    @property
    def complete(self) -> bool:
        return not self.missing_shards()

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The cache's cross-process lock (held while computing its missing shards from the store)."""
        return file_lock(self.directory / ".lock", f"computing knowledge clusters {self.directory}")

    # ------------------------------------------------------------------ writing, reading
    def write_shard(self, shard: int, centroids: np.ndarray, ok: np.ndarray) -> None:
        """Write the clusters of store shard ``shard`` atomically: centroids (n, K, D) float32 and ok (n, K)
        bool as :func:`shard_knowledge_clusters` gives them (only the valid ones are kept)."""
        start, stop = self.store.shard_range(shard)
        if ok.shape[0] != stop - start:
            raise ValueError(f"cluster shard {shard}: {ok.shape[0]} images, expected {stop - start}")
        features = centroids[ok]
        stored = fp16_if_in_range(features) if self.compact else features.astype(np.float32)
        counts = ok.sum(axis=1).astype(np.int32)
        buffer = io.BytesIO()
        np.savez(buffer, features=stored, counts=counts, digest=np.array(arrays_digest([stored, counts])))
        atomic_write_bytes(self.shard_path(shard), buffer.getvalue())

    def _load_shard(self, shard: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Arrays ``names`` of a cluster shard file; a :class:`DamagedClusterShardError` names a file
        that cannot be read (truncated, a bad zip CRC...)."""
        path = self.shard_path(shard)
        try:
            with np.load(path) as part:
                return {name: part[name] for name in names}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            reason = "no digest: written by an older version" if isinstance(err, KeyError) else f"{err}"
            raise DamagedClusterShardError(self.directory, shard, path, reason) from err

    def read(self, valid: np.ndarray, verify: bool = True) -> KnowledgeClusterSet:
        """Every shard's clusters in one :class:`KnowledgeClusterSet` (float32 centroids, allocated once);
        ``valid``: the store's (n_images,) validity. The cache must be complete. Each shard is checked
        against its digest (``verify=False`` only to measure what that costs, scripts/bench_verify.py)."""
        self._check_manifest()
        counts = []
        for shard in range(self.store.n_shards):
            counts.append(self._load_shard(shard, ("counts",))["counts"])
        total = int(sum(int(c.sum()) for c in counts))
        features: np.ndarray | None = None
        at = 0
        for shard in range(self.store.n_shards):
            part = self._load_shard(shard, ("features", "digest"))
            block, digest = part["features"], str(part["digest"])
            if verify and (
                not known_algorithm(digest)
                or arrays_digest([block, counts[shard]], digest.split(":")[0]) != digest
            ):
                raise DamagedClusterShardError(
                    self.directory, shard, self.shard_path(shard), "its content does not match its digest"
                )
            if features is None:
                features = np.empty((total, block.shape[1]), dtype=np.float32)
            features[at : at + len(block)] = block
            at += len(block)
        assert features is not None and at == total
        owners = np.concatenate(
            [
                np.repeat(np.arange(*self.store.shard_range(shard), dtype=np.int64), counts[shard])
                for shard in range(self.store.n_shards)
            ]
        )
        return KnowledgeClusterSet(features, owners, np.asarray(valid, dtype=bool))


def quarantine_cluster_file(store: FeatureStore, path: Path, reason: str) -> None:
    """Move a cluster shard file to the store's ``quarantine/`` (kept, not deleted) and say so."""
    folder = store.directory / "quarantine"
    folder.mkdir(exist_ok=True)
    target = folder / f"clusters-{path.parent.name}-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another job moved it first
        return
    log.warning("knowledge-cluster file %s: %s; moved to %s, it is computed again", path, reason, target)


def drop_cluster_shards(store: FeatureStore, shards: list[int]) -> None:
    """Delete the cluster shards derived from store shards ``shards`` in every cluster cache of ``store``
    (their images changed: they are computed again with the new tokens)."""
    for shard in shards:
        for path in (store.directory / "clusters").glob(f"*/shard_{shard:05d}.npz"):
            path.unlink(missing_ok=True)


def started_settings(store: FeatureStore) -> ClusterSettings | None:
    """The cluster setting an extraction of ``store`` was started with: the cache of the current version
    that holds a cluster shard for each shard the store has (a cluster shard is written before its store
    shard); None if the store has no shard yet or was started without clusters."""
    missing = set(store.missing_shards())
    done = [s for s in range(store.n_shards) if s not in missing]
    if not done:
        return None
    for manifest in sorted((store.directory / "clusters").glob("*/manifest.json")):
        cache = json.loads(manifest.read_text())
        identity = dict(cache.get("identity", {}))
        if identity.pop("clusters_version", None) != CLUSTERS_VERSION:
            continue
        if all((manifest.parent / f"shard_{s:05d}.npz").exists() for s in done):
            known = {f.name for f in fields(ClusterSettings)}
            return ClusterSettings(**{k: v for k, v in identity.items() if k in known})
    return None


def not_stored_error(store: FeatureStore, settings: ClusterSettings) -> ClustersNotStoredError:
    """The error for a store without tokens whose cache of ``settings`` is missing: what it holds instead,
    and how to get the clusters asked for."""
    fix = (
        f"run with extraction.cache_mode=full (dense store: any τ/K), or delete {store.directory} to "
        f"extract again for the new setting"
    )
    held = started_settings(store)
    if held is None or not ClusterCache.of(store, held).complete:
        return ClustersNotStoredError(
            f"the clusters-only feature store {store.directory} holds no knowledge clusters (it was "
            f"extracted for a selector that needs none, e.g. Core-Set): {fix}"
        )
    theirs_all, wanted = cluster_identity(held), cluster_identity(settings)
    theirs = {k: v for k, v in theirs_all.items() if wanted.get(k) != v}
    ours = {k: v for k, v in wanted.items() if k in theirs}
    return ClustersNotStoredError(
        f"the clusters-only feature store {store.directory} holds knowledge clusters for {theirs}, but "
        f"this selector asks for {ours}: {fix}"
    )


# ---------------------------------------------------------------------------------- computing clusters


def _chunk_generator(settings: ClusterSettings, first_id: int, device: torch.device) -> torch.Generator:
    """The generator of the chunk of images starting at global id ``first_id``."""
    seed = int(stable_hash([settings.kmeans_seed, int(first_id)]), 16) % 2**63
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _chunk_rows(arr: ShardArray, lo: int, hi: int, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows ``lo + rows`` of a shard's array (``rows`` within ``lo:hi``) on ``device`` as float32."""
    if isinstance(arr, torch.Tensor):
        return arr[lo:hi][torch.from_numpy(rows).to(arr.device)].to(device).float()
    return torch.from_numpy(np.ascontiguousarray(arr[lo:hi][rows])).to(device).float()


def shard_knowledge_clusters(
    tokens: ShardArray,
    attention: ShardArray,
    valid: np.ndarray,
    start: int,
    settings: ClusterSettings,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Knowledge clusters of one shard: tokens (n,N,D), attention (n,H,N), valid (n,) of images
    ``start..start+n`` → centroids (n,K,D) float32, cluster_valid (n,K) bool (all False for invalid
    images), ``settings.batch_images`` images at a time, each chunk with its own seeded generator. Tokens
    and attention as stored (numpy), or as tensors in the store's dtypes (on the device, during extraction):
    the same float32 values on the device either way."""
    n = tokens.shape[0]
    cents = np.zeros((n, settings.k, tokens.shape[-1]), dtype=np.float32)
    ok = np.zeros((n, settings.k), dtype=bool)
    for lo in range(0, n, settings.batch_images):
        hi = min(lo + settings.batch_images, n)
        rows = np.flatnonzero(np.asarray(valid[lo:hi]))
        if rows.size == 0:
            continue
        # moved as stored (fp16 tokens: half the bytes) and widened on the device: the same float32 values
        tok = _chunk_rows(tokens, lo, hi, rows, device)
        att = _chunk_rows(attention, lo, hi, rows, device)
        generator = _chunk_generator(settings, start + lo, device)
        c, v = knowledge_clusters(tok, att, settings, generator=generator)
        cents[lo + rows] = c.float().cpu().numpy()
        ok[lo + rows] = v.cpu().numpy()
    return cents, ok


class ClusterShardWriter:
    """The extraction's shard sink for one cluster cache: clusters each finished shard on the extraction's
    device (in the main loop on a CPU, in the writer thread on a GPU) and returns the write of that cluster
    shard, which the writer thread runs before it writes the store's shard.

    ``written``: the shards whose clusters it wrote."""

    def __init__(self, cache: ClusterCache, device: torch.device) -> None:
        self.cache = cache
        self.device = device
        self.written: list[int] = []

    def __call__(self, shard: int, data: ShardData) -> Callable[[], None]:
        assert data.tokens is not None and data.attention is not None, "clusters need the dense shard"
        start, _ = self.cache.store.shard_range(shard)
        cents, ok = shard_knowledge_clusters(  # the shard comes in the store's dtypes
            data.tokens, data.attention, data.valid, start, self.cache.settings, self.device
        )

        def write() -> None:
            self.cache.write_shard(shard, cents, ok)
            self.written.append(shard)

        return write


def compute_cluster_shards(
    store: FeatureStore, cache: ClusterCache, shards: list[int], device: torch.device, progress: bool = True
) -> None:
    """Compute the cluster shards ``shards`` of ``cache`` from the stored tokens (the caller holds the
    cache's lock), one store shard at a time."""
    images = sum(stop - start for start, stop in map(store.shard_range, shards))
    bar = tqdm(total=images, desc="knowledge clusters", unit="img", disable=not progress)
    for shard, (start, stop, arrays) in zip(sorted(shards), store.iter_shards(shards), strict=True):
        cents, ok = shard_knowledge_clusters(
            arrays["tokens"], arrays["attention"], arrays["valid"], start, cache.settings, device
        )
        cache.write_shard(shard, cents, ok)
        bar.update(stop - start)
    bar.close()


def compute_knowledge_clusters(
    store: FeatureStore, settings: ClusterSettings, device: torch.device, progress: bool = True
) -> KnowledgeClusterSet:
    """The knowledge clusters of a dense store computed in memory, shard by shard, and not cached: the
    reference the cache is checked against (tests) and what ``scripts/bench_selection.py`` times. Selectors
    get clusters through the cache (:meth:`geal.features.provider.FeatureProvider.knowledge_clusters`)."""
    features: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    bar = tqdm(total=store.n_images, desc="knowledge clusters", unit="img", disable=not progress)
    for start, stop, arrays in store.iter_shards():
        cents, ok = shard_knowledge_clusters(
            arrays["tokens"], arrays["attention"], arrays["valid"], start, settings, device
        )
        features.append(cents[ok])
        owners.append(np.repeat(np.arange(start, stop, dtype=np.int64), ok.sum(axis=1)))
        bar.update(stop - start)
    bar.close()
    return KnowledgeClusterSet(np.concatenate(features), np.concatenate(owners), store.valid())
