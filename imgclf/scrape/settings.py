"""``imgclf scrape``'s settings as types: ``conf/scrape.yaml``, checked by
:func:`imgclf.settings.typed` where the command and the pipeline compose it.

The scraper is handed the structured ``DictConfig`` (not ``READ_ONLY``): it takes plain dicts of
its sections (:func:`imgclf.scrape.scraper.scrape` also runs on a ``Mapping``, and on a config
composed without a run folder, so its own range checks stay with it). Two sections stay dicts:
``engines`` (each engine's options, read by its own class in :mod:`imgclf.scrape.engines`) and
``top_up``, whose key ``from`` is a Python keyword no dataclass field can be named
(:func:`imgclf.scrape.scraper.weakest_classes` checks its values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from imgclf.scrape.downloader import DownloadSettings
from imgclf.settings import DatasetRoot, Paths, Schema


@dataclass
class SearchOptions:
    oversample: float = 1.5
    extra: int = 10
    max_scrolls: int = 15
    scroll_pause_s: float = 2.0
    stall_scrolls: int = 2
    page_timeout_s: float = 30
    tile_wait_s: float = 2.0
    tile_click_limit: int = 50
    block_backoff_s: float = 600


@dataclass
class BrowserOptions:
    executable_path: Optional[str] = None
    headless: bool = True
    args: list[str] = field(default_factory=list)
    host_resolver_rules: Optional[str] = None
    ignore_https_errors: bool = False
    locale: str = "en-US"
    user_agent: Optional[str] = None


@dataclass(frozen=True)
class DownloadOptions(DownloadSettings):
    """The downloader's own settings, and the store's near-duplicate distance."""

    near_duplicate_distance: int = 6


@dataclass
class ScrapeSettings(Schema):
    CONFIG: ClassVar[str] = "conf/scrape.yaml"
    READ_ONLY: ClassVar[bool] = False

    task_name: str = "scrape"
    paths: Paths = field(default_factory=Paths)
    searchterms: str = "data/searchterms.csv"
    data: DatasetRoot = field(default_factory=DatasetRoot)
    engine: str = "google"
    fallback_engines: list[str] = field(default_factory=list)
    overwrite: bool = False
    search: SearchOptions = field(default_factory=SearchOptions)
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    browser: BrowserOptions = field(default_factory=BrowserOptions)
    download: DownloadOptions = field(default_factory=DownloadOptions)
    top_up: dict[str, Any] = field(default_factory=dict)
