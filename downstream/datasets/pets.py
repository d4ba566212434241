"""Oxford-IIIT Pet pool (37 breeds; ``trainval`` 3,680 images, ``test`` 3,669)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets import OxfordIIITPet

from downstream.datasets.folder import FilePool, write_lines

log = logging.getLogger(__name__)

_FOLDER = "oxford-iiit-pet"
_LAYOUT = (
    f"Expected layout: <root>/{_FOLDER}/images/<Image>.jpg and <root>/{_FOLDER}/annotations/"
    "{trainval,test}.txt with lines 'Image CLASS-ID SPECIES BREED-ID' (the official images.tar.gz and "
    f"annotations.tar.gz extracted into <root>/{_FOLDER})."
)


class PetsPool(FilePool):
    """Images of one Oxford-IIIT Pet split, in the split file's order.

    ``root`` is the folder holding ``oxford-iiit-pet/`` (torchvision's convention); the ``oxford-iiit-pet``
    folder itself is accepted too. Ids are image names (``Abyssinian_100``), labels the 0-based CLASS-ID,
    class names torchvision's (``"American Bulldog"``). The split file is parsed here to keep the SPECIES and
    BREED-ID columns for :meth:`write_split`; torchvision's ``OxfordIIITPet`` checks the layout and names
    the classes, and must list the same number of images.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "trainval", name: str = "pets") -> None:
        self.name = name
        self.split = split
        root = Path(root)
        if not (root / _FOLDER).is_dir() and root.name == _FOLDER:
            root = root.parent  # the oxford-iiit-pet folder itself was given
        base = root / _FOLDER
        if not base.is_dir():
            raise FileNotFoundError(f"Oxford-IIIT Pet folder '{base}' is missing. {_LAYOUT}")
        for sub in ("images", "annotations"):
            if not (base / sub).is_dir():
                raise FileNotFoundError(f"Oxford-IIIT Pet folder '{base / sub}' is missing. {_LAYOUT}")
        split_file = base / "annotations" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"Oxford-IIIT Pet split list '{split_file}' is missing. {_LAYOUT}")
        self._root = base
        rows = _read_split(split_file)
        ds = OxfordIIITPet(str(root), split=split, target_types="category", download=False)
        if len(ds) != len(rows):
            raise ValueError(f"'{split_file}': torchvision lists {len(ds)} images, parsed {len(rows)}.")
        self._ids = [r[0] for r in rows]
        dup = sorted(i for i, n in Counter(self._ids).items() if n > 1)
        if dup:
            raise ValueError(f"'{split_file}' lists image ids more than once, e.g. {dup[:5]}.")
        self._labels = [r[1] - 1 for r in rows]
        self._species = [r[2] for r in rows]
        self._breeds = [r[3] for r in rows]
        self._paths = [base / "images" / f"{i}.jpg" for i in self._ids]
        # torchvision's class names are ordered by label over the labels present in the split
        by_label = dict(zip(sorted(set(self._labels)), ds.classes, strict=True))
        self._class_names = [by_label.get(k, f"class_{k + 1}") for k in range(max(self._labels) + 1)]
        self._missing_files_error(f"'{split_file}'")
        log.info("PetsPool '%s': %d %s images, %d classes", name, len(self._ids), split, len(by_label))

    def trimap_path(self, index: int) -> Path:
        """The ``annotations/trimaps/<id>.png`` file of image ``index`` (1 pet, 2 background, 3 border)."""
        return self._root / "annotations" / "trimaps" / f"{self._ids[index]}.png"

    def write_split(self, global_ids: Sequence[int], out_dir: Path, split_name: str) -> list[Path]:
        """Write ``<out_dir>/annotations/<split_name>.txt`` in the split files' format, in the given order.

        Each line is ``Image CLASS-ID SPECIES BREED-ID`` (``Abyssinian_100 1 1 1``), as in ``trainval.txt``.
        """
        ids = self.checked_ids(global_ids)
        lines = [f"{self._ids[g]} {self._labels[g] + 1} {self._species[g]} {self._breeds[g]}" for g in ids]
        return [write_lines(Path(out_dir) / "annotations" / f"{split_name}.txt", lines)]


def _read_split(path: Path) -> list[tuple[str, int, int, int]]:
    """Rows ``(image, class_id, species, breed_id)`` of a Pets list file (``#`` comment lines skipped)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"'{path}' line {n}: expected 'Image CLASS-ID SPECIES BREED-ID', got {line!r}")
        rows.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    if not rows:
        raise ValueError(f"Oxford-IIIT Pet split list '{path}' is empty.")
    return rows
