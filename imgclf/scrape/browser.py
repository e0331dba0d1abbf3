"""Start headless Chromium through Playwright, the way the search engines expect to be visited.

The executable is Playwright's own (``playwright install chromium``) unless
``browser.executable_path`` or ``IMGCLF_CHROMIUM`` names another, such as Debian's
``/usr/bin/chromium``. ``browser.host_resolver_rules`` passes Chromium's
``--host-resolver-rules``, which the tests use to send www.google.com to a local fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from playwright.async_api import BrowserContext, async_playwright
from playwright.async_api import Error as PlaywrightError

from imgclf.errors import ImgclfError
from imgclf.scrape.engines.base import first_line

_INSTALL_HINT = (
    "install Playwright's Chromium with `python -m playwright install chromium` (add "
    "`--with-deps` for its system libraries), or point browser.executable_path (or the "
    "IMGCLF_CHROMIUM environment variable) at a Chromium binary such as /usr/bin/chromium"
)


_CLOSE_TIMEOUT_S = 15


class BrowserError(ImgclfError):
    """Chromium is missing or would not start."""


def check_executable(executable_path: str | None) -> None:
    """Fail before any work when a configured Chromium path does not exist."""
    if executable_path and not Path(executable_path).is_file():
        raise BrowserError(f"Chromium not found at {executable_path}; {_INSTALL_HINT}")


def desktop_user_agent(version: str) -> str:
    """A regular desktop Chrome user agent for this Chromium version.

    Headless Chromium announces itself as "HeadlessChrome", which search engines answer with
    reduced pages or CAPTCHAs.
    """
    major = re.match(r"\d+", version)
    return (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major[0] if major else '130'}.0.0.0 Safari/537.36"
    )


def launch_args(cfg: Mapping[str, Any]) -> list[str]:
    args = [str(arg) for arg in cfg.get("args") or []]
    if cfg.get("host_resolver_rules"):
        args.append(f"--host-resolver-rules={cfg['host_resolver_rules']}")
    return args


@contextlib.asynccontextmanager
async def open_browser(cfg: Mapping[str, Any]) -> AsyncIterator[BrowserContext]:
    """A fresh browser context (no cookies) on a newly launched Chromium, closed on exit."""
    executable_path = cfg.get("executable_path") or None
    check_executable(executable_path)
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=executable_path,
                headless=bool(cfg.get("headless", True)),
                args=launch_args(cfg),
            )
        except PlaywrightError as exc:
            raise BrowserError(f"Chromium would not start ({first_line(exc)}); {_INSTALL_HINT}")
        try:
            context = await browser.new_context(
                ignore_https_errors=bool(cfg.get("ignore_https_errors", False)),
                locale=cfg.get("locale") or "en-US",
                user_agent=cfg.get("user_agent") or desktop_user_agent(browser.version),
                viewport={"width": 1366, "height": 900},
            )
            yield context
        finally:
            # Also on cancellation (SIGINT/SIGTERM): close Chromium ourselves; should that hang,
            # leaving async_playwright stops the driver, which kills the browser it launched.
            with contextlib.suppress(PlaywrightError, asyncio.TimeoutError):
                await asyncio.wait_for(browser.close(), _CLOSE_TIMEOUT_S)
