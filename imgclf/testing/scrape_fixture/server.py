"""A local HTTPS server that plays Google Images, Google's consent page, Bing Images, DuckDuckGo
Images and a faulty image host, all on 127.0.0.1.

Chromium reaches it as www.google.com / consent.google.com / www.bing.com / duckduckgo.com through
``--host-resolver-rules`` (everything else resolves to nothing, so the real internet is never
contacted); the downloader reaches the image host as ``https://127.0.0.1:PORT/img/...`` and
trusts the fixture's self-signed certificate as its CA bundle. The server records every request
so tests can see what was asked for, and by which host name.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from imgclf.testing.scrape_fixture import pages
from imgclf.testing.scrape_fixture.pictures import Route, build_routes

HOSTS = ("www.google.com", "consent.google.com", "www.bing.com", "duckduckgo.com")
DDG_BATCH = 4  # results per DuckDuckGo i.js batch
OVERSIZE_BYTES = 1_500_000  # tests set download.max_bytes below this


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for the fixture's host names (openssl CLI)."""
    cert, key = directory / "fixture-cert.pem", directory / "fixture-key.pem"
    names = ",".join([*(f"DNS:{host}" for host in HOSTS), "DNS:localhost", "IP:127.0.0.1"])
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=imgclf test fixture",
            "-addext",
            f"subjectAltName={names}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class GoogleQuery:
    """What Google answers for one query: first page, scroll batch, "more results" batch."""

    first: list[str]
    scroll: list[str] = field(default_factory=list)
    more: list[str] = field(default_factory=list)
    tiles_only: bool = False  # full-size URLs only behind tile clicks, not in the data
    layout: str = "af"  # the first page's data container (pages.LAYOUTS)
    framing: str = "decimal"  # the batch responses' framing (pages.BATCH_FRAMINGS)
    related: list[str] = field(default_factory=list)  # "Related searches" records
    chips: list[str] = field(default_factory=list)  # refinement chips ("kitten" for "cats")


