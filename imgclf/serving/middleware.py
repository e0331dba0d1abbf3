"""Every middleware of the server, and the one builder of its JSON errors.

A request passes through them in this order, outermost first (:func:`stack` hands them to LitServe):

1. :class:`Metrics` counts every answer by path and status, and times ``/classify``, so it sees the
   answers of all the others;
2. :class:`JSONCORSMiddleware` (with ``cors_origins``) adds the CORS headers to every answer
   below it, errors included, and answers preflights;
3. :class:`RequestGuard` answers, before any body is read, a ``/classify`` that is not a multipart
   form (415) or announces a body over the payload limit (413);
4. :class:`Admission` answers ``/health`` and the page at ``/``, and decides from the shared
   :class:`~imgclf.serving.lifecycle.ServingState` which ``/classify`` reaches LitServe: 503 while
   the server cannot take it (loading, draining, overloaded), its body read within
   ``body_timeout`` (else 408) and up to the payload limit (else 413).

Inside them is LitServe's FastAPI app, whose errors :func:`error_response` builds too
(``imgclf.serving.app.install_error_handlers``). LitServe adds Starlette's GZip outside them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.serving.lifecycle import DRAINING, FAILED, STOPPING, ServingState
from imgclf.serving.prometheus import BATCH_SIZE, LATENCY, METRICS_PATH, REQUESTS

log = logging.getLogger(__name__)

BATCH_SIZE_HEADER = "X-Batch-Size"
USAGE = "send the image as a multipart form file field: curl -F img=@photo.jpg"
# How often a request waiting for the model checks that a worker is still there to answer it.
WATCH_PERIOD = 0.2


def error_response(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every JSON error the server answers: ``{"success": false, "error": ...}``."""
    return JSONResponse({"success": False, "error": error}, status_code=status, headers=headers)


def unavailable(error: str, retry_after: int, close: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)}
    if close:
        headers["Connection"] = "close"
    return error_response(503, error, headers)


def timed_out(timeout: float) -> JSONResponse:
    error = f"the request body did not arrive within {timeout:g} s; send it again"
    return error_response(408, error, {"Connection": "close"})


def too_large(max_bytes: int) -> JSONResponse:
    return error_response(413, f"the request is over the limit of {max_bytes:,} bytes; send a smaller image")


def stack(
    state: ServingState,
    *,
    api_path: str,
    health_path: str,
    paths: tuple[str, ...],
    page: str,
    body_timeout: float,
    max_bytes: int,
    cors_origins: Sequence[str],
) -> list[tuple[type, dict[str, Any]]]:
    """The middlewares for ``LitServer(middlewares=...)``; ``paths``: the routes counted by name."""
    cors = [cors_middleware(cors_origins)] if cors_origins else []
    outermost_first: list[tuple[type, dict[str, Any]]] = [
        (Metrics, {"api_path": api_path, "paths": paths}),
        *cors,
        (RequestGuard, {"path": api_path, "max_bytes": max_bytes}),
        (
            Admission,
            {
                "state": state,
                "api_path": api_path,
                "health_path": health_path,
                "page": page,
                "body_timeout": body_timeout,
                # Admission reads the body, so it enforces the limit (LitServe's max_payload_size
                # would raise from inside that read, past FastAPI's error handlers).
                "max_bytes": max_bytes,
            },
        ),
    ]
    # LitServe adds them in list order with Starlette's add_middleware, which puts each one outside
    # those added before it: the last one added is the first a request meets.
    return outermost_first[::-1]


