"""Decode any image a user or the web hands us into the RGB picture the model expects.

One function serves the dataset, the CLI, the server, the scraper and the review tool, so that
all of them agree on what an image is: whatever Pillow can decode, first frame of an animation,
EXIF orientation applied, 16-bit and CMYK scaled to 8-bit RGB, transparency flattened on white.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.errors import ImgclfError

# Pillow warns above MAX_IMAGE_PIXELS and only errors at twice that; a bomb is an error here.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(ImgclfError):
    """The bytes are not an image we can use (not an image, truncated, a bomb, ...)."""


def _describe(source: str | os.PathLike | bytes) -> str:
    return "uploaded data" if isinstance(source, (bytes, bytearray)) else str(source)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
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


def load_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return an RGB ``PIL.Image`` or raise :class:`ImageDecodeError` saying why not."""
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
            with Image.open(stream) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} "
                        "(possible decompression bomb); resize the image first"
                    )
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{name}: not an image Pillow can decode; use a JPEG, PNG, GIF, WEBP or TIFF file"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: damaged or truncated image ({exc})") from None


def is_image_file(path: str | os.PathLike) -> bool:
    """Cheap check used when listing a dataset: does the name look like an image?"""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"}
)
