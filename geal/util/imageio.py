"""Robust image decoding: every file comes out as an 8-bit RGB PIL image, or fails naming the file.

Conventions (applied by :func:`to_rgb`, used by every pool):

* **Transparency** (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a ``transparency`` key, premultiplied
  ``RGBa``/``La``) is composited over **white** (:data:`BACKGROUND`). Dropping alpha would expose whatever
  colour the fully transparent pixels happen to store (often black), which a feature extractor would read
  as content; white matches how such images are displayed on a page.
* **Palette** (``P``) and **grey** (``L``, ``1``) images are expanded to RGB.
* **CMYK** uses the embedded ICC profile when there is one (LittleCMS, to sRGB); otherwise Pillow's
  conversion ``R = (255 - C)(255 - K) / 255``. Adobe's inverted CMYK JPEGs are already undone by Pillow.
* **High bit depth grey** (``I;16*``, ``I``): scaled to 8 bit by the bit range the data actually uses,
  i.e. divided by ``2**b - 1`` where ``b = max(8, bit_length(max value))``: a full-range 16-bit PNG maps
  0..65535 onto 0..255 and 12-bit sensor data stored in 16 bits maps 0..4095 onto 0..255 (Pillow's own
  conversion clips everything above 255 to white). Negative integers are shifted by the minimum first.
  Float images (``F``) in [0, 1] are multiplied by 255; other float ranges are min-max scaled.
* **EXIF orientation** is applied by :func:`load_rgb` (``ImageOps.exif_transpose``), so pixels come out
  the way a viewer shows them.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

log = logging.getLogger(__name__)

#: background colour that transparent pixels are composited over
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_SKIP_HINT = (
    "Remove the file (or its id from the dataset's split list), or set data.on_error=skip to skip "
    "unreadable images."
)


class ImageLoadError(OSError):
    """An image file is missing, unreadable, truncated or corrupt. ``path`` names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot load image '{self.path}': {reason}. {_SKIP_HINT}")

    def __reduce__(self) -> tuple:
        # OSError pickles its ``args``; rebuild from (path, reason) so DataLoader workers can send it back.
        return (type(self), (str(self.path), self.reason))


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open, fully decode, EXIF-orient and convert the image at ``path`` to 8-bit RGB.

    Raises :class:`ImageLoadError` (an ``OSError``) naming the file when it is missing or cannot be decoded
    (truncated JPEG/PNG, not an image, decompression bomb, ...).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now so truncated/corrupt data fails here, naming the file
            return to_rgb(_exif_transpose(img, path))
    except ImageLoadError:
        raise
    except FileNotFoundError as e:
        raise ImageLoadError(path, "the file does not exist") from e
    except IsADirectoryError as e:
        raise ImageLoadError(path, "the path is a directory, not an image file") from e
    except Image.UnidentifiedImageError as e:
        raise ImageLoadError(path, "not a recognised image format (empty, corrupt or not an image)") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(path, f"decoding failed, the file is truncated or corrupt ({e})") from e


def _exif_transpose(img: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is logged and ignored, not fatal."""
    try:
        out = ImageOps.exif_transpose(img)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, struct.error) as e:
        log.warning("Ignoring unreadable EXIF orientation of '%s': %s", path, e)
        return img
    return img if out is None else out


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an in-memory PIL image of any mode to 8-bit RGB following the module's conventions."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB", "1") and "transparency" in img.info):
        return _over_background(img.convert("RGBA"))
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(img)
    if mode == "LAB":
        return ImageCms.profileToProfile(
            img, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    # 1, L, P, RGBX, YCbCr, HSV: Pillow's conversions are exact for these
    return img.convert("RGB")


def _over_background(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image over :data:`BACKGROUND`: ``out = a * rgb + (1 - a) * background``."""
    out = Image.new("RGB", rgba.size, BACKGROUND)
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as e:
            log.warning("Embedded CMYK ICC profile unusable (%s); using the plain CMYK→RGB formula", e)
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.ndim != 2:  # e.g. a multi-channel high-depth mode Pillow exposes as I;16 variants
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)[..., 0]
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        else:
            scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    else:
        arr = arr.astype(np.int64)
        lo = int(arr.min())
        if lo < 0:
            arr = arr - lo
        bits = max(8, int(arr.max()).bit_length())
        scaled = arr * (255.0 / float((1 << bits) - 1))
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out).convert("RGB")  # 2-D uint8 -> mode L
