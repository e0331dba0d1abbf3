"""``scrape(cfg)``: turn a search-terms CSV into ``{data.root}/{split}/{class}/{class}_{n}.jpg``.

Order of work: check the CSV and the config (no browser yet), look at what the dataset already
holds, then for each row that still needs images search the engines in turn (the configured one,
then the fallbacks) and download until the folder holds ``number_imgs``. Chromium starts only if
some row needs images, so a finished dataset is checked in a second.

An engine that blocks (CAPTCHA, JavaScript challenge, "unusual traffic", 429) is rested for
``search.block_backoff_s`` seconds, doubling each time it blocks again; rows in between go to the
fallback engines. Nothing retries in a loop: a row left short is reported, and running again later
tops it up.

``top_up(cfg, classes, extra)`` adds ``extra`` new train images to each named class, searching
the class's phrasings in the CSV and the related searches the engines suggest for them.

SIGINT and SIGTERM stop a run cleanly: the work in flight is cancelled, Chromium and its driver are
closed, no partial file is left (every write is atomic), and :class:`imgclf.process.Interrupted` is
raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from omegaconf import DictConfig, OmegaConf
from playwright.async_api import BrowserContext
from playwright.async_api import Error as PlaywrightError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from imgclf.errors import ImgclfError
from imgclf.locks import exclusive
from imgclf.process import Interrupted, StopSignals
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
from imgclf.scrape.report import EngineReport, TermReport, summarize
from imgclf.scrape.searchterms import SearchTerm, check_class_name, read_searchterms, resolve_searchterms
from imgclf.scrape.store import DatasetStore, Origin, PreparedImage

log = logging.getLogger(__name__)

T = TypeVar("T")


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
_OPTIONAL_KEYS = ("top_up",)


def _plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The keys scraping uses, resolved; the rest (paths.output_dir needs a Hydra run) is left."""
    missing = [key for key in _KEYS if key not in cfg]
    if missing:
        raise ImgclfError(f"the config lacks {', '.join(missing)}; compose it from conf/scrape.yaml")
    keys = [*_KEYS, *(key for key in _OPTIONAL_KEYS if key in cfg)]
    if not isinstance(cfg, DictConfig):
        return {key: cfg[key] for key in keys}
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in keys
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


def _prepare(cfg: dict[str, Any]) -> tuple[list[SearchTerm], list[SearchEngine], DownloadSettings, int]:
    """Check the CSV and the settings before anything touches the network or the disk."""
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
    return terms, engines, settings, distance


def scrape(cfg: DictConfig | Mapping[str, Any], console: Console | None = None) -> dict[str, Any]:
    """Build or top up the dataset described by ``cfg`` (conf/scrape.yaml); return the summary.

    ``console``: where to show progress bars (none without one). Raises :class:`Interrupted` when
    SIGINT or SIGTERM stops the run.
    """
    cfg = _plain(cfg)
    terms, engines, settings, distance = _prepare(cfg)
    with exclusive(Path(cfg["data"]["root"]), "the dataset"):
        return _scrape(cfg, console, terms, engines, settings, distance)


def _scrape(cfg, console, terms, engines, settings, distance) -> dict[str, Any]:
    store = DatasetStore(cfg["data"]["root"], distance)
    for split, folder in dict.fromkeys((t.split, t.folder_name) for t in terms):
        if cfg.get("overwrite"):
            removed = store.clear(split, folder)
            log.warning("overwrite=true: removed %d images from %s/%s", removed, split, folder)
        store.remove_stale_temp_files(split, folder)
    job = _Job(cfg, console, store, engines, settings)
    reports = run_interruptible(lambda: job.run(terms))
    return summarize(reports, str(store.root), str(store.manifest_path), job.engine_reports)


