"""HTTP triggers (`http` trigger type, spec §4.6.1) registered through the
official Python SDK and exercised with a plain HTTP client."""

from __future__ import annotations

import json

from conftest import http_request, shutdown, wait_function, wait_until


def _route_live(engine, method, path, expect=None, **kw):  # noqa: ANN001, ANN202
    def probe():  # noqa: ANN202
        st, _, _ = http_request(method, engine.http_url + path, **kw)
        return st != 404 if expect is None else st == expect

    wait_until(probe, timeout=10, what=f"route {method} {path} live")


def test_http_trigger_request_and_response_mapping(engine, workers):
    engine.wait_http()
    w = workers("py-http")
    seen: list = []

    def get_user(req):  # noqa: ANN001, ANN202
        seen.append(req)
        return {
            "status_code": 201,
            "headers": {"X-Custom": "yes", "X-User": req["path_params"]["id"]},
            "body": {
                "id": req["path_params"]["id"],
                "query": req["query_params"],
                "body": req["body"],
                "method": req["method"],
                "path": req["path"],
            },
        }

    w.register_function("pyhttp::user", get_user)
    w.register_trigger({"type": "http", "function_id": "pyhttp::user", "config": {"api_path": "users/:id", "http_method": "POST"}})
    _route_live(engine, "POST", "/users/0", body={})

    status, headers, raw = http_request(
        "POST",
        engine.http_url + "/users/42?q=hello&page=2",
        body={"name": "Zoë", "tags": ["a", "b"], "n": 1.5},
        headers={"X-Test-Header": "abc"},
    )
    assert status == 201, raw
    assert headers.get("x-custom") == "yes"
    assert headers.get("x-user") == "42"
    assert "application/json" in headers.get("content-type", "")
    assert json.loads(raw) == {
        "id": "42",
        "query": {"q": "hello", "page": "2"},
        "body": {"name": "Zoë", "tags": ["a", "b"], "n": 1.5},
        "method": "POST",
        "path": "users/:id",
    }
    req = seen[-1]
    assert req["headers"]["x-test-header"] == "abc"  # header names are lowercased
    assert req["trigger"] == {"type": "http", "path": "users/:id", "method": "POST"}
    assert "_caller_worker_id" not in req  # engine-originated calls carry no caller id


def test_http_trigger_defaults_and_raw_body(engine, workers):
    engine.wait_http()
    w = workers("py-http-defaults")
    w.register_function("pyhttp::plain", lambda req: {"headers": {"content-type": "text/plain"}, "body": "hello, wörld"})
    w.register_function("pyhttp::default", lambda req: {"body": {"ok": True, "q": req["query_params"].get("x")}})
    w.register_function("pyhttp::empty", lambda req: {"status_code": 204, "body": None})
    w.register_trigger({"type": "http", "function_id": "pyhttp::plain", "config": {"api_path": "plain", "http_method": "GET"}})
    # http_method defaults to GET
    w.register_trigger({"type": "http", "function_id": "pyhttp::default", "config": {"api_path": "/dflt"}})
    w.register_trigger({"type": "http", "function_id": "pyhttp::empty", "config": {"api_path": "empty", "http_method": "delete"}})
    _route_live(engine, "GET", "/plain")
    _route_live(engine, "GET", "/dflt")
    _route_live(engine, "DELETE", "/empty")

    st, h, body = http_request("GET", engine.http_url + "/plain")
    assert st == 200
    assert h.get("content-type", "").startswith("text/plain")
    assert body == "hello, wörld".encode()  # string body + explicit content type = raw bytes

    st, h, body = http_request("GET", engine.http_url + "/dflt?x=1")
    assert st == 200  # default status
    assert "application/json" in h.get("content-type", "")
    assert json.loads(body) == {"ok": True, "q": "1"}

    st, _, body = http_request("DELETE", engine.http_url + "/empty")
    assert st == 204 and body == b""


def test_http_non_json_body_and_header_list(engine, workers):
    engine.wait_http()
    w = workers("py-http-textin")
    w.register_function(
        "pyhttp::textin",
        lambda req: {"headers": ["X-List: one"], "body": {"body": req["body"], "ct": req["headers"].get("content-type")}},
    )
    w.register_trigger({"type": "http", "function_id": "pyhttp::textin", "config": {"api_path": "textin", "http_method": "POST"}})
    _route_live(engine, "POST", "/textin", raw=b"x", headers={"Content-Type": "text/plain"})
    # a non-JSON request body is not parsed: `body` is null (raw bytes go to the request_body channel)
    st, h, body = http_request("POST", engine.http_url + "/textin", raw=b"plain text", headers={"Content-Type": "text/plain"})
    assert st == 200, body
    assert h.get("x-list") == "one"  # headers may also be given as ["K: V"]
    assert json.loads(body) == {"body": None, "ct": "text/plain"}


