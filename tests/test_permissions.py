"""Outputs and caches follow the user's umask (they are shared: annotation tools, colleagues, a cluster's
shared cache), although they are written through private temporary files and folders first."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from geal.util.io import atomic_write_bytes, atomic_write_json
from tests.conftest import CountingFactory, SquaresPool
from tests.test_store import provider


@pytest.fixture
def group_writable_umask() -> Iterator[int]:
    old = os.umask(0o002)
    try:
        yield 0o002
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_umask_mode(tmp_path: Path, group_writable_umask: int) -> None:
    atomic_write_bytes(tmp_path / "selected_ids.txt", b"1\n2\n")
    atomic_write_json(tmp_path / "out" / "selection.json", {"global_ids": [1, 2]})
    assert mode(tmp_path / "selected_ids.txt") == 0o664
    assert mode(tmp_path / "out" / "selection.json") == 0o664
    assert mode(tmp_path / "out") == 0o775


def test_feature_store_shards_are_readable_by_others(
    squares: SquaresPool, cache_dir: Path, group_writable_umask: int
) -> None:
    store = provider(squares, CountingFactory(), cache_dir).store()
    shard = store.shard_dir(0)
    assert mode(shard) == 0o775
    assert {mode(f) for f in shard.iterdir()} == {0o664}
    assert mode(store.directory / "manifest.json") == 0o664
