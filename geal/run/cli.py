"""Command-line entry points (the only module that sees a Hydra ``DictConfig`` besides its builders).

Each entry point builds what it needs (geal.run.builders), runs it, and prints one summary:

- ``geal-select``: pool → selector → (features extracted if the selector needs them and they are not
  cached) → select → selection.json, the id list, the native split file and run_info.json in Hydra's run dir;
- ``geal-run``: the run loop (geal.run.loop) over a schedule: the one-pass schedule at ``budgets`` by
  default, active-learning cycles with ``cycles=...``;
- ``geal-visualize``: knowledge-cluster figure, contact sheet, histograms;
- ``geal-report``: tables and plots of finished runs (geal.report).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from geal.api.pool import ImagePool
from geal.features.clusters import ClustersNotStoredError
from geal.features.store import StoreMismatchError
from geal.method.geal_selector import GEALSelector
from geal.report.style import MethodStyle
from geal.report.sweep_report import ReportOptions, report
from geal.run.builders import (
    build_logger,
    build_pool,
    build_schedule,
    build_select_context,
    build_selection_context,
    build_selector,
    build_start,
    build_task,
    build_task_context,
    check_settings,
    expand_home_paths,
    feature_provider,
    resolve_device,
    run_header,
)
from geal.run.loop import run_cycles
from geal.run.outputs import load_selection, run_selection
from geal.run.schemas import CONFIG_DIR, RunConfig, SelectConfig, VisualizeConfig, register_schemas
from geal.run.summaries import run_summary, selection_summary
from geal.util.distributed import init_from_env as init_distributed_from_env
from geal.util.io import atomic_write_json

log = logging.getLogger("geal")
register_schemas()


#: errors that are the user's to fix (a setting, a file, an image, a cache): one line, no traceback (unless
#: HYDRA_FULL_ERROR=1); anything else is a bug and keeps its traceback. failure.json keeps it either way.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    StoreMismatchError,
    ClustersNotStoredError,
)


class UserError(CompactHydraException):
    """A user error as Hydra prints it: its message alone (the original is its ``__cause__``)."""


def one_line_errors(main: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Wrap an entry point: a user error becomes one line (:class:`UserError`); Ctrl-C prints one line,
    writes ``failure.json`` and exits 130 (a sweep stops)."""

    @functools.wraps(main)
    def wrapper(cfg: DictConfig) -> None:
        try:
            main(cfg)
        except USER_ERRORS as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise UserError(str(err).replace("\n", " ")) from err
        except KeyboardInterrupt as err:
            out_dir = Path(HydraConfig.get().runtime.output_dir)
            message = (
                f"interrupted (Ctrl-C): finished feature shards and budgets are kept (cache dir and "
                f"{out_dir}); run the same command again to resume"
            )
            atomic_write_json(
                out_dir / "failure.json",
                {
                    "error": "KeyboardInterrupt",
                    "raised_as": "KeyboardInterrupt",
                    "message": message,
                    "traceback": traceback.format_exception(err),
                    "overrides": list(HydraConfig.get().overrides.task),
                },
            )
            print(f"geal: {message}", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain data (every interpolation resolved), as written into its outputs."""
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    return {str(k): v for k, v in config.items()}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="select")
@one_line_errors
def select_main(cfg: DictConfig) -> None:
    """``geal-select``: one selection run (see geal/conf/select.yaml); under ``torchrun`` every rank extracts
    its share of the features (geal.features.distributed) and the k-center runs sharded."""
    expand_home_paths(cfg)
    t_start = time.perf_counter()
    check_settings(cfg, SelectConfig)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    init_distributed_from_env()
    device = resolve_device(cfg.device)
    selector = build_selector(cfg.selector)
    t0 = time.perf_counter()
    pool = build_pool(cfg.data)
    pool_s = time.perf_counter() - t0
    log.info("pool %s: %d images", pool.name, len(pool))
    ctx = build_select_context(cfg, pool, selector, device)

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
        config=resolved(cfg),
    )
    stage_times = {"pool": pool_s, **result.timings, "total": time.perf_counter() - t_start}
    if cfg.output.summary:
        print(selection_summary(result, pool, stage_times), file=sys.stdout)  # the CLI's own output


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="run")
@one_line_errors
def run_main(cfg: DictConfig) -> None:
    """``geal-run``: select → train the task → evaluate → metrics.json, over the one-pass schedule (every
    budget of ``budgets``) or an active-learning schedule (``cycles=...``); see geal/conf/run.yaml."""
    expand_home_paths(cfg)
    t_start = time.perf_counter()
    check_settings(cfg, RunConfig)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    schedule, budgets = build_schedule(cfg)  # budgets come from `budgets` or from the schedule, not both
    device = resolve_device(cfg.device)
    selector = build_selector(cfg.selector)
    task = build_task(cfg.task)  # its settings: a typo fails now
    pool = build_pool(cfg.data)
    log.info("pool %s: %d images", pool.name, len(pool))
    start = build_start(cfg, schedule, budgets, pool)
    drawers = [s for s in (selector, start.initial_draw) if s is not None]
    context = build_selection_context(cfg, pool, device, drawers, start.labeled_before)
    config = resolved(cfg)
    with build_logger(cfg, out_dir) as logger:
        logger.log_config(config)
        # the task's needs (labels, test split...) are checked now, before any selection work
        task_context = build_task_context(cfg, task, pool, device, out_dir / "task", logger)
        header = {**run_header(cfg, pool, task, config), **start.header}
        done = run_cycles(
            task,
            selector,
            pool,
            start.schedule,
            out_dir,
            header,
            context,
            task_context=task_context,
            initial_draw=start.initial_draw,
            initial_ids=start.initial_ids,
            budgets=budgets,
            logger=logger,
            resume=cfg.output.resume,
            config=config,
            write_dataset_split=cfg.output.write_dataset_split,
            started=t_start,
        )
    if cfg.output.summary:
        print(run_summary(header, done, out_dir, schedule.one_pass), file=sys.stdout)  # the CLI's output


VISUALIZE_FIGURES = ("clusters", "contact_sheet", "histograms")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="visualize")
@one_line_errors
def visualize_main(cfg: DictConfig) -> None:
    """``geal-visualize``: knowledge-cluster figure, contact sheet, histograms (geal/conf/visualize.yaml)."""
    expand_home_paths(cfg)
    check_settings(cfg, VisualizeConfig)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    unknown = sorted(set(cfg.figures) - set(VISUALIZE_FIGURES))
    if unknown:
        raise ValueError(
            f"figures={list(cfg.figures)}: unknown {unknown}; choose from {list(VISUALIZE_FIGURES)}"
        )
    device = resolve_device(cfg.device)
    pool = build_pool(cfg.data)
    selected: list[int] = []
    picked_by = ""
    if cfg.selection:
        selected, doc = load_selection(Path(cfg.selection), pool)
        picked_by = f"{MethodStyle().name(str(doc.get('selector')))}, seed {doc.get('seed')}, on {pool.name}"
    files: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if "clusters" in cfg.figures:
        files["clusters"] = cluster_figure(cfg, pool, selected, device, out_dir)
    for figure in ("contact_sheet", "histograms"):
        if figure in cfg.figures and not selected:
            skipped[figure] = "needs selection=PATH (a selection.json of this pool)"
    if "contact_sheet" in cfg.figures and selected:
        files["contact_sheet"] = contact_sheet(cfg, pool, selected, picked_by, out_dir)
    if "histograms" in cfg.figures and selected:
        drawn = histograms(cfg, pool, selected, out_dir)
        if isinstance(drawn, str):
            skipped["histograms"] = drawn
        else:
            files.update(drawn)
    for figure, why in skipped.items():
        log.warning("%s not drawn: %s", figure, why)
    atomic_write_json(
        out_dir / "visualize.json", {"files": files, "skipped": skipped, "config": resolved(cfg)}
    )
    lines = [*(f"{k}: {v}" for k, v in files.items()), *(f"{k}: skipped ({v})" for k, v in skipped.items())]
    print("\n".join(lines), file=sys.stdout)  # the CLI's own output


def cluster_figure(
    cfg: DictConfig, pool: ImagePool, selected: list[int], device: torch.device, out_dir: Path
) -> str:
    """GEAL's knowledge clusters drawn on a few images (``images``, else the selection's or the pool's
    first ``n_images``)."""
    from geal.report import visualize  # matplotlib is only needed here

    selector = build_selector(cfg.selector)
    if not isinstance(selector, GEALSelector):
        raise ValueError(
            f"the cluster figure shows GEAL's knowledge clusters: use selector=geal (its "
            f"selector.clusters settings), not {cfg.selector.get('name')}"
        )
    settings = selector.clusters
    ids = pool.index_of(list(cfg.images)) if cfg.images else (selected or list(range(len(pool))))
    ids = ids if cfg.images else ids[: cfg.n_images]
    provider = feature_provider(cfg, pool, device)
    clusters = provider.knowledge_clusters(selector.request, settings)
    store = provider.store(selector.request)
    items = visualize.image_clusters(store, clusters, ids, settings, pool.ids)
    title = f"{pool.name}, {cfg.backbone.name}: τ={settings.tau:g}, K={settings.k}"
    return str(visualize.cluster_figure(pool, items, out_dir / "knowledge_clusters.png", settings, title))


def contact_sheet(
    cfg: DictConfig, pool: ImagePool, selected: list[int], picked_by: str, out_dir: Path
) -> str:
    """The selection's first ``contact_sheet.max_images`` picks, in selection order."""
    from geal.report import visualize

    shown = selected[: cfg.contact_sheet.max_images]
    path = visualize.contact_sheet(
        pool,
        shown,
        out_dir / "contact_sheet.png",
        columns=cfg.contact_sheet.columns,
        thumb=cfg.contact_sheet.thumb_size,
        title=f"{picked_by}: first {len(shown)} of {len(selected)} picks, in selection order",
        progress=cfg.extraction.progress,
    )
    return str(path)


