"""``~`` in a path setting means the home folder, as in a shell: in a config file (``cache_dir: ~/cache`` in
``local/default.yaml``) or a quoted override (``"data.root='~/photos'"``: Hydra's override grammar takes a
``~`` only inside quotes; ``data.root=$HOME/photos`` lets the shell expand it instead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from downstream.datasets import synthetic
from geal.run.builders import expand_home_paths
from tests.test_cli import geal_select, read_selection, run_dir
from tests.test_configs import compose_root


def test_settings_starting_with_a_tilde_get_the_home_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    overrides = ("data=image_folder", "data.root='~/photos'", "paths.cache_dir='~'", "budget=3")
    cfg = compose_root("select", *overrides)
    before_output = cfg.paths.output_dir
    expand_home_paths(cfg)
    assert cfg.data.root == str(tmp_path / "photos")
    assert cfg.paths.cache_dir == str(tmp_path)
    assert cfg.paths.output_dir == before_output and cfg.budget == 3  # other settings as they were


def test_geal_select_reads_an_image_folder_given_with_a_tilde(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    synthetic.make_image_folder(tmp_path / "home" / "photos")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    proc = geal_select(
        "data=image_folder", "data.root='~/photos'", "selector=coreset_cos", "budget=3", tmp=tmp_path
    )
    selection = read_selection(run_dir(proc))
    assert selection["pool_identity"]["n_images"] == 15 and len(set(selection["global_ids"])) == 3
