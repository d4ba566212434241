"""The token store (first feature stage): sharded, memory-mapped on read, written atomically, resumable.

Layout of one store (a directory under the cache dir, never inside a dataset folder)::

    <cache_dir>/features/<backbone>-<pool>-<key hash>/
        manifest.json           what the store holds (key fields, version, sizes, contents); checked on open
        shard_00000/            images [0, shard_size)
            tokens.npy          (n, N, D) fp16 dense tokens (fp32 if fp16 would overflow)
            attention.npy       (n, H, N) fp32 per-head importance (ViT: raw CLS→patch rows, sum ≤ 1)
            global.npy          (n, D')   fp32 global feature
            valid.npy           (n,)      bool, False for images skipped as unreadable
            meta.json           range, arrays, dtypes, skipped files, a digest per array, the images'
                                fingerprints (size, mtime_ns) when they are files
        shard_00001/ ...
        .extract.lock           held by the job (or rank 0 of the distributed job) filling the store

``contents`` says which arrays a store keeps: ``dense`` (all four) or ``global`` (only ``global.npy`` and
``valid.npy``: for pools too large to keep dense tokens, ``extraction.cache_mode=clusters_only``). A
``global`` store has ``"contents": "global"`` in its key, so it never shares a directory with a dense one;
a dense store's key is what it always was apart from its version. STORE_VERSION 2: a ViT's attention rows
are the raw CLS→patch softmax mass of each head (version 1 rescaled each head to sum 1, which changed the
head average and so the kept patches); version-1 stores are never opened (the version is part of the key,
so they sit in other directories).

The store knows nothing of what is derived from it: the second stage (knowledge clusters) keeps its own
cache in a ``clusters/`` folder of the store's directory, see :mod:`geal.features.clusters`.

A shard directory is written under a temporary name and renamed into place when complete, so a shard
that exists is complete; an interrupted extraction resumes at the first missing shard. Jobs that share a
cache dir (sweeps, several nodes on one file system) take the store's file lock before filling it, so it is
written once; the others wait and then read it.

Integrity (docs/design.md §3.1): each array's file digest (:mod:`geal.util.digest`, xxh3_64) is written into
the shard's ``meta.json``, which is written last, inside the temporary directory that is renamed into place:
digests and data appear together. An array is verified (streamed) the first time this object reads it; a
shard whose meta is unreadable, has no digests (written by an older version: never trusted, re-extracted), or
whose array does not match its digest raises :class:`DamagedShardError`, and the provider moves it to
``quarantine/`` inside the store (:meth:`FeatureStore.quarantine`, never deleted) and re-extracts it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from geal.util.digest import check_file, file_digest
from geal.util.io import atomic_write_json, shared_dir_mode, stable_hash
from geal.util.locks import file_lock

log = logging.getLogger(__name__)

#: bump when the meaning of stored data changes (old stores are then ignored, not misread)
STORE_VERSION = 2
FP16_MAX = 65504.0

StoreContents = Literal["dense", "global"]
#: the arrays each kind of store keeps per shard
ARRAYS: dict[str, tuple[str, ...]] = {
    "dense": ("tokens", "attention", "global", "valid"),
    "global": ("global", "valid"),
}


class StoreMismatchError(RuntimeError):
    """The manifest on disk does not describe what this run expects."""


class DamagedFileError(StoreMismatchError):
    """A cache file of shard ``shard`` under ``directory`` is damaged; the subclass says what the file is
    (``what``) and how it is made again (``remedy``, formatted with ``directory``)."""

    what = "cache file"
    remedy = "delete {directory} to make it again."

    def __init__(self, directory: Path, shard: int, path: Path, reason: str) -> None:
        self.directory = directory
        self.shard = shard
        self.path = path
        self.reason = reason
        remedy = self.remedy.format(directory=directory)
        super().__init__(f"{self.what} {path} is damaged ({reason}): {remedy}")


class DamagedShardError(DamagedFileError):
    """A shard of the store is damaged (unreadable meta, no digests, an array that does not match its
    digest or has the wrong shape): the provider quarantines and re-extracts it."""

    what = "feature store shard"
    remedy = (
        "it is re-extracted automatically when the images are available; else delete {directory} and "
        "extract again."
    )


class SkippedImageError(OSError):
    """``data.on_error=raise`` on a store whose extraction skipped unreadable images: the error the first
    skipped image gave when it was extracted (what a fresh run with ``raise`` stops with)."""


#: (size in bytes, mtime in ns) of an image file; None where the image is not a file
Fingerprint = tuple[int, int] | None


def fingerprint(path: Path | None) -> Fingerprint:
    """The cheap per-image fingerprint the store keeps: size and modification time (one ``stat``)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (int(st.st_size), int(st.st_mtime_ns))


