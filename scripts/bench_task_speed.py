"""Training speed (images/s) of the paper's dense-task configs: SSD300-VGG16
(``geal/conf/task/voc_detection.yaml``) and DeepLabV3-ResNet50
(``geal/conf/task/cityscapes_segmentation.yaml``), random backbone weights (no network).

For each config, on generated VOC-sized (500×375 JPEG) / Cityscapes-sized (2048×1024 PNG) images:

* **task**: the full training epoch of the task on the shared engine (image decoding, the config's
  augmentation, forward, loss, backward, SGD step, under the config's autocast), timed by the engine
  (``epoch_s`` of the second of two epochs, so one-time set-up is excluded);
* **bare model**: forward + backward + SGD step of the same torchvision model on ready tensors of the
  training input size (no data loading, no augmentation) — the reference, measured in the same process;

and prints images/s of both and their ratio (the share of the bare model's speed the task keeps).

Usage: python scripts/bench_task_speed.py [--device cpu] [--batch-size-ssd 8] [--batch-size-seg 2]
       [--steps 2] [--amp auto|bf16|none] [--tasks voc_detection cityscapes_segmentation]
       [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_record import BenchRecorder, add_out_argument
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from downstream.datasets import synthetic
from downstream.datasets.cityscapes import CityscapesPool
from downstream.datasets.voc import VOCPool
from downstream.tasks.detection import VOCDetectionTask
from downstream.tasks.engine import resolve_amp
from downstream.tasks.segmentation import CityscapesSegmentationTask
from geal.api.task import TaskContext
from geal.run.cli import CONFIG_DIR

log = logging.getLogger("bench_task_speed")


def task_config(name: str, data: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="run",
            overrides=[
                f"task={name}",
                f"data={data}",
                "paths.data_dir=/unused",
                "task.model.backbone_weights=null",
            ],
        )


def bare_model_speed(
    model: torch.nn.Module, step, batch_size: int, steps: int, amp: torch.dtype | None, device: torch.device
) -> float:
    """images/s of ``step(model)`` (forward + loss) + backward + SGD on ready tensors; one warm-up step."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def one() -> None:
        ctx = (
            torch.autocast(device.type, dtype=amp)
            if amp is not None
            else torch.autocast(device.type, enabled=False)
        )
        with ctx:
            loss = step(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - t0)


def bench_detection(rec: BenchRecorder, root: Path, args: argparse.Namespace, device: torch.device) -> None:
    cfg = task_config("voc_detection", "voc0712")
    n = args.batch_size_ssd * args.steps
    synthetic.make_voc(root, n07=n, n12=0, n07_test=1, width_range=(500, 500), height_range=(375, 375))
    pool = VOCPool(root / "VOCdevkit", sets=[["2007", "trainval"]])
    test = VOCPool(root / "VOCdevkit", sets=[["2007", "test"]])
    train = {
        **dict(cfg.task.train),
        "epochs": 2,
        "batch_size": args.batch_size_ssd,
        "num_workers": 0,
        "checkpoint_every": 0,
        "amp": args.amp or cfg.task.train.amp,
    }
    keys = ("photometric", "expand_max", "expand_p", "min_iou_crop", "flip_p", "warmup_iters")
    task = VOCDetectionTask(
        instantiate(cfg.task.model), train=train, instance_stats=False, **{k: cfg.task[k] for k in keys}
    )
    task.setup(TaskContext(pool=pool, test_pool=test, device=device, progress=False))
    task.fit(list(range(n)))
    ours = n / task.history[-1]["epoch_s"]
    model = instantiate(cfg.task.model)(21)
    images = [torch.rand(3, 300, 300, device=device) for _ in range(args.batch_size_ssd)]
    targets = [
        {
            "boxes": torch.tensor([[30.0, 40, 200, 260], [100, 20, 280, 150]], device=device),
            "labels": torch.tensor([3, 15], device=device),
        }
        for _ in images
    ]

    def step(m):
        losses = m(images, targets)
        return losses["bbox_regression"] + losses["classification"]

    bare = bare_model_speed(model, step, args.batch_size_ssd, args.steps, task.amp_dtype, device)
    rec.emit(
        "task_speed",
        f"voc_detection SSD300-VGG16 300x300 batch {args.batch_size_ssd} amp {task.amp_dtype} on {device}: "
        f"task {ours:.3g} img/s | bare model {bare:.3g} img/s | ratio {ours / bare:.2f}",
        task="voc_detection",
        model="SSD300-VGG16",
        input_size=[300, 300],
        batch_size=args.batch_size_ssd,
        steps=args.steps,
        amp=str(task.amp_dtype),
        task_img_s=ours,
        bare_model_img_s=bare,
        ratio=ours / bare,
    )


