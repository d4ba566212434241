"""One inference pass over a pool into a :class:`~geal.features.store.FeatureStore`, streamed shard by shard.

Memory stays bounded by one shard whatever the pool size: the batch outputs are copied into one preallocated
shard buffer on the device, then written (on a GPU the writer thread passes the shard to the sink and copies
it to the host, so the main loop never waits for a copy). DataLoader workers decode and resize while the
model runs on an accelerator; on a CPU the main process decodes each batch with all its threads between
forwards. Batches never straddle a shard, so each finished shard is written (atomically) at once and an
interrupted run resumes at the first missing shard. ``shards`` restricts a call to some shards (one rank's
share in a distributed extraction, see :mod:`geal.features.distributed`); ``shard_sink`` derives something
from each finished shard while it is on the device (its knowledge clusters,
:class:`geal.features.clusters.ClusterShardWriter`) and hands the writer thread what to write; the store
then keeps what its contents say (a store of global features only never copies tokens to the host).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from geal.api.features import ExtractionReport
from geal.api.pool import ImagePool
from geal.features.backbones.base import Backbone, Preprocessing
from geal.features.device_decode import (
    DECODES,
    Decode,
    EncodedImage,
    decode_batch,
    decode_encoded,
    read_encoded,
    resolve_decode,
)
from geal.features.store import FeatureStore, ShardData, fp16_if_in_range
from geal.util.cores import usable_cores

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ON_ERRORS: tuple[str, ...] = ("raise", "skip")
Amp = Literal["auto", "bf16", "fp16", "none"]
AMPS: tuple[str, ...] = ("auto", "bf16", "fp16", "none")
CacheMode = Literal["full", "clusters_only"]
Workers = int | Literal["auto"]


@dataclass(frozen=True)
class ExtractionSettings:
    """How the pass runs (none of these change the stored values beyond autocast precision and decoder).

    ``decode``: where JPEGs are decoded — ``"workers"`` (in the DataLoader workers: libjpeg-turbo through
    torchvision for RGB/grey JPEG files, the same pixels as PIL's, PIL for everything else), ``"device"``
    (workers read bytes, the batch is decoded on the extraction device: nvJPEG on a GPU, see
    :mod:`geal.features.device_decode`), ``"auto"`` (device on CUDA, workers elsewhere). nvJPEG and
    libjpeg-turbo
    differ by a few grey levels (chroma upsampling), so the choice is part of the store key. Default
    ``"workers"``: measured on a GPU neither was consistently faster (both bound by the host's cores, see
    docs/design.md §6.3), and workers decode exactly like every other code path.

    ``num_workers``: DataLoader worker processes. ``"auto"`` (default): none on a CPU device, where the main
    process decodes each batch with ``torch.get_num_threads()`` threads between forwards (see
    :func:`resolve_workers`); on an accelerator, one per usable core but two, at most 16. ``0`` decodes in
    the main process with threads on any device.

    ``cache_mode``: ``"full"`` keeps the dense tokens and attention maps (any τ/K later without the
    network); ``"clusters_only"`` keeps only the global features and validity, plus the knowledge clusters
    of the selector that triggers the extraction (computed during it, :mod:`geal.features.clusters`): about 7×
    less disk for ViT-S/16 at K = 25, but another τ/K needs a new pass.
    """

    batch_size: int = 32
    num_workers: Workers = "auto"
    amp: Amp = "auto"
    shard_size: int = 512
    on_error: OnError = "raise"
    progress: bool = True
    cache_mode: CacheMode = "full"
    decode: Decode = "workers"

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERRORS:
            raise ValueError(f"data.on_error must be one of {ON_ERRORS}, got {self.on_error!r}")
        if self.amp not in AMPS:
            raise ValueError(f"extraction.amp must be one of {AMPS}, got {self.amp!r}")
        if self.decode not in DECODES:
            raise ValueError(f"extraction.decode must be one of {DECODES}, got {self.decode!r}")
        if self.cache_mode not in ("full", "clusters_only"):
            raise ValueError(
                f"extraction.cache_mode must be 'full' or 'clusters_only', got {self.cache_mode!r}"
            )
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"extraction.{name} must be >= 1, got {getattr(self, name)}")
        w = self.num_workers
        if w != "auto" and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"extraction.num_workers must be 'auto' or an int >= 0, got {w!r}")


def resolve_workers(num_workers: Workers, device: torch.device) -> int:
    """DataLoader worker processes for ``num_workers`` on ``device``.

    ``"auto"`` on a CPU gives 0: the forward already runs on every core, so a worker can only take a core
    from it, and each time one does, the forward's other threads wait at the next barrier. Decoding each
    batch in the main process with all threads between forwards (:class:`PreprocessedPool`'s
    ``decode_threads``) keeps the two apart: on 2 cores it is faster than 2 workers (docs/design.md §6.1;
    ``scripts/bench_extract.py``, figures in BENCHMARKS.md). On an accelerator
    the host's cores are free for decoding: one worker per usable core (affinity mask and cgroup CPU quota,
    :func:`geal.util.cores.usable_cores`) but two (the main process and the shard writer), at most 16.
    """
    if num_workers != "auto":
        return int(num_workers)
    if device.type == "cpu":
        return 0
    return max(1, min(16, usable_cores() - 2))


def build_transform(pre: Preprocessing) -> v2.Compose:
    """PIL image → (3, R, R) float: :func:`tensor_transform` after ``PILToTensor``."""
    return v2.Compose([v2.PILToTensor(), tensor_transform(pre)])


def tensor_transform(pre: Preprocessing) -> v2.Compose:
    """(3, H, W) uint8 on any device → (3, R, R) float: :func:`resize_transform`, then
    :func:`normalize_transform`."""
    return v2.Compose([resize_transform(pre), normalize_transform(pre)])


def resize_transform(pre: Preprocessing) -> v2.Resize:
    """(3, H, W) uint8 → (3, R, R) uint8: the whole image resized to ``resolution``² (no crop: selection
    must see all of it), antialiased, rounded back to 8 bits."""
    interpolation = {
        "bicubic": v2.InterpolationMode.BICUBIC,
        "bilinear": v2.InterpolationMode.BILINEAR,
        "nearest": v2.InterpolationMode.NEAREST,
    }[pre.interpolation]
    return v2.Resize((pre.resolution, pre.resolution), interpolation=interpolation, antialias=True)


def normalize_transform(pre: Preprocessing) -> v2.Compose:
    """(..., 3, R, R) uint8 → float32 scaled to [0, 1] and normalised with the backbone's mean and std
    (element-wise: the same values for one image or a batch, on any device)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))])


