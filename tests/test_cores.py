"""Usable CPU cores: the affinity mask, capped by a cgroup (v1 or v2) CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from geal.util.cores import cgroup_cpu_quota, usable_cores


def v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def v1(root: Path, quota: str, period: str) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


def test_cgroup_quota_v2_v1_none_and_unreadable(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(v2(tmp_path / "a", "250000 100000\n")) == 2.5
    assert cgroup_cpu_quota(v2(tmp_path / "b", "max 100000\n")) is None
    assert cgroup_cpu_quota(v1(tmp_path / "c", "50000\n", "100000\n")) == 0.5
    assert cgroup_cpu_quota(v1(tmp_path / "d", "-1\n", "100000\n")) is None
    assert cgroup_cpu_quota(v2(tmp_path / "e", "garbage")) is None
    assert cgroup_cpu_quota(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("affinity", "quota", "want"),
    [(8, None, 8), (8, "250000 100000", 3), (2, "800000 100000", 2), (8, "10000 100000", 1)],
)
def test_usable_cores_is_the_affinity_capped_by_the_quota(
    tmp_path, monkeypatch, affinity, quota, want
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(affinity)), raising=False)
    root = v2(tmp_path, quota) if quota else tmp_path
    assert usable_cores(root) == want
