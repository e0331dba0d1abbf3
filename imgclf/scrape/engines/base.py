"""What every image search engine does, and the loop they share.

An engine opens its result page in a browser tab, gets past any consent page, reads full-size
image URLs from the page's data (``harvest``), and asks for more (``more``: scroll, "more
results") until it has enough or the page stops growing. ``fallback`` is the slow path for when
the data yields nothing. A page that refuses automated searches (CAPTCHA, JavaScript challenge,
"unusual traffic", HTTP 429) raises :class:`BlockedError` naming the kind of block at once: the
caller backs off from that engine, never retries in a loop. ``related`` reads the searches the
engine suggests beside its results (chips, "related searches"), for topping up weak classes.
Each search keeps :class:`SearchStats`: every result URL it read, and why it skipped the ones it
did not use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from playwright.async_api import BrowserContext, Page, Request, Response
from playwright.async_api import Error as PlaywrightError

from imgclf.errors import ImgclfError

_POLL_S = 0.2
_QUIET_S = 0.5  # after a background request ends, time for the page to show its results
_BACKGROUND = ("xhr", "fetch")


# The kinds of block the summary names.
CAPTCHA = "CAPTCHA"
JS_CHALLENGE = "JavaScript challenge"
UNUSUAL_TRAFFIC = "unusual traffic page"


class BlockedError(ImgclfError):
    """The engine refused the search; ``kind`` says how (CAPTCHA, JavaScript challenge, HTTP 429)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class EngineError(ImgclfError):
    """The engine's page could not be used (did not load, consent could not be given, ...)."""


@dataclass(frozen=True)
class ImageHit:
    """A full-size image URL and, when the engine says, the page it appears on."""

    url: str
    page_url: str | None = None


@dataclass(frozen=True)
class SearchSettings:
    max_scrolls: int = 15  # "more results" rounds per search
    scroll_pause_s: float = 2.0  # how long to wait for a round to bring new results
    stall_scrolls: int = 2  # rounds in a row without new results before giving up
    page_timeout_s: float = 30.0  # navigation and click timeout
    tile_wait_s: float = 2.0  # fallback: how long a clicked tile may take to show its image
    tile_click_limit: int = 50  # fallback: most tiles clicked per search

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SearchSettings:
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in dict(cfg).items() if key in names})


def host_matches(host: str, domains: Iterable[str]) -> bool:
    """Is ``host`` one of ``domains`` or a subdomain of one?"""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


URL_PROBLEMS = ("data_uri", "not_http", "bad_url", "numeric_host", "thumbnail_host")

# A last label that makes a URL parser read the whole host as an IPv4 address (WHATWG URL
# standard, "ends in a number"), however it is spelled.
_NUMBER_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


def is_disguised_address(host: str) -> bool:
    """Is ``host`` an IPv4 address not written in dotted decimal (2130706433, 0x7f.1, 0177.0.0.1,
    127.1)? Resolvers read these as addresses; nothing but a filter's evasion writes them so."""
    host = host.rstrip(".")
    if not _NUMBER_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


def url_problem(url: Any, ignore_domains: Iterable[str]) -> str | None:
    """Why ``url`` is not a full-size image candidate, or None when it is one.

    Reasons: ``data_uri`` (an inline thumbnail), ``not_http`` (relative, other scheme, not a
    string), ``bad_url`` (no host), ``numeric_host`` (an IPv4 address spelled as a number, in hex
    or octal), ``thumbnail_host`` (a host in ``ignore_domains``: the engine's own and its thumbnail
    servers). Whether the host's addresses are public is the downloader's check, after resolving.
    """
    if not isinstance(url, str):
        return "not_http"
    if url.startswith("data:"):
        return "data_uri"
    if not url.startswith(("http://", "https://")):
        return "not_http"
    try:
        host = urlsplit(url).hostname
    except ValueError:  # e.g. a malformed IPv6 literal
        return "bad_url"
    if not host:
        return "bad_url"
    if is_disguised_address(host):
        return "numeric_host"
    return "thumbnail_host" if host_matches(host, ignore_domains) else None


def is_image_candidate(url: Any, ignore_domains: Iterable[str]) -> bool:
    """An absolute http(s) URL on a host that is not the engine's own (thumbnails, assets)."""
    return url_problem(url, ignore_domains) is None


