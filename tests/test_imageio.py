"""geal.util.imageio: every PIL mode comes out as 8-bit RGB as documented; bad files fail clearly."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geal.util.imageio import BACKGROUND, ImageLoadError, load_rgb, to_rgb

WHITE = np.array(BACKGROUND)


def _px(img: Image.Image, x: int, y: int) -> np.ndarray:
    return np.asarray(img)[y, x].astype(int)


def _check_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr.astype(int)


def test_rgb_png_is_unchanged(tmp_path: Path) -> None:
    src = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(src).save(tmp_path / "a.png")
    np.testing.assert_array_equal(_check_rgb(load_rgb(tmp_path / "a.png"), (10, 12)), src)


def test_grey_and_one_bit(tmp_path: Path) -> None:
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    Image.fromarray(grey).save(tmp_path / "l.png")
    arr = _check_rgb(load_rgb(tmp_path / "l.png"), (6, 4))
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], grey)

    bits = Image.fromarray(np.array([[0, 255, 0], [255, 255, 0]], np.uint8)).convert("1")
    bits.save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    arr = _check_rgb(load_rgb(tmp_path / "b.png"), (3, 2))
    np.testing.assert_array_equal(arr[..., 0], [[0, 255, 0], [255, 255, 0]])


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent, stored black: must not come out black
    rgba[0, 1] = (200, 10, 10, 255)  # opaque red stays
    rgba[0, 2] = (0, 0, 255, 128)  # half transparent blue: halfway to white
    rgba[1, :] = (10, 200, 10, 0)  # transparent green: white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_rgb(tmp_path / "a.png")
    _check_rgb(img, (3, 2))
    np.testing.assert_array_equal(_px(img, 0, 0), WHITE)
    np.testing.assert_array_equal(_px(img, 1, 0), (200, 10, 10))
    np.testing.assert_allclose(_px(img, 2, 0), (127, 127, 255), atol=1)
    np.testing.assert_array_equal(np.asarray(img)[1], np.tile(WHITE, (3, 1)))


def test_la_composited_over_white(tmp_path: Path) -> None:
    la = np.array([[[50, 255], [50, 0], [0, 128]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = load_rgb(tmp_path / "la.png")
    _check_rgb(img, (3, 1))
    np.testing.assert_array_equal(_px(img, 0, 0), (50, 50, 50))
    np.testing.assert_array_equal(_px(img, 1, 0), WHITE)
    np.testing.assert_allclose(_px(img, 2, 0), (127, 127, 127), atol=1)


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)  # red
    pal.putpixel((1, 0), 1)  # black
    pal.save(tmp_path / "p.png")
    img = load_rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(img)[0], [(255, 0, 0), (0, 0, 0)])

    pal.save(tmp_path / "pt.png", transparency=1)  # index 1 (black) transparent
    pal.save(tmp_path / "pt.gif", transparency=1)
    for name in ("pt.png", "pt.gif"):
        assert "transparency" in Image.open(tmp_path / name).info
        img = load_rgb(tmp_path / name)
        np.testing.assert_array_equal(np.asarray(img)[0], [(255, 0, 0), BACKGROUND], err_msg=name)


def test_rgb_with_transparent_colour_key(tmp_path: Path) -> None:
    arr = np.array([[(0, 0, 0), (9, 99, 199)]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "k.png", transparency=(0, 0, 0))
    img = load_rgb(tmp_path / "k.png")
    np.testing.assert_array_equal(np.asarray(img)[0], [BACKGROUND, (9, 99, 199)])


def test_cmyk_close_to_rgb_original(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    src = np.stack([xx * 4, yy * 5, 255 - xx * 3], -1).clip(0, 255).astype(np.uint8)
    cmyk = Image.fromarray(src).convert("CMYK")
    cmyk.save(tmp_path / "c.tif")
    cmyk.save(tmp_path / "c.jpg", quality=95)  # Pillow writes an Adobe (inverted) CMYK JPEG
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    lossless = _check_rgb(load_rgb(tmp_path / "c.tif"), (64, 48))
    assert np.abs(lossless - src).max() <= 1
    jpeg = _check_rgb(load_rgb(tmp_path / "c.jpg"), (64, 48))
    assert np.abs(jpeg - src).mean() < 3


def test_sixteen_bit_png_scaled_to_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d16.png")
    assert Image.open(tmp_path / "d16.png").mode == "I;16"
    arr = _check_rgb(load_rgb(tmp_path / "d16.png"), (4, 1))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 1, 128, 255])  # not Pillow's clip (0, 255, 255, 255)

    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    arr = load_rgb(tmp_path / "ramp.png")
    assert np.array_equal(np.unique(np.asarray(arr)[..., 0]), np.arange(256))


def test_twelve_bit_data_in_sixteen_bit_png_uses_its_bit_range(tmp_path: Path) -> None:
    values = np.array([[0, 1024, 2048, 4095]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d12.png")
    arr = _check_rgb(load_rgb(tmp_path / "d12.png"), (4, 1))
    np.testing.assert_array_equal(arr[0, :, 1], [0, 64, 128, 255])


def test_int32_and_float_modes() -> None:
    signed = Image.fromarray(np.array([[-100, 0, 155]], np.int32))
    assert signed.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb(signed))[0, :, 0], [0, 100, 255])

    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(np.asarray(to_rgb(unit))[0, :, 2], [0, 128, 255])
    wide = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], np.float32))
    np.testing.assert_array_equal(np.asarray(to_rgb(wide))[0, :, 2], [0, 128, 255])


def test_to_rgb_in_memory_modes() -> None:
    grey = Image.fromarray(np.full((3, 5), 77, np.uint8))
    out = to_rgb(grey)
    assert out.mode == "RGB" and out.size == (5, 3) and set(np.unique(np.asarray(out))) == {77}
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(rgb) is rgb
    premult = Image.new("RGBA", (1, 1), (255, 0, 0, 0)).convert("RGBa")
    np.testing.assert_array_equal(np.asarray(to_rgb(premult))[0, 0], WHITE)
    ycc = Image.new("RGB", (2, 2), (30, 140, 220)).convert("YCbCr")
    np.testing.assert_allclose(np.asarray(to_rgb(ycc))[0, 0], (30, 140, 220), atol=3)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    stored[:, :20] = (230, 20, 20)
    stored[:, 20:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    raw = Image.open(tmp_path / "rot.jpg")
    assert raw.size == (40, 20) and raw.getexif()[0x0112] == 6

    img = load_rgb(tmp_path / "rot.jpg")
    assert img.size == (20, 40)  # portrait after rotation
    arr = np.asarray(img).astype(int)
    top, bottom = arr[:20].reshape(-1, 3).mean(0), arr[20:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the stored left (red) half is on top after a clockwise turn
    assert bottom[2] > 200 and bottom[0] < 50


def _assert_load_error(path: Path, *fragments: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_rgb(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "data.on_error=skip" in msg
    for fragment in fragments:
        assert fragment in msg
    assert isinstance(info.value, OSError)
    assert info.value.path == path
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _assert_load_error(tmp_path / "nope.jpg", "does not exist")


def test_truncated_jpeg_and_png(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for ext in ("jpg", "png"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG" if ext == "jpg" else "PNG")
        data = buf.getvalue()
        path = tmp_path / f"cut.{ext}"
        path.write_bytes(data[: len(data) // 2])
        Image.open(path)  # the header alone still parses: only a full decode finds the damage
        _assert_load_error(path, "truncated or corrupt")


def test_not_an_image_and_directory(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("hello, not a JPEG")
    _assert_load_error(tmp_path / "text.jpg", "not a recognised image format")
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_load_error(tmp_path / "empty.png")
    (tmp_path / "dir.png").mkdir()
    _assert_load_error(tmp_path / "dir.png")


def test_load_error_pickles() -> None:
    err = ImageLoadError("/data/x.jpg", "decoding failed")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageLoadError) and str(back) == str(err) and back.path == Path("/data/x.jpg")
