"""Bing Images: the fallback when Google blocks or runs dry.

Every result tile is an ``a.iusc`` element whose ``m`` attribute holds JSON metadata, with the
full-size image URL in ``murl`` and its page in ``purl``. Scrolling appends more tiles (the
``/images/async`` batches). Related searches are the ``a.itm`` links of the page's
``span.relatedGroup`` blocks ("Top suggestions for ...", "Refine your search ...", ...).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from imgclf.scrape.engines.base import (
    CAPTCHA,
    BlockedError,
    EngineError,
    ImageHit,
    SearchEngine,
    clean_phrases,
    click_if_visible,
    first_line,
    hits_from_records,
    page_text_matches,
    related_in_page,
    scroll_and_ask_for_more,
)

BLOCKED_TEXT = re.compile(
    r"unusual traffic|verify you are (a )?human|solve the challenge|not a robot", re.IGNORECASE
)
MORE_RESULTS = re.compile(r"see more (images|results)|more results", re.IGNORECASE)
COOKIE_BUTTONS = "#bnp_btn_reject, #bnp_btn_accept"


class BingEngine(SearchEngine):
    """``https://www.bing.com/images/search?q=...`` (base URL configurable)."""

    name = "bing"

    def __init__(self, settings, base_url: str = "https://www.bing.com", **options: Any) -> None:
        super().__init__(settings, base_url, **options)
        host = urlsplit(self.base_url).hostname or ""
        self.ignore = tuple(options.get("ignore_domains", ())) + (host.removeprefix("www."),)

    async def open(self, page: Page, query: str) -> None:
        params = urlencode({"q": query, "form": "HDRSC2", "first": 1})
        try:
            response = await page.goto(
                f"{self.base_url}/images/search?{params}", wait_until="domcontentloaded"
            )
        except PlaywrightError as exc:
            raise EngineError(f"{self.name}: the result page did not load ({first_line(exc)})")
        if response is not None and response.status == 429:
            raise BlockedError(f"{self.name} refused the search for {query!r}: HTTP 429", "HTTP 429")
        # The cookie banner does not hide results, but answering it keeps it from covering tiles.
        await click_if_visible(page, lambda: page.locator(COOKIE_BUTTONS))
        if not await self.harvest(page) and await page_text_matches(page, BLOCKED_TEXT):
            raise BlockedError(f"{self.name} refused the search for {query!r}: challenge page", CAPTCHA)

    async def harvest(self, page: Page) -> list[ImageHit]:
        metadata = await page.eval_on_selector_all("a.iusc[m]", "els => els.map(e => e.getAttribute('m'))")
        return tile_hits(metadata, self.ignore, self.stats.urls)

    async def related(self, page: Page, query: str) -> list[str]:
        return await related_in_page(page, query, related_searches)

    async def more(self, page: Page) -> None:
        await scroll_and_ask_for_more(page, MORE_RESULTS)


def tile_hits(
    metadata: list[str | None], ignore: tuple[str, ...], seen: dict[str, str | None] | None = None
) -> list[ImageHit]:
    """Full-size images named by the tiles' ``m`` attributes (JSON), in page order.

    ``seen`` (optional) receives every ``murl`` read, mapped to why it was skipped or None.
    """
    return hits_from_records(map(_json_or_none, metadata), "murl", "purl", ignore, seen)


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError, RecursionError):
        return None


def related_searches(page_html: str, query: str) -> list[str]:
    """The queries of the links inside the page's ``relatedGroup`` blocks, in page order."""
    parser = _RelatedLinks()
    parser.feed(page_html)
    parser.close()
    phrases = []
    for href in parser.hrefs:
        parts = urlsplit(href)
        if parts.path.endswith("/images/search"):
            phrases.extend(parse_qs(parts.query).get("q", [])[:1])
    return clean_phrases(phrases, query)


class _RelatedLinks(HTMLParser):
    """Collects ``href`` of links inside elements whose class includes ``relatedGroup``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self._open: list[bool] = []  # per open element: does it start a relatedGroup?

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        inside = any(self._open)
        if inside and tag == "a" and values.get("href"):
            self.hrefs.append(values["href"])
        if tag not in _VOID_TAGS:
            self._open.append("relatedGroup" in (values.get("class") or "").split())

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID_TAGS and self._open:
            self._open.pop()


_VOID_TAGS = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}
