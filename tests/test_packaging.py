"""The package as a user gets it from ``pip install`` (a built wheel, not this checkout): the configs ship
inside it and the commands run from any folder. Offline: the wheel is built without build isolation and
installed without dependencies into a fresh venv that borrows this environment's packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from downstream.datasets import synthetic

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel built from this checkout (its dependencies come from this
    environment's site-packages through a path file, after the venv's own)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # build from a copy: a build writes build/ and *.egg-info next to its sources
    src.mkdir()
    for name in ("geal", "baselines", "downstream"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "geal" / "conf" / "local" / "default.yaml").unlink(missing_ok=True)  # a user's own settings
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    dist = root / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src],
        root,
    )
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], root)
    python = venv / "bin" / "python"
    wheel = next(dist.glob("geal-*.whl"))
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        root,
    )
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    )
    (purelib / "project_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_installed_commands_find_their_configs_and_select(installed: Path, tmp_path: Path) -> None:
    python = installed / "bin" / "python"
    where = _run([python, "-c", "import geal; print(geal.__file__)"], tmp_path).stdout.strip()
    assert Path(where).is_relative_to(installed), f"geal imported from {where}, not from the installed wheel"
    wheel_files = set(zipfile.ZipFile(next((installed.parent / "dist").glob("geal-*.whl"))).namelist())
    configs = {p.relative_to(REPO).as_posix() for p in (REPO / "geal" / "conf").rglob("*.yaml")}
    configs.discard("geal/conf/local/default.yaml")  # a user's own settings (git-ignored), never shipped
    assert "geal/conf/selector/geal.yaml" in configs and not configs - wheel_files

    job = _run([installed / "bin" / "geal-select", "--cfg", "job"], tmp_path).stdout
    assert "selector:" in job and "name: geal" in job

    synthetic.make_image_folder(tmp_path / "photos")
    proc = _run(
        [
            installed / "bin" / "geal-select",
            "debug=smoke",
            "data=image_folder",
            f"data.root={tmp_path / 'photos'}",
            "selector=coreset_cos",
            "budget=3",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        tmp_path,
    )
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert selection["selector"] == "coreset_cos" and len(set(selection["global_ids"])) == 3, proc.stdout
