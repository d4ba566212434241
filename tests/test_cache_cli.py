"""geal-cache on a real cache dir: what it lists, what a filter removes, that a store in use is kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from filelock import FileLock

from geal.run.cache_cli import default_cache_dir, main, stores
from tests.conftest import CountingFactory, SquaresPool
from tests.test_configs import compose_root
from tests.test_store import provider


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    cache_dir = tmp_path / "cache"
    provider(SquaresPool(8), CountingFactory(), cache_dir).store()
    provider(SquaresPool(12, seed=1), CountingFactory(), cache_dir).store()
    (cache_dir / "weights").mkdir()
    (cache_dir / "weights" / "w.safetensors").write_bytes(b"0" * 2048)
    return cache_dir


def test_list_shows_each_store_with_pool_backbone_images_and_size(cache: Path, capsys) -> None:
    assert main(["--dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"cache: {cache}"
    rows = [line.split() for line in out.splitlines() if line.startswith("squares ")]
    assert sorted(int(r[2]) for r in rows) == [8, 12] and {r[1] for r in rows} == {"tiny"}
    assert "2 feature store(s)" in out and "weights/: 0.0 MiB" in out
    total = sum(e.size for e in stores(cache))
    assert total == sum(p.stat().st_size for p in (cache / "features").rglob("*") if p.is_file())


def test_remove_takes_only_what_every_filter_matches(cache: Path, capsys) -> None:
    old, new = sorted(stores(cache), key=lambda e: e.n_images or 0)
    past = time.time() - 40 * 86400
    for root, dirs, files in os.walk(old.directory):
        for name in [*dirs, *files]:
            os.utime(os.path.join(root, name), (past, past))
    os.utime(old.directory, (past, past))

    assert main(["--dir", str(cache), "remove", "--older-than", "30", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and old.directory.exists()
    assert main(["--dir", str(cache), "remove", "--pool", "squares", "--older-than", "30"]) == 0
    assert not old.directory.exists() and new.directory.exists()
    assert main(["--dir", str(cache), "remove", "--backbone", "other"]) == 0
    assert [e.directory for e in stores(cache)] == [new.directory]


def test_a_store_being_written_is_skipped(cache: Path, capsys) -> None:
    entry = stores(cache)[0]
    with FileLock(str(entry.directory / ".extract.lock")):
        main(["--dir", str(cache), "remove", "--pool", "squares"])
    out = capsys.readouterr().out
    assert f"skipped {entry.directory}" in out and entry.directory.exists()


def test_remove_without_a_filter_is_refused(cache: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--dir", str(cache), "remove"])
    assert exit_info.value.code == 2 and "at least one of --pool" in capsys.readouterr().err
    assert len(stores(cache)) == 2


def test_the_default_dir_is_the_configs_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GEAL_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert str(default_cache_dir()) == compose_root("select").paths.cache_dir
    monkeypatch.setenv("GEAL_CACHE_DIR", str(tmp_path / "shared"))
    assert str(default_cache_dir()) == compose_root("select").paths.cache_dir
