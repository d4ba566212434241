"""JPEG decoding on the extraction device: DataLoader workers only read file bytes, the main process decodes
a whole batch at once with ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA) and resizes on the device.

Why: on a GPU the ViT-S forward runs far faster (bf16, batch 256) than CPU workers decode. Measured with
``scripts/bench_extract.py`` (BENCHMARKS.md), this path and the CPU workers were both bound near the same
rate — the batched ``decode_jpeg`` call still does the Huffman decoding on the CPU, in the main process,
and the main loop waits on the workers' file reads at start-up. Neither was consistently faster, so it is
an option (``extraction.decode=device``), not the default (docs/design.md §6.3).
Semantics follow :func:`geal.util.imageio.load_rgb`: EXIF orientation is applied (read from the
header in the worker: the CUDA decoder ignores it), grey JPEGs become RGB; anything the batched decoder
cannot take (CMYK/YCCK JPEGs, other formats, a file that fails to decode) goes through the pool's own
``load`` — in the worker when the header already says so, else in the main process — so a corrupt file
still fails naming the file (or is skipped with ``on_error=skip``).

torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work (older torchvision
releases have them without the warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

log = logging.getLogger(__name__)

Decode = Literal["auto", "workers", "device"]
DECODES: tuple[str, ...] = ("auto", "workers", "device")
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
#: PIL modes of JPEGs the batched decoder turns into RGB like ``load_rgb`` does
_DEVICE_MODES = ("RGB", "L")


def resolve_decode(decode: str, device: torch.device) -> Literal["workers", "device"]:
    """``auto``: on the device when it is a CUDA device, in the DataLoader workers otherwise."""
    if decode not in DECODES:
        raise ValueError(f"extraction.decode must be one of {DECODES}, got {decode!r}")
    if decode == "auto":
        return "device" if device.type == "cuda" else "workers"
    return "device" if decode == "device" else "workers"


@dataclass
class EncodedImage:
    """What a worker hands over for one image: the JPEG's bytes and its EXIF orientation (1–8)."""

    data: torch.Tensor  # (n_bytes,) uint8
    orientation: int


def read_encoded(path: Path) -> EncodedImage | None:
    """The bytes of ``path`` when it is a JPEG the batched decoder handles (RGB or grey), else None (the
    caller decodes it the usual way, which also names the file if it is unreadable)."""
    if path.suffix.lower() not in JPEG_SUFFIXES:
        return None
    try:
        with Image.open(path) as img:  # header only: format, colour mode, EXIF
            if img.format != "JPEG" or img.mode not in _DEVICE_MODES:
                return None
            orientation = int(img.getexif().get(0x0112, 1) or 1)
        data = path.read_bytes()
    except Exception:  # unreadable header/EXIF: let load_rgb decide (it logs or raises naming the file)
        return None
    if not 1 <= orientation <= 8:
        orientation = 1
    return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation)


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) → the image as PIL's ``ImageOps.exif_transpose`` shows it for EXIF ``orientation``."""
    h, w = 1, 2
    if orientation == 2:  # mirrored left-right
        return image.flip(w)
    if orientation == 3:  # rotated 180
        return image.flip(h, w)
    if orientation == 4:  # mirrored top-bottom
        return image.flip(h)
    if orientation == 5:  # transposed
        return image.transpose(h, w)
    if orientation == 6:  # PIL ROTATE_270 (90° clockwise)
        return torch.rot90(image, -1, (h, w))
    if orientation == 7:  # transverse
        return image.transpose(h, w).flip(h, w)
    if orientation == 8:  # PIL ROTATE_90 (90° counter-clockwise)
        return torch.rot90(image, 1, (h, w))
    return image


def decode_batch(
    items: Sequence[torch.Tensor | EncodedImage],
    device: torch.device,
    transform: Callable[[torch.Tensor], torch.Tensor],
    fallback: Callable[[int], torch.Tensor],
) -> torch.Tensor:
    """Decode a batch on ``device``: (B, 3, R, R) uint8, resized, not yet normalised.

    ``items[p]``: an image the worker already decoded and resized, (3, R, R) uint8, or an
    :class:`EncodedImage` decoded here (all of the batch's JPEGs in one ``decode_jpeg`` call), oriented and
    passed through ``transform`` (uint8 (3, H, W) → (3, R, R) uint8, the resize the workers use). If the
    batched call fails, each JPEG is retried alone, and one that still fails becomes ``fallback(p)`` (the
    pool's own decoder, resized).
    """
    out: list[torch.Tensor | None] = [None] * len(items)
    positions = [p for p, item in enumerate(items) if isinstance(item, EncodedImage)]
    encoded = [item for item in items if isinstance(item, EncodedImage)]  # in the order of positions
    if positions:
        try:
            decoded: list[torch.Tensor | None] = list(
                decode_jpeg([e.data for e in encoded], mode=ImageReadMode.RGB, device=device)
            )
        except RuntimeError as err:
            log.debug("batched JPEG decode failed (%s); decoding the batch one by one", err)
            decoded = [_decode_one(e.data, device) for e in encoded]
        for p, e, img in zip(positions, encoded, decoded, strict=True):
            if img is not None:
                out[p] = transform(apply_orientation(img, e.orientation))
    batch: list[torch.Tensor] = []
    for p, (item, img) in enumerate(zip(items, out, strict=True)):
        if img is None:
            img = fallback(p) if isinstance(item, EncodedImage) else item
        batch.append(img)
    return torch.stack([t.to(device, non_blocking=True) for t in batch])


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def decode_encoded(encoded: EncodedImage) -> torch.Tensor | None:
    """One JPEG decoded on the CPU by libjpeg-turbo straight into a tensor and oriented: (3, H, W) uint8,
    the pixels :func:`geal.util.imageio.load_rgb` gives (both run libjpeg-turbo with its default settings);
    None
    when the decoder rejects the file (corrupt or truncated: the caller then uses the pool's own loader,
    which names the file)."""
    image = _decode_one(encoded.data, torch.device("cpu"))
    return None if image is None else apply_orientation(image, encoded.orientation)
