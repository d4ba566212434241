"""PASCAL VOC pool over a standard ``VOCdevkit`` tree (07+12 trainval by default: 16,551 images), and its
box annotations (``Annotations/<id>.xml``, read with torchvision's VOC parser)."""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import VOCDetection
from tqdm.auto import tqdm

from downstream.datasets.folder import FilePool, write_lines

log = logging.getLogger(__name__)

#: the 20 PASCAL VOC object classes, in the devkit's order (0-based label = position)
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class VOCAnnotation:
    """The objects of one image.

    boxes: (N, 4) float32 ``(x0, y0, x1, y1)`` in continuous pixel coordinates: VOC's 1-based inclusive
    ``xmin..xmax`` becomes ``(xmin - 1, ymin - 1, xmax, ymax)``, so a box's width is ``xmax - xmin + 1``
    pixels as in the devkit. labels: (N,) int64, 0-based into the class list. difficult: (N,) bool.
    width, height: the image size from ``<size>``.
    """

    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def read_voc_xml(path: str | os.PathLike[str], class_names: Sequence[str] = VOC_CLASSES) -> VOCAnnotation:
    """Read one VOC ``Annotations/<id>.xml`` (torchvision's ``VOCDetection.parse_voc_xml`` parser).

    A missing ``<difficult>`` tag (some VOC2012 files) reads as not difficult. An unknown class name, a
    missing box coordinate or an unreadable file raise ValueError naming the file.
    """
    index = {name: k for k, name in enumerate(class_names)}
    try:
        doc = VOCDetection.parse_voc_xml(ET.parse(path).getroot())["annotation"]
    except (ET.ParseError, OSError, KeyError) as err:
        raise ValueError(f"cannot read VOC annotation '{path}': {err}") from err
    objects = doc.get("object", [])
    if isinstance(objects, Mapping):  # parse_voc_xml keeps a single child as a dict
        objects = [objects]
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(objects):
        name = str(obj.get("name", "")).strip()
        if name not in index:
            raise ValueError(
                f"VOC annotation '{path}', object {k}: class '{name}' is not one of the {len(index)} "
                f"classes {list(index)[:5]}..."
            )
        try:
            bb = obj["bndbox"]
            xmin, ymin, xmax, ymax = (float(bb[t]) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"VOC annotation '{path}', object {k} ({name}): bad <bndbox>: {err}") from err
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        labels.append(index[name])
        difficult.append(str(obj.get("difficult", "0")).strip() == "1")
    size = doc.get("size", {})
    try:
        width, height = int(float(size["width"])), int(float(size["height"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"VOC annotation '{path}': bad or missing <size>: {err}") from err
    return VOCAnnotation(
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )


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

    @property
    def object_classes(self) -> Sequence[str]:
        """The 20 VOC object classes (labels of :meth:`annotation` index this)."""
        return VOC_CLASSES

    def annotation(self, index: int) -> VOCAnnotation:
        """The objects of image ``index`` (a global id), read from its XML file."""
        path = self.annotation_path(index)
        if not path.is_file():
            raise FileNotFoundError(
                f"VOC annotation '{path}' of image '{self._ids[index]}' is missing. {_LAYOUT}"
            )
        return read_voc_xml(path, VOC_CLASSES)

    def annotations(self, progress: bool = False) -> list[VOCAnnotation]:
        """The annotations of every image, in global-id order (one XML parse each; ~1 s per 5k images)."""
        bar = tqdm(range(len(self)), desc=f"{self.name} annotations", disable=not progress, leave=False)
        return [self.annotation(i) for i in bar]

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
