"""Image search engines behind one interface (:class:`SearchEngine`), looked up by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgclf.errors import ImgclfError
from imgclf.scrape.engines.base import (
    BlockedError,
    EngineError,
    ImageHit,
    SearchEngine,
    SearchSettings,
)
from imgclf.scrape.engines.bing import BingEngine
from imgclf.scrape.engines.duckduckgo import DuckDuckGoEngine
from imgclf.scrape.engines.google import GoogleEngine

ENGINES: dict[str, type[SearchEngine]] = {
    "google": GoogleEngine,
    "bing": BingEngine,
    "duckduckgo": DuckDuckGoEngine,
}


def make_engine(name: str, settings: SearchSettings, options: Mapping[str, Any]) -> SearchEngine:
    """The engine called ``name``, configured by its section of ``engines`` in the config."""
    if name not in ENGINES:
        raise ImgclfError(f"unknown search engine {name!r}; choose from {', '.join(ENGINES)}")
    return ENGINES[name](settings, **dict(options))


__all__ = [
    "ENGINES",
    "BlockedError",
    "EngineError",
    "ImageHit",
    "SearchEngine",
    "SearchSettings",
    "make_engine",
]
