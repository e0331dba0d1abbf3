"""The server's Prometheus metrics at ``GET /metrics``, from prometheus-client.

Counts are kept where requests are answered, in the HTTP processes. LitServe forks several of them
(``num_api_servers``), and a scrape reaches any one, so serve.py points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh folder before this module is imported: prometheus-client's multiprocess mode then sums
every process's counts at each scrape. (LitServe's own ``Logger`` API does not fit: it sees what the
inference worker logs, not the answers given in the HTTP processes, 408s and 503s among them.)
What is uploading and in flight is read from the shared :class:`~imgclf.serving.lifecycle.ServingState`
at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.serving.lifecycle import ServingState

METRICS_PATH = "/metrics"

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "imgclf_http_requests",
    "HTTP requests answered, by path and status code (code 'disconnected': the client left first)",
    ["path", "code"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "imgclf_classify_duration_seconds",
    "POST /classify, from its headers to its answer, upload included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "imgclf_batch_size",
    "Size of the batch each answered POST /classify ran in",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)


class Scrape:
    """What one scrape reports: the counts of every HTTP process, then the shared state now."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            yield from multiprocess.MultiProcessCollector(None).collect()
        else:
            yield from REGISTRY.collect()
        state = self.state
        for name, text, value in (
            ("imgclf_requests_in_flight", "POST /classify admitted to the model", state.in_flight.value),
            ("imgclf_uploads_in_progress", "POST /classify bodies still arriving", state.uploading.value),
            ("imgclf_max_in_flight", "requests admitted to the model beyond which 503", state.max_in_flight),
            ("imgclf_max_uploads", "uploads arriving at once beyond which 503", state.max_uploads),
            ("imgclf_ready", "1 while the model is loaded and the server serves", int(state.ready)),
        ):
            yield GaugeMetricFamily(name, text, value=value)


class Metrics:
    """Counts every answer by path and status, times ``/classify``; answers ``GET /metrics``.

    Paths are counted by name only for the server's own routes, so that a client probing random
    URLs cannot grow the number of time series. ``refuse`` answers a scrape without the API key.
    """

    def __init__(
        self,
        app: ASGIApp,
        state: ServingState,
        api_path: str,
        paths: tuple[str, ...],
        refuse: Callable[[Headers], Response | None],
    ) -> None:
        self.app = app
        self.state = state
        self.api_path = api_path
        self.paths = (*paths, api_path, METRICS_PATH)
        self.refuse = refuse

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
                answer["batch"] = Headers(raw=message.get("headers", [])).get("x-batch-size")
            await send(message)

        try:
            if path == METRICS_PATH and scope["method"] == "GET":
                await self.scrape(scope)(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            REQUESTS.labels(path, answer.get("code", "disconnected")).inc()
            if path == self.api_path:
                LATENCY.observe(time.perf_counter() - started)
                if answer.get("batch"):
                    BATCH_SIZE.observe(int(answer["batch"]))

    def scrape(self, scope: Scope) -> Response:
        refusal = self.refuse(Headers(scope=scope))
        if refusal is not None:
            return refusal
        return Response(generate_latest(Scrape(self.state)), media_type=CONTENT_TYPE_LATEST)
