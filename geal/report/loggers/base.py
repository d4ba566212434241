"""The run-logger interface, fan-out and the null logger."""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any


def flatten(values: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested dicts → one level with ``a/b`` keys (lists and other leaves kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite-or-NaN real numbers of a flattened mapping, as floats (bools and strings dropped)."""
    return {
        k: float(v)
        for k, v in flatten(values).items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isinf(float(v))
    }


class RunLogger(ABC):
    """Where a run's config, metric streams and final values go. Usable as a context manager."""

    @abstractmethod
    def log_config(self, config: Mapping[str, Any]) -> None:
        """The resolved run config (nested)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        """Scalar metrics at ``step`` (an epoch, a budget...); ``prefix`` is prepended as ``prefix/key``."""

    @abstractmethod
    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Final values (metrics, selection stats, timings), nested dicts flattened with ``/``."""

    def close(self) -> None:  # noqa: B027 - optional hook, idempotent
        """Flush and release; safe to call twice."""

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}" if prefix else k: v for k, v in metrics.items()}


class NullLogger(RunLogger):
    """Logs nothing (``logger=none``)."""

    def __init__(self, save_dir: str | None = None) -> None:
        self.save_dir = save_dir

    def log_config(self, config: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        return None

    def log_summary(self, values: Mapping[str, Any]) -> None:
        return None


class MultiLogger(RunLogger):
    """Sends everything to several loggers."""

    def __init__(self, loggers: Sequence[RunLogger]) -> None:
        self.loggers = list(loggers)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_config(config)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step=step, prefix=prefix)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_summary(values)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
