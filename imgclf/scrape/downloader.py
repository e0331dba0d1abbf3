"""Fetch candidate image URLs concurrently and keep the ones that are real, new, usable pictures.

The URLs come from result pages, which anyone can write, so the downloader reaches only the public
internet: each host is resolved, every address it resolves to must be global, and the request is
sent to the address that was checked (the URL's host still names the Host header and the TLS
certificate), so a name that resolves differently a second time (DNS rebinding) gains nothing.
Redirects are followed here, a bounded number of times, each hop checked the same way.

Each URL is fetched with connect/read timeouts, an overall deadline and a byte limit (streamed, so
an oversized body is abandoned, whatever its Content-Length says; a body compressed although we
asked for ``identity`` is counted as it inflates). What it *is* is decided by decoding it with
Pillow, never by the extension or the Content-Type: it is refused when it is not an image, damaged,
a decompression bomb or too small, and otherwise re-encoded as an RGB JPEG, hashed and offered to
the dataset store, which refuses exact and near duplicates.

Downloads run ``concurrency`` at a time, but never more than the images still missing: a class
that needs three more images does not fetch sixteen. Decodes in flight hold at most
``max_pixels`` pixels together, so sixteen large images are decoded a few at a time, not at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import socket
import ssl
import warnings
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from imgclf.data.hashing import perceptual_hash, sha256_bytes
from imgclf.data.images import ACCEPTED_FORMATS, ImageDecodeError, load_image
from imgclf.scrape.engines.base import ImageHit, is_disguised_address, url_problem
from imgclf.scrape.store import PreparedImage

log = logging.getLogger(__name__)

# Every way a candidate can fail, in the order the summary shows them.
REASONS = (
    "forbidden_host",
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
    allow_private_hosts: bool = False  # loopback, private, link-local: only for a local test fixture

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
        timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
        verify=verify,
        headers={
            "User-Agent": settings.user_agent,
            "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
            "Accept-Encoding": "identity",
        },
        # Requests go to checked addresses, so the pool is keyed by address, not host name: a
        # kept-alive connection verified for one host must not carry another host's request.
        limits=httpx.Limits(max_connections=max(settings.concurrency, 1) * 2, max_keepalive_connections=0),
    )


# The addresses a host name resolves to (injectable, for tests that play a rebinding resolver).
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# IPv6 prefixes that carry an IPv4 address a gateway may forward to (NAT64, RFC 6052).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: str) -> bool:
    """Is ``address`` on the public internet, and so is any IPv4 address it carries?"""
    ip = ipaddress.ip_address(address)
    carried: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        carried += [a for a in (ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())) if a is not None]
        if ip in _NAT64:
            carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(a.is_global and not (a.is_multicast or a.is_reserved) for a in carried)


async def fetch(
    client: httpx.AsyncClient, url: str, settings: DownloadSettings, resolver: Resolver = resolve
) -> tuple[bytes, str]:
    """The body of ``url`` and the URL it ended at, or :class:`Rejected`."""
    try:
        return await asyncio.wait_for(_fetch(client, url, settings, resolver), settings.deadline_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise Rejected("timeout", "no answer within the timeouts") from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        raise Rejected("http_error", type(exc).__name__) from None


async def _fetch(
    client: httpx.AsyncClient, url: str, settings: DownloadSettings, resolver: Resolver
) -> tuple[bytes, str]:
    target = httpx.URL(_undisguised(url))
    for _ in range(settings.max_redirects + 1):
        response = await _send(client, target, settings, resolver)
        try:
            if not response.is_redirect:
                return await _body(response, settings.max_bytes), str(target)
            target = target.join(_undisguised(response.headers["location"]))
        finally:
            await response.aclose()
    raise Rejected("http_error", "too many redirects")


def _undisguised(url: str) -> str:
    """``url`` (or a redirect's Location), unless its host is an IPv4 address in disguise."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return url  # httpx names what is wrong with it
    if host and is_disguised_address(host):
        raise Rejected("forbidden_host", f"{host} is an address in disguise")
    return url


async def _send(
    client: httpx.AsyncClient, url: httpx.URL, settings: DownloadSettings, resolver: Resolver
) -> httpx.Response:
    """GET ``url`` from an address of its host that was checked, trying each address in turn."""
    problem = url_problem(str(url), ())
    if problem is not None:
        raise Rejected("http_error", f"{problem} URL {url}")
    host = url.raw_host.decode("ascii")
    addresses = await resolver(host, url.port or (443 if url.scheme == "https" else 80))
    if not addresses:
        raise Rejected("http_error", f"{host} has no address")
    if not settings.allow_private_hosts:
        for address in addresses:
            if not is_public_address(address):
                raise Rejected("forbidden_host", f"{host} resolves to {address}, not a public address")
    for address in addresses[:-1]:
        with contextlib.suppress(httpx.ConnectError):
            return await client.send(_pinned(client, url, address), stream=True)
    return await client.send(_pinned(client, url, addresses[-1]), stream=True)


def _pinned(client: httpx.AsyncClient, url: httpx.URL, address: str) -> httpx.Request:
    """A GET of ``url`` connected to ``address``, with the Host header and TLS name of its host."""
    return client.build_request(
        "GET",
        url.copy_with(host=address),
        headers={"Host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": url.raw_host.decode("ascii")},
    )


async def _body(response: httpx.Response, max_bytes: int) -> bytes:
    if response.status_code >= 400:
        raise Rejected("http_error", f"HTTP {response.status_code}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise Rejected("too_large", f"{declared} bytes declared")
    encoding = response.headers.get("content-encoding", "").strip().lower() or "identity"
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise Rejected("http_error", f"Content-Encoding {encoding}, not asked for")
    # httpx would inflate each chunk whole (a megabyte of gzip is a gigabyte of zeros); zlib's
    # max_length stops one byte past the limit instead.
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding != "identity" else None
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body += inflate.decompress(chunk, max_bytes + 1 - len(body)) if inflate else chunk
            if len(body) > max_bytes:
                raise Rejected("too_large", f"over {max_bytes} bytes")
    except zlib.error as exc:
        raise Rejected("damaged", f"{encoding} body does not inflate ({exc})") from None
    return bytes(body)


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
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as probe:
                return probe.size
    except Image.DecompressionBombError as exc:
        raise Rejected("bomb", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise Rejected("not_image", f"{len(data)} bytes not in a format we accept") from None


# Receives a prepared image; returns None when it was saved, or a rejection reason.
Sink = Callable[[ImageHit, str, PreparedImage], "str | None"]


class _PixelBudget:
    """Decodes in flight hold at most ``limit`` pixels together; a larger one waits to run alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        async with self.changed:
            await self.changed.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            async with self.changed:
                self.used -= pixels
                self.changed.notify_all()


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
    resolver: Resolver = resolve,
) -> Counter:
    """Fetch candidates until ``need`` are saved or none are left.

    Returns counts: ``downloaded`` plus one entry per rejection reason. ``on_result`` is told of
    each outcome as it happens (None for a saved image), for progress bars.
    """
    counts: Counter = Counter()
    pending = iter(candidates)
    quota = _Quota(need)
    budget = _PixelBudget(settings.max_pixels)

    async def handle(hit: ImageHit) -> str | None:
        try:
            data, final_url = await fetch(client, hit.url, settings, resolver)
            width, height = await asyncio.to_thread(_probe_size, data)
            async with budget.hold(width * height):
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