def hits_from_records(
    records: Iterable[Any],
    image_key: str,
    page_key: str,
    ignore_domains: Iterable[str],
    seen: dict[str, str | None] | None = None,
) -> list[ImageHit]:
    """The full-size images that JSON result records name (``record[image_key]``, with its page at
    ``record[page_key]``), in order, each once; records of another shape are passed over.

    ``seen`` (optional) receives every image URL read, mapped to why it was skipped or None.
    """
    seen = seen if seen is not None else {}
    hits: dict[str, ImageHit] = {}
    for record in records:
        url = record.get(image_key) if isinstance(record, dict) else None
        if not isinstance(url, str):
            continue
        problem = url_problem(url, ignore_domains)
        seen.setdefault(url, problem)
        if problem is None:
            page = record.get(page_key)
            # Some real results have an empty page: no page rather than a page called "".
            hits.setdefault(
                url, ImageHit(url, page if isinstance(page, str) and page.startswith("http") else None)
            )
    return list(hits.values())


@dataclass
class SearchStats:
    """What one search read: every distinct result URL, with the reason it was skipped (or None)."""

    urls: dict[str, str | None] = field(default_factory=dict)

    def note(self, url: str, reason: str | None) -> None:
        self.urls.setdefault(url, reason)

    def skip(self, url: str, reason: str) -> None:
        """A usable URL the caller did not want (already in the dataset, tried in this run)."""
        if self.urls.get(url) is None:
            self.urls[url] = reason

    @property
    def read(self) -> int:
        return len(self.urls)

    def named_images(self) -> bool:
        """Did the data name any full-size image (wanted or not)?"""
        return any(reason not in URL_PROBLEMS for reason in self.urls.values())

    @property
    def skipped(self) -> Counter:
        return Counter(reason for reason in self.urls.values() if reason)


async def page_text_matches(page: Page, pattern: re.Pattern) -> bool:
    """Does the visible text of the page match? (Visible text, so that scripts do not count.)"""
    try:
        text = await page.evaluate("() => document.body ? document.body.innerText : ''")
    except PlaywrightError:  # a page navigating away has no body to read; nothing to match
        return False
    return bool(pattern.search(text))


class _NetworkActivity:
    """Background requests of a page, so a slow batch of results is waited for, not missed."""

    def __init__(self, page: Page) -> None:
        self.in_flight = 0
        self.last_change = time.monotonic()
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _started(self, request: Request) -> None:
        if request.resource_type in _BACKGROUND:
            self.in_flight += 1
            self.last_change = time.monotonic()

    def _ended(self, request: Request) -> None:
        if request.resource_type in _BACKGROUND:
            self.in_flight = max(self.in_flight - 1, 0)
            self.last_change = time.monotonic()

    def waiter(self, pause_s: float) -> _Wait:
        return _Wait(self, pause_s)


class _Wait:
    """Over after ``pause_s`` once the page's background requests have been quiet for a moment;
    requests still running extend it up to three times ``pause_s`` (some pages poll forever)."""

    def __init__(self, network: _NetworkActivity, pause_s: float) -> None:
        now = time.monotonic()
        self.network = network
        self.soft_deadline = now + pause_s
        self.hard_deadline = now + 3 * pause_s

    def over(self) -> bool:
        now = time.monotonic()
        quiet = not self.network.in_flight and now - self.network.last_change >= _QUIET_S
        return now >= self.hard_deadline or (now >= self.soft_deadline and quiet)