def histograms(cfg: DictConfig, pool: ImagePool, selected: list[int], out_dir: Path) -> dict[str, str] | str:
    """Class / instance histograms of the selection vs the pool, a random draw and the ``compare`` files;
    the reason instead when the pool has neither labels nor annotations."""
    from geal.report import visualize

    style = MethodStyle()
    loaded = [(Path(path), *load_selection(Path(path), pool)) for path in cfg.compare]
    names = visualize.compare_names(
        [(doc.get("selector"), doc.get("seed"), p) for p, _, doc in loaded], style
    )
    # the same number of images as the selection: the prefix (a nested selector's smaller budget)
    others = {name: ids[: len(selected)] for name, (_, ids, _) in zip(names, loaded, strict=True)}
    colors = {
        name: style.color(str(doc.get("selector"))) for name, (_, _, doc) in zip(names, loaded, strict=True)
    }
    _, doc = load_selection(Path(cfg.selection), pool)
    colors["selection"] = style.color(str(doc.get("selector")))
    try:
        hist = visualize.selection_histograms(pool, selected, cfg.seed, others, cfg.extraction.progress)
    except ValueError as err:  # a pool without labels or annotations
        return str(err)
    figure = visualize.histogram_figure(
        hist,
        out_dir / "histograms.png",
        colors=colors,
        selection_label=visualize.selection_name(doc.get("selector"), doc.get("seed"), style),
    )
    atomic_write_json(out_dir / "histograms.json", hist.as_dict())
    return {"histograms": str(figure), "histograms_json": str(out_dir / "histograms.json")}


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geal-report", description=report_main.__doc__)
    parser.add_argument("root", type=Path, help="a geal-run output or multirun dir (or a folder of them)")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric to tabulate (repeatable; 'all': every one; default: the headline metric, e.g. top1)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="KEY",
        help="what a row is: 'method' and/or dotted config keys (e.g. selector.clusters.tau "
        "selector.clusters.k selector.distance, the ablation layout); default: method + the settings the "
        "sweep varied",
    )
    parser.add_argument("--methods", nargs="+", default=None, help="order (and subset) of the methods")
    parser.add_argument(
        "--budgets", nargs="+", type=int, default=None, help="the budget columns (default: every budget run)"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="multiply values (default: 100 for fractions)"
    )
    parser.add_argument("--digits", type=int, default=1, help="decimals in the tables")
    parser.add_argument("--best", choices=("max", "min", "none"), default="max", help="bold in LaTeX")
    parser.add_argument("--out", type=Path, default=None, help="where to write results.* (default: root)")
    parser.add_argument("--title", default="", help="title of the report and the plots")
    parser.add_argument(
        "--names",
        nargs="+",
        default=None,
        metavar="METHOD=NAME",
        help="display names in the plots, e.g. geal=Ours 'coreset_cos=Core-Set' (tables keep config names)",
    )
    parser.add_argument(
        "--colors",
        nargs="+",
        default=None,
        metavar="METHOD=COLOUR",
        help="plot colours, e.g. geal=tab:red random=#7f7f7f (default: a fixed colour per method)",
    )
    parser.add_argument(
        "--style", type=Path, default=None, help="YAML file with 'names:' and 'colors:' maps (method → value)"
    )
    parser.add_argument("--wandb-project", default=None, help="also log the tables and plots to wandb")
    parser.add_argument("--wandb-entity", default=None)
    parser.add_argument(
        "--wandb-mode", choices=("online", "offline", "disabled"), default=None, help="default: $WANDB_MODE"
    )
    return parser


