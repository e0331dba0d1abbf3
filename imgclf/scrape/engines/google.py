"""Google Images, read from the data the page carries rather than from its CSS classes.

The result page embeds its results as JSON, and each further batch (on scroll or "more results")
arrives as a background response that starts with the anti-JSON-hijacking prefix ``)]}'``; the
containers vary (``AF_initDataCallback`` blobs, objects assigned in plain scripts on ``udm=2``
pages, JSON in string literals, decimal or hex chunk framing: see :mod:`.containers`). In all of
them a result is a ``444383007`` record holding its thumbnail and its full-size image as arrays
``["https://host/image.jpg", height, width]`` (thumbnails on gstatic.com) and its page in a
``"2003"`` record. We walk the JSON for that shape instead of matching markup, so a redesign that
keeps the data survives, and decode URLs however deeply their escapes were escaped. Clicking
tiles and reading the preview is the fallback when the data names no image.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Response

from imgclf.scrape.engines.base import (
    CAPTCHA,
    JS_CHALLENGE,
    UNUSUAL_TRAFFIC,
    BlockedError,
    Capture,
    EngineError,
    ImageHit,
    SearchEngine,
    captured_hits,
    clean_phrases,
    click_if_visible,
    first_line,
    host_matches,
    is_image_candidate,
    page_text_matches,
    related_in_page,
    scroll_and_ask_for_more,
    url_problem,
)
from imgclf.scrape.engines.containers import json_values, looks_like_data, real_url

_MAX_DEPTH = 80
_TRIPLE_TEXT = re.compile(r'\[\s*"(https?://[^"]+?)",\s*(\d+),\s*(\d+)\s*\]')
_URL_START = ("http://", "https://", "data:")

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
# The page Google serves instead of results when it wants proof that JavaScript runs: its
# <noscript> sends to /httpservice/retry/enablejs, and it says "having trouble accessing".
JS_CHALLENGE_TEXT = re.compile(r"/httpservice/retry/enablejs|having trouble accessing Google Search")


def _triple_url(node: Any) -> str | None:
    """The URL of an image triple ``["https://...", height, width]``, decoded, or None."""
    if (
        isinstance(node, list)
        and len(node) >= 3
        and isinstance(node[0], str)
        and node[0].startswith(_URL_START)
        and all(isinstance(n, int) and not isinstance(n, bool) for n in node[1:3])
    ):
        return real_url(node[0])
    return None


def _urls_in(nodes: list[Any], depth: int = 0) -> Iterator[str]:
    """http(s) strings anywhere in ``nodes`` (not inside image triples), nearest first."""
    deeper: list[Any] = []
    for node in nodes:
        if isinstance(node, str) and node.startswith(("http://", "https://")):
            yield real_url(node)
        elif isinstance(node, list) and _triple_url(node) is None:
            deeper.extend(node)
        elif isinstance(node, dict):
            deeper.extend(node.values())
    if deeper and depth < 4:
        yield from _urls_in(deeper, depth + 1)


class _Reader:
    """Walks decoded data for image triples; each result's page URL sits beside its triples (in
    the ``"2003"`` record of Google's ``444383007`` result records)."""

    def __init__(self, ignore: tuple[str, ...], seen: dict[str, str | None] | None) -> None:
        self.ignore = ignore
        self.hits: dict[str, ImageHit] = {}
        self.seen = seen if seen is not None else {}

    def walk(self, node: Any, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(node, str):
            # Batch responses nest JSON documents (or whole framed responses) inside strings.
            if looks_like_data(node):
                for value in json_values(node):
                    self.walk(value, depth + 1)
            return
        if isinstance(node, dict):
            for child in node.values():
                self.walk(child, depth + 1)
            return
        if not isinstance(node, list):
            return
        images = []
        for child in node:
            url = _triple_url(child)
            if url is not None:
                problem = url_problem(url, self.ignore)
                self.seen.setdefault(url, problem)
                if problem is None:
                    images.append(url)
        if images:
            others = [c for c in node if _triple_url(c) is None]
            page_url = next(
                (u for u in _urls_in(others) if u not in images and is_image_candidate(u, self.ignore)),
                None,
            )
            for url in images:
                if url not in self.hits or (page_url and self.hits[url].page_url is None):
                    self.hits[url] = ImageHit(url, page_url)
        for child in node:
            if _triple_url(child) is None:
                self.walk(child, depth + 1)


def extract_hits(
    text: str, ignore: tuple[str, ...], seen: dict[str, str | None] | None = None
) -> list[ImageHit]:
    """Full-size image URLs, with their pages, named by a Google result page or response.

    ``ignore``: domains whose URLs are thumbnails or assets, never results (gstatic.com, ...).
    ``seen`` (optional) receives every image URL read, mapped to why it was skipped (see
    :func:`url_problem`) or None.
    """
    reader = _Reader(ignore, seen)
    for value in json_values(text):
        reader.walk(value)
    # Data in a wrapper we do not parse: the triple shape is still recognisable as text.
    for match in _TRIPLE_TEXT.finditer(text):
        url = real_url(match[1])
        problem = url_problem(url, ignore)
        reader.seen.setdefault(url, problem)
        if problem is None and url not in reader.hits:
            reader.hits[url] = ImageHit(url)
    return list(reader.hits.values())


def related_searches(text: str, query: str) -> list[str]:
    """The searches Google suggests beside the results for ``query``, in page order.

    In the data: "Related searches" records (``["pink cats", null, "/search?q=pink+cats&tbm=isch"
    ...]``) give their query; chips (``["kitten", [thumbnail ...], "/search?q=cats&...&chips=q:cats,
    g_1:kitten:..."]``) refine the query, so "kitten" becomes "cats kitten". In the markup: links
    to other image searches.
    """
    phrases: list[str] = []
    for value in json_values(text):
        _data_phrases(value, query, phrases, 0)
    for href in _SEARCH_LINK.findall(text):
        phrase = _link_phrase(html.unescape(href), "", query)
        if phrase:
            phrases.append(phrase)
    return clean_phrases(phrases, query)


_SEARCH_LINK = re.compile(r"""href=["'](/search\?[^"']+)["']""")


def _link_phrase(link: str, label: str, query: str) -> str | None:
    """The search a ``/search?...`` link runs, if it is an image search."""
    params = parse_qs(urlsplit(real_url(link)).query)
    if not ({"tbm", "udm"} & params.keys()) or not params.get("q"):
        return None
    if "chips" in params:
        label = label.strip()
        if not label:
            return None
        return label if query.casefold() in label.casefold() else f"{query} {label}"
    return params["q"][0]


def _data_phrases(node: Any, query: str, phrases: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH or not isinstance(node, (list, dict)):
        return
    if isinstance(node, dict):
        for child in node.values():
            _data_phrases(child, query, phrases, depth + 1)
        return
    if (
        len(node) >= 3
        and isinstance(node[0], str)
        and isinstance(node[2], str)
        and node[2].startswith("/search?")
    ):
        phrase = _link_phrase(node[2], node[0], query)
        if phrase:
            phrases.append(phrase)
        return
    for child in node:
        _data_phrases(child, query, phrases, depth + 1)


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
        self._capture = Capture()
        self._query = ""

    async def open(self, page: Page, query: str) -> None:
        self._capture = Capture()
        self._query = query
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
            self._capture.blocked = ("HTTP 429", f"HTTP 429 from {response.url}")
        elif "/sorry/" in urlsplit(response.url).path:
            self._capture.blocked = (CAPTCHA, f"CAPTCHA page at {response.url}")
        elif response.ok and response.request.resource_type in ("document", "xhr", "fetch"):
            self._capture.read_later(response, self._take_hits)

    def _take_hits(self, response: Response, text: str) -> None:
        for hit in extract_hits(text, self.ignore, self._capture.seen):
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
        block = self._capture.blocked
        if response is not None and response.status == 429:
            block = ("HTTP 429", "HTTP 429")
        elif "/sorry/" in urlsplit(page.url).path:
            block = (CAPTCHA, "redirected to the CAPTCHA page (/sorry/)")
        elif await page.locator(CAPTCHA_SELECTOR).count():
            block = (CAPTCHA, "CAPTCHA")
        elif not await self.harvest(page):
            if await self._stuck_on_js_challenge(page):
                block = (JS_CHALLENGE, "JavaScript challenge page instead of results")
            elif await page_text_matches(page, BLOCKED_TEXT):
                block = (UNUSUAL_TRAFFIC, "'unusual traffic' page")
        if block:
            raise BlockedError(f"{self.name} refused the search for {query!r}: {block[1]}", block[0])

    async def _stuck_on_js_challenge(self, page: Page) -> bool:
        """Is this the JavaScript-challenge page, still, after giving its script time to pass?"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.scroll_pause_s
        while True:
            try:
                challenge = bool(JS_CHALLENGE_TEXT.search(await page.content()))
            except PlaywrightError:  # navigating (the challenge passed): look again
                challenge = True
            if not challenge or await self.harvest(page):
                return False
            if loop.time() >= deadline:
                return True
            await asyncio.sleep(0.2)

    async def harvest(self, page: Page) -> list[ImageHit]:
        return await captured_hits(self, self._capture, self._query)

    async def related(self, page: Page, query: str) -> list[str]:
        return await related_in_page(page, query, related_searches)

    async def more(self, page: Page) -> None:
        await scroll_and_ask_for_more(page, MORE_RESULTS)

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
