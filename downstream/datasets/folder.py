"""File-backed pools: the shared base :class:`FilePool`, and :class:`ImageFolderPool` for any image folder."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from geal.api.pool import ImagePool
from geal.util.imageio import load_rgb

log = logging.getLogger(__name__)

#: file extensions (lower case) that :class:`ImageFolderPool` treats as images
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)


class FilePool(ImagePool):
    """A pool whose image ``i`` is the file ``paths[i]``: loading, ``source`` and global-id checks.

    Subclasses fill ``_ids``, ``_paths`` (and optionally ``_labels`` / ``_class_names``) in ``__init__``.
    Only plain lists and paths are stored, so instances pickle cheaply for DataLoader workers.
    """

    _root: Path
    _ids: list[str]
    _paths: list[Path]
    _labels: list[int] | None = None
    _class_names: list[str] | None = None

    @property
    def ids(self) -> Sequence[str]:
        return self._ids

    @property
    def paths(self) -> Sequence[Path]:
        """Image file of each global id."""
        return self._paths

    @property
    def labels(self) -> Sequence[int] | None:
        return self._labels

    @property
    def class_names(self) -> Sequence[str] | None:
        return self._class_names

    @property
    def root(self) -> Path | None:
        return self._root

    def load(self, index: int) -> Image.Image:
        return load_rgb(self._paths[index])

    def source(self, index: int) -> str:
        return str(self._paths[index])

    def file_path(self, index: int) -> Path:
        return self._paths[index]

    def checked_ids(self, global_ids: Sequence[int]) -> list[int]:
        """``global_ids`` as ints after checking they are in range and unique (ValueError otherwise)."""
        out = [int(g) for g in global_ids]
        bad = [g for g in out if not 0 <= g < len(self._ids)]
        if bad:
            raise ValueError(
                f"global ids {bad[:5]} are out of range for pool '{self.name}' ({len(self._ids)} images)"
            )
        if len(set(out)) != len(out):
            dup = sorted(g for g, n in Counter(out).items() if n > 1)
            raise ValueError(f"global ids repeat in the selection for pool '{self.name}': {dup[:5]}")
        return out

    def _missing_files_error(self, what: str) -> None:
        """Raise FileNotFoundError when listed image files are absent (cheap ``stat`` per file)."""
        missing = [p for p in self._paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self._paths)} image files listed by {what} do not exist, e.g. "
                f"{[str(p) for p in missing[:3]]}. Restore them, or remove their ids from the list."
            )


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    """Write ``lines`` (one per line, trailing newline) to ``path``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


class ImageFolderPool(FilePool):
    """Every image file under ``root``.

    Ids are the paths relative to ``root`` in posix form (``cat/001.jpg``), sorted, so they are stable across
    machines. Hidden files and folders (names starting with ``.``) are skipped; extensions match case-
    insensitively. When every image sits exactly one level down (``root/<class>/<file>``) in two or more
    sub-folders, ``labels`` / ``class_names`` come from the folder names (sorted, as torchvision's
    ``ImageFolder`` does); otherwise both are None.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        recursive: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        name: str = "folder",
    ) -> None:
        self.name = name
        self._root = Path(root)
        if not self._root.is_dir():
            raise FileNotFoundError(f"Image folder '{self._root}' does not exist or is not a folder.")
        exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
        rel = sorted(_scan(self._root, exts, recursive))
        if not rel:
            raise FileNotFoundError(
                f"No images found in '{self._root}' ({'recursively' if recursive else 'top level only'}, "
                f"extensions {sorted(exts)})."
            )
        self._ids = rel
        self._paths = [self._root / r for r in rel]
        parts = [r.split("/") for r in rel]
        classes = sorted({p[0] for p in parts})
        if all(len(p) == 2 for p in parts) and len(classes) >= 2:
            self._class_names = classes
            index = {c: k for k, c in enumerate(classes)}
            self._labels = [index[p[0]] for p in parts]
        log.info(
            "ImageFolderPool '%s': %d images under %s%s",
            name,
            len(rel),
            self._root,
            f", {len(classes)} classes" if self._labels is not None else "",
        )

    def write_split(self, global_ids: Sequence[int], out_dir: Path, split_name: str) -> list[Path]:
        """Write ``<out_dir>/<split_name>.txt``: the selected relative paths, one a line, in given order."""
        ids = self.checked_ids(global_ids)
        return [write_lines(Path(out_dir) / f"{split_name}.txt", [self._ids[g] for g in ids])]


def _scan(root: Path, exts: set[str], recursive: bool) -> list[str]:
    """Relative posix paths of the image files under ``root`` (hidden entries skipped)."""
    out: list[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath).relative_to(root)
            out.extend(
                (base / f).as_posix()
                for f in filenames
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts
            )
    else:
        out = [
            e.name
            for e in os.scandir(root)
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in exts
        ]
    return out
