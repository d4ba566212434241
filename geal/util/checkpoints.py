"""Reading weight files (``.pth`` / ``.pt`` / ``.safetensors``) with errors that name the file.

torch's own errors for a truncated, empty or foreign file (``UnpicklingError`` with advice to pass
``weights_only=False`` — unsafe, and wrong here —, a bare ``EOFError``, miniz's "not a ZIP archive") never
say which file; these do, in one line, and never suggest executing a file's code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class CorruptCheckpointError(ValueError):
    """A weights file is empty, truncated or not a weights file. ``path`` names it."""

    def __init__(self, path: Path, what: str, reason: str) -> None:
        self.path = path
        super().__init__(
            f"{what} {path} cannot be read: {reason}; replace it with an intact copy (it is truncated, "
            f"corrupt, or not a PyTorch/safetensors weights file)"
        )


def _reason(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "weights_only" in first or len(first) > 160:  # torch's advice is wrong here: name the error only
        first = ""
    return f"{type(err).__name__}" + (f": {first}" if first else "")


def load_weights_file(
    path: str | os.PathLike[str], what: str = "weights file", safe_globals: Sequence[Any] = ()
) -> Any:
    """The content of a weights file, on the CPU, without executing code (``weights_only=True``;
    ``safe_globals``: extra types a checkpoint may pickle). A missing file is a ``FileNotFoundError``, an
    unreadable one a :class:`CorruptCheckpointError`, both naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(path, what, "the file is empty (0 bytes)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError and friends: any failure to parse the file
            raise CorruptCheckpointError(path, what, _reason(err)) from err
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, EOFError, RuntimeError (zip), ...: the file is the problem
        raise CorruptCheckpointError(path, what, _reason(err)) from err
