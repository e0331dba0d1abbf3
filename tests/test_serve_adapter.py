"""imgclf.serving.litserve_adapter against the installed LitServe and uvicorn, without a server running.

Every name the adapter touches, and every LitServe behaviour the server builds on, is checked here
by name and signature, so that an upgrade past the checked versions fails in this file first.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from importlib.metadata import version

import litserve as ls
import pytest
import uvicorn
from conftest import REPO_ROOT
from fastapi import FastAPI
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from starlette.middleware.gzip import GZipMiddleware
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from imgclf.serving import litserve_adapter, middleware
from imgclf.serving.lifecycle import ServingState


class EchoAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request

    def predict(self, x):
        return x

    def encode_response(self, output):
        return output


class Marker:
    """A middleware that only stands in a list, to see where LitServe puts it."""

    def __init__(self, app) -> None:
        self.app = app


class Inner(Marker):
    pass


class Outer(Marker):
    pass


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize(
    "package, checked",
    [("litserve", litserve_adapter.LITSERVE_VERSIONS), ("uvicorn", litserve_adapter.UVICORN_VERSIONS)],
)
def test_installed_versions_are_the_checked_ones_and_pinned(package, checked):
    assert version(package) in SpecifierSet(checked), (
        f"{package} {version(package)} is not the one imgclf.serving.litserve_adapter was checked against "
        f"({checked}): read its source for every name the adapter's docstring lists, then widen the range"
    )
    # The requirement lines themselves (tomllib is new in Python 3.11; imgclf runs on 3.10).
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    pins = [Requirement(line) for line in re.findall(rf'^\s*"({package}\b[^"]*)"', pyproject, re.MULTILINE)]
    assert [pin.specifier for pin in pins] == [SpecifierSet(checked)]


def test_litserve_options_the_server_passes():
    assert {"max_batch_size", "batch_timeout", "api_path", "loop"} <= set(parameters(ls.LitAPI.__init__))
    options = {
        "accelerator",
        "workers_per_device",
        "timeout",
        "healthcheck_path",
        "info_path",
        "disable_openapi_url",
        "fast_queue",
        "middlewares",
    }
    assert options <= set(parameters(ls.LitServer.__init__))
    run = inspect.signature(ls.LitServer.run).parameters
    assert {"host", "port", "num_api_servers", "log_level", "generate_client_file"} <= set(run)
    # uvicorn's options go through run(**kwargs) to uvicorn.Config
    assert inspect.Parameter.VAR_KEYWORD in {p.kind for p in run.values()}
    assert {"http", "limit_concurrency", "timeout_keep_alive", "access_log"} <= set(
        parameters(uvicorn.Config.__init__)
    )


def test_the_litserver_attributes_the_adapter_sets_and_reads():
    server = ls.LitServer(EchoAPI(), accelerator="cpu")
    # Set in __init__, so that assigning them replaces LitServe's values rather than adding new names.
    assert isinstance(server.monitor_internal, (int, float))
    assert isinstance(server.uvicorn_graceful_timeout, (int, float))
    # ...and read where the adapter's docstring says.
    assert "time.sleep(self.monitor_internal)" in inspect.getsource(ls.LitServer._start_worker_monitoring)
    start_server = inspect.getsource(ls.LitServer._start_server)
    assert "timeout_graceful_shutdown=self.uvicorn_graceful_timeout" in start_server
    assert "self.inference_workers = []" in inspect.getsource(ls.LitServer.run)
    litserve_adapter.configure(server, graceful_timeout=7.5)
    assert server.monitor_internal == litserve_adapter.NO_LITSERVE_MONITOR
    assert server.uvicorn_graceful_timeout == 7.5
    assert litserve_adapter.device_count(server) == 1
    assert isinstance(litserve_adapter.fastapi_app(server), FastAPI)
    assert litserve_adapter.inference_workers(server) == []  # before run()


def test_litserve_gives_its_routes_the_authorize_hook():
    """ClassifierAPI.authorize checks the API key for /classify and LitServe's own routes."""

    class Guarded(EchoAPI):
        async def authorize(self, request) -> None:
            pass

    api = Guarded()
    server = ls.LitServer(api, accelerator="cpu")
    assert server.setup_auth() == api.authorize and server.setup_auth(api) == api.authorize


def test_middlewares_reach_starlette_in_the_order_requests_meet_them():
    server = ls.LitServer(EchoAPI(), accelerator="cpu", middlewares=[(Inner, {}), (Outer, {})])
    # Starlette's user_middleware lists the outermost first: LitServe's list runs last-first,
    # then its own GZip outside them all.
    assert [m.cls for m in server.app.user_middleware] == [GZipMiddleware, Outer, Inner]

    stack = middleware.stack(
        ServingState(workers=1, max_in_flight=1),
        api_path="/classify",
        health_path="/health",
        paths=("/",),
        page="",
        body_timeout=1.0,
        max_bytes=1,
        cors_origins=["*"],
    )
    server = ls.LitServer(EchoAPI(), accelerator="cpu", middlewares=stack)
    assert [m.cls for m in server.app.user_middleware] == [
        GZipMiddleware,
        middleware.Metrics,
        middleware.JSONCORSMiddleware,
        middleware.RequestGuard,
        middleware.Admission,
    ]


def test_uvicorn_protocol_hooks_the_bounded_protocol_overrides():
    protocol = httptools_impl.HttpToolsProtocol
    for name, expected in {
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "on_url": ["self", "url"],
        "on_header": ["self", "name", "value"],
        "on_headers_complete": ["self"],
        "on_response_complete": ["self"],
    }.items():
        assert parameters(getattr(protocol, name)) == expected, name

    loop = asyncio.new_event_loop()
    try:
        bounded = litserve_adapter.bounded_protocol(header_timeout=3.0, max_header_bytes=1024)
        instance = bounded(
            config=uvicorn.Config(app=FastAPI()), server_state=ServerState(), app_state={}, _loop=loop
        )
    finally:
        loop.close()
    assert (instance.header_timeout, instance.max_header_bytes) == (3.0, 1024)
    assert instance.loop is loop and instance.cycle is None and hasattr(instance, "transport")
    cycle_arguments = {name: None for name in parameters(httptools_impl.RequestResponseCycle.__init__)[1:]}
    assert httptools_impl.RequestResponseCycle(**cycle_arguments).response_complete is False


def test_a_field_added_to_the_parsed_form_is_what_later_reads_get():
    """``add_form_field`` relies on starlette's Request returning the form it parsed again."""
    from starlette.datastructures import FormData
    from starlette.requests import Request

    body = b"top_k=2"

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def read() -> tuple[FormData, FormData]:
        headers = [(b"content-type", b"application/x-www-form-urlencoded")]
        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        form = await request.form()
        litserve_adapter.add_form_field(request, form, "explain", "true")
        return form, await request.form()

    parsed, again = asyncio.run(read())
    assert list(parsed.multi_items()) == [("top_k", "2")]
    assert list(again.multi_items()) == [("top_k", "2"), ("explain", "true")]
