"""Hydra job callbacks of geal-select / geal-run / geal-visualize (``hydra.callbacks``, geal/conf/*.yaml)."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from geal.run.device_lease import DeviceSlot, cuda_slots, current_lease, lease_device, set_current_lease
from geal.util.io import atomic_write_json

log = logging.getLogger("geal")


class DeviceLeaseCallback(Callback):
    """``hydra.callbacks.device_lease``: a job on CUDA (``device`` auto / cuda / cuda:N) first leases a
    device slot (geal.run.device_lease), so parallel jobs on one machine never oversubscribe a GPU: ``auto``
    prefers ``cuda:<job.num % n_gpus>`` and takes any free GPU, ``cuda:N`` waits for that GPU. The lease
    ends with the job (or with its process)."""

    def __init__(self, slots_per_device: int = 1, timeout_s: float | None = None) -> None:
        self.slots_per_device = int(slots_per_device)
        self.timeout_s = timeout_s

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        requested = str(config.get("device", "auto"))
        slots: list[DeviceSlot] = cuda_slots() if requested != "cpu" else []
        if requested.startswith("cuda:"):
            slots = [s for s in slots if s.device == str(torch.device(requested))]
        elif requested not in ("auto", "cuda"):
            slots = []
        if not slots:
            return  # cpu, or CUDA absent (geal.run.builders.resolve_device then says what is wrong)
        num = OmegaConf.select(config, "hydra.job.num", default=0) or 0
        set_current_lease(lease_device(slots, int(num), self.slots_per_device, timeout_s=self.timeout_s))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        lease = current_lease()
        if lease is not None:
            lease.release()
        set_current_lease(None)


class FailureRecordCallback(Callback):
    """``hydra.callbacks.failure_record``: a job that raises writes ``failure.json`` (error, message,
    traceback, overrides) into its run dir, so ``geal-report`` lists why it is missing; a job that
    succeeds removes a stale one."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        out_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir", default=".")))
        path = out_dir / "failure.json"
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            cause = err
            while isinstance(cause, BaseException) and cause.__cause__ is not None:
                cause = cause.__cause__  # Hydra wraps errors of instantiate(): name the original one
            doc = {
                "error": type(cause).__name__,
                "raised_as": type(err).__name__,
                "message": str(err),
                "traceback": traceback.format_exception(err) if isinstance(err, BaseException) else [],
                "overrides": list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []),
            }
            atomic_write_json(path, doc)
            log.error("job failed (%s: %s); recorded in %s", doc["error"], doc["message"], path)
        elif path.exists():
            path.unlink()
