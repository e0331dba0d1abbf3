"""The HTTP server, driven over real HTTP: ``python serve.py`` runs once for the module.

Answers are compared exactly (as JSON floats) wherever the same pixels reach the model alone in a
batch of one; that is what makes "the same answer as classify.py" and "rotated before
classifying" checkable rather than approximate.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import REPO_ROOT, compose, launch_chromium, run_script
from PIL import Image

from imgclf.hardware import resolve_precision
from imgclf.testing.processes import free_port, living_group_members, start_serve, stop

MAX_BATCH = 4
MAX_QUEUE = 2
PAYLOAD_MB = 1


@pytest.fixture(scope="module")
def model_path(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` with its last layer scaled down 1000 times.

    The briefly trained model is so sure of itself that its probabilities are exactly 0 and 1 in
    float32, which would make every comparison below pass whatever the pixels; scaled, the same
    network gives probabilities that move with every pixel.
    """
    import torch

    from imgclf.models.checkpoint import export_model, load_model

    model, record = load_model(tiny_model)
    last = model.head.layers[-1]
    with torch.no_grad():
        last.weight /= 1000
        last.bias /= 1000
    return export_model(
        model, record["classes"], tmp_path_factory.mktemp("serve_model") / "model.ckpt", record["hparams"]
    )


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("serve")
    log_path, stdout_path = folder / "server.log", folder / "stdout.txt"
    process, url = start_serve(
        f"ckpt_path={model_path}",
        f"max_batch_size={MAX_BATCH}",
        f"max_queue={MAX_QUEUE}",
        f"max_payload_mb={PAYLOAD_MB}",
        log_path=log_path,
        stdout_path=stdout_path,
    )
    try:
        yield {"url": url, "process": process, "log": log_path}
    finally:
        stop(process)  # Ctrl+C: drains and exits 0, as SIGTERM does
    assert process.returncode == 0, log_path.read_text()[-3000:]
    log_text = log_path.read_text()
    # LitServe's and uvicorn's lines, which they would write to stdout, are in the log on stderr.
    assert "Shutting down LitServe" in log_text and '"GET /health HTTP/1.1" 200' in log_text
    assert stdout_path.read_text() == ""


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server["url"], timeout=60) as http:
        yield http


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits(small_digits_root) -> dict[str, Image.Image]:
    """One real test image per class, as RGB."""
    return {
        label: Image.open(next((small_digits_root / "test" / label).glob("*.png"))).convert("RGB")
        for label in ("0", "1", "7")
    }


def classify(client: httpx.Client, data: bytes, name: str = "photo.png", **fields: Any) -> httpx.Response:
    return client.post("/classify", files={"img": (name, data)}, data=fields)


