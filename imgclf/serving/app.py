"""The HTTP server: the original tool's ``POST /classify`` API on LitServe, with dynamic batching.

How a request travels, and why nothing a client sends can fail someone else's request:

1. In the HTTP process, uvicorn (with :class:`~imgclf.serving.litserve_adapter.BoundedHttpProtocol`)
   bounds the connections, the time and size of request headers and the idle time between
   requests; the middlewares (:mod:`imgclf.serving.middleware`, in the order a request meets them)
   count the answer, add the CORS headers, answer requests that are not a multipart form or that
   announce a body over the payload limit, answer 503 while the server cannot take the request
   (loading, draining, overloaded), read the body within ``body_timeout_s`` (else 408) and up to
   the payload limit (else 413), and only then admit it to the model; ``ClassifierAPI.authorize``
   checks the API key and parses the form, so that a malformed multipart body gets a 400 there.
2. In the inference worker, LitServe's own batching loop gathers requests into a batch, and
   ``decode_request`` decodes and preprocesses each one on its own, before the batch is stacked
   for the model, and never raises: a missing field or an undecodable image becomes a
   :class:`Rejection` that travels through the batch in its slot.
3. ``predict`` runs the model once on the good images of the batch; ``encode_response`` turns each
   slot into its own answer, ``200`` with ranked predictions or ``4xx`` with the error.
   A request with ``explain=true`` is in the batch like any other, and then gets its Grad-CAM
   overlay computed on its own, in fp32 (:mod:`imgclf.inference.explain`); only a PyTorch model
   has the gradients for it, so a server running an exported ONNX file answers such a request 400
   (its point is to serve without PyTorch's model in memory; a second, PyTorch, copy in every
   worker for the odd explanation would double that).

Every error, LitServe's and FastAPI's included, is JSON ``{"success": false, "error": ...}``
(:func:`imgclf.serving.middleware.error_response`), and carries the CORS headers
(``cors_origins``) as every answer does (uvicorn's own refusals, past ``limit_concurrency`` or for
malformed or oversized headers, are plain text). With an API key set (``LIT_SERVER_API_KEY``),
``/classify``, ``/info``, ``/card`` and ``/metrics`` need it; ``/health`` and the page at ``/`` do not.
The server loads only the model file chosen once at start (``choose_model``) and never fetches
anything a client names: the image bytes must be in the request. What LitServe and uvicorn offer
no option for is done in :mod:`imgclf.serving.litserve_adapter`, and nowhere else.
"""

from __future__ import annotations

import functools
import hmac
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from litserve.loops import BatchedLoop
from PIL import Image
from starlette.exceptions import HTTPException

from imgclf.data.images import DEFAULT_MAX_PIXELS, load_image
from imgclf.errors import ImgclfError
from imgclf.hardware import uses_cuda
from imgclf.inference.card import CARD_HTML, CARD_MD
from imgclf.inference.explain import explain, png_base64
from imgclf.inference.predict import PredictorBase
from imgclf.inference.runtimes import ModelChoice, choose_model, model_paths, open_predictor
from imgclf.process import end_children
from imgclf.serving import litserve_adapter, middleware, prometheus
from imgclf.serving.lifecycle import WORKER_DIED, ServingState, Supervisor
from imgclf.serving.middleware import BATCH_SIZE_HEADER, USAGE, error_response
from imgclf.serving.settings import ServeSettings
from imgclf.settings import typed

log = logging.getLogger(__name__)

API_PATH = "/classify"
INFO_PATH = "/info"
HEALTH_PATH = "/health"
CARD_PATH = "/card"
# The card is the server's own file, its text from scraped data escaped; the policy also keeps a
# browser from running or fetching anything in it, should that escaping ever miss.
CARD_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
# LitServe's own /info answers {"model": <fixed metadata>, "server": <its settings>}: neither the
# fields /info has always had at its top level nor the live counts, so it keeps its own path.
LITSERVE_INFO_PATH = "/info/litserve"
NO_API_KEY = "invalid or missing X-API-Key header"


class RequestError(ImgclfError):
    """The client's request is malformed (as opposed to the image in it)."""


