"""HTTP-invoked functions through the official Python SDK (spec §3.10): a worker registers a
function with ``HttpInvocationConfig`` instead of a handler, another worker calls it, and the
engine calls a local HTTP server this test runs, signing each request with HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from iii_helpers.http import HttpAuthHmac, HttpInvocationConfig

from conftest import DEFAULT_BIN, Engine, call, list_functions, wait_function, wait_until

SECRET = "py-hmac-secret-9d2"
SECRET_VAR = "III_PY_HTTPFN_SECRET"


class Upstream:
    """A local HTTP server that checks the engine's HMAC signature and answers with what it got."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ts = self.headers.get("x-iii-timestamp", "")
                want = "sha256=" + hmac.new(
                    SECRET.encode(), f"{ts}:{base64.b64encode(body).decode()}".encode(), hashlib.sha256
                ).hexdigest()
                ok = bool(ts) and hmac.compare_digest(self.headers.get("x-iii-signature", ""), want)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append({"path": self.path, "headers": headers, "body": body})
                if ok:
                    status, reply = 200, {"received": json.loads(body), "path": self.headers.get("x-iii-function-path")}
                else:
                    status, reply = 401, {"error": {"code": "bad_signature", "message": "signature mismatch"}}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """This module's engine runs `iii-http-functions` with a policy that admits the local
    server, and has the HMAC secret in its environment."""
    monkeypatch.setenv(SECRET_VAR, SECRET)
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-httpfn-") as tmp:
        eng = Engine(binary, Path(tmp))
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            cfg.read_text()
            + "  - name: iii-http-functions\n"
            + "    config:\n"
            + "      security: {url_allowlist: ['127.0.0.1'], block_private_ips: false, require_https: false}\n"
        )
        eng.start()
        try:
            yield eng
        finally:
            eng.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                print(eng.log()[-20000:])


def test_an_hmac_signed_http_function_registered_with_the_sdk_answers_through_the_engine(workers, upstream):
    owner = workers("py-http-owner")
    caller = workers("py-http-caller")
    owner.register_function(
        "remote::signed",
        HttpInvocationConfig(
            url=upstream.url("/signed"),
            method="POST",
            timeout_ms=5000,
            headers={"X-Team": "py"},
            auth=HttpAuthHmac(secret_key=SECRET_VAR),
        ),
        description="served by a URL",
    )
    wait_function(caller, "remote::signed")

    got = call(caller, "remote::signed", {"order": 42, "items": ["a", "é"]})
    assert got == {"received": {"order": 42, "items": ["a", "é"]}, "path": "remote::signed"}
    seen = upstream.requests[-1]
    assert seen["path"] == "/signed"
    assert seen["headers"]["x-team"] == "py"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["x-iii-signature"].startswith("sha256=")

    listed = [f for f in list_functions(caller) if f["function_id"] == "remote::signed"]
    assert listed and listed[0]["worker_name"] == "py-http-owner", listed


def test_a_refused_http_function_leaves_the_sdk_worker_serving(workers, upstream):
    w = workers("py-http-refused")
    # An unset secret variable refuses the registration; the SDK must not treat it as fatal.
    w.register_function(
        "remote::unsigned",
        HttpInvocationConfig(url=upstream.url("/x"), auth=HttpAuthHmac(secret_key="III_PY_HTTPFN_UNSET")),
    )
    w.register_function("local::ping", lambda data: {"pong": data})
    wait_function(w, "local::ping")
    assert call(w, "local::ping", 1) == {"pong": 1}
    assert "remote::unsigned" not in {f["function_id"] for f in list_functions(w)}
    assert upstream.requests == []
    wait_until(lambda: w.worker_id, what="still connected")