def top_up(
    cfg: DictConfig | Mapping[str, Any],
    classes: list[str],
    extra: int | Mapping[str, int],
    console: Console | None = None,
) -> dict[str, Any]:
    """Add ``extra`` new train images to each of ``classes`` (or ``extra[name]`` to each, as
    :func:`imgclf.scrape.weak_classes.top_up_sizes` sizes them); return what was added.

    Each class is searched under its phrasings in the CSV (every row whose folder_name it is),
    then under the related searches the engines suggest for them (``top_up.max_related`` per
    phrasing). Images already in the dataset (exact or near copies, any split) are never taken
    again, and nothing is deleted. The report: ``classes`` (per class: ``had``, ``added``,
    ``have``, ``wanted``, ``searches``) beside the usual ``terms``, ``engines`` and ``totals``.
    """
    cfg = _plain(cfg)
    extras = {name: extra if isinstance(extra, int) else extra[name] for name in classes}
    for name, count in extras.items():
        if count <= 0:
            raise ImgclfError(f"top_up.extra_images={count}: give how many images to add per class")
        check_class_name(name, "the classes to top up")
    terms, engines, settings, distance = _prepare(cfg)
    with exclusive(Path(cfg["data"]["root"]), "the dataset"):
        return _top_up(cfg, extras, console, terms, engines, settings, distance)


def _top_up(cfg, extras, console, terms, engines, settings, distance) -> dict[str, Any]:
    store = DatasetStore(cfg["data"]["root"], distance)
    phrasings = {}
    for name in extras:
        rows = [t for t in terms if t.folder_name == name]
        if not rows:
            log.warning("class %s has no row in the CSV; searching for %r", name, name.replace("_", " "))
        phrasings[name] = list(dict.fromkeys(t.search_term for t in rows)) or [name.replace("_", " ")]
        store.remove_stale_temp_files("train", name)
    max_related = int((cfg.get("top_up") or {}).get("max_related", 5))
    job = _Job(cfg, console, store, engines, settings)
    outcome = run_interruptible(lambda: job.top_up(phrasings, extras, max_related))
    reports, per_class = outcome
    summary = summarize(reports, str(store.root), str(store.manifest_path), job.engine_reports)
    summary["classes"] = per_class
    return summary


