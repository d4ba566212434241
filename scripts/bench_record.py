"""Machine-readable benchmark records, shared by the ``scripts/bench_*.py`` scripts.

A bench script prints its result lines through :meth:`BenchRecorder.emit`; with ``--out FILE.jsonl`` each
line is also appended to that file as one JSON record::

    {"script": "bench_kmeans", "bench": "kmeans_same_init", "line": "<the printed line>",
     <the line's figures as fields>, <the run's common fields, e.g. device>,
     "host": {"cpu_model", "cpu_cores", "usable_cores", "gpu", "python", "torch", "torchvision",
              "geal_sha", "geal_dirty"}}

The printed lines stay exactly what they were; the record only adds the figures in a form a program reads.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``--out FILE.jsonl`` option."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="also append one JSON record per printed result line to this file (figures, host, versions)",
    )


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        return re.search(r"model name\s*:\s*(.*)", text).group(1).strip()  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return platform.processor() or "cpu"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def host_info() -> dict[str, Any]:
    """Where and with what the benchmark ran: CPU, cores, GPU (None without CUDA), versions, git sha."""
    import torch

    from geal.util.cores import usable_cores

    try:
        import torchvision

        tv_version: str | None = torchvision.__version__
    except ImportError:
        tv_version = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": tv_version,
        "geal_sha": _git("rev-parse", "HEAD"),
        "geal_dirty": None if status is None else bool(status),
    }


class BenchRecorder:
    """Prints result lines and, with an ``out`` file, appends each as a JSON record.

    ``script``: the bench script's name; ``common``: fields every record of this run carries (device,
    threads, seed...).
    """

    def __init__(self, script: str, out: Path | None, **common: Any) -> None:
        self.script = script
        self.out = out
        self.common = common
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, bench: str, line: str, **fields: Any) -> None:
        """Print ``line``; with ``out``, append ``{script, bench, line, **common, **fields, host}``."""
        print(line, flush=True)
        if self.out is None:
            return
        record = {
            "script": self.script,
            "bench": bench,
            "line": line,
            **self.common,
            **fields,
            "host": host_info(),
        }
        text = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        with open(self.out, "a", encoding="utf-8") as f:  # one write per record: lines never interleave
            f.write(text)