#: a shard's array: numpy in the store; a torch tensor on the extraction device while the shard is in the
#: extraction loop (see :mod:`geal.features.extract`)
ShardArray = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class ShardData:
    """Arrays of one shard: tokens (n,N,D), attention (n,H,N), global (n,D'), valid (n,) (tokens and
    attention None where not kept). What :meth:`FeatureStore.write_shard` takes is numpy; between the
    forward and the writer tokens, attention and global may still be tensors on the extraction device."""

    tokens: ShardArray | None
    attention: ShardArray | None
    global_feature: ShardArray
    valid: np.ndarray
    skipped: list[dict[str, str]]


def fp16_if_in_range(arr: ShardArray) -> ShardArray:
    """How tokens (and compact knowledge clusters) are stored: fp16 unless a value is non-finite or beyond
    fp16's range (then fp32). A tensor stays on its device: one min/max pass, no temporary, one wait for
    the result; a bf16 or fp32 tensor in range is rounded to fp16 as numpy would round its float32 values."""
    if isinstance(arr, torch.Tensor):
        if arr.numel() == 0:
            return arr.half()
        lo, hi = (float(v) for v in torch.aminmax(arr))  # NaN and ±inf propagate into lo/hi
        finite = math.isfinite(lo) and math.isfinite(hi)
        if arr.dtype == torch.float16:
            return arr if finite else arr.float()
        return arr.half() if finite and max(-lo, hi) < FP16_MAX else arr.float()
    if arr.dtype == np.float16:  # already fp16 (the extractor converts on the device): finite is enough
        exponent = arr.view(np.uint16) & 0x7C00  # integer test: numpy's fp16 ufuncs are slow
        return arr if not bool((exponent == 0x7C00).any()) else arr.astype(np.float32)
    arr = arr.astype(np.float32, copy=False)
    fits = bool(np.isfinite(arr).all()) and float(np.abs(arr).max(initial=0.0)) < FP16_MAX
    return arr.astype(np.float16 if fits else np.float32)


