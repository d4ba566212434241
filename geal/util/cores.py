"""How many CPU cores this process may really use.

``os.cpu_count()`` counts the machine's cores. A batch job or container usually gets fewer: a CPU affinity
mask (Slurm, ``taskset``) and/or a CPU-time quota (Kubernetes and Docker CPU limits, systemd
``CPUQuota``), which leave the cores visible but throttle the process once it uses more than its share.
Sizing loader workers from the machine's count there starts more processes than the job can run at once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_quota", "usable_cores"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = _CGROUP_ROOT) -> float | None:
    """CPUs' worth of time per period that the cgroup (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``) grants, or None when there is no quota or it cannot be read."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = _CGROUP_ROOT) -> int:
    """Cores this process may use: those of its affinity mask, at most its cgroup CPU quota rounded up
    (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)