def test_http_handler_error_is_500_envelope(engine, workers):
    engine.wait_http()
    w = workers("py-http-err")

    def fail(req):  # noqa: ANN001, ANN202
        raise RuntimeError("kaboom")

    w.register_function("pyhttp::fail", fail)
    w.register_trigger({"type": "http", "function_id": "pyhttp::fail", "config": {"api_path": "fail", "http_method": "GET"}})
    _route_live(engine, "GET", "/fail")
    st, h, body = http_request("GET", engine.http_url + "/fail")
    assert st == 500
    env = json.loads(body)
    assert env["error"]["code"] == "invocation_failed"
    assert env["error"]["message"] == "kaboom"


def test_http_unknown_route_is_404(engine, workers):
    engine.wait_http()
    st, _, body = http_request("GET", engine.http_url + "/definitely/not/registered")
    assert st == 404
    assert json.loads(body)["error"]["code"] == "NOT_FOUND"
    st, _, body = http_request("POST", engine.http_url + "/nope", body={"a": 1})
    assert st == 404
    assert json.loads(body)["error"]["code"] == "NOT_FOUND"


def test_http_route_removed_when_worker_leaves(engine, workers):
    engine.wait_http()
    w = workers("py-http-gone")
    watcher = workers()
    w.register_function("pyhttp::gone", lambda req: {"body": "here"})
    w.register_trigger({"type": "http", "function_id": "pyhttp::gone", "config": {"api_path": "gone/:x", "http_method": "GET"}})
    _route_live(engine, "GET", "/gone/1", expect=200)
    shutdown(w)
    wait_function(watcher, "pyhttp::gone", present=False)
    _route_live(engine, "GET", "/gone/1", expect=404)
    st, _, body = http_request("GET", engine.http_url + "/gone/1")
    assert st == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"


def test_http_unregister_trigger_removes_route(engine, workers):
    engine.wait_http()
    w = workers("py-http-unreg")
    w.register_function("pyhttp::unreg", lambda req: {"body": "x"})
    trig = w.register_trigger({"type": "http", "function_id": "pyhttp::unreg", "config": {"api_path": "unreg", "http_method": "GET"}})
    _route_live(engine, "GET", "/unreg", expect=200)
    trig.unregister()
    _route_live(engine, "GET", "/unreg", expect=404)


def test_http_trigger_metadata_delivered(engine, workers):
    engine.wait_http()
    w = workers("py-http-meta")

    def h(req, metadata=None):  # noqa: ANN001, ANN202
        return {"body": {"metadata": metadata}}

    w.register_function("pyhttp::meta", h)
    w.register_trigger(
        {"type": "http", "function_id": "pyhttp::meta", "config": {"api_path": "meta", "http_method": "GET"}, "metadata": {"route": "meta", "v": 2}}
    )
    _route_live(engine, "GET", "/meta")
    st, _, body = http_request("GET", engine.http_url + "/meta")
    assert st == 200
    assert json.loads(body) == {"metadata": {"route": "meta", "v": 2}}


def test_http_conflicting_route_is_reported(engine, workers, caplog):
    # users/:id vs users/:userId have the same shape: the second binding fails
    # with trigger_registration_failed, reported to the originator through a
    # `triggerregistrationresult` error that the SDK logs (§4.6.1, §2.3).
    import logging

    caplog.set_level(logging.ERROR, logger="iii.iii")
    engine.wait_http()
    w = workers("py-http-conflict")
    w.register_function("pyhttp::first", lambda req: {"body": "first"})
    w.register_function("pyhttp::second", lambda req: {"body": "second"})
    w.register_trigger({"type": "http", "function_id": "pyhttp::first", "config": {"api_path": "conf/:id", "http_method": "GET"}})
    _route_live(engine, "GET", "/conf/1", expect=200)
    w.register_trigger({"type": "http", "function_id": "pyhttp::second", "config": {"api_path": "conf/:userId", "http_method": "GET"}})

    def reported():  # noqa: ANN202
        return [r for r in caplog.records if "Trigger registration failed" in r.getMessage()]

    recs = wait_until(reported, what="trigger registration failure reported to the SDK")
    assert "conflicts" in recs[0].getMessage(), recs[0].getMessage()
    # the first route keeps serving
    st, _, body = http_request("GET", engine.http_url + "/conf/7")
    assert st == 200 and json.loads(body) == "first"
