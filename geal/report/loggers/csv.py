"""CSV logger: ``metrics.csv`` in long format plus ``config.json`` and ``summary.json``."""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geal.report.loggers.base import RunLogger, flatten, prefixed, scalars
from geal.util.io import atomic_write_json


class CSVLogger(RunLogger):
    """Writes under ``<save_dir>/<name>/``.

    ``metrics.csv`` is long format — ``time,step,key,value``, one row per value — so keys that appear only
    later (a new metric, the next budget) never invalidate the header; it is flushed on every call.
    ``config.json`` and ``summary.json`` are rewritten atomically (the summary accumulates).
    """

    def __init__(self, save_dir: str, name: str = "csv") -> None:
        self.directory = Path(save_dir).expanduser() / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.directory / "metrics.csv"
        new = not self.metrics_path.exists()
        self._fh = self.metrics_path.open("a", newline="")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(["time", "step", "key", "value"])
            self._fh.flush()
        self._summary: dict[str, Any] = {}

    def log_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_json(self.directory / "config.json", dict(config))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        now = f"{time.time():.3f}"
        for key, value in scalars(prefixed(dict(metrics), prefix)).items():
            self._writer.writerow([now, "" if step is None else step, key, repr(value)])
        self._fh.flush()

    def log_summary(self, values: Mapping[str, Any]) -> None:
        self._summary.update(flatten(values))
        atomic_write_json(self.directory / "summary.json", self._summary)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
