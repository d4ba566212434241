"""Command-line entry points (the only module that sees a Hydra ``DictConfig``).

``geal-select``: build the pool → (extract features if the selector needs them and they are not cached) →
select → write selection.json, the id list, the native split file and run_info.json into Hydra's run dir.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from geal.config import POOL_RUN_KEYS, check_target_kwargs, register_schemas
from geal.extract import ExtractionSettings
from geal.features import FeatureProvider
from geal.pipeline import read_labeled_ids, run_selection
from geal.pool import ImagePool
from geal.resources import sha256_file
from geal.selection import SelectionContext, Selector

#: the Hydra config root (the repository's conf/; the package is installed editable, see README)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"

log = logging.getLogger("geal")
register_schemas()


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available, else cpu; an explicit unavailable device is an error with the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but CUDA is not available here: use device=cpu or device=auto")
    return device


def file_fingerprint(path: str) -> dict[str, Any]:
    """Identity of a weights file: size and sha256 of its content."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"backbone.checkpoint={path} does not exist: pass the path of a .pth/.safetensors file"
        )
    return {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def backbone_key(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the backbone's outputs: its resolved config plus the content of its weights file."""
    node = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(node, dict)
    # where converted weights are cached does not change them
    key = {k: v for k, v in node.items() if k not in ("cache_dir",)}
    if node.get("checkpoint"):
        key["checkpoint"] = file_fingerprint(str(node["checkpoint"]))
    return key


def build_pool(cfg: DictConfig) -> ImagePool:
    check_target_kwargs(cfg, "data", ignore=POOL_RUN_KEYS)
    kwargs = {k: v for k, v in cfg.items() if k not in POOL_RUN_KEYS}
    return instantiate(OmegaConf.create(kwargs), _convert_="all")


def build_context(
    cfg: DictConfig, pool: ImagePool, selector: Selector, device: torch.device
) -> SelectionContext:
    labeled = read_labeled_ids(Path(cfg.labeled), pool) if cfg.labeled else []
    features = None
    if "features" in selector.requires:
        check_target_kwargs(cfg.backbone, "backbone")
        features = FeatureProvider(
            pool,
            backbone_factory=lambda: instantiate(cfg.backbone, _convert_="all"),
            backbone_key=backbone_key(cfg.backbone),
            cache_dir=Path(cfg.paths.cache_dir),
            settings=ExtractionSettings(
                batch_size=cfg.extraction.batch_size,
                num_workers=cfg.extraction.num_workers,
                amp=cfg.extraction.amp,
                shard_size=cfg.extraction.shard_size,
                on_error=cfg.data.get("on_error", "raise"),
                progress=cfg.extraction.progress,
            ),
            device=device,
            label=str(cfg.backbone.get("name", "backbone")),
        )
    unsupported = sorted(r for r in selector.requires if r != "features")
    if unsupported:
        raise ValueError(
            f"selector {cfg.selector.get('name')} needs {unsupported}, which geal-select does not provide"
        )
    return SelectionContext(labeled=labeled, seed=cfg.seed, device=device, features=features)


def summarize(result: Any, pool: ImagePool, stage_times: dict[str, float]) -> str:
    """A short human summary of a selection run (printed by the CLI)."""
    sel = result.selection
    lines = [f"selected {len(sel.global_ids)} of {len(pool)} images from {pool.name}"]
    shown = ", ".join(pool.ids[i] for i in sel.global_ids[:10])
    lines.append(f"  first picks: {shown}{' ...' if len(sel.global_ids) > 10 else ''}")
    cov = result.run_info.get("class_coverage")
    if cov:
        lines.append(f"  classes covered: {cov['classes_selected']} of {cov['classes_in_pool']} in the pool")
        lines.append(
            "  selected per class: " + ", ".join(f"{k}:{v}" for k, v in cov["selected_histogram"].items())
        )
    feats = result.run_info.get("features") or {}
    if feats:
        lines.append(
            f"  feature cache: {'hit' if feats['extraction_cache_hit'] else 'miss (extracted)'}; "
            f"knowledge clusters: {'hit' if feats['clusters_cache_hit'] else 'computed'}"
        )
    lines.append(
        "  time per stage: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in stage_times.items())
    )
    lines.append(f"  outputs: {Path(result.files['selection']).parent}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="select")
def select_main(cfg: DictConfig) -> None:
    """``geal-select``: one selection run (see conf/select.yaml)."""
    t_start = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    check_target_kwargs(cfg.selector, "selector")
    selector: Selector = instantiate(cfg.selector, _convert_="all")

    t0 = time.perf_counter()
    pool = build_pool(cfg.data)
    pool_s = time.perf_counter() - t0
    log.info("pool %s: %d images", pool.name, len(pool))
    ctx = build_context(cfg, pool, selector, device)

    result = run_selection(
        pool,
        selector,
        cfg.budget,
        ctx,
        out_dir,
        split_name=cfg.output.split_name,
        write_dataset_split=cfg.output.write_dataset_split,
        extra_info={
            "config_file": str(out_dir / ".hydra" / "config.yaml"),
            "derived": {"device": str(device), "pool_size": len(pool)},
        },
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )
    stage_times = {"pool": pool_s, **result.timings, "total": time.perf_counter() - t_start}
    if cfg.output.summary:
        print(summarize(result, pool, stage_times), file=sys.stdout)  # the CLI's own output, not logging


if __name__ == "__main__":
    select_main()
