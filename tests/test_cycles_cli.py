"""geal-run with cycles=... end to end on a generated Fashion-MNIST (idx files read by the real loader):
entropy / Learn-Loss with a small CNN, VAAL with the linear probe, GEAL as a single cycle, resume, errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from downstream.datasets import synthetic

REPO = Path(__file__).resolve().parents[1]

#: a 4-channel small CNN trained for 2 epochs (seconds per fit)
TINY_CNN = [
    "data=fashion_mnist",
    "task=small_cnn",
    "task.width=4",
    "task.embed_dim=16",
    "task.train.epochs=2",
    "task.train.batch_size=8",
    "task.train.amp=none",
]
SHORT_CYCLES = ["cycles=demo", "cycles.initial_size=10", "cycles.step=10"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster, and immune to a busy shared CPU (measured up to ~80x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cycles")
    synthetic.make_fashion_mnist_idx(root / "data" / "fashion-mnist", n_train=80, n_test=30)
    return root


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def geal_run(*overrides: str, tmp: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-c",
        "from geal.run.cli import run_main; run_main()",
        "debug=smoke",
        f"paths.cache_dir={tmp / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEAL_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"geal-run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_in_process(tmp: Path, out: Path, *overrides: str) -> None:
    """``run_main`` on a composed config in this process (the CLI without its start-up)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from geal.run.cli import CONFIG_DIR, run_main

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "run",
            overrides=[
                "debug=smoke",
                f"paths.cache_dir={tmp / 'cache'}",
                f"paths.data_dir={tmp / 'data'}",
                "output.summary=false",
                *overrides,
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    run_main(cfg)


def test_entropy_cycles_with_a_small_cnn_and_resume(tmp: Path) -> None:
    out = tmp / "out" / "entropy"
    args = [*TINY_CNN, "selector=entropy", *SHORT_CYCLES, "cycles.n_cycles=2", "seed=1"]
    proc = geal_run(*args, tmp=tmp, run_dir=out)
    doc = read_json(out / "metrics.json")
    assert doc["method"] == "entropy" and doc["task"] == "small_cnn" and doc["pipeline"] == "cycles"
    assert [r["budget"] for r in doc["results"]] == [10, 20, 30]
    assert [r["cycle"] for r in doc["results"]] == [0, 1, 2]
    for r in doc["results"]:
        assert r["fit"]["n_train"] == r["budget"] and 0.0 <= r["metrics"]["top1"] <= 1.0
    state = read_json(out / "label_state.json")
    assert len(state["order"]) == len(set(state["order"])) == 30
    assert [state["cycle_of"].count(c) for c in range(3)] == [10, 10, 10]
    # cycle 1 was chosen by entropy from the 70 unlabeled images, most uncertain first
    cyc1 = read_json(out / "cycles" / "cycle_01" / "selection.json")
    assert cyc1["selector"] == "entropy" and cyc1["labeled_global_ids"] == state["order"][:10]
    assert cyc1["scores"] == sorted(cyc1["scores"], reverse=True)
    assert cyc1["info"]["n_candidates"] == 70
    assert read_json(out / "cycles" / "cycle_00" / "selection.json")["selector"] == "random"
    # the run logger got each cycle's metric and times
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    logged = {(int(r["step"]), r["key"]): float(r["value"]) for r in rows if r["step"]}
    for r in doc["results"]:
        assert logged[(r["budget"], "test/top1")] == pytest.approx(r["metrics"]["top1"])
        assert logged[(r["budget"], "time/acquisition_s")] == pytest.approx(r["acquisition_s"])
    assert "cycle  2  budget     30: top1" in proc.stdout
    # every training kept its checkpoint; a rerun into the same dir resumes: nothing is trained again
    ckpts = sorted((out / "task").glob("budget_*/checkpoint.pt"))
    assert [p.parent.name for p in ckpts] == ["budget_000010", "budget_000020", "budget_000030"]
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    geal_run(*args, tmp=tmp, run_dir=out)
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps
    again = read_json(out / "metrics.json")
    assert again["results"] == doc["results"]
    assert read_json(out / "label_state.json")["order"] == state["order"]


def test_learn_loss_cycles_train_the_loss_predictor_with_the_cnn(tmp: Path) -> None:
    out = tmp / "out" / "learn_loss"
    run_in_process(
        tmp,
        out,
        *TINY_CNN,
        "selector=learn_loss",
        "selector.candidates=50",
        *SHORT_CYCLES,
        "cycles.n_cycles=1",
    )
    doc = read_json(out / "metrics.json")
    assert [r["budget"] for r in doc["results"]] == [10, 20]
    assert all("plugin0/loss_prediction" in r["fit"] for r in doc["results"])
    cyc1 = read_json(out / "cycles" / "cycle_01" / "selection.json")
    assert cyc1["info"]["n_candidates"] == 50 and len(cyc1["global_ids"]) == 10
    assert cyc1["scores"] == sorted(cyc1["scores"], reverse=True)
    # Learn-Loss chose with the cycle-0 model: its training counts in the acquisition time
    r = doc["results"]
    assert r[1]["acquisition_s"] == pytest.approx(r[0]["select_s"] + r[1]["select_s"] + r[0]["fit_s"])


def test_vaal_cycles_with_the_linear_probe(tmp: Path) -> None:
    out = tmp / "out" / "vaal"
    run_in_process(
        tmp,
        out,
        "data=fashion_mnist",
        "selector=vaal",
        "selector.image_size=16",
        "selector.in_chans=1",
        "selector.channels=[8,16]",
        "selector.disc_hidden=32",
        "selector.iterations=10",
        "selector.batch_size=8",
        "selector.progress=false",
        *SHORT_CYCLES,
        "cycles.n_cycles=1",
    )
    doc = read_json(out / "metrics.json")
    assert [r["budget"] for r in doc["results"]] == [10, 20] and doc["task"] == "linear_probe"
    info = read_json(out / "label_state.json")["cycles"][1]["selection_info"]
    assert info["iterations"] == 10 and info["n_labeled"] == 10 and info["n_unlabeled"] == 70
    # VAAL never used the task model: only its own selection time counts
    r = doc["results"]
    assert r[1]["acquisition_s"] == pytest.approx(r[0]["select_s"] + r[1]["select_s"])


def test_geal_as_a_single_cycle(tmp: Path) -> None:
    out = tmp / "out" / "geal"
    run_in_process(tmp, out, "data=fashion_mnist", "selector=geal", "cycles=one_pass", "budgets=[5,10]")
    doc = read_json(out / "metrics.json")
    assert [(r["budget"], r["cycle"]) for r in doc["results"]] == [(5, 0), (10, 0)]
    assert doc["results"][0]["acquisition_s"] == doc["results"][1]["acquisition_s"] > 0
    sel = read_json(out / "selection.json")
    assert sel["selector"] == "geal" and len(sel["global_ids"]) == 10 and sel["budget"] == 10
    # cycles=one_pass is geal-run's default schedule: the same run, the same files
    assert doc["pipeline"] == "one_pass" and set(doc["seconds"]) == {"selection", "fit", "total"}
    assert read_json(out / "run_info.json")["timings"]["selection_total_s"] > 0
    default = tmp / "out" / "geal_default"
    run_in_process(tmp, default, "data=fashion_mnist", "selector=geal", "budgets=[5,10]")
    assert read_json(default / "selection.json")["global_ids"] == sel["global_ids"]
    assert [r["metrics"] for r in read_json(default / "metrics.json")["results"]] == [
        r["metrics"] for r in doc["results"]
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["selector=entropy", "budgets=[10]"], "run it in active-learning cycles"),
        (["selector=learn_loss", *SHORT_CYCLES], r"needs task method\(s\) \['add_plugin'\]"),
        (["selector=entropy", "cycles=demo", "budgets=[100,200]"], r"drop budgets.* or drop cycles=demo"),
        (["selector=entropy", "cycles=demo", "cycles.initial=selector"], "cannot pick from nothing"),
        (["selector=entropy", "cycles=demo", "cycles.n_cycles=100"], "the pool has 80"),
    ],
)
def test_bad_cycle_settings_fail_at_start_up(tmp: Path, overrides: list[str], message: str) -> None:
    out = tmp / "out" / "bad"
    with pytest.raises(Exception, match=message):
        run_in_process(tmp, out, "data=fashion_mnist", *overrides)
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    "experiment", ["cycles_demo", "cycles_linear_demo", "cycles_classification", "cycles_voc"]
)
def test_cycle_experiments_compose_for_every_swept_selector(experiment: str) -> None:
    """Every selector a cycle experiment sweeps composes with it, and every _target_ accepts its keys."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from geal.run.cli import CONFIG_DIR
    from geal.run.loop import CycleSchedule
    from geal.run.schemas import TASK_RUN_KEYS, check_target_kwargs

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = compose(
            "run", overrides=["paths.data_dir=/d", f"experiment={experiment}"], return_hydra_config=True
        )
        selectors = str(base.hydra.sweeper.params.selector).split(",")
        assert len(selectors) >= 4
        for name in selectors:
            cfg = compose(
                "run", overrides=["paths.data_dir=/d", f"experiment={experiment}", f"selector={name}"]
            )
            check_target_kwargs(cfg.selector, "selector")
            check_target_kwargs(cfg.task, "task", ignore=TASK_RUN_KEYS)
            check_target_kwargs(cfg.cycles.initial_draw, "cycles.initial_draw")
            node = cfg.cycles
            CycleSchedule(node.initial, node.initial_size, node.step, node.n_cycles, node.reinit)
