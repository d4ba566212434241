"""Small datasets written in the *real* on-disk formats, for tests and demos.

Every generator is deterministic for its ``seed`` and draws simple shapes on textured backgrounds. The
shape and colour of an object depend on its class (class ``k`` gets shape ``SHAPES[k % 5]`` and colour
``PALETTE[k // 5]``, jittered), so a classifier, detector or segmenter can learn them. The files are read
by the same loaders as the real datasets (torchvision's ``VOCDetection``, ``Cityscapes``, ``OxfordIIITPet``,
idx readers), so each generator also documents the format it reproduces.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from downstream.datasets.mnist import FASHION_MNIST_CLASSES
from downstream.datasets.voc import VOC_CLASSES

log = logging.getLogger(__name__)


#: the 37 Oxford-IIIT Pet breeds in CLASS-ID order (cats capitalised, dogs lower case, as in the file names)
PET_BREEDS: tuple[str, ...] = (
    "Abyssinian",
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "Bengal",
    "Birman",
    "Bombay",
    "boxer",
    "British_Shorthair",
    "chihuahua",
    "Egyptian_Mau",
    "english_cocker_spaniel",
    "english_setter",
    "german_shorthaired",
    "great_pyrenees",
    "havanese",
    "japanese_chin",
    "keeshond",
    "leonberger",
    "Maine_Coon",
    "miniature_pinscher",
    "newfoundland",
    "Persian",
    "pomeranian",
    "pug",
    "Ragdoll",
    "Russian_Blue",
    "saint_bernard",
    "samoyed",
    "scottish_terrier",
    "shiba_inu",
    "Siamese",
    "Sphynx",
    "staffordshire_bull_terrier",
    "wheaten_terrier",
    "yorkshire_terrier",
)

#: the header of the real ``annotations/list.txt`` (its typos included)
PET_LIST_HEADER: tuple[str, ...] = (
    "#Image CLASS-ID SPECIES BREED ID",
    "#ID: 1:37 Class ids",
    "#SPECIES: 1:Cat 2:Dog",
    "#BREED ID: 1-25:Cat 1:12:Dog",
    "#All images with 1st letter as captial are cat images",
    "#images with small first letter are dog images",
)

#: official Cityscapes label ids / colours of the classes the scene generator draws
CITYSCAPES_LABELS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "unlabeled": (0, (0, 0, 0)),
    "ego vehicle": (1, (0, 0, 0)),
    "road": (7, (128, 64, 128)),
    "sidewalk": (8, (244, 35, 232)),
    "building": (11, (70, 70, 70)),
    "pole": (17, (153, 153, 153)),
    "traffic sign": (20, (220, 220, 0)),
    "vegetation": (21, (107, 142, 35)),
    "sky": (23, (70, 130, 180)),
    "person": (24, (220, 20, 60)),
    "car": (26, (0, 0, 142)),
}
_CITYSCAPES_INSTANCE_CLASSES = ("person", "car")


SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "diamond", "cross")
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),
    (40, 90, 230),
    (40, 190, 60),
    (240, 200, 30),
    (170, 50, 200),
    (250, 130, 20),
    (20, 200, 210),
    (120, 70, 30),
)


@dataclass
class VocObject:
    """One ``<object>`` of a VOC annotation; the box is VOC's 1-based, inclusive pixel coordinates."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    difficult: bool = False
    truncated: bool = False


@dataclass
class GeneratedDataset:
    """What a generator wrote.

    ``root`` is what to pass as the pool's ``root``; ``splits`` maps a split (VOC: ``"VOC2007/trainval"``)
    to its image ids in the order the pool lists them; ``labels`` maps image id → 0-based class for
    classification data; ``objects`` holds the VOC boxes per image id; ``files`` the image file per id.
    """

    root: Path
    splits: dict[str, list[str]]
    class_names: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    objects: dict[str, list[VocObject]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- drawing


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted textured background: grey-ish base, oriented stripes, a vertical gradient and noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = rng.uniform(90, 170) + rng.uniform(-15, 15, size=3)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.1, 0.5)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * freq)[..., None] * rng.uniform(8, 25)
    gradient = (yy / max(height - 1, 1) - 0.5)[..., None] * rng.uniform(-40, 40, size=3)
    noise = rng.normal(0.0, 6.0, size=(height, width, 3))
    return np.clip(base + stripes + gradient + noise, 0, 255).astype(np.uint8)