class PreprocessedPool(Dataset):
    """Pool images decoded and resized: (3, R, R) uint8; with on_error="skip" an unreadable image becomes
    (zeros, error).

    The workers stop before normalising: a uint8 image is a quarter of the float32 bytes to pass between
    processes, pin and copy to the device, and the extraction loop normalises whole batches on the device
    (:func:`normalize_transform`, the same values).

    ``decode_threads`` > 1: a batch fetched in the main process (a DataLoader without workers calls
    ``__getitems__``) is decoded by that many threads, in order (file reads, libjpeg-turbo, PIL and the
    resize all release the GIL: 0.87 vs 1.55 ms per VOC-sized image with 2 threads on 2 cores). Inside a
    worker process, one image at a time as usual."""

    def __init__(
        self, pool: ImagePool, pre: Preprocessing, on_error: OnError, decode_threads: int = 1
    ) -> None:
        self.pool = pool
        self.pre = pre
        self.on_error = on_error
        self.decode_threads = decode_threads
        self.resize = resize_transform(pre)
        self.transform = v2.Compose([v2.PILToTensor(), self.resize])

    def __len__(self) -> int:
        return len(self.pool)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor | EncodedImage, int, str]]:
        threads = min(self.decode_threads, len(indices))
        if threads <= 1 or torch.utils.data.get_worker_info() is not None:
            return [self[i] for i in indices]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as decoders:
            return list(decoders.map(self.__getitem__, indices))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        image, error = self.preprocessed(index)
        return image, index, error

    def preprocessed(self, index: int) -> tuple[torch.Tensor, str]:
        """Image ``index`` decoded and resized, (3, R, R) uint8, and "" — or zeros and the error with
        ``on_error="skip"``.

        An RGB or grey JPEG file is decoded by libjpeg-turbo straight into a tensor (torchvision; EXIF
        orientation from its header): the pixels of the pool's own loader (PIL runs libjpeg-turbo too), for
        about two thirds of the time (1.17 vs 1.65–1.76 ms per VOC-sized image including the resize,
        ``scripts/bench_extract.py``'s worker-cost line). Anything else, and any file the decoder rejects,
        goes through ``pool.load``, whose errors name the file."""
        try:
            path = self.pool.file_path(index)
            encoded = read_encoded(path) if path is not None else None
            image = decode_encoded(encoded) if encoded is not None else None
            if image is not None:
                return self.resize(image), ""
            return self.transform(self.pool.load(index)), ""
        except (OSError, ValueError) as err:
            if self.on_error == "raise":
                raise
            return torch.zeros(3, self.pre.resolution, self.pre.resolution, dtype=torch.uint8), f"{err}"