class Metrics:
    """Counts every answer by path and status, times ``/classify`` (``imgclf.serving.prometheus``).

    Paths are counted by name only for the server's own routes, so that a client probing random
    URLs cannot grow the number of time series.
    """

    def __init__(self, app: ASGIApp, api_path: str, paths: tuple[str, ...]) -> None:
        self.app = app
        self.api_path = api_path
        self.paths = (*paths, api_path, METRICS_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.paths else "other"
        started = time.perf_counter()
        answer: dict[str, Any] = {}

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["code"] = str(message["status"])
                answer["batch"] = Headers(raw=message.get("headers", [])).get(BATCH_SIZE_HEADER)
                # counted before the client can have the answer: a scrape it sends next sees it
                REQUESTS.labels(path, answer["code"]).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if "code" not in answer:
                REQUESTS.labels(path, "disconnected").inc()
            if path == self.api_path:
                LATENCY.observe(time.perf_counter() - started)
                if answer.get("batch"):
                    BATCH_SIZE.observe(int(answer["batch"]))


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in JSON like every other error."""

    def preflight_response(self, request_headers: Headers) -> JSONResponse:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
        }
        error = f"CORS preflight refused: {response.body.decode()}; see cors_origins in conf/serve.yaml"
        return error_response(response.status_code, error, headers)


def cors_middleware(origins: Sequence[str]) -> tuple[type, dict[str, Any]]:
    """CORS for ``origins`` (``["*"]``: any web page may call the API, as the original allowed)."""
    return (
        JSONCORSMiddleware,
        {
            "allow_origins": list(origins),
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["*"],
            "expose_headers": [BATCH_SIZE_HEADER, "Retry-After"],
            "max_age": 600,
        },
    )


class RequestGuard:
    """Answers, before any body is read, the requests ``/classify`` cannot take.

    Without it LitServe parses any non-form body as JSON and answers a failure with a 500.
    """

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            response = self.check(Headers(scope=scope))
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, headers: Headers) -> JSONResponse | None:
        content_type = headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            return error_response(415, f"content type {content_type or 'none'!r} is not accepted; {USAGE}")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return too_large(self.max_bytes)
        return None


class BodyTimeout(Exception):
    """The client did not send its whole body in time."""


class BodyTooLarge(Exception):
    """The body grew past the payload limit."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class Admission:
    """Decides, in the HTTP process, which requests reach LitServe, from :class:`ServingState`.

    ``GET /health`` is 200 ``ok`` only while every worker has its model loaded and none has died;
    otherwise 503. ``POST /classify`` gets a 503 at once while the model loads, during a drain,
    after a worker died, and when ``max_uploads`` bodies are already arriving. Its body is then
    read here, whole, within ``body_timeout`` seconds (or a 408, and the connection closed) and
    up to ``max_bytes`` (or a 413); only then does it take one of the ``max_in_flight`` slots
    for the model (or a 503), so that a client that stalls its upload holds an upload slot for
    ``body_timeout`` at most and never a slot of the model. A request still waiting when a worker
    dies, or when the drain runs out of time, gets a 503 rather than waiting for ever. Every 503
    is JSON with a ``Retry-After``. ``GET /`` is the page to try the model (``page``).
    """

    def __init__(
        self,
        app: ASGIApp,
        state: ServingState,
        api_path: str,
        health_path: str,
        page: str,
        body_timeout: float,
        max_bytes: int,
    ) -> None:
        self.app = app
        self.state = state
        self.api_path = api_path
        self.health_path = health_path
        self.page = page
        self.body_timeout = body_timeout
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == self.api_path and method == "POST":
            await self.classify(scope, receive, send)
        elif path == self.health_path and method == "GET":
            # LitServe's own /health can only answer a plain "not ready"; this one says why, in JSON.
            await self.health()(scope, receive, send)
        elif path == "/" and method == "GET":
            # LitServe answers "/" with a line of text; the page takes its place.
            await HTMLResponse(self.page)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def refusal(self) -> JSONResponse | None:
        """Why no request can be taken now, or None."""
        phase = self.state.phase.value
        if phase == DRAINING:
            return unavailable("the server is shutting down; retry on another instance", 5, close=True)
        if phase == STOPPING:
            return unavailable(
                "the server stopped before answering; retry on another instance", 5, close=True
            )
        if phase == FAILED:
            return unavailable("the inference worker died; the server is restarting, retry", 5, close=True)
        if self.state.loaded.value < self.state.workers:
            return unavailable("the model is still loading; retry in a few seconds", 5)
        return None

    def health(self) -> PlainTextResponse | JSONResponse:
        return self.refusal() or PlainTextResponse("ok")

    async def classify(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal()
        if refusal is None and not self.state.start_upload():
            refusal = unavailable(
                f"the server is busy ({self.state.max_uploads} uploads arriving); retry shortly", 1
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        try:
            body = await self.upload(scope, receive, send)
            # Taken before the upload slot is given back, so that a drain never sees neither.
            admitted = body is not None and self.state.enter()
        finally:
            self.state.end_upload()
        if body is None:
            return
        if not admitted:
            busy = f"the server is busy ({self.state.max_in_flight} requests in it); retry shortly"
            await unavailable(busy, 1)(scope, receive, send)
            return
        try:
            await self.answer_unless_abandoned(scope, replay(body, receive), send)
        finally:
            self.state.leave()

    async def upload(self, scope: Scope, receive: Receive, send: Send) -> list[bytes] | None:
        """The request's body, or None once the client has had its answer (408, 413, 503) or left."""
        try:
            body = await self.read_body(receive)
        except BodyTimeout:
            abandoned = self.state.phase.value in (STOPPING, FAILED)
            await (self.refusal() if abandoned else timed_out(self.body_timeout))(scope, receive, send)
            return None
        except BodyTooLarge:
            await too_large(self.max_bytes)(scope, receive, send)
            return None
        except ClientGone as gone:
            # Routine on a public server (a closed tab, a lost network): one line, no traceback.
            client = "%s:%d" % tuple(scope["client"]) if scope.get("client") else "a client"
            log.info("%s disconnected after sending %d bytes of its upload", client, gone.received)
            return None
        if self.state.phase.value in (STOPPING, FAILED):
            await self.refusal()(scope, receive, send)
            return None
        return body

    async def read_body(self, receive: Receive) -> list[bytes]:
        """The whole body, in the chunks it came in; it must be complete within ``body_timeout``.

        The wait also ends, with :class:`BodyTimeout`, when the server gives up (stopping, failed).
        """
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.body_timeout
        while True:
            message = asyncio.ensure_future(receive())
            try:
                while not message.done():
                    left = deadline - time.monotonic()
                    if left <= 0 or self.state.phase.value in (STOPPING, FAILED):
                        raise BodyTimeout
                    await asyncio.wait([message], timeout=min(left, WATCH_PERIOD))
            finally:
                message.cancel()
            received = message.result()
            if received["type"] == "http.disconnect":
                raise ClientGone(size)
            chunk = received.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not received.get("more_body", False):
                return chunks

    async def answer_unless_abandoned(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request; if the server gives up on it first (stopping, failed), answer 503.

        LitServe waits for a worker's answer without a deadline, and a dead worker never answers.
        """
        started = False

        async def send_tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive, send_tracked))
        try:
            while not handler.done():
                await asyncio.wait([handler], timeout=WATCH_PERIOD)
                abandoned = self.state.phase.value in (STOPPING, FAILED)
                if abandoned and not handler.done() and not started:
                    handler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await handler
                    await self.refusal()(scope, receive, send)
                    return
        except asyncio.CancelledError:
            handler.cancel()
            raise
        handler.result()


def replay(chunks: list[bytes], receive: Receive) -> Receive:
    """A ``receive`` that hands out a body already read, then waits on the client as before."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def replayed() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed
