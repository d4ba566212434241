"""The image-pool contract: ordered, stable string image ids and a way to load image ``i``.

Index spaces, kept explicit everywhere in the project:

* **global id** (``int``): a position in ``pool.ids`` — what selectors return and the feature store indexes;
* **image id** (``str``): the dataset's own name for an image (``2007_000027``, ``Abyssinian_100``);
* **position**: an index into some *other* array (a batch, a cluster table); never mixed with the two above.

Optional capabilities of a pool (box annotations for detection, label maps for segmentation) are
``typing.Protocol``s checked with ``isinstance``: :class:`BoxAnnotatedPool`, :class:`LabelMapPool`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


class ImagePool(ABC):
    """An ordered set of images. Subclasses live in ``downstream.datasets``.

    Subclasses must be picklable (DataLoader workers load images from them).
    """

    #: short dataset name used in logs and cache keys (e.g. ``"voc0712"``)
    name: str = "pool"

    @property
    @abstractmethod
    def ids(self) -> Sequence[str]:
        """Stable image ids, in global-id order."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Load image ``index`` (a global id) as an RGB PIL image; errors name the file."""

    def source(self, index: int) -> str:
        """Human-readable location of image ``index`` (file path, or archive + row) for messages."""
        return f"{self.name}[{index}] ({self.ids[index]})"

    def file_path(self, index: int) -> Path | None:
        """The file that ``load(index)`` decodes with :func:`geal.util.imageio.load_rgb`, when there is one
        (lets the extractor decode JPEGs on the GPU, :mod:`geal.features.device_decode`); None otherwise."""
        return None

    @property
    def labels(self) -> Sequence[int] | None:
        """Per-image class label in global-id order when the pool has one (used for summaries), else None."""
        return None

    @property
    def class_names(self) -> Sequence[str] | None:
        return None

    @property
    def root(self) -> Path | None:
        """The dataset folder (never written to unless the user asks), or None for packaged data."""
        return None

    def identity(self) -> dict:
        """What makes this pool's images what they are: part of the feature-store key."""
        digest = hashlib.sha256("\n".join(self.ids).encode()).hexdigest()
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "name": self.name,
            "root": str(self.root.resolve()) if self.root is not None else None,
            "n_images": len(self),
            "ids_sha256": digest,
        }

    def write_split(self, global_ids: Sequence[int], out_dir: Path, split_name: str) -> list[Path]:
        """Write the selection in the dataset's native split format under ``out_dir``; return the files.

        Pools without a native format write nothing.
        """
        return []

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, image_ids: Sequence[str]) -> list[int]:
        """Map image ids to global ids; unknown ids raise a KeyError listing a few of them."""
        lookup = {image_id: i for i, image_id in enumerate(self.ids)}
        missing = [x for x in image_ids if x not in lookup]
        if missing:
            raise KeyError(
                f"{len(missing)} image id(s) are not in pool '{self.name}' ({len(self)} images), "
                f"e.g. {missing[:5]}: check that the ids come from this dataset and split."
            )
        return [lookup[x] for x in image_ids]


class BoxAnnotation(Protocol):
    """The objects of one image: ``boxes`` (N, 4) float ``(x0, y0, x1, y1)`` in pixels, ``labels`` (N,) int
    0-based into the pool's ``object_classes``, ``difficult`` (N,) bool; ``len()`` = N."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray

    def __len__(self) -> int: ...


@runtime_checkable
class BoxAnnotatedPool(Protocol):
    """A pool with object boxes (detection): ``downstream.datasets.voc.VOCPool``."""

    @property
    def object_classes(self) -> Sequence[str]:
        """The object classes that annotation labels index."""
        ...

    def annotation(self, index: int) -> BoxAnnotation:
        """The objects of image ``index`` (a global id)."""
        ...

    def annotations(self, progress: bool = False) -> Sequence[BoxAnnotation]:
        """The annotations of every image, in global-id order."""
        ...


@runtime_checkable
class LabelMapPool(Protocol):
    """A pool with per-pixel label maps (segmentation): ``downstream.datasets.cityscapes.CityscapesPool``."""

    def train_ids(self, index: int) -> np.ndarray:
        """(H, W) integer class map of image ``index`` (a global id); 255: ignored pixels."""
        ...
