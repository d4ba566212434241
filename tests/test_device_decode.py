"""geal.features.device_decode: batched JPEG decoding on the extraction device gives what load_rgb gives
(orientation,
grey, fallbacks that name the file), and an extraction with decode="device" stores what decode="workers"
stores. On CPU the same code runs with torchvision's CPU decoder; the ``gpu`` test runs nvJPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from downstream.datasets.folder import ImageFolderPool
from geal.features.backbones.base import Preprocessing
from geal.features.device_decode import (
    EncodedImage,
    apply_orientation,
    decode_batch,
    read_encoded,
    resolve_decode,
)
from geal.features.extract import (
    ExtractionSettings,
    PreprocessedPool,
    build_transform,
    collate_images,
    normalize_transform,
    resolve_workers,
    tensor_transform,
)
from geal.features.provider import FeatureProvider
from geal.util.imageio import ImageLoadError, load_rgb
from geal.util.threads import intra_op_threads
from tests.conftest import TINY_VIT, CountingFactory

CPU = torch.device("cpu")
PRE = Preprocessing(resolution=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic")


def photo(seed: int, size: tuple[int, int] = (60, 40)) -> np.ndarray:
    """A smooth (JPEG-friendly) asymmetric RGB image, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC))


def write_jpeg(path: Path, pixels: np.ndarray, orientation: int = 1, mode: str = "RGB") -> Path:
    img = Image.fromarray(pixels).convert(mode)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif)
    return path


def device_decoded(paths: list[Path], device: torch.device = CPU) -> torch.Tensor:
    items = [read_encoded(p) for p in paths]
    assert all(isinstance(i, EncodedImage) for i in items)
    return decode_batch(items, device, lambda img: img, lambda p: pytest.fail(f"fallback for {p}"))  # type: ignore[arg-type]


def garbled_scan(data: bytes) -> bytes:
    """The JPEG with its entropy-coded data cut short after the start-of-scan header: the header (size,
    mode, EXIF) still reads, the decode fails."""
    sos = data.index(b"\xff\xda")
    return data[: sos + 20]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil_exif_transpose(orientation: int) -> None:
    pixels = photo(orientation, (7, 5))
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(img))
    chw = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    got = apply_orientation(chw, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_decoded_jpeg_equals_load_rgb(tmp_path: Path, orientation: int) -> None:
    path = write_jpeg(tmp_path / "a.jpg", photo(0), orientation)
    expected = np.asarray(load_rgb(path)).astype(int)
    item = read_encoded(path)
    assert item is not None and item.orientation == orientation
    got = decode_batch([item], torch.device("cpu"), lambda x: x, lambda p: None)[0]  # type: ignore[arg-type,return-value]
    got = got.permute(1, 2, 0).numpy().astype(int)
    assert got.shape == expected.shape  # (60, 40) portrait after orientations 6 and 8
    assert np.abs(got - expected).max() <= 2


def test_grey_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "g.jpg", photo(1), mode="L")
    got = device_decoded([path])[0]
    assert got.shape == (3, 40, 60)
    expected = np.asarray(load_rgb(path)).astype(int).transpose(2, 0, 1)
    assert np.abs(got.numpy().astype(int) - expected).max() <= 2


def test_what_the_batched_decoder_does_not_take_is_left_to_the_pool(tmp_path: Path) -> None:
    Image.fromarray(photo(2)).save(tmp_path / "p.png")
    Image.fromarray(photo(3)).convert("CMYK").save(tmp_path / "c.jpg")
    (tmp_path / "n.jpg").write_bytes(b"not a jpeg at all")
    for name in ("p.png", "c.jpg", "n.jpg"):
        assert read_encoded(tmp_path / name) is None, name


def test_failed_decode_falls_back_per_image(tmp_path: Path) -> None:
    good = write_jpeg(tmp_path / "good.jpg", photo(4))
    bad = write_jpeg(tmp_path / "bad.jpg", photo(5))
    bad.write_bytes(garbled_scan(bad.read_bytes()))
    items = [read_encoded(good), read_encoded(bad), torch.full((3, 40, 60), 7, dtype=torch.uint8)]
    assert isinstance(items[1], EncodedImage)
    called = []

    def fallback(p: int) -> torch.Tensor:
        called.append(p)
        return torch.zeros(3, 40, 60, dtype=torch.uint8)

    out = decode_batch(items, torch.device("cpu"), lambda x: x, fallback)  # type: ignore[arg-type]
    assert called == [1]
    assert out.shape == (3, 3, 40, 60)
    assert (out[1] == 0).all() and (out[2] == 7).all()
    expected = np.asarray(load_rgb(good)).astype(int).transpose(2, 0, 1)
    assert np.abs(out[0].numpy().astype(int) - expected).max() <= 2


