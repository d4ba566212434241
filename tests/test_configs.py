"""Every config file composes, every _target_ accepts its keys, and typos fail at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from geal.run.cli import CONFIG_DIR
from geal.run.schemas import POOL_RUN_KEYS, TASK_RUN_KEYS, check_target_kwargs, register_schemas

register_schemas()

#: instantiated groups of each config root, with the keys the run reads itself
INSTANTIATED = {
    "select": {"data": POOL_RUN_KEYS, "backbone": (), "selector": ()},
    "run": {"data": POOL_RUN_KEYS, "backbone": (), "selector": (), "task": TASK_RUN_KEYS, "logger": ()},
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def experiment_root(name: str) -> str:
    """The config root an experiment file is written for: its ``# root: <name>`` header line."""
    for line in (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text().splitlines():
        if line.startswith("# root:"):
            return line.split(":", 1)[1].split()[0]
    raise AssertionError(f"conf/experiment/{name}.yaml has no '# root: select|run' header line")


def compose_root(root: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name=root,
            overrides=["paths.data_dir=/data", *overrides],
            return_hydra_config=True,
        )


def compose_select(*overrides: str):
    return compose_root("select", *overrides)


CASES = [
    (root, f"{group}={name}")
    for root in ("select", "run")
    for group in INSTANTIATED[root]
    for name in options(group)
]
CASES += [(experiment_root(name), f"experiment={name}") for name in options("experiment")]
for _group in ("debug", "hydra/launcher"):
    CASES += [(root, f"{_group}={name}") for root in ("select", "run") for name in options(_group)]


def test_every_group_has_options() -> None:
    assert {"voc0712", "cityscapes", "pets", "mnist5k", "fashion_mnist", "image_folder"} <= set(
        options("data")
    )
    assert {"dino_vits16", "imgfocus_vits14", "efficientnet_lite0", "tiny_vit"} <= set(options("backbone"))
    assert {"geal", "random", "coreset_cos", "coreset_euc"} <= set(options("selector"))
    assert {"local", "parallel"} <= set(options("hydra/launcher"))


@pytest.mark.parametrize(("root", "override"), CASES)
def test_composes_and_targets_accept_keys(root: str, override: str) -> None:
    cfg = compose_root(root, override)
    for group, ignore in INSTANTIATED[root].items():
        node = cfg[group]
        if group == "data" and OmegaConf.is_missing(node, "root"):
            node = OmegaConf.merge(node, {"root": "/data/folder"})
        check_target_kwargs(node, group, ignore=ignore)
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    # every value that is not a deliberate ??? resolves
    for key in ("seed", "device", "task_name", "budget" if root == "select" else "budgets"):
        OmegaConf.select(cfg, key, throw_on_missing=True)
    if root == "select":
        assert cfg.output.split_name == f"{cfg.selector.name}_{cfg.budget}"


def test_demo_is_the_embedded_default() -> None:
    cfg = compose_root("run", "experiment=demo")
    assert cfg.data.name == "mnist5k" and cfg.backbone.name == "imgfocus_vits14"
    assert cfg.selector.name == "geal" and cfg.device == "cpu" and cfg.task.name == "linear_probe"
    assert list(cfg.budgets) == [10, 20, 50, 100, 200]
    assert cfg.task.test_data.split == "heldout" and cfg.data.split == "pool"
    sweep = cfg.hydra.sweeper.params
    assert sweep.selector == "geal,random,coreset_cos" and sweep.seed == "0,1,2"


def test_select_demo_picks_100_mnist_digits() -> None:
    cfg = compose_select("experiment=select_demo")
    assert cfg.data.name == "mnist5k" and cfg.selector.name == "geal" and cfg.budget == 100


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
        check_target_kwargs(cfg[group], group, ignore=INSTANTIATED["select"][group])


def test_cluster_setting_typos_fail_naming_the_nested_key() -> None:
    """selector.clusters is a ClusterSettings: an unknown key under it fails before anything runs."""
    cfg = compose_select("+selector.clusters.tua=0.3")
    with pytest.raises(ValueError, match=r"selector\.clusters config has key\(s\) \['tua'\].*'tau'"):
        check_target_kwargs(cfg.selector, "selector")
    check_target_kwargs(compose_select("selector.clusters.tau=0.3").selector, "selector")


def test_config_dir_is_the_repository_conf() -> None:
    assert CONFIG_DIR == Path(__file__).resolve().parents[1] / "conf"
    assert (CONFIG_DIR / "select.yaml").is_file()