def bench_segmentation(
    rec: BenchRecorder, root: Path, args: argparse.Namespace, device: torch.device
) -> None:
    cfg = task_config("cityscapes_segmentation", "cityscapes")
    n = args.batch_size_seg * args.steps
    synthetic.make_cityscapes(root / "cityscapes", n_train=n, n_val=1, size=(2048, 1024))
    pool, val = CityscapesPool(root / "cityscapes"), CityscapesPool(root / "cityscapes", "val")
    train = {
        **dict(cfg.task.train),
        "epochs": 2,
        "batch_size": args.batch_size_seg,
        "num_workers": 0,
        "checkpoint_every": 0,
        "amp": args.amp or cfg.task.train.amp,
    }
    keys = ("base_size", "crop_size", "scale_range", "flip_p", "photometric", "eval_size", "aux_weight")
    task = CityscapesSegmentationTask(
        instantiate(cfg.task.model), train=train, **{k: cfg.task[k] for k in keys}
    )
    task.setup(TaskContext(pool=pool, test_pool=val, device=device, progress=False))
    task.fit(list(range(n)))
    ours = n / task.history[-1]["epoch_s"]
    crop = list(cfg.task.crop_size)
    model = instantiate(cfg.task.model)(19)
    x = torch.rand(args.batch_size_seg, 3, *crop, device=device)
    y = torch.randint(0, 19, (args.batch_size_seg, *crop), device=device)

    def step(m):
        out = m(x)
        ce = torch.nn.functional.cross_entropy
        return ce(out["out"].float(), y, ignore_index=255) + 0.4 * ce(out["aux"].float(), y, ignore_index=255)

    bare = bare_model_speed(model, step, args.batch_size_seg, args.steps, task.amp_dtype, device)
    rec.emit(
        "task_speed",
        f"cityscapes_segmentation DeepLabV3-ResNet50 crop {crop[0]}x{crop[1]} batch {args.batch_size_seg} "
        f"amp {task.amp_dtype} on {device}: task {ours:.3g} img/s | bare model {bare:.3g} img/s | "
        f"ratio {ours / bare:.2f}",
        task="cityscapes_segmentation",
        model="DeepLabV3-ResNet50",
        input_size=crop,
        batch_size=args.batch_size_seg,
        steps=args.steps,
        amp=str(task.amp_dtype),
        task_img_s=ours,
        bare_model_img_s=bare,
        ratio=ours / bare,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size-ssd", type=int, default=8)
    parser.add_argument("--batch-size-seg", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps (one epoch) per measurement")
    parser.add_argument("--amp", default=None, help="override the configs' amp (auto, bf16, none)")
    parser.add_argument("--tasks", nargs="+", default=["voc_detection", "cityscapes_segmentation"])
    add_out_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    resolve_amp(device, args.amp or "auto")  # fail early on an impossible amp
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    threads = torch.get_num_threads()
    rec = BenchRecorder("bench_task_speed", args.out, device=str(device), torch_threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        if "voc_detection" in args.tasks:
            bench_detection(rec, Path(tmp) / "voc", args, device)
        if "cityscapes_segmentation" in args.tasks:
            bench_segmentation(rec, Path(tmp) / "seg", args, device)


if __name__ == "__main__":
    main()
