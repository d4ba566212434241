"""Benchmark the extraction pipeline against the bare model forward, its memory, and its disk per image.

* ``throughput``: ``geal.features.extract.extract_to_store`` over generated JPEGs of VOC's sizes (decode and
resize
  in DataLoader workers, or in the main process's threads between forwards with ``num_workers`` 0 — what
  ``auto`` gives on a CPU —, normalisation, forward + attention probe, copy out, fp16 shard writes) vs the
  bare ``backbone.extract`` forward on an already prepared batch of the same size, same device, same
  autocast; the ratio is pipeline images/s ÷ bare images/s (the target is ≥ 0.85), the best of
  ``--rounds`` alternated rounds each, one line per ``--workers`` value and ``--decodes`` value. Default
  model: ViT-S/16 at 224 (DINO ViT-S/16's architecture, random weights: the same compute, no download).
* ``memory``: peak resident memory (this process + its loader workers) while extracting a pool of
  ``--memory-images`` small generated images with the tiny test ViT into a fresh store — what the
  pipeline itself holds, whatever the pool size (the model's own activations are a constant on top).
* ``loader``: the DataLoader alone (no model): images/s delivered to the device as normalised float
  batches when the workers decode JPEGs with libjpeg-turbo, hand over resized uint8 images and the batch is
  normalised on the device (what extraction does) vs workers that decode with PIL, normalise and hand over
  float32 (what it did before), same images, workers and batch, alternated, best of ``--loader-rounds``
  each; one worker's cost per image (decode, resize, and normalise for the reference) in this process;
  and the handover alone (workers that only copy one made-up image, uint8 vs float32): the most the main
  process receives, pins and copies, whatever the decoding. On a GPU host the loader is the limit
  (``throughput`` line) and the normalisation runs on the GPU, so the worker's cost per image and the
  handover are what matter there; on a CPU the normalisation only moves from the workers to the main
  process.
* ``disk``: bytes per image of a full store and of a clusters-only store (τ=0.5, K=25) for the same
  images and model, extrapolated to 1,000,000 images.

Usage: python scripts/bench_extract.py [--device cpu] [--images 192] [--batch-size 32] [--workers auto 2]
       [--loader-workers 1 2] [--memory-workers 2]
       [--decodes auto workers device] [--memory-images 100000] [--threads N]
       [--rounds 2] [--loader-rounds 3] [--loader-images 1024]
       [--skip throughput loader disk memory] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bench_record import BenchRecorder, add_out_argument
from PIL import Image

from geal.api.features import FeatureRequest
from geal.api.pool import ImagePool
from geal.features.backbones.base import Preprocessing
from geal.features.backbones.vit import TimmViT
from geal.features.device_decode import DECODES, resolve_decode
from geal.features.extract import (
    ExtractionSettings,
    PreprocessedPool,
    Workers,
    autocast_context,
    build_transform,
    collate_images,
    extract_to_store,
    normalize_transform,
    resolve_workers,
)
from geal.features.provider import FeatureProvider
from geal.features.store import FeatureStore
from geal.method.knowledge import ClusterSettings
from geal.util.cores import usable_cores
from geal.util.threads import intra_op_threads

VOC_SIZES = [(500, 375), (375, 500), (500, 333), (500, 334), (333, 500), (480, 360)]


class GeneratedPool(ImagePool):
    """``n`` deterministic RGB images of ``size`` made on the fly (no disk): noise + a few rectangles."""

    def __init__(self, n: int, size: int = 48) -> None:
        self.n, self.size, self.name = n, size, f"generated{n}"

    @property
    def ids(self) -> Sequence[str]:
        return [f"img_{i:07d}" for i in range(self.n)]

    def load(self, index: int) -> Image.Image:
        rng = np.random.default_rng(index)
        img = rng.integers(0, 255, (self.size, self.size, 3), dtype=np.uint8)
        y, x = rng.integers(0, self.size // 2, 2)
        img[y : y + self.size // 3, x : x + self.size // 3] = rng.integers(0, 255, 3, dtype=np.uint8)
        return Image.fromarray(img)

    def source(self, index: int) -> str:
        return f"/generated/{self.ids[index]}.png"


def write_voc_sized_jpeg(i: int, path: Path) -> None:
    """Image ``i``: VOC's ``i``-th size (cycling), smooth photo-like content, JPEG quality 90."""
    w, h = VOC_SIZES[i % len(VOC_SIZES)]
    rng = np.random.default_rng(i)
    small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(path, quality=90)


