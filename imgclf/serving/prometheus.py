"""The server's Prometheus metrics at ``GET /metrics``, from prometheus-client.

Counts are kept where requests are answered, in the HTTP processes, by
:class:`imgclf.serving.middleware.Metrics`. LitServe forks several of them
(``num_api_servers``), and a scrape reaches any one, so serve.py points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh folder before this module is imported: prometheus-client's multiprocess mode then sums
every process's counts at each scrape. (LitServe's own ``Logger`` API does not fit: it sees what the
inference worker logs, not the answers given in the HTTP processes, 408s and 503s among them.)
What is uploading and in flight is read from the shared :class:`~imgclf.serving.lifecycle.ServingState`
at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.responses import Response

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


def scrape(state: ServingState) -> Response:
    """The answer to ``GET /metrics`` (behind the API key, as a route of the app)."""
    return Response(generate_latest(Scrape(state)), media_type=CONTENT_TYPE_LATEST)