def probabilities(response: httpx.Response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    return {p["label"]: p["probability"] for p in response.json()["predictions"]}


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["success"] is False and set(body) == {"success", "error"}
    assert body["error"]
    return body["error"]


# --- the API --------------------------------------------------------------------------------


def test_health_and_info(client, model_path):
    health = client.get("/health")
    assert health.status_code == 200 and health.text == "ok"
    info = client.get("/info").json()
    assert info["success"] is True
    assert info["backbone"] == "inception_v3"
    assert info["classes"] == ["0", "1", "7"]
    # file names only: the server's folders are not for its clients to know
    assert info["model_path"] == info["model_file"] == model_path.name
    assert str(model_path.parent) not in json.dumps(info)
    assert info["hparams"]["image_size"] == 75
    # auto: bf16 only where this CPU infers faster in it (AMX), and fp32 if bf16 changed an answer
    assert info["precision"] in {resolve_precision("auto", "cpu", "inference"), "32-true"}
    assert info["server"]["max_batch_size"] == MAX_BATCH
    assert info["server"]["ready"] is True and info["server"]["requests_in_flight"] == 0


def test_response_schema_and_order(client, digits):
    response = classify(client, encode(digits["7"]))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["predictions", "success"] and body["success"] is True
    predictions = body["predictions"]
    assert all(list(p) == ["label", "probability"] for p in predictions)
    assert sorted(p["label"] for p in predictions) == ["0", "1", "7"]
    values = [p["probability"] for p in predictions]
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(1.0, abs=1e-5)


def test_top_k(client, digits):
    data = encode(digits["1"])
    everything = classify(client, data).json()["predictions"]
    assert classify(client, data, top_k="2").json()["predictions"] == everything[:2]
    assert classify(client, data, top_k="10").json()["predictions"] == everything
    for bad in ("0", "-1", "two", "1.5"):
        assert "top_k" in assert_error(classify(client, data, top_k=bad), 400)


def test_same_probabilities_as_classify_script(client, digits, model_path, tmp_path):
    path = tmp_path / "seven.png"
    path.write_bytes(encode(digits["7"]))
    script = run_script("classify", f"ckpt_path={model_path}", f"img={path}", timeout=300)
    assert script.returncode == 0, script.stderr
    assert probabilities(classify(client, path.read_bytes())) == json.loads(script.stdout)


# --- valid but awkward images: 200, handled the way load_image promises ----------------------


def test_exif_rotation_is_applied_before_classifying(client, digits):
    photo = encode(digits["7"], "JPEG", quality=95, exif=exif_orientation(6))
    stored = Image.open(io.BytesIO(photo)).convert("RGB")  # pixels as stored, not yet rotated
    # Orientation 6: the camera was turned, the picture is shown rotated 90 degrees clockwise.
    upright = stored.transpose(Image.Transpose.ROTATE_270)
    answer = probabilities(classify(client, photo, "photo.jpg"))
    assert answer == probabilities(classify(client, encode(upright)))
    assert answer != probabilities(classify(client, encode(stored)))


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def test_first_frame_of_gif_and_tiff(client, digits):
    frames = [digits["7"], digits["0"]]
    for fmt in ("GIF", "TIFF"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        opened = Image.open(io.BytesIO(data))
        assert opened.n_frames == 2
        first = opened.convert("RGB")
        opened.seek(1)
        second = opened.convert("RGB")
        answer = probabilities(classify(client, data, f"anim.{fmt.lower()}"))
        assert answer == probabilities(classify(client, encode(first))), fmt
        assert answer != probabilities(classify(client, encode(second))), fmt


def test_transparency_is_flattened_on_white(client, digits):
    rgb = np.asarray(digits["7"])
    alpha = np.where(rgb.mean(axis=2) < 64, 0, 255).astype(np.uint8)  # dark background see-through
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    flattened = np.where(alpha[..., None] == 0, 255, rgb).astype(np.uint8)
    answer = probabilities(classify(client, encode(rgba)))
    assert answer == probabilities(classify(client, encode(Image.fromarray(flattened, "RGB"))))


def test_grayscale_cmyk_and_16_bit(client, digits):
    gray = digits["7"].convert("L")
    assert probabilities(classify(client, encode(gray))) == probabilities(
        classify(client, encode(gray.convert("RGB")))
    )
    cmyk = encode(digits["7"].convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    probabilities(classify(client, cmyk, "cmyk.jpg"))
    deep = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)  # 16-bit grayscale
    data = encode(deep)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    probabilities(classify(client, data))


# --- bad requests: 4xx with a JSON error, never a 500 ----------------------------------------


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    return data[: len(data) // 2]


def decompression_bomb() -> bytes:
    """100 megapixels in about twelve kilobytes."""
    return encode(Image.new("1", (10_000, 10_000)))


BAD_FILES = {
    "empty file": b"",
    "text file": b"just some words, not an image\n",
    "html": b"<!doctype html><html><body><img src='http://localhost/cat.jpg'></body></html>",
    "truncated jpeg": truncated_jpeg,
    "decompression bomb": decompression_bomb,
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files(client, name):
    data = BAD_FILES[name]
    assert_error(classify(client, data() if callable(data) else data, "upload"), 400)


def test_bad_forms(client, digits):
    image = encode(digits["7"])
    assert "img" in assert_error(client.post("/classify", files={"other": ("a.png", image)}), 400)
    assert "text" in assert_error(
        client.post("/classify", data={"img": "http://localhost/a.jpg"}, files={"x": ("x", b"")}),
        400,
    )
    two = [("img", ("a.png", image)), ("img", ("b.png", image))]
    assert "one image" in assert_error(client.post("/classify", files=two), 400)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json", b'{"img": "http://localhost/a.jpg"}'),
        ("application/x-www-form-urlencoded", b"img=http%3A%2F%2Flocalhost%2Fa.jpg"),
        ("text/plain", b"hello"),
        ("image/jpeg", b"\xff\xd8\xff"),
        (None, b""),
    ],
)
def test_unsupported_content_types(client, content_type, body):
    headers = {"content-type": content_type} if content_type else {}
    assert_error(client.post("/classify", content=body, headers=headers), 415)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/form-data", b"no boundary given"),
        ("multipart/form-data; boundary=xyz", b"garbage that never starts a part"),
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="img"; filename="a.png"\r\n\r\n\x89PNG',
        ),
    ],
)
def test_malformed_multipart(client, content_type, body):
    assert_error(client.post("/classify", content=body, headers={"content-type": content_type}), 400)


