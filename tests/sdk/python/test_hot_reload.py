"""Hot reload of `config.yaml` (issue #19) seen through the official Python SDK:
the test edits the running engine's file; added entries start, removed ones
stop, a changed `http` entry rebinds (old port stops, new port serves the same
routes) or applies CORS live, and a file that fails to parse is rejected while
the engine keeps serving the SDK worker."""

from __future__ import annotations

import os

import pytest
from iii import InvocationError

from conftest import call, free_port, http_request, port_open, wait_until


def _write(engine, text: str) -> None:  # noqa: ANN001
    # Editors save by rename: the watcher must see that.
    tmp = engine.workdir / ".config.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, engine.workdir / "config.yaml")


def _config(engine, http_port: int, extra: str = "", http_extra: str = "") -> str:  # noqa: ANN001
    return (
        "workers:\n"
        "  - name: iii-worker-manager\n"
        f"    config: {{host: 127.0.0.1, port: {engine.ws_port}}}\n"
        "  - name: iii-http\n"
        f"    config: {{host: 127.0.0.1, port: {http_port}{http_extra}}}\n"
        f"{extra}"
    )


def _publish_works(w) -> bool:  # noqa: ANN001
    try:
        call(w, "publish", {"topic": "t", "data": 1})
        return True
    except InvocationError as e:
        if e.code == "function_not_found":
            return False
        raise


def _reloads(engine) -> int:  # noqa: ANN001
    return engine.log().count("configuration reloaded")


def test_entries_added_removed_and_a_broken_file_rejected(engine, workers):
    wait_until(lambda: "watching the configuration file" in engine.log(), what="watcher armed")
    w = workers("py-reload")
    assert not _publish_works(w)

    _write(engine, _config(engine, engine.http_port, "  - name: pubsub\n"))
    wait_until(lambda: _publish_works(w), what="pubsub started by the reload")

    n = engine.log().count("configuration change rejected")
    _write(engine, _config(engine, engine.http_port, "  - name: pubsub\n  - name: cron\n   config: [\n"))
    wait_until(lambda: engine.log().count("configuration change rejected") > n, what="broken file rejected")
    line = [l for l in engine.log().splitlines() if "configuration change rejected" in l][-1]
    assert "config.yaml" in line and "line" in line, line
    assert _publish_works(w), "still serving on the previous configuration"

    _write(engine, _config(engine, engine.http_port))
    wait_until(lambda: not _publish_works(w), what="pubsub stopped by the reload")
    # The SDK connection made before all of this is the same one.
    assert call(w, "engine::workers::list", {})["workers"]


def test_http_port_change_rebinds_and_cors_applies_live(engine, workers):
    wait_until(lambda: "watching the configuration file" in engine.log(), what="watcher armed")
    engine.wait_http()
    w = workers("py-reload-http")
    w.register_function("pyreload::hello", lambda req: {"status_code": 200, "body": {"hello": True}})
    w.register_trigger({"type": "http", "function_id": "pyreload::hello", "config": {"api_path": "hello", "http_method": "GET"}})
    wait_until(lambda: http_request("GET", engine.http_url + "/hello")[0] == 200, what="route live")

    new_port = free_port()
    _write(engine, _config(engine, new_port))
    wait_until(lambda: port_open(new_port), what="new HTTP port listening")
    st, _, body = http_request("GET", f"http://127.0.0.1:{new_port}/hello")
    assert st == 200 and b"hello" in body, (st, body)
    wait_until(lambda: not port_open(engine.http_port), what="old HTTP port closed")

    for origin in ["https://a.example", "https://b.example"]:
        n = _reloads(engine)
        _write(engine, _config(engine, new_port, http_extra=f", cors: {{allowed_origins: ['{origin}']}}"))
        wait_until(lambda: _reloads(engine) > n, what="reload applied")
        st, headers, _ = http_request("GET", f"http://127.0.0.1:{new_port}/hello", headers={"Origin": origin})
        assert st == 200
        assert headers.get("access-control-allow-origin") == origin, headers
    assert port_open(new_port)