class _EncodedPool(PreprocessedPool):
    """For ``decode="device"``: a JPEG file's bytes (decoded later, batched, on the device); any other
    image decoded and resized here as usual."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor | EncodedImage, int, str]:  # type: ignore[override]
        path = self.pool.file_path(index)
        encoded = read_encoded(path) if path is not None else None
        if encoded is not None:
            return encoded, index, ""
        return super().__getitem__(index)


def collate_images(items: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, list[int], list[str]]:
    images, indices, errors = zip(*items, strict=True)
    return torch.stack(images), list(indices), list(errors)


def _collate_encoded(
    items: list[tuple[torch.Tensor | EncodedImage, int, str]],
) -> tuple[list[torch.Tensor | EncodedImage], list[int], list[str]]:
    images, indices, errors = zip(*items, strict=True)
    return list(images), list(indices), list(errors)


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


class _ShardBuffer:
    """One shard's outputs as the forward gives them, on its device: each batch (B, ...) is copied into
    preallocated rows (no concatenation; on a GPU no copy to the host and no wait in the main loop)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tensors: dict[str, torch.Tensor] = {}
        self.valid = np.zeros(n, dtype=bool)

    def add(self, name: str, rows: slice, values: torch.Tensor) -> None:
        """Copy a batch (B, ...) into rows ``rows`` (asynchronously on a GPU)."""
        if name not in self.tensors:
            shape = (self.n, *values.shape[1:])
            self.tensors[name] = torch.empty(shape, dtype=values.dtype, device=values.device)
        self.tensors[name][rows] = values

    def shard(self, skipped: list[dict[str, str]]) -> ShardData:
        """The whole shard in the store's dtypes, still on the device: tokens fp16 unless a value of the
        shard is out of fp16's range (then fp32, unrounded; :func:`geal.features.store.fp16_if_in_range`),
        attention
        and global features fp32."""
        t = self.tensors
        tokens = fp16_if_in_range(t["tokens"])
        return ShardData(tokens, t["attention"].float(), t["global"].float(), self.valid, skipped)


def _host_arrays(data: ShardData) -> ShardData:
    """``data`` with every tensor as a numpy array. From a CUDA device each tensor is copied into pinned
    host memory (torch's caching host allocator hands the same blocks back shard after shard, so the pages
    are mapped once, and the copy runs at full bus speed), then one wait for the copies; CPU tensors are
    shared, not copied."""
    tensors = {
        f.name: value for f in fields(data) if isinstance(value := getattr(data, f.name), torch.Tensor)
    }
    host: dict[str, torch.Tensor] = {}
    streams = set()
    for name, t in tensors.items():
        if t.device.type == "cuda":
            host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host[name].copy_(t, non_blocking=True)
            streams.add(torch.cuda.current_stream(t.device))
        else:
            host[name] = t.cpu()
    for stream in streams:
        stream.synchronize()
    return replace(data, **{name: t.numpy() for name, t in host.items()})


