"""A real tiny sweep (joblib launcher, 2 selectors × 2 budgets × 2 seeds) reported by geal-report; failed
jobs recorded; device leases never put two jobs on one device; the SLURM launcher config makes a valid
sbatch array script."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

import geal.run.callbacks
from downstream.datasets import synthetic
from geal.report.results import DONE, FAILED, collect
from geal.run.builders import resolve_device
from geal.run.callbacks import DeviceLeaseCallback, FailureRecordCallback
from geal.run.cli import CONFIG_DIR, report_main
from geal.run.device_lease import DeviceSlot, current_lease, lease_device

REPO = Path(__file__).resolve().parents[1]
RUN = "from geal.run.cli import run_main; run_main()"


def geal_run(tmp: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEAL_DEVICE_LOCK_DIR": str(tmp / "locks")}
    cmd = [
        sys.executable,
        "-c",
        RUN,
        *[o for o in overrides if o == "-m"],  # Hydra's flags come before the overrides
        "debug=smoke",
        "data=image_folder",
        f"data.root={tmp / 'train'}",
        f"data.test.root={tmp / 'test'}",
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.output_dir={tmp / 'out'}",
        "logger=none",
        *[o for o in overrides if o != "-m"],
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    if check and proc.returncode != 0:
        raise AssertionError(f"geal-run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    synthetic.make_image_folder(tmp / "train", n_per_class=6, seed=0)
    synthetic.make_image_folder(tmp / "test", n_per_class=4, seed=1)
    return tmp


def test_tiny_joblib_sweep_then_report(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = data / "multirun"
    geal_run(
        data,
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "selector=geal,random",
        "seed=0,1",
        "budgets=[4,8]",
    )
    # one multirun dir, one sub-dir per job, named by the job's settings (paths by their last part)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split(",logger=none,")[1].rsplit("-", 1)[0] for p in jobs] == [
        "seed=0,selector=geal",
        "seed=0,selector=random",
        "seed=1,selector=geal",
        "seed=1,selector=random",
    ]
    assert all(p.name.startswith("budgets=[4,8],data.root=train,data.test.root=test,") for p in jobs)
    assert (sweep / "multirun.yaml").is_file()
    docs = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    assert sorted((d["method"], d["seed"]) for d in docs) == [
        ("geal", 0),
        ("geal", 1),
        ("random", 0),
        ("random", 1),
    ]
    assert all(not (p / "failure.json").exists() for p in jobs)
    assert {r.status for r in collect(sweep).runs} == {DONE}

    out = data / "report"
    report_main([str(sweep), "--out", str(out), "--digits", "2"])
    printed = capsys.readouterr().out
    rows = {(r["method"], int(r["budget"])): r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {("geal", 4), ("geal", 8), ("random", 4), ("random", 8)}
    for (method, budget), row in rows.items():
        values = [
            next(r["metrics"]["top1"] for r in d["results"] if r["budget"] == budget)
            for d in docs
            if d["method"] == method
        ]
        mean = sum(values) / 2
        std = (sum((v - mean) ** 2 for v in values)) ** 0.5  # sample std of two values: |a - b| / √2
        assert float(row["mean"]) == pytest.approx(mean) and float(row["std"]) == pytest.approx(std)
        assert row["n"] == "2" and row["seeds"] == "0 1" and row["metric"] == "top1"
        cell = f"{100 * mean:.2f} ± {100 * std:.2f} (2)"
        assert cell in printed  # the Markdown table shows the same numbers
    assert "| method | 4 | 8 |" in printed and "Runs that did not finish" not in printed
    eff = list(csv.DictReader((out / "efficiency.csv").open()))
    assert [r["method"] for r in eff] == ["geal", "random"] and all(r["runs"] == "2" for r in eff)
    assert (out / "results_top1.png").stat().st_size > 10_000 and (out / "results_top1.svg").is_file()


def test_a_failed_job_writes_failure_json_and_the_report_lists_it(data: Path) -> None:
    run_dir = data / "failed_run"
    proc = geal_run(
        data, f"hydra.run.dir={run_dir}", "budgets=[4]", "data.test.root=/nonexistent/test", check=False
    )
    assert proc.returncode != 0
    failure = json.loads((run_dir / "failure.json").read_text())
    assert failure["error"] == "FileNotFoundError" and "/nonexistent/test" in failure["message"]
    assert any("raise" in line or "Error" in line for line in failure["traceback"])
    [run] = collect(run_dir).runs
    assert run.status == FAILED and run.method == "geal" and "/nonexistent/test" in run.reason


def test_failure_callback_removes_a_stale_record(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {"hydra": {"runtime": {"output_dir": str(tmp_path)}, "overrides": {"task": ["seed=1"]}}}
    )
    cb = FailureRecordCallback()
    cb.on_job_end(cfg, JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom")))
    assert json.loads((tmp_path / "failure.json").read_text())["overrides"] == ["seed=1"]
    cb.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED, _return_value=None))
    assert not (tmp_path / "failure.json").exists()


# ------------------------------------------------------------------------------------------- devices

GPUS = [DeviceSlot("cuda:0", "GPU-aaaa"), DeviceSlot("cuda:1", "GPU-bbbb")]


def test_leases_spread_jobs_over_devices_and_wait_when_all_are_taken(tmp_path: Path) -> None:
    first = lease_device(GPUS, preferred=0, lock_dir=tmp_path)
    second = lease_device(GPUS, preferred=0, lock_dir=tmp_path)  # cuda:0 is held: takes the other
    assert (first.device, second.device) == ("cuda:0", "cuda:1")
    with pytest.raises(TimeoutError, match="held by other jobs"):
        lease_device(GPUS, preferred=1, lock_dir=tmp_path, timeout_s=0.2, poll_s=0.05)
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(lease_device(GPUS, 1, lock_dir=tmp_path).device))
    waiter.start()
    time.sleep(0.3)
    assert got == []  # still waiting: never a second job on a held device
    second.release()
    waiter.join(timeout=5)
    assert got == ["cuda:1"]
    two_slots = lease_device(GPUS[:1], slots_per_device=2, lock_dir=tmp_path)  # a second slot of cuda:0
    assert two_slots.device == "cuda:0" and two_slots.lock_file.name == "GPU-aaaa.slot1.lock"
    # the same index of another physical GPU (another job's CUDA_VISIBLE_DEVICES) is not blocked
    assert lease_device([DeviceSlot("cuda:0", "GPU-cccc")], lock_dir=tmp_path, timeout_s=0).device == "cuda:0"


def test_a_dead_job_never_blocks_a_device(tmp_path: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path; "
        "from geal.run.device_lease import DeviceSlot, lease_device; "
        f"lease_device([DeviceSlot('cuda:0', 'GPU-aaaa')], lock_dir=Path({str(tmp_path)!r})); os._exit(1)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False, timeout=120)
    assert lease_device(GPUS[:1], lock_dir=tmp_path, timeout_s=0).device == "cuda:0"


def test_device_lease_callback_makes_auto_the_leased_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEAL_DEVICE_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(geal.run.callbacks, "cuda_slots", lambda: GPUS)
    other_job = lease_device(GPUS, preferred=1, lock_dir=tmp_path)  # job 1 of the sweep holds cuda:1
    callback = DeviceLeaseCallback()
    job3 = OmegaConf.create({"device": "auto", "hydra": {"job": {"num": 3}}})  # prefers cuda:1 (3 % 2)
    callback.on_job_start(job3)
    assert resolve_device("auto") == torch.device("cuda:0")  # took the free one instead
    callback.on_job_end(job3, JobReturn(status=JobStatus.COMPLETED))
    assert current_lease() is None
    assert lease_device(GPUS[:1], lock_dir=tmp_path, timeout_s=0).device == "cuda:0"  # released
    other_job.release()
    cpu_job = OmegaConf.create({"device": "cpu", "hydra": {"job": {"num": 0}}})
    callback.on_job_start(cpu_job)
    assert current_lease() is None and resolve_device("cpu") == torch.device("cpu")


# --------------------------------------------------------------------------------------------- SLURM


def test_slurm_launcher_config_makes_an_sbatch_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our slurm.yaml through the submitit launcher's own parameter mapping → the sbatch script text."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"  # submitit's SLURM executor insists on finding srun
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "run",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.array_parallelism=3",
                f"hydra.sweep.dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(launcher, dict) and launcher.pop("_target_").endswith("SlurmLauncher")
    assert launcher["submitit_folder"] == f"{tmp_path}/.submitit/%j"
    # the mapping of hydra_plugins.hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher.launch
    executor = submitit.AutoExecutor(
        folder=launcher.pop("submitit_folder"),
        cluster="slurm",
        slurm_max_num_timeout=launcher.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items()})
    slurm = executor._executor
    slurm.parameters["map_count"] = 8  # 2 selectors × 2 seeds × 2 ...: 8 jobs
    script = slurm._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=240",
        "#SBATCH --array=0-7%3",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
    ):
        assert line in script.splitlines(), (line, script)
