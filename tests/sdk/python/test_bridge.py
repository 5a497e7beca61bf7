"""Two engines joined by the bridge, through the official Python SDK (spec section 5.5, 7.4,
8.1): a worker on engine A calls a function a worker serves on engine B (`forward` and
`bridge.invoke`), B calls one served on A (`expose`), and A's state lives on B (the `bridge`
state adapter), also across a restart of B."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from conftest import DEFAULT_BIN, Engine, call, wait_function, wait_until


@pytest.fixture
def engines(request: pytest.FixtureRequest):
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-bridge-b-") as tb, tempfile.TemporaryDirectory(prefix="iii-sdk-py-bridge-a-") as ta:
        b = Engine(binary, Path(tb))
        cfg = Path(tb) / "config.yaml"
        cfg.write_text(cfg.read_text() + "  - name: state\n    config: {adapter: {name: kv, config: {store_method: in_memory}}}\n")
        a = Engine(binary, Path(ta))
        cfg = Path(ta) / "config.yaml"
        cfg.write_text(
            cfg.read_text()
            + f"  - name: state\n    config: {{adapter: {{name: bridge, config: {{bridge_url: '{b.ws_url}', timeout_ms: 3000}}}}}}\n"
            + "  - name: iii-bridge\n    config:\n"
            + f"      url: '{b.ws_url}'\n"
            + "      forward:\n        - {local_function: remote.greet, remote_function: pyb::greet, timeout_ms: 5000}\n"
            + "      expose:\n        - {local_function: pya::shout, remote_function: a::shout}\n"
        )
        b.start()
        a.start()
        try:
            yield a, b
        finally:
            a.stop()
            b.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                print("--- engine A ---\n" + a.log()[-10000:] + "\n--- engine B ---\n" + b.log()[-10000:])


@pytest.fixture
def sdk(engines):
    from iii import InitOptions, register_worker

    made = []

    def make(engine: Engine, name: str):
        w = register_worker(engine.ws_url, InitOptions(worker_name=name))
        made.append(w)
        wait_until(lambda: w.worker_id, timeout=10, what="workerregistered")
        return w

    yield make
    for w in made:
        try:
            w.shutdown()
        except Exception:  # noqa: BLE001
            pass


def ok(w, function_id, payload):
    """Calls until the bridge is connected (it connects in the background), then returns."""
    return wait_until(lambda: [call(w, function_id, payload)], timeout=20, what=f"{function_id} through the bridge")[0]


def test_worker_on_a_calls_a_function_served_on_b(engines, sdk):
    a, b = engines
    served = sdk(b, "py-bridge-served")
    served.register_function("pyb::greet", lambda d: {"hello": d["name"]})
    caller = sdk(a, "py-bridge-caller")
    wait_function(caller, "remote.greet")
    assert ok(caller, "remote.greet", {"name": "ann"}) == {"hello": "ann"}
    assert call(caller, "bridge.invoke", {"function_id": "pyb::greet", "data": {"name": "bob"}}) == {"hello": "bob"}
    with pytest.raises(Exception) as e:
        call(caller, "bridge.invoke", {"function_id": "pyb::missing", "data": {}})
    assert "bridge_error" in str(e.value)

    # expose: a worker on B calls `a::shout`, served by a worker on A.
    shouter = sdk(a, "py-bridge-shouter")
    shouter.register_function("pya::shout", lambda d: d["text"].upper())
    other = sdk(b, "py-bridge-b-caller")
    wait_function(other, "a::shout", timeout=20)
    assert ok(other, "a::shout", {"text": "hi"}) == "HI"


def test_state_through_the_bridge_survives_a_restart_of_b(engines, sdk):
    a, b = engines
    wa = sdk(a, "py-bridge-state-a")
    assert ok(wa, "state::set", {"scope": "s", "key": "k", "value": {"n": 1}})["new_value"] == {"n": 1}
    wb = sdk(b, "py-bridge-state-b")
    assert call(wb, "state::get", {"scope": "s", "key": "k"}) == {"n": 1}

    b.kill(signal.SIGKILL)
    with pytest.raises(Exception) as e:
        call(wa, "state::get", {"scope": "s", "key": "k"})
    assert "GET_ERROR" in str(e.value) and "bridge" in str(e.value)

    b.start()
    ok(wa, "state::set", {"scope": "s", "key": "k", "value": 2})
    assert wait_until(lambda: call(wa, "state::get", {"scope": "s", "key": "k"}) == 2, timeout=10, what="state after restart")