@contextlib.contextmanager
def _side_stream(ready: torch.cuda.Event | None, stream: torch.cuda.Stream | None) -> Iterator[None]:
    """On a GPU (``ready`` recorded on the main stream after a shard's last write): run the block on the
    writer's own ``stream``, which first waits for ``ready``, so the writer thread's k-means and copies to
    the host overlap the next shard's forwards instead of queueing behind them; it ends synchronised with
    the host, so the shard's tensors (allocated on the main stream) can be freed once the block's references
    go. Without ``ready``: the block as it is.

    One stream for the whole extraction, not one per shard: ``torch.cuda.Stream()`` hands out the streams
    of a pool in turn, and the caching allocator reuses a freed block only on the stream it was allocated
    on, so a new stream per shard would keep each shard's temporaries cached apart (up to 32 shards' worth).
    """
    if ready is None or stream is None:
        yield
        return
    stream.wait_event(ready)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:  # also when the block fails: nothing of the shard may be freed while the stream still reads it
        stream.synchronize()


def _transform_in_writer(device: torch.device) -> bool:
    """Whether the shard sink runs in the writer thread: on a GPU yes; on a CPU no, as its k-means sets
    the process's torch thread count for its small ops, which would throttle the forward beside it."""
    return device.type != "cpu"


#: ``sink(shard, data)``: derives something from a finished shard (``data``: the dense arrays in the store's
#: dtypes, on the extraction device) and returns the write of it, which the writer thread runs before it
#: writes the store's shard
ShardSink = Callable[[int, ShardData], Callable[[], None]]


@dataclass
class _PreparedShard:
    """A finished shard as the store keeps it, and the write of what the sink derived from it."""

    data: ShardData
    derived: Callable[[], None] | None


