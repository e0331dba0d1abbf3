"""``images.load_image`` over the formats and pixel modes photos come in: every one decodes to the
RGB picture the model expects, with the pixels it shows, from bytes and from a file without an
extension (as the original tool's scraped photos are named)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf.data.images import ImageDecodeError, load_image

SIZE = (32, 24)
WHITE = (255, 255, 255)


def halves(mode: str, left, right) -> Image.Image:
    """A picture of ``mode``: ``left`` on its left half, ``right`` on its right half."""
    image = Image.new(mode, SIZE, left)
    image.paste(right, (SIZE[0] // 2, 0, SIZE[0], SIZE[1]))
    return image


def palette() -> Image.Image:
    image = halves("RGB", (200, 30, 30), (30, 30, 200)).quantize(colors=2)
    assert image.mode == "P"
    return image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# (format, the picture, what its two halves show in RGB, how far lossy coding may move a value)
CASES = {
    "PNG RGB": ("PNG", halves("RGB", (200, 30, 30), (30, 30, 200)), ((200, 30, 30), (30, 30, 200)), 0),
    "PNG RGBA, transparent on white": (
        "PNG",
        halves("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)),
        ((200, 30, 30), WHITE),
        0,
    ),
    "PNG L": ("PNG", halves("L", 40, 220), ((40,) * 3, (220,) * 3), 0),
    "PNG LA": ("PNG", halves("LA", (40, 255), (0, 0)), ((40,) * 3, WHITE), 0),
    "PNG 1-bit": ("PNG", halves("1", 0, 1), ((0,) * 3, WHITE), 0),
    "PNG palette": ("PNG", palette(), ((200, 30, 30), (30, 30, 200)), 0),
    "PNG 16-bit grey": ("PNG", halves("I;16", 0, 65535), ((0,) * 3, WHITE), 0),
    "JPEG RGB": ("JPEG", halves("RGB", (200, 30, 30), (30, 30, 200)), ((200, 30, 30), (30, 30, 200)), 12),
    "JPEG grey": ("JPEG", halves("L", 40, 220), ((40,) * 3, (220,) * 3), 6),
    "JPEG CMYK": ("JPEG", halves("CMYK", (0, 0, 0, 0), (0, 0, 0, 255)), (WHITE, (0,) * 3), 6),
    "progressive JPEG": (
        "JPEG",
        halves("RGB", (200, 30, 30), (30, 30, 200)),
        ((200, 30, 30), (30, 30, 200)),
        12,
    ),
    "GIF": ("GIF", palette(), ((200, 30, 30), (30, 30, 200)), 0),
    "WEBP lossless RGBA": (
        "WEBP",
        halves("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)),
        ((200, 30, 30), WHITE),
        0,
    ),
    "TIFF RGB": ("TIFF", halves("RGB", (200, 30, 30), (30, 30, 200)), ((200, 30, 30), (30, 30, 200)), 0),
    "TIFF CMYK": ("TIFF", halves("CMYK", (0, 0, 0, 0), (0, 0, 0, 255)), (WHITE, (0,) * 3), 0),
    "TIFF float": ("TIFF", halves("F", 40.0, 220.0), ((40,) * 3, (220,) * 3), 0),
    "BMP": ("BMP", halves("RGB", (200, 30, 30), (30, 30, 200)), ((200, 30, 30), (30, 30, 200)), 0),
    "PPM": ("PPM", halves("RGB", (200, 30, 30), (30, 30, 200)), ((200, 30, 30), (30, 30, 200)), 0),
}
PARAMS = {"progressive JPEG": {"progressive": True, "quality": 95}, "WEBP lossless RGBA": {"lossless": True}}


def centres(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(image, dtype=np.int16)
    row = SIZE[1] // 2
    return pixels[row, SIZE[0] // 4], pixels[row, 3 * SIZE[0] // 4]


@pytest.mark.parametrize("case", list(CASES))
def test_every_format_and_mode_decodes_to_the_rgb_it_shows(case, tmp_path):
    fmt, picture, (left, right), tolerance = CASES[case]
    data = encode(picture, fmt, **PARAMS.get(case, {}))
    path = tmp_path / "photo"  # no extension: the format comes from the bytes
    path.write_bytes(data)
    for source in (data, path):
        image = load_image(source)
        assert (image.mode, image.size) == ("RGB", SIZE), case
        got_left, got_right = centres(image)
        assert np.abs(got_left - left).max() <= tolerance, (case, got_left.tolist())
        assert np.abs(got_right - right).max() <= tolerance, (case, got_right.tolist())


def test_an_animation_is_its_first_frame():
    frames = [Image.new("RGB", SIZE, colour).quantize(colors=2) for colour in ((200, 30, 30), (30, 30, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    left, _ = centres(load_image(buffer.getvalue()))
    assert left.tolist() == [200, 30, 30]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file; send a JPEG, PNG"),
        (b"this is not a picture\n" * 20, "not an image of an accepted format; use a JPEG, PNG"),
    ],
)
def test_what_is_not_an_image_is_one_clear_error(data, message):
    with pytest.raises(ImageDecodeError, match=f"uploaded data: {message}"):
        load_image(data)


def test_a_truncated_file_is_an_error_not_a_half_grey_picture(tmp_path):
    data = encode(halves("RGB", (200, 30, 30), (30, 30, 200)).resize((640, 480)), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=str(path)):
        load_image(path)
