"""The downloader against hostile hosts, played by plain-HTTP servers on loopback: it reaches only
public addresses, checks every redirect hop, connects to the address it checked, and does not
inflate a compressed body past its byte limit."""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import threading
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from PIL import Image

from imgclf.scrape import downloader
from imgclf.scrape.downloader import (
    DownloadSettings,
    Rejected,
    download,
    fetch,
    is_public_address,
    make_client,
)
from imgclf.scrape.engines import ImageHit
from imgclf.scrape.engines.base import url_problem
from imgclf.testing.scrape_fixture.fixtures import fixture_server_fixture, web_fixture  # noqa: F401 - fixtures

# A global address that nothing connects to: an HTTP proxy on loopback answers in its name.
PUBLIC = "93.184.215.14"


def jpeg(size=(96, 72), color="teal") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class Host:
    """A plain-HTTP server on a loopback address standing in for a host; it records every request
    (also those sent to it as a proxy, with an absolute URL)."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                host.requests.append((self.path, dict(self.headers)))
                status, headers, body = host.routes.get(urlsplit(self.path).path, (404, {}, b"no"))
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://{address}:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hosts(monkeypatch):
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    started: list[Host] = []

    def start(address: str = "127.0.0.1", port: int = 0) -> Host:
        started.append(Host(address, port))
        return started[-1]

    yield start
    for host in started:
        host.stop()


def settings(**changes) -> DownloadSettings:
    values = {"timeout_s": 2, "connect_timeout_s": 2, "deadline_s": 5, "max_bytes": 1_000_000}
    return DownloadSettings(**{**values, **changes})


class Resolver:
    """Answers from a table (a list of answers per name, the last one repeated), addresses as
    themselves; counts the questions."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            answers = self.table[host]
            return answers.pop(0) if len(answers) > 1 else answers[0]


def outcome(url: str, download_settings: DownloadSettings, resolver=downloader.resolve):
    async def run():
        async with make_client(download_settings) as client:
            return await fetch(client, url, download_settings, resolver)

    return asyncio.run(run())


def rejection(url: str, download_settings: DownloadSettings, resolver=downloader.resolve) -> str:
    with pytest.raises(Rejected) as info:
        outcome(url, download_settings, resolver)
    return info.value.reason


def test_loopback_is_refused_without_being_contacted(hosts):
    victim = hosts()
    victim.routes["/secret"] = (200, {"Content-Type": "image/jpeg"}, jpeg())
    assert rejection(f"{victim.base}/secret", settings()) == "forbidden_host"
    assert rejection(f"http://localhost:{victim.port}/secret", settings()) == "forbidden_host"
    assert victim.requests == []
    data, _ = outcome(f"{victim.base}/secret", settings(allow_private_hosts=True))  # the fixture's way
    assert data == jpeg() and len(victim.requests) == 1


@pytest.mark.parametrize(
    "spelling",
    [
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ],
)
def test_address_spellings_are_refused(hosts, spelling):
    victim = hosts()
    victim.routes["/"] = (200, {}, jpeg())
    assert rejection(f"http://{spelling}:{victim.port}/", settings()) == "forbidden_host"
    if not spelling.startswith("["):  # numbers in disguise are refused even where loopback is allowed
        assert (
            rejection(f"http://{spelling}:{victim.port}/", settings(allow_private_hosts=True))
            == "forbidden_host"
        )
        assert url_problem(f"http://{spelling}/a.jpg", ()) == "numeric_host"
    assert victim.requests == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("10.1.2.3", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.251", False),  # multicast
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ],
)
def test_which_addresses_are_public(address, public):
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{victim}/secret",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:{victim}/secret",
        "http://2130706433:{victim}/secret",
        "http://internal.example:{victim}/secret",
    ],
)
def test_a_redirect_from_a_public_host_to_an_internal_one_is_refused(hosts, monkeypatch, target):
    victim = hosts()
    victim.routes["/secret"] = (200, {}, jpeg())
    public = hosts()  # an HTTP proxy: it answers for PUBLIC, sent the checked address by the downloader
    location = target.format(victim=victim.port)
    public.routes["/image.jpg"] = (302, {"Location": location}, b"")
    monkeypatch.setenv("HTTP_PROXY", public.base)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a hop to 127.0.0.1 that were let through reaches the victim
    resolver = Resolver({"images.example": [[PUBLIC]], "internal.example": [["127.0.0.1"]]})

    assert rejection("http://images.example/image.jpg", settings(), resolver) == "forbidden_host"

    assert [path for path, _ in public.requests] == [f"http://{PUBLIC}/image.jpg"]
    assert public.requests[0][1]["Host"] == "images.example"
    assert victim.requests == []


def test_the_redirect_test_would_see_a_hop_let_through(hosts, monkeypatch):
    """The same redirect with loopback allowed reaches the victim: the test above can fail."""
    victim = hosts()
    victim.routes["/secret"] = (200, {}, jpeg())
    public = hosts()
    public.routes["/image.jpg"] = (302, {"Location": f"{victim.base}/secret"}, b"")
    monkeypatch.setenv("HTTP_PROXY", public.base)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    resolver = Resolver({"images.example": [[PUBLIC]]})
    data, final_url = outcome("http://images.example/image.jpg", settings(allow_private_hosts=True), resolver)
    assert data == jpeg() and final_url == f"{victim.base}/secret" and len(victim.requests) == 1


