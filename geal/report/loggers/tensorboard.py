"""TensorBoard logger (torch.utils.tensorboard; needs the ``tensorboard`` package)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geal.report.loggers.base import RunLogger, flatten, prefixed, scalars


class TensorBoardLogger(RunLogger):
    """Event files under ``<save_dir>/<name>``: metrics as scalars, config and summary as text, the
    numeric summary values also as scalars (step 0)."""

    def __init__(self, save_dir: str, name: str = "tensorboard") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is an optional dependency
            raise ImportError(
                "logger=tensorboard needs the tensorboard package: pip install tensorboard "
                "(or use logger=csv / logger=wandb)"
            ) from err
        self.directory = Path(save_dir).expanduser() / name
        self.writer = SummaryWriter(log_dir=str(self.directory))
        self._closed = False

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps(dict(config), indent=2, default=str)
        self.writer.add_text("config", f"```\n{text}\n```", global_step=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        for key, value in scalars(prefixed(dict(metrics), prefix)).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_summary(self, values: Mapping[str, Any]) -> None:
        flat = flatten(values)
        for key, value in scalars(flat).items():
            self.writer.add_scalar(f"summary/{key}", value, global_step=0)
        self.writer.add_text("summary", json.dumps(flat, indent=2, default=str), global_step=0)
        self.writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.close()
