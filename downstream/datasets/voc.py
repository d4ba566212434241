"""PASCAL VOC pool over a standard ``VOCdevkit`` tree (07+12 trainval by default: 16,551 images)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets import VOCDetection

from downstream.datasets.folder import FilePool, write_lines

log = logging.getLogger(__name__)

_LAYOUT = (
    "Expected layout: <root>/VOC2007/{JPEGImages,Annotations,ImageSets/Main}, <root>/VOC2012/..., with root "
    "the 'VOCdevkit' folder of the official archives."
)


class VOCPool(FilePool):
    """Images of one or more ``(year, image_set)`` VOC lists, concatenated in the order of ``sets``.

    ``root`` is the ``VOCdevkit`` folder (the one holding ``VOC2007/``, ``VOC2012/``); its parent is also
    accepted. Files are listed by torchvision's ``VOCDetection`` (``download=False``), which requires the
    folder to be named ``VOCdevkit``. Ids are VOC's own (``000005``, ``2008_000002``), in list-file order;
    the year of each image is kept in :attr:`years` (never parsed from the id). An id listed twice (within
    or across sets) is an error.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        sets: Sequence[Sequence[str | int]] = (("2007", "trainval"), ("2012", "trainval")),
        name: str = "voc0712",
    ) -> None:
        self.name = name
        devkit = Path(root)
        has_years = any((devkit / f"VOC{y}").is_dir() for y in range(2007, 2013))
        if not has_years and (devkit / "VOCdevkit").is_dir():  # the parent of VOCdevkit was given
            devkit = devkit / "VOCdevkit"
        if not devkit.is_dir():
            raise FileNotFoundError(f"VOC root '{devkit}' does not exist. {_LAYOUT}")
        if devkit.name != "VOCdevkit":
            raise ValueError(
                f"VOC root '{devkit}' must be named 'VOCdevkit' (torchvision's layout: <parent>/VOCdevkit/"
                f"VOC2007). Rename it or point a 'VOCdevkit' symlink at it. {_LAYOUT}"
            )
        self._root = devkit
        self._ids, self._paths, self._years = [], [], []
        self.sets: list[tuple[str, str]] = []
        where: dict[str, str] = {}
        for pair in sets:
            if len(pair) != 2:
                raise ValueError(f"each entry of sets must be a (year, image_set) pair, got {pair!r}")
            year, image_set = str(pair[0]), str(pair[1])
            self.sets.append((year, image_set))
            year_dir = devkit / f"VOC{year}"
            if not year_dir.is_dir():
                raise FileNotFoundError(
                    f"VOC folder '{year_dir}' is missing (needed for {year} {image_set}). {_LAYOUT}"
                )
            split_file = year_dir / "ImageSets" / "Main" / f"{image_set}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(f"VOC split list '{split_file}' is missing. {_LAYOUT}")
            ds = VOCDetection(str(devkit.parent), year=year, image_set=image_set, download=False)
            for img in ds.images:
                image_id = Path(img).stem
                tag = f"VOC{year}/{image_set}"
                if image_id in where:
                    raise ValueError(
                        f"VOC image id '{image_id}' is listed twice ({where[image_id]} and {tag}): the "
                        f"sets {self.sets} overlap. Use disjoint sets (e.g. 2007 trainval + 2012 trainval)."
                    )
                where[image_id] = tag
                self._ids.append(image_id)
                self._paths.append(Path(img))
                self._years.append(year)
        if not self._ids:
            raise ValueError(f"The VOC lists {self.sets} under '{devkit}' are empty.")
        self._missing_files_error(f"the VOC lists {self.sets}")
        log.info("VOCPool '%s': %d images from %s", name, len(self._ids), self.sets)

    @property
    def years(self) -> Sequence[str]:
        """VOC year (``"2007"``, ``"2012"``) of each global id."""
        return self._years

    def annotation_path(self, index: int) -> Path:
        """The ``Annotations/<id>.xml`` file of image ``index``."""
        return self._root / f"VOC{self._years[index]}" / "Annotations" / f"{self._ids[index]}.xml"

    def write_split(self, global_ids: Sequence[int], out_dir: Path, split_name: str) -> list[Path]:
        """Write ``<out_dir>/VOC<year>/ImageSets/Main/<split_name>.txt`` for each year in the selection.

        Each file lists that year's selected ids, one a line, in the given (selection) order; years with
        no selected image get no file. Copy the files into a VOCdevkit to train on the split.
        """
        ids = self.checked_ids(global_ids)
        by_year: dict[str, list[str]] = {}
        for g in ids:
            by_year.setdefault(self._years[g], []).append(self._ids[g])
        out_dir = Path(out_dir)
        return [
            write_lines(out_dir / f"VOC{year}" / "ImageSets" / "Main" / f"{split_name}.txt", by_year[year])
            for year in sorted(by_year)
        ]
