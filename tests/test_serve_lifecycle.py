"""``python serve.py`` as a process manager runs it: real processes, real signals, real HTTP.

Each test starts its own server in its own process group and ends it: by SIGTERM to the main
process with requests still uploading, or by killing its inference worker. Requests are held by
uploads that stop halfway (:class:`processes.HeldUpload`), or in the queue by a stopped worker, so
nothing depends on how fast the machine is; time limits are generous bounds that only catch hangs.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, backbone_config, compose
from PIL import Image

from imgclf.testing.processes import HeldUpload, free_port, port_is_free, wait_for_group_to_end

HANG = 180  # seconds: a bound that only a hang reaches


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """An untrained network is enough: these tests are about processes, not answers."""
    from imgclf.models.checkpoint import export_model
    from imgclf.models.classifier import ImageClassifier

    model = ImageClassifier(backbone_config("inception_v3"), 3, image_size=75)
    return export_model(model, ["0", "1", "7"], tmp_path_factory.mktemp("lifecycle_model") / "model.ckpt", {})


def png(color: str = "gray") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_start_up_answers_503_until_loaded(model_path, tmp_path):
    """The real server's app, not yet running: its inference worker has not loaded the model,
    which keeps the start-up window open for as long as the test needs it."""
    from imgclf.serving.app import build_server

    server = build_server(compose("serve", [f"ckpt_path={model_path}"], output_dir=tmp_path))

    async def start_up() -> None:
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            assert_unavailable(await client.get("/health"), "loading")
            posted = await client.post("/classify", files={"img": ("early.png", png())})
            assert_unavailable(posted, "loading")
            assert (await client.get("/")).status_code == 200  # the page, telling a person to wait
            server.lit_api.state.model_loaded()  # what the worker does once its model is loaded
            health = await client.get("/health")
            assert (health.status_code, health.text) == (200, "ok")

    asyncio.run(start_up())


class Server:
    def __init__(self, model_path: Path, log_path: Path, *overrides: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            sys.executable,
            "serve.py",
            f"ckpt_path={model_path}",
            "host=127.0.0.1",
            f"port={self.port}",
            *overrides,
        ]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def health_until_ready(self) -> list[httpx.Response]:
        """Every /health answer from the first one to the first 200."""
        answers: list[httpx.Response] = []
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve.py exited:\n{self.log[-3000:]}"
            try:
                answers.append(httpx.get(f"{self.url}/health", timeout=10))
            except httpx.TransportError:
                pass  # not listening yet
            if answers and answers[-1].status_code == 200:
                return answers
            time.sleep(0.02)
        pytest.fail(f"serve.py never became ready:\n{self.log[-3000:]}")

    def count(self, what: str) -> int:
        return httpx.get(f"{self.url}/info", timeout=10).json()["server"][what]

    def wait_for(self, what: str, count: int) -> None:
        """Until /info says ``count`` requests are ``what`` (uploading or in flight)."""
        deadline = time.monotonic() + HANG
        while self.count(what) != count:
            assert time.monotonic() < deadline, f"never {count} {what}"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def assert_unavailable(response: httpx.Response, words: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["success"] is False and words in body["error"]


def assert_ended_cleanly(server: Server) -> None:
    """No process of the group left, the port free, no traceback in the log."""
    assert wait_for_group_to_end(server.process.pid) == []
    assert port_is_free(server.port)
    assert "Traceback" not in server.log, server.log[-3000:]


def test_sigterm_answers_requests_uploading_then_stops_everything(model_path, tmp_path):
    server = Server(model_path, tmp_path / "server.log", "shutdown_timeout=120")
    try:
        # Start-up: any answer before the model is loaded is a 503 (whether the port answers before
        # the load ends depends on the machine's speed: test_start_up_answers_503_until_loaded
        # holds that window open).
        answers = server.health_until_ready()
        for answer in answers[:-1]:
            assert_unavailable(answer, "loading")
        assert answers[-1].text == "ok"

        held = [HeldUpload(server.url, png()) for _ in range(8)]
        server.wait_for("uploads_in_progress", 8)
        os.kill(server.process.pid, signal.SIGTERM)

        # Draining: not ready, and new requests are turned away while the eight are still held.
        deadline = time.monotonic() + HANG
        while (health := httpx.get(f"{server.url}/health", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline, "still healthy long after SIGTERM"
            time.sleep(0.05)
        assert_unavailable(health, "shutting down")
        late = httpx.post(f"{server.url}/classify", files={"img": ("late.png", png())}, timeout=10)
        assert_unavailable(late, "shutting down")
        assert server.process.poll() is None

        for upload in held:
            response = upload.finish()
            assert response.status_code == 200, response.text
            assert len(response.json()["predictions"]) == 3
        assert server.process.wait(timeout=HANG) == 0
        assert_ended_cleanly(server)
    finally:
        server.kill()


def test_killed_worker_stops_the_server_with_one_line_and_status_3(model_path, tmp_path):
    server = Server(model_path, tmp_path / "server.log", "cors_origins=[http://allowed.test]")
    try:
        server.health_until_ready()
        check_narrowed_cors(server.url)
        workers = [line.split()[0] for line in children_running(server.process.pid, "spawn_main")]
        assert len(workers) == 1, workers
        worker = int(workers[0])
        # Stopped, the worker holds the request in its queue for certain when it is killed.
        os.kill(worker, signal.SIGSTOP)
        waiting = HeldUpload(server.url, png())
        waiting.release.set()
        server.wait_for("requests_in_flight", 1)
        os.kill(worker, signal.SIGKILL)

        assert_unavailable(waiting.finish(), "worker died")
        assert server.process.wait(timeout=HANG) == 3
        causes = [line for line in server.log.splitlines() if f"pid {worker}" in line]
        assert len(causes) == 1 and "killed by SIGKILL" in causes[0], server.log[-3000:]
        assert_ended_cleanly(server)
    finally:
        server.kill()


def children_running(pgid: int, word: str) -> list[str]:
    from imgclf.testing.processes import living_group_members

    return [member for member in living_group_members(pgid) if word in member]


def check_narrowed_cors(url: str) -> None:
    """cors_origins=[http://allowed.test]: that origin is named, others get no CORS header."""
    allowed = httpx.get(f"{url}/info", headers={"Origin": "http://allowed.test"}, timeout=10)
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.test"
    other = httpx.get(f"{url}/info", headers={"Origin": "http://other.test"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers
    preflight = {"Origin": "http://other.test", "Access-Control-Request-Method": "POST"}
    refused = httpx.options(f"{url}/classify", headers=preflight, timeout=10)
    assert refused.status_code == 400 and refused.json()["success"] is False
    assert "cors_origins" in refused.json()["error"]
