"""``scrape(cfg)``: turn a search-terms CSV into ``{data.root}/{split}/{class}/{class}_{n}.jpg``.

Order of work: check the CSV and the config (no browser yet), look at what the dataset already
holds, then for each row that still needs images search the engines in turn (the configured one,
then the fallbacks) and download until the folder holds ``number_imgs``. Chromium starts only if
some row needs images, so a finished dataset is checked in a second.

An engine that blocks (CAPTCHA, "unusual traffic", 429) is rested for ``search.block_backoff_s``
seconds, doubling each time it blocks again; rows in between go to the fallback engines. Nothing
retries in a loop: a row left short is reported, and running again later tops it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx
from omegaconf import DictConfig, OmegaConf
from playwright.async_api import BrowserContext
from playwright.async_api import Error as PlaywrightError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from imgclf.errors import ImgclfError
from imgclf.scrape.browser import check_executable, open_browser
from imgclf.scrape.downloader import DownloadSettings, download, make_client
from imgclf.scrape.engines import (
    BlockedError,
    EngineError,
    ImageHit,
    SearchEngine,
    SearchSettings,
    make_engine,
)
from imgclf.scrape.engines.base import first_line
from imgclf.scrape.report import TermReport, print_summary, summarize
from imgclf.scrape.searchterms import SearchTerm, read_searchterms, resolve_searchterms
from imgclf.scrape.store import DatasetStore, Origin, PreparedImage

log = logging.getLogger(__name__)


class EngineHealth:
    """Which engines are resting after a block, and until when (exponential backoff)."""

    def __init__(self, backoff_s: float) -> None:
        self.backoff_s = backoff_s
        self._until: dict[str, float] = {}
        self._strikes: Counter = Counter()

    def resting(self, name: str) -> bool:
        return time.monotonic() < self._until.get(name, 0.0)

    def block(self, name: str) -> float:
        self._strikes[name] += 1
        wait = self.backoff_s * 2 ** (self._strikes[name] - 1)
        self._until[name] = time.monotonic() + wait
        return wait


_KEYS = (
    "searchterms",
    "data",
    "engine",
    "fallback_engines",
    "overwrite",
    "search",
    "engines",
    "browser",
    "download",
)


def _plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The keys scraping uses, resolved; the rest (paths.output_dir needs a Hydra run) is left."""
    missing = [key for key in _KEYS if key not in cfg]
    if missing:
        raise ImgclfError(f"the config lacks {', '.join(missing)}; compose it from conf/scrape.yaml")
    if not isinstance(cfg, DictConfig):
        return {key: cfg[key] for key in _KEYS}
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in _KEYS
    }


def _engines(cfg: dict[str, Any]) -> list[SearchEngine]:
    names = list(dict.fromkeys([cfg["engine"], *(cfg.get("fallback_engines") or [])]))
    settings = SearchSettings.from_config(cfg.get("search") or {})
    return [make_engine(name, settings, (cfg.get("engines") or {}).get(name) or {}) for name in names]


def _check_download(settings: DownloadSettings) -> None:
    for name in ("concurrency", "max_bytes", "max_pixels", "timeout_s", "deadline_s"):
        if getattr(settings, name) <= 0:
            raise ImgclfError(
                f"download.{name} must be positive, not {getattr(settings, name)}; "
                f"set it on the command line (download.{name}=...) or in conf/scrape.yaml"
            )


def scrape(cfg: DictConfig | Mapping[str, Any], console: Console | None = None) -> dict[str, Any]:
    """Build or top up the dataset described by ``cfg`` (conf/scrape.yaml); return the summary."""
    cfg = _plain(cfg)
    console = console or Console()
    terms = read_searchterms(resolve_searchterms(cfg["searchterms"]))
    engines = _engines(cfg)
    check_executable(cfg["browser"].get("executable_path"))
    settings = DownloadSettings.from_config(cfg["download"])
    _check_download(settings)
    distance = int(cfg["download"]["near_duplicate_distance"])
    if not 0 <= distance <= 32:
        raise ImgclfError(
            f"download.near_duplicate_distance={distance}: use 0 (exact copies only) to 32 bits "
            "of the 64-bit perceptual hash; the default 6 catches resized and re-encoded copies"
        )
    store = DatasetStore(cfg["data"]["root"], distance)
    for split, folder in dict.fromkeys((t.split, t.folder_name) for t in terms):
        if cfg.get("overwrite"):
            removed = store.clear(split, folder)
            log.warning("overwrite=true: removed %d images from %s/%s", removed, split, folder)
        store.remove_stale_temp_files(split, folder)
    job = _Job(cfg, console, store, engines, settings)
    reports = asyncio.run(job.run(terms))
    print_summary(console, reports)
    return summarize(reports, str(store.root), str(store.manifest_path))