@dataclass(frozen=True)
class Rejection:
    """A request that failed before the model saw it (a 400); it keeps its slot in the batch."""

    error: str


@dataclass(frozen=True)
class Decoded:
    """A request ready for the model: its preprocessed image, how many labels it wants, and the
    decoded picture when it wants the heatmap painted over it."""

    image: torch.Tensor
    top_k: int | None
    picture: Image.Image | None = None


@dataclass(frozen=True)
class Answer:
    """One slot of a batch after ``predict``: ranked predictions or the request's rejection."""

    result: list[dict[str, Any]] | Rejection
    batch_size: int
    explanation: dict[str, str] | None = None


def require_api_key(request: Request) -> None:
    """401 unless the request carries the API key (``LIT_SERVER_API_KEY``), or none is set.

    The server's one key check: LitServe's ``authorize`` hook for its routes, a dependency of ours.
    LitServe's own check does not apply (it is off for an API with an ``authorize`` hook), and
    would not do the same: it reads the key once, at import, compares it in variable time, and
    answers a missing key with FastAPI's "Not authenticated" and a wrong one with another message.
    """
    api_key = os.environ.get("LIT_SERVER_API_KEY")
    if api_key and not hmac.compare_digest(request.headers.get("x-api-key", "").encode(), api_key.encode()):
        raise HTTPException(401, NO_API_KEY)


