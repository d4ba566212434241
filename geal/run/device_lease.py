"""One job per GPU on a machine: exclusive leases on devices through lock files.

Parallel sweep jobs (joblib launcher, several ``geal-run`` commands, SLURM jobs sharing a node) that each
ask for ``device=auto`` would all take ``cuda:0``. A job instead leases a *slot* of a device: it tries the
devices in turn, starting from a preferred one (``job.num % n_devices``, so a sweep spreads over the GPUs),
and takes the first free slot; when every slot is held it waits. The lock is an ``fcntl.flock`` on a file
named after the device's physical identity (its UUID when torch reports one, else its index in
``CUDA_VISIBLE_DEVICES``), so jobs that see different GPUs as ``cuda:0`` never block each other, and the
kernel drops the lock when a job dies — a crashed job never leaves a device blocked.

Locks live in a machine-local folder (``$GEAL_DEVICE_LOCK_DIR``, default ``<tmp>/geal-device-locks``), never
on a shared file system, where one node's lock would block another node's GPU of the same index.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "GEAL_DEVICE_LOCK_DIR"


@dataclass(frozen=True)
class DeviceSlot:
    """A device as the job addresses it (``cuda:1``) and what identifies the physical device."""

    device: str
    identity: str


@dataclass
class DeviceLease:
    """A held slot; :meth:`release` (or the end of the process) frees it."""

    device: str
    lock_file: Path
    _fd: int | None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            log.info("released %s (%s)", self.device, self.lock_file.name)

    @property
    def held(self) -> bool:
        return self._fd is not None


_current: DeviceLease | None = None


def current_lease() -> DeviceLease | None:
    """The lease this process holds (set by the job's device-lease callback), if any."""
    return _current if _current is not None and _current.held else None


def set_current_lease(lease: DeviceLease | None) -> None:
    global _current
    _current = lease


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "geal-device-locks")


def cuda_slots() -> list[DeviceSlot]:
    """Every CUDA device this process sees, with its physical identity."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    out = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        identity = str(uuid) if uuid else (visible[i] if i < len(visible) else str(i))
        out.append(DeviceSlot(f"cuda:{i}", identity))
    return out


def _lock_name(identity: str, slot: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", identity) + f".slot{slot}.lock"


def _open_lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # created by another user: a read-only descriptor locks just as well
        fd = os.open(path, os.O_RDONLY)
    return fd


def lease_device(
    candidates: Sequence[DeviceSlot],
    preferred: int = 0,
    slots_per_device: int = 1,
    lock_dir: Path | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
) -> DeviceLease:
    """Hold one of ``slots_per_device`` slots of one of ``candidates``, trying ``candidates[preferred % n]``
    first and then the next ones; wait (polling every ``poll_s``) while all are held by other jobs.

    Raises ValueError for no candidates, TimeoutError after ``timeout_s`` (None: wait for ever).
    """
    if not candidates:
        raise ValueError("no device to lease: device=cpu needs no lease")
    if slots_per_device < 1:
        raise ValueError(f"slots_per_device must be ≥ 1, got {slots_per_device}")
    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(lock_dir, 0o1777)  # other users' jobs on this machine lease through the same files
    except PermissionError:
        pass
    n = len(candidates)
    order = [candidates[(preferred + i) % n] for i in range(n)]
    start = time.monotonic()
    last_note = start
    while True:
        for slot in range(slots_per_device):
            for cand in order:
                path = lock_dir / _lock_name(cand.identity, slot)
                fd = _open_lock(path)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                log.info("leased %s (slot %d of %d, %s)", cand.device, slot, slots_per_device, path)
                return DeviceLease(cand.device, path, fd)
        now = time.monotonic()
        if timeout_s is not None and now - start >= timeout_s:
            raise TimeoutError(
                f"no free device after {timeout_s:.0f} s: all {n} device(s) x {slots_per_device} slot(s) are "
                f"held by other jobs (locks in {lock_dir}). Run fewer parallel jobs "
                f"(hydra.launcher.n_jobs) or allow more jobs per device (hydra.callbacks.device_lease."
                f"slots_per_device)."
            )
        if now - last_note >= 60:
            log.info(
                "waiting for a free device (%d x %d slots held; locks in %s)", n, slots_per_device, lock_dir
            )
            last_note = now
        time.sleep(poll_s)
