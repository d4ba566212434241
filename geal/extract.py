"""One inference pass over a pool into a :class:`~geal.store.FeatureStore`, streamed shard by shard.

Memory stays bounded by one shard whatever the pool size; DataLoader workers decode and resize while the
model runs; batches never straddle a shard, so each finished shard is written (atomically) at once and an
interrupted run resumes at the first missing shard.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from geal.backbones.base import Backbone, Preprocessing
from geal.pool import ImagePool
from geal.store import FeatureStore, ShardData

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
Amp = Literal["auto", "bf16", "fp16", "none"]


@dataclass(frozen=True)
class ExtractionSettings:
    """How the pass runs (none of these change the stored values beyond autocast precision)."""

    batch_size: int = 32
    num_workers: int = 2
    amp: Amp = "auto"
    shard_size: int = 512
    on_error: OnError = "raise"
    progress: bool = True


@dataclass
class ExtractionReport:
    images: int = 0
    seconds: float = 0.0
    shards_written: list[int] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def build_transform(pre: Preprocessing) -> v2.Compose:
    """Resize the whole image to ``resolution``² (no crop: selection must see all of it) and normalise."""
    interpolation = {
        "bicubic": v2.InterpolationMode.BICUBIC,
        "bilinear": v2.InterpolationMode.BILINEAR,
        "nearest": v2.InterpolationMode.NEAREST,
    }[pre.interpolation]
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((pre.resolution, pre.resolution), interpolation=interpolation, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(pre.mean), list(pre.std)),
        ]
    )


class _PreprocessedPool(Dataset):
    """Pool images as normalised tensors; with on_error="skip" an unreadable image becomes (zeros, error)."""

    def __init__(self, pool: ImagePool, pre: Preprocessing, on_error: OnError) -> None:
        self.pool = pool
        self.pre = pre
        self.on_error = on_error
        self.transform = build_transform(pre)

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(self.pool.load(index)), index, ""
        except (OSError, ValueError) as err:
            if self.on_error == "raise":
                raise
            return torch.zeros(3, self.pre.resolution, self.pre.resolution), index, f"{err}"


def _collate(items: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, list[int], list[str]]:
    images, indices, errors = zip(*items, strict=True)
    return torch.stack(images), list(indices), list(errors)


def autocast_context(device: torch.device, amp: Amp) -> contextlib.AbstractContextManager:
    """bf16 autocast where the device supports it (fp16 on CUDA without bf16); a no-op for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.float16 if amp == "fp16" or not torch.cuda.is_bf16_supported() else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and amp in ("auto", "bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _shard_batches(store: FeatureStore, shards: list[int], batch_size: int) -> list[list[int]]:
    batches = []
    for shard in shards:
        start, stop = store.shard_range(shard)
        batches.extend(list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size))
    return batches


def extract_to_store(
    pool: ImagePool,
    backbone_factory: Callable[[], Backbone],
    store: FeatureStore,
    *,
    settings: ExtractionSettings,
    device: torch.device,
    feature_layer: int,
    attention_layer: int,
) -> ExtractionReport:
    """Fill the missing shards of ``store``; the backbone is built only if a shard is missing."""
    report = ExtractionReport()
    store.remove_stale_temporaries()
    missing = store.missing_shards()
    if not missing:
        return report
    t0 = time.perf_counter()
    backbone = backbone_factory().to(device).eval()
    if store.n_shards > len(missing):
        log.info(
            "resuming extraction: %d of %d shards already done", store.n_shards - len(missing), store.n_shards
        )
    dataset = _PreprocessedPool(pool, backbone.preprocessing, settings.on_error)
    batches = _shard_batches(store, missing, settings.batch_size)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=settings.num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    n_todo = sum(len(b) for b in batches)
    bar = tqdm(total=n_todo, desc=f"extract {backbone.name}", unit="img", disable=not settings.progress)
    pending = iter(missing)
    shard = next(pending)
    buffer: list[tuple[np.ndarray, ...]] = []
    skipped: list[dict[str, str]] = []
    for images, indices, errors in loader:
        with torch.inference_mode(), autocast_context(device, settings.amp):
            out = backbone.extract(images.to(device, non_blocking=True), feature_layer, attention_layer)
        valid = np.array([not e for e in errors], dtype=bool)
        for i, e in zip(indices, errors, strict=True):
            if e:
                log.warning("skipping unreadable image %s: %s", pool.source(i), e)
                skipped.append(
                    {"global_id": str(i), "image_id": pool.ids[i], "source": pool.source(i), "error": e}
                )
        buffer.append(
            (
                out.tokens.float().cpu().numpy(),
                out.attention.float().cpu().numpy(),
                out.global_feature.float().cpu().numpy(),
                valid,
            )
        )
        bar.update(len(indices))
        _, stop = store.shard_range(shard)
        if indices[-1] == stop - 1:
            tokens, attention, global_feature, valid_all = (
                np.concatenate(parts) for parts in zip(*buffer, strict=True)
            )
            store.write_shard(shard, ShardData(tokens, attention, global_feature, valid_all, skipped))
            report.shards_written.append(shard)
            report.skipped.extend(skipped)
            buffer, skipped = [], []
            shard = next(pending, -1)
    bar.close()
    report.images = n_todo
    report.seconds = time.perf_counter() - t0
    log.info(
        "extracted %d images in %.1f s (%.1f img/s)",
        n_todo,
        report.seconds,
        n_todo / max(report.seconds, 1e-9),
    )
    return report
