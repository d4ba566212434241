"""Figures of what GEAL sees and picks (``geal-visualize``), from the feature store and a selection.

* :func:`image_clusters` + :func:`cluster_figure`: for chosen images, the importance map over the image,
  the patches the τ-mass filter keeps, and the knowledge clusters, each patch coloured by a PCA of its
  cluster's feature (one PCA over every image shown, so similar clusters get similar colours across
  images; the paper's knowledge-cluster figure). The maps, the filter and the clusters are the selector's
  own: the stored importance map and tokens, :func:`geal.method.knowledge.importance_mask`, and the cached
  clusters of :meth:`geal.features.provider.FeatureProvider.knowledge_clusters` — nothing is recomputed
  another way.
* :func:`contact_sheet`: the selected images in selection order, with their rank and image id.
* :func:`selection_histograms` + :func:`histogram_figure`: classes of the selection vs the pool vs a
  seeded random draw of the same size; for detection pools (``annotations()`` and ``object_classes``, as
  ``VOCPool`` has) the object instances per class and the instances per image.

Index spaces: ``global_ids`` are positions in ``pool.ids``; patch indices are positions in the backbone's
row-major patch grid; cluster indices are positions in one image's list of knowledge clusters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from geal.api.features import KnowledgeClusterSet
from geal.api.pool import BoxAnnotatedPool, ImagePool
from geal.features.store import FeatureStore
from geal.method.knowledge import ClusterSettings, importance_mask, reduce_heads
from geal.report.style import MethodStyle, shades

log = logging.getLogger(__name__)


@dataclass
class ImageClusters:
    """What the knowledge-cluster figure shows of one image (N patches on a rows × cols grid, C clusters).

    importance: (N,) float32 importance map (sums to 1)
    kept:       (N,) bool, the patches the τ-mass filter keeps
    assignment: (N,) int64, the knowledge cluster of each kept patch (its nearest centroid); -1 elsewhere
    centroids:  (C, D) float32, the image's knowledge clusters as cached for the selector
    """

    global_id: int
    image_id: str
    grid: tuple[int, int]
    importance: np.ndarray
    kept: np.ndarray
    assignment: np.ndarray
    centroids: np.ndarray

    @property
    def kept_mass(self) -> float:
        return float(self.importance[self.kept].sum())


def _grid_of(n_patches: int) -> tuple[int, int]:
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(
            f"{n_patches} patches are not a square grid: backbones here see a square input (resolution²)"
        )
    return side, side


def _stored_rows(store: FeatureStore, global_ids: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
    """tokens (N, D) and attention (H, N) of each requested image, read from the (memory-mapped) store."""
    wanted = sorted(set(int(g) for g in global_ids))
    out: dict[int, dict[str, np.ndarray]] = {}
    for start, stop, arrays in store.iter_shards():
        for g in (g for g in wanted if start <= g < stop):
            if "tokens" not in arrays or "attention" not in arrays:
                raise ValueError(
                    f"the feature store {store.directory} keeps no dense tokens/attention maps (a "
                    f"clusters-only store?): the figure needs a dense store, extract one with the default "
                    f"cache mode"
                )
            if not bool(arrays["valid"][g - start]):
                raise ValueError(
                    f"image {g} was skipped as unreadable at extraction (see the store's meta.json)"
                )
            out[g] = {
                "tokens": np.array(arrays["tokens"][g - start], dtype=np.float32),  # a copy, writable
                "attention": np.array(arrays["attention"][g - start], dtype=np.float32),
            }
    return out


def image_clusters(
    store: FeatureStore,
    clusters: KnowledgeClusterSet,
    global_ids: Sequence[int],
    settings: ClusterSettings,
    image_ids: Sequence[str],
) -> list[ImageClusters]:
    """The importance map, kept patches and per-patch knowledge cluster of each of ``global_ids``.

    ``clusters`` must be the pool's clusters for ``settings`` (what the GEAL selector uses). Each kept patch
    is assigned to its image's nearest cluster centroid under the k-means metric of ``settings``. When the
    filter keeps nothing (a degenerate map) the selector's fallback kept one patch, whose feature is then the
    image's only cluster: that patch is the one nearest to it.
    """
    if len(global_ids) == 0:
        raise ValueError("no image to draw: give image ids (images=[...]) or a selection")
    rows = _stored_rows(store, global_ids)
    out = []
    for g in global_ids:
        g = int(g)
        tokens = torch.from_numpy(rows[g]["tokens"])  # (N, D)
        attention = torch.from_numpy(rows[g]["attention"])  # (H, N)
        importance = reduce_heads(attention[None], settings.head_reduction)[0]
        kept = importance_mask(importance[None], settings.tau)[0]
        centroids = torch.from_numpy(np.ascontiguousarray(clusters.features[clusters.owners == g]))
        if centroids.shape[0] == 0:
            raise ValueError(f"image {g} ({image_ids[g]}) has no knowledge cluster in the cache")
        a, b = tokens, centroids
        if settings.kmeans_metric == "cosine":
            a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
        dist = torch.cdist(a, b)  # (N, C)
        if not bool(kept.any()):
            kept[int(dist[:, 0].argmin())] = True
        assignment = torch.where(kept, dist.argmin(dim=1), torch.full_like(kept, -1, dtype=torch.long))
        out.append(
            ImageClusters(
                g,
                str(image_ids[g]),
                _grid_of(tokens.shape[0]),
                importance.numpy().astype(np.float32),
                kept.numpy(),
                assignment.numpy().astype(np.int64),
                centroids.numpy().astype(np.float32),
            )
        )
    return out


def pca_colours(features: np.ndarray) -> np.ndarray:
    """(M, D) features → (M, 3) RGB in [0, 1]: the first three principal components, each stretched over
    its 2nd–98th percentile (components a set this small lacks are 0.5)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be (M, D) with M ≥ 1, got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:3].T
    out = np.full((len(x), 3), 0.5)
    for c in range(proj.shape[1]):
        lo, hi = np.percentile(proj[:, c], [2, 98])
        if hi - lo > 1e-12:
            out[:, c] = np.clip((proj[:, c] - lo) / (hi - lo), 0.0, 1.0)
    return out