def run_interruptible(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` in an event loop that SIGINT and SIGTERM stop cleanly: they cancel it, its
    ``async with`` blocks close the browser and the downloads, then :class:`Interrupted` is raised.
    """

    async def main() -> T:
        task = asyncio.current_task()

        def stop(signum: int) -> None:
            log.warning("%s received: stopping", signal.Signals(signum).name)
            task.cancel()

        signals = StopSignals(stop)  # later signals wait for the clean-up the first one began
        in_main_thread = threading.current_thread() is threading.main_thread()
        with signals.in_loop(asyncio.get_running_loop()) if in_main_thread else contextlib.nullcontext():
            try:
                return await work()
            except asyncio.CancelledError:
                if signals.received:
                    raise Interrupted(signals.received, kept="nothing half-written was left") from None
                raise

    return asyncio.run(main())


class _Job:
    """One run over the CSV rows, sharing a browser, an HTTP client and the engines' health."""

    def __init__(
        self,
        cfg: dict[str, Any],
        console: Console | None,
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
        self.engine_reports = {engine.name: EngineReport() for engine in engines}
        self._context: BrowserContext | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: httpx.AsyncClient | None = None
        self._progress: Progress | None = None

    @contextlib.asynccontextmanager
    async def _session(self):
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=self.console is None,
        )
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            self._client = await stack.enter_async_context(make_client(self.settings))
            with progress:
                self._progress = progress
                yield

    async def run(self, terms: list[SearchTerm]) -> list[TermReport]:
        reports = []
        async with self._session():
            for term in terms:
                reports.append(await self._row(term))
        return reports

    async def _row(self, term: SearchTerm, on_related=None) -> TermReport:
        report = TermReport(term, had=self.store.count(term.split, term.folder_name))
        if report.had < term.number_imgs:
            run = _TermRun(report, self.store, self.tried, self._progress)
            await self._scrape_term(run, on_related)
        return report

    async def top_up(
        self, phrasings: dict[str, list[str]], extras: Mapping[str, int], max_related: int
    ) -> tuple[list[TermReport], dict[str, dict[str, Any]]]:
        reports: list[TermReport] = []
        per_class: dict[str, dict[str, Any]] = {}
        async with self._session():
            for name, own in phrasings.items():
                had = self.store.count("train", name)
                wanted = had + extras[name]
                queue = list(own)
                searched: list[str] = []

                def suggest(phrases: list[str], queue=queue) -> None:
                    known = {q.casefold() for q in queue}
                    queue.extend([p for p in phrases if p.casefold() not in known][:max_related])

                for index, phrase in enumerate(queue):
                    if self.store.count("train", name) >= wanted:
                        break
                    term = SearchTerm(0, phrase, wanted, name, "train")
                    # Related searches of the class's own phrasings only, not of suggestions.
                    reports.append(await self._row(term, suggest if index < len(own) else None))
                    searched.append(phrase)
                have = self.store.count("train", name)
                per_class[name] = {
                    "had": had,
                    "added": have - had,
                    "have": have,
                    "wanted": wanted,
                    "searches": searched,
                }
                if have < wanted:
                    log.warning(
                        "%s: added %d of %d images; the engines had no more new ones",
                        name,
                        have - had,
                        extras[name],
                    )
        return reports, per_class

    async def _browser(self) -> BrowserContext:
        if self._context is None:
            self._context = await self._stack.enter_async_context(open_browser(self.cfg["browser"]))
        return self._context

    async def _scrape_term(self, run: _TermRun, on_related=None) -> None:
        for engine in self.engines:
            remaining = run.missing()
            if remaining <= 0:
                break
            hits = await self._search(engine, run, remaining, on_related)
            if hits:
                run.report.found += len(hits)
                run.show(f"downloading from {engine.name} results")
                sink = self._sink(run.report.term, engine)
                await download(run.taking(hits), remaining, sink, self._client, self.settings, run.on_result)
        run.show("done" if run.missing() <= 0 else "short")

    async def _search(
        self, engine: SearchEngine, run: _TermRun, remaining: int, on_related=None
    ) -> list[ImageHit]:
        report = run.report
        stats = self.engine_reports[engine.name]
        if self.health.resting(engine.name):
            report.engines[engine.name] = "resting"
            stats.resting += 1
            return []
        want = math.ceil(remaining * self.oversample) + self.extra
        run.show(f"searching {engine.name}")
        stats.searches += 1
        hits: list[ImageHit] = []
        try:
            context = await self._browser()
            hits = await engine.search(
                context,
                report.term.search_term,
                want,
                run.skip,
                on_found=lambda n: run.show(f"searching {engine.name}: {n} found"),
                on_related=on_related,
            )
        except BlockedError as exc:
            wait = self.health.block(engine.name)
            log.warning("%s; resting %s for %.0f s and trying the next engine", exc, engine.name, wait)
            report.engines[engine.name] = f"blocked ({exc.kind})"
            stats.blocks[exc.kind] += 1
            return []
        except (EngineError, PlaywrightError) as exc:
            log.warning("%s failed for %r: %s", engine.name, report.term.search_term, first_line(exc))
            report.engines[engine.name] = "error"
            stats.errors += 1
            return []
        finally:
            report.known = len(run.known)
            stats.read += engine.stats.read
            stats.skipped.update(engine.stats.skipped)
            stats.used += len(hits)
        report.engines[engine.name] = "ok"
        return hits

    def _sink(self, term: SearchTerm, engine: SearchEngine):
        def sink(hit: ImageHit, final_url: str, image: PreparedImage) -> str | None:
            origin = Origin(term.search_term, engine.name, hit.url, final_url, hit.page_url)
            return self.store.save_unless_duplicate(term.split, term.folder_name, image, origin)

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

    def taking(self, hits: list[ImageHit]):
        """The hits, each marked tried as the downloader takes it: those left over once the
        folder is full stay free for the next row (the same search term for another split)."""
        for hit in hits:
            self.tried.add(hit.url)
            yield hit

    def skip(self, url: str) -> str | None:
        """Engines leave out URLs the dataset has, and URLs this run has already tried."""
        if self.store.knows_url(url):
            self.known.add(url)
            return "in_dataset"
        return "tried" if url in self.tried else None

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
