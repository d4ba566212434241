"""The real photos that ship inside scikit-image and scikit-learn, as a small pool (offline figures, demos).

Read from the installed packages' data folders (located, not imported). Ids are ``<package>/<name>``
(``skimage/astronaut``, ``sklearn/china``); no labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from geal.api.pool import ImagePool
from geal.util.imageio import load_rgb
from geal.util.resources import package_data_file

log = logging.getLogger(__name__)

#: natural photographs (not test patterns or textures) in each package: (package, requirement, folder, files)
PHOTOS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "skimage",
        "scikit-image",
        ("data",),
        (
            "astronaut.png",
            "camera.png",
            "chelsea.png",
            "coffee.png",
            "coins.png",
            "horse.png",
            "hubble_deep_field.jpg",
            "motorcycle_left.png",
            "page.png",
            "retina.jpg",
            "rocket.jpg",
        ),
    ),
    ("sklearn", "scikit-learn", ("datasets", "images"), ("china.jpg", "flower.jpg")),
)


class PackagedPhotosPool(ImagePool):
    """The photos of :data:`PHOTOS` found in the installed packages (at least one package is needed).

    ``packages``: which of them to use (default both); a listed package that is not installed is skipped
    with a warning, and an error names the requirement when none is.
    """

    def __init__(self, packages: Sequence[str] = ("skimage", "sklearn"), name: str = "sample_photos") -> None:
        self.name = name
        self._ids: list[str] = []
        self._paths: list[Path] = []
        unknown = sorted(set(packages) - {p for p, *_ in PHOTOS})
        if unknown:
            raise ValueError(f"unknown photo packages {unknown}: choose from {[p for p, *_ in PHOTOS]}")
        missing = []
        for package, requirement, folder, files in PHOTOS:
            if package not in packages:
                continue
            for file in files:
                try:
                    path = package_data_file(package, *folder, file, requirement=requirement, purpose="photo")
                except (ModuleNotFoundError, FileNotFoundError) as err:
                    missing.append(f"{package}/{file}: {err}")
                    continue
                self._ids.append(f"{package}/{Path(file).stem}")
                self._paths.append(path)
        if missing:
            log.warning("photos not found (skipped): %s", "; ".join(missing))
        if not self._ids:
            raise FileNotFoundError(
                "no packaged photo found: install scikit-image and/or scikit-learn "
                "(pip install scikit-image scikit-learn)"
            )

    @property
    def ids(self) -> Sequence[str]:
        return self._ids

    def load(self, index: int) -> Image.Image:
        return load_rgb(self._paths[index])

    def source(self, index: int) -> str:
        return str(self._paths[index])

    def file_path(self, index: int) -> Path:
        return self._paths[index]