class SearchEngine(ABC):
    """One image search engine, driven through a Playwright browser context."""

    name: ClassVar[str]

    def __init__(self, settings: SearchSettings, base_url: str, **options: Any) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.options = options
        self.stats = SearchStats()  # of the latest search

    async def search(
        self,
        context: BrowserContext,
        query: str,
        want: int,
        skip: Callable[[str], str | None] = lambda url: None,
        on_found: Callable[[int], None] = lambda count: None,
        on_related: Callable[[list[str]], None] | None = None,
    ) -> list[ImageHit]:
        """At least ``want`` new hits if the engine has them (fewer if not), in page order.

        ``skip(url)`` gives a reason (e.g. ``in_dataset``) for URLs the caller does not want; they
        do not count towards ``want``. ``on_related`` receives the searches the engine suggests.
        """
        self.stats = SearchStats()
        page = await context.new_page()
        page.set_default_timeout(self.settings.page_timeout_s * 1000)
        try:
            await self.open(page, query)
            if on_related is not None:
                on_related(await self.related(page, query))
            hits = await self._gather(page, want, skip, on_found)
            # The slow path is for data that names no image, not for results the caller has.
            if not hits and not self.stats.named_images():
                hits = [hit for hit in await self.fallback(page, want) if not self._skip(hit, skip)]
                on_found(len(hits))
            return hits
        finally:
            await page.close()

    def _skip(self, hit: ImageHit, skip: Callable[[str], str | None]) -> bool:
        self.stats.note(hit.url, None)
        reason = skip(hit.url)
        if reason:
            self.stats.skip(hit.url, reason)
        return bool(reason)

    async def _gather(self, page: Page, want: int, skip, on_found) -> list[ImageHit]:
        found: dict[str, ImageHit] = {}

        async def absorb() -> int:
            for hit in await self.harvest(page):
                if hit.url not in found and not self._skip(hit, skip):
                    found[hit.url] = hit
            return len(found)

        on_found(await absorb())
        network = _NetworkActivity(page)
        rounds = stalls = 0
        while len(found) < want and rounds < self.settings.max_scrolls:
            before = len(found)
            await self.more(page)
            rounds += 1
            wait = network.waiter(self.settings.scroll_pause_s)
            while await absorb() == before and not wait.over():
                await asyncio.sleep(_POLL_S)
            on_found(len(found))
            stalls = 0 if len(found) > before else stalls + 1
            if stalls >= self.settings.stall_scrolls:
                break
        return list(found.values())

    @abstractmethod
    async def open(self, page: Page, query: str) -> None:
        """Load the first result page for ``query``; raise BlockedError / EngineError."""

    @abstractmethod
    async def harvest(self, page: Page) -> list[ImageHit]:
        """Every full-size image the page's data names so far."""

    @abstractmethod
    async def more(self, page: Page) -> None:
        """Ask the page for more results (scroll, press "more results")."""

    async def fallback(self, page: Page, want: int) -> list[ImageHit]:
        """Slow path when the data named no image; engines without one find nothing."""
        return []

    async def related(self, page: Page, query: str) -> list[str]:
        """Other phrasings the engine suggests for ``query`` on its result page, best first."""
        return []


def clean_phrases(phrases: Iterable[str], query: str) -> list[str]:
    """Suggested searches, whitespace tidied, without repeats or the query itself, in order."""
    seen = {" ".join(query.split()).casefold()}
    kept = []
    for phrase in phrases:
        phrase = " ".join(phrase.split())
        if phrase and phrase.casefold() not in seen:
            seen.add(phrase.casefold())
            kept.append(phrase)
    return kept


def first_line(exc: Exception) -> str:
    """Playwright errors carry a call log after the first line; users need only the first."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Capture:
    """What the background responses of one result page brought (engines that read them)."""

    hits: dict[str, ImageHit] = field(default_factory=dict)
    seen: dict[str, str | None] = field(default_factory=dict)  # every image URL read -> problem
    pending: set[asyncio.Task] = field(default_factory=set)
    blocked: tuple[str, str] | None = None  # (kind, what happened)

    def read_later(self, response: Response, use: Callable[[Response, str], None]) -> None:
        """Read ``response``'s body in the background (``captured_hits`` waits for it), then
        ``use(response, text)``; a body that is gone (page closed, redirect) is nothing to read."""

        async def read() -> None:
            try:
                text = await response.text()
            except PlaywrightError:
                return
            use(response, text)

        task = asyncio.ensure_future(read())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


async def captured_hits(engine: SearchEngine, capture: Capture, query: str) -> list[ImageHit]:
    """``harvest`` for engines that read background responses: wait for those being read, count
    what was skipped, and raise the block one of them announced."""
    if capture.pending:
        await asyncio.gather(*list(capture.pending))
    for url, problem in capture.seen.items():
        engine.stats.note(url, problem)
    if capture.blocked:
        kind, detail = capture.blocked
        raise BlockedError(f"{engine.name} refused the search for {query!r}: {detail}", kind)
    return list(capture.hits.values())


async def related_in_page(page: Page, query: str, parse: Callable[[str, str], list[str]]) -> list[str]:
    """The related searches ``parse`` finds in the page's HTML; none when the page went away."""
    try:
        return parse(await page.content(), query)
    except PlaywrightError:
        return []


async def scroll_and_ask_for_more(page: Page, button: re.Pattern) -> None:
    """Scroll to the bottom, and press the "more results" button when the page shows one."""
    await scroll_to_bottom(page)
    await click_if_visible(page, lambda: page.get_by_role("button", name=button))


async def scroll_to_bottom(page: Page) -> None:
    await page.evaluate(
        "() => window.scrollTo(0, Math.max(document.body.scrollHeight,"
        " document.documentElement.scrollHeight))"
    )


async def click_if_visible(page: Page, locator_factory: Callable[[], Any]) -> bool:
    """Click the first match of a locator if one is visible right now; never wait for one."""
    locator = locator_factory().first
    try:
        if await locator.count() and await locator.is_visible():
            await locator.click()
            return True
    except PlaywrightError:  # the page changed under us (navigation, re-render): not clicked
        return False
    return False
