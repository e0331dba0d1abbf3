"""Decode any image a user or the web hands us into the RGB picture the model expects.

One function serves the dataset, the CLI, the server, the scraper and the review tool, so that
all of them agree on what an image is: one of :data:`ACCEPTED_FORMATS`, first frame of an
animation, EXIF orientation applied, 16-bit, float and CMYK scaled to 8-bit RGB, transparency
flattened on white.

A small file can be costly to decode (a 124 KB 16-bit PNG of 64 Mpx), so the cost is bounded
before any pixel is decoded: the pixel count is read from the header and checked against
``max_pixels``, deep pixels are scaled to 8 bits a band at a time, and a caller that resizes
anyway can ask for ``min_side`` to have JPEGs decoded at a reduced scale and others reduced early.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.errors import ImgclfError

# Pillow warns above MAX_IMAGE_PIXELS and only errors at twice that; a bomb is an error here.
DEFAULT_MAX_PIXELS = 64_000_000

# The formats of photos on the web and on disk. Pillow's other decoders (PSD, EPS through
# Ghostscript, ICO, FITS, ...) are never run on what a user or a web page hands us: each one is
# more code a crafted file can reach, for pictures nobody trains on.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "PPM", "AVIF")

_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Deep pixels are scaled in bands of this many, so no full-size float copy is ever made.
_BAND_PIXELS = 1 << 20


class ImageDecodeError(ImgclfError):
    """The bytes are not an image we can use (not an image, truncated, a bomb, ...)."""


def _describe(source: str | os.PathLike | bytes) -> str:
    return "uploaded data" if isinstance(source, (bytes, bytearray)) else str(source)


def _to_8_bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float pixels scaled to an "L" image, a band at a time."""
    if img.mode not in _DEEP_MODES:
        return img
    sixteen = img.mode.startswith("I;16")
    top = 65535.0 if sixteen or (img.getextrema()[1] or 0) > 255 else 255.0
    out = Image.new("L", img.size)
    rows = max(1, _BAND_PIXELS // max(img.width, 1))
    for y in range(0, img.height, rows):
        band = np.asarray(img.crop((0, y, img.width, min(y + rows, img.height))))
        if sixteen:
            scaled = band // 257  # exactly floor(value * 255 / 65535)
        else:
            scaled = np.multiply(band, np.float32(255.0 / top), dtype=np.float32)
            np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            np.clip(scaled, 0, 255, out=scaled)
        out.paste(Image.fromarray(scaled.astype(np.uint8), mode="L"), (0, y))
    return out


def _shrink(img: Image.Image, min_side: int | None) -> Image.Image:
    """Reduced by a whole factor while the shorter side stays at least ``min_side``."""
    factor = min(img.size) // min_side if min_side else 1
    if factor < 2 or img.mode in ("1", "P"):  # modes Image.reduce does not take
        return img
    return img.reduce(factor)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_image(
    source: str | os.PathLike | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Return an RGB ``PIL.Image`` or raise :class:`ImageDecodeError` saying why not.

    ``max_pixels`` is checked from the header, before decoding. ``min_side`` (optional, for a
    caller that resizes to that shorter side anyway) lets the image come back smaller than it
    is, never with its shorter side under ``min_side``: JPEGs are decoded at 1/2, 1/4 or 1/8
    scale, the others reduced before conversion.
    """
    name = _describe(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageDecodeError(f"{name}: empty file; send a JPEG, PNG, GIF, WEBP or TIFF image")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if not stream.exists():
            raise ImageDecodeError(f"{name}: no such file; check the path")
        if not stream.is_file():
            raise ImageDecodeError(f"{name}: not a file; give the path of an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=ACCEPTED_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} "
                        "(possible decompression bomb); resize the image first"
                    )
                img.seek(0)
                if min_side:
                    img.draft("RGB", (min_side, min_side))
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy when upright
                return _to_rgb(_shrink(_to_8_bit(img), min_side))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{name}: not an image of an accepted format; use a JPEG, PNG, GIF, WEBP, BMP or TIFF file"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: damaged or truncated image ({exc})") from None


def is_image(path: str | os.PathLike) -> bool:
    """Pillow recognises the file and its header holds together (pixels are decoded later): what a
    file is, by its content, never by its name (a photo saved without an extension is an image, a
    text file named ``.jpg`` is not). Every listing of a dataset (training, the review, the
    scraper's counts) decides by this."""
    path = Path(path)
    stat = path.stat()
    return _header_check(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _header_check(path: str, size: int, mtime_ns: int) -> bool:
    # Keyed by size and mtime: sweeps list the same unchanged files once per trial.
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # Pillow raises many types for bad files; all mean "not an image we can use"
        return False
