"""DuckDuckGo Images: a second fallback, read from the JSON its result page loads.

The page ``https://duckduckgo.com/?q=...&iax=images&ia=images`` carries a ``vqd`` token; with it,
its script loads ``/i.js?q=...&o=json&vqd=...&p=1``, whose JSON lists ``results`` (``image``: the
full-size URL, ``url``: its page, ``thumbnail`` on bing.net) and names the ``next`` batch. We read
the batches the page loads itself and, when it loads none (or to go on), request them the same way
from inside the page, so they travel with the page's cookies and through the same browser.

Blocks: the "anomaly" challenge ("bots use DuckDuckGo too", a CAPTCHA) instead of the page, or a
refused ``i.js`` (HTTP 403 or 429).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Response

from imgclf.scrape.engines.base import (
    CAPTCHA,
    BlockedError,
    Capture,
    EngineError,
    ImageHit,
    SearchEngine,
    captured_hits,
    clean_phrases,
    first_line,
    hits_from_records,
    host_matches,
    page_text_matches,
    scroll_to_bottom,
)

VQD = re.compile(r"""vqd["']?\s*[:=]\s*["']?(\d-[\w-]+)""")
ANOMALY_TEXT = re.compile(r"bots use DuckDuckGo too|confirm this search was made by a human", re.I)
ANOMALY_SELECTOR = ".anomaly-modal__title, #challenge-form, form[action*='anomaly']"
_FETCH = """async (url) => {
  const response = await fetch(url, {credentials: 'include', headers: {Accept: 'application/json'}});
  return {status: response.status, text: await response.text()};
}"""


def parse_results(text: str, ignore: tuple[str, ...], seen: dict[str, str | None] | None = None):
    """``(hits, next)`` from an ``i.js`` answer: full-size images with their pages, and the
    relative URL of the next batch (None at the end). ``seen`` receives every image URL read,
    mapped to why it was skipped or None."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return [], None
    if not isinstance(data, dict):
        return [], None
    hits = hits_from_records(data.get("results") or [], "image", "url", ignore, seen)
    following = data.get("next")
    return hits, following if isinstance(following, str) and following else None


def suggestions(text: str, query: str) -> list[str]:
    """Phrases from the autocomplete answer: ``[{"phrase": ...}, ...]`` or ``[query, [...]]``."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return []
    phrases: list[Any] = []
    if isinstance(data, list) and len(data) == 2 and isinstance(data[1], list):
        phrases = data[1]
    elif isinstance(data, list):
        phrases = [item.get("phrase") for item in data if isinstance(item, dict)]
    return clean_phrases([p for p in phrases if isinstance(p, str)], query)


@dataclass
class _Capture(Capture):
    requested: set[str] = field(default_factory=set)  # i.js paths asked for, by the page or us
    next: str | None = None
    batches: int = 0


class DuckDuckGoEngine(SearchEngine):
    """``https://duckduckgo.com/?q=...&iax=images&ia=images`` (base URL configurable)."""

    name = "duckduckgo"

    def __init__(self, settings, base_url: str = "https://duckduckgo.com", **options: Any) -> None:
        super().__init__(settings, base_url, **options)
        self.own_domain = (urlsplit(self.base_url).hostname or "").removeprefix("www.")
        self.ignore = tuple(options.get("ignore_domains", ())) + (self.own_domain,)
        self.region = options.get("region", "wt-wt")
        self._capture = _Capture()
        self._query = ""

    async def open(self, page: Page, query: str) -> None:
        self._capture = _Capture()
        self._query = query
        page.on("response", self._on_response)
        params = urlencode({"q": query, "iax": "images", "ia": "images"})
        try:
            response = await page.goto(f"{self.base_url}/?{params}", wait_until="domcontentloaded")
        except PlaywrightError as exc:
            raise EngineError(f"{self.name}: the result page did not load ({first_line(exc)})")
        if response is not None and response.status in (403, 429):
            kind = f"HTTP {response.status}"
            raise BlockedError(f"{self.name} refused the search for {query!r}: {kind}", kind)
        if await page.locator(ANOMALY_SELECTOR).count() or await page_text_matches(page, ANOMALY_TEXT):
            raise BlockedError(f"{self.name} refused the search for {query!r}: anomaly challenge", CAPTCHA)
        if not await self._wait_for_first_batch(page):
            vqd = VQD.search(await page.content())
            if vqd is None:
                raise EngineError(
                    f"{self.name}: the result page has no vqd token; it may have "
                    "changed (use another engine, and report it)"
                )
            params = urlencode(
                {"l": self.region, "o": "json", "q": query, "vqd": vqd[1], "f": ",,,,,", "p": "1"}
            )
            await self._fetch(page, f"/i.js?{params}")
        await self.harvest(page)

    async def _wait_for_first_batch(self, page: Page) -> bool:
        """Did the page load its first batch itself (within a scroll pause)?"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.scroll_pause_s
        while not self._capture.requested and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self._capture.pending:
            await asyncio.gather(*list(self._capture.pending))
        return self._capture.batches > 0 or self._capture.blocked is not None

    def _on_response(self, response: Response) -> None:
        parts = urlsplit(response.url)
        if parts.path != "/i.js" or not host_matches(parts.hostname or "", (self.own_domain,)):
            return
        self._capture.requested.add(f"{parts.path}?{parts.query}")
        self._capture.read_later(response, lambda r, text: self._absorb(r.status, text, r.url))

    def _absorb(self, status: int, text: str, url: str) -> None:
        if status != 200:
            kind = f"HTTP {status}"
            self._capture.blocked = (kind, f"{kind} from {url}")
            return
        hits, following = parse_results(text, self.ignore, self._capture.seen)
        self._capture.batches += 1
        for hit in hits:
            self._capture.hits.setdefault(hit.url, hit)
        self._capture.next = following

    async def _fetch(self, page: Page, path: str) -> None:
        """Ask for one ``i.js`` batch from inside the page, as its own script does."""
        url = urljoin(f"{self.base_url}/", path.lstrip("/"))
        self._capture.requested.add("/" + path.lstrip("/"))
        try:
            answer = await page.evaluate(_FETCH, url)
        except PlaywrightError as exc:
            raise EngineError(f"{self.name}: could not load results ({first_line(exc)})")
        self._absorb(answer["status"], answer["text"], url)

    async def harvest(self, page: Page) -> list[ImageHit]:
        return await captured_hits(self, self._capture, self._query)

    async def more(self, page: Page) -> None:
        following = self._capture.next
        if following and "/" + following.lstrip("/") not in self._capture.requested:
            await self._fetch(page, following)
        else:
            await scroll_to_bottom(page)

    async def related(self, page: Page, query: str) -> list[str]:
        """DuckDuckGo's image page shows no related searches; its autocomplete suggests some."""
        url = f"{self.base_url}/ac/?{urlencode({'q': query, 'kl': self.region})}"
        try:
            answer = await page.evaluate(_FETCH, url)
        except PlaywrightError:
            return []
        return suggestions(answer["text"], query) if answer["status"] == 200 else []
