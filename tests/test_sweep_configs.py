"""Every experiment file composes with every choice its sweep makes, cites what it reproduces, has a demo
variant that runs offline, and sweeps into its own multirun dir; the demos run (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from downstream.datasets import synthetic
from geal.report.results import DONE, collect
from geal.run.cli import CONFIG_DIR
from geal.run.schemas import POOL_RUN_KEYS, TASK_RUN_KEYS, check_target_kwargs, register_schemas

register_schemas()
REPO = Path(__file__).resolve().parents[1]
#: geal-run's experiments (geal/conf/run/experiment/; geal-select's sit in geal/conf/select/experiment/)
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "run" / "experiment").glob("*.yaml"))
#: the experiments of issue 6 (the paper's tables and figures) and their offline variants
PAPER = [
    "paper_voc",
    "paper_cityscapes",
    "paper_pets",
    "offshelf_coreset",
    "ablation_tau",
    "ablation_k",
    "ablation_distance",
    "efficiency",
]
INSTANTIATED = {"data": POOL_RUN_KEYS, "backbone": (), "selector": (), "task": TASK_RUN_KEYS, "logger": ()}


def compose_experiment(name: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "run",
            overrides=["paths.data_dir=/data", f"experiment={name}", *overrides],
            return_hydra_config=True,
        )


def sweep_params(cfg) -> dict[str, list[str]]:
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    return {str(k): [v.strip() for v in str(val).split(",")] for k, val in params.items()}


def test_every_paper_experiment_and_its_demo_exist() -> None:
    for name in PAPER:
        assert name in EXPERIMENTS and f"{name}_demo" in EXPERIMENTS, name
        text = (CONFIG_DIR / "run" / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n# The paper's"), name  # cites its table
        # the demo is an overlay of its paper experiment (+ the shared CPU overlay), not a copy
        demo = OmegaConf.load(CONFIG_DIR / "run" / "experiment" / f"{name}_demo.yaml")
        assert list(demo.defaults)[:2] == [name, "/overlay/cpu_demo"], name


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e != "demo"])
def test_every_sweep_choice_composes_and_its_targets_accept_their_keys(name: str) -> None:
    cfg = compose_experiment(name)
    params = sweep_params(cfg)
    assert params, f"{name} sweeps nothing"
    assert str(cfg.hydra.sweep.dir).endswith(f"/{name}") and cfg.task_name == name  # one dir per experiment
    # every config-group choice (a different selector file...) composes and fits its _target_; the other
    # swept keys (seed, selector.clusters.tau...) are plain values: their last values are set together
    plain = [f"{k}={v[-1]}" for k, v in params.items() if k not in INSTANTIATED]
    choices = [[f"{k}={v}"] for k, values in params.items() if k in INSTANTIATED for v in values] or [[]]
    for choice in choices:
        cfg_choice = compose_experiment(name, *choice, *plain)
        for group, ignore in INSTANTIATED.items():
            check_target_kwargs(cfg_choice[group], group, ignore=ignore)
        for override in plain:
            key, value = override.split("=", 1)
            assert str(OmegaConf.select(cfg_choice, key)) == value, (name, override)
    if name.endswith("_demo"):  # offline on CPU: no hub weights, no GPU
        assert cfg.device == "cpu" and cfg.backbone.name in ("imgfocus_vits14", "tiny_vit"), name
        assert "backbone_weights" not in cfg.task.get("model", {}) or cfg.task.model.backbone_weights is None


def test_the_paper_grids() -> None:
    voc = compose_experiment("paper_voc")
    assert sweep_params(voc) == {
        "selector": ["geal", "random", "coreset_cos", "coreset_euc", "learn_loss_ssd", "vaal_128"],
        "seed": ["0", "1", "2"],
    }
    assert (
        voc.task.name == "voc_detection" and voc.data.name == "voc0712" and voc.backbone.name == "dino_vits16"
    )
    budgets = [voc.cycles.initial_size + k * voc.cycles.step for k in range(voc.cycles.n_cycles + 1)]
    assert budgets == [1000 * k for k in range(1, 11)]  # ⊇ the paper's 1k, 2k, 3k, 5k, 7k, 10k
    assert compose_experiment("paper_voc", "selector=learn_loss_ssd").selector.name == "learn_loss"
    city = compose_experiment("paper_cityscapes")
    assert sweep_params(city)["selector"] == [
        "geal",
        "random",
        "coreset_cos",
        "coreset_euc",
        "learn_loss_deeplab",
        "vaal_128",
    ]
    assert compose_experiment("paper_cityscapes", "selector=learn_loss_deeplab").selector.hooks[0] == (
        "backbone.layer1"
    )
    for name, key, values in (
        ("ablation_tau", "selector.clusters.tau", ["0.4", "0.5", "0.6"]),
        ("ablation_k", "selector.clusters.k", ["5", "15", "25"]),
        ("ablation_distance", "selector.distance", ["cosine", "euclidean"]),
    ):
        cfg = compose_experiment(name)
        assert sweep_params(cfg)[key] == values and list(cfg.budgets) == [3000, 5000, 7000]
        assert (cfg.selector.clusters.tau, cfg.selector.clusters.k, cfg.selector.distance) == (
            0.5,
            25,
            "cosine",
        )
    assert sweep_params(compose_experiment("offshelf_coreset"))["selector"] == [
        "coreset_cos",
        "coreset_euc",
        "random",
    ]
    # an experiment's launcher is the one it names (the root configs leave the choice to it)
    assert "JoblibLauncher" in str(compose_experiment("paper_voc_demo").hydra.launcher._target_)
    eff = compose_experiment("efficiency")
    assert (
        "local" in str(eff.hydra.launcher._target_).lower()
        or "basic" in str(eff.hydra.launcher._target_).lower()
    )


# ------------------------------------------------------------------------------------------- the demos

#: demo → (data to generate, overrides that keep one seed and two selectors for a smoke run)
DEMOS = {
    "paper_voc_demo": ("voc", ["seed=0", "selector=geal,learn_loss_small_ssd", "task.train.epochs=1"]),
    "paper_cityscapes_demo": (
        "cityscapes",
        ["seed=0", "selector=geal,learn_loss_deeplab", "task.train.epochs=1"],
    ),
    "paper_pets_demo": ("pets", ["seed=0", "selector=geal,coreset_euc"]),
    "offshelf_coreset_demo": ("mnist", ["seed=0", "selector=coreset_euc,random"]),
    "ablation_tau_demo": ("mnist", ["seed=0", "selector.clusters.tau=0.4,0.6"]),
    "ablation_k_demo": ("mnist", ["seed=0", "selector.clusters.k=5,15"]),
    "ablation_distance_demo": ("mnist", ["seed=0"]),
    "efficiency_demo": ("mnist", ["selector=geal,entropy", "task.train.epochs=1", "cycles.n_cycles=1"]),
}


def test_every_demo_has_a_smoke_run() -> None:
    assert sorted(DEMOS) == sorted(f"{n}_demo" for n in PAPER)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_runs(name: str, tmp_path: Path) -> None:
    """The demo's own sweep (smaller: one seed, two choices) with the tiny ViT, then geal-report."""
    kind, overrides = DEMOS[name]
    data = tmp_path / "data"
    if kind == "voc":
        synthetic.make_voc(data / "demo", n07=40, n12=30, n07_test=12, classes=["car", "cat", "dog"])
    elif kind == "cityscapes":
        synthetic.make_cityscapes(data / "demo" / "cityscapes", n_train=30, n_val=6)
    elif kind == "pets":
        synthetic.make_pets(data / "demo", n_per_class=40, n_classes=4)  # 80 trainval ≥ 12 + 3 × 12
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GEAL_DATA_DIR": str(data),
        "GEAL_OUTPUT_DIR": str(tmp_path / "out"),
        "GEAL_CACHE_DIR": str(tmp_path / "cache"),
        "GEAL_DEVICE_LOCK_DIR": str(tmp_path / "locks"),
    }
    cmd = [
        sys.executable,
        "-c",
        "from geal.run.cli import run_main; run_main()",
        "-m",
        f"experiment={name}",
        "debug=smoke",
        *overrides,
    ]
    if kind == "mnist":
        cmd.append("budgets=[10,20]" if "efficiency" not in name else "cycles.initial_size=10")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = tmp_path / "out" / "debug"  # debug=smoke names the task (and so the sweep dir) "debug"
    runs = collect(sweep).runs
    assert runs and all(r.status == DONE for r in runs), [(r.directory, r.status, r.reason) for r in runs]
    report = subprocess.run(
        [
            sys.executable,
            "-c",
            "from geal.run.cli import report_main; report_main()",
            str(sweep),
            "--metric",
            "all",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((sweep / "report.json").read_text())
    assert {c["n"] for c in summary["cells"]} == {1}  # one seed per setting, no gap (numbers as numbers)
    swept = {"ablation_tau_demo": "selector.clusters.tau", "ablation_k_demo": "selector.clusters.k"}
    if name in swept:  # the rows are the swept cluster setting, as `--rows selector.clusters.tau` asks
        assert {str(c[swept[name]]) for c in summary["cells"]} == set(overrides[1].split("=")[1].split(","))