def report_main(argv: Sequence[str] | None = None) -> None:
    """``geal-report DIR``: the paper-layout tables (mean ± std over seeds, number of seeds) as Markdown, CSV
    and LaTeX, metric-vs-budget plots (PNG, SVG), the efficiency table, and the runs that did not finish."""
    parser = report_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        style = MethodStyle.from_options(args.names, args.colors, args.style)
    except (OSError, ValueError) as err:
        parser.exit(2, f"geal-report: error: {err}\n")
    options = ReportOptions(
        metrics=args.metric,
        rows=args.rows,
        methods=args.methods,
        budgets=args.budgets,
        scale=args.scale,
        digits=args.digits,
        title=args.title,
        best=None if args.best == "none" else args.best,
        wandb_project=args.wandb_project,
        wandb_mode=args.wandb_mode,
        wandb_entity=args.wandb_entity,
        style=style,
    )
    try:
        done = report(args.root, args.out, options)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"geal-report: error: {err}\n")
    print(done.markdown, file=sys.stdout)  # the CLI's own output
    for kind, path in done.files.items():
        print(f"{kind}: {path}", file=sys.stdout)
    if done.wandb_dir:
        print(f"wandb run: {done.wandb_dir}", file=sys.stdout)


if __name__ == "__main__":
    select_main()