def test_every_address_of_a_host_must_be_public(hosts):
    victim = hosts()
    resolver = Resolver({"mixed.example": [[PUBLIC, "127.0.0.1"]]})
    assert rejection(f"http://mixed.example:{victim.port}/", settings(), resolver) == "forbidden_host"
    assert victim.requests == []


def test_the_connection_goes_to_the_address_that_was_checked(hosts):
    """A name that resolves to 127.0.0.1, then to 127.0.0.2 (DNS rebinding): the downloader asks
    once and connects to the first answer; the second server is never reached."""
    first = hosts("127.0.0.1")
    second = hosts("127.0.0.2", first.port)
    first.routes["/a.jpg"] = (200, {}, jpeg(color="red"))
    second.routes["/a.jpg"] = (200, {}, jpeg(color="blue"))
    resolver = Resolver({"rebind.example": [["127.0.0.1"], ["127.0.0.2"]]})

    data, final_url = outcome(
        f"http://rebind.example:{first.port}/a.jpg", settings(allow_private_hosts=True), resolver
    )

    assert data == jpeg(color="red") and final_url == f"http://rebind.example:{first.port}/a.jpg"
    assert resolver.asked == ["rebind.example"]
    assert first.requests[0][1]["Host"] == f"rebind.example:{first.port}"
    assert second.requests == []


def test_tls_is_checked_for_the_host_name_not_the_address(web):
    """The fixture's certificate names localhost and 127.0.0.1. Connected to 127.0.0.1 for
    localhost, the handshake passes and the request arrives under that name (the fixture serves
    images under 127.0.0.1 only, so it answers 404); for a name the certificate lacks, nothing
    arrives."""
    resolver = Resolver({"localhost": [["127.0.0.1"]], "elsewhere.example": [["127.0.0.1"]]})
    tls = settings(verify=str(web.cert), allow_private_hosts=True)
    data, _ = outcome(f"https://127.0.0.1:{web.port}/img/photo1.jpg", tls, resolver)
    assert Image.open(io.BytesIO(data)).size == (96, 72)
    assert rejection(f"https://localhost:{web.port}/img/photo1.jpg", tls, resolver) == "http_error"
    assert web.count("localhost", "/img/") == 1
    assert rejection(f"https://elsewhere.example:{web.port}/img/photo1.jpg", tls, resolver) == "http_error"
    assert web.count("elsewhere.example", "/img/") == 0


def _gzip_of_zeros(megabytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(megabytes)) + packer.flush()


def test_a_gzip_bomb_is_not_inflated_past_the_byte_limit(hosts):
    bomb = _gzip_of_zeros(64)  # about 64 KB on the wire
    host = hosts()
    host.routes["/bomb.jpg"] = (200, {"Content-Encoding": "gzip", "Content-Type": "image/jpeg"}, bomb)
    tracemalloc.start()
    try:
        reason = rejection(f"{host.base}/bomb.jpg", settings(max_bytes=1_000_000, allow_private_hosts=True))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == "too_large"
    assert peak < 16_000_000  # httpx's own decoder inflates a whole chunk: ~64 MB
    assert host.requests[0][1]["Accept-Encoding"] == "identity"


def test_a_gzipped_image_sent_anyway_is_read(hosts):
    host = hosts()
    host.routes["/photo.jpg"] = (200, {"Content-Encoding": "gzip"}, gzip.compress(jpeg()))
    host.routes["/odd.jpg"] = (200, {"Content-Encoding": "br"}, jpeg())
    data, _ = outcome(f"{host.base}/photo.jpg", settings(allow_private_hosts=True))
    assert data == jpeg()
    assert rejection(f"{host.base}/odd.jpg", settings(allow_private_hosts=True)) == "http_error"


def test_refused_candidates_are_counted_and_never_saved(hosts):
    victim = hosts()
    victim.routes["/a.jpg"] = (200, {}, jpeg())
    saved = []

    async def run():
        quiet = settings()
        async with make_client(quiet) as client:
            hits = [ImageHit(f"{victim.base}/a.jpg"), ImageHit(f"http://0x7f.1:{victim.port}/a.jpg")]
            return await download(hits, 2, lambda *args: saved.append(args), client, quiet)

    assert asyncio.run(run()) == {"forbidden_host": 2}
    assert saved == [] and victim.requests == []


def test_decodes_in_flight_hold_at_most_max_pixels(hosts, monkeypatch):
    host = hosts()
    for n in range(6):
        host.routes[f"/{n}.jpg"] = (200, {}, jpeg((100, 100), (n * 40, 80, 120)))
    active, most = [0], [0]
    lock = threading.Lock()
    real_prepare = downloader.prepare

    def counting_prepare(data, download_settings):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            threading.Event().wait(0.2)  # long enough for the other downloads to arrive
            return real_prepare(data, download_settings)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(downloader, "prepare", counting_prepare)
    # Two 10,000-pixel images fit in 25,000 pixels, three do not; six downloads run at once.
    budget = settings(max_pixels=25_000, concurrency=6, allow_private_hosts=True)

    async def run():
        async with make_client(budget) as client:
            hits = [ImageHit(f"{host.base}/{n}.jpg") for n in range(6)]
            return await download(hits, 6, lambda *args: None, client, budget)

    assert asyncio.run(run()) == {"downloaded": 6}
    assert most[0] == 2
