"""The server's life under a process manager: readiness, overload, drain on SIGTERM, a dead worker.

``python serve.py`` is three kinds of process: the main one (LitServe's ``LitServer.run``), the
HTTP processes it forks, and the inference workers it spawns. What they share lives here, in
shared memory:

- the *phase*, written by the main process only: serving, draining (after SIGTERM or SIGINT),
  stopping (the drain ran out of time) or failed (an inference worker died);
- how many inference workers have loaded the model (each adds one when it is done);
- how many ``/classify`` requests are still uploading their body, and how many the HTTP processes
  have admitted to the model and not yet answered: counted apart, so that slow uploads never hold
  the slots of requests ready for the model.

:class:`Admission`, the outermost middleware of ours, answers from that state in the HTTP
processes; :class:`Supervisor` changes it in the main process, on a signal or a worker's death.
A stop always ends in LitServe's own shutdown (the one Ctrl+C starts), then a sweep that ends any
child process still there, so that nothing outlives the main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import signal
import threading
import time
from typing import Any, Callable, NoReturn

from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.process import StopSignals

log = logging.getLogger(__name__)

SERVING, DRAINING, STOPPING, FAILED = 0, 1, 2, 3
# Exit status after an inference worker died: not 2 (a configuration error, which a restart
# cannot fix), so that a process manager can restart on 3 and give up on 2.
WORKER_DIED = 3
# How often a request waiting for the model checks that a worker is still there to answer it.
WATCH_PERIOD = 0.2
# Longest the main process waits, once it gives up on the requests in flight, for them to get their
# 503 (see Admission.answer_unless_abandoned).
ABANDON_WAIT = 5.0


def unavailable(error: str, retry_after: int, close: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"success": False, "error": error}, status_code=503, headers=headers)


def timed_out(timeout: float) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": f"the request body did not arrive within {timeout:g} s; send it again"},
        status_code=408,
        headers={"Connection": "close"},
    )


class ServingState:
    """The phase, the loaded workers, the uploads and the requests in flight, shared by every process."""

    def __init__(self, workers: int, max_in_flight: int, max_uploads: int = 1) -> None:
        spawn = mp.get_context("spawn")  # the inference workers are spawned; the rest is forked
        self.workers = workers
        self.max_in_flight = max_in_flight
        self.max_uploads = max_uploads
        self.phase = spawn.RawValue("i", SERVING)
        self.loaded = spawn.Value("i", 0)
        self.uploading = spawn.Value("i", 0)
        self.in_flight = spawn.Value("i", 0)

    @property
    def ready(self) -> bool:
        return self.phase.value == SERVING and self.loaded.value >= self.workers

    def model_loaded(self) -> None:
        with self.loaded.get_lock():
            self.loaded.value += 1

    @property
    def pending(self) -> int:
        """Requests the server has taken and not yet answered, uploading or in flight."""
        return self.uploading.value + self.in_flight.value

    @staticmethod
    def _take(counter: Any, limit: int) -> bool:
        with counter.get_lock():
            if counter.value >= limit:
                return False
            counter.value += 1
            return True

    @staticmethod
    def _give_back(counter: Any) -> None:
        with counter.get_lock():
            counter.value -= 1

    def start_upload(self) -> bool:
        """Take one more upload unless ``max_uploads`` bodies are already arriving."""
        return self._take(self.uploading, self.max_uploads)

    def end_upload(self) -> None:
        self._give_back(self.uploading)

    def enter(self) -> bool:
        """Admit one more request unless ``max_in_flight`` are already waiting or running."""
        return self._take(self.in_flight, self.max_in_flight)

    def leave(self) -> None:
        self._give_back(self.in_flight)


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
        too_large: JSONResponse,
    ) -> None:
        self.app = app
        self.state = state
        self.api_path = api_path
        self.health_path = health_path
        self.page = page
        self.body_timeout = body_timeout
        self.max_bytes = max_bytes
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == self.api_path and method == "POST":
            await self.classify(scope, receive, send)
        elif path == self.health_path and method == "GET":
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
            await self.too_large(scope, receive, send)
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


def describe_exit(process: mp.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the out-of-memory killer, or kill -9)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


class Supervisor:
    """The main process's part: SIGTERM/SIGINT drain, a watch over the inference workers.

    LitServe's ``run`` blocks the main thread until a KeyboardInterrupt, and LitServe itself does
    nothing on SIGTERM, so the process managers' stop signal left its children running. Here both
    signals drain: new requests get 503, those in flight or still uploading finish (up to
    ``shutdown_timeout`` seconds, after which they get a 503), then the KeyboardInterrupt starts
    LitServe's own shutdown. A second signal stops the wait.

    A worker that dies (out of memory, a crash in a native library) takes the requests it held
    with it and leaves nothing to answer the rest, so the server stops, with one log line naming
    the cause and exit status :data:`WORKER_DIED`, for the process manager to start a fresh one;
    its requests in flight get a 503 first. LitServe's own restart would leave those requests
    waiting for ever.
    """

    def __init__(self, state: ServingState, shutdown_timeout: float) -> None:
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        self.stopping = False
        self.hurry = False
        self.failure: str | None = None
        # LitServe's HTTP processes and its manager, forked later, inherit the handler: there the
        # signals keep their default action.
        self.signals = StopSignals(self.on_first_signal, self.on_later_signal, in_children="default")

    def install(self) -> None:
        self.signals.install()

    def on_first_signal(self, signum: int) -> NoReturn:
        self.stopping = True
        if self.failure is None:
            self.drain(signal.Signals(signum).name)
        raise KeyboardInterrupt  # what LitServe's run() stops on

    def on_later_signal(self, signum: int) -> None:
        self.hurry = True  # stop waiting for the requests in flight

    def drain(self, reason: str) -> None:
        self.state.phase.value = DRAINING
        deadline = time.monotonic() + self.shutdown_timeout
        log.info(
            "%s: refusing new requests, finishing %d in flight and %d uploading (up to %gs)",
            reason,
            self.state.in_flight.value,
            self.state.uploading.value,
            self.shutdown_timeout,
        )
        while self.state.pending > 0 and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.05)
        if self.state.pending > 0:
            log.warning("stopping with %d requests unanswered; they get 503", self.state.pending)
            self.abandon(STOPPING)

    def abandon(self, phase: int) -> None:
        """Have the HTTP processes answer 503 to every request still waiting, and wait for that."""
        self.state.phase.value = phase
        deadline = time.monotonic() + ABANDON_WAIT
        while self.state.pending > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def watch(self, workers: Callable[[], list[mp.process.BaseProcess]], expected: int) -> None:
        """Start a thread that stops the server when an inference worker dies."""
        thread = threading.Thread(
            target=self._watch, args=(workers, expected), name="worker-watch", daemon=True
        )
        thread.start()

    def _watch(self, workers: Callable[[], list[mp.process.BaseProcess]], expected: int) -> None:
        while len(workers()) < expected:
            if self.stopping:
                return
            time.sleep(0.1)
        processes = list(workers())
        ready = mp.connection.wait([process.sentinel for process in processes])
        if self.stopping:
            return  # LitServe stopping its workers, not a failure
        dead = next(process for process in processes if process.sentinel in ready)
        dead.join(5)  # the sentinel is ready as the process exits, a moment before its status
        index = processes.index(dead)
        self.failure = f"inference worker {index} (pid {dead.pid}) {describe_exit(dead)}"
        log.error(
            "%s; stopping the server (exit status %d) for the process manager to restart it",
            self.failure,
            WORKER_DIED,
        )
        self.abandon(FAILED)
        # LitServe's shutdown runs in the main thread, where its run() waits.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