def _display(img: Image.Image, max_side: int) -> np.ndarray:
    img = img.convert("RGB")
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _upsample(grid_values: np.ndarray, shape: tuple[int, int], smooth: bool) -> np.ndarray:
    """(rows, cols[, C]) → (H, W[, C]): the patch grid stretched over the whole image (no crop)."""
    t = torch.from_numpy(np.ascontiguousarray(grid_values, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    mode = "bilinear" if smooth else "nearest"
    up = torch.nn.functional.interpolate(
        t, size=shape, mode=mode, **({"align_corners": False} if smooth else {})
    )
    up = up[0]
    return (up[0] if up.shape[0] == 1 else up.permute(1, 2, 0)).numpy()


def cluster_panels(
    image: Image.Image, item: ImageClusters, colours: np.ndarray, max_side: int = 320
) -> dict[str, np.ndarray]:
    """The four RGB panels (H, W, 3) in [0, 1] of one image: image, importance overlay, kept patches,
    knowledge clusters (``colours``: (C, 3), one per cluster of ``item``)."""
    import matplotlib

    rgb = _display(image, max_side)
    shape = rgb.shape[:2]
    rows, cols = item.grid
    imp = item.importance.reshape(rows, cols)
    heat = _upsample(imp / max(float(imp.max()), 1e-12), shape, smooth=True)
    heat_rgb = matplotlib.colormaps["inferno"](np.clip(heat, 0, 1))[..., :3]
    kept = _upsample(item.kept.reshape(rows, cols).astype(np.float32), shape, smooth=False)[..., None]
    dim = rgb * 0.25
    patch_colours = np.zeros((rows * cols, 3), np.float32)
    patch_colours[item.kept] = colours[item.assignment[item.kept]]
    cluster_rgb = _upsample(patch_colours.reshape(rows, cols, 3), shape, smooth=False)
    grey = rgb.mean(axis=2, keepdims=True).repeat(3, axis=2)
    kept_rgb = kept * rgb + (1 - kept) * dim
    kept_rgb[_outline(kept[..., 0] > 0.5)] = (1.0, 0.85, 0.0)  # kept regions stay visible on dark images
    return {
        "image": rgb,
        "importance": 0.45 * rgb + 0.55 * heat_rgb,
        "kept": kept_rgb,
        "clusters": kept * (0.3 * grey + 0.7 * cluster_rgb) + (1 - kept) * dim,
    }


def _outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool → the pixels of ``mask`` that touch a pixel outside it (4-neighbourhood)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _save_figure(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def cluster_figure(
    pool: ImagePool,
    items: Sequence[ImageClusters],
    path: Path,
    settings: ClusterSettings,
    title: str = "",
) -> Path:
    """One row per image: the image, its importance map, the kept patches (τ), its knowledge clusters
    coloured by a PCA of the cluster features of every image shown. Format from ``path``'s suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours_all = pca_colours(np.concatenate([it.centroids for it in items]))
    bounds = np.cumsum([0] + [len(it.centroids) for it in items])
    heads = [
        "image",
        "importance (last-block CLS attention)",
        f"kept patches (τ={settings.tau:g})",
        f"knowledge clusters (K={settings.k}, PCA colours)",
    ]
    fig, axes = plt.subplots(
        len(items), 4, figsize=(12, 3.1 * len(items)), dpi=110, squeeze=False, layout="constrained"
    )
    for r, item in enumerate(items):
        panels = cluster_panels(pool.load(item.global_id), item, colours_all[bounds[r] : bounds[r + 1]])
        for c, key in enumerate(("image", "importance", "kept", "clusters")):
            ax = axes[r][c]
            ax.imshow(np.clip(panels[key], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=9)
        n_clusters = len(np.unique(item.assignment[item.kept]))
        axes[r][0].set_ylabel(item.image_id, fontsize=8)
        axes[r][2].set_xlabel(
            f"{int(item.kept.sum())}/{item.kept.size} patches, {100 * item.kept_mass:.0f}% of the mass",
            fontsize=8,
        )
        axes[r][3].set_xlabel(f"{n_clusters} clusters", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    out = _save_figure(fig, path)
    plt.close(fig)
    return out


def contact_sheet(
    pool: ImagePool,
    global_ids: Sequence[int],
    path: Path,
    columns: int = 10,
    thumb: int = 112,
    captions: Sequence[str] | None = None,
    title: str = "",
    progress: bool = True,
) -> Path:
    """The images ``global_ids`` in their order, ``columns`` per row, each a ``thumb``-pixel square tile
    (aspect kept, centred) captioned with its rank (1-based) and image id (or ``captions``)."""
    if not global_ids:
        raise ValueError("the selection is empty: nothing to put on a contact sheet")
    if columns < 1 or thumb < 16:
        raise ValueError(f"columns must be ≥ 1 and thumb ≥ 16 px, got {columns} and {thumb}")
    font = ImageFont.load_default(size=max(9, thumb // 10))
    caption_h = max(12, thumb // 8) * 2 + 4
    header = 28 if title else 0
    columns = min(columns, len(global_ids))
    rows = -(-len(global_ids) // columns)
    sheet = Image.new(
        "RGB", (columns * (thumb + 6) + 6, header + rows * (thumb + caption_h + 6) + 6), "white"
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 6), title, fill="black", font=ImageFont.load_default(size=16))
    bar = tqdm(list(enumerate(global_ids)), desc="contact sheet", unit="img", disable=not progress)
    for rank, g in bar:
        img = pool.load(int(g)).convert("RGB")
        scale = thumb / max(img.size)  # small images (digits) are enlarged, large ones reduced
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC
        )
        x0 = 6 + (rank % columns) * (thumb + 6)
        y0 = header + 6 + (rank // columns) * (thumb + caption_h + 6)
        sheet.paste(img, (x0 + (thumb - img.width) // 2, y0 + (thumb - img.height) // 2))
        text = captions[rank] if captions is not None else pool.ids[int(g)]
        lines = [f"#{rank + 1}", _fit(draw, str(text), font, thumb)]
        draw.multiline_text((x0, y0 + thumb + 2), "\n".join(lines), fill="black", font=font, spacing=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    sheet.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    tmp.replace(path)
    return path


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` cut (with …) to fit ``width`` pixels; the tail of an id says more than its head."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


# ---------------------------------------------------------------------------------------- histograms


@dataclass
class Histograms:
    """Counts per category for each compared set ("selection", "pool", "random draw, seed s", ...).

    kind: "class" (one label per image) or "instances" (object instances per class, detection pools)
    per_image: for detection pools, how many images have 0, 1, 2, ... instances, per set
    """

    kind: str
    categories: list[str]
    counts: dict[str, list[int]]
    sizes: dict[str, int]
    per_image: dict[str, list[int]] | None = None

    def fractions(self, name: str) -> np.ndarray:
        c = np.asarray(self.counts[name], dtype=np.float64)
        return c / max(c.sum(), 1.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "categories": self.categories,
            "counts": self.counts,
            "sizes": self.sizes,
            "per_image": self.per_image,
            "covered": {k: int(np.count_nonzero(v)) for k, v in self.counts.items()},
        }


def random_draw_name(seed: int) -> str:
    """The name of the seeded uniform reference draw in the histograms (not the Random selector's run)."""
    return f"random draw, seed {seed}"


def selection_name(selector: Any, seed: Any, style: MethodStyle | None = None) -> str:
    """``GEAL, seed 0``: a selection as a reader names it (display name, then its seed when known)."""
    name = (style or MethodStyle()).name(str(selector or "?"))
    return f"{name}, seed {seed}" if seed is not None else name


def compare_names(entries: Sequence[tuple[Any, Any, Path]], style: MethodStyle | None = None) -> list[str]:
    """Readable, distinct names of compared selections (selector, seed, selection.json path): ``Random,
    seed 0``; the folder of the file is added only where two would read the same (``GEAL, seed 0 (a)``),
    its whole path where even that repeats."""
    base = [selection_name(sel, seed, style) for sel, seed, _ in entries]
    names = []
    for name, (_, _, path) in zip(base, entries, strict=True):
        if base.count(name) > 1:
            folders = [Path(p).parent.name for n, (_, _, p) in zip(base, entries, strict=True) if n == name]
            where = (
                Path(path).parent.name
                if folders.count(Path(path).parent.name) == 1
                else str(Path(path).parent)
            )
            name = f"{name} ({where})"
        names.append(name)
    return names


def random_draw(n_pool: int, size: int, seed: int) -> list[int]:
    """A uniform random subset of ``size`` global ids (seeded; numpy's default_rng)."""
    if size > n_pool:
        raise ValueError(f"cannot draw {size} images from a pool of {n_pool}")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_pool, size=size, replace=False))


def selection_histograms(
    pool: ImagePool,
    selection: Sequence[int],
    seed: int = 0,
    others: dict[str, Sequence[int]] | None = None,
    progress: bool = True,
) -> Histograms:
    """Histograms of the selection vs the whole pool vs a seeded random draw of the same size (and any
    ``others``: name → global ids). Detection pools (geal.api.pool.BoxAnnotatedPool) count object
    instances per class and instances per image; pools with ``labels`` count images per class."""
    sets: dict[str, list[int]] = {"selection": [int(g) for g in selection], "pool": list(range(len(pool)))}
    sets[random_draw_name(seed)] = random_draw(len(pool), len(selection), seed)
    for name, ids in (others or {}).items():
        sets[name] = [int(g) for g in ids]
    sizes = {k: len(v) for k, v in sets.items()}
    if isinstance(pool, BoxAnnotatedPool):
        names = [str(c) for c in pool.object_classes]
        annotations = pool.annotations(progress=progress)
        per_class = np.zeros((len(pool), len(names)), dtype=np.int64)
        for i, ann in enumerate(annotations):
            labels = np.asarray(ann.labels, dtype=np.int64)
            if labels.size:
                per_class[i] = np.bincount(labels, minlength=len(names))[: len(names)]
        n_obj = per_class.sum(axis=1)
        top = int(n_obj.max(initial=0))
        return Histograms(
            "instances",
            names,
            {k: per_class[v].sum(axis=0).tolist() for k, v in sets.items()},
            sizes,
            {k: np.bincount(n_obj[v], minlength=top + 1).tolist() for k, v in sets.items()},
        )
    if pool.labels is None:
        raise ValueError(
            f"pool '{pool.name}' has neither class labels nor object annotations: no histogram to draw "
            f"(use a labeled dataset: class folders, MNIST, Pets, VOC)"
        )
    labels = np.asarray(pool.labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    names = [str(c) for c in pool.class_names] if pool.class_names is not None else []
    names = names + [str(k) for k in range(len(names), n_classes)]
    return Histograms(
        "class",
        names,
        {k: np.bincount(labels[v], minlength=len(names)).tolist() for k, v in sets.items()},
        sizes,
    )


#: how the reference sets of the histograms are drawn (selections get their method's colour, solid)
POOL_STYLE = {"color": "#d9d9d9", "edgecolor": "#8c8c8c", "linewidth": 0.5}
RANDOM_DRAW_STYLE = {"color": "white", "edgecolor": "#7f7f7f", "hatch": "////", "linewidth": 0.5}


def _bar_styles(names: Sequence[str], colors: dict[str, str] | None) -> dict[str, dict[str, Any]]:
    """Bar keywords per set: the pool light grey, the random draw hatched, each selection its colour from
    ``colors`` (its method's fixed colour) else Matplotlib's cycle; selections that would share a colour
    get shades of it."""
    out: dict[str, dict[str, Any]] = {}
    solid: dict[str, str] = {}
    free = iter(f"C{k}" for k in range(10 * len(names)))
    for name in names:
        if name == "pool":
            out[name] = dict(POOL_STYLE)
        elif name.startswith("random draw"):
            out[name] = dict(RANDOM_DRAW_STYLE)
        else:
            solid[name] = (colors or {}).get(name) or next(free)
    for colour in set(solid.values()):
        same = [n for n in names if solid.get(n) == colour]
        for n, c in zip(same, shades(colour, len(same)), strict=True):
            out[n] = {"color": c}
    return out


def _category_ticks(ax: Any, x: np.ndarray, labels: Sequence[str], width_inches: float) -> None:
    """Tick labels centred under their group of bars; rotated (their end at the group) only when the
    longest would not fit its group's width."""
    char_inches = 8 / 72 * 0.62  # an average character at 8 pt
    rotate = max((len(t) for t in labels), default=0) * char_inches > 0.9 * width_inches / max(len(labels), 1)
    if rotate:
        ax.set_xticks(x, labels, rotation=55, ha="right", va="center", rotation_mode="anchor", fontsize=8)
    else:
        ax.set_xticks(x, labels, ha="center", fontsize=8)


def histogram_figure(
    hist: Histograms,
    path: Path,
    title: str = "",
    colors: dict[str, str] | None = None,
    selection_label: str = "",
) -> Path:
    """Grouped bars of each set's share per category (counts in the legend, placed beside the panel so it
    covers no bar); for detection pools a second panel with the share of images per number of instances.
    ``colors``: set name → colour (a selection's method colour, :class:`geal.report.style.MethodStyle`);
    ``selection_label``: who picked the selection (``GEAL, seed 0``), shown in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k, c in enumerate(hist.counts["pool"]) if c > 0]  # classes the pool has
    categories = [hist.categories[k] for k in shown]
    panels = 2 if hist.per_image is not None else 1
    width = max(6.0, 0.32 * len(categories) * max(len(hist.counts), 2) / 2) + 3.2  # + the legend
    fig, axes = plt.subplots(
        panels, 1, figsize=(width, 3.6 * panels), dpi=120, squeeze=False, layout="constrained"
    )
    ax = axes[0][0]
    names = list(hist.counts)
    bar_style = _bar_styles(names, colors)
    shown_name = {n: n for n in names}
    if selection_label:
        shown_name["selection"] = f"selection ({selection_label})"
    bar_w = 0.8 / len(names)
    x = np.arange(len(categories))
    unit = "instances" if hist.kind == "instances" else "images"
    for i, name in enumerate(names):
        covered = f"{int(np.count_nonzero(hist.counts[name]))}/{len(categories)} classes"
        if hist.kind == "instances":
            n_inst = sum(hist.counts[name])
            label = f"{shown_name[name]}: {n_inst} instances in {hist.sizes[name]} images, {covered}"
        else:
            label = f"{shown_name[name]}: {hist.sizes[name]} images, {covered}"
        ax.bar(
            x + (i - (len(names) - 1) / 2) * bar_w,
            hist.fractions(name)[shown],
            bar_w,
            label=label,
            **bar_style[name],
        )
    _category_ticks(ax, x, categories, width - 3.2)
    ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xlabel("class")
    ax.set_ylabel(f"share of {unit}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        title or f"{'object instances' if hist.kind == 'instances' else 'images'} per class", fontsize=10
    )
    if hist.per_image is not None:
        ax = axes[1][0]
        top = max(len(v) for v in hist.per_image.values())
        x = np.arange(top)
        for i, name in enumerate(names):
            c = np.zeros(top)
            c[: len(hist.per_image[name])] = hist.per_image[name]
            mean = float((np.arange(top) * c).sum() / max(c.sum(), 1))
            ax.bar(
                x + (i - (len(names) - 1) / 2) * bar_w,
                c / max(c.sum(), 1),
                bar_w,
                label=f"{shown_name[name]}: {mean:.2f} per image",
                **bar_style[name],
            )
        ax.set_xticks(x, [str(v) for v in x], ha="center")
        ax.set_xlim(-0.5, top - 0.5)
        ax.set_xlabel("object instances in the image")
        ax.set_ylabel("share of images")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.grid(axis="y", alpha=0.3)
    out = _save_figure(fig, path)
    plt.close(fig)
    return out
