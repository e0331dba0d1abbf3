"""Bing Images: the fallback when Google blocks or runs dry.

Every result tile is an ``a.iusc`` element whose ``m`` attribute holds JSON metadata, with the
full-size image URL in ``murl`` and its page in ``purl``. Scrolling appends more tiles.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from imgclf.scrape.engines.base import (
    BlockedError,
    EngineError,
    ImageHit,
    SearchEngine,
    click_if_visible,
    first_line,
    is_image_candidate,
    page_text_matches,
    scroll_to_bottom,
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
            raise BlockedError(f"{self.name} refused the search for {query!r}: HTTP 429")
        # The cookie banner does not hide results, but answering it keeps it from covering tiles.
        await click_if_visible(page, lambda: page.locator(COOKIE_BUTTONS))
        if not await self.harvest(page) and await page_text_matches(page, BLOCKED_TEXT):
            raise BlockedError(f"{self.name} refused the search for {query!r}: challenge page")

    async def harvest(self, page: Page) -> list[ImageHit]:
        metadata = await page.eval_on_selector_all("a.iusc[m]", "els => els.map(e => e.getAttribute('m'))")
        hits: dict[str, ImageHit] = {}
        for text in metadata:
            try:
                record = json.loads(text)
            except (TypeError, json.JSONDecodeError):
                continue
            url = record.get("murl") if isinstance(record, dict) else None
            if is_image_candidate(url, self.ignore):
                page_url = record.get("purl")
                hits.setdefault(url, ImageHit(url, page_url if isinstance(page_url, str) else None))
        return list(hits.values())

    async def more(self, page: Page) -> None:
        await scroll_to_bottom(page)
        await click_if_visible(page, lambda: page.get_by_role("button", name=MORE_RESULTS))
