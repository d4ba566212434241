"""Weights & Biases logger: offline mode honoured, and never a hang without network."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from geal.report.loggers.base import RunLogger, flatten, prefixed, scalars

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"


def wandb_reachable(base_url: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the wandb server (``WANDB_BASE_URL`` or api.wandb.ai) opens within
    ``timeout`` seconds — name resolution included (it runs in a daemon thread: a resolver that never
    answers cannot hang the run)."""
    url = urlparse(base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname or "", port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="wandb-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


class WandbLogger(RunLogger):
    """One wandb run per geal run; files under ``<save_dir>/wandb``.

    mode: ``online`` | ``offline`` | ``disabled`` (``WANDB_MODE`` in the environment wins, as in wandb).
    Online without a reachable server: with ``offline_fallback`` the run is logged offline (sync it later
    with ``wandb sync <dir>``), otherwise construction fails saying how to fix it. Jobs of one multirun
    sweep share ``group`` (geal-run sets it to the sweep's name when the config leaves it null).
    """

    def __init__(
        self,
        save_dir: str,
        project: str = "geal",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        mode: str = "online",
        name: str | None = None,
        job_type: str | None = None,
        offline_fallback: bool = True,
        init_timeout: float = 30.0,
    ) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE", mode)
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be online, offline or disabled, got {mode!r}")
        if mode == "online" and not wandb_reachable():
            server = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
            if not offline_fallback:
                raise ConnectionError(
                    f"wandb server {server} is unreachable. Log offline with logger.mode=offline (or "
                    f"WANDB_MODE=offline) and upload later with `wandb sync`, or pick logger=csv."
                )
            log.warning("wandb server %s unreachable: logging offline (upload later: wandb sync)", server)
            mode = "offline"
        self.directory = Path(save_dir).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            tags=list(tags),
            mode=mode,  # type: ignore[arg-type]  # a str checked above; wandb wants a Literal
            name=name,
            job_type=job_type,
            dir=str(self.directory),
            reinit="create_new",
            settings=wandb.Settings(init_timeout=init_timeout, silent=True),
        )
        self._closed = False
        self._axes: set[str] = set()

    @property
    def run_dir(self) -> Path:
        """The run's files folder (``.../wandb/offline-run-*/files`` in offline mode)."""
        return Path(self.run.dir)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        """Each prefix gets its own x axis ``<prefix>/step`` (epochs of one budget's fit, budgets of the
        run: ``step``), declared to wandb with ``define_metric`` the first time the prefix is seen."""
        values = scalars(prefixed(dict(metrics), prefix))
        if step is not None:
            axis = f"{prefix}/step" if prefix else "step"
            if axis not in self._axes:
                self._axes.add(axis)
                self.run.define_metric(axis, hidden=True)
                self.run.define_metric(f"{prefix}/*" if prefix else "*", step_metric=axis)
            values[axis] = float(step)
        self.run.log(values)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        for key, value in flatten(values).items():
            self.run.summary[key] = value

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.run.finish()
