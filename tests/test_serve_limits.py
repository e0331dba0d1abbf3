"""What one client can hold of ``python serve.py``, and what it may learn, over real sockets.

One server for the module, with short deadlines (10 s for a body, 3 s for headers), one slot for
the model (``max_batch_size=1``, ``max_queue=0``), four for uploads, eight connections, and an
API key. Stalled clients are raw sockets that send headers and part of a body, then nothing.
Time limits on waiting are bounds that only catch hangs; nothing is measured.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import backbone_config, compose
from PIL import Image

from imgclf.testing.processes import start_serve, stop

API_KEY = "test-key-not-secret"
KEY = {"X-API-Key": API_KEY}
# long enough for a normal request to be answered meanwhile on a busy machine (2.5 s at load 7)
BODY_TIMEOUT = 10
HEADER_TIMEOUT = 3
MAX_UPLOADS = 4
LIMIT_CONCURRENCY = 8
HANG = 60  # seconds: a bound that only a hang reaches


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """An untrained network is enough: these tests are about what the server holds, not answers."""
    from imgclf.models.checkpoint import export_model
    from imgclf.models.classifier import ImageClassifier

    model = ImageClassifier(backbone_config("inception_v3"), 3, image_size=75)
    return export_model(model, ["0", "1", "7"], tmp_path_factory.mktemp("limits_model") / "model.ckpt", {})


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory) -> Iterator[dict[str, Any]]:
    log_path = tmp_path_factory.mktemp("limits") / "server.log"
    process, url = start_serve(
        f"ckpt_path={model_path}",
        "max_batch_size=1",
        "max_queue=0",
        f"max_uploads={MAX_UPLOADS}",
        f"body_timeout_s={BODY_TIMEOUT}",
        f"header_timeout_s={HEADER_TIMEOUT}",
        f"limit_concurrency={LIMIT_CONCURRENCY}",
        log_path=log_path,
        env={"LIT_SERVER_API_KEY": API_KEY},
    )
    try:
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, headers=KEY, timeout=HANG) as client:
            assert classify(client).status_code == 200  # the first inference, out of the way
            yield {"url": url, "port": port, "log": log_path, "client": client}
    finally:
        stop(process)
    assert process.returncode == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


@pytest.fixture
def client(server) -> httpx.Client:
    return server["client"]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), "gray").save(buffer, format="PNG")
    return buffer.getvalue()


def classify(client: httpx.Client) -> httpx.Response:
    return client.post("/classify", files={"img": ("gray.png", png())})


def stalled_upload(port: int) -> socket.socket:
    """A ``POST /classify`` that announces 10 kB, sends its headers and 100 bytes, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=HANG)
    head = (
        "POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Key: {API_KEY}\r\nContent-Type: multipart/form-data; boundary=stall\r\n"
        "Content-Length: 10000\r\n\r\n"
    )
    sock.sendall(head.encode() + b"--stall\r\n" + b"x" * 91)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a hang fails on HANG)."""
    received = b""
    with sock:
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_and_json(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def nothing_received_yet(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(HANG)
    return False


def wait_for_uploads(client: httpx.Client, count: int) -> None:
    deadline = time.monotonic() + HANG
    while client.get("/info").json()["server"]["uploads_in_progress"] != count:
        assert time.monotonic() < deadline, f"never {count} uploads in progress"
        time.sleep(0.02)


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests_counted(samples: dict, code: str, path: str = "/classify") -> float:
    return samples.get(("imgclf_http_requests_total", (("code", code), ("path", path))), 0.0)


# --- slow clients ----------------------------------------------------------------------------


def test_stalled_uploads_hold_no_slot_of_the_model_and_get_408(server, client):
    """Stalled uploads, one slot for the model: a normal client is answered meanwhile; uploads past
    max_uploads get 503; at the body deadline the stalled ones get 408 and their connection closed."""
    before = scrape(client)
    stalled = [stalled_upload(server["port"]) for _ in range(MAX_UPLOADS - 1)]
    wait_for_uploads(client, MAX_UPLOADS - 1)
    response = classify(client)
    assert response.status_code == 200, response.text
    assert all(nothing_received_yet(sock) for sock in stalled), "answered before the deadline"

    stalled.append(stalled_upload(server["port"]))
    wait_for_uploads(client, MAX_UPLOADS)
    refused = classify(client)
    assert refused.status_code == 503 and "uploads" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) > 0

    for sock in stalled:
        status, body = status_and_json(read_until_closed(sock))
        assert status == 408 and body["success"] is False and "did not arrive" in body["error"]
    assert client.get("/info").json()["server"]["uploads_in_progress"] == 0
    assert classify(client).status_code == 200
    after = scrape(client)
    assert requests_counted(after, "200") - requests_counted(before, "200") == 2
    assert requests_counted(after, "503") - requests_counted(before, "503") == 1
    assert requests_counted(after, "408") - requests_counted(before, "408") == MAX_UPLOADS


def test_silent_connections_are_closed_and_limit_concurrency_answers_503(server):
    """Past limit_concurrency open connections uvicorn answers 503; silent ones are closed after
    header_timeout_s, and then a new client is served."""
    silent = [socket.create_connection(("127.0.0.1", server["port"]), timeout=HANG) for _ in range(8)]
    with httpx.Client(base_url=server["url"], headers=KEY, timeout=HANG) as fresh:
        assert fresh.get("/health").status_code == 503  # uvicorn's "Service Unavailable", plain text
    for sock in silent:
        assert read_until_closed(sock) == b""  # closed by the server, having said nothing
    with httpx.Client(base_url=server["url"], headers=KEY, timeout=HANG) as fresh:
        assert fresh.get("/health").text == "ok"
        assert classify(fresh).status_code == 200


def test_headers_sent_slowly_or_too_large_are_cut_off(server):
    slow = socket.create_connection(("127.0.0.1", server["port"]), timeout=HANG)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    assert read_until_closed(slow) == b""
    huge = socket.create_connection(("127.0.0.1", server["port"]), timeout=HANG)
    huge.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"a" * 70_000 + b"\r\n\r\n")
    assert read_until_closed(huge).startswith(b"HTTP/1.1 400 ")


def test_a_client_leaving_mid_upload_is_one_log_line(server):
    sock = stalled_upload(server["port"])
    port = sock.getsockname()[1]
    sock.close()
    line = f"127.0.0.1:{port} disconnected after sending"
    deadline = time.monotonic() + HANG
    while line not in (log := server["log"].read_text()):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.05)
    assert len([entry for entry in log.splitlines() if line in entry]) == 1
    assert "Traceback" not in log and "Exception in ASGI" not in log


# --- what a client may learn -----------------------------------------------------------------


def test_the_api_key_guards_classify_info_and_metrics(server, model_path):
    with httpx.Client(base_url=server["url"], timeout=HANG) as anonymous:
        for response in (
            anonymous.get("/info"),
            anonymous.get("/info/litserve"),
            anonymous.get("/metrics"),
            anonymous.post("/classify", files={"img": ("gray.png", png())}),
        ):
            assert response.status_code == 401, response.request.url
            assert response.json() == {"success": False, "error": "invalid or missing X-API-Key header"}
        wrong = anonymous.get("/info", headers={"X-API-Key": API_KEY + "x"})
        assert wrong.status_code == 401
        assert anonymous.get("/health").text == "ok"  # for load balancers, which carry no key
        assert anonymous.get("/").status_code == 200


def test_info_names_files_not_folders(client, model_path):
    info = client.get("/info")
    assert info.status_code == 200
    assert info.json()["model_path"] == "model.ckpt" and info.json()["model_file"] == "model.ckpt"
    assert str(model_path.parent) not in info.text and str(Path.home()) not in info.text


def test_api_docs_are_off_unless_asked_for(client, model_path, tmp_path):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404, path
    from imgclf.serving.app import build_server

    on = build_server(compose("serve", [f"ckpt_path={model_path}", "api_docs=true"], output_dir=tmp_path))
    assert {"/docs", "/redoc", "/openapi.json"} <= {route.path for route in on.app.routes}


def test_metrics_count_answers_and_time_them(client):
    before = scrape(client)
    assert classify(client).status_code == 200
    assert client.post("/classify", files={"img": ("notes.txt", b"no image")}).status_code == 400
    after = scrape(client)
    assert requests_counted(after, "200") - requests_counted(before, "200") == 1
    assert requests_counted(after, "400") - requests_counted(before, "400") == 1
    assert requests_counted(after, "200", "/metrics") - requests_counted(before, "200", "/metrics") == 1
    count = ("imgclf_classify_duration_seconds_count", ())
    assert after[count] - before[count] == 2
    batches = ("imgclf_batch_size_count", ())
    assert after[batches] - before[batches] == 2  # the bad image had its own slot in a batch
    assert after[("imgclf_batch_size_bucket", (("le", "1.0"),))] == after[batches]
    gauges = {name: after[(name, ())] for name in ("imgclf_requests_in_flight", "imgclf_uploads_in_progress")}
    assert gauges == {"imgclf_requests_in_flight": 0, "imgclf_uploads_in_progress": 0}
    assert after[("imgclf_max_in_flight", ())] == 1 and after[("imgclf_max_uploads", ())] == MAX_UPLOADS
    assert after[("imgclf_ready", ())] == 1
