"""Offline stand-ins for everything the scraper talks to: a local HTTPS server playing Google
Images, Google's consent page, Bing Images and a faulty image host (see server.py).

The pytest fixtures are in :mod:`scrape_fixture.fixtures`; the benchmark uses the server alone.
"""

from imgclf.testing.scrape_fixture.server import FixtureServer, GoogleQuery

__all__ = ["FixtureServer", "GoogleQuery"]
