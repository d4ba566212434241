"""Every config file composes, every _target_ accepts its keys, and typos fail at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from geal.cli import CONFIG_DIR
from geal.config import POOL_RUN_KEYS, check_target_kwargs, register_schemas

register_schemas()

INSTANTIATED = {"data": POOL_RUN_KEYS, "backbone": (), "selector": ()}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose_select(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="select",
            overrides=["paths.data_dir=/data", *overrides],
            return_hydra_config=True,
        )


CASES = [f"{group}={name}" for group in ("data", "backbone", "selector") for name in options(group)]
CASES += [f"experiment={name}" for name in options("experiment")]
CASES += [f"debug={name}" for name in options("debug")]
CASES += [f"hydra/launcher={name}" for name in options("hydra/launcher")]


def test_every_group_has_options() -> None:
    assert {"voc0712", "cityscapes", "pets", "mnist5k", "fashion_mnist", "image_folder"} <= set(
        options("data")
    )
    assert {"dino_vits16", "imgfocus_vits14", "efficientnet_lite0", "tiny_vit"} <= set(options("backbone"))
    assert {"geal", "random", "coreset_cos", "coreset_euc"} <= set(options("selector"))
    assert {"local", "parallel"} <= set(options("hydra/launcher"))


@pytest.mark.parametrize("override", CASES)
def test_composes_and_targets_accept_keys(override: str) -> None:
    cfg = compose_select(override)
    for group, ignore in INSTANTIATED.items():
        node = cfg[group]
        if group == "data" and OmegaConf.is_missing(node, "root"):
            node = OmegaConf.merge(node, {"root": "/data/folder"})
        check_target_kwargs(node, group, ignore=ignore)
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    # every value that is not a deliberate ??? resolves
    for key in ("budget", "seed", "device", "task_name"):
        OmegaConf.select(cfg, key, throw_on_missing=True)
    assert cfg.output.split_name == f"{cfg.selector.name}_{cfg.budget}"


def test_demo_is_the_embedded_default() -> None:
    cfg = compose_select("experiment=demo")
    assert cfg.data.name == "mnist5k" and cfg.backbone.name == "imgfocus_vits14"
    assert cfg.selector.name == "geal" and cfg.device == "cpu" and cfg.budget == 100


def test_parallel_launcher_is_joblib() -> None:
    cfg = compose_select("hydra/launcher=parallel")
    assert "joblib" in cfg.hydra.launcher._target_.lower()


@pytest.mark.parametrize("typo", ["budgett=3", "extraction.batchsize=3", "output.splitname=x"])
def test_schema_typos_fail(typo: str) -> None:
    with pytest.raises(
        (ConfigAttributeError, ConfigKeyError, Exception), match=typo.split("=")[0].split(".")[-1]
    ):
        compose_select(typo)


@pytest.mark.parametrize(("group", "key"), [("selector", "tua"), ("backbone", "resoluton"), ("data", "rot")])
def test_target_key_typos_fail(group: str, key: str) -> None:
    cfg = compose_select(f"+{group}.{key}=1")
    with pytest.raises(ValueError, match=key):
        check_target_kwargs(cfg[group], group, ignore=INSTANTIATED[group])


def test_config_dir_is_the_repository_conf() -> None:
    assert CONFIG_DIR == Path(__file__).resolve().parents[1] / "conf"
    assert (CONFIG_DIR / "select.yaml").is_file()
