"""Two engines sharing one Redis, driven with the official Python SDK: a stream item written
through engine A (SDK `stream::set`) reaches a stream-socket subscriber of engine B, and state
written through A is read through B."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from iii import InitOptions, register_worker
from websockets.sync.client import connect

from conftest import DEFAULT_BIN, Engine, _shutdown_worker, call, free_port, port_open, wait_until


@pytest.fixture
def redis_url():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run tests/setup.sh")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="iii-py-redis-") as d:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: port_open(port), timeout=10, what="redis-server listening")
            yield f"redis://127.0.0.1:{port}"
        finally:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def two_engines(redis_url):
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    engines = []
    with tempfile.TemporaryDirectory(prefix="iii-py-multi-") as tmp:
        for n in ("a", "b"):
            d = Path(tmp) / n
            d.mkdir()
            eng = Engine(binary, d)
            eng.stream_port = free_port()  # type: ignore[attr-defined]
            adapter = f"{{name: redis, config: {{redis_url: '{redis_url}'}}}}"
            cfg = d / "config.yaml"
            cfg.write_text(
                cfg.read_text()
                + "  - name: iii-state\n"
                + f"    config: {{adapter: {adapter}}}\n"
                + "  - name: iii-stream\n"
                + f"    config: {{port: {eng.stream_port}, adapter: {adapter}}}\n"  # type: ignore[attr-defined]
            )
            eng.start()
            engines.append(eng)
        try:
            yield engines
        finally:
            for e in engines:
                e.stop()


def recv_for(ws, sid: str) -> dict:  # noqa: ANN001
    while True:
        f = json.loads(ws.recv(timeout=10))
        if f.get("subscriptionId") == sid:
            return f


def test_stream_events_and_state_cross_engines(two_engines):
    a, b = two_engines
    wa = register_worker(a.ws_url, InitOptions(worker_name="py-multi-a"))
    wb = register_worker(b.ws_url, InitOptions(worker_name="py-multi-b"))
    try:
        wait_until(lambda: wa.worker_id and wb.worker_id, timeout=10, what="workers registered")
        call(wa, "state::set", {"scope": "shared", "key": "k", "value": {"from": "a"}})
        assert call(wb, "state::get", {"scope": "shared", "key": "k"}) == {"from": "a"}

        with connect(f"ws://127.0.0.1:{b.stream_port}/", open_timeout=10) as ws:
            ws.send(json.dumps({"type": "join", "data": {"subscriptionId": "s1", "streamName": "chat", "groupId": "lobby"}}))
            assert recv_for(ws, "s1")["event"]["type"] == "sync"
            # The relay on B subscribes in the background after start; retry the write
            # until B's socket sees an event (a liveness bound, not a timing assertion).
            deadline = time.monotonic() + 10
            ev = None
            n = 0
            while ev is None and time.monotonic() < deadline:
                n += 1
                call(wa, "stream::set", {"stream_name": "chat", "group_id": "lobby", "item_id": f"m{n}", "data": {"t": n}})
                try:
                    ws_frame = json.loads(ws.recv(timeout=1))
                    if ws_frame.get("subscriptionId") == "s1":
                        ev = ws_frame
                except TimeoutError:
                    pass
            assert ev is not None, "B's stream socket never saw A's write"
            assert ev["event"]["type"] == "create"
            assert ev["event"]["data"]["t"] >= 1
    finally:
        _shutdown_worker(wa)
        _shutdown_worker(wb)
