"""Issue 19 end to end (geal-select subprocesses, tiny ViT): skipped images on a cache hit, validated
settings, one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from downstream.datasets import synthetic
from tests.test_cli import geal_select, run_dir


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_integrity")
    synthetic.make_image_folder(root / "data" / "folder")
    broken = root / "data" / "folder" / "circle" / "circle_002.jpg"
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated JPEG
    return root


def folder(tmp: Path) -> str:
    return f"data.root={tmp / 'data' / 'folder'}"


def test_skipped_images_are_reported_on_every_run_and_raise_on_a_hit(tmp: Path) -> None:
    first = geal_select("data=image_folder", folder(tmp), "data.on_error=skip", "budget=3", tmp=tmp)
    hit = geal_select("data=image_folder", folder(tmp), "data.on_error=skip", "budget=3", tmp=tmp)
    for proc in (first, hit):
        info = json.loads((run_dir(proc) / "run_info.json").read_text())
        assert [s["image_id"] for s in info["features"]["skipped_images"]] == ["circle/circle_002.jpg"]
        assert "skipped" in proc.stdout and "circle_002.jpg" in proc.stdout
    assert json.loads((run_dir(hit) / "run_info.json").read_text())["features"]["extraction_cache_hit"]
    again = geal_select("data=image_folder", folder(tmp), "budget=3", tmp=tmp, check=False)
    assert again.returncode == 1
    assert "circle_002.jpg" in again.stderr and "Traceback" not in again.stderr


def test_random_never_picks_the_unreadable_image(tmp: Path) -> None:
    proc = geal_select(
        "data=image_folder", folder(tmp), "data.on_error=skip", "selector=random", "budget=14", tmp=tmp
    )
    ids = (run_dir(proc) / "selected_ids.txt").read_text().split()
    assert len(ids) == 14 and "circle/circle_002.jpg" not in ids


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.on_error=raisee"], "data.on_error"),
        (["+tau=0.3"], "tau"),
        (["+extraction.tau=0.3"], "tau"),
    ],
)
def test_bad_settings_fail_at_once(tmp: Path, overrides: list[str], message: str) -> None:
    proc = geal_select("data=voc0712", *overrides, tmp=tmp, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", ["{not json", ""])
def test_a_bad_labeled_file_is_an_error_naming_it(tmp: Path, content: str) -> None:
    path = tmp / f"labeled_{len(content)}.json"
    path.write_text(content)
    out = tmp / f"labeled_run_{len(content)}"
    proc = geal_select(
        "data=image_folder",
        folder(tmp),
        "data.on_error=skip",
        f"labeled={path}",
        f"hydra.run.dir={out}",
        tmp=tmp,
        check=False,
    )
    assert proc.returncode == 1
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr
    assert str(path) in json.loads((out / "failure.json").read_text())["message"]