class JpegFolderPool(ImagePool):
    """JPEG files written once to ``root`` (VOC's image sizes, in parallel), decoded from disk like a real
    pool (``file_path``: the extractor may decode them on the device)."""

    def __init__(self, root: Path, n: int) -> None:
        self.name = f"jpegs{n}"
        root.mkdir(parents=True, exist_ok=True)
        self.paths = [root / f"{i:06d}.jpg" for i in range(n)]
        todo = [(i, p) for i, p in enumerate(self.paths) if not p.exists()]
        if todo:
            with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as workers:
                workers.starmap(write_voc_sized_jpeg, todo, chunksize=64)

    @property
    def ids(self) -> Sequence[str]:
        return [p.stem for p in self.paths]

    def load(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as im:
            return im.convert("RGB")

    def source(self, index: int) -> str:
        return str(self.paths[index])

    def file_path(self, index: int) -> Path:
        return self.paths[index]


def vit_s16() -> TimmViT:
    return TimmViT(name="vits16_random", model_name="vit_small_patch16_224", resolution=224, init_seed=0)


def tiny_vit() -> TimmViT:
    kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
    return TimmViT(name="tiny_vit", model_name="vit_tiny_patch16_224", resolution=32, model_kwargs=kwargs)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident set size (MB) of this process and of its largest finished child (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def bench_throughput(rec: BenchRecorder, args: argparse.Namespace, device: torch.device, work: Path) -> None:
    model = vit_s16().to(device).eval()
    pool = JpegFolderPool(work / "jpegs", args.images)
    res = model.preprocessing.resolution
    batch = torch.randn(args.batch_size, 3, res, res, device=device)

    def bare_rate() -> float:
        """Images/s of the bare forward on a prepared batch, over as many images as the pipeline sees."""
        with torch.inference_mode(), autocast_context(device, args.amp):
            model.extract(batch)  # warm-up (kernel selection)
            t0 = time.perf_counter()
            n = 0
            while n < args.images:
                model.extract(batch)
                n += args.batch_size
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return n / (time.perf_counter() - t0)

    shard_size = min(512, args.images)  # the configs' default shard size: writes overlap the next shard
    bares: list[float] = []
    runs = [(workers, decode) for workers in args.workers for decode in args.decodes]
    pipelines: dict[tuple[Workers, str], list[float]] = {run: [] for run in runs}
    # rounds of (bare forward, each pipeline), the best of each over the rounds: the same number of tries
    # for both sides of the ratio (a shared machine's speed can vary by ±15 % from one second to the next)
    for r in range(args.rounds):
        bares.append(bare_rate())
        for workers, decode in runs:
            settings = ExtractionSettings(
                batch_size=args.batch_size,
                num_workers=workers,
                amp=args.amp,
                shard_size=shard_size,
                progress=False,
                decode=decode,
            )
            store = FeatureStore.open(
                work / f"cache_{decode}_{workers}_{r}", {"bench": decode}, len(pool), shard_size, "bench"
            )
            t0 = time.perf_counter()
            report = extract_to_store(
                pool,
                lambda: model,
                store,
                settings=settings,
                device=device,
                feature_layer=-2,
                attention_layer=-1,
            )
            pipelines[workers, decode].append(len(pool) / (time.perf_counter() - t0))
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in report.stage_seconds.items())
            rec.emit(
                "extract_round",
                f"  round {r + 1}, workers={workers}, decode={decode}: main loop {report.seconds:.2f} s: "
                f"{stages}",
                round=r + 1,
                workers=workers,
                decode=decode,
                main_loop_s=report.seconds,
                stage_seconds=dict(report.stage_seconds),
            )
    bare = max(bares)
    for (workers, decode), rates in pipelines.items():
        pipeline = max(rates)
        rec.emit(
            "extract_throughput",
            f"extract throughput ViT-S/16@224 {args.amp} batch {args.batch_size}, "
            f"{workers_text(workers, device)}, "
            f"decode={decode} ({resolve_decode(decode, device)}), {args.images} JPEGs of VOC sizes "
            f"on {device_name(device)}: pipeline {pipeline:.1f} img/s, bare forward {bare:.1f} img/s "
            f"(best of {args.rounds} alternated rounds each), ratio {pipeline / bare:.2f}",
            model="ViT-S/16@224",
            amp=args.amp,
            batch_size=args.batch_size,
            workers=workers,
            loader_workers=resolve_workers(workers, device),
            decode=decode,
            decode_resolved=resolve_decode(decode, device),
            images=args.images,
            pipeline_img_s=pipeline,
            bare_forward_img_s=bare,
            rounds=args.rounds,
            ratio=pipeline / bare,
        )


def workers_text(workers: Workers, device: torch.device) -> str:
    """What ``num_workers=workers`` means on ``device``: worker processes, or decoding threads in-process."""
    n = resolve_workers(workers, device)
    where = (
        f"{n} loader workers"
        if n
        else f"no loader workers ({torch.get_num_threads()} decode threads in-process)"
    )
    return f"num_workers={workers}: {where}"


def workers_arg(value: str) -> Workers:
    return "auto" if value == "auto" else int(value)


class _FloatHandover(PreprocessedPool):
    """The reference (the workers before this code): PIL decodes every image, the worker resizes *and
    normalises* and hands over (3, R, R) float32."""

    def preprocessed(self, index: int) -> tuple[torch.Tensor, str]:
        return build_transform(self.pre)(self.pool.load(index)), ""


class _Premade(PreprocessedPool):
    """No decoding: every image is a fresh copy of one made-up (3, R, R) image in ``dtype``, so the loader
    line shows what the workers' handover (collation into shared memory) and the main process (receiving,
    pinning, copying to the device) can deliver at most."""

    def __init__(self, pool: ImagePool, pre: Preprocessing, dtype: torch.dtype) -> None:
        super().__init__(pool, pre, "raise")
        g = torch.Generator().manual_seed(0)
        self.image = torch.randint(
            0, 256, (3, pre.resolution, pre.resolution), generator=g, dtype=torch.uint8
        )
        self.dtype = dtype

    def preprocessed(self, index: int) -> tuple[torch.Tensor, str]:
        return self.image.to(self.dtype, copy=True), ""


def bench_loader(rec: BenchRecorder, args: argparse.Namespace, device: torch.device, work: Path) -> None:
    pool = JpegFolderPool(work / "jpegs_loader", args.loader_images)
    pre = vit_s16().preprocessing
    normalize = normalize_transform(pre)

    def rate(
        dataset: PreprocessedPool | torch.utils.data.Subset, on_device: bool, workers: int
    ) -> tuple[float, float]:
        """Images/s through the DataLoader, and the seconds until its first batch (worker start-up)."""
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=device.type == "cuda",
        )
        t0 = time.perf_counter()
        first = math.inf
        for images, _, _ in loader:
            first = min(first, time.perf_counter() - t0)
            batch = images.to(device, non_blocking=True)
            batch = normalize(batch) if on_device else batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(dataset) / (time.perf_counter() - t0), first

    def worker_ms(dataset: PreprocessedPool) -> float:
        """One worker's cost per image (this process, one thread): decode, resize (and normalise)."""
        n = min(len(pool), 256)
        with intra_op_threads(1):
            t0 = time.perf_counter()
            for i in range(n):
                dataset[i]
            return 1e3 * (time.perf_counter() - t0) / n

    uint8 = PreprocessedPool(pool, pre, "raise")
    float32 = _FloatHandover(pool, pre, "raise")
    ours: dict[int, list[float]] = {w: [] for w in args.loader_workers}
    ref: dict[int, list[float]] = {w: [] for w in args.loader_workers}
    ours_ms, ref_ms = [], []
    for _ in range(args.loader_rounds):
        for w in args.loader_workers:
            ref[w].append(rate(float32, on_device=False, workers=w)[0])
            ours[w].append(rate(uint8, on_device=True, workers=w)[0])
        ref_ms.append(worker_ms(float32))
        ours_ms.append(worker_ms(uint8))
    rec.emit(
        "extract_worker_cost",
        f"extract worker cost per image ({min(len(pool), 256)} JPEGs of VOC sizes -> {pre.resolution}px, "
        "one thread): "
        f"libjpeg-turbo + uint8 handover {min(ours_ms):.2f} ms, PIL + float32 handover {min(ref_ms):.2f} ms, "
        "ratio "
        f"{min(ref_ms) / min(ours_ms):.2f}x (best of {args.loader_rounds})",
        images=min(len(pool), 256),
        resolution=pre.resolution,
        ours_ms=min(ours_ms),
        reference_ms=min(ref_ms),
        ratio=min(ref_ms) / min(ours_ms),
        rounds=args.loader_rounds,
    )
    for w in args.loader_workers:
        # one worker decoding at the cost above would deliver 1000 / ms images/s: the scaling shows whether
        # the workers, the main process (collation, pinning, copy) or the host's cores are the limit
        rec.emit(
            "extract_loader",
            f"extract loader {len(pool)} JPEGs of VOC sizes -> {pre.resolution}px, batch {args.batch_size}, "
            f"{w} workers, to {device_name(device)}: libjpeg-turbo + uint8 handover + normalise on the "
            f"device {max(ours[w]):.0f} img/s ({max(ours[w]) / max(w, 1):.0f} per worker; one worker's cost "
            f"alone: {1e3 / min(ours_ms):.0f} img/s), PIL + float32 handover (normalised in the workers) "
            f"{max(ref[w]):.0f} img/s, ratio {max(ours[w]) / max(ref[w]):.2f}x (best of {args.loader_rounds} "
            "alternated rounds each)",
            images=len(pool),
            resolution=pre.resolution,
            batch_size=args.batch_size,
            workers=w,
            ours_img_s=max(ours[w]),
            ours_img_s_per_worker=max(ours[w]) / max(w, 1),
            one_worker_cost_img_s=1e3 / min(ours_ms),
            reference_img_s=max(ref[w]),
            ratio=max(ours[w]) / max(ref[w]),
            rounds=args.loader_rounds,
        )
    # the handover alone (no decoding), at the most workers: the ceiling the main process sets
    w = args.loader_workers[-1]
    ceiling = {dtype: 0.0 for dtype in (torch.uint8, torch.float32)}
    for _ in range(args.loader_rounds):
        for dtype in ceiling:
            ceiling[dtype] = max(
                ceiling[dtype], rate(_Premade(pool, pre, dtype), on_device=False, workers=w)[0]
            )
    u8, f32 = ceiling[torch.uint8], ceiling[torch.float32]
    rec.emit(
        "extract_handover",
        f"extract loader handover alone (no decoding: copies of one made-up image), {len(pool)} images, "
        f"batch {args.batch_size}, {w} workers, to {device_name(device)}: uint8 {u8:.0f} img/s, float32 "
        f"{f32:.0f} img/s, ratio {u8 / f32:.2f}x (best of {args.loader_rounds} alternated rounds each)",
        images=len(pool),
        batch_size=args.batch_size,
        workers=w,
        uint8_img_s=u8,
        float32_img_s=f32,
        ratio=u8 / f32,
        rounds=args.loader_rounds,
    )
    # steady state vs start-up: a quarter of the images shows how much of a short run is worker start-up
    short = torch.utils.data.Subset(uint8, range(max(1, len(pool) // 4)))
    short_rate, first = rate(short, on_device=True, workers=w)
    rec.emit(
        "extract_loader_startup",
        f"extract loader start-up, {w} workers: first batch after {first:.2f} s; {len(short)} of the images "
        f"at {short_rate:.0f} img/s vs all {len(pool)} at {max(ours[w]):.0f} img/s (ours)",
        workers=w,
        first_batch_s=first,
        short_images=len(short),
        short_img_s=short_rate,
        images=len(pool),
        img_s=max(ours[w]),
    )


def bench_disk(rec: BenchRecorder, args: argparse.Namespace, device: torch.device, work: Path) -> None:
    pool = JpegFolderPool(work / "jpegs", args.images)
    clusters = ClusterSettings(tau=0.5, k=25)
    sizes = {}
    for mode in ("full", "clusters_only"):
        settings = ExtractionSettings(
            batch_size=args.batch_size,
            num_workers=args.workers[0],
            amp=args.amp,
            shard_size=64,
            progress=False,
            cache_mode=mode,
        )
        cache = work / f"disk_{mode}"
        provider = FeatureProvider(pool, vit_s16, {"bench": "vits16"}, cache, settings, device)
        # a full store alone (its cluster caches would sit beside the tokens); a clusters-only store keeps
        # global features and the clusters of the selector that extracts it, in its cluster cache
        if mode == "clusters_only":
            provider.knowledge_clusters(FeatureRequest.dense(), clusters)
        sizes[mode] = provider.store(FeatureRequest.dense()).disk_bytes() / len(pool)
    rec.emit(
        "extract_disk",
        f"extract disk ViT-S/16@224 (196 tokens x 384): full store {sizes['full'] / 1e3:.1f} kB/img "
        f"(1,000,000 images ≈ {sizes['full'] * 1e6 / 1e9:.0f} GB), clusters-only (K=25) "
        f"{sizes['clusters_only'] / 1e3:.1f} kB/img (≈ {sizes['clusters_only'] * 1e6 / 1e9:.0f} GB), "
        f"ratio {sizes['full'] / sizes['clusters_only']:.1f}x",
        model="ViT-S/16@224",
        images=len(pool),
        k=25,
        full_bytes_per_image=sizes["full"],
        clusters_only_bytes_per_image=sizes["clusters_only"],
        ratio=sizes["full"] / sizes["clusters_only"],
    )


def bench_memory(rec: BenchRecorder, args: argparse.Namespace, device: torch.device, work: Path) -> None:
    pool = GeneratedPool(args.memory_images)
    settings = ExtractionSettings(
        batch_size=256, num_workers=args.memory_workers, amp="none", shard_size=512, progress=False
    )
    before, _ = peak_rss_mb()
    store = FeatureStore.open(work / "mem", {"bench": "memory"}, len(pool), 512, "bench")
    t0 = time.perf_counter()
    extract_to_store(
        pool, tiny_vit, store, settings=settings, device=device, feature_layer=-2, attention_layer=-1
    )
    seconds = time.perf_counter() - t0
    own, children = peak_rss_mb()
    rec.emit(
        "extract_memory",
        f"extract memory tiny ViT, {len(pool)} generated 48 px images, shards of 512, batch 256, "
        f"{workers_text(args.memory_workers, device)}: {seconds:.0f} s ({len(pool) / seconds:.0f} img/s), "
        "store "
        f"{store.disk_bytes() / 1e6:.0f} MB, peak RSS main process {own:.0f} MB (before extraction "
        f"{before:.0f} MB), largest loader worker {children:.0f} MB",
        images=len(pool),
        workers=args.memory_workers,
        seconds=seconds,
        img_s=len(pool) / seconds,
        store_bytes=store.disk_bytes(),
        peak_rss_main_mb=own,
        rss_before_mb=before,
        peak_rss_largest_worker_mb=children,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=192, help="JPEGs for the throughput and disk lines")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--workers",
        nargs="+",
        type=workers_arg,
        default=["auto", 2],
        help="extraction.num_workers of the throughput lines, one line each (auto or an int; the disk line "
        "uses the first)",
    )
    ap.add_argument(
        "--loader-workers", nargs="+", type=int, default=[2], help="DataLoader workers, one loader line each"
    )
    ap.add_argument(
        "--memory-workers", type=workers_arg, default=2, help="extraction.num_workers of the memory line"
    )
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    ap.add_argument(
        "--decodes", nargs="+", default=["workers"], choices=list(DECODES), help="one throughput line each"
    )
    ap.add_argument("--memory-images", type=int, default=100_000, help="pool of the memory line (0: skip)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "loader", "disk", "memory"])
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds of the throughput lines")
    ap.add_argument("--loader-rounds", type=int, default=3, help="alternated rounds of the loader line")
    ap.add_argument("--loader-images", type=int, default=1024, help="JPEGs of the loader line")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add_out_argument(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# bench_extract: torch {torch.__version__}, device {device}, torch threads "
        f"{torch.get_num_threads()}, cpu cores {os.cpu_count()} (usable {usable_cores()}), load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        flush=True,
    )
    rec = BenchRecorder("bench_extract", args.out, device=str(device), torch_threads=torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="geal-bench-extract-"))
    try:
        if "memory" not in args.skip and args.memory_images:  # first: peak RSS is a high-water mark
            bench_memory(rec, args, device, work)
        if "throughput" not in args.skip:
            bench_throughput(rec, args, device, work)
        if "loader" not in args.skip:
            bench_loader(rec, args, device, work)
        if "disk" not in args.skip:
            bench_disk(rec, args, device, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