def test_other_routes_answer_json(client):
    assert_error(client.get("/classify"), 405)
    assert_error(client.get("/no/such/page"), 404)


def inference_worker(process: subprocess.Popen) -> int:
    """The pid of the server's one inference worker (spawned; the HTTP processes are forked)."""
    workers = [member for member in living_group_members(process.pid) if "spawn_main" in member]
    assert len(workers) == 1, workers
    return int(workers[0].split()[0])


def test_overload_gets_503_at_once(server, client, digits):
    """Past max_queue waiting requests (beyond a batch for the worker), 503 at once, then served."""
    limit = MAX_QUEUE + MAX_BATCH
    worker = inference_worker(server["process"])
    answers: list[httpx.Response] = []
    posts = [
        threading.Thread(target=lambda: answers.append(classify(client, encode(digits["7"]))))
        for _ in range(limit)
    ]
    # Stopped, the inference worker keeps every admitted request waiting for certain.
    os.kill(worker, signal.SIGSTOP)
    try:
        for post in posts:
            post.start()
        deadline = time.monotonic() + 120
        while client.get("/info").json()["server"]["requests_in_flight"] < limit:
            assert time.monotonic() < deadline, "the requests never all reached the server"
            time.sleep(0.05)
        for _ in range(3):
            response = classify(client, encode(digits["1"]))
            assert "busy" in assert_error(response, 503)
            assert int(response.headers["retry-after"]) > 0
        assert client.get("/health").status_code == 200  # busy, not unready
    finally:
        os.kill(worker, signal.SIGCONT)
    for post in posts:
        post.join()
    assert len(answers) == limit and all(probabilities(answer) for answer in answers)
    assert probabilities(classify(client, encode(digits["1"])))


# --- browsers: CORS and the page at / ---------------------------------------------------------

ORIGIN = {"Origin": "http://elsewhere.test"}


def test_cors_for_any_origin(client, digits):
    info = client.get("/info", headers=ORIGIN)
    assert info.headers["access-control-allow-origin"] == "*"
    preflight = client.options(
        "/classify",
        headers={
            **ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    answer = client.post("/classify", files={"img": ("a.png", encode(digits["7"]))}, headers=ORIGIN)
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "x-batch-size" in answer.headers["access-control-expose-headers"].lower()
    # errors carry the header too, so that a page can read what went wrong
    for error in (
        client.post("/classify", json={"img": "x"}, headers=ORIGIN),
        client.post("/classify", files={"img": ("a.txt", b"text")}, headers=ORIGIN),
    ):
        assert error.status_code in (400, 415)
        assert error.headers["access-control-allow-origin"] == "*"


def test_page_classifies_an_upload_in_chromium(server, client, digits, chromium_path, tmp_path):
    """The page at /, in a real browser: choose a file, see the ranked bars /classify answered."""
    from playwright.sync_api import sync_playwright

    upload = tmp_path / "seven.png"
    upload.write_bytes(encode(digits["7"]))
    expected = classify(client, upload.read_bytes()).json()["predictions"]
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        page = browser.new_page()
        page.goto(server["url"] + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('inception_v3')")
        assert "3 classes: 0, 1, 7" in page.inner_text("#model")
        page.set_input_files("#file", str(upload))
        page.wait_for_selector(".prediction")
        labels = page.locator(".prediction .label").all_inner_texts()
        values = page.locator(".prediction .value").all_inner_texts()
        widths = page.locator(".prediction .fill").evaluate_all("els => els.map(e => e.style.width)")
        page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"no image"})
        page.wait_for_function("document.getElementById('status').className === 'error'")
        error = page.inner_text("#status")
        browser.close()
    assert labels == [p["label"] for p in expected]
    assert values == [f"{100 * p['probability']:.1f} %" for p in expected]
    # The browser reads the width back in its own form ("99.0%" is "99%").
    assert [float(w.rstrip("%")) for w in widths] == [float(v.rstrip(" %")) for v in values]
    assert "(400)" in error


def test_a_page_on_another_origin_can_call_the_api(server, digits, chromium_path):
    """CORS as a browser enforces it: a page of another origin posts an image and reads the answer."""
    from playwright.sync_api import sync_playwright

    image = list(encode(digits["0"]))
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        page = browser.new_page()
        # The same server under another name is another origin. (A page made up by the browser, or
        # from a public address, may not reach a loopback address at all, CORS or not.)
        page.goto(server["url"].replace("127.0.0.1", "localhost") + "/")
        answer = page.evaluate(
            """async ([url, bytes]) => {
                const form = new FormData();
                form.append("img", new Blob([new Uint8Array(bytes)], {type: "image/png"}), "zero.png");
                const response = await fetch(url + "/classify", {method: "POST", body: form});
                return {status: response.status, batch: response.headers.get("X-Batch-Size"),
                        body: await response.json()};
            }""",
            [server["url"], image],
        )
        browser.close()
    assert answer["status"] == 200 and answer["body"]["success"] is True
    assert answer["batch"] is not None
    assert sorted(p["label"] for p in answer["body"]["predictions"]) == ["0", "1", "7"]


def test_payload_limit(client):
    big = os.urandom(PAYLOAD_MB * 1024 * 1024 + 1)
    assert "limit" in assert_error(classify(client, big), 413)
    # Without a Content-Length the limit is enforced while the body streams in.
    boundary = "limitboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="img"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/classify",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413)


