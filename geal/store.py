"""On-disk feature store: sharded, memory-mapped on read, written atomically, resumable.

Layout of one store (a directory under the cache dir, never inside a dataset folder)::

    <cache_dir>/features/<backbone>-<pool>-<key hash>/
        manifest.json           what the store holds (key fields, version, sizes); checked on open
        shard_00000/            images [0, shard_size)
            tokens.npy          (n, N, D) fp16 dense tokens (fp32 if fp16 would overflow)
            attention.npy       (n, H, N) fp32 per-head importance, rows sum to 1
            global.npy          (n, D')   fp32 global feature
            valid.npy           (n,)      bool, False for images skipped as unreadable
            meta.json           range, dtypes, skipped files
        shard_00001/ ...
        clusters/<hash>.npz     second stage: knowledge clusters for one (τ, K, k-means...) setting

A shard directory is written under a temporary name and renamed into place when complete, so a shard
that exists is complete; an interrupted extraction resumes at the first missing shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: bump when the meaning of stored data changes (old stores are then ignored, not misread)
STORE_VERSION = 1
ARRAYS = ("tokens", "attention", "global", "valid")
FP16_MAX = 65504.0


class StoreMismatchError(RuntimeError):
    """The manifest on disk does not describe what this run expects."""


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@dataclass(frozen=True)
class ShardData:
    """Arrays of one shard (numpy): tokens (n,N,D), attention (n,H,N), global (n,D'), valid (n,)."""

    tokens: np.ndarray
    attention: np.ndarray
    global_feature: np.ndarray
    valid: np.ndarray
    skipped: list[dict[str, str]]


class FeatureStore:
    """Dense tokens, importance maps and global features of every image of one pool for one backbone setting.

    ``key`` holds everything that determines the stored values (backbone config and weights identity,
    preprocessing, layers, pool identity); its hash names the directory and the manifest repeats it, so a
    store is only ever read by a run that asks for exactly the same thing.
    """

    def __init__(self, directory: Path, key: dict[str, Any], n_images: int, shard_size: int) -> None:
        self.directory = Path(directory)
        self.key = key
        self.n_images = int(n_images)
        self.shard_size = int(shard_size)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, cache_dir: Path, key: dict[str, Any], n_images: int, shard_size: int, label: str
    ) -> FeatureStore:
        """Open (or create) the store for ``key`` under ``cache_dir/features``; check its manifest."""
        if n_images <= 0:
            raise ValueError("cannot build a feature store for an empty pool")
        safe_label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        directory = Path(cache_dir).expanduser() / "features" / f"{safe_label}-{stable_hash(key)}"
        manifest = directory / "manifest.json"
        expected = {"version": STORE_VERSION, "key": key, "n_images": n_images}
        if manifest.exists():
            try:
                found = json.loads(manifest.read_text())
            except json.JSONDecodeError as err:
                raise StoreMismatchError(
                    f"Feature store manifest {manifest} is unreadable ({err}); "
                    f"delete {directory} to rebuild it."
                ) from err
            # round-trip the expectation through JSON so tuples/lists compare equal
            want = json.loads(json.dumps(expected, default=str))
            got = {k: found.get(k) for k in want}
            if got != want:
                diff = sorted(k for k in want if got[k] != want[k])
                raise StoreMismatchError(
                    f"Feature store {directory} was written for something else "
                    f"(differs in: {', '.join(diff)}; "
                    f"store version {found.get('version')} vs {STORE_VERSION}). Delete that directory to "
                    f"re-extract, or point paths.cache_dir somewhere else."
                )
            shard_size = int(found["shard_size"])
        else:
            atomic_write_json(manifest, {**expected, "shard_size": shard_size, "label": label})
        return cls(directory, key, n_images, shard_size)

    # ------------------------------------------------------------------ shards
    @property
    def n_shards(self) -> int:
        return -(-self.n_images // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_images)

    def shard_dir(self, shard: int) -> Path:
        return self.directory / f"shard_{shard:05d}"

    def missing_shards(self) -> list[int]:
        return [s for s in range(self.n_shards) if not (self.shard_dir(s) / "meta.json").exists()]

    @property
    def complete(self) -> bool:
        return not self.missing_shards()

    def write_shard(self, shard: int, data: ShardData) -> None:
        """Write one complete shard atomically (temporary directory renamed into place)."""
        start, stop = self.shard_range(shard)
        n = stop - start
        for name, arr in (
            ("tokens", data.tokens),
            ("attention", data.attention),
            ("global", data.global_feature),
            ("valid", data.valid),
        ):
            if arr.shape[0] != n:
                raise ValueError(f"shard {shard}: {name} has {arr.shape[0]} rows, expected {n}")
        tokens = data.tokens.astype(np.float32, copy=False)
        fits_fp16 = bool(np.isfinite(tokens).all()) and float(np.abs(tokens).max(initial=0.0)) < FP16_MAX
        arrays = {
            "tokens": tokens.astype(np.float16 if fits_fp16 else np.float32),
            "attention": data.attention.astype(np.float32),
            "global": data.global_feature.astype(np.float32),
            "valid": data.valid.astype(bool),
        }
        final = self.shard_dir(shard)
        tmp = Path(tempfile.mkdtemp(dir=self.directory, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            for name, arr in arrays.items():
                np.save(tmp / f"{name}.npy", arr)
            meta = {
                "start": start,
                "stop": stop,
                "skipped": data.skipped,
                "dtypes": {k: str(v.dtype) for k, v in arrays.items()},
            }
            # meta.json last: its presence marks the shard complete
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.rename(tmp, final)
            except OSError:
                if (final / "meta.json").exists():  # another process finished the same shard first
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._cache.pop(shard, None)

    def remove_stale_temporaries(self) -> None:
        """Delete temporary shard directories left by an interrupted run."""
        for tmp in self.directory.glob(".shard_*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def _shard_arrays(self, shard: int) -> dict[str, np.ndarray]:
        if shard not in self._cache:
            directory = self.shard_dir(shard)
            if not (directory / "meta.json").exists():
                raise FileNotFoundError(
                    f"shard {directory} is missing: the store is incomplete (run extraction)"
                )
            start, stop = self.shard_range(shard)
            arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
            for name, arr in arrays.items():
                if arr.shape[0] != stop - start:
                    raise StoreMismatchError(
                        f"{directory / (name + '.npy')} has {arr.shape[0]} rows, expected {stop - start}: "
                        f"the store is damaged; delete {self.directory} to re-extract."
                    )
            self._cache[shard] = arrays
        return self._cache[shard]

    def iter_shards(self) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Yield (start, stop, memory-mapped arrays) per shard, in global-id order."""
        for shard in range(self.n_shards):
            start, stop = self.shard_range(shard)
            yield start, stop, self._shard_arrays(shard)

    def _concat(self, name: str) -> np.ndarray:
        return np.concatenate([arrays[name] for _, _, arrays in self.iter_shards()], axis=0)

    @property
    def token_dim(self) -> int:
        return int(self._shard_arrays(0)["tokens"].shape[-1])

    def global_features(self) -> np.ndarray:
        """(n_images, D') float32 global features."""
        return self._concat("global")

    def valid(self) -> np.ndarray:
        """(n_images,) bool: False for images skipped as unreadable."""
        return self._concat("valid")

    def skipped(self) -> list[dict[str, str]]:
        """The unreadable images recorded during extraction (global id, source, error)."""
        out: list[dict[str, str]] = []
        for shard in range(self.n_shards):
            out.extend(json.loads((self.shard_dir(shard) / "meta.json").read_text())["skipped"])
        return out

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())
