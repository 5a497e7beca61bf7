"""Connection lifecycle through the official Python SDK: callee death, engine
restart + reconnect/replay, client-side drop + reattach, worker-name conflicts
(spec §1.2, §2.3 reattach/registrationrejected, §3.6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from iii import InvocationError, RegistrationRejectedError

from conftest import call, list_functions, list_workers, shutdown, wait_function, wait_until, http_request

HERE = Path(__file__).resolve().parent


def _spawn_callee(engine, tmp_path, function_id):  # noqa: ANN001, ANN202
    marker = tmp_path / "entered"
    out = open(tmp_path / "callee.log", "wb")
    env = dict(os.environ, III_URL=engine.ws_url)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "callee_worker.py"), function_id, str(marker)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out.close()
    return proc, marker


def _stopped_mid_call(engine, workers, tmp_path, sig):  # noqa: ANN001
    fid = f"pykill::hang_{sig}"
    proc, marker = _spawn_callee(engine, tmp_path, fid)
    try:
        b = workers("py-kill-caller")
        wait_function(b, fid, timeout=20)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = call(b, fid, {"x": 1}, timeout_ms=30000)
            except Exception as e:  # noqa: BLE001
                outcome["error"] = e
            outcome["t"] = time.monotonic()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_until(marker.exists, timeout=10, what="callee handler entered")
        t_kill = time.monotonic()
        proc.send_signal(sig)
        t.join(timeout=15)
        assert not t.is_alive(), "caller still waiting 15s after the callee died"
        err = outcome.get("error")
        assert isinstance(err, InvocationError), f"expected InvocationError, got {outcome!r}"
        assert err.code == "invocation_stopped", err
        assert err.message == "Invocation stopped", err
        elapsed = outcome["t"] - t_kill
        assert elapsed < 5.0, f"invocation_stopped arrived {elapsed:.2f}s after the callee died"
        # the dead worker's function is removed (§3.6 step 2)
        wait_function(b, fid, present=False)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        if (tmp_path / "callee.log").exists():
            sys.stdout.write("----- callee log -----\n" + (tmp_path / "callee.log").read_text(errors="replace"))


def test_callee_sigkilled_mid_call_gives_invocation_stopped(engine, workers, tmp_path):
    _stopped_mid_call(engine, workers, tmp_path, signal.SIGKILL)


def test_callee_closed_mid_call_gives_invocation_stopped(engine, workers, tmp_path):
    # SIGTERM makes the callee close its WebSocket gracefully (SDK shutdown)
    _stopped_mid_call(engine, workers, tmp_path, signal.SIGTERM)


def test_reconnect_after_engine_restart_replays_registrations(engine, workers):
    engine.wait_http()
    a = workers("py-recon-a")
    b = workers("py-recon-b")
    a.register_function("pyrecon::ping", lambda d: {"pong": d.get("n")})
    a.register_function("pyrecon::http", lambda req: {"status_code": 200, "body": {"ok": True}})
    a.register_trigger({"type": "http", "function_id": "pyrecon::http", "config": {"api_path": "recon/ping", "http_method": "GET"}})
    wait_function(b, "pyrecon::ping")
    assert call(b, "pyrecon::ping", {"n": 1}) == {"pong": 1}
    wait_until(lambda: http_request("GET", engine.http_url + "/recon/ping")[0] == 200, what="http route live")
    old_a, old_b = a.worker_id, b.worker_id

    engine.kill(signal.SIGKILL)
    engine.start()

    # both SDKs reconnect (backoff 1s, x2), replay their registrations and calls work again
    wait_until(lambda: call(b, "pyrecon::ping", {"n": 2}, timeout_ms=2000) == {"pong": 2}, timeout=30, what="call works after engine restart")
    assert a.get_connection_state() == "connected"
    assert b.get_connection_state() == "connected"
    assert a.worker_id and a.worker_id != old_a
    assert b.worker_id and b.worker_id != old_b
    # the http trigger was replayed too
    engine.wait_http()
    wait_until(lambda: http_request("GET", engine.http_url + "/recon/ping")[0] == 200, timeout=15, what="http route replayed")
    status, _, body = http_request("GET", engine.http_url + "/recon/ping")
    assert status == 200 and b'"ok"' in body
    names = [w["name"] for w in list_workers(b)]
    assert names.count("py-recon-a") == 1 and names.count("py-recon-b") == 1, names


def test_reattach_after_client_side_drop(engine, workers):
    # A named worker in a namespace: its name must be unique among live
    # connections, so its reconnect relies on `reattach` retiring the old one.
    a = workers("py-reattach", namespace="reattachns")
    b = workers("py-reattach-caller")
    a.register_function("pyreattach::f", lambda d: "alive")
    wait_until(lambda: call(b, "pyreattach::f", {}, namespace="reattachns", timeout_ms=3000) == "alive", what="function callable")
    old = a.worker_id

    # Abruptly drop A's TCP connection from the client side (private SDK
    # internals, test-only): the SDK reconnects and sends `reattach` first.
    a._loop.call_soon_threadsafe(lambda: a._ws.transport.abort())

    wait_until(lambda: a.worker_id != old, timeout=20, what="new worker id after reconnect")
    wait_until(
        lambda: call(b, "pyreattach::f", {}, namespace="reattachns", timeout_ms=3000) == "alive",
        timeout=20,
        what="function callable after reconnect",
    )
    assert a.get_connection_state() == "connected", "reconnect must not be rejected (WORKER_NAMESPACE_CONFLICT)"

    def one_entry():  # noqa: ANN202
        mine = [w for w in list_workers(b) if w["name"] == "py-reattach"]
        return len(mine) == 1 and mine[0]["id"] == a.worker_id and mine

    mine = wait_until(one_entry, what="exactly one py-reattach worker, with the new id")
    assert mine[0]["namespace"] == "reattachns"
    assert old not in [w["id"] for w in list_workers(b)]


def test_duplicate_worker_name_in_namespace_is_rejected(engine, workers):
    a = workers("dup-worker", namespace="dupns")
    a.register_function("pydup::a", lambda d: "from-a")
    c = workers("dup-observer")
    wait_until(lambda: call(c, "pydup::a", {}, namespace="dupns", timeout_ms=3000) == "from-a", what="first worker serving")

    b = workers("dup-worker", wait=False, namespace="dupns")
    wait_until(lambda: b.get_connection_state() == "failed", timeout=15, what="second worker rejected (state failed)")
    with pytest.raises(RegistrationRejectedError) as ei:
        b.trigger({"function_id": "pydup::a", "payload": {}, "namespace": "dupns"})
    rej = ei.value
    assert rej.code == "WORKER_NAMESPACE_CONFLICT"
    assert rej.namespace == "dupns"
    assert rej.worker_name == "dup-worker"
    assert rej.owner_worker_id == a.worker_id

    # the first worker is unaffected; the rejected one left no worker record
    assert call(c, "pydup::a", {}, namespace="dupns") == "from-a"
    dups = [w for w in list_workers(c) if w["name"] == "dup-worker"]
    assert [w["id"] for w in dups] == [a.worker_id]
    # and it stays down: the SDK does not reconnect after a fatal rejection
    time.sleep(1.5)
    assert b.get_connection_state() == "failed"
    pairs = {(f["namespace"], f["function_id"]) for f in list_functions(c)}
    assert ("dupns", "pydup::a") in pairs
    shutdown(b)


def test_reattach_evicts_still_open_previous_connection(engine, workers):
    # The hard reattach case (§2.3): the SDK reconnects while its previous
    # connection is still open on the engine side. `reattach` must evict it, so
    # the replayed registrations do not collide with the stale owner
    # (FUNCTION_NAMESPACE_CONFLICT) and the name is not refused
    # (WORKER_NAMESPACE_CONFLICT, fatal for the Python SDK).
    import asyncio

    a = workers("py-reattach-live", namespace="livens")
    b = workers("py-reattach-live-caller")
    a.register_function("pylive::f", lambda d: "alive")
    wait_until(lambda: call(b, "pylive::f", {}, namespace="livens", timeout_ms=3000) == "alive", what="function callable")
    old_id = a.worker_id
    old_ws_holder: dict = {}

    def detach() -> None:
        # test-only SDK internals: forget the socket without closing it, then reconnect
        old_ws_holder["ws"] = a._ws
        a._ws = None
        a._schedule_reconnect()

    a._loop.call_soon_threadsafe(detach)
    wait_until(lambda: a.worker_id != old_id, timeout=20, what="new connection registered")
    old_ws = old_ws_holder["ws"]

    async def wait_closed() -> None:
        await asyncio.wait_for(old_ws.wait_closed(), timeout=10)

    # the engine closed the previous connection (evicted by reattach)
    asyncio.run_coroutine_threadsafe(wait_closed(), a._loop).result(timeout=15)
    wait_until(
        lambda: call(b, "pylive::f", {}, namespace="livens", timeout_ms=3000) == "alive",
        timeout=15,
        what="function served by the new connection",
    )
    assert a.get_connection_state() == "connected"

    def one_entry():  # noqa: ANN202
        mine = [w for w in list_workers(b) if w["name"] == "py-reattach-live"]
        return len(mine) == 1 and mine[0]["id"] == a.worker_id

    wait_until(one_entry, what="only the new connection is listed")
    owner = next(f for f in list_functions(b) if f["function_id"] == "pylive::f")
    assert owner["namespace"] == "livens"
