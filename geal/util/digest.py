"""Content digests of cache files, streamed (a fixed buffer, whatever the file's size).

``xxh3_64`` (the ``xxhash`` package, a dependency) hashes at memory speed (tens of GB/s), so verifying a
feature store on every read costs little beside reading it; ``blake2b`` (8-byte digest, in the standard
library) is the fallback where ``xxhash`` is not importable. A digest names its algorithm
(``"xxh3_64:<hex>"``), so a file is always verified with the algorithm that wrote its digest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

_xxhash: Any
try:  # pragma: no cover - which branch runs depends on the environment
    import xxhash as _xxhash
except ImportError:  # pragma: no cover
    _xxhash = None

#: read buffer of the streamed digests
CHUNK = 8 << 20


class _Hasher(Protocol):
    def update(self, data: Any, /) -> None: ...

    def hexdigest(self) -> str: ...


def default_algorithm() -> str:
    """The algorithm new digests use: ``xxh3_64`` when ``xxhash`` is importable, else ``blake2b``."""
    return "xxh3_64" if _xxhash is not None else "blake2b"


def _hasher(algorithm: str) -> _Hasher | None:
    if algorithm == "xxh3_64":
        return _xxhash.xxh3_64() if _xxhash is not None else None
    if algorithm == "blake2b":
        return hashlib.blake2b(digest_size=8)
    return None


def file_digest(path: Path, algorithm: str | None = None) -> str:
    """``"<algorithm>:<hex>"`` of the file's bytes, read ``CHUNK`` bytes at a time."""
    algorithm = algorithm or default_algorithm()
    hasher = _hasher(algorithm)
    if hasher is None:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    with open(path, "rb", buffering=0) as fh:
        # a buffer of the file's size up to CHUNK: small files do not pay for zeroing a large one
        buffer = bytearray(max(1, min(CHUNK, os.fstat(fh.fileno()).st_size)))
        view = memoryview(buffer)
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
    return f"{algorithm}:{hasher.hexdigest()}"


def bytes_digest(data: bytes | memoryview, algorithm: str | None = None) -> str:
    """``"<algorithm>:<hex>"`` of ``data``."""
    algorithm = algorithm or default_algorithm()
    hasher = _hasher(algorithm)
    if hasher is None:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def check_file(path: Path, expected: str) -> str | None:
    """None when the file's digest is ``expected``; else why not (one phrase)."""
    algorithm, _, _ = str(expected).partition(":")
    if _hasher(algorithm) is None:
        return f"its digest uses {algorithm!r}, which this environment cannot compute"
    try:
        found = file_digest(path, algorithm)
    except OSError as err:
        return f"it cannot be read ({err})"
    return None if found == expected else f"its content does not match its digest ({found} != {expected})"


def arrays_digest(arrays: list[Any], algorithm: str | None = None) -> str:
    """``"<algorithm>:<hex>"`` of the bytes of numpy arrays, in order (C-contiguous copies only where an
    array is not)."""
    import numpy as np

    algorithm = algorithm or default_algorithm()
    hasher = _hasher(algorithm)
    if hasher is None:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    for arr in arrays:
        hasher.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data)
    return f"{algorithm}:{hasher.hexdigest()}"


def known_algorithm(digest: str) -> bool:
    """Whether this environment can compute the algorithm of ``digest``."""
    return _hasher(str(digest).partition(":")[0]) is not None