class FeatureStore:
    """Dense tokens, importance maps and global features (or, ``contents="global"``, only the global
    features) of every image of one pool for one backbone setting.

    ``key`` holds everything that determines the stored values (backbone config and weights identity,
    preprocessing, layers, pool identity, and the contents when not dense); its hash names the directory and
    the manifest repeats it, so a store is only ever read by a run that asks for exactly the same thing.
    """

    def __init__(
        self,
        directory: Path,
        key: dict[str, Any],
        n_images: int,
        shard_size: int,
        contents: StoreContents = "dense",
    ) -> None:
        self.directory = Path(directory)
        self.key = key
        self.n_images = int(n_images)
        self.shard_size = int(shard_size)
        self.contents: StoreContents = contents
        self._cache: dict[int, Mapping[str, np.ndarray]] = {}
        #: (shard, array) verified against its digest by this object, and the metas it read
        self._verified: set[tuple[int, str]] = set()
        self._metas: dict[int, dict[str, Any]] = {}
        #: the pool's per-image fingerprints (set by the provider), recorded in each shard written
        self.fingerprints: Sequence[Fingerprint] | None = None
        #: False only to measure what verification costs (scripts/bench_verify.py)
        self.verify_reads = True

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        cache_dir: Path,
        key: dict[str, Any],
        n_images: int,
        shard_size: int,
        label: str,
        contents: StoreContents = "dense",
    ) -> FeatureStore:
        """Open (or create) the store for ``key`` (and ``contents``) under ``cache_dir/features``; check its
        manifest. ``label`` starts the directory's name (backbone and pool, for people)."""
        if n_images <= 0:
            raise ValueError("cannot build a feature store for an empty pool")
        if contents not in ARRAYS:
            raise ValueError(f"store contents must be one of {list(ARRAYS)}, got {contents!r}")
        if contents != "dense":  # a different store: what it holds is not what a dense store holds
            key = {**key, "contents": contents}
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
            atomic_write_json(
                manifest, {**expected, "shard_size": shard_size, "label": label, "contents": contents}
            )
        return cls(directory, key, n_images, shard_size, contents)

    def lock(self, what: str = "extracting features") -> contextlib.AbstractContextManager[None]:
        """The store's cross-process lock (see :func:`file_lock`)."""
        return file_lock(self.directory / ".extract.lock", f"{what} into {self.directory}")

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

    def complete_shards(self) -> list[int]:
        return [s for s in range(self.n_shards) if (self.shard_dir(s) / "meta.json").exists()]

    @property
    def complete(self) -> bool:
        return not self.missing_shards()

    @property
    def array_names(self) -> tuple[str, ...]:
        return ARRAYS[self.contents]

    @property
    def keeps_tokens(self) -> bool:
        """Whether the store keeps dense tokens and attention maps (a ``dense`` store)."""
        return "tokens" in self.array_names

    def kept(self, data: ShardData) -> ShardData:
        """``data`` without the arrays this store does not keep (so they are never copied to the host)."""
        return data if self.keeps_tokens else replace(data, tokens=None, attention=None)

    def write_shard(self, shard: int, data: ShardData) -> None:
        """Write one complete shard atomically (temporary directory renamed into place); arrays the store
        does not keep are ignored."""
        start, stop = self.shard_range(shard)
        n = stop - start
        given = {
            "tokens": data.tokens,
            "attention": data.attention,
            "global": data.global_feature,
            "valid": data.valid,
        }
        for name in self.array_names:
            arr = given[name]
            if arr is None:
                raise ValueError(f"shard {shard}: a {self.contents} store needs '{name}', which is missing")
            if arr.shape[0] != n:
                raise ValueError(f"shard {shard}: {name} has {arr.shape[0]} rows, expected {n}")
        convert = {
            "tokens": fp16_if_in_range,
            "attention": lambda a: a.astype(np.float32),
            "global": lambda a: a.astype(np.float32),
            "valid": lambda a: a.astype(bool),
        }
        arrays = {name: convert[name](given[name]) for name in self.array_names}
        final = self.shard_dir(shard)
        tmp = Path(tempfile.mkdtemp(dir=self.directory, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            tmp.chmod(shared_dir_mode())
            digests = {}
            for name, arr in arrays.items():
                np.save(tmp / f"{name}.npy", arr)
                digests[name] = file_digest(tmp / f"{name}.npy")  # read back from the page cache
            fps = self.fingerprints
            meta = {
                "start": start,
                "stop": stop,
                "skipped": data.skipped,
                "arrays": list(arrays),
                "dtypes": {k: str(v.dtype) for k, v in arrays.items()},
                "digests": digests,
                "fingerprints": [fps[i] for i in range(start, stop)] if fps is not None else None,
            }
            # meta.json last: its presence marks the shard complete
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.rename(tmp, final)
            except OSError:
                if (final / "meta.json").exists():  # another process finished the same shard first
                    shutil.rmtree(tmp, ignore_errors=True)
                elif final.exists():  # a partial folder (no meta.json) must never block a rerun
                    self.quarantine(shard, "incomplete: no meta.json")
                    os.rename(tmp, final)
                else:
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._cache.pop(shard, None)
        self._verified = {v for v in self._verified if v[0] != shard}
        self._metas.pop(shard, None)

    def quarantine(self, shard: int, reason: str, quiet: bool = False) -> Path | None:
        """Move shard ``shard``'s folder to ``quarantine/`` inside the store (kept for inspection, never
        deleted; delete the folder once inspected) and say so (``quiet``: at debug level, for a caller that
        says it once for many shards); None if it was gone already."""
        source = self.shard_dir(shard)
        self._cache.pop(shard, None)
        self._verified = {v for v in self._verified if v[0] != shard}
        self._metas.pop(shard, None)
        if not source.exists():
            return None
        folder = self.directory / "quarantine"
        folder.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = folder / f"{source.name}-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = folder / f"{source.name}-{stamp}-{n}"
        try:
            os.rename(source, target)
        except FileNotFoundError:  # another job moved it first
            return None
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "feature store shard %s: %s; moved to %s, it is extracted again",
            source,
            reason,
            target,
        )
        return target

    def remove_stale_temporaries(self) -> None:
        """Delete temporary shard directories left by an interrupted run."""
        for tmp in self.directory.glob(".shard_*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def read_meta(self, shard: int) -> dict[str, Any]:
        """Shard ``shard``'s ``meta.json`` (a :class:`DamagedShardError` if it cannot be read), read once
        per object."""
        if shard in self._metas:
            return self._metas[shard]
        path = self.shard_dir(shard) / "meta.json"
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"shard {self.shard_dir(shard)} is missing: the store is incomplete (run extraction)"
            ) from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DamagedShardError(self.directory, shard, path, f"unreadable meta.json: {err}") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("skipped"), list):
            raise DamagedShardError(self.directory, shard, path, "meta.json is not a shard's meta")
        self._metas[shard] = meta
        return meta

    def verify(self, shard: int, name: str, meta: dict[str, Any] | None = None) -> None:
        """Check array ``name`` of shard ``shard`` against the digest in its meta (streamed; once per
        object); a :class:`DamagedShardError` names the file."""
        if (shard, name) in self._verified or not self.verify_reads:
            return
        meta = meta if meta is not None else self.read_meta(shard)
        path = self.shard_dir(shard) / f"{name}.npy"
        digest = (meta.get("digests") or {}).get(name)
        if digest is None:
            raise DamagedShardError(
                self.directory, shard, path, "no digest: written by an older version, so not trusted"
            )
        problem = check_file(path, digest)
        if problem is not None:
            raise DamagedShardError(self.directory, shard, path, problem)
        self._verified.add((shard, name))

    def check(self, names: Sequence[str] | None = None) -> dict[int, DamagedShardError]:
        """The damaged shards among the complete ones, verifying the arrays ``names`` (default: the small
        ones, global features and validity; tokens and attention are verified when read)."""
        names = tuple(names) if names is not None else ("global", "valid")
        bad: dict[int, DamagedShardError] = {}
        for shard in self.complete_shards():
            try:
                meta = self.read_meta(shard)
                for name in names:
                    if name in self.array_names:
                        self.verify(shard, name, meta)
            except DamagedShardError as err:
                bad[shard] = err
        return bad

    def stale_images(self, fingerprints: Sequence[Fingerprint]) -> dict[int, int]:
        """Shard → how many of its images changed since it was written (size or mtime differs), for the
        complete shards whose meta records fingerprints."""
        out: dict[int, int] = {}
        for shard in self.complete_shards():
            try:
                recorded = self.read_meta(shard).get("fingerprints")
            except DamagedShardError:
                continue  # check() reports it
            if recorded is None:
                continue
            start, stop = self.shard_range(shard)
            now = [list(f) if f is not None else None for f in fingerprints[start:stop]]
            changed = sum(1 for a, b in zip(recorded, now, strict=False) if a != b)
            if changed:
                out[shard] = changed
        return out

    def _shard_arrays(self, shard: int, keep: bool = True) -> Mapping[str, np.ndarray]:
        """The memory-mapped arrays of one shard, each verified against its digest when first read;
        ``keep=False`` does not keep the maps open afterwards (a pass over a large store then never holds
        more than one shard's pages resident)."""
        if shard in self._cache:
            return self._cache[shard]
        meta = self.read_meta(shard)
        arrays = _ShardArrays(self, shard, meta)
        if keep:
            self._cache[shard] = arrays
        return arrays

    def _load_array(self, shard: int, name: str, meta: dict[str, Any]) -> np.ndarray:
        directory = self.shard_dir(shard)
        path = directory / f"{name}.npy"
        self.verify(shard, name, meta)
        start, stop = self.shard_range(shard)
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DamagedShardError(self.directory, shard, path, f"unreadable: {err}") from err
        if arr.shape[0] != stop - start:
            raise DamagedShardError(
                self.directory, shard, path, f"{arr.shape[0]} rows, expected {stop - start}"
            )
        return arr

    def iter_shards(
        self, shards: Sequence[int] | None = None
    ) -> Iterator[tuple[int, int, Mapping[str, np.ndarray]]]:
        """Yield (start, stop, memory-mapped arrays) per shard (of ``shards`` only, when given), in
        global-id order (the maps of a shard are released when the next one is read)."""
        for shard in range(self.n_shards) if shards is None else sorted(shards):
            start, stop = self.shard_range(shard)
            yield start, stop, self._shard_arrays(shard, keep=False)

    def _concat(self, name: str) -> np.ndarray:
        return np.concatenate([arrays[name] for _, _, arrays in self.iter_shards()], axis=0)

    @property
    def token_dim(self) -> int:
        """D of the dense tokens (a dense store)."""
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
            out.extend(self.read_meta(shard)["skipped"])
        return out

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())


class _ShardArrays(Mapping[str, np.ndarray]):
    """A shard's arrays, each memory-mapped and verified against its digest when first asked for (so a
    cache hit that reads only global features never reads the tokens)."""

    def __init__(self, store: FeatureStore, shard: int, meta: dict[str, Any]) -> None:
        self.store = store
        self.shard = shard
        self.meta = meta
        self.names = tuple(meta.get("arrays", ARRAYS["dense"]))
        self._loaded: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._loaded:
            if name not in self.names:
                raise KeyError(name)
            self._loaded[name] = self.store._load_array(self.shard, name, self.meta)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
