"""Fetch candidate image URLs concurrently and keep the ones that are real, new, usable pictures.

Each URL is fetched with connect/read timeouts, an overall deadline and a byte limit (streamed, so
an oversized body is abandoned, whatever its Content-Length says). What it *is* is decided by
decoding it with Pillow, never by the extension or the Content-Type: it is refused when it is not
an image, damaged, a decompression bomb or too small, and otherwise re-encoded as an RGB JPEG,
hashed and offered to the dataset store, which refuses exact and near duplicates.

Downloads run ``concurrency`` at a time, but never more than the images still missing: a class
that needs three more images does not fetch sixteen.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from imgclf.hashing import perceptual_hash, sha256_bytes
from imgclf.images import ImageDecodeError, load_image
from imgclf.scrape.engines.base import ImageHit
from imgclf.scrape.store import PreparedImage

log = logging.getLogger(__name__)

# Every way a candidate can fail, in the order the summary shows them.
REASONS = (
    "http_error",
    "timeout",
    "too_large",
    "not_image",
    "damaged",
    "bomb",
    "too_small",
    "duplicate_exact",
    "duplicate_near",
)


class Rejected(Exception):
    """A candidate that will not be saved; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class DownloadSettings:
    concurrency: int = 16
    connect_timeout_s: float = 10.0
    timeout_s: float = 20.0
    deadline_s: float = 60.0
    max_bytes: int = 20_000_000
    max_pixels: int = 64_000_000
    min_size: int = 32
    max_redirects: int = 5
    jpeg_quality: int = 95
    verify: bool | str = True
    user_agent: str = "Mozilla/5.0"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DownloadSettings:
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in dict(cfg).items() if key in names})


def make_client(settings: DownloadSettings) -> httpx.AsyncClient:
    """One HTTP client (connection pool) for a whole run."""
    verify: bool | ssl.SSLContext = settings.verify is not False
    if isinstance(settings.verify, str):
        # A CA bundle path, for hosts with a private CA (and the test fixture).
        verify = ssl.create_default_context(cafile=settings.verify)
    return httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=settings.max_redirects,
        timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
        verify=verify,
        headers={
            "User-Agent": settings.user_agent,
            "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
        },
        limits=httpx.Limits(max_connections=max(settings.concurrency, 1) * 2),
    )


async def fetch(client: httpx.AsyncClient, url: str, settings: DownloadSettings) -> tuple[bytes, str]:
    """The body of ``url`` and the URL it ended at, or :class:`Rejected`."""
    try:
        return await asyncio.wait_for(_fetch(client, url, settings.max_bytes), settings.deadline_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise Rejected("timeout", "no answer within the timeouts") from None
    except httpx.TooManyRedirects:
        raise Rejected("http_error", "too many redirects") from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        raise Rejected("http_error", type(exc).__name__) from None


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int) -> tuple[bytes, str]:
    async with client.stream("GET", url) as response:
        if response.status_code >= 400:
            raise Rejected("http_error", f"HTTP {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise Rejected("too_large", f"{declared} bytes declared")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise Rejected("too_large", f"over {max_bytes} bytes")
        return bytes(body), str(response.url)


def prepare(data: bytes, settings: DownloadSettings) -> PreparedImage:
    """Decide what the bytes are and turn them into the JPEG we store (CPU work, run in a thread)."""
    width, height = _probe_size(data)
    if width * height > settings.max_pixels:
        raise Rejected("bomb", f"{width}x{height} pixels")
    if min(width, height) < settings.min_size:
        raise Rejected("too_small", f"{width}x{height}")
    try:
        image = load_image(data, max_pixels=settings.max_pixels)
    except ImageDecodeError as exc:
        raise Rejected("damaged", str(exc)) from None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=settings.jpeg_quality)
    jpeg = buffer.getvalue()
    return PreparedImage(
        jpeg=jpeg,
        sha256=sha256_bytes(jpeg),
        source_sha256=sha256_bytes(data),
        phash=perceptual_hash(image),
        width=image.width,
        height=image.height,
    )


def _probe_size(data: bytes) -> tuple[int, int]:
    """Read the header only: is it an image at all, and how big would it be decoded?"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                return probe.size
    except Image.DecompressionBombError as exc:
        raise Rejected("bomb", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise Rejected("not_image", f"{len(data)} bytes Pillow cannot identify") from None


# Receives a prepared image; returns None when it was saved, or a rejection reason.
Sink = Callable[[ImageHit, str, PreparedImage], "str | None"]


class _Quota:
    """How many images are saved and in flight, so workers never fetch more than still needed."""

    def __init__(self, need: int) -> None:
        self.need = need
        self.saved = 0
        self.in_flight = 0
        self.changed = asyncio.Condition()

    def full(self) -> bool:
        return self.saved >= self.need

    def room(self) -> bool:
        return self.saved + self.in_flight < self.need


async def download(
    candidates: Iterable[ImageHit],
    need: int,
    sink: Sink,
    client: httpx.AsyncClient,
    settings: DownloadSettings,
    on_result: Callable[[str | None], None] = lambda reason: None,
) -> Counter:
    """Fetch candidates until ``need`` are saved or none are left.

    Returns counts: ``downloaded`` plus one entry per rejection reason. ``on_result`` is told of
    each outcome as it happens (None for a saved image), for progress bars.
    """
    counts: Counter = Counter()
    pending = iter(candidates)
    quota = _Quota(need)

    async def handle(hit: ImageHit) -> str | None:
        try:
            data, final_url = await fetch(client, hit.url, settings)
            image = await asyncio.to_thread(prepare, data, settings)
        except Rejected as rejected:
            log.debug("rejected %s: %s", hit.url, rejected)
            return rejected.reason
        return sink(hit, final_url, image)

    async def worker() -> None:
        while True:
            async with quota.changed:
                await quota.changed.wait_for(lambda: quota.full() or quota.room())
                hit = None if quota.full() else next(pending, None)
                if hit is None:
                    return
                quota.in_flight += 1
            saved = False
            try:
                reason = await handle(hit)
                saved = reason is None
            finally:
                async with quota.changed:
                    quota.in_flight -= 1
                    quota.saved += saved
                    quota.changed.notify_all()
            counts[reason or "downloaded"] += 1
            on_result(reason)

    if need > 0:
        await asyncio.gather(*(worker() for _ in range(max(settings.concurrency, 1))))
    return counts