class FixtureServer:
    def __init__(self, directory: Path) -> None:
        self.cert, self.key = make_certificate(directory)
        self.routes: dict[str, Route] = build_routes(OVERSIZE_BYTES)
        self.google: dict[str, GoogleQuery] = {}
        self.bing: dict[str, list[str]] = {}
        self.bing_related: dict[str, list[str]] = {}
        self.ddg: dict[str, list[str]] = {}
        self.ddg_related: dict[str, list[str]] = {}
        self.ddg_refused: set[str] = set()  # queries whose i.js answers 403
        self.ddg_anomaly: set[str] = set()  # queries answered with the bot challenge
        self.blocked: set[str] = set()  # Google queries redirected to the CAPTCHA page (429)
        self.soft_blocked: set[str] = set()  # ... answered 200 with an "unusual traffic" page
        self.js_challenge: set[str] = set()  # ... answered with the JavaScript-challenge page
        self.image_latency_s = 0.0
        self.requests: list[tuple[str, str, str]] = []  # (method, host, path with query)
        self.active_images = 0
        self.max_active_images = 0  # most image requests answered at the same time
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self._httpd = _HTTPSServer(self, context)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def img(self, name: str) -> str:
        return f"{self.origin}/img/{name}"

    def host_resolver_rules(self) -> str:
        mapped = [f"MAP {host} 127.0.0.1:{self.port}" for host in HOSTS]
        return ", ".join([*mapped, "MAP * ~NOTFOUND"])

    def start(self) -> FixtureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def wait_idle(self, timeout_s: float = 10) -> None:
        """Let answers still sleeping for an earlier test (slow.jpg) finish."""
        deadline = time.monotonic() + timeout_s
        while self.active_images and time.monotonic() < deadline:
            time.sleep(0.05)

    def reset(self) -> None:
        with self._lock:
            for table in (self.google, self.bing, self.bing_related, self.ddg, self.ddg_related):
                table.clear()
            for queries in (
                self.ddg_refused,
                self.ddg_anomaly,
                self.blocked,
                self.soft_blocked,
                self.js_challenge,
            ):
                queries.clear()
            self.image_latency_s = 0.0
            self.requests.clear()
            self.max_active_images = 0

    @contextlib.contextmanager
    def image_request(self):
        with self._lock:
            self.active_images += 1
            self.max_active_images = max(self.max_active_images, self.active_images)
        try:
            yield
        finally:
            with self._lock:
                self.active_images -= 1

    def record(self, method: str, host: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, host, path))

    def count(self, host: str, path_prefix: str, **params: str) -> int:
        """How many requests went to ``host`` under ``path_prefix`` with these query values."""
        total = 0
        for _, req_host, path in list(self.requests):
            parts = urlsplit(path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if (
                req_host == host
                and parts.path.startswith(path_prefix)
                and all(query.get(k) == v for k, v in params.items())
            ):
                total += 1
        return total


class _HTTPSServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when the downloader opens many at
    # once; the client then waits a whole SYN retransmit (1 s), which is the tests' timeout.
    request_queue_size = 128

    def __init__(self, fixture: FixtureServer, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fixture = fixture
        self.context = context

    def finish_request(self, request, client_address) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a client that
        # never completes one cannot stall the accept loop.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 15
    server: _HTTPSServer

    def log_message(self, format, *args) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
            pass  # clients that gave up (timeouts, size limits) close mid-answer

    @property
    def fixture(self) -> FixtureServer:
        return self.server.fixture

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.form = parse_qs(self.rfile.read(length).decode()) if length else {}
        self._dispatch()

    def _dispatch(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0]
        self.fixture.record(self.command, host, self.path)
        parts = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        handler = {
            ("www.google.com", "/search"): self._google_search,
            ("www.google.com", "/sorry/index"): self._google_sorry,
            ("www.google.com", "/_/VisualFrontendUi/data/batchexecute"): self._google_batch,
            ("consent.google.com", "/ml"): self._consent_page,
            ("consent.google.com", "/save"): self._consent_save,
            ("www.bing.com", "/images/search"): self._bing_search,
            ("www.bing.com", "/images/async"): self._bing_async,
            ("duckduckgo.com", "/"): self._ddg_page,
            ("duckduckgo.com", "/i.js"): self._ddg_images,
            ("duckduckgo.com", "/ac/"): self._ddg_suggestions,
        }.get((host, parts.path))
        if handler:
            handler()
        elif host == "127.0.0.1" and parts.path.startswith("/img/"):
            self._image(parts.path[len("/img/") :])
        else:
            self._send(404, b"not found", "text/plain")

    # -- plumbing --------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes | str,
        content_type: str = "text/html",
        headers: dict[str, str] | None = None,
        send_length: bool = True,
    ) -> None:
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if send_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, headers: dict[str, str] | None = None) -> None:
        self._send(302, b"", headers={"Location": location, **(headers or {})})

    # -- Google ------------------------------------------------------------------------------

    def _google_search(self) -> None:
        query = self.query.get("q", "")
        here = f"https://www.google.com{self.path}"
        if "SOCS=" not in (self.headers.get("Cookie") or ""):
            self._redirect(f"https://consent.google.com/ml?continue={quote(here, safe='')}&hl=en")
        elif query in self.fixture.blocked:
            self._redirect(f"/sorry/index?continue={quote(here, safe='')}&q={quote(query)}")
        elif query in self.fixture.soft_blocked:
            self._send(200, pages.unusual_traffic_page())
        elif query in self.fixture.js_challenge:
            self._send(200, pages.js_challenge_page(query))
        elif query in self.fixture.google:
            answer = self.fixture.google[query]
            self._send(
                200,
                pages.google_results(
                    query, answer.first, answer.tiles_only, answer.layout, answer.related, answer.chips
                ),
            )
        else:
            self._send(200, pages.google_results(query, []))

    def _google_sorry(self) -> None:
        self._send(429, pages.sorry_page())

    def _google_batch(self) -> None:
        answer = self.fixture.google.get(self.query.get("q", ""))
        batch = self.query.get("batch")
        urls = []
        if answer is not None:
            urls = answer.scroll if batch == "2" else answer.more if batch == "3" else []
        start = 100 * int(batch or 0)
        framing = answer.framing if answer is not None else "decimal"
        self._send(200, pages.google_batch(urls, start, framing), "application/json; charset=utf-8")

    def _consent_page(self) -> None:
        self._send(200, pages.consent_page(self.query.get("continue", "")))

    def _consent_save(self) -> None:
        target = self.form.get("continue", ["https://www.google.com/"])[0]
        cookie = (
            "SOCS=CAESHAgBEhJnd3NfMjAyNDAxMTAtMF9SQzIaAmVuIAEaBgiA; Domain=.google.com; "
            "Path=/; Secure; SameSite=Lax"
        )
        self._send(303, b"", headers={"Location": target, "Set-Cookie": cookie})

    # -- Bing --------------------------------------------------------------------------------

    _BING_FIRST_PAGE = 4

    def _bing_search(self) -> None:
        query = self.query.get("q", "")
        urls = self.fixture.bing.get(query, [])
        self._send(
            200,
            pages.bing_results(
                query, urls[: self._BING_FIRST_PAGE], self.fixture.bing_related.get(query, [])
            ),
        )

    def _bing_async(self) -> None:
        urls = self.fixture.bing.get(self.query.get("q", ""), [])
        first = int(self.query.get("first", "0"))
        self._send(200, pages.bing_tiles(urls[first:], first))

    # -- DuckDuckGo ----------------------------------------------------------------------------

    @staticmethod
    def _vqd(query: str) -> str:
        return f"4-{abs(hash(query)) % 10**20:020d}"

    def _ddg_page(self) -> None:
        query = self.query.get("q", "")
        if query in self.fixture.ddg_anomaly:
            self._send(200, pages.ddg_anomaly_page())
        else:
            self._send(200, pages.ddg_page(query, self._vqd(query)))

    def _ddg_images(self) -> None:
        query = self.query.get("q", "")
        if query in self.fixture.ddg_refused:
            self._send(403, b"", "text/plain")
        elif self.query.get("vqd") != self._vqd(query):
            self._send(403, b'{"error": "invalid vqd"}', "application/json")
        else:
            urls = self.fixture.ddg.get(query, [])
            start = int(self.query.get("s", "0"))
            body = pages.ddg_results(
                query, self._vqd(query), urls[start : start + DDG_BATCH], start, len(urls)
            )
            self._send(200, body, "application/json; charset=utf-8")

    def _ddg_suggestions(self) -> None:
        phrases = self.fixture.ddg_related.get(self.query.get("q", ""), [])
        self._send(200, json.dumps([{"phrase": p} for p in phrases]), "application/json")

    # -- the faulty image host ---------------------------------------------------------------

    def _image(self, name: str) -> None:
        route = self.fixture.routes.get(name)
        if route is None:
            self._send(404, b"no such image", "text/plain")
            return
        with self.fixture.image_request():
            time.sleep(self.fixture.image_latency_s + route.delay_s)
            if route.redirect_to:
                self._redirect(route.redirect_to)
            else:
                self._send(route.status, route.body, route.content_type, send_length=route.send_length)