def extract_to_store(
    pool: ImagePool,
    backbone_factory: Callable[[], Backbone],
    store: FeatureStore,
    *,
    settings: ExtractionSettings,
    device: torch.device,
    feature_layer: int,
    attention_layer: int,
    shards: Sequence[int] | None = None,
    shard_sink: ShardSink | None = None,
) -> ExtractionReport:
    """Fill the missing shards of ``store`` (those of ``shards`` only, when given); the backbone is built
    only if a shard is missing. ``shard_sink`` (see :data:`ShardSink`) sees each finished dense shard."""
    report = ExtractionReport()
    store.remove_stale_temporaries()
    missing = store.missing_shards()
    if shards is not None:
        wanted = set(int(s) for s in shards)
        missing = [s for s in missing if s in wanted]
    if not missing:
        return report
    t0 = time.perf_counter()
    backbone = backbone_factory().eval()
    if store.n_shards > len(missing) and shards is None:
        log.info(
            "resuming extraction: %d of %d shards already done", store.n_shards - len(missing), store.n_shards
        )
    decode = resolve_decode(settings.decode, device)
    num_workers = resolve_workers(settings.num_workers, device)
    # without workers, the main process decodes each batch with all its threads, between two forwards
    threads = 1 if num_workers else torch.get_num_threads()
    pre = backbone.preprocessing
    if decode == "device":
        dataset: PreprocessedPool = _EncodedPool(pool, pre, settings.on_error, threads)
        on_device = resize_transform(pre)
    else:
        dataset = PreprocessedPool(pool, pre, settings.on_error, threads)
    normalize = normalize_transform(pre)
    batches = _shard_batches(store, missing, settings.batch_size)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate_encoded if decode == "device" else collate_images,
        pin_memory=device.type == "cuda" and decode == "workers",
        persistent_workers=False,
    )
    # The workers start (and decode their first batches) while the weights move to the device and its
    # runtime starts up; forking them before that also keeps the device's context out of the children.
    batches_in = iter(loader)
    backbone = backbone.to(device)
    n_todo = sum(len(b) for b in batches)
    bar = tqdm(total=n_todo, desc=f"extract {backbone.name}", unit="img", disable=not settings.progress)
    pending = iter(missing)
    shard = next(pending)
    start, stop = store.shard_range(shard)
    buffer = _ShardBuffer(stop - start)
    skipped: list[dict[str, str]] = []

    transform_in_writer = _transform_in_writer(device)
    writer_stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    def prepare(shard: int, buffer: _ShardBuffer, skipped: list[dict[str, str]]) -> _PreparedShard:
        """A finished shard in the store's dtypes, passed to the sink (on its device); then only the arrays
        the store keeps."""
        data = buffer.shard(skipped)
        derived = shard_sink(shard, data) if shard_sink is not None else None
        return _PreparedShard(store.kept(data), derived)

    def finish_shard(
        shard: int,
        shard_in: _PreparedShard | _ShardBuffer,
        skipped: list[dict[str, str]],
        ready: torch.cuda.Event | None,
    ) -> None:
        """In the writer thread: prepare the shard if the main loop did not, bring it to the host, write
        what the sink derived, then the store's shard (whose presence marks both done)."""
        with _side_stream(ready, writer_stream):
            prepared = prepare(shard, shard_in, skipped) if isinstance(shard_in, _ShardBuffer) else shard_in
            data = _host_arrays(prepared.data)
        if prepared.derived is not None:
            prepared.derived()
        store.write_shard(shard, data)

    # One writer thread: shard i (and its sink's part) is written (np.save releases the GIL) while shard
    # i+1 is extracted; waiting for it before handing over the next keeps at most two shards in memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer:
        writing: Future[None] | None = None
        stage = dict.fromkeys(
            ("loader_wait", "device_decode", "forward_copy", "shard_transform", "writer_wait"), 0.0
        )
        tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            stage[name] += now - tick
            tick = now

        for images, indices, errors in batches_in:
            lap("loader_wait")
            if decode == "device":

                def fallback(p: int, ids: list[int] = indices, errors: list[str] = errors) -> torch.Tensor:
                    image, errors[p] = dataset.preprocessed(ids[p])
                    return image

                images = decode_batch(images, device, on_device, fallback)
                lap("device_decode")
            with torch.inference_mode(), autocast_context(device, settings.amp):
                pixels = normalize(images.to(device, non_blocking=True))
                out = backbone.extract(pixels, feature_layer, attention_layer)
                rows = slice(indices[0] - start, indices[-1] - start + 1)
                buffer.add("tokens", rows, out.tokens)
                buffer.add("attention", rows, out.attention)
                buffer.add("global", rows, out.global_feature)
            buffer.valid[rows] = [not e for e in errors]
            lap("forward_copy")
            for i, e in zip(indices, errors, strict=True):
                if e:
                    log.warning("skipping unreadable image %s: %s", pool.source(i), e)
                    skipped.append(
                        {"global_id": str(i), "image_id": pool.ids[i], "source": pool.source(i), "error": e}
                    )
            bar.update(len(indices))
            if indices[-1] == stop - 1:
                shard_in: _PreparedShard | _ShardBuffer = buffer
                ready = None
                if not transform_in_writer:
                    shard_in = prepare(shard, buffer, skipped)
                    lap("shard_transform")
                elif device.type == "cuda":
                    ready = torch.cuda.Event()
                    ready.record(torch.cuda.current_stream(device))
                if writing is not None:
                    writing.result()  # re-raises a failed write here
                lap("writer_wait")
                writing = writer.submit(finish_shard, shard, shard_in, skipped, ready)
                report.shards_written.append(shard)
                report.skipped.extend(skipped)
                skipped = []
                shard = next(pending, -1)
                if shard >= 0:
                    start, stop = store.shard_range(shard)
                    buffer = _ShardBuffer(stop - start)
        if writing is not None:
            writing.result()
        lap("writer_wait")
        report.stage_seconds = stage
    bar.close()
    report.images = n_todo
    report.seconds = time.perf_counter() - t0
    log.info(
        "extracted %d images in %.1f s (%.1f img/s; %s; decoding: %s)",
        n_todo,
        report.seconds,
        n_todo / max(report.seconds, 1e-9),
        ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items()),
        f"{num_workers} loader workers" if num_workers else f"{threads} threads in the main process",
    )
    return report