def test_one_bad_image_does_not_fail_its_batch(client, digits):
    """Four concurrent requests, one of them broken, answered from one batch."""
    alone = {label: probabilities(classify(client, encode(digits[label]))) for label in ("0", "1", "7")}
    uploads = [encode(digits["0"]), b"not an image", encode(digits["1"]), encode(digits["7"])]
    # 36 megapixels keep the worker decoding while the four requests queue up behind it.
    slow = encode(Image.new("RGB", (6000, 6000), "gray"))
    for _attempt in range(5):  # arrival order is up to the OS; retry until the four met
        busy = threading.Thread(target=classify, args=(client, slow))
        busy.start()
        time.sleep(0.2)
        responses = post_together(client, uploads)
        busy.join()
        assert_error(responses[1], 400)
        for label, response in zip(("0", "1", "7"), (responses[0], responses[2], responses[3])):
            # batch composition may move the last bits of a probability, never more
            assert probabilities(response) == pytest.approx(alone[label], abs=1e-3)
        if all(r.headers["x-batch-size"] == str(MAX_BATCH) for r in responses):
            return
    pytest.fail("the four concurrent requests never shared a batch")


def post_together(client: httpx.Client, uploads: list[bytes]) -> list[httpx.Response]:
    start = threading.Barrier(len(uploads))
    responses: list[httpx.Response | None] = [None] * len(uploads)

    def post(index: int) -> None:
        start.wait()
        responses[index] = classify(client, uploads[index])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def test_still_right_after_the_battery(client, server, digits, model_path, tmp_path):
    """Runs last: the server is alive, answers as before, and logged no traceback."""
    test_same_probabilities_as_classify_script(client, digits, model_path, tmp_path)
    assert server["process"].poll() is None
    assert "Traceback" not in server["log"].read_text()


# --- without a running server -----------------------------------------------------------------


def test_config_defaults(tmp_path):
    cfg = compose("serve", output_dir=tmp_path)
    assert cfg.ckpt_path == "data/trained_model/model.ckpt"
    assert (cfg.port, cfg.max_payload_mb, cfg.precision) == (5000, 20, "auto")
    assert (cfg.max_queue, cfg.shutdown_timeout, list(cfg.cors_origins)) == (64, 30, ["*"])
    limits = (cfg.max_uploads, cfg.body_timeout_s, cfg.header_timeout_s, cfg.limit_concurrency)
    assert limits == (32, 30, 10, 256)
    assert cfg.api_docs is False and cfg.max_image_pixels < 64_000_000  # below the scraper's


def test_missing_model_fails_before_serving(tmp_path):
    from imgclf.errors import ImgclfError
    from imgclf.serving.app import build_server

    cfg = compose("serve", [f"ckpt_path={tmp_path}/none.ckpt"], output_dir=tmp_path)
    with pytest.raises(ImgclfError, match="no trained model"):
        build_server(cfg)