def test_resolve_decode() -> None:
    assert resolve_decode("auto", torch.device("cpu")) == "workers"
    assert resolve_decode("auto", torch.device("cuda", 0)) == "device"
    assert resolve_decode("device", torch.device("cpu")) == "device"
    with pytest.raises(ValueError, match=r"extraction\.decode"):
        resolve_decode("nvjpeg", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"extraction\.decode"):
        ExtractionSettings(decode="gpu")  # type: ignore[arg-type]


def test_tensor_transform_is_the_workers_transform_after_pil_to_tensor(tmp_path: Path) -> None:
    img = Image.fromarray(photo(6))
    a = build_transform(PRE)(img)
    b = tensor_transform(PRE)(torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_workers_hand_over_uint8_and_the_batch_normalisation_gives_the_per_image_values(
    tmp_path: Path, monkeypatch
) -> None:
    """The workers decode JPEGs with libjpeg-turbo (torchvision) and stop at the resized uint8 image;
    normalising the stacked batch afterwards gives exactly the values of PIL decoding + the per-image float
    transform (what the store held before), EXIF-rotated and grey JPEGs included; the PNG goes through the
    pool's own loader."""
    pool = jpeg_pool(tmp_path / "pool")
    dataset = PreprocessedPool(pool, PRE, "raise")
    loaded: list[int] = []
    load = type(pool).load
    monkeypatch.setattr(type(pool), "load", lambda self, i: loaded.append(i) or load(self, i))
    items = [dataset[i] for i in range(len(pool))]
    assert [pool.ids[i] for i in loaded] == ["png.png"]  # every JPEG took the libjpeg-turbo path
    monkeypatch.undo()
    assert all(
        img.dtype == torch.uint8 and img.shape == (3, PRE.resolution, PRE.resolution) for img, _, _ in items
    )
    images, indices, errors = collate_images(items)
    batch = normalize_transform(PRE)(images)
    reference = torch.stack([build_transform(PRE)(pool.load(i)) for i in range(len(pool))])
    torch.testing.assert_close(batch, reference, rtol=0, atol=0)
    assert indices == list(range(len(pool))) and errors == [""] * len(pool)


def test_main_process_decodes_a_batch_with_threads_in_order(tmp_path: Path, monkeypatch) -> None:
    """Without loader workers a batch is decoded by ``decode_threads`` threads, the items in the batch's
    order and equal to one-at-a-time decoding; inside a worker process, one image at a time."""
    import threading
    import time

    pool = jpeg_pool(tmp_path / "pool")
    order = [7, 2, 9, 0, 10, 5, 3]
    serial = [PreprocessedPool(pool, PRE, "raise")[i] for i in order]
    dataset = PreprocessedPool(pool, PRE, "raise", decode_threads=3)
    seen: set[str] = set()
    preprocessed = PreprocessedPool.preprocessed

    def recording(self, index):
        seen.add(threading.current_thread().name)
        time.sleep(0.01)  # long enough that every thread gets an image
        return preprocessed(self, index)

    monkeypatch.setattr(PreprocessedPool, "preprocessed", recording)
    threaded = dataset.__getitems__(order)
    assert [i for _, i, _ in threaded] == order and all(e == "" for _, _, e in threaded)
    assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(threaded, serial, strict=True))
    assert len(seen) > 1 and all(name.startswith("decode") for name in seen)
    seen.clear()
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as in a worker process
    dataset.__getitems__(order)
    assert seen == {threading.current_thread().name}


