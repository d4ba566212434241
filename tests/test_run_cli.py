"""geal-run end to end (real subprocesses, tiny ViT) on a generated Oxford-IIIT Pet dataset: the linear probe
and Pet fine-tuning, resume, loggers of a sweep, and clear errors on bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from downstream.datasets import synthetic
from downstream.datasets.pets import PetsPool
from tests.test_loggers import wandb_contents

REPO = Path(__file__).resolve().parents[1]

#: a tiny timm ResNet trained for 2 epochs in full precision (bf16 kernels warm up per shape on CPU)
TINY_PETS = [
    "task=pets_classification",
    "task.model_name=test_resnet",
    "task.pretrained=false",
    "task.resolution=32",
    "task.train.epochs=2",
    "task.train.batch_size=4",
    "task.train.num_workers=0",
    "task.train.amp=none",
]


def geal_run_cmd(*overrides: str, tmp: Path, run_dir: Path | None = None) -> list[str]:
    cmd = [
        sys.executable,
        "-c",
        "from geal.run.cli import run_main; run_main()",
        *[o for o in overrides if o.startswith("-")],  # flags (-m) before the overrides
        "debug=smoke",
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.output_dir={tmp / 'out'}",
        *[o for o in overrides if not o.startswith("-")],
    ]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    return cmd


def env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp / "wandb"),
        "GEAL_DATA_DIR": str(tmp / "data"),
        **extra,
    }


def geal_run(*overrides: str, tmp: Path, run_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        geal_run_cmd(*overrides, tmp=tmp, run_dir=run_dir),
        cwd=REPO,
        env=env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise AssertionError(f"geal-run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    synthetic.make_pets(root / "data", n_per_class=6, n_classes=4)  # 12 trainval, 12 test images
    synthetic.make_image_folder(root / "data" / "shapes", n_per_class=3)
    synthetic.make_image_folder(root / "data" / "flat", n_per_class=4, classes=("only",))
    (root / "data" / "oxford-iiit-pet" / "annotations" / "nothing.txt").write_text("")
    return root


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def probe_run(tmp: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp / "out" / "probe"
    return out, geal_run("data=pets", "budgets=[4,8]", tmp=tmp, run_dir=out)


def test_linear_probe_end_to_end_and_resume(
    tmp: Path, probe_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out, proc = probe_run
    doc = read_json(out / "metrics.json")
    selection = read_json(out / "selection.json")
    assert doc["method"] == doc["selector"] == "geal" and doc["task"] == "linear_probe" and doc["seed"] == 0
    assert doc["pool"] == "pets" and doc["pool_identity"]["n_images"] == 12
    assert doc["config"]["task"]["name"] == "linear_probe" and doc["config"]["budgets"] == [4, 8]
    assert len(selection["global_ids"]) == 8  # one nested selection serves both budgets
    assert [r["budget"] for r in doc["results"]] == [4, 8]
    for r in doc["results"]:
        assert r["fit"]["n_train"] == r["budget"] and 0.0 <= r["metrics"]["top1"] <= 1.0
        assert set(r["metrics"]) == {"top1", "mean_class_acc", "classes_covered"}
        # the selection's class coverage: distinct classes among the labeled images of that budget
        pool = PetsPool(tmp / "data")
        picked = pool.index_of(selection["image_ids"][: r["budget"]])
        assert r["metrics"]["classes_covered"] == len({pool.labels[i] for i in picked}) >= 1
    assert set(doc["seconds"]) == {"selection", "fit", "total"}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # the csv logger got the same per-budget values, config and the summary
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    logged = {(int(r["step"]), r["key"]): float(r["value"]) for r in rows}
    for r in doc["results"]:
        assert logged[(r["budget"], "test/top1")] == pytest.approx(r["metrics"]["top1"])
    assert read_json(out / "csv" / "config.json")["task"]["name"] == "linear_probe"
    summary = read_json(out / "csv" / "summary.json")
    assert summary["final/budget"] == 8 and "seconds/total" in summary
    assert "budget      8: top1" in proc.stdout
    # a rerun into the same dir trains nothing again and keeps the results
    again = geal_run("data=pets", "budgets=[4,8]", tmp=tmp, run_dir=out)
    assert "already trained" in again.stdout + again.stderr
    assert read_json(out / "metrics.json")["results"] == doc["results"]


def test_a_finished_one_pass_run_grows_by_new_budgets(
    tmp: Path, probe_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    """More budgets into a finished run dir of a nested selector: the earlier picks stay the prefix of the
    larger selection and the trained budgets are kept, not retrained."""
    import shutil

    out = tmp / "out" / "grown"
    shutil.copytree(probe_run[0], out)
    before = read_json(out / "metrics.json")["results"]
    old_ids = read_json(out / "selection.json")["global_ids"]
    proc = geal_run("data=pets", "budgets=[2,4,8,10]", tmp=tmp, run_dir=out)
    doc = read_json(out / "metrics.json")
    assert [r["budget"] for r in doc["results"]] == [2, 4, 8, 10]
    assert [r for r in doc["results"] if r["budget"] in (4, 8)] == before  # kept as they were
    ids = read_json(out / "selection.json")["global_ids"]
    assert len(ids) == 10 and ids[:8] == old_ids
    assert doc["config"]["budgets"] == [2, 4, 8, 10] and "grows" in proc.stdout + proc.stderr


def test_a_run_whose_picks_are_not_the_new_prefix_does_not_grow_and_stays_as_it_was(
    tmp: Path, probe_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    """If the selector no longer reproduces the run's earlier picks as the prefix of the larger selection
    (here: the recorded picks are tampered with), growing is refused and the run dir keeps its files."""
    import shutil

    out = tmp / "out" / "not_grown"
    shutil.copytree(probe_run[0], out)
    state = read_json(out / "label_state.json")
    state["order"] = state["order"][::-1]  # not what the selector picks first
    (out / "label_state.json").write_text(json.dumps(state))
    before = {n: (out / n).read_bytes() for n in ("selection.json", "selected_ids.txt", "label_state.json")}
    proc = subprocess.run(
        geal_run_cmd("data=pets", "budgets=[4,8,10]", tmp=tmp, run_dir=out),
        cwd=REPO,
        env=env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "so the run cannot grow" in proc.stdout + proc.stderr
    assert {n: (out / n).read_bytes() for n in before} == before


def test_a_sweep_grows_by_new_seeds_and_keeps_its_finished_jobs(tmp: Path) -> None:
    """A job's folder is named by its swept settings, not by its position in the sweep: rerun with one more
    seed, the earlier jobs find their own folders (nothing retrained) and the new one gets its own."""
    sweep = tmp / "out" / "growing_sweep"
    common = ("-m", "data=pets", "selector=random", "budgets=[4]", f"hydra.sweep.dir={sweep}")
    geal_run(*common, "seed=0,1", tmp=tmp)
    first = {d.name: read_json(d / "metrics.json")["results"] for d in sweep.iterdir() if d.is_dir()}
    assert len(first) == 2 and all("seed=" in name for name in first)
    geal_run(*common, "seed=2,0,1", tmp=tmp)
    after = {d.name: read_json(d / "metrics.json") for d in sweep.iterdir() if d.is_dir()}
    assert len(after) == 3 and {doc["seed"] for doc in after.values()} == {0, 1, 2}
    for name, results in first.items():
        assert after[name]["results"] == results  # found and kept, not replaced by another seed's run


def test_pets_classification_sweep_on_an_earlier_selection(
    tmp: Path, probe_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    selection = probe_run[0] / "selection.json"
    sweep = tmp / "out" / "sweep"
    geal_run(
        "-m",
        "data=pets",
        "budgets=[4,8]",
        f"selection_file={selection}",
        "seed=0,1",
        "logger=wandb",
        *TINY_PETS,
        f"hydra.sweep.dir={sweep}",
        tmp=tmp,
    )
    groups, names = set(), set()
    jobs = sorted(d.name for d in sweep.iterdir() if d.is_dir())  # named by their settings: ...seed=0...
    assert len(jobs) == 2 and "seed=0" in jobs[0] and "seed=1" in jobs[1]
    for job in jobs:
        doc = read_json(sweep / job / "metrics.json")
        assert doc["task"] == "pets_classification" and doc["selection_file"] == str(selection)
        assert [r["budget"] for r in doc["results"]] == [4, 8]
        fit = doc["results"][1]["fit"]
        assert fit["epoch"] == 2 and fit["n_train"] == 8 and fit["loss"] > 0
        assert set(doc["results"][1]["metrics"]) == {"top1", "mean_class_acc", "loss"}
        (run_dir,) = (sweep / job / "wandb").glob("offline-run-*")
        got = wandb_contents(run_dir)
        groups.add(got["group"])
        names.add(got["name"])
        assert got["config"]["task"]["model_name"] == "test_resnet"
        keys = {k for row in got["history"] for k in row}
        # per-epoch training metrics of each budget and the per-budget test metrics
        assert {"budget_4/train/loss", "budget_8/train/loss", "test/top1"} <= keys
        epochs = [row["budget_8/train/epoch"] for row in got["history"] if "budget_8/train/epoch" in row]
        assert epochs == [1, 2]
        assert got["summary"]["final/budget"] == 8 and "seconds/total" in got["summary"]
    assert groups == {"debug:sweep"}  # every job of the sweep in one group: task_name (debug) + sweep dir
    assert len(names) == 2 and all("seed=" in n for n in names)
    # the two seeds trained on the same images but from different initialisations
    a, b = (read_json(sweep / j / "metrics.json")["results"][1]["fit"]["loss"] for j in jobs)
    assert a != b


BAD_INPUT = {
    "selection of another dataset": (
        [
            "data=image_folder",
            "data.root={data}/shapes",
            "data.test.root={data}/shapes",
            "selection_file={sel}",
        ],
        "was made for pool 'pets'",
    ),
    "ids missing from the pool": (["data=pets", "labeled={missing}"], "are not in pool 'pets'"),
    "task without labels": (
        ["data=image_folder", "data.root={data}/flat", "data.test.root={data}/flat"],
        "needs labels, but pool 'folder' has none",
    ),
    "empty test split": (["data=pets", "data.test.split=nothing", *TINY_PETS], "is empty"),
    "wandb online without network": (
        ["data=pets", "logger=wandb", "logger.mode=online", "logger.offline_fallback=false"],
        "logger.mode=offline",
    ),
    "task setting typo": (["data=pets", *TINY_PETS, "+task.train.epohcs=3"], "epohcs"),
    "image folder without a test split": (
        ["data=image_folder", "data.root={data}/shapes"],
        "needs a test split: set data.test.root",
    ),
}
# bad task input fails in its pre-flight check, before the selection is made or written
FAILS_BEFORE_SELECTION = {
    "task without labels",
    "empty test split",
    "task setting typo",
    "image folder without a test split",
}


def run_in_process(tmp: Path, out: Path, *overrides: str) -> None:
    """``run_main`` on a composed config, in this process (what the CLI runs, without the start-up)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from geal.run.cli import CONFIG_DIR, run_main

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "run",
            overrides=["debug=smoke", f"paths.cache_dir={tmp / 'cache'}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    run_main(cfg)


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_clear_errors(
    case: str,
    tmp: Path,
    probe_run: tuple[Path, subprocess.CompletedProcess[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp / "missing.txt").write_text("Abyssinian_1\nnot_a_pet_42\n")
    values = {"data": tmp / "data", "sel": probe_run[0] / "selection.json", "missing": tmp / "missing.txt"}
    monkeypatch.setenv("GEAL_DATA_DIR", str(tmp / "data"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_MODE", raising=False)
    overrides, message = BAD_INPUT[case]
    out = tmp / "out" / "bad" / case.replace(" ", "_")
    with pytest.raises(Exception) as caught:
        run_in_process(tmp, out, *[a.format(**values) for a in overrides], "budgets=[4]")
    text = f"{caught.value} {caught.value.__cause__ or ''}"
    assert message in text, text
    if case in FAILS_BEFORE_SELECTION:
        assert not (out / "selection.json").exists()


@pytest.mark.parametrize("name", ["gpu", "cuda0", "tpu:1"])
def test_a_device_name_torch_does_not_know_is_an_error_naming_the_choices(name: str) -> None:
    from geal.run.builders import resolve_device

    with pytest.raises(ValueError, match=rf"device={name} is not a device: use auto, cpu, cuda, cuda:N"):
        resolve_device(name)


@pytest.mark.parametrize("command", ["select", "run", "visualize"])
def test_help_shows_the_commands_purpose_options_and_examples(command: str) -> None:
    import subprocess
    import sys

    code = f"from geal.run.cli import {command}_main; {command}_main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    text = proc.stdout
    assert text.startswith(f"geal-{command}: ") and "Main options:" in text
    examples = text.split("Examples:", 1)[1].strip().splitlines()
    assert len(examples) == 3 and all(line.strip().startswith(f"geal-{command} ") for line in examples)
    assert "selector: " in text and "Powered by Hydra" not in text
