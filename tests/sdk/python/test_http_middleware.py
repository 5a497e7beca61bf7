"""HTTP route middleware (spec §4.6.1) with functions registered through the
official Python SDK: the `http` entry's global `middleware:` list and a route's
`middleware_function_ids`, exercised with a plain HTTP client."""

from __future__ import annotations

import asyncio
import json
import time

from conftest import http_request, wait_until


def _restart_with_http_config(engine, extra: str) -> None:  # noqa: ANN001
    """Restarts this test's engine with `extra` added to the `http` entry's config."""
    engine.stop()
    (engine.workdir / "config.yaml").write_text(
        "workers:\n"
        "  - name: iii-worker-manager\n"
        f"    config: {{host: 127.0.0.1, port: {engine.ws_port}}}\n"
        "  - name: http\n"
        f"    config: {{host: 127.0.0.1, port: {engine.http_port}{extra}}}\n"
    )
    engine.start()
    engine.wait_http()


def _gated_route(engine, workers, extra_route_config=None):  # noqa: ANN001, ANN202
    """One worker with the global middleware `pymw::gate` (its behaviour picked by the
    request's `x-mode` header), a route middleware, a condition and a handler on GET
    /items/:id. Returns the worker and the list of (function, input, metadata) calls."""
    calls: list = []
    w = workers("py-mw")

    async def gate(inp, metadata=None):  # noqa: ANN001, ANN202
        calls.append(("gate", inp, metadata))
        mode = inp["request"]["headers"].get("x-mode", "continue")
        if mode == "respond":
            return {
                "action": "respond",
                "response": {"status_code": 401, "headers": {"content-type": "text/plain", "x-why": "no token"}, "body": "go away"},
            }
        if mode == "error":
            raise RuntimeError("gate is broken")
        if mode == "sleep":
            await asyncio.sleep(1)
            calls.append(("gate_done", None, None))
        return {"action": "continue"}

    def route_mw(inp, metadata=None):  # noqa: ANN001, ANN202
        calls.append(("route", inp, metadata))
        return {"action": "continue"}

    def cond(req):  # noqa: ANN001, ANN202
        calls.append(("cond", req, None))
        return req["headers"].get("x-allow", "yes") == "yes"

    def handler(req):  # noqa: ANN001, ANN202
        calls.append(("handler", req, None))
        return {"status_code": 200, "body": {"id": req["path_params"]["id"]}}

    w.register_function("pymw::gate", gate)
    w.register_function("pymw::route", route_mw)
    w.register_function("pymw::cond", cond)
    w.register_function("pymw::items", handler)
    config = {
        "api_path": "items/:id",
        "http_method": "GET",
        "condition_function_id": "pymw::cond",
        "middleware_function_ids": ["pymw::route"],
    }
    config.update(extra_route_config or {})
    w.register_trigger({"type": "http", "function_id": "pymw::items", "config": config, "metadata": {"route": "items"}})

    def live():  # noqa: ANN202
        st, _, _ = http_request("GET", engine.http_url + "/items/0")
        return st == 200

    wait_until(live, timeout=10, what="route GET /items/:id live behind its middleware")
    calls.clear()
    return w, calls


def test_continue_gives_the_request_view_and_runs_route_middleware_then_handler(engine, workers):
    _restart_with_http_config(engine, ", middleware: [{function_id: pymw::gate, priority: 1}]")
    _, calls = _gated_route(engine, workers)
    st, _, body = http_request("GET", engine.http_url + "/items/42?q=x", headers={"X-Custom": "abc"})
    assert st == 200, body
    assert json.loads(body) == {"id": "42"}
    assert [c[0] for c in calls] == ["gate", "cond", "route", "handler"]
    gate_input, gate_meta = calls[0][1], calls[0][2]
    assert gate_input["phase"] == "preHandler"
    assert gate_input["context"] == {}
    req = gate_input["request"]
    assert set(req) == {"path_params", "query_params", "headers", "method"}
    assert req["path_params"] == {"id": "42"}
    assert req["query_params"] == {"q": "x"}
    assert req["headers"]["x-custom"] == "abc"
    assert req["method"] == "GET"
    assert gate_meta == {"route": "items"}
    assert calls[2][1] == gate_input


def test_condition_false_skips_route_middleware(engine, workers):
    _restart_with_http_config(engine, ", middleware: [{function_id: pymw::gate}]")
    _, calls = _gated_route(engine, workers)
    st, _, body = http_request("GET", engine.http_url + "/items/1", headers={"X-Allow": "no"})
    assert st == 422, body
    assert json.loads(body)["error"]["code"] == "CONDITION_NOT_MET"
    assert [c[0] for c in calls] == ["gate", "cond"]


def test_respond_answers_with_the_middleware_response(engine, workers):
    _restart_with_http_config(engine, ", middleware: [{function_id: pymw::gate}]")
    _, calls = _gated_route(engine, workers)
    st, h, body = http_request("GET", engine.http_url + "/items/1", headers={"X-Mode": "respond"})
    assert st == 401
    assert h.get("x-why") == "no token"
    assert h.get("content-type") == "text/plain"
    assert body == b"go away"
    assert [c[0] for c in calls] == ["gate"], "nothing after a respond runs"


def test_middleware_error_is_500_envelope(engine, workers):
    _restart_with_http_config(engine, ", middleware: [{function_id: pymw::gate}]")
    _, calls = _gated_route(engine, workers)
    st, _, body = http_request("GET", engine.http_url + "/items/1", headers={"X-Mode": "error"})
    assert st == 500
    assert json.loads(body) == {"error": {"code": "invocation_failed", "message": "gate is broken"}}
    assert [c[0] for c in calls] == ["gate"]


def test_route_middleware_not_found_is_500_envelope(engine, workers):
    _restart_with_http_config(engine, "")
    w = workers("py-mw-missing")
    w.register_function("pymw::h", lambda req: {"body": "unreachable"})
    w.register_trigger(
        {"type": "http", "function_id": "pymw::h", "config": {"api_path": "m", "middleware_function_ids": ["pymw::absent"]}}
    )

    def refused():  # noqa: ANN202
        st, _, body = http_request("GET", engine.http_url + "/m")
        return (st, body) if st == 500 else None

    _, body = wait_until(refused, timeout=10, what="route GET /m live")
    assert json.loads(body)["error"]["code"] == "function_not_found"
    assert "pymw::absent" in json.loads(body)["error"]["message"]


def test_middleware_timeout_is_504_middleware_timeout(engine, workers):
    _restart_with_http_config(engine, ", middleware_timeout_ms: 300, middleware: [{function_id: pymw::gate}]")
    _, calls = _gated_route(engine, workers)
    st, _, body = http_request("GET", engine.http_url + "/items/1", headers={"X-Mode": "sleep"})
    assert st == 504
    env = json.loads(body)
    assert env["error"]["code"] == "MIDDLEWARE_TIMEOUT"
    assert "pymw::gate" in env["error"]["message"]
    # The late `continue` changes nothing: the request is over, the handler never runs.
    wait_until(lambda: len(calls) == 2, timeout=10, what="the slow middleware to finish")
    time.sleep(0.3)
    assert [c[0] for c in calls] == ["gate", "gate_done"]
