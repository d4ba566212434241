"""Cross-process (and cross-machine, on a file system with working fcntl locks) exclusive file locks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file beside the data) while the block runs; says when it waits.

    Works across processes and across machines on a file system with working ``fcntl`` locks (NFSv4,
    Lustre, GPFS).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another job that is %s (lock %s)", what, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
