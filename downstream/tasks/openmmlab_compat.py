"""What the OpenMMLab backend needs to run mmdet 3.3.0 / mmsegmentation 1.2.2 / mmengine 0.10.7 on the
project's torch, done from the project (never by editing files in site-packages). Each workaround is tested
in ``tests/test_openmmlab.py``.

* :func:`trusted_checkpoints`: torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine's own
  checkpoints (``message_hub``, numpy arrays, ``HistoryBuffer`` ...) do not unpickle under it, so a resume
  fails with ``UnpicklingError``. Inside the context, mmengine's local-file loader uses
  ``weights_only=False`` for files under the given (trusted: the run's own work) folders only; any other
  file keeps torch's safe default.
* :class:`SSDHeadCompat`: mmdet 3.3.0's ``SSDHead`` never sets ``loss_cls`` (its ``__init__`` skips
  ``AnchorHead``'s), but the shared ``predict`` path reads ``self.loss_cls`` → ``AttributeError`` at the
  first evaluation. The subclass sets it to None (SSD's softmax classification has no custom channels).
* :class:`SSDNeckCompat`: ``L2Norm.weight`` is ``torch.Tensor(n)``, uninitialised memory, filled only by
  the neck's ``init_cfg`` (``Constant`` with ``override=l2_norm``); a model built without
  ``init_weights`` (or a user ``init_cfg`` that drops that entry) computes with garbage, often NaN. The
  subclass fills it with the scale at construction.
* :func:`backbone_init`: the configs' backbones initialise from ``open-mmlab://...`` checkpoints, a
  download; offline (``HF_HUB_OFFLINE=1`` / ``GEAL_OFFLINE=1``) that is refused up front, with the fix in the
  message: a local weights file or none (random).
* :func:`replace_sync_bn`: mmseg's configs use ``SyncBN``, which needs a distributed process group; a
  single-process run (CPU or one GPU) uses ``BN`` instead (same statistics on one device).

mmseg also imports ``ftfy`` and ``regex`` (for its text models) at import time: the ``openmmlab`` extra lists
them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from geal.api.task import TaskError

log = logging.getLogger(__name__)

#: the releases the backend is written and tested against
VERSIONS = {"mmengine": "0.10.7", "mmcv": "2.1.0", "mmdet": "3.3.0", "mmseg": "1.2.2"}

INSTALL_HINT = (
    "install the OpenMMLab extra: `make openmmlab` (builds mmcv 2.1.0 once, then pip install -e "
    "'.[openmmlab]')"
)


def require(*packages: str, task: str = "this task") -> None:
    """Import ``packages`` (e.g. ``"mmdet"``) or raise a one-line TaskError saying how to install them."""
    for name in packages:
        try:
            __import__(name)
        except ImportError as err:
            raise TaskError(f"{task} needs {name} ({err}): {INSTALL_HINT}") from err
    try:
        import mmcv._ext  # noqa: F401  (the compiled ops: mmdet's NMS needs them)
    except ImportError as err:
        raise TaskError(
            f"{task} needs mmcv with its compiled ops (mmcv._ext: {err}); mmcv-lite has none: {INSTALL_HINT}"
        ) from err


def offline() -> bool:
    """No network: ``GEAL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` (the project's offline switch, set by make)."""
    return any(
        os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in ("GEAL_OFFLINE", "HF_HUB_OFFLINE")
    )


def config_file(spec: str | os.PathLike[str], package: str) -> Path:
    """The config file ``spec``: a path, or a path inside ``package``'s shipped configs
    (``pascal_voc/ssd300_voc0712.py`` → ``mmdet/.mim/configs/pascal_voc/ssd300_voc0712.py``)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    module = __import__(package)
    shipped = Path(str(module.__file__)).parent / ".mim" / "configs" / str(spec)
    if shipped.is_file():
        return shipped
    raise TaskError(f"config '{spec}' is neither a file nor one of {package}'s shipped configs ({shipped})")


# ------------------------------------------------------------------ checkpoints under weights_only


def _is_under(path: Path, roots: Sequence[Path]) -> bool:
    path = path.resolve()
    return any(path == r or r in path.parents for r in roots)


@contextlib.contextmanager
def trusted_checkpoints(*folders: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, mmengine loads local checkpoints under ``folders`` with ``weights_only=False``
    (mmengine's own training checkpoints; see the module docstring), every other file as before."""
    from mmengine.runner.checkpoint import CheckpointLoader

    roots = [Path(f).resolve() for f in folders]
    original = CheckpointLoader._schemes[""]

    def load_local(filename: str, map_location: Any = None) -> Any:
        path = Path(os.path.expanduser(filename))
        if not path.is_file():
            raise FileNotFoundError(f"{filename} can not be found.")
        if _is_under(path, roots):
            return torch.load(path, map_location=map_location, weights_only=False)
        return original(filename, map_location)

    CheckpointLoader._schemes[""] = load_local
    try:
        yield
    finally:
        CheckpointLoader._schemes[""] = original


# ------------------------------------------------------------------ SSD (mmdet 3.3.0)


@functools.cache
def register_mmdet_compat() -> None:
    """Register :class:`SSDHeadCompat` and :class:`SSDNeckCompat` in mmdet's model registry (once)."""
    from mmdet.models.dense_heads import SSDHead
    from mmdet.models.necks import SSDNeck
    from mmdet.registry import MODELS

    class SSDHeadCompat(SSDHead):
        """mmdet's SSDHead with the ``loss_cls`` attribute its ``predict`` path reads (None)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.loss_cls = None

    class SSDNeckCompat(SSDNeck):
        """mmdet's SSDNeck with ``L2Norm.weight`` set to its scale at construction."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if hasattr(self, "l2_norm"):
                with torch.no_grad():
                    self.l2_norm.weight.fill_(float(self.l2_norm.scale))

    MODELS.register_module(name="SSDHeadCompat", module=SSDHeadCompat, force=True)
    MODELS.register_module(name="SSDNeckCompat", module=SSDNeckCompat, force=True)


def apply_ssd_compat(model_cfg: Any) -> None:
    """Point an SSD model config at the compat head and neck (no-op for other detectors)."""
    register_mmdet_compat()
    if model_cfg.get("bbox_head", {}).get("type") == "SSDHead":
        model_cfg.bbox_head.type = "SSDHeadCompat"
    if model_cfg.get("neck", {}).get("type") == "SSDNeck":
        model_cfg.neck.type = "SSDNeckCompat"


# ------------------------------------------------------------------ backbone weights, SyncBN


def backbone_init(weights: str | None, setting: str) -> dict[str, Any] | None:
    """The backbone ``init_cfg`` for ``weights``: a local file → ``Pretrained`` from it; an
    ``open-mmlab://`` / ``http(s)://`` address → ``Pretrained`` from it when online (a TaskError offline);
    None → no init_cfg (the backbone's own random initialisation)."""
    if weights is None or str(weights).lower() in ("", "none", "null"):
        return None
    text = str(weights)
    if "://" in text:
        if offline():
            raise TaskError(
                f"{setting}={text} is a download and this run is offline: set {setting}=/path/to/weights.pth "
                "(a local checkpoint) or null (random init)"
            )
        return {"type": "Pretrained", "checkpoint": text}
    path = Path(text).expanduser()
    if not path.is_file():
        raise TaskError(f"{setting}: weights file '{path}' does not exist (or set {setting}=null for random)")
    return {"type": "Pretrained", "checkpoint": str(path.resolve())}


def replace_sync_bn(node: Any) -> int:
    """Replace every ``SyncBN`` norm config in ``node`` (nested dicts/lists) by ``BN``; how many."""
    count = 0
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
            count += 1
        for value in node.values():
            count += replace_sync_bn(value)
    elif isinstance(node, list):
        for value in node:
            count += replace_sync_bn(value)
    return count


def merged(base: Any, overrides: dict[str, Any] | None) -> Any:
    """A copy of the mmengine Config ``base`` with ``overrides`` merged in (nested dicts merge key by key,
    anything else replaces: lists replace whole, as in mmengine's own ``merge_from_dict``)."""
    cfg = copy.deepcopy(base)
    if overrides:
        cfg.merge_from_dict(dict(overrides))
    return cfg
