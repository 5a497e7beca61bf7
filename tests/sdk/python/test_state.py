"""state::* and stream::* through the official Python SDK, on the builtin kv component (spec §5.3,
§5.4, §4.6.3, §4.6.4, §8.3), including durability across SIGKILL of the engine."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import DEFAULT_BIN, Engine, call, wait_function, wait_until


@pytest.fixture
def engine(request: pytest.FixtureRequest):
    """This module's engine also runs iii-state and iii-stream (config entries are opt-in)."""
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-state-") as tmp:
        eng = Engine(binary, Path(tmp))
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(cfg.read_text() + "  - name: iii-state\n    config: {adapter: {name: kv}}\n  - name: iii-stream\n    config: {port: 0}\n")
        eng.start()
        try:
            yield eng
        finally:
            eng.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                print(eng.log()[-20000:])


def test_state_functions(workers):
    w = workers("py-state")
    assert call(w, "state::get", {"scope": "users", "key": "u1"}) is None
    assert call(w, "state::set", {"scope": "users", "key": "u1", "value": {"name": "ann"}}) == {"old_value": None, "new_value": {"name": "ann"}}
    assert call(w, "state::set", {"scope": "users", "key": "u1", "value": {"name": "bob"}})["old_value"] == {"name": "ann"}
    call(w, "state::set", {"scope": "users", "key": "u2", "value": [1, "два", {"x": None}]})
    assert call(w, "state::get", {"scope": "users", "key": "u2"}) == [1, "два", {"x": None}]
    assert call(w, "state::list", {"scope": "users"}) == [{"name": "bob"}, [1, "два", {"x": None}]]
    assert call(w, "state::list_groups", {}) == {"groups": ["users"]}
    r = call(w, "state::update", {"scope": "users", "key": "u1", "ops": [
        {"type": "merge", "path": ["profile", "tags"], "value": {"a": 1}},
        {"type": "increment", "path": "visits", "by": 3},
        {"type": "append", "path": "name", "value": "!"},
        {"type": "merge", "path": ["__proto__"], "value": {}},
    ]})
    assert r["old_value"] == {"name": "bob"}
    assert r["new_value"] == {"name": "bob!", "profile": {"tags": {"a": 1}}, "visits": 3}
    assert [e["op_index"] for e in r["errors"]] == [3]
    assert r["errors"][0]["code"].startswith("merge.path")
    assert call(w, "state::delete", {"scope": "users", "key": "u2"}) == [1, "два", {"x": None}]
    assert call(w, "state::get", {"scope": "users", "key": "u2"}) is None


def test_state_trigger_through_sdk(workers):
    w = workers("py-state-watch")
    events: list[dict] = []
    got = threading.Event()

    def on_state(data):  # noqa: ANN001, ANN202
        events.append(data)
        got.set()
        return None

    w.register_function("pystate::on_change", on_state)
    w.register_trigger({"type": "state", "function_id": "pystate::on_change", "config": {"scope": "orders"}})
    wait_function(w, "pystate::on_change")
    wait_until(lambda: any(t["id"] for t in call(w, "engine::registered-triggers::list", {})["registered_triggers"] if t["trigger_type"] == "state"), what="state trigger registered")
    call(w, "state::set", {"scope": "orders", "key": "o1", "value": {"total": 5}})
    assert got.wait(5)
    assert events[0] == {"type": "state", "event_type": "state:created", "scope": "orders", "key": "o1", "old_value": None, "new_value": {"total": 5}}
    got.clear()
    call(w, "state::delete", {"scope": "orders", "key": "o1"})
    assert got.wait(5)
    assert events[-1]["event_type"] == "state:deleted"


def test_stream_functions_and_trigger(workers):
    w = workers("py-stream")
    events: list[dict] = []
    got = threading.Event()

    def on_chat(data):  # noqa: ANN001, ANN202
        events.append(data)
        got.set()

    w.register_function("pystream::on_chat", on_chat)
    w.register_trigger({"type": "stream", "function_id": "pystream::on_chat", "config": {"stream_name": "chat"}})
    wait_function(w, "pystream::on_chat")
    wait_until(lambda: any(t["trigger_type"] == "stream" for t in call(w, "engine::registered-triggers::list", {})["registered_triggers"]), what="stream trigger registered")
    assert call(w, "stream::set", {"stream_name": "chat", "group_id": "r1", "item_id": "m1", "data": {"t": "hi"}}) == {"old_value": None, "new_value": {"t": "hi"}}
    assert got.wait(5)
    ev = events[0]
    assert (ev["type"], ev["streamName"], ev["groupId"], ev["id"]) == ("stream", "chat", "r1", "m1")
    assert ev["event"] == {"type": "create", "data": {"t": "hi"}}
    assert call(w, "stream::get", {"stream_name": "chat", "group_id": "r1", "item_id": "m1"}) == {"t": "hi"}
    assert call(w, "stream::list", {"stream_name": "chat", "group_id": "r1"}) == [{"t": "hi"}]
    assert call(w, "stream::list_groups", {"stream_name": "chat"}) == ["r1"]
    assert call(w, "stream::list_all", {}) == {"stream": [{"id": "chat", "groups": ["r1"]}], "count": 1}
    r = call(w, "stream::update", {"stream_name": "chat", "group_id": "r1", "item_id": "m1", "ops": [{"type": "set", "path": "seen", "value": True}]})
    assert r["new_value"] == {"t": "hi", "seen": True}
    assert call(w, "stream::delete", {"stream_name": "chat", "group_id": "r1", "item_id": "m1"}) == {"old_value": {"t": "hi", "seen": True}}
    wait_until(lambda: [e["event"]["type"] for e in events] == ["create", "update", "delete"], what="create, update, delete events")


def test_acknowledged_state_survives_sigkill(engine, workers):
    w = workers("py-durable")
    call(w, "state::set", {"scope": "d", "key": "k", "value": {"kept": True}})
    engine.kill(signal.SIGKILL)  # right after the acknowledgement
    engine.start()
    w2 = workers("py-durable-2")
    assert call(w2, "state::get", {"scope": "d", "key": "k"}) == {"kept": True}