class _Job:
    """One run over the CSV rows, sharing a browser, an HTTP client and the engines' health."""

    def __init__(
        self,
        cfg: dict[str, Any],
        console: Console,
        store: DatasetStore,
        engines: list[SearchEngine],
        settings: DownloadSettings,
    ) -> None:
        self.cfg = cfg
        self.console = console
        self.store = store
        self.engines = engines
        self.settings = settings
        self.tried: set[str] = set()  # URLs an engine returned in this run (failed ones too)
        self.health = EngineHealth(float(cfg["search"]["block_backoff_s"]))
        self.oversample = float(cfg["search"]["oversample"])
        self.extra = int(cfg["search"]["extra"])
        self._context: BrowserContext | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def run(self, terms: list[SearchTerm]) -> list[TermReport]:
        reports = []
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            client = await stack.enter_async_context(make_client(self.settings))
            with progress:
                for term in terms:
                    report = TermReport(term, had=self.store.count(term.split, term.folder_name))
                    reports.append(report)
                    if report.had < term.number_imgs:
                        run = _TermRun(report, self.store, self.tried, progress)
                        await self._scrape_term(run, client)
        return reports

    async def _browser(self) -> BrowserContext:
        if self._context is None:
            self._context = await self._stack.enter_async_context(open_browser(self.cfg["browser"]))
        return self._context

    async def _scrape_term(self, run: _TermRun, client: httpx.AsyncClient) -> None:
        for engine in self.engines:
            remaining = run.missing()
            if remaining <= 0:
                break
            hits = await self._search(engine, run, remaining)
            if hits:
                run.tried.update(hit.url for hit in hits)
                run.report.found += len(hits)
                run.show(f"downloading from {engine.name} results")
                sink = self._sink(run.report.term, engine)
                await download(hits, remaining, sink, client, self.settings, run.on_result)
        run.show("done" if run.missing() <= 0 else "short")

    async def _search(self, engine: SearchEngine, run: _TermRun, remaining: int) -> list[ImageHit]:
        report = run.report
        if self.health.resting(engine.name):
            report.engines[engine.name] = "resting"
            return []
        want = math.ceil(remaining * self.oversample) + self.extra
        run.show(f"searching {engine.name}")
        try:
            context = await self._browser()
            hits = await engine.search(
                context,
                report.term.search_term,
                want,
                run.skip,
                on_found=lambda n: run.show(f"searching {engine.name}: {n} found"),
            )
        except BlockedError as exc:
            wait = self.health.block(engine.name)
            log.warning("%s; resting %s for %.0f s and trying the next engine", exc, engine.name, wait)
            report.engines[engine.name] = "blocked"
            return []
        except (EngineError, PlaywrightError) as exc:
            log.warning("%s failed for %r: %s", engine.name, report.term.search_term, first_line(exc))
            report.engines[engine.name] = "error"
            return []
        finally:
            report.known = len(run.known)
        report.engines[engine.name] = "ok"
        return hits

    def _sink(self, term: SearchTerm, engine: SearchEngine):
        def sink(hit: ImageHit, final_url: str, image: PreparedImage) -> str | None:
            duplicate = self.store.duplicate_of(image)
            if duplicate is not None:
                log.debug("%s: %s of %s", hit.url, *duplicate)
                return duplicate[0]
            origin = Origin(term.search_term, engine.name, hit.url, final_url, hit.page_url)
            self.store.save(term.split, term.folder_name, image, origin)
            return None

        return sink


class _TermRun:
    """One CSV row being scraped: its report, its progress bar and the URLs already handled."""

    def __init__(self, report: TermReport, store: DatasetStore, tried: set[str], progress: Progress) -> None:
        self.report = report
        self.store = store
        self.progress = progress
        self.tried = tried  # shared by the rows of a run: a URL that failed once is not retried
        self.known: set[str] = set()  # in the manifest already
        term = report.term
        self.task = progress.add_task(
            f"{term.search_term} → {term.split}/{term.folder_name}",
            total=term.number_imgs - report.had,
            status="",
        )
        self.state = ""

    def missing(self) -> int:
        return self.report.term.number_imgs - self.report.have

    def skip(self, url: str) -> bool:
        """Engines leave out URLs the dataset has, and URLs this run has already tried."""
        if self.store.knows_url(url):
            self.known.add(url)
            return True
        return url in self.tried

    def on_result(self, reason: str | None) -> None:
        if reason is None:
            self.report.downloaded += 1
        else:
            self.report.rejected[reason] += 1
        self.show(self.state)

    def show(self, state: str) -> None:
        self.state = state
        rejected = sum(self.report.rejected.values())
        self.progress.update(
            self.task,
            completed=self.report.downloaded,
            status=f"{state} · found {self.report.found} · rejected {rejected}",
        )
