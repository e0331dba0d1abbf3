"""Build an image dataset from search terms: search engines in headless Chromium, a careful
downloader, duplicate detection across splits, and a manifest of where every image came from.

Entry point: :func:`imgclf.scrape.scraper.scrape` (``python scripts/scrape.py``).
"""

from imgclf.scrape.scraper import scrape

__all__ = ["scrape"]
