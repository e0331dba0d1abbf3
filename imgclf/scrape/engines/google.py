"""Google Images, read from the data the page carries rather than from its CSS classes.

The result page embeds its results as JSON in ``AF_initDataCallback({... data: [...]})`` script
blobs, and each further batch (on scroll or "more results") arrives as a background response that
starts with the anti-JSON-hijacking prefix ``)]}'``. In both, a full-size image appears as an array
``["https://host/image.jpg", height, width]``; thumbnails are the same shape on gstatic.com. We
walk the JSON for that shape (decoding JSON nested in strings, as batch responses do) instead of
matching markup, so a redesign that keeps the data survives. Clicking tiles and reading the
preview is the fallback when the data names no image.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Response

from imgclf.scrape.engines.base import (
    BlockedError,
    EngineError,
    ImageHit,
    SearchEngine,
    click_if_visible,
    first_line,
    host_matches,
    is_image_candidate,
    page_text_matches,
    scroll_to_bottom,
)

XSSI_PREFIX = ")]}'"
_AF_DATA = re.compile(r"AF_initDataCallback\(\s*\{[^\[]*?data:\s*(?:function\s*\(\)\s*\{\s*return\s*)?(?=\[)")
_TRIPLE_TEXT = re.compile(r'\["(https?://[^"]+?)",(\d+),(\d+)\]')
_DECODER = json.JSONDecoder()
_MAX_DEPTH = 80

# English (we ask for hl=en) first; a few other languages for a consent page that ignores it.
CONSENT_BUTTON = re.compile(
    r"^\s*(reject all|accept all|i agree|alle ablehnen|alle akzeptieren|tout refuser|"
    r"tout accepter|rechazar todo|aceptar todo|rifiuta tutto|accetta tutto|alles afwijzen|"
    r"alles accepteren)\s*$",
    re.IGNORECASE,
)
MORE_RESULTS = re.compile(r"(show )?more results", re.IGNORECASE)
BLOCKED_TEXT = re.compile(r"unusual traffic|not a robot|automated queries", re.IGNORECASE)
CAPTCHA_SELECTOR = "#captcha-form, form[action*='/sorry/'], iframe[src*='recaptcha']"


def json_values(text: str) -> Iterator[Any]:
    """The JSON values in a result page's data blobs or in a ``)]}'`` batch response."""
    if text.startswith(XSSI_PREFIX):
        yield from _chunked_values(text[len(XSSI_PREFIX) :])
        return
    for match in _AF_DATA.finditer(text):
        try:
            yield _DECODER.raw_decode(text, match.end())[0]
        except json.JSONDecodeError:
            continue


def _chunked_values(text: str) -> Iterator[Any]:
    """Batch responses: JSON values, each optionally preceded by a line giving its length."""
    pos = 0
    while pos < len(text):
        while pos < len(text) and (text[pos].isspace() or text[pos].isdigit()):
            pos += 1
        if pos >= len(text):
            return
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return
        yield value


def _is_triple(node: Any) -> bool:
    return (
        isinstance(node, list)
        and len(node) >= 3
        and isinstance(node[0], str)
        and node[0].startswith(("http://", "https://"))
        and all(isinstance(n, int) and not isinstance(n, bool) for n in node[1:3])
    )


def _urls_in(nodes: list[Any], depth: int = 0) -> Iterator[str]:
    """http(s) strings anywhere in ``nodes`` (not inside image triples), nearest first."""
    deeper: list[Any] = []
    for node in nodes:
        if isinstance(node, str) and node.startswith(("http://", "https://")):
            yield node
        elif isinstance(node, list) and not _is_triple(node):
            deeper.extend(node)
        elif isinstance(node, dict):
            deeper.extend(node.values())
    if deeper and depth < 4:
        yield from _urls_in(deeper, depth + 1)


def _walk(node: Any, ignore: tuple[str, ...], hits: dict[str, ImageHit], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, str):
        # Batch responses nest JSON documents inside strings.
        if len(node) > 2 and node[0] in "[{":
            try:
                _walk(json.loads(node), ignore, hits, depth + 1)
            except json.JSONDecodeError:
                pass
        return
    if isinstance(node, dict):
        for child in node.values():
            _walk(child, ignore, hits, depth + 1)
        return
    if not isinstance(node, list):
        return
    images = [c[0] for c in node if _is_triple(c) and is_image_candidate(c[0], ignore)]
    if images:
        # The result's page URL sits beside its image triples (in Google's "2003" record).
        others = [c for c in node if not _is_triple(c)]
        page_url = next(
            (u for u in _urls_in(others) if u not in images and is_image_candidate(u, ignore)),
            None,
        )
        for url in images:
            hits.setdefault(url, ImageHit(url, page_url))
    for child in node:
        if not _is_triple(child):
            _walk(child, ignore, hits, depth + 1)


def extract_hits(text: str, ignore: tuple[str, ...]) -> list[ImageHit]:
    """Full-size image URLs named by a Google result page or batch response, in page order.

    ``ignore``: domains whose URLs are thumbnails or assets, never results (gstatic.com, ...).
    """
    hits: dict[str, ImageHit] = {}
    for value in json_values(text):
        _walk(value, ignore, hits)
    # Data in a wrapper we do not parse: the triple shape is still recognisable as text.
    for match in _TRIPLE_TEXT.finditer(text):
        try:
            url = json.loads(f'"{match[1]}"')
        except json.JSONDecodeError:
            continue
        if is_image_candidate(url, ignore):
            hits.setdefault(url, ImageHit(url))
    return list(hits.values())


@dataclass
class _Capture:
    """What the background responses of one result page brought."""

    hits: dict[str, ImageHit] = field(default_factory=dict)
    pending: set[asyncio.Task] = field(default_factory=set)
    blocked: str | None = None


class GoogleEngine(SearchEngine):
    """``https://www.google.com/search?q=...&tbm=isch`` (base URL configurable)."""

    name = "google"

    def __init__(self, settings, base_url: str = "https://www.google.com", **options: Any) -> None:
        super().__init__(settings, base_url, **options)
        self.own_domain = _site_domain(self.base_url)
        self.ignore = tuple(options.get("ignore_domains", ())) + (self.own_domain,)
        self.tile_selector = options.get("tile_selector", "div[data-docid], div[data-lpage]")
        self.language = options.get("language", "en")
        # tbm=isch has selected image search for two decades; udm=2 is its newer spelling.
        self.search_params = dict(options.get("search_params") or {"tbm": "isch"})
        self._capture = _Capture()

    async def open(self, page: Page, query: str) -> None:
        self._capture = _Capture()
        page.on("response", self._on_response)
        params = urlencode({"q": query, **self.search_params, "hl": self.language})
        try:
            # The results are in the HTML and its responses; thumbnails need not finish loading.
            response = await page.goto(f"{self.base_url}/search?{params}", wait_until="domcontentloaded")
            if _is_consent(page.url):
                await self._give_consent(page)
        except PlaywrightError as exc:
            raise EngineError(f"{self.name}: the result page did not load ({first_line(exc)})")
        await self._check_blocked(page, response, query)

    def _on_response(self, response: Response) -> None:
        host = urlsplit(response.url).hostname or ""
        if not host_matches(host, (self.own_domain,)):
            return
        if response.status == 429:
            self._capture.blocked = f"HTTP 429 from {response.url}"
        elif response.ok and response.request.resource_type in ("document", "xhr", "fetch"):
            task = asyncio.ensure_future(self._read(response))
            self._capture.pending.add(task)
            task.add_done_callback(self._capture.pending.discard)

    async def _read(self, response: Response) -> None:
        try:
            text = await response.text()
        except PlaywrightError:  # body gone (page closed, redirect): nothing to read
            return
        for hit in extract_hits(text, self.ignore):
            self._capture.hits.setdefault(hit.url, hit)

    async def _give_consent(self, page: Page) -> None:
        clicked = await click_if_visible(
            page, lambda: page.get_by_role("button", name=CONSENT_BUTTON)
        ) or await click_if_visible(
            page, lambda: page.locator("form[action*='consent'] :is(button, input[type=submit])")
        )
        if not clicked:
            raise EngineError(
                f"{self.name}: the consent page has no button we recognise ({page.url}); "
                "use another engine (engine=bing) and report the page"
            )
        await page.wait_for_url(lambda url: not _is_consent(url), wait_until="domcontentloaded")

    async def _check_blocked(self, page: Page, response: Response | None, query: str) -> None:
        reason = self._capture.blocked
        if response is not None and response.status == 429:
            reason = "HTTP 429"
        elif "/sorry/" in urlsplit(page.url).path:
            reason = "redirected to the CAPTCHA page"
        elif await page.locator(CAPTCHA_SELECTOR).count():
            reason = "CAPTCHA"
        elif not await self.harvest(page) and await page_text_matches(page, BLOCKED_TEXT):
            reason = "'unusual traffic' page"
        if reason:
            raise BlockedError(f"{self.name} refused the search for {query!r}: {reason}")

    async def harvest(self, page: Page) -> list[ImageHit]:
        if self._capture.pending:
            await asyncio.gather(*list(self._capture.pending))
        if self._capture.blocked:
            raise BlockedError(f"{self.name} refused further results: {self._capture.blocked}")
        return list(self._capture.hits.values())

    async def more(self, page: Page) -> None:
        await scroll_to_bottom(page)
        await click_if_visible(page, lambda: page.get_by_role("button", name=MORE_RESULTS))

    async def fallback(self, page: Page, want: int) -> list[ImageHit]:
        """Click result tiles one by one and read the full-size image the preview shows."""
        tiles = page.locator(self.tile_selector)
        count = min(await tiles.count(), want, self.settings.tile_click_limit)
        hits: dict[str, ImageHit] = {}
        for index in range(count):
            tile = tiles.nth(index)
            try:
                page_url = await tile.get_attribute("data-lpage")
                before = set(await _image_sources(page))
                await tile.click()
            except PlaywrightError:
                continue
            url = await self._wait_for_preview(page, before)
            if url:
                hits.setdefault(url, ImageHit(url, page_url))
        return list(hits.values())

    async def _wait_for_preview(self, page: Page, before: set[str]) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.tile_wait_s
        while loop.time() < deadline:
            for src in await _image_sources(page):
                if src not in before and is_image_candidate(src, self.ignore):
                    return src
            await asyncio.sleep(0.1)
        return None


async def _image_sources(page: Page) -> list[str]:
    return await page.eval_on_selector_all("img", "els => els.map(e => e.currentSrc || e.src)")


def _site_domain(base_url: str) -> str:
    host = urlsplit(base_url).hostname or ""
    return host.removeprefix("www.")


def _is_consent(url: str) -> bool:
    return (urlsplit(url).hostname or "").startswith("consent.")
