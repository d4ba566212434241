"""The SLURM launcher end to end against a fake SLURM: ``geal-run -m hydra/launcher=slurm`` submits one job
array through hydra-submitit-launcher; a stand-in ``sbatch`` runs the array's tasks on this machine the way
SLURM would (the batch script, with the SLURM_* environment of each array task, ``srun`` executing the
command), and every job writes into the sweep's one multirun dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from downstream.datasets import synthetic
from geal.report.results import DONE, collect

REPO = Path(__file__).resolve().parents[1]

SBATCH = """\
import re, subprocess, sys
text = open(sys.argv[-1]).read()
array = re.search(r"#SBATCH --array=0-(\\d+)%(\\d+)", text)
n, parallel = (int(array.group(1)) + 1, int(array.group(2))) if array else (1, 1)
with open({log!r}, "a") as log:
    log.write(text + "\\n---\\n")
subprocess.Popen([sys.executable, {runner!r}, sys.argv[-1], str(n), str(parallel)], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("Submitted batch job 4242")
"""

RUNNER = """\
import os, re, subprocess, sys, time
from pathlib import Path
script, n, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
folder = re.search(r"submitit\\.core\\._submit (\\S+)", open(script).read()).group(1).strip("'")
pickles = [Path(folder.replace("%j", f"4242_{i}")) / f"4242_{i}_submitted.pkl" for i in range(n)]
deadline = time.time() + 120
while not all(p.exists() for p in pickles) and time.time() < deadline:
    time.sleep(0.2)  # submitit moves the pickles in place once sbatch has answered
running = []
for i in range(n):
    while len([p for p in running if p.poll() is None]) >= parallel:
        time.sleep(0.2)
    env = {**os.environ, "SLURM_JOB_ID": str(5000 + i), "SLURM_ARRAY_JOB_ID": "4242",
           "SLURM_ARRAY_TASK_ID": str(i), "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    running.append(subprocess.Popen(["bash", script], env=env))
for p in running:
    p.wait()
"""

SRUN = """\
import os, subprocess, sys
args, out, err = sys.argv[1:], None, None
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        path = args.pop(0)
        for k, v in (("%A", os.environ["SLURM_ARRAY_JOB_ID"]), ("%a", os.environ["SLURM_ARRAY_TASK_ID"]),
                     ("%t", "0"), ("%j", os.environ["SLURM_JOB_ID"])):
            path = path.replace(k, v)
        if flag == "--output":
            out = path
        else:
            err = path
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "a") as fo, open(err or out, "a") as fe:
    sys.exit(subprocess.call(args, stdout=fo, stderr=fe))
"""


def fake_slurm(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True)
    log = bin_dir / "sbatch.log"
    runner = bin_dir / "array_runner.py"
    runner.write_text(RUNNER)
    for name, body in (
        ("sbatch", SBATCH.format(log=str(log), runner=str(runner))),
        ("srun", SRUN),
        ("sacct", 'print("JobID|State|NodeList")\n'),  # nothing known yet: submitit waits for the results
    ):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
    return log


@pytest.mark.slow
def test_slurm_sweep_through_submitit(tmp_path: Path) -> None:
    synthetic.make_image_folder(tmp_path / "train", n_per_class=5, seed=0)
    synthetic.make_image_folder(tmp_path / "test", n_per_class=3, seed=1)
    log = fake_slurm(tmp_path / "bin")
    sweep = tmp_path / "multirun"
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "GEAL_DEVICE_LOCK_DIR": str(tmp_path / "locks"),
    }
    cmd = [
        sys.executable,
        "-c",
        "from geal.run.cli import run_main; run_main()",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.array_parallelism=2",
        "hydra.launcher.timeout_min=30",
        f"hydra.sweep.dir={sweep}",
        "debug=smoke",
        "data=image_folder",
        f"data.root={tmp_path / 'train'}",
        f"data.test.root={tmp_path / 'test'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "logger=none",
        "budgets=[3,6]",
        "selector=geal,random",
        "seed=0",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    script = log.read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --time=30" in script
    runs = collect(sweep).runs
    names = sorted(r.directory.name.rsplit("-", 1)[0].split(",logger=none,")[1] for r in runs)
    assert names == ["seed=0,selector=geal", "seed=0,selector=random"] and all(r.status == DONE for r in runs)
    assert sorted(r.method for r in runs) == ["geal", "random"]
    assert (sweep / ".submitit").is_dir()  # submitit's own files inside the sweep dir
    for run in runs:
        doc = json.loads((run.directory / "metrics.json").read_text())
        assert [r["budget"] for r in doc["results"]] == [3, 6]
