"""Time and peak memory of the one-pass peers (baselines/typiclust.py, probcover.py, ...) on synthetic pools.

Each (selector, pool size) runs in a fresh child process, so its peak resident memory (``ru_maxrss``) is its
own: the child builds the features — clustered Gaussians (``--clusters`` centres ~ N(0, 1)^D of Dirichlet
sizes, points = centre + N(0, 0.5²)^D, float32) — then selects ``--budget-frac`` of the pool with the
selector's config from geal/conf/selector/ (ProbCover with ``n_classes = 10``). One line per run:

    <selector> n=<pool> budget=<B> time <s> peak RSS <MiB> (+<MiB> over the features) [cuda peak <MiB>]

"+ over the features" is the peak minus the resident memory just before ``select`` (interpreter, torch,
sklearn and the features already loaded), i.e. what the selection itself added.

Usage: python scripts/bench_peers.py [--sizes 10000 100000] [--selectors typiclust probcover ...]
       [--budget-frac 0.01] [--dim 384] [--clusters 100] [--device cpu] [--threads N] [--seed 0]
       [--timeout S]  (a run past S seconds is stopped and reported with its peak RSS until then)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from geal.api.features import GlobalFeatures, KnowledgeClusterSet

PEERS = ["typiclust", "probcover", "maxherding", "usl", "kmeans_nearest", "activeft"]
CONF = Path(__file__).resolve().parents[1] / "geal" / "conf" / "selector"


def synthetic_features(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """(n, dim) float32 clustered Gaussians (see the module docstring)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dim)).astype(np.float32)
    sizes = rng.multinomial(n, rng.dirichlet(np.ones(clusters)))
    label = np.repeat(np.arange(clusters), sizes)
    rng.shuffle(label)
    return centres[label] + rng.normal(0, 0.5, (n, dim)).astype(np.float32)


class _Features:
    """A FeatureSource over in-memory global features (every image readable); the peers need nothing else."""

    def __init__(self, features: np.ndarray) -> None:
        from geal.api.features import FeatureTimings, GlobalFeatures

        self.timings = FeatureTimings()
        self._global = GlobalFeatures(features, np.ones(len(features), dtype=bool))

    def global_features(self) -> GlobalFeatures:
        return self._global

    def knowledge_clusters(self, request: object, settings: object) -> KnowledgeClusterSet:
        raise NotImplementedError("the peers select on global features only")


class _Pool:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(args: argparse.Namespace) -> None:
    """Run one selector on one pool size and print a JSON line."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from geal.api.selector import SelectionContext

    if args.threads:  # torch's and the BLAS / OpenMP pools of numpy and scikit-learn
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    name, n = args.child, args.n
    feats = synthetic_features(n, args.dim, args.clusters, args.seed)
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    if name == "probcover":
        cfg.n_classes = 10
    selector = instantiate(cfg, _convert_="all")
    budget = max(1, round(args.budget_frac * n))
    device = torch.device(args.device)
    ctx = SelectionContext(seed=args.seed, device=device, features=_Features(feats), progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss_mib()
    t0 = time.perf_counter()
    sel = selector.select(_Pool(n), budget, ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "selector": name,
        "n": n,
        "budget": budget,
        "seconds": seconds,
        "peak_rss_mib": peak,
        "before_mib": before,
        "picks": len(sel.global_ids),
    }
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(out))


def _run_child(cmd: list[str], timeout: float | None) -> tuple[subprocess.CompletedProcess | None, float]:
    """Run a child; past ``timeout`` seconds kill it → (None, its peak RSS in MiB so far, from VmHWM)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0, peak = time.monotonic(), 0.0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                hwm = next(line for line in f if line.startswith("VmHWM:"))
            peak = max(peak, int(hwm.split()[1]) / 1024)
        except (OSError, StopIteration):
            pass
        if timeout and time.monotonic() - t0 > timeout:
            proc.kill()
            proc.communicate()
            return None, peak
        time.sleep(0.5)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--selectors", nargs="+", default=PEERS, choices=PEERS)
    parser.add_argument("--budget-frac", type=float, default=0.01)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="threads of torch and the BLAS (0: defaults)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=0, help="seconds per run, then stopped (0: none)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    for n in args.sizes:
        for name in args.selectors:
            cmd = [sys.executable, __file__, "--child", name, "--n", str(n)]
            for key in ("budget_frac", "dim", "clusters", "device", "threads", "seed"):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            proc, peak_so_far = _run_child(cmd, args.timeout)
            if proc is None:
                print(
                    f"{name:15s} n={n} did not finish within --timeout {args.timeout:.0f} s "
                    f"(peak RSS until then {peak_so_far:.0f} MiB)",
                    flush=True,
                )
                continue
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
                print(f"{name:15s} n={n} FAILED: {tail[0]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            line = (
                f"{name:15s} n={n} budget={r['budget']} time {r['seconds']:.1f} s "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['peak_rss_mib'] - r['before_mib']:.0f} MiB "
                f"over the features)"
            )
            if "cuda_peak_mib" in r:
                line += f" cuda peak {r['cuda_peak_mib']:.0f} MiB"
            print(line, flush=True)


if __name__ == "__main__":
    main()
