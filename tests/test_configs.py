"""Every config file composes, every _target_ accepts its keys, and typos fail at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from geal.run.builders import extraction_settings
from geal.run.cli import CONFIG_DIR
from geal.run.schemas import (
    POOL_RUN_KEYS,
    TASK_RUN_KEYS,
    RunConfig,
    SelectConfig,
    check_known_keys,
    check_target_kwargs,
    register_schemas,
)

register_schemas()

#: instantiated groups of each config root, with the keys the run reads itself
INSTANTIATED = {
    "select": {"data": POOL_RUN_KEYS, "backbone": (), "selector": ()},
    "run": {"data": POOL_RUN_KEYS, "backbone": (), "selector": (), "task": TASK_RUN_KEYS, "logger": ()},
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def experiments(root: str) -> list[str]:
    """The experiments of a command: the files of its own folder, geal/conf/<root>/experiment/."""
    return sorted(p.stem for p in (CONFIG_DIR / root / "experiment").glob("*.yaml"))


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
CASES += [(root, f"experiment={name}") for root in ("select", "run") for name in experiments(root)]
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
    # no key outside the root's struct schema (what `+key=...` could add), valid extraction settings
    HydraConfig.instance().set_config(cfg)  # as in a job: ${hydra:...} resolves
    job = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    check_known_keys(job, {"select": SelectConfig, "run": RunConfig}[root])
    extraction_settings(job)


def test_demo_is_the_embedded_default() -> None:
    cfg = compose_root("run", "experiment=demo")
    assert cfg.data.name == "mnist5k" and cfg.backbone.name == "imgfocus_vits14"
    assert cfg.selector.name == "geal" and cfg.device == "cpu" and cfg.task.name == "linear_probe"
    assert list(cfg.budgets) == [10, 20, 50, 100, 200]
    assert cfg.task.test_data.split == "heldout" and cfg.data.split == "pool"
    sweep = cfg.hydra.sweeper.params
    assert sweep.selector.split(",") == [
        "random",
        "geal",
        "geal_density",
        "geal_typical",
        "coreset_cos",
        "typiclust",
        "probcover",
        "activeft",
    ]
    assert sweep.seed == "0,1,2,3,4"


def test_demo_fashion_is_the_demo_on_fashion_mnist() -> None:
    demo = compose_root("run", "experiment=demo")
    cfg = compose_root("run", "experiment=demo_fashion")
    assert cfg.data.name == "fashion_mnist" and cfg.data.size == 10000 and cfg.data.test.size == 2000
    assert cfg.task_name == "demo_fashion" and cfg.hydra.sweep.dir.endswith("demo_fashion")
    assert cfg.hydra.sweeper.params == demo.hydra.sweeper.params and cfg.selector == demo.selector


def test_select_demo_picks_100_mnist_digits() -> None:
    cfg = compose_select("experiment=demo")
    assert cfg.data.name == "mnist5k" and cfg.selector.name == "geal" and cfg.budget == 100


@pytest.mark.parametrize("root", ["select", "run"])
def test_released_preset_is_the_released_scripts_defaults(root: str) -> None:
    """selector=geal_released: the authors' released scripts (K 5, k-means from random points, D² "prob"
    sampling, fp32 extraction) over selector=geal, which keeps the paper's defaults; a command-line
    extraction.amp still wins."""
    assert "geal_released" in options("selector")
    paper = compose_root(root)
    cfg = compose_root(root, "selector=geal_released")
    check_target_kwargs(cfg.selector, "selector")
    released = {"k": 5, "kmeans_init": "random", "tau": 0.5, "kmeans_metric": "euclidean"}
    released |= {"kmeans_iters": 100, "kmeans_tol": 1e-4}  # iter_limit 100; tol 1e-4 (ours bounds each shift)
    assert {key: cfg.selector.clusters[key] for key in released} == released
    assert cfg.selector.sampler == "d2" and cfg.selector.distance == "cosine"
    assert cfg.selector.clusters.empty_fallback == "max_norm"
    assert cfg.extraction.amp == "none" and cfg.selector.name == "geal_released"
    # only those keys differ from the paper preset
    changed = {k for k in paper.selector if paper.selector[k] != cfg.selector[k]}
    assert changed == {"name", "clusters", "sampler"}
    changed = {k for k in paper.selector.clusters if paper.selector.clusters[k] != cfg.selector.clusters[k]}
    assert changed == {"k", "kmeans_init"}
    assert paper.selector.clusters.k == 25 and paper.selector.sampler == "kcenter"
    assert compose_root(root, "selector=geal_released", "extraction.amp=bf16").extraction.amp == "bf16"


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
    assert CONFIG_DIR == Path(__file__).resolve().parents[1] / "geal" / "conf"
    assert (CONFIG_DIR / "select.yaml").is_file()


def test_an_experiment_belongs_to_the_command_of_its_folder() -> None:
    """geal/conf/run/experiment/ is geal-run's, geal/conf/select/experiment/ geal-select's: composing one
    with the other command fails naming the experiment and listing that command's own."""
    assert "paper_voc" in experiments("run") and experiments("select") == ["demo"]
    only_demo = r"experiment/paper_voc[\s\S]*Available options in .experiment.:\s*demo\n"
    with pytest.raises(Exception, match=only_demo):
        compose_select("experiment=paper_voc")
    assert compose_root("run", "experiment=demo").task_name == "demo"
    assert compose_select("experiment=demo").task_name == "select_demo"


