"""The stream socket (spec §4.6.4) with its handlers written against the official Python SDK.

iii-sdk 0.25 has no stream-socket client: `iii_helpers.stream` only holds the payload models
(`StreamAuthInput`, `StreamAuthResult`, `StreamJoinLeaveEvent`, `StreamJoinResult`). So the SDK
worker provides the auth function and the `stream:join`/`stream:leave` handlers, parsing and
answering with those models, and a plain `websockets` client plays the browser."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from pathlib import Path

import pytest
from iii_helpers.stream import StreamAuthInput, StreamAuthResult, StreamJoinLeaveEvent, StreamJoinResult
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import DEFAULT_BIN, Engine, call, free_port, wait_function, wait_until

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def engine(request: pytest.FixtureRequest):
    """This module's engine runs `stream` with its socket and an auth function."""
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-streamsock-") as tmp:
        eng = Engine(binary, Path(tmp))
        eng.stream_port = free_port()  # type: ignore[attr-defined]
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            cfg.read_text()
            + "  - name: iii-stream\n"
            + f"    config: {{port: {eng.stream_port}, auth_function: pysock::auth, adapter: {{name: kv, config: {{store_method: in_memory}}}}}}\n"  # type: ignore[attr-defined]
        )
        eng.start()
        try:
            yield eng
        finally:
            eng.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                print(eng.log()[-20000:])


def recv_for(ws, sid: str) -> dict:  # noqa: ANN001
    """The next frame of subscription `sid` (others are skipped)."""
    while True:
        f = json.loads(ws.recv(timeout=10))
        if f.get("subscriptionId") == sid:
            return f


def test_sdk_handlers_authenticate_admit_deny_and_see_leaves(engine, workers):
    w = workers("py-stream-socket")
    auth_seen: list[StreamAuthInput] = []
    joins: list[StreamJoinLeaveEvent] = []
    leaves: list[StreamJoinLeaveEvent] = []
    left = threading.Event()

    def auth(data):  # noqa: ANN001, ANN202
        req = StreamAuthInput.model_validate(data)
        auth_seen.append(req)
        if req.query_params.get("token") != ["ann-secret"]:
            raise ValueError("bad token")
        return StreamAuthResult(context={"user": "ann"}).model_dump()

    def on_join(data):  # noqa: ANN001, ANN202
        ev = StreamJoinLeaveEvent.model_validate(data)
        joins.append(ev)
        return StreamJoinResult(unauthorized=ev.group_id == "secret").model_dump()

    def on_leave(data):  # noqa: ANN001, ANN202
        leaves.append(StreamJoinLeaveEvent.model_validate(data))
        left.set()

    w.register_function("pysock::auth", auth)
    w.register_function("pysock::join", on_join)
    w.register_function("pysock::leave", on_leave)
    w.register_trigger({"type": "stream:join", "function_id": "pysock::join", "config": {"stream_name": "chat"}})
    w.register_trigger({"type": "stream:leave", "function_id": "pysock::leave", "config": {"stream_name": "chat"}})
    wait_function(w, "pysock::leave")
    wait_until(
        lambda: {t["trigger_type"] for t in call(w, "engine::registered-triggers::list", {})["registered_triggers"]}
        >= {"stream:join", "stream:leave"},
        what="join and leave triggers registered",
    )
    url = f"ws://127.0.0.1:{engine.stream_port}/"

    # The auth function's error refuses the upgrade (fails closed).
    with pytest.raises(InvalidStatus) as refused:
        connect(url + "?token=wrong", open_timeout=10)
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "stream_auth_failed"

    call(w, "stream::set", {"stream_name": "chat", "group_id": "lobby", "item_id": "m1", "data": {"t": "hi"}})
    with connect(url + "?token=ann-secret", open_timeout=10) as ws:
        assert auth_seen[-1].path == "/"
        assert auth_seen[-1].addr.startswith("127.0.0.1:")
        ws.send(json.dumps({"type": "join", "data": {"subscriptionId": "s1", "streamName": "chat", "groupId": "lobby"}}))
        sync = recv_for(ws, "s1")
        assert sync["event"] == {"type": "sync", "data": [{"t": "hi"}]}
        assert joins[-1].context == {"user": "ann"}
        assert (joins[-1].subscription_id, joins[-1].group_id, joins[-1].id) == ("s1", "lobby", None)

        call(w, "stream::set", {"stream_name": "chat", "group_id": "lobby", "item_id": "m2", "data": {"t": "yo"}})
        ev = recv_for(ws, "s1")
        assert (ev["id"], ev["event"]) == ("m2", {"type": "create", "data": {"t": "yo"}})

        ws.send(json.dumps({"type": "join", "data": {"subscriptionId": "s2", "streamName": "chat", "groupId": "secret"}}))
        assert recv_for(ws, "s2")["event"] == {"type": "unauthorized"}
        ws.send("{oops")
        err = json.loads(ws.recv(timeout=10))
        assert err["type"] == "error" and err["error"]["code"] == "invalid_stream_frame"
    assert left.wait(10), "leave handler not called on close"
    assert [(e.subscription_id, e.context) for e in leaves] == [("s1", {"user": "ann"})]
