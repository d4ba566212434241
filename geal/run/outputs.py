"""A selection run with plain typed arguments: select, then write every output file of the run dir.

Outputs (docs/design.md §2): ``selection.json`` (ordered global ids, image ids, per-pick distance),
``selected_ids.txt`` (one image id per line, selection order), the dataset-native split file when the pool
has a format for it (under ``splits/`` in the run dir), and ``run_info.json`` (git sha,
versions, device, derived values, timings of each stage). Every file is written atomically, by the two
writers here (:func:`write_selection`, :func:`write_run_info`), which the run loop uses too.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, Selector
from geal.util.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    selection: Selection
    files: dict[str, str]
    timings: dict[str, float]
    run_info: dict[str, Any] = field(default_factory=dict)


def read_labeled_ids(path: Path, pool: ImagePool) -> list[int]:
    """Global ids of an already-labeled set: a text file (one image id per line) or a selection.json."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"labeled-id file {path} does not exist (labeled=PATH: a .txt of image ids or a selection.json)"
        )
    text = path.read_text()
    if not text.strip():
        raise ValueError(
            f"labeled-id file {path} is empty: list the labeled image ids (one per line, or a "
            f"selection.json), or leave labeled unset when nothing is labeled yet"
        )
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"labeled-id file {path} is not valid JSON ({err}): pass a selection.json written by "
                f"geal-select, or a .txt of image ids"
            ) from err
        if not isinstance(data, dict) or "image_ids" not in data:
            raise ValueError(
                f"{path} has no 'image_ids' list: is it a selection.json written by geal-select?"
            )
        image_ids = [str(x) for x in data["image_ids"]]
    else:
        image_ids = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return pool.index_of(image_ids)