def parse_top_k(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip().isdigit() or int(value) < 1:
        raise RequestError(f"top_k={value!r}: give a whole number of at least 1, e.g. -F top_k=3")
    return int(value)


EXPLAIN_VALUES = {"true": True, "1": True, "false": False, "0": False, "": False}


def parse_explain(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, str) or value.strip().lower() not in EXPLAIN_VALUES:
        raise RequestError(f"explain={value!r}: give true or false, e.g. POST /classify?explain=true")
    return EXPLAIN_VALUES[value.strip().lower()]


def image_bytes(form: Any) -> bytes:
    """The bytes of the one uploaded ``img`` file in a parsed multipart form."""
    uploads = form.getlist("img")
    if not uploads:
        raise RequestError(f"missing form field 'img'; {USAGE}")
    if len(uploads) > 1:
        raise RequestError(f"{len(uploads)} 'img' fields; send one image per request")
    upload = uploads[0]
    if isinstance(upload, str):
        raise RequestError(f"field 'img' holds text, not a file (URLs are not fetched); {USAGE}")
    return upload.file.read()


class ClassifierAPI(ls.LitAPI):
    """One model file behind ``POST /classify``; the same predictor as classify.py for ``choice``."""

    def __init__(
        self,
        choice: ModelChoice,
        state: ServingState,
        precision: str = "auto",
        channels_last: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
    ) -> None:
        # LitServe's batched loop even for max_batch_size=1, so that rejections work the same way.
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            api_path=API_PATH,
            loop=BatchedLoop(),
        )
        self.choice = choice
        self.state = state
        self.precision = precision
        self.channels_last = channels_last
        self.max_pixels = int(max_pixels)
        self.threads = threads
        # Written by the inference worker once it has checked bf16 against fp32, read by /info in
        # the HTTP processes: shared memory, as the two never share Python objects.
        self.resolved_precision = mp.get_context("spawn").Array("c", 32)

    def setup(self, device: str) -> None:
        """Load the model in the background, so that the HTTP server is up, answering 503, meanwhile.

        LitServe starts its HTTP processes only once ``setup`` has returned; until the model is
        loaded :class:`~imgclf.serving.middleware.Admission` keeps every request away from this worker.
        """
        # Ctrl+C in a terminal reaches every process of the group; the main process decides when
        # workers stop, after the requests in flight are answered.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.threads:
            torch.set_num_threads(self.threads)
        threading.Thread(target=self.load, args=(device,), name="load-model", daemon=True).start()

    def load(self, device: str) -> None:
        try:
            self.predictor = self.open_predictor(device)
        except Exception as exc:
            if isinstance(exc, ImgclfError):
                log.error("cannot load %s: %s", self.choice.path, exc)
            else:
                log.exception("cannot load %s", self.choice.path)
            os._exit(1)  # the main process sees this worker die and stops the server
        self.resolved_precision.value = self.predictor.precision.encode()
        self.state.model_loaded()

    def open_predictor(self, device: str) -> PredictorBase:
        """The predictor for the file chosen at start-up (``load_predictor`` would choose again,
        in every worker)."""
        # ONNX Runtime's threads sleep between batches rather than spin: the HTTP server and the
        # decoding share the cores. Served/in-process at concurrency 8, 2 cores, int8 Inception v3
        # at 299 px: 92 % against 83 % spinning (docs/benchmarks.md).
        return open_predictor(
            self.choice, self.precision, self.channels_last, device, self.threads, spin=False
        )

    async def authorize(self, request: Request) -> None:
        """Parse the form in the HTTP process, before LitServe's route handler does.

        LitServe runs ``authorize`` as a FastAPI dependency of the route, on the same request
        object, so the route finds the form already parsed. A malformed multipart body fails here
        as a 400; inside LitServe's handler it would become a 500. LitServe gives this hook every
        route of its own (``/info/litserve`` among them), so the API key is checked here.
        """
        require_api_key(request)
        form = await request.form()
        if "explain" in request.query_params:
            # the worker sees only the form: the query parameter travels in it
            litserve_adapter.add_form_field(request, form, "explain", request.query_params["explain"])

    # No annotations on decode_request's argument or encode_response's result: LitServe reads
    # them to declare the FastAPI route. The argument is the parsed multipart form.
    def decode_request(self, request):
        try:
            top_k = parse_top_k(request.get("top_k"))
            wanted = parse_explain(request.get("explain"))
            if wanted and self.predictor.runtime != "torch":
                raise RequestError(
                    f"explain=true needs PyTorch's gradients, and this server runs the exported "
                    f"{self.predictor.runtime} model {self.choice.path.name}; start it with runtime=torch "
                    "to have explanations"
                )
            image = load_image(image_bytes(request), max_pixels=self.max_pixels)
            return Decoded(self.predictor.preprocess(image), top_k, image if wanted else None)
        except ImgclfError as exc:
            return Rejection(str(exc))
        except Exception:
            # Pillow's decoders can fail on crafted files in ways load_image does not anticipate;
            # that is still the client's image, not a reason to fail the batch.
            log.warning("unexpected error decoding an upload", exc_info=True)
            return Rejection("the uploaded file could not be decoded as an image")

    def batch(self, inputs: Sequence[Decoded | Rejection]) -> list[Decoded | Rejection]:
        return list(inputs)

    def predict(self, inputs: list[Decoded | Rejection]) -> list[Answer]:
        good = [item for item in inputs if isinstance(item, Decoded)]
        rows = iter(self.predictor.predict_batch(torch.stack([x.image for x in good])) if good else [])
        answers = []
        for item in inputs:
            if not isinstance(item, Decoded):
                answers.append(Answer(item, len(inputs)))
                continue
            probabilities = next(rows)
            explanation = self.explain(item.picture, int(probabilities.argmax())) if item.picture else None
            answers.append(Answer(self.predictor.ranked(probabilities, item.top_k), len(inputs), explanation))
        return answers

    def explain(self, picture: Image.Image, label: int) -> dict[str, str]:
        """The heatmap of the top class (the answer's first label), over the uploaded image."""
        p = self.predictor
        [(_, painted)] = explain(p.model, p.transform, p.preprocessing, [picture], [label])
        return {"class": p.classes[label], "png_base64": png_base64(painted)}

    def unbatch(self, outputs: list[Answer]) -> list[Answer]:
        return outputs

    def encode_response(self, output):
        headers = {BATCH_SIZE_HEADER: str(output.batch_size)}
        if isinstance(output.result, Rejection):
            return error_response(400, output.result.error, headers)
        body: dict[str, Any] = {"predictions": output.result}
        if output.explanation is not None:
            body["explanation"] = output.explanation
        return JSONResponse({**body, "success": True}, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers is JSON ``{"success": false, "error": ...}``, never HTML.

    FastAPI's request validation (a 422) would mean a malformed request, hence 400.
    """

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {exc.errors()}")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def model_info(cfg: Any, choice: ModelChoice, api: ClassifierAPI) -> dict[str, Any]:
    """What /info reports that does not change while serving; precision and load are read live."""
    record = choice.record()
    return {
        "backbone": record["architecture"]["backbone"]["name"],
        "image_size": record["architecture"]["image_size"],
        "classes": list(record["classes"]),
        "hparams": record.get("hparams", {}),
        # File names only: where the server keeps its files is nobody's business over HTTP.
        "model_path": os.path.basename(cfg.ckpt_path),
        "runtime": choice.runtime,
        "model_file": os.path.basename(choice.path),
        "preprocessing": record["preprocessing"],
        "server": {
            "accelerator": cfg.accelerator,
            "workers_per_device": cfg.workers_per_device,
            "max_batch_size": api.max_batch_size,
            "batch_timeout": api.batch_timeout,
            "max_payload_mb": cfg.max_payload_mb,
            "max_queue": cfg.max_queue,
            "max_uploads": cfg.max_uploads,
            "body_timeout_s": cfg.body_timeout_s,
            "shutdown_timeout": cfg.shutdown_timeout,
        },
    }


def add_routes(app: FastAPI, info: dict[str, Any], api: ClassifierAPI, model_dir: Path) -> None:
    """``GET /info`` (the model, the settings, the live load), ``GET /metrics`` and ``GET /card``
    (the model card in ``model_dir``), behind the key."""

    async def model_info_endpoint() -> dict[str, Any]:
        precision = api.resolved_precision.value.decode() or "loading"
        live = {
            "ready": api.state.ready,
            "requests_in_flight": api.state.in_flight.value,
            "uploads_in_progress": api.state.uploading.value,
        }
        return {**info, "precision": precision, "server": {**info["server"], **live}, "success": True}

    async def metrics_endpoint() -> Response:
        return prometheus.scrape(api.state)

    key = [Depends(require_api_key)]
    app.add_api_route(INFO_PATH, model_info_endpoint, methods=["GET"], dependencies=key)
    app.add_api_route(prometheus.METRICS_PATH, metrics_endpoint, methods=["GET"], dependencies=key)
    app.add_api_route(CARD_PATH, card_endpoint(model_dir), methods=["GET"], dependencies=key)


def card_endpoint(model_dir: Path) -> Callable[..., Response]:
    """``GET /card``: the model card in HTML, or its Markdown with ``?format=md``; read at each
    request, so that an eval or export run while serving shows."""

    def model_card(kind: str = Query("html", alias="format")) -> Response:
        if kind not in ("html", "md"):
            return error_response(400, f"format={kind[:40]!r}: use format=html (the default) or format=md")
        try:
            content = (model_dir / (CARD_HTML if kind == "html" else CARD_MD)).read_text(encoding="utf-8")
        except FileNotFoundError:
            return error_response(
                404,
                "the model's folder has no model card; `python scripts/train.py` writes one beside "
                "model.ckpt, and `python scripts/eval.py` and `python scripts/export.py` update it",
            )
        if kind == "md":
            return PlainTextResponse(content, media_type="text/markdown; charset=utf-8")
        return HTMLResponse(content, headers={"Content-Security-Policy": CARD_POLICY})

    return model_card


def page_html() -> str:
    return resources.files("imgclf.serving").joinpath("page.html").read_text(encoding="utf-8")


def cpu_threads(cfg: Any) -> int | None:
    """Split the cores between CPU workers; more threads than cores only adds contention."""
    if uses_cuda(cfg.accelerator) or cfg.workers_per_device <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // cfg.workers_per_device)


def build_server(cfg: Any) -> ls.LitServer:
    """The configured :class:`litserve.LitServer`, not yet running (see conf/serve.yaml); ``cfg`` is
    checked against :class:`ServeSettings` unless it is one.

    Its :class:`~imgclf.serving.lifecycle.ServingState` is ``server.lit_api.state``.
    """
    cfg = typed(cfg, ServeSettings)
    if cfg.accelerator == "cuda" and not torch.cuda.is_available():
        raise ImgclfError("accelerator=cuda, but PyTorch sees no CUDA device; use accelerator=cpu")
    device = "cuda" if uses_cuda(cfg.accelerator) else "cpu"
    # Once per start, in the main process: a bad path or a runtime that cannot run fails before
    # anything is started, and /info and the inference workers use this one answer.
    choice = choose_model(cfg.ckpt_path, cfg.runtime, cfg.precision, device)
    log.info("runtime %s: %s, %s (%s)", cfg.runtime, choice.runtime, choice.path, choice.reason)
    # max_in_flight is sized below, once LitServe knows its devices.
    state = ServingState(workers=1, max_in_flight=1, max_uploads=cfg.max_uploads)
    api = ClassifierAPI(
        choice,
        state,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        max_pixels=cfg.max_image_pixels,
        threads=cpu_threads(cfg),
        max_batch_size=cfg.max_batch_size,
        batch_timeout=cfg.batch_timeout,
    )
    middlewares = middleware.stack(
        state,
        api_path=API_PATH,
        health_path=HEALTH_PATH,
        paths=("/", HEALTH_PATH, INFO_PATH, LITSERVE_INFO_PATH, CARD_PATH),
        page=page_html(),
        body_timeout=cfg.body_timeout_s,
        max_bytes=int(cfg.max_payload_mb * 1024 * 1024),
        cors_origins=list(cfg.cors_origins),
    )
    server = ls.LitServer(
        api,
        accelerator=cfg.accelerator,
        workers_per_device=cfg.workers_per_device,
        timeout=cfg.timeout,
        healthcheck_path=HEALTH_PATH,
        info_path=LITSERVE_INFO_PATH,
        # /docs, /redoc and /openapi.json: FastAPI serves the pages only with the schema
        disable_openapi_url=not cfg.api_docs,
        fast_queue=cfg.fast_queue,
        middlewares=middlewares,
    )
    # How long uvicorn lets requests finish once stopped, Ctrl+C in a terminal stopping it directly.
    litserve_adapter.configure(server, graceful_timeout=cfg.shutdown_timeout + 5)
    state.workers = litserve_adapter.device_count(server) * cfg.workers_per_device
    state.max_in_flight = cfg.max_queue + state.workers * cfg.max_batch_size
    app = litserve_adapter.fastapi_app(server)
    install_error_handlers(app)
    add_routes(app, model_info(cfg, choice, api), api, model_paths(cfg.ckpt_path)[1])
    return server


def check_port_free(host: str, port: int) -> None:
    """Fail with a message that says what to do, rather than uvicorn's bare errno."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ImgclfError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pass another port="
            ) from None


