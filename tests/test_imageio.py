"""Robust decoding: odd formats become 8-bit RGB, bad files give a reason, paths stay inside."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.errors import ImageDecodeError, UnsafePathError
from pipeline.imageio import load_rgb, pixel_hash, read_mask_png, resolve_inside

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _check_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"]


def _noise_file(path: Path, fmt: str) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


# ------------------------------------------------------------------- odd formats


@pytest.mark.parametrize(
    "fmt,suffix",
    [
        ("PNG", "png"),
        ("BMP", "bmp"),
        ("GIF", "gif"),
        ("TIFF", "tif"),
        ("WEBP", "webp"),
        ("JPEG", "jpg"),
    ],
)
def test_common_formats_decode_to_rgb(tmp_path: Path, fmt: str, suffix: str) -> None:
    _check_rgb(load_rgb(_noise_file(tmp_path / f"a.{suffix}", fmt)), 32, 48)


def test_lossless_rgb_is_returned_unchanged(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.png"), pixels)


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgb = load_rgb(tmp_path / "g.png")
    _check_rgb(rgb, 2, 2)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)


def test_bilevel_image(tmp_path: Path) -> None:
    image = Image.new("1", (3, 2), 0)
    image.putpixel((1, 1), 1)
    image.save(tmp_path / "b.png")
    rgb = load_rgb(tmp_path / "b.png")
    assert tuple(rgb[1, 1]) == WHITE and tuple(rgb[0, 0]) == (0, 0, 0)


def test_grey_with_alpha_is_composited_over_white(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1), (0, 255))
    image.putpixel((1, 0), (0, 0))
    image.save(tmp_path / "la.png")
    rgb = load_rgb(tmp_path / "la.png")
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[0, 1]) == WHITE


def test_palette_with_transparency_is_composited_over_white(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1), 0)
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    image.putpixel((2, 0), 1)
    image.save(tmp_path / "p.png", transparency=1)
    rgb = load_rgb(tmp_path / "p.png")
    assert [tuple(pixel) for pixel in rgb[0]] == [RED, WHITE, WHITE]


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.gif")
    assert [tuple(pixel) for pixel in load_rgb(tmp_path / "p.gif")[0]] == [RED, BLUE]


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rgb = load_rgb(tmp_path / "a.png")
    _check_rgb(rgb, 1, 3)
    assert tuple(rgb[0, 0]) == RED  # opaque: unchanged
    assert tuple(rgb[0, 1]) == WHITE  # transparent: white, hidden red dropped
    assert tuple(rgb[0, 2]) == (127, 127, 127)  # half black over white


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    rgb = load_rgb(tmp_path / "c.jpg")
    _check_rgb(rgb, 8, 16)
    red, green, blue = (int(value) for value in rgb[4, 8])
    assert red > 230 and green < 30 and blue < 30


@pytest.mark.parametrize("dtype,suffix", [("<u2", "png"), (">u2", "tif")])
def test_sixteen_bit_is_scaled_by_257_not_clipped(tmp_path: Path, dtype: str, suffix: str) -> None:
    values = np.array([[0, 257 * 100], [65535, 129]], dtype=dtype)
    Image.fromarray(values).save(tmp_path / f"g16.{suffix}")
    rgb = load_rgb(tmp_path / f"g16.{suffix}")
    _check_rgb(rgb, 2, 2)
    np.testing.assert_array_equal(rgb[..., 0], [[0, 100], [255, 1]])
    np.testing.assert_array_equal(rgb[..., 2], rgb[..., 0])


def test_32_bit_integer_holds_16_bit_values(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 7, 70000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(load_rgb(tmp_path / "i.tif")[0, :, 1], [0, 7, 255])


def test_float_image_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_rgb(tmp_path / "f.tif")[0, :, 0], [0, 128, 255])


def test_float_image_outside_byte_range_is_rescaled(tmp_path: Path) -> None:
    values = np.array([[-10.0, 0.0, 10.0, np.nan]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_rgb(tmp_path / "f.tif")[0, :, 0], [0, 128, 255, 128])


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, left half red, right half blue; orientation 6 ("rotate 90
    # degrees clockwise to display") is ignored: the stored array is the pipeline's frame,
    # the one the datasets' boxes, parts and masks refer to (pipeline/imageio.py).
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = RED
    stored[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "r.jpg") as check:
        assert check.getexif()[0x0112] == 6
    rgb = load_rgb(tmp_path / "r.jpg")
    _check_rgb(rgb, 20, 40)
    assert rgb[10, 5, 0] > 200 and rgb[10, 5, 2] < 50  # left: red
    assert rgb[10, 35, 2] > 200 and rgb[10, 35, 0] < 50  # right: blue


# --------------------------------------------------------------------- bad files


def _reason(path: Path) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        load_rgb(path)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    return caught.value.reason


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.jpg").write_bytes(b"")
    assert _reason(tmp_path / "e.jpg") == "empty file"


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    data = _noise_file(tmp_path / f"full.{suffix}", fmt).read_bytes()
    (tmp_path / f"t.{suffix}").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / f"t.{suffix}") == "truncated image"


def test_truncated_file_fails_even_if_someone_allowed_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _noise_file(tmp_path / "full.jpg", "JPEG").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "t.jpg") == "truncated image"


def test_text_renamed_as_jpeg(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    assert _reason(tmp_path / "notes.jpg") == "not an image (cannot identify format)"


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nowhere.jpg") == "file not found"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.jpg").mkdir()
    assert "directory" in _reason(tmp_path / "d.jpg")


def test_corrupt_data_after_valid_header(tmp_path: Path) -> None:
    data = bytearray(_noise_file(tmp_path / "full.png", "PNG").read_bytes())
    data[60:200] = bytes(140)  # zeroes over the compressed pixels
    (tmp_path / "c.png").write_bytes(bytes(data))
    assert _reason(tmp_path / "c.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 > limit, < 2 x limit
    assert _reason(tmp_path / "big.png").startswith("decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own error beyond 2 x limit
    assert _reason(tmp_path / "big.png").startswith("decompression bomb")


# ------------------------------------------------------------------------- masks


def test_grey_mask_threshold(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8)).save(tmp_path / "m.png")
    mask = read_mask_png(tmp_path / "m.png")
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [[False, False, True, True]])


def test_colour_mask_counts_any_bright_channel(tmp_path: Path) -> None:
    pixels = np.array([[[0, 0, 0], [255, 0, 0], [255, 255, 255], [100, 100, 100]]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask_png(tmp_path / "m.png"), [[False, True, True, False]])


def test_mask_errors_carry_reasons(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file"):
        read_mask_png(tmp_path / "e.png")
    with pytest.raises(ImageDecodeError, match="file not found"):
        read_mask_png(tmp_path / "missing.png")


# ------------------------------------------------------------------------ hashes


def test_pixel_hash_finds_the_same_photo_under_two_names(tmp_path: Path) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "copy.bmp")
    first = pixel_hash(load_rgb(tmp_path / "a.png"))
    assert first == pixel_hash(load_rgb(tmp_path / "copy.bmp"))
    assert len(first) == 32 and int(first, 16) >= 0

    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert pixel_hash(changed) != first
    assert pixel_hash(pixels.reshape(5, 6, 3)) != first  # same bytes, other shape
    assert pixel_hash(np.asfortranarray(pixels)) == pixel_hash(pixels)


# ------------------------------------------------------------------------- paths


def test_resolve_inside_accepts_plain_relative_paths(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "a/./b.jpg") == (tmp_path / "a" / "b.jpg").resolve()


@pytest.mark.parametrize("relative", ["../x.jpg", "a/../../x.jpg", "a/../b.jpg"])
def test_resolve_inside_rejects_dot_dot(tmp_path: Path, relative: str) -> None:
    with pytest.raises(UnsafePathError) as caught:
        resolve_inside(tmp_path, relative, listing="images.txt", line=3)
    assert str(caught.value) == f"images.txt line 3: path '{relative}' escapes the dataset root"


@pytest.mark.parametrize("relative", ["/etc/passwd", "C:\\x.jpg", ""])
def test_resolve_inside_rejects_absolute_and_empty(tmp_path: Path, relative: str) -> None:
    with pytest.raises(UnsafePathError, match="images.txt line 4"):
        resolve_inside(tmp_path, relative, listing="images.txt", line=4)


def test_resolve_inside_rejects_symlink_out_of_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    os.symlink(root / "inner.jpg", root / "inner_link.jpg")
    assert resolve_inside(root, "inner_link.jpg") == (root / "inner.jpg").resolve()
    with pytest.raises(UnsafePathError, match="escapes the dataset root"):
        resolve_inside(root, "link/x.jpg")
