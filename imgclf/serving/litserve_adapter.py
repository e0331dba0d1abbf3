"""The one place where the server reaches into LitServe's and uvicorn's objects past their options.

Everything else uses their public options and hooks: ``LitAPI(...)`` and ``LitServer(...)``
arguments, the ``setup``/``decode_request``/``predict``/``encode_response``/``authorize`` hooks,
and uvicorn options through ``LitServer.run(**kwargs)``. What follows has no public way in
LitServe 0.2.19 or uvicorn 0.55, so it is touched here, and only here:

- ``LitServer.monitor_internal``: the seconds LitServe's monitoring thread sleeps between looks at
  its inference workers; set in ``__init__``, no constructor argument. Finding one dead, that
  thread shuts the server down itself, racing :class:`~imgclf.serving.lifecycle.Supervisor`, which
  first has the requests in flight answered 503 and exits with its own status: set far in the
  future, the thread looks once, at start, and never again.
- ``LitServer.uvicorn_graceful_timeout``: how long each HTTP process gets to finish its requests
  once stopped (uvicorn's ``timeout_graceful_shutdown``, and LitServe's wait for the process); set
  in ``__init__``, no constructor argument, and not a uvicorn option ``run()`` can pass on, as
  LitServe passes that one itself.
- ``LitServer.inference_workers``: the worker processes, for the Supervisor to watch; set by
  ``run()`` only, so absent before.
- ``LitServer.devices``: the devices LitServe resolved from ``accelerator`` (``auto``: every GPU),
  to count the workers it will start.
- ``LitServer.app``: LitServe's FastAPI app, for the JSON error handlers and the ``/info`` and
  ``/metrics`` routes, which LitServe has no option for.
- starlette's ``Request._form``: the form a request parsed, which ``Request.form()`` returns again
  (to LitServe's route handler, after ``ClassifierAPI.authorize`` parsed it); :func:`add_form_field`
  replaces it with one more field, as LitServe hands the inference worker the form alone, and
  ``POST /classify?explain=true`` carries its choice in the query string.
- uvicorn's ``HttpToolsProtocol``, subclassed by :class:`BoundedHttpProtocol` (given to uvicorn
  by its public ``http`` option): its parser callbacks ``on_url``, ``on_header``,
  ``on_headers_complete``, its ``connection_made``, ``connection_lost`` and
  ``on_response_complete``, and its ``loop``, ``transport`` and ``cycle.response_complete``.

tests/test_serve_adapter.py checks that the installed versions are in :data:`LITSERVE_VERSIONS`
and :data:`UVICORN_VERSIONS` (pyproject.toml pins the same ranges) and that every name above
still exists as used, so that an upgrade fails there rather than silently in production. To
upgrade: read the new version's source for each name, then widen both ranges.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from typing import Any

import litserve as ls
from fastapi import FastAPI, Request
from starlette.datastructures import FormData
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The versions this module was checked against (pip's version specifiers).
LITSERVE_VERSIONS = ">=0.2.19,<0.2.20"
UVICORN_VERSIONS = ">=0.55,<0.56"
NO_LITSERVE_MONITOR = 10**9  # seconds: longer than any server runs


def configure(server: ls.LitServer, graceful_timeout: float) -> None:
    """No LitServe monitoring thread, and ``graceful_timeout`` seconds for the HTTP processes to stop."""
    server.monitor_internal = NO_LITSERVE_MONITOR
    server.uvicorn_graceful_timeout = graceful_timeout


def add_form_field(request: Request, form: FormData, name: str, value: str) -> None:
    """The parsed ``form`` of ``request``, with ``name=value`` after its fields, for every later
    ``await request.form()`` of the same request."""
    request._form = FormData([*form.multi_items(), (name, value)])


def device_count(server: ls.LitServer) -> int:
    return len(server.devices)


def fastapi_app(server: ls.LitServer) -> FastAPI:
    return server.app


def inference_workers(server: ls.LitServer) -> list[mp.process.BaseProcess]:
    """The inference worker processes; none before ``run()`` has started them."""
    return getattr(server, "inference_workers", [])


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), with a deadline and a size bound on request headers.

    uvicorn bounds the idle time after an answer (``timeout_keep_alive``) but neither the wait for
    a request's headers nor their size: a client that connects and says nothing, or sends its
    headers a byte at a time, would hold its connection, and a place under ``limit_concurrency``,
    for ever. Here the headers must be complete within ``header_timeout`` seconds of the
    connection or of the previous answer, or the connection is closed; headers over
    ``max_header_bytes`` get uvicorn's own 400. The body has its own deadline
    (:class:`imgclf.serving.middleware.Admission`). Configured through :func:`bounded_protocol`.
    """

    header_timeout = 10.0
    max_header_bytes = 64 * 1024

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.header_deadline: asyncio.TimerHandle | None = None
        self.arm()

    def arm(self) -> None:
        self.header_bytes = 0
        self.header_deadline = self.loop.call_later(self.header_timeout, self.headers_too_slow)

    def disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def headers_too_slow(self) -> None:
        self.header_deadline = None
        # Only between requests: a request whose headers are in is the app's (and Admission's).
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > self.max_header_bytes:
            # Raised in a parser callback, it reaches uvicorn as a parser error: a 400, closed.
            raise ValueError("request headers too large")

    def on_url(self, url: bytes) -> None:
        self.count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.disarm()
            self.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)


def bounded_protocol(header_timeout: float, max_header_bytes: int) -> type[BoundedHttpProtocol]:
    """:class:`BoundedHttpProtocol` with these bounds, for uvicorn's ``http`` option."""
    bounds = {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes}
    return type("ConfiguredHttpProtocol", (BoundedHttpProtocol,), bounds)