def test_num_workers_auto_resolves_per_device(monkeypatch) -> None:
    assert resolve_workers("auto", CPU) == 0  # the main process decodes between forwards
    assert resolve_workers(3, CPU) == 3 and resolve_workers(0, torch.device("cuda")) == 0
    # whatever this machine has
    monkeypatch.setattr("geal.util.cores.cgroup_cpu_quota", lambda root=None: None)
    for cores, workers in ((16, 14), (64, 16), (2, 1), (1, 1)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert resolve_workers("auto", torch.device("cuda")) == workers
    # a container limited to 4.5 CPUs' time on a 64-core host: 5 usable cores, 3 workers
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    monkeypatch.setattr("geal.util.cores.cgroup_cpu_quota", lambda root=None: 4.5)
    assert resolve_workers("auto", torch.device("cuda")) == 3
    for bad in ("two", -1, True, 1.5):
        with pytest.raises(ValueError, match="num_workers"):
            ExtractionSettings(num_workers=bad)  # type: ignore[arg-type]


def test_extraction_without_workers_stores_what_a_worker_stores(tmp_path: Path, monkeypatch) -> None:
    """num_workers=auto on a CPU: the extraction's DataLoader hands whole batches to the decoding threads
    (as many as torch's), and the store is byte for byte the one a loader worker writes."""
    import threading

    pool = jpeg_pool(tmp_path / "jpegs")
    worker = store_arrays(pool, tmp_path / "c1", num_workers=1)
    seen: set[str] = set()
    preprocessed = PreprocessedPool.preprocessed

    def recording(self, index):
        seen.add(threading.current_thread().name.split("_")[0])
        return preprocessed(self, index)

    monkeypatch.setattr(PreprocessedPool, "preprocessed", recording)
    for n, threads, names in (("auto", 2, {"decode"}), (0, 1, {threading.current_thread().name})):
        seen.clear()
        with intra_op_threads(threads):
            main = store_arrays(pool, tmp_path / f"c_{n}_{threads}", num_workers=n)
        assert seen == names
        assert all(np.array_equal(main[k], worker[k]) for k in worker)


def jpeg_pool(root: Path) -> ImageFolderPool:
    root.mkdir()
    for i in range(9):
        write_jpeg(root / f"{i}.jpg", photo(10 + i, (48 + 8 * (i % 3), 40)), orientation=(1, 6, 3)[i % 3])
    write_jpeg(root / "grey.jpg", photo(30), mode="L")
    Image.fromarray(photo(31)).save(root / "png.png")
    return ImageFolderPool(root=str(root))


def store_arrays(pool: ImageFolderPool, cache: Path, device: torch.device = CPU, **kw):
    settings = ExtractionSettings(
        **{"batch_size": 4, "num_workers": 0, "amp": "none", "shard_size": 8, "progress": False, **kw}
    )
    store = FeatureProvider(pool, CountingFactory(), {"tiny": TINY_VIT}, cache, settings, device, "t").store()
    shards = list(store.iter_shards())
    return {k: np.concatenate([np.asarray(s[k], np.float32) for _, _, s in shards]) for k in shards[0][2]}


def test_extraction_with_device_decode_stores_what_workers_store(tmp_path: Path) -> None:
    pool = jpeg_pool(tmp_path / "jpegs")
    workers = store_arrays(pool, tmp_path / "c1", decode="workers", num_workers=1)
    device = store_arrays(pool, tmp_path / "c2", decode="device", num_workers=1)
    assert device["valid"].all() and len(device["valid"]) == 11
    np.testing.assert_allclose(device["global"], workers["global"], atol=0.05)
    np.testing.assert_allclose(device["tokens"], workers["tokens"], atol=0.1)
    assert np.abs(device["tokens"] - workers["tokens"]).mean() < 5e-3


@pytest.mark.parametrize("decode", ["device", "workers"])
@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_corrupt_jpeg_names_the_file_or_is_skipped(tmp_path: Path, decode: str, damage: str) -> None:
    pool_root = tmp_path / "jpegs"
    pool = jpeg_pool(pool_root)
    bad = pool_root / "3.jpg"
    data = bad.read_bytes()
    bad.write_bytes(garbled_scan(data) if damage == "garbled" else data[: len(data) * 2 // 3])
    assert read_encoded(bad) is not None  # the header reads fine: the decoder itself must reject it
    with pytest.raises(ImageLoadError) as info:
        store_arrays(pool, tmp_path / "c1", decode=decode)
    assert str(bad) in str(info.value)
    arrays = store_arrays(pool, tmp_path / "c2", decode=decode, on_error="skip")
    assert [pool.ids[i] for i in np.flatnonzero(~arrays["valid"].astype(bool))] == ["3.jpg"]


@pytest.mark.gpu
def test_nvjpeg_extraction_matches_cpu_extraction(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pool = jpeg_pool(tmp_path / "jpegs")
    paths = [pool.file_path(i) for i in range(len(pool)) if pool.file_path(i).suffix == ".jpg"]
    # nvJPEG upsamples chroma differently from libjpeg-turbo: on these tiny, strongly coloured images the
    # mean difference was 5.3 grey levels on an H100; a wrong orientation or channel order gives tens
    for path in paths[:3]:
        on_gpu = device_decoded([path], torch.device("cuda")).cpu()
        on_cpu = device_decoded([path])
        assert on_gpu.shape == on_cpu.shape
        assert (on_gpu.int() - on_cpu.int()).abs().float().mean() < 10.0
    cuda = store_arrays(pool, tmp_path / "c1", torch.device("cuda"), decode="auto")
    cpu = store_arrays(pool, tmp_path / "c2", decode="workers")
    np.testing.assert_allclose(cuda["global"], cpu["global"], atol=0.5)
    assert np.abs(cuda["tokens"] - cpu["tokens"]).mean() < 0.1
