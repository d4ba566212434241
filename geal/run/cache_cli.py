"""``geal-cache``: where the feature cache lives, what it holds (stores with their pool, backbone, size and
age; converted weights) and removing what is no longer needed.

A store is removed under its lock (a job filling it is never cut short: such a store is skipped and said
so) and first renamed out of the way, so no reader ever sees half a store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

#: what the command reports (the listing, each removal): to stdout, as plain lines (see :func:`_console`)
report = logging.getLogger("geal.cache")

STORE_LOCK = ".extract.lock"  # geal.features.store.FeatureStore.lock's file

EXAMPLES = """examples:
  geal-cache                                  where the cache is and what it holds
  geal-cache remove --pool mnist5k --dry-run  what removing MNIST-5k's stores would free
  geal-cache remove --older-than 30           remove the stores nobody wrote to for 30 days
"""


def default_cache_dir() -> Path:
    """``paths.cache_dir``'s default (geal/conf/paths/default.yaml): ``$GEAL_CACHE_DIR``, else
    ``~/.cache/geal``."""
    return Path(os.environ.get("GEAL_CACHE_DIR") or Path(os.environ.get("HOME", ".")) / ".cache" / "geal")


@dataclass(frozen=True)
class StoreEntry:
    """One feature store of the cache (a folder under ``<cache>/features/``)."""

    directory: Path
    pool: str
    backbone: str
    contents: str
    n_images: int | None
    cluster_settings: int  # cluster caches derived from it
    size: int  # bytes
    last_written: float  # newest modification time of its files (epoch seconds)

    @property
    def age_days(self) -> float:
        return (time.time() - self.last_written) / 86400.0


def _size_and_mtime(directory: Path) -> tuple[int, float]:
    size, newest = 0, directory.stat().st_mtime
    for root, _, files in os.walk(directory):
        for name in files:
            st = os.stat(os.path.join(root, name))
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return size, newest


def stores(cache_dir: Path) -> list[StoreEntry]:
    """The feature stores under ``cache_dir`` (one with an unreadable manifest shows ``?`` fields)."""
    out = []
    for directory in sorted((cache_dir / "features").glob("*/")):
        if directory.name.startswith("."):
            continue
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
            key = manifest.get("key", {})
        except (OSError, ValueError):
            manifest, key = {}, {}
        pool = str(key.get("pool", {}).get("name", "?"))
        label = str(manifest.get("label", ""))  # "<backbone>-<pool>[-global]" (FeatureProvider.open_store)
        clusters = directory / "clusters"
        size, newest = _size_and_mtime(directory)
        out.append(
            StoreEntry(
                directory=directory,
                pool=pool,
                backbone=label.removesuffix("-global").removesuffix(f"-{pool}") if label else "?",
                contents=str(manifest.get("contents", "dense" if manifest else "?")),  # as the store reads it
                n_images=manifest.get("n_images"),
                cluster_settings=sum(1 for p in clusters.iterdir() if p.is_dir()) if clusters.is_dir() else 0,
                size=size,
                last_written=newest,
            )
        )
    return out


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def list_cache(cache_dir: Path) -> str:
    """What ``geal-cache`` prints: the cache dir, one line per store, the other folders with their sizes."""
    lines = [f"cache: {cache_dir}" + ("" if cache_dir.is_dir() else " (does not exist yet)")]
    entries = stores(cache_dir)
    if entries:
        lines.append(
            f"{'pool':<20} {'backbone':<18} {'images':>7} {'contents':<8} {'clusters':>8} "
            f"{'size':>12} {'age':>8}  folder"
        )
        for e in entries:
            n = "?" if e.n_images is None else str(e.n_images)
            lines.append(
                f"{e.pool:<20} {e.backbone:<18} {n:>7} {e.contents:<8} {e.cluster_settings:>8} "
                f"{_mib(e.size):>12} {e.age_days:>7.1f}d  {e.directory.name}"
            )
        lines.append(f"{len(entries)} feature store(s), {_mib(sum(e.size for e in entries))}")
    else:
        lines.append("no feature stores")
    if cache_dir.is_dir():
        for other in sorted(p for p in cache_dir.iterdir() if p.is_dir() and p.name != "features"):
            lines.append(f"{other.name}/: {_mib(_size_and_mtime(other)[0])}")
    return "\n".join(lines)


def remove_store(directory: Path) -> bool:
    """Remove one store unless a job holds its lock; False when it is in use."""
    lock = FileLock(str(directory / STORE_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    try:
        doomed = directory.with_name(f".removing-{directory.name}")
        directory.rename(doomed)  # readers now miss the whole store, never half of it
    finally:
        lock.release()
    shutil.rmtree(doomed)
    return True


@contextlib.contextmanager
def _console() -> Iterator[None]:
    """While the command runs, :data:`report`'s records go to stdout as bare messages."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    report.addHandler(handler)
    report.setLevel(logging.INFO)
    report.propagate = False
    try:
        yield
    finally:
        report.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="geal-cache",
        description="The feature cache: where it is, what it holds, removing what is no longer needed.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="the cache dir (default: paths.cache_dir's, $GEAL_CACHE_DIR or ~/.cache/geal)",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="the stores with pool, backbone, size and age (the default)")
    sub.add_parser("where", help="print the cache dir")
    remove = sub.add_parser("remove", help="remove the stores that match every filter given")
    remove.add_argument("--pool", help="the pool's name (as `geal-cache list` shows it)")
    remove.add_argument("--backbone", help="the backbone's name")
    remove.add_argument("--older-than", type=float, metavar="DAYS", help="not written to for DAYS days")
    remove.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    args = parser.parse_args(argv)
    cache_dir = Path(args.dir).expanduser() if args.dir else default_cache_dir()
    if args.command == "remove" and args.pool is None and args.backbone is None and args.older_than is None:
        parser.error("remove needs at least one of --pool, --backbone, --older-than")
    with _console():
        return _run(args, cache_dir)


def _run(args: argparse.Namespace, cache_dir: Path) -> int:
    """The command ``args.command`` on ``cache_dir`` (its output through :data:`report`)."""
    if args.command == "where":
        report.info("%s", cache_dir)
        return 0
    if args.command in (None, "list"):
        report.info("%s", list_cache(cache_dir))
        return 0
    chosen = [
        e
        for e in stores(cache_dir)
        if (args.pool is None or e.pool == args.pool)
        and (args.backbone is None or e.backbone == args.backbone)
        and (args.older_than is None or e.age_days > args.older_than)
    ]
    freed = 0
    for e in chosen:
        if args.dry_run:
            report.info("would remove %s (%s)", e.directory, _mib(e.size))
            freed += e.size
        elif remove_store(e.directory):
            report.info("removed %s (%s)", e.directory, _mib(e.size))
            freed += e.size
        else:
            report.info("skipped %s: a job is writing it (its lock is held)", e.directory)
    done = "would free" if args.dry_run else "freed"
    report.info("%s %s (%d matching store(s))", done, _mib(freed), len(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
