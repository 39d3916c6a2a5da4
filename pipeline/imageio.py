"""Safe path resolution and robust image decoding shared by every stage.

Every decoder here turns a bad file into ``ImageDecodeError(path, reason)`` with a
short human reason; no other exception type escapes for a bad file.

Colour decisions:
- transparency (RGBA, LA, palette with transparency) is composited over white, so
  hidden colour values under transparent pixels never leak into the pixels;
- 16-bit images (I;16, I;16B, I;16L, I;16N) and 32-bit integer images (I, which is
  how some Pillow versions and TIFF writers hold 16-bit data) are scaled to 8 bits by
  dividing by 257 and rounding (65535 -> 255); ``I`` values outside 0..65535 are
  clipped;
- 32-bit float (F): values within [0, 1] are multiplied by 255, values within
  [0, 255] are kept, anything else is rescaled linearly from its min..max; NaN and
  infinities become 0;
- EXIF orientation is **not** applied: every image is the stored pixel array, the one
  frame of the whole pipeline. The annotations of CUB-200-2011, Stanford Dogs and
  Stanford Cars (boxes, part keypoints, segmentation PNGs) are coordinates on the stored
  array: the readers check them against the size in the file's header, the segmentation
  PNGs have the stored size, and the original training codes read images through PIL
  without EXIF transposition (torchvision's default loader). Turning an image by its tag
  would move its pixels away from its boxes, parts and mask. A photo of a ``folder``
  dataset with an orientation tag is therefore seen as stored (possibly on its side), as
  those codes see it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.errors import ImageDecodeError, UnsafePathError

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_GREY_MODES = frozenset({"1", "L"})


# --------------------------------------------------------------------------- paths


def resolve_inside(
    root: Path, relative: str, *, listing: str = "", line: Optional[int] = None
) -> Path:
    """Join ``relative`` (a POSIX path from a listing) to ``root`` and resolve it.

    Rejects what ``check_relative`` rejects, and symlinks that lead out of ``root``,
    with ``UnsafePathError`` naming ``listing`` and ``line`` when given. The file
    need not exist.
    """
    pure = check_relative(relative, listing=listing, line=line)
    base = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(base, *pure.parts))
    if resolved != base and not resolved.startswith(base.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"{_where(listing, line)}path '{relative}' escapes the dataset root (through a symlink)"
        )
    return Path(resolved)


def check_relative(
    relative: str, *, listing: str = "", line: Optional[int] = None
) -> PurePosixPath:
    """Check a listed path by its text alone: not empty, not absolute, no ``..``."""
    where = _where(listing, line)
    if relative.strip() == "":
        raise UnsafePathError(f"{where}empty path")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or _has_drive(relative):
        raise UnsafePathError(
            f"{where}path '{relative}' is absolute; listed paths must be relative to "
            "the dataset root"
        )
    if ".." in pure.parts:
        raise UnsafePathError(f"{where}path '{relative}' escapes the dataset root")
    return pure


def _where(listing: str, line: Optional[int]) -> str:
    if listing and line is not None:
        return f"{listing} line {line}: "
    if listing:
        return f"{listing}: "
    if line is not None:
        return f"line {line}: "
    return ""


def _has_drive(relative: str) -> bool:
    """A Windows drive or UNC prefix (``C:\\x``, ``\\\\server``) also counts as absolute."""
    has_drive = (
        len(relative) >= 3 and relative[0].isalpha() and relative[1] == ":" and relative[2] in "/\\"
    )
    return has_drive or relative.startswith("\\")


# ------------------------------------------------------------------------ decoding


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file to an H x W x 3 uint8 C-contiguous RGB array."""
    image = _decode(Path(path))
    try:
        rgb = _to_rgb(image)
    except Exception as exc:  # an odd mode PIL cannot convert
        raise ImageDecodeError(str(path), f"cannot convert to RGB ({_short(exc)})") from None
    finally:
        image.close()
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def read_mask_png(path: Path) -> np.ndarray:
    """Decode a segmentation mask (grey or colour) to an H x W bool array, >127 = object.

    Alpha is ignored; for colour masks the brightest channel decides, so a white,
    red or any other bright object on black counts as object.
    """
    image = _decode(Path(path))
    try:
        grey = _to_mask_grey(image)
    except Exception as exc:
        raise ImageDecodeError(str(path), f"cannot read as mask ({_short(exc)})") from None
    finally:
        image.close()
    return np.ascontiguousarray(grey > 127)


def pixel_hash(rgb: np.ndarray) -> str:
    """Content hash of decoded pixels, shape and dtype: blake2b, 32 hex characters."""
    array = np.ascontiguousarray(rgb)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}|{array.shape}|".encode("ascii"))
    digest.update(array.data)
    return digest.hexdigest()


def _decode(path: Path) -> Image.Image:
    """Open and force-load ``path``; every failure becomes ``ImageDecodeError``."""
    name = str(path)
    _check_file(path)
    # Truncated files must fail, never come back partly grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image = Image.open(path)
        try:
            _refuse_bomb(image, name)
            image.load()
        except BaseException:
            image.close()
            raise
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"decompression bomb ({_short(exc)})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image (cannot identify format)") from None
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except MemoryError:
        raise ImageDecodeError(name, "too large to decode (out of memory)") from None
    except EOFError:
        raise ImageDecodeError(name, "truncated image") from None
    except Exception as exc:
        if "truncat" in str(exc).lower():
            raise ImageDecodeError(name, "truncated image") from None
        raise ImageDecodeError(name, f"corrupt image ({_short(exc)})") from None
    return image


def _refuse_bomb(image: Image.Image, name: str) -> None:
    """Refuse images above PIL's MAX_IMAGE_PIXELS (PIL itself only warns up to 2x)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        raise ImageDecodeError(name, f"decompression bomb ({width}x{height} pixels, limit {limit})")


def _check_file(path: Path) -> None:
    name = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file ({_short(exc)})") from None
    if path.is_dir():
        raise ImageDecodeError(name, "is a directory, not an image file")
    if info.st_size == 0:
        raise ImageDecodeError(name, "empty file")


# ------------------------------------------------------------------- mode handling


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _GREY_MODES:
        return np.asarray(image.convert("RGB"))
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_sixteen_bit_to_uint8(np.asarray(image)))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image)))
    if mode == "P" and "transparency" not in image.info:
        return np.asarray(image.convert("RGB"))
    if mode in _ALPHA_MODES or mode == "P":
        return _composite_over_white(np.asarray(image.convert("RGBA")))
    # CMYK, YCbCr, LAB, HSV and anything else PIL can convert itself.
    return np.asarray(image.convert("RGB"))


def _to_mask_grey(image: Image.Image) -> np.ndarray:
    """One uint8 channel per pixel for thresholding; alpha is dropped."""
    mode = image.mode
    if mode in _GREY_MODES:
        return np.asarray(image.convert("L"))
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_uint8(np.asarray(image))
    if mode == "F":
        return _float_to_uint8(np.asarray(image))
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel("L"))
    rgb = (
        np.asarray(image.convert("RGBA"))[..., :3]
        if mode in _ALPHA_MODES or mode == "P"
        else np.asarray(image.convert("RGB"))
    )
    return rgb.max(axis=2)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by dividing by 257 and rounding (exact for 257 * k)."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    data = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if low >= 0.0 and high <= 1.0:
        scaled = data * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = data
    else:
        scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    colour = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    blended = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