def test_the_model_is_chosen_once_per_start(model_path, tmp_path, monkeypatch):
    """build_server chooses the file; /info and the workers' predictor use that choice."""
    from imgclf.inference import runtimes
    from imgclf.serving import app

    choose, choices = runtimes.choose_model, []

    def counted(*args, **kwargs):
        choices.append(choose(*args, **kwargs))
        return choices[-1]

    monkeypatch.setattr(app, "choose_model", counted)
    monkeypatch.setattr(runtimes, "choose_model", counted)  # as load_predictor would call it
    server = app.build_server(compose("serve", [f"ckpt_path={model_path}"], output_dir=tmp_path))
    api = server.lit_api
    assert len(choices) == 1 and api.choice is choices[0]
    predictor = api.open_predictor("cpu")  # what each inference worker does in setup
    assert len(choices) == 1 and predictor.runtime == api.choice.runtime == "torch"


def test_busy_port_is_a_clear_error():
    from imgclf.errors import ImgclfError
    from imgclf.serving.app import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ImgclfError, match="port="):
            check_port_free("127.0.0.1", taken.getsockname()[1])


def test_missing_model_is_one_line_on_stderr(tmp_path):
    result = subprocess.run(
        [sys.executable, "serve.py", f"ckpt_path={tmp_path}/none.ckpt", f"port={free_port()}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("error: no trained model")


@pytest.mark.parametrize(
    "override",
    [
        "host=localhost",
        "accelerator=tpu",
        "max_batch_size=0",
        "workers_per_device=0",
        "batch_timeout=-1",
        "max_queue=-1",
        "shutdown_timeout=-5",
        "cors_origins=*",
        "max_uploads=0",
        "body_timeout_s=0",
        "header_timeout_s=-1",
        "keep_alive_timeout_s=0",
        "limit_concurrency=1",
        "max_header_kb=0",
    ],
)
def test_bad_settings_are_user_errors(tmp_path, override):
    from imgclf.errors import ImgclfError
    from imgclf.serving.app import build_server

    with pytest.raises(ImgclfError, match=override.split("=")[0]):
        build_server(compose("serve", [override], output_dir=tmp_path))


def test_cpu_workers_share_the_cores(tmp_path):
    from imgclf.serving.app import cpu_threads

    assert cpu_threads(compose("serve", [], output_dir=tmp_path)) is None
    two = compose("serve", ["workers_per_device=2"], output_dir=tmp_path)
    assert cpu_threads(two) == max(1, os.cpu_count() // 2)


# --- deployment files: the Dockerfile and systemd unit match the code; docs/deploying.md names them --


def deploying_page() -> str:
    return (REPO_ROOT / "docs" / "deploying.md").read_text()


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines = [
        line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")
    ]
    return [(line.split(None, 1)[0], line.split(None, 1)[1].strip()) for line in lines]


def test_dockerfile_runs_serve_py_on_the_configured_port(tmp_path):
    from imgclf.serving.app import HEALTH_PATH

    cfg = compose("serve", output_dir=tmp_path)
    text = (REPO_ROOT / "Dockerfile").read_text()
    # The page points at the file and describes it, instead of a copy that would drift from it.
    assert "`Dockerfile`" in deploying_page() and "FROM python" not in deploying_page()
    steps = dockerfile_instructions(text)
    found = {name: value for name, value in steps}
    assert re.fullmatch(r"python:3\.\d+-slim", found["FROM"])
    assert json.loads(found["ENTRYPOINT"]) == ["python", "serve.py"]
    assert found["EXPOSE"] == str(cfg.port)
    assert found["STOPSIGNAL"] == "SIGTERM"
    probe = json.loads(found["HEALTHCHECK"].split("CMD", 1)[1])
    assert f"http://127.0.0.1:{cfg.port}{HEALTH_PATH}" in probe[-1]
    runs = [value for name, value in steps if name == "RUN"]
    assert any("pip install torch torchvision --index-url" in run for run in runs)  # the CPU wheels
    copied = " ".join(value for name, value in steps if name == "COPY")
    assert all(path in copied for path in ("serve.py", "conf", "imgclf", "pyproject.toml"))


def test_systemd_unit_stops_with_sigterm_and_restarts_on_worker_death(tmp_path):
    import configparser

    from imgclf.serving.lifecycle import WORKER_DIED

    cfg = compose("serve", output_dir=tmp_path)
    text = (REPO_ROOT / "deploy" / "imgclf-serve.service").read_text()
    assert "`deploy/imgclf-serve.service`" in deploying_page() and "[Service]" not in deploying_page()
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str
    unit.read_string(text)
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["serve.py", f"port={cfg.port}"]
    assert (service["KillSignal"], service["KillMode"]) == ("SIGTERM", "mixed")
    assert float(service["TimeoutStopSec"]) > cfg.shutdown_timeout
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert WORKER_DIED != 2
