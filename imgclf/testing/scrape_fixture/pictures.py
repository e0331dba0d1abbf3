"""The faulty image host's files: good pictures, and every kind of bad answer the web gives.

Pictures are random block patterns, so their perceptual hashes are far apart (no accidental near
duplicates) while a resized copy stays near its original.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Route:
    """How the image host answers one path."""

    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    delay_s: float = 0.0
    redirect_to: str | None = None
    send_length: bool = True  # False: no Content-Length, body ends when the connection closes


def picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A distinct RGB picture: an 8x6 grid of random colours, scaled up."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells, "RGB").resize(size, Image.Resampling.NEAREST)


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _animated_gif(seed: int) -> bytes:
    frames = [picture(seed), picture(seed + 1000)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _bomb() -> bytes:
    """A 12000x12000 PNG of a few kilobytes: 144 megapixels once decoded."""
    return encode(Image.new("1", (12000, 12000)), "PNG", optimize=False)


def build_routes(oversize_bytes: int) -> dict[str, Route]:
    """Paths under /img/ and their answers. Seeds 1-99 are pictures nobody else uses."""
    photos = {f"photo{n}.jpg": Route(encode(picture(n), quality=90)) for n in range(1, 10)}
    soccer = {f"soccer{n}.jpg": Route(encode(picture(100 + n), quality=90)) for n in range(1, 6)}
    extra = {f"extra{n}.jpg": Route(encode(picture(200 + n), quality=90)) for n in range(1, 21)}
    alpha = picture(41).convert("RGBA")
    alpha.putalpha(128)
    duplicate = encode(picture(42), quality=90)
    truncated = encode(picture(43), quality=90)
    oversize = b"\xff\xd8\xff\xe0" + bytes(oversize_bytes)
    routes = {
        **photos,
        **soccer,
        **extra,
        "missing.jpg": Route(status=404, body=b"not found", content_type="text/plain"),
        "fake.jpg": Route(b"<!doctype html><title>Hotlinking not allowed</title>"),
        "truncated.jpg": Route(truncated[: len(truncated) * 2 // 3]),
        "tiny.png": Route(encode(Image.new("RGB", (1, 1), "red"), "PNG"), "image/png"),
        "slow.jpg": Route(encode(picture(44)), delay_s=4.0),
        "redirect.jpg": Route(status=302, redirect_to="/img/target.jpg"),
        "target.jpg": Route(encode(picture(45), quality=90)),
        "dup-a.jpg": Route(duplicate),
        "dup-b.jpg": Route(duplicate),
        "alpha.png": Route(encode(alpha, "PNG"), "image/png"),
        "photo.webp": Route(encode(picture(46), "WEBP", quality=90), "image/webp"),
        "anim.gif": Route(_animated_gif(47), "image/gif"),
        "bomb.png": Route(_bomb(), "image/png"),
        "huge.jpg": Route(oversize),
        "huge-stream.jpg": Route(oversize, send_length=False),
        # Copies of train pictures under new URLs, for the cross-split duplicate checks.
        "photo1-resized.jpg": Route(encode(picture(1, (86, 65)).convert("RGB"), quality=70)),
        "photo3-copy.jpg": photos["photo3.jpg"],
    }
    return routes
