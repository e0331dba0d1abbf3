"""Pytest fixtures that start the fixture server, and a config pointed at it.

Test modules import both fixture functions to use ``web`` (the server is started once per session
as ``fixture_server`` and reset before each test as ``web``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from imgclf.testing import REPO_ROOT, require
from imgclf.testing.scrape_fixture.server import FixtureServer

# the search-terms CSV's columns (the original tool's names are read too)
HEADER = "search_term,number_imgs,folder_name,train_val\n"


def write_csv(directory: Path, rows: str) -> Path:
    """``directory/searchterms.csv``: the header, then ``rows``."""
    path = directory / "searchterms.csv"
    path.write_text(HEADER + rows, encoding="utf-8")
    return path


# Short timeouts and pauses: the fixture answers in milliseconds unless told to be slow.
TEST_OVERRIDES = (
    "browser.ignore_https_errors=true",
    "download.allow_private_hosts=true",  # the image host is 127.0.0.1
    "download.timeout_s=1.5",
    "download.connect_timeout_s=3",
    "download.deadline_s=5",
    "download.max_bytes=1000000",
    "download.concurrency=8",
    "search.scroll_pause_s=1.0",
    "search.stall_scrolls=1",
    "search.tile_wait_s=1.0",
    "search.page_timeout_s=15",
    "search.block_backoff_s=300",
)


@pytest.fixture(scope="session", name="fixture_server")
def fixture_server_fixture(tmp_path_factory) -> FixtureServer:
    require(shutil.which("openssl") is not None, "openssl (makes the fixture's certificate)")
    server = FixtureServer(tmp_path_factory.mktemp("scrape-fixture")).start()
    yield server
    server.stop()


@pytest.fixture(name="web")
def web_fixture(fixture_server: FixtureServer, monkeypatch) -> FixtureServer:
    """The fixture server with no queries configured, and no proxy between us and it."""
    fixture_server.reset()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    return fixture_server


def cli_overrides(server: FixtureServer, chromium: str, csv: Path, root: Path) -> list[str]:
    """Command-line overrides that point a scrape at the fixture (also used for scripts/)."""
    return [
        f"searchterms='{csv}'",
        f"data.root='{root}'",
        f"browser.executable_path='{chromium}'",
        f"browser.host_resolver_rules='{server.host_resolver_rules()}'",
        f"download.verify='{server.cert}'",
        *TEST_OVERRIDES,
    ]


def scrape_config(server: FixtureServer, chromium: str, csv: Path, root: Path, *overrides: str) -> DictConfig:
    """conf/scrape.yaml composed as scripts/scrape.py would, pointed at the fixture."""
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf")):
        return compose("scrape", overrides=[*cli_overrides(server, chromium, csv, root), *overrides])