@pytest.mark.parametrize("root", ["select", "run", "visualize"])
def test_every_command_shares_the_extraction_and_hydra_settings(root: str) -> None:
    """One extraction file and one hydra file: the same values under every root."""
    cfg = compose_root(root)
    shared = OmegaConf.load(CONFIG_DIR / "extraction" / "default.yaml")
    assert OmegaConf.to_container(cfg.extraction) == OmegaConf.to_container(shared)
    assert cfg.hydra.callbacks.failure_record._target_ == "geal.run.callbacks.FailureRecordCallback"
    assert str(cfg.hydra.job.chdir) == "False"


def test_local_settings_are_optional_and_loaded_last(tmp_path: Path) -> None:
    """geal/conf/local/default.yaml (git-ignored) is composed after experiments when it exists."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / "local" / "default.yaml").write_text("# @package _global_\ndevice: cuda:7\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["paths.data_dir=/data", "experiment=demo"])
    assert cfg.device == "cuda:7"  # beats the experiment's device=cpu
    assert compose_root("run", "experiment=demo").device == "cpu"  # without the file: the experiment's


@pytest.mark.parametrize(
    ("experiment", "task", "cls"),
    [
        ("paper_voc", "mmdet_voc_ssd300", "MMDetVOCTask"),
        ("paper_cityscapes", "mmseg_cityscapes_deeplabv3", "MMSegCityscapesTask"),
    ],
)
def test_paper_experiments_take_the_openmmlab_task_by_one_override(
    experiment: str, task: str, cls: str
) -> None:
    """``geal-run -m experiment=paper_voc task=mmdet_voc_ssd300`` (docs/openmmlab.md): the experiment
    keeps its data, backbone, cycles and sweep; the task is the OpenMMLab one, built from its settings alone
    (mmdet / mmseg are imported only when the task is set up, so this runs without the extra)."""
    from geal.run.builders import build_task

    cfg = compose_root("run", f"experiment={experiment}", f"task={task}")
    assert cfg.task.name == task and cfg.task_name == experiment and cfg.cycles.name == "reference_1k"
    assert (
        cfg.task.test_data.name
        == {"paper_voc": "voc07_test", "paper_cityscapes": "cityscapes_val"}[experiment]
    )
    built = build_task(cfg.task)
    assert type(built).__name__ == cls and built.provides == frozenset()  # no warm start, no plugins
    assert "seed" in cfg.hydra.sweeper.params
