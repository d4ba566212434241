"""Cityscapes pool: the ``leftImg8bit`` images of one split (fine annotations), and the official label-id →
train-id mapping of the 19 evaluated classes."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import Cityscapes

from downstream.datasets.folder import FilePool, write_lines

log = logging.getLogger(__name__)

_SUFFIX = "_leftImg8bit.png"
_LAYOUT = (
    "Expected layout: <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
    "<root>/gtFine/<split>/<city>/..._gtFine_labelIds.png (the official leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip extracted into root)."
)


#: ignored pixels in train-id maps (void classes, ``ego vehicle``, ``license plate`` ...)
IGNORE_INDEX = 255


def _train_id_lookup() -> np.ndarray:
    """(256,) uint8: label id → train id, 255 for ignored and unknown ids (torchvision's copy of
    cityscapesScripts' ``labels.py``: 34 labels, 19 with a train id)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for c in Cityscapes.classes:
        if 0 <= c.id < 256 and 0 <= c.train_id < IGNORE_INDEX:
            lut[c.id] = c.train_id
    return lut


#: label id → train id lookup table (``TRAIN_ID_LUT[label_ids]`` maps a whole ``gtFine_labelIds`` map)
TRAIN_ID_LUT: np.ndarray = _train_id_lookup()

#: the 19 evaluated classes in train-id order (road, sidewalk, building, ..., bicycle)
TRAIN_CLASSES: tuple[str, ...] = tuple(
    c.name for c in sorted(Cityscapes.classes, key=lambda c: c.train_id) if 0 <= c.train_id < IGNORE_INDEX
)


def read_train_ids(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) uint8 train ids (255 = ignored) of a ``*_gtFine_labelIds.png`` file."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"mode {img.mode}, expected an 8-bit label-id map")
            label_ids = np.asarray(img)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read Cityscapes label map '{path}': {err}. {_LAYOUT}") from err
    if label_ids.ndim != 2 or label_ids.min() < 0 or label_ids.max() > 255:
        raise ValueError(f"Cityscapes label map '{path}' is not a 2-D map of label ids 0..255")
    return TRAIN_ID_LUT[label_ids.astype(np.int64)]


class CityscapesPool(FilePool):
    """Images of ``leftImg8bit/<split>``, listed by torchvision's ``Cityscapes`` (mode fine, semantic).

    Ids are file stems without ``_leftImg8bit`` (``aachen_000000_000019``), sorted by city then name
    (torchvision lists in ``os.listdir`` order, which is not stable, so the order is fixed here).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", name: str = "cityscapes") -> None:
        self.name = name
        self.split = split
        self._root = Path(root)
        for sub in ("leftImg8bit", "gtFine"):
            folder = self._root / sub / split
            if not folder.is_dir():
                raise FileNotFoundError(f"Cityscapes folder '{folder}' is missing. {_LAYOUT}")
        ds = Cityscapes(str(self._root), split=split, mode="fine", target_type="semantic")
        pairs = sorted(
            (Path(p).parent.name, Path(p).name[: -len(_SUFFIX)], Path(p))
            for p in ds.images
            if Path(p).name.endswith(_SUFFIX)
        )
        if not pairs:
            raise FileNotFoundError(
                f"No '*{_SUFFIX}' images under '{self._root / 'leftImg8bit' / split}'. {_LAYOUT}"
            )
        self._ids = [stem for _, stem, _ in pairs]
        self._paths = [p for _, _, p in pairs]
        self._cities = [city for city, _, _ in pairs]
        log.info(
            "CityscapesPool '%s': %d %s images from %d cities",
            name,
            len(self._ids),
            split,
            len(set(self._cities)),
        )

    @property
    def cities(self) -> Sequence[str]:
        """City folder of each global id."""
        return self._cities

    def label_path(self, index: int) -> Path:
        """The ``gtFine/<split>/<city>/<id>_gtFine_labelIds.png`` file of image ``index``."""
        return (
            self._root
            / "gtFine"
            / self.split
            / self._cities[index]
            / f"{self._ids[index]}_gtFine_labelIds.png"
        )

    def train_ids(self, index: int) -> np.ndarray:
        """(H, W) uint8 train ids (0..18, 255 ignored) of image ``index``, from its ``gtFine_labelIds``."""
        path = self.label_path(index)
        if not path.is_file():
            raise FileNotFoundError(
                f"Cityscapes label map '{path}' of image '{self._ids[index]}' is missing. {_LAYOUT}"
            )
        return read_train_ids(path)

    def write_split(self, global_ids: Sequence[int], out_dir: Path, split_name: str) -> list[Path]:
        """Write two list files of the selection, one image a line, in the given order.

        * ``<split_name>.txt``: paths relative to the Cityscapes root,
          ``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png`` (the common list-file form);
        * ``<split_name>_mmseg.txt``: mmsegmentation's ``ann_file`` form, relative to
          ``data_prefix.img_path=leftImg8bit/<split>`` without the ``_leftImg8bit.png`` suffix,
          ``aachen/aachen_000000_000019``.
        """
        ids = self.checked_ids(global_ids)
        out_dir = Path(out_dir)
        rel = [f"{self._cities[g]}/{self._ids[g]}" for g in ids]
        full = [f"leftImg8bit/{self.split}/{r}{_SUFFIX}" for r in rel]
        return [
            write_lines(out_dir / f"{split_name}.txt", full),
            write_lines(out_dir / f"{split_name}_mmseg.txt", rel),
        ]