def serve(cfg: Any) -> int:
    """Run the server until SIGTERM or SIGINT (0) or the death of an inference worker (3).

    Whatever ends it, no child process outlives this function.
    """
    cfg = typed(cfg, ServeSettings)
    server = build_server(cfg)
    check_port_free(cfg.host, cfg.port)
    state = server.lit_api.state
    supervisor = Supervisor(state, shutdown_timeout=cfg.shutdown_timeout)
    supervisor.install()
    supervisor.watch(functools.partial(litserve_adapter.inference_workers, server), expected=state.workers)
    try:
        server.run(
            host=cfg.host,
            port=cfg.port,
            num_api_servers=cfg.num_api_servers,
            log_level=cfg.log_level,
            generate_client_file=False,
            access_log=cfg.access_log,
            # uvicorn's options, passed through by LitServe: past limit_concurrency connections (per
            # HTTP process) a new request gets uvicorn's plain 503
            http=litserve_adapter.bounded_protocol(
                header_timeout=cfg.header_timeout_s, max_header_bytes=cfg.max_header_kb * 1024
            ),
            limit_concurrency=cfg.limit_concurrency,
            timeout_keep_alive=cfg.keep_alive_timeout_s,
        )
    except KeyboardInterrupt:
        pass  # a stop before LitServe's run() reached the point where it catches it itself
    except Exception:
        if supervisor.failure is None:
            raise
    finally:
        end_children()
    if supervisor.failure is not None:
        return WORKER_DIED
    log.info("stopped")
    return 0
