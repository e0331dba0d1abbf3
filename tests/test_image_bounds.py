"""Cheap files that would be costly to decode: the pixel cap is read from the header, deep pixels
are scaled without full-size float copies, a caller that resizes gets a smaller decode, and only
the accepted formats are decoded at all."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from imgclf.data.images import ImageDecodeError, load_image
from imgclf.scrape.downloader import DownloadSettings, Rejected, prepare


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def deep_png() -> bytes:
    """16 Mpx of 16-bit grayscale in about 40 KB: a sparse grid of bright dots."""
    pixels = np.zeros((4000, 4000), np.uint16)
    pixels[::9, ::7] = 60000
    return encode(Image.fromarray(pixels))


@pytest.fixture(scope="module")
def float_tiff() -> bytes:
    pixels = np.zeros((4000, 4000), np.float32)
    pixels[::9, ::7] = 1000.0
    return encode(Image.fromarray(pixels, mode="F"), "TIFF", compression="tiff_adobe_deflate")


def numpy_peak(data: bytes, **options) -> tuple[Image.Image, int]:
    """The decoded image and the most memory Python and numpy held meanwhile (Pillow's own
    pixel buffers are not traced: what this sees is the conversion's copies)."""
    tracemalloc.start()
    try:
        image = load_image(data, **options)
        return image, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["deep_png", "float_tiff"])
def test_deep_pixels_are_scaled_without_full_size_copies(request, name):
    data = request.getfixturevalue(name)
    assert len(data) < 500_000
    image, peak = numpy_peak(data)
    assert (image.size, image.mode) == ((4000, 4000), "RGB")
    # One float64 copy of 16 Mpx is 128 MB; a band and its scaled copy are 4 MB each.
    assert peak < 24_000_000
    expected = 60000 // 257 if name == "deep_png" else int(1000 * 255 / 65535)
    assert image.getpixel((0, 0)) == (expected,) * 3 and image.getpixel((1, 1)) == (0, 0, 0)


def test_deep_values_scale_as_before():
    deep = Image.fromarray(np.array([[0, 257, 65535, 32896]], np.uint16))
    assert np.asarray(load_image(encode(deep)).getchannel(0)).ravel().tolist() == [0, 1, 255, 128]
    floats = np.array([[0.0, 100.5, 255.0, -3.0, np.nan, np.inf]], np.float32)
    # Infinity is over 255: the image is read on a 0..65535 scale, where only infinity is bright.
    values = (
        np.asarray(load_image(encode(Image.fromarray(floats, mode="F"), "TIFF")).getchannel(0))
        .ravel()
        .tolist()
    )
    assert values == [0, 0, 0, 0, 0, 255]
    small = np.array([[0.0, 100.5, 255.0, -3.0]], np.float32)
    values = (
        np.asarray(load_image(encode(Image.fromarray(small, mode="F"), "TIFF")).getchannel(0))
        .ravel()
        .tolist()
    )
    assert values == [0, 100, 255, 0]


def test_the_pixel_cap_is_checked_before_decoding(deep_png):
    with pytest.raises(ImageDecodeError, match="4000x4000 pixels is over the limit of 4,000,000"):
        load_image(deep_png, max_pixels=4_000_000)
    with pytest.raises(Rejected) as info:
        prepare(deep_png, DownloadSettings(max_pixels=4_000_000))
    assert info.value.reason == "bomb"


@pytest.mark.parametrize(("fmt", "expected"), [("JPEG", (500, 375)), ("PNG", (334, 250))])
def test_a_caller_that_resizes_gets_a_smaller_decode(fmt, expected):
    rows, columns = np.indices((1500, 2000))
    photo = Image.fromarray(np.dstack([rows % 256, columns % 256, (rows + columns) % 256]).astype(np.uint8))
    data = encode(photo, fmt)
    assert load_image(data).size == (2000, 1500)
    small = load_image(data, min_side=224)
    # JPEG: decoded at 1/4 scale (1/8 would be under 224); PNG: reduced by 6 after decoding.
    assert small.size == expected and small.mode == "RGB"
    assert min(load_image(data, min_side=1000).size) >= 1000


def test_exif_orientation_survives_the_smaller_decode():
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    data = encode(Image.new("RGB", (1600, 1200), "olive"), "JPEG", exif=exif)
    assert load_image(data).size == (1200, 1600)
    assert load_image(data, min_side=224).size == (300, 400)


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("ICO", "RGBA"),
        ("TGA", "RGB"),
        ("PCX", "RGB"),
        ("SGI", "RGB"),
        ("QOI", "RGB"),
        ("EPS", "RGB"),
        ("XBM", "1"),
    ],
)
def test_formats_outside_the_allow_list_are_refused(tmp_path, fmt, mode):
    data = encode(Image.new(mode, (64, 64)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would decode it
    with pytest.raises(ImageDecodeError) as info:
        load_image(data)
    assert str(info.value) == (
        "uploaded data: not an image of an accepted format; use a JPEG, PNG, GIF, WEBP, BMP or TIFF file"
    )
    path = tmp_path / f"picture.{fmt.lower()}"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match=f"{path}: not an image of an accepted format"):
        load_image(path)
    with pytest.raises(Rejected) as rejected:
        prepare(data, DownloadSettings())
    assert rejected.value.reason == "not_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "PPM"])
def test_the_accepted_formats_decode(fmt):
    image = load_image(encode(Image.new("RGB", (64, 48), "navy"), fmt))
    assert (image.size, image.mode) == ((64, 48), "RGB")