def _shape_polygon(shape: str, box: Sequence[float]) -> list[tuple[float, float]]:
    """Outline of ``shape`` inscribed in ``box = (x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in t]
    if shape == "rectangle":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "cross":
        ax, ay = rx / 3, ry / 3
        return [
            (cx - ax, y0),
            (cx + ax, y0),
            (cx + ax, cy - ay),
            (x1, cy - ay),
            (x1, cy + ay),
            (cx + ax, cy + ay),
            (cx + ax, y1),
            (cx - ax, y1),
            (cx - ax, cy + ay),
            (x0, cy + ay),
            (x0, cy - ay),
            (cx - ax, cy - ay),
        ]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _class_style(k: int, rng: np.random.Generator) -> tuple[str, tuple[int, int, int]]:
    """Shape and (jittered) colour of class ``k``."""
    base = np.asarray(PALETTE[(k // len(SHAPES)) % len(PALETTE)])
    colour = np.clip(base + rng.integers(-20, 21, 3), 0, 255)
    return SHAPES[k % len(SHAPES)], (int(colour[0]), int(colour[1]), int(colour[2]))


def _random_box(rng: np.random.Generator, width: int, height: int, lo: float, hi: float) -> tuple[int, ...]:
    """An integer box ``(x0, y0, x1, y1)`` (inclusive pixels) of relative size in ``[lo, hi]``."""
    bw = int(rng.uniform(lo, hi) * width)
    bh = int(rng.uniform(lo, hi) * height)
    x0 = int(rng.integers(0, max(width - bw, 1)))
    y0 = int(rng.integers(0, max(height - bh, 1)))
    return x0, y0, min(x0 + bw, width - 1), min(y0 + bh, height - 1)


def _box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _object_image(
    rng: np.random.Generator,
    size: tuple[int, int],
    classes: Sequence[int],
    lo: float = 0.3,
    hi: float = 0.6,
    max_overlap: float | None = None,
) -> tuple[Image.Image, list[tuple[int, tuple[int, ...], list[tuple[float, float]]]]]:
    """Textured background with one class-styled shape per entry of ``classes``: (image, [(k, box, poly)]).

    ``max_overlap``: redraw a box (up to 50 times) while its IoU with an earlier one exceeds this.
    """
    width, height = size
    img = Image.fromarray(_texture(rng, height, width))
    draw = ImageDraw.Draw(img)
    drawn = []
    for k in classes:
        shape, colour = _class_style(k, rng)
        box = _random_box(rng, width, height, lo, hi)
        for _ in range(50 if max_overlap is not None else 0):
            if all(_box_iou(box, b) <= max_overlap for _, b, _ in drawn):
                break
            box = _random_box(rng, width, height, lo, hi)
        poly = _shape_polygon(shape, box)
        draw.polygon(poly, fill=colour, outline=tuple(max(c - 60, 0) for c in colour))
        drawn.append((k, box, poly))
    return img, drawn


def _write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# ------------------------------------------------------------------------------------------------- VOC


def make_voc(
    root: str | os.PathLike[str],
    n07: int = 12,
    n12: int = 8,
    n07_test: int = 6,
    seed: int = 0,
    empty_every: int = 6,
    classes: Sequence[str] | None = None,
    max_objects: int = 3,
    difficult_rate: float = 0.2,
    width_range: tuple[int, int] = (120, 200),
    height_range: tuple[int, int] = (90, 160),
    object_scale: tuple[float, float] = (0.25, 0.55),
    max_overlap: float | None = None,
) -> GeneratedDataset:
    """Write ``<root>/VOCdevkit/VOC2007`` and ``VOC2012`` like the official archives.

    Each year gets ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` (``size``, ``segmented`` and per object
    ``name``/``pose``/``truncated``/``difficult``/``bndbox`` with 1-based inclusive pixel boxes) and
    ``ImageSets/Main/{train,val,trainval}.txt`` (sorted ids); VOC2007 also ``test.txt`` with ``n07_test``
    images. Like the devkit, ``ImageSets/Main/<class>_<set>.txt`` lists every image of the set with
    ``1`` (has a non-difficult object of the class), ``0`` (only difficult ones) or ``-1``. VOC2007 ids are
    ``000001``.. (test ids interleaved with trainval ones, as in the real set), VOC2012 ids
    ``2008_000002``-style. Every ``empty_every``-th image has no object, the others 1..``max_objects`` of
    ``classes`` (default: all 20; class ``k`` of VOC's list is drawn as ``SHAPES[k % 5]`` in
    ``PALETTE[k // 5]``) of relative size ``object_scale``, overlapping at most ``max_overlap`` (IoU;
    None: anything); a fraction ``difficult_rate`` of objects is ``difficult``. Image sizes are uniform in
    ``width_range`` × ``height_range``. Returns ``root`` = ``<root>/VOCdevkit`` and splits keyed
    ``"VOC2007/trainval"`` etc.
    """
    drawable = [VOC_CLASSES.index(c) for c in (classes if classes is not None else VOC_CLASSES)]
    if not drawable or max_objects < 1:
        raise ValueError("make_voc needs at least one class and max_objects >= 1")
    rng = np.random.default_rng(seed)
    devkit = Path(root) / "VOCdevkit"
    n_total07 = n07 + n07_test
    test_pos = set(np.linspace(1, n_total07 - 1, n07_test, dtype=int).tolist()) if n07_test else set()
    if len(test_pos) != n07_test:
        raise ValueError(f"n07_test={n07_test} too large for n07={n07}")
    ids07 = [f"{i + 1:06d}" for i in range(n_total07)]
    sets07 = {
        "trainval": [x for i, x in enumerate(ids07) if i not in test_pos],
        "test": [x for i, x in enumerate(ids07) if i in test_pos],
    }
    ids12 = [f"{2008 + k % 4}_{2 * k + 2:06d}" for k in range(n12)]
    sets12 = {"trainval": sorted(ids12)}
    out = GeneratedDataset(root=devkit, splits={}, class_names=list(VOC_CLASSES))
    counter = 0
    for year, sets in (("2007", sets07), ("2012", sets12)):
        year_dir = devkit / f"VOC{year}"
        for image_id in sorted(x for ids in sets.values() for x in ids):
            counter += 1
            n_obj = 0 if counter % empty_every == 0 else int(rng.integers(1, max_objects + 1))
            size = (
                int(rng.integers(width_range[0], width_range[1] + 1)),
                int(rng.integers(height_range[0], height_range[1] + 1)),
            )
            drawn_classes = [drawable[int(k)] for k in rng.integers(0, len(drawable), n_obj)]
            img, drawn = _object_image(rng, size, drawn_classes, *object_scale, max_overlap=max_overlap)
            path = year_dir / "JPEGImages" / f"{image_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, quality=92)
            objects = []
            for k, (x0, y0, x1, y1), _ in drawn:
                truncated = x0 == 0 or y0 == 0 or x1 >= size[0] - 1 or y1 >= size[1] - 1
                difficult = bool(rng.random() < difficult_rate)
                objects.append(
                    VocObject(VOC_CLASSES[k], x0 + 1, y0 + 1, x1 + 1, y1 + 1, difficult, truncated)
                )
            _write_voc_xml(year_dir / "Annotations" / f"{image_id}.xml", year, image_id, size, objects)
            out.objects[image_id] = objects
            out.files[image_id] = path
        main = year_dir / "ImageSets" / "Main"
        trainval = sets["trainval"]
        named = {"train": trainval[0::2], "val": trainval[1::2], **sets}
        for set_name, ids in named.items():
            _write_lines(main / f"{set_name}.txt", sorted(ids))
            out.splits[f"VOC{year}/{set_name}"] = sorted(ids)
            for cls in VOC_CLASSES:
                flags = []
                for image_id in sorted(ids):
                    mine = [o for o in out.objects[image_id] if o.name == cls]
                    flag = -1 if not mine else (1 if any(not o.difficult for o in mine) else 0)
                    flags.append(f"{image_id} {flag:2d}")
                _write_lines(main / f"{cls}_{set_name}.txt", flags)
    log.info("make_voc: wrote %d VOC2007 and %d VOC2012 images under %s", n_total07, n12, devkit)
    return out


def _write_voc_xml(
    path: Path, year: str, image_id: str, size: tuple[int, int], objects: list[VocObject]
) -> None:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = f"VOC{year}"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "database").text = f"The VOC{year} Database"
    ET.SubElement(source, "annotation").text = f"PASCAL VOC{year}"
    ET.SubElement(source, "image").text = "synthetic"
    size_el = ET.SubElement(ann, "size")
    for tag, value in (("width", size[0]), ("height", size[1]), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for obj in objects:
        o = ET.SubElement(ann, "object")
        ET.SubElement(o, "name").text = obj.name
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(int(obj.truncated))
        ET.SubElement(o, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(o, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(box, tag).text = str(getattr(obj, tag))
    ET.indent(ann, space="\t")
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(path, encoding="utf-8")


# ------------------------------------------------------------------------------------------ Cityscapes


def make_cityscapes(
    root: str | os.PathLike[str],
    n_train: int = 4,
    n_val: int = 2,
    cities: Mapping[str, Sequence[str]] | None = None,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
) -> GeneratedDataset:
    """Write ``<root>/leftImg8bit/{train,val}`` and ``<root>/gtFine/{train,val}`` like the official zips.

    Images are ``<city>/<city>_<seq:06d>_000019_leftImg8bit.png`` (RGB; frame 19 is the annotated frame of
    every real sequence), assigned to ``cities[split]`` round-robin (default train: aachen, bochum; val:
    frankfurt, munster). Each has ``_gtFine_labelIds.png`` (8-bit, official label ids: road 7, sidewalk 8,
    building 11, pole 17, traffic sign 20, vegetation 21, sky 23, person 24, car 26, ego vehicle 1),
    ``_gtFine_instanceIds.png`` (16-bit; ``id * 1000 + k`` for person/car instances, else the label id),
    ``_gtFine_color.png`` (RGBA) and ``_gtFine_polygons.json`` (``imgHeight``, ``imgWidth``, ``objects``
    with ``label`` and ``polygon`` in drawing order; later objects cover earlier ones, as when rendering the
    real ones). ``labelTrainIds`` files (made by cityscapesScripts, not in the zips) are not written.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    cities = dict(cities or {"train": ("aachen", "bochum"), "val": ("frankfurt", "munster")})
    out = GeneratedDataset(root=root, splits={})
    for split, n in (("train", n_train), ("val", n_val)):
        split_cities = list(cities[split])
        seq = dict.fromkeys(split_cities, 0)
        ids = []
        for k in range(n):
            city = split_cities[k % len(split_cities)]
            image_id = f"{city}_{seq[city]:06d}_000019"
            seq[city] += 1
            image, label_ids, instance_ids, objects = _street_scene(rng, size)
            img_path = root / "leftImg8bit" / split / city / f"{image_id}_leftImg8bit.png"
            gt = root / "gtFine" / split / city
            img_path.parent.mkdir(parents=True, exist_ok=True)
            gt.mkdir(parents=True, exist_ok=True)
            image.save(img_path)
            Image.fromarray(label_ids).save(gt / f"{image_id}_gtFine_labelIds.png")
            Image.fromarray(instance_ids).save(gt / f"{image_id}_gtFine_instanceIds.png")
            lut = np.zeros((256, 4), np.uint8)
            for label_id, colour in CITYSCAPES_LABELS.values():
                lut[label_id] = (*colour, 255)
            Image.fromarray(lut[label_ids]).save(gt / f"{image_id}_gtFine_color.png")
            polygons = {"imgHeight": size[1], "imgWidth": size[0], "objects": objects}
            (gt / f"{image_id}_gtFine_polygons.json").write_text(json.dumps(polygons, indent=4))
            ids.append(image_id)
            out.files[image_id] = img_path
        out.splits[split] = sorted(ids)
    log.info("make_cityscapes: wrote %d train and %d val images under %s", n_train, n_val, root)
    return out


def _street_scene(
    rng: np.random.Generator, size: tuple[int, int]
) -> tuple[Image.Image, np.ndarray, np.ndarray, list[dict]]:
    """A toy street: sky, buildings, trees, sidewalk, road, pole + sign, cars, people, ego vehicle."""
    w, h = size
    horizon = int(h * rng.uniform(0.35, 0.5))
    objects: list[tuple[str, list[tuple[float, float]]]] = [("sky", [(0, 0), (w, 0), (w, h), (0, h)])]
    x = 0
    while x < w:
        bw = int(rng.integers(w // 8, w // 3))
        top = int(rng.integers(2, max(horizon - 4, 3)))
        objects.append(("building", [(x, top), (x + bw, top), (x + bw, horizon + 2), (x, horizon + 2)]))
        x += bw
    for _ in range(int(rng.integers(1, 3))):
        cx, r = rng.uniform(0, w), rng.uniform(h * 0.08, h * 0.18)
        objects.append(("vegetation", _shape_polygon("ellipse", (cx - r, horizon - 2 * r, cx + r, horizon))))
    objects.append(("sidewalk", [(0, horizon), (w, horizon), (w, h), (0, h)]))
    vx = w * rng.uniform(0.4, 0.6)
    objects.append(("road", [(vx - 2, horizon), (vx + 2, horizon), (w * 0.9, h), (w * 0.1, h)]))
    px = float(rng.choice([rng.uniform(1, w * 0.1), rng.uniform(w * 0.9, w - 3)]))
    top, bottom = horizon * 0.4, h * 0.85
    objects.append(("pole", [(px, top), (px + 1.5, top), (px + 1.5, bottom), (px, bottom)]))
    sign_box = (px - 3, horizon * 0.25, px + 4.5, horizon * 0.45)
    objects.append(("traffic sign", _shape_polygon("diamond", sign_box)))
    for _ in range(int(rng.integers(1, 3))):
        cw, cy = w * rng.uniform(0.12, 0.2), rng.uniform(horizon + 4, h * 0.8)
        cx = rng.uniform(w * 0.25, w * 0.75 - cw)
        objects.append(("car", [(cx, cy - cw * 0.45), (cx + cw, cy - cw * 0.45), (cx + cw, cy), (cx, cy)]))
    for _ in range(int(rng.integers(0, 3))):
        bx, by = rng.uniform(0, w * 0.08) + rng.choice([0, w * 0.9]), rng.uniform(horizon + 6, h * 0.9)
        objects.append(("person", [(bx, by - h * 0.25), (bx + 2.5, by - h * 0.25), (bx + 2.5, by), (bx, by)]))
    objects.append(("ego vehicle", [(0, h - 4), (w, h - 4), (w, h), (0, h)]))

    label_img = Image.new("L", size, 0)
    inst_img = Image.new("I", size, 0)
    ldraw, idraw = ImageDraw.Draw(label_img), ImageDraw.Draw(inst_img)
    counts: dict[str, int] = {}
    records = []
    for name, poly in objects:
        label_id = CITYSCAPES_LABELS[name][0]
        ldraw.polygon(poly, fill=label_id)
        inst = label_id
        if name in _CITYSCAPES_INSTANCE_CLASSES:
            inst = label_id * 1000 + counts.get(name, 0)
            counts[name] = counts.get(name, 0) + 1
        idraw.polygon(poly, fill=inst)
        records.append(
            {"label": name, "polygon": [[round(float(px_), 2), round(float(py_), 2)] for px_, py_ in poly]}
        )
    labels = np.asarray(label_img, dtype=np.uint8)
    lut = np.zeros((256, 3), np.float64)
    for label_id, colour in CITYSCAPES_LABELS.values():
        lut[label_id] = colour
    lut[1] = (40, 40, 40)  # the car bonnet is dark, not pure black
    texture = _texture(rng, h, w).astype(np.float64) - 128.0
    rgb = np.clip(lut[labels] * 0.85 + texture * 0.3 + 20, 0, 255).astype(np.uint8)
    instances = np.asarray(inst_img, dtype=np.int64).astype(np.uint16)
    return Image.fromarray(rgb), labels, instances, records


# ------------------------------------------------------------------------------------------------ Pets


def make_pets(
    root: str | os.PathLike[str],
    n_per_class: int = 4,
    n_classes: int = 3,
    seed: int = 0,
    size: tuple[int, int] = (96, 80),
) -> GeneratedDataset:
    """Write ``<root>/oxford-iiit-pet`` like the official ``images.tar.gz`` + ``annotations.tar.gz``.

    The first ``n_classes`` breeds (CLASS-ID order) get ``n_per_class`` images ``<Breed>_<n>.jpg``
    (``n`` from 1); odd ``n`` go to ``trainval``, even ``n`` to ``test``. ``annotations/list.txt`` (with the
    real 6 header lines), ``trainval.txt`` and ``test.txt`` hold ``Image CLASS-ID SPECIES BREED-ID`` lines
    (SPECIES 1 cat, 2 dog; BREED-ID counted within the species), ordered by class then image name.
    ``annotations/trimaps/<Image>.png`` are 8-bit maps with 1 pet, 2 background, 3 border. ``root`` (the
    parent of ``oxford-iiit-pet``) is returned as the pool root, with 0-based ``labels``.
    """
    if not 1 <= n_classes <= len(PET_BREEDS):
        raise ValueError(f"n_classes must be in 1..{len(PET_BREEDS)}, got {n_classes}")
    rng = np.random.default_rng(seed)
    base = Path(root) / "oxford-iiit-pet"
    breed_ids, counts = {}, {1: 0, 2: 0}
    for breed in PET_BREEDS:
        species = 1 if breed[0].isupper() else 2
        counts[species] += 1
        breed_ids[breed] = (species, counts[species])
    out = GeneratedDataset(root=Path(root), splits={"trainval": [], "test": []})
    out.class_names = [" ".join(p.title() for p in b.split("_")) for b in PET_BREEDS[:n_classes]]
    lines: dict[str, list[str]] = {"list": [], "trainval": [], "test": []}
    for k, breed in enumerate(PET_BREEDS[:n_classes]):
        species, breed_id = breed_ids[breed]
        names = sorted(f"{breed}_{n}" for n in range(1, n_per_class + 1))
        for name in names:
            img, drawn = _object_image(rng, size, [k], lo=0.45, hi=0.75)
            path = base / "images" / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, quality=92)
            _write_trimap(base / "annotations" / "trimaps" / f"{name}.png", size, drawn[0][2])
            split = "trainval" if int(name.rsplit("_", 1)[1]) % 2 == 1 else "test"
            line = f"{name} {k + 1} {species} {breed_id}"
            lines["list"].append(line)
            lines[split].append(line)
            out.splits[split].append(name)
            out.labels[name] = k
            out.files[name] = path
    _write_lines(base / "annotations" / "list.txt", [*PET_LIST_HEADER, *lines["list"]])
    for split in ("trainval", "test"):
        _write_lines(base / "annotations" / f"{split}.txt", lines[split])
    log.info("make_pets: wrote %d images of %d breeds under %s", n_per_class * n_classes, n_classes, base)
    return out


def _write_trimap(path: Path, size: tuple[int, int], polygon: list[tuple[float, float]]) -> None:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    outer = np.asarray(mask.filter(ImageFilter.MaxFilter(5))) > 0
    inner = np.asarray(mask.filter(ImageFilter.MinFilter(5))) > 0
    trimap = np.full((size[1], size[0]), 2, np.uint8)  # background
    trimap[outer] = 3  # not classified (border band)
    trimap[inner] = 1  # pet
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(trimap).save(path)


# --------------------------------------------------------------------------------------- image folder


def make_image_folder(
    root: str | os.PathLike[str],
    n_per_class: int = 5,
    classes: Sequence[str] = ("circle", "square", "triangle"),
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    ext: str = ".jpg",
) -> GeneratedDataset:
    """Write ``<root>/<class>/<class>_<i:03d><ext>``; class ``k`` has shape ``SHAPES[k % 5]``.

    ``splits["all"]`` lists the relative posix paths (the :class:`ImageFolderPool` ids), sorted.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    out = GeneratedDataset(root=root, splits={"all": []}, class_names=sorted(classes))
    for cls in out.class_names:
        k = out.class_names.index(cls)
        for i in range(n_per_class):
            img, _ = _object_image(rng, size, [k], lo=0.4, hi=0.8)
            rel = f"{cls}/{cls}_{i:03d}{ext}"
            (root / cls).mkdir(parents=True, exist_ok=True)
            img.save(root / rel)
            out.splits["all"].append(rel)
            out.labels[rel] = k
            out.files[rel] = root / rel
    out.splits["all"].sort()
    return out


# ------------------------------------------------------------------------------------- Fashion-MNIST


def make_fashion_mnist_idx(
    root: str | os.PathLike[str],
    n_train: int = 60,
    n_test: int = 20,
    seed: int = 0,
    compress: bool = False,
) -> GeneratedDataset:
    """Write ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` when ``compress``) in ``root``.

    idx format: big-endian magic ``0x00000803`` / ``0x00000801`` (unsigned bytes, 3 / 1 dims), the sizes
    as big-endian uint32, then the raw bytes. Images are 28×28 bright class-styled shapes on black; labels
    cycle through the 10 classes in a seeded order. Ids follow :class:`FashionMnistPool` (``train_00000``).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = GeneratedDataset(root=root, splits={}, class_names=list(FASHION_MNIST_CLASSES))
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, k in enumerate(labels):
            canvas = Image.new("L", (28, 28), 0)
            box = _random_box(rng, 28, 28, 0.55, 0.85)
            ImageDraw.Draw(canvas).polygon(
                _shape_polygon(SHAPES[k % len(SHAPES)], box), fill=int(120 + 13 * k)
            )
            images[i] = np.asarray(canvas)
        ext = ".gz" if compress else ""
        _write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        ids = [f"{split}_{i:05d}" for i in range(n)]
        out.splits[split] = ids
        out.labels.update(zip(ids, labels.tolist(), strict=True))
    return out


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