def load_selection(path: Path, pool: ImagePool) -> tuple[list[int], dict[str, Any]]:
    """The ordered global ids of a ``selection.json`` written for this very pool, and the document.

    The file's pool identity (the hash of its id list) must match ``pool``'s: a selection made for another
    dataset or split is an error that names both.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"selection_file={path} does not exist: pass a selection.json of geal-select")
    try:
        doc = json.loads(path.read_text())
        image_ids = [str(x) for x in doc["image_ids"]]
        theirs = doc["pool_identity"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a selection.json written by geal-select ({err})") from err
    ours = pool.identity()
    if theirs.get("ids_sha256") != ours["ids_sha256"]:
        raise ValueError(
            f"{path} was made for pool '{theirs.get('name')}' ({theirs.get('n_images')} images, ids sha256 "
            f"{str(theirs.get('ids_sha256'))[:12]}…), but this run's data is '{ours['name']}' "
            f"({ours['n_images']} images, ids sha256 {ours['ids_sha256'][:12]}…): pass the data=... that the "
            f"selection was made on, or select again on this pool."
        )
    return pool.index_of(image_ids), doc


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("geal", "torch", "torchvision", "timm", "numpy", "hydra-core", "omegaconf", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_state() -> dict[str, Any]:
    """The project's git sha and whether the tree had uncommitted changes (None outside a checkout)."""
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
        return {"sha": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def class_coverage(pool: ImagePool, global_ids: Sequence[int]) -> dict[str, Any] | None:
    """Classes present in the selection vs in the pool, when the pool has labels."""
    labels = pool.labels
    if labels is None:
        return None
    names = list(pool.class_names) if pool.class_names is not None else None

    def name(c: int) -> str:
        return names[c] if names is not None else str(c)

    selected = Counter(name(int(labels[i])) for i in global_ids)
    in_pool = Counter(name(int(c)) for c in labels)
    return {
        "classes_in_pool": len(in_pool),
        "classes_selected": len(selected),
        "selected_histogram": dict(sorted(selected.items())),
        "pool_histogram": dict(sorted(in_pool.items())),
    }


def run_selection(
    pool: ImagePool,
    selector: Selector,
    budget: int,
    ctx: SelectionContext,
    out_dir: Path,
    *,
    split_name: str,
    write_dataset_split: bool = False,
    extra_info: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> RunResult:
    """Select ``budget`` images and write the run's output files into ``out_dir``.

    ``config``: the resolved run config, embedded in ``selection.json`` so the file says what produced it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    selection, unreadable = select_readable(pool, selector, budget, ctx)
    total = time.perf_counter() - t0

    timings: dict[str, float] = {}
    feature_info: dict[str, Any] = {}
    if ctx.features is not None:
        ft = ctx.features.timings
        extraction = ft.extraction.seconds if ft.extraction is not None else 0.0
        waited = float(ft.extra.get("lock_wait_s", 0.0))
        checked = float(ft.extra.get("store_check_s", 0.0))
        timings = {
            "extraction_s": extraction,
            "clusters_s": ft.clusters_seconds,
            "lock_wait_s": waited,  # waiting for another job's extraction: not sampling time
            "store_check_s": checked,  # digests, fingerprints, skipped images of the store
            "sampling_s": max(total - extraction - ft.clusters_seconds - waited - checked, 0.0),
        }
        feature_info = {
            "store_dir": ft.store_dir,
            "extraction_cache_hit": ft.extraction_cache_hit,
            "clusters_cache_hit": ft.clusters_cache_hit,
            "clusters_in_extraction": ft.clusters_in_extraction,  # their time is in extraction_s
            "extracted_images": ft.extraction.images if ft.extraction is not None else 0,
            "refreshed_images": ft.refreshed_images,  # changed since the store was written: re-extracted
            "quarantined": list(ft.quarantined),  # damaged cache files found, moved aside and rebuilt
            "skipped_images": [*ft.skipped, *unreadable],
        }
    else:
        timings = {"sampling_s": total}
        feature_info = {"skipped_images": unreadable}
    timings["selection_total_s"] = total

    files = write_selection(
        out_dir,
        pool,
        selection,
        selector=str(getattr(selector, "name", type(selector).__name__)),
        budget=budget,
        seed=ctx.seed,
        nested=selector.nested,
        labeled=ctx.labeled,
        config=config,
    )

    split_root = pool.root if write_dataset_split and pool.root is not None else out_dir / "splits"
    if write_dataset_split and pool.root is None:
        log.warning("pool %s has no dataset folder; writing the split file into the run dir", pool.name)
    for i, path in enumerate(pool.write_split(selection.global_ids, split_root, split_name)):
        files[f"split_{i}"] = str(path)
        log.info("wrote split file %s", path)

    run_info = {
        "git": git_state(),
        "versions": versions(),
        "command": " ".join(sys.argv),
        "device": str(ctx.device),
        "device_name": torch.cuda.get_device_name(ctx.device)
        if ctx.device.type == "cuda"
        else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "pool": {"name": pool.name, "n_images": len(pool)},
        "budget": budget,
        "n_labeled": len(ctx.labeled),
        "timings": timings,
        "features": feature_info,
        "selection_info": selection.info,
        "class_coverage": class_coverage(pool, selection.global_ids),
        "files": files,
        **(extra_info or {}),
    }
    write_run_info(out_dir, run_info)
    return RunResult(selection, files, timings, run_info)


def select_readable(
    pool: ImagePool, selector: Selector, budget: int, ctx: SelectionContext
) -> tuple[Selection, list[dict[str, str]]]:
    """``selector``'s picks, none of them unreadable. A selector that reads no image (random) cannot know:
    its picks that are image files are decoded here (``budget`` images, not the pool; an in-memory pool has
    nothing to check); with ``ctx.on_error == "raise"`` the first unreadable one stops the run naming it,
    with ``skip`` it is excluded and the selector picks again. Selectors that read the features never see
    what the extraction skipped."""
    selection = selector.select(pool, budget, ctx)
    if "features" in selector.requires:
        return selection, []
    unreadable: list[dict[str, str]] = []
    while True:
        bad: list[tuple[int, Exception]] = []
        for i in selection.global_ids:
            if pool.file_path(int(i)) is None:
                continue
            try:
                pool.load(int(i))
            except (OSError, ValueError) as err:
                if ctx.on_error == "raise":
                    raise
                bad.append((int(i), err))
        if not bad:
            return selection, unreadable
        for i, problem in bad:
            source = pool.source(i)
            log.warning("skipping unreadable image %s: %s", source, problem)
            unreadable.append(
                {"global_id": str(i), "image_id": pool.ids[i], "source": source, "error": f"{problem}"}
            )
        ctx = replace(ctx, excluded=[*ctx.excluded, *(i for i, _ in bad)])
        selection = selector.select(pool, budget, ctx)


def write_selection(
    out_dir: Path,
    pool: ImagePool,
    selection: Selection,
    *,
    selector: str,
    budget: int,
    seed: int,
    nested: bool,
    labeled: Sequence[int] = (),
    config: dict[str, Any] | None = None,
) -> dict[str, str]:
    """``selection.json`` (ordered global ids, image ids, per-pick scores, what produced it) and
    ``selected_ids.txt`` (one image id per line, selection order); returns {"selection", "id_list"}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_ids = [pool.ids[i] for i in selection.global_ids]
    doc = {
        "selector": selector,
        "pool": pool.name,
        "pool_identity": pool.identity(),
        "budget": budget,
        "seed": seed,
        "nested": nested,
        "global_ids": selection.global_ids,
        "image_ids": image_ids,
        "scores": [None if s != s else s for s in selection.scores],  # NaN → null (valid JSON)
        "labeled_global_ids": [int(i) for i in labeled],
        "info": selection.info,
        "config": config,
    }
    atomic_write_json(out_dir / "selection.json", doc)
    atomic_write_bytes(out_dir / "selected_ids.txt", "".join(f"{i}\n" for i in image_ids).encode())
    return {"selection": str(out_dir / "selection.json"), "id_list": str(out_dir / "selected_ids.txt")}


def write_run_info(out_dir: Path, info: dict[str, Any]) -> Path:
    """``run_info.json``: how a run or a selection ran (versions, device, timings...), atomically."""
    path = Path(out_dir) / "run_info.json"
    atomic_write_json(path, info)
    return path
