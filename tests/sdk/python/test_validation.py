"""Opt-in payload validation (issue 19 item 4, PROTOCOL.md §3.9) through the official Python SDK.

One engine for the module with three worker listeners: the trusted one (`validate` unset, so
off), one with `validate: warn` and one with `validate: enforce`. A provider worker on the
trusted listener registers a function whose `request_format` the SDK derives from a Pydantic
type hint, one with an explicit schema dict, one without any, and a trigger type with a
`trigger_request_format`. Callers are SDK workers on each listener, so what is asserted is what
an SDK user sees.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from iii import InitOptions, InvocationError, register_worker
from iii.triggers import TriggerConfig, TriggerHandler
from pydantic import BaseModel

from conftest import DEFAULT_BIN, Engine, _shutdown_worker, free_port, port_open, wait_until

warnings.filterwarnings("ignore", category=DeprecationWarning)

NO_OTEL = {"enabled": False}


class Order(BaseModel):
    sku: str
    qty: int


ORDER_SCHEMA = {
    "type": "object",
    "required": ["sku", "qty"],
    "properties": {
        "sku": {"type": "string"},
        "qty": {"type": "integer", "minimum": 1},
        "lines": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    },
}

HOOK_SCHEMA = {"type": "object", "required": ["path"], "properties": {"path": {"type": "string", "pattern": "^/"}}}


class Hooks(TriggerHandler):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registered: list[Any] = []

    async def register_trigger(self, config: TriggerConfig) -> None:
        with self.lock:
            self.registered.append(config.config)

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        pass

    def configs(self) -> list[Any]:
        with self.lock:
            return list(self.registered)


@pytest.fixture(scope="module")
def setup():
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-validate-") as tmp:
        eng = Engine(binary, Path(tmp))
        eng.warn_port, eng.enforce_port = free_port(), free_port()
        (eng.workdir / "config.yaml").write_text(
            f"""workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {eng.ws_port}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {eng.warn_port}, validate: warn}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {eng.enforce_port}, validate: enforce}}
"""
        )
        eng.start()
        wait_until(lambda: port_open(eng.warn_port) and port_open(eng.enforce_port), what="validating listeners")
        seen: list[tuple[str, Any]] = []
        lock = threading.Lock()

        def record(fid: str, data: Any) -> None:
            with lock:
                seen.append((fid, data))

        p = register_worker(eng.ws_url, InitOptions(worker_name="py-validate-provider", otel=NO_OTEL))

        def create_order(data: Order) -> dict:
            d = strip(data if isinstance(data, dict) else data.model_dump())
            record("py::order", d)
            return {"ok": True, "sku": d["sku"]}

        def explicit(data):  # noqa: ANN001, ANN202
            record("py::explicit", strip(data))
            return {"seen": strip(data)}

        def free(data):  # noqa: ANN001, ANN202
            record("py::free", strip(data))
            return {"seen": strip(data)}

        p.register_function("py::order", create_order)
        p.register_function("py::explicit", explicit, request_format=ORDER_SCHEMA, response_format={"type": "string"})
        p.register_function("py::free", free)
        hooks = Hooks()
        p.register_trigger_type({"id": "pyhook", "description": "hooks", "trigger_request_format": HOOK_SCHEMA}, hooks)

        def ready() -> bool:
            fs = p.trigger({"function_id": "engine::functions::list", "payload": {}})["functions"]
            ids = {f["function_id"] for f in fs}
            types = p.trigger({"function_id": "engine::triggers::list", "payload": {}})
            return {"py::order", "py::explicit", "py::free"} <= ids and "pyhook" in str(types)

        wait_until(ready, what="provider registered")
        clients: list[Any] = []

        def client(port: int, name: str) -> Any:
            c = register_worker(f"ws://127.0.0.1:{port}", InitOptions(worker_name=name, otel=NO_OTEL))
            wait_until(lambda: c.worker_id, what=f"{name} connected")
            clients.append(c)
            return c

        def seen_of(fid: str) -> list[Any]:
            with lock:
                return [d for f, d in seen if f == fid]

        try:
            yield {"engine": eng, "provider": p, "client": client, "seen": seen_of, "hooks": hooks}
        finally:
            for c in clients:
                _shutdown_worker(c)
            _shutdown_worker(p)
            eng.stop()


def strip(d: Any) -> Any:
    """The data as the caller sent it, without the `_caller_worker_id` the engine adds."""
    if isinstance(d, dict):
        return {k: v for k, v in d.items() if k != "_caller_worker_id"}
    return d


def refused(c: Any, fid: str, payload: Any) -> InvocationError:
    with pytest.raises(InvocationError) as ei:
        c.trigger({"function_id": fid, "payload": payload})
    return ei.value


def test_the_sdk_derived_schema_is_enforced(setup):
    c = setup["client"](setup["engine"].enforce_port, "py-enforce-derived")
    # The SDK derived `request_format` from the Pydantic type hint.
    info = c.trigger({"function_id": "engine::functions::info", "payload": {"function_id": "py::order"}})
    assert info["request_schema"]["required"] == ["sku", "qty"], info

    e = refused(c, "py::order", {"sku": "A-1", "qty": "two"})
    assert e.code == "validation_error", e
    assert "py::order" in e.message and '"/qty"' in e.message, e.message
    e = refused(c, "py::order", {"sku": "A-1"})
    assert e.code == "validation_error" and "qty" in e.message, e.message
    assert setup["seen"]("py::order") == [], "refused calls never reach the worker"

    assert c.trigger({"function_id": "py::order", "payload": {"sku": "A-1", "qty": 3}}) == {"ok": True, "sku": "A-1"}
    assert setup["seen"]("py::order") == [{"sku": "A-1", "qty": 3}]


def test_enforce_names_the_pointer_and_leaves_functions_without_a_schema_alone(setup):
    c = setup["client"](setup["engine"].enforce_port, "py-enforce")
    e = refused(c, "py::explicit", {"sku": "A", "qty": 1, "lines": [{"n": 1}, {"n": "x"}]})
    assert e.code == "validation_error"
    assert '"/lines/1/n"' in e.message and "integer" in e.message, e.message
    good = {"sku": "A", "qty": 1, "lines": [{"n": 1}]}
    # Results are not checked in enforce mode (the explicit function answers an object where its
    # response_format says string).
    assert c.trigger({"function_id": "py::explicit", "payload": good}) == {"seen": good}
    assert c.trigger({"function_id": "py::free", "payload": ["anything", 1]}) == {"seen": ["anything", 1]}


def test_enforce_refuses_trigger_configs(setup, caplog):
    caplog.set_level(logging.ERROR, logger="iii.iii")
    c = setup["client"](setup["engine"].enforce_port, "py-enforce-binder")
    c.register_function("pybind::f", lambda d: d)
    c.register_trigger({"type": "pyhook", "function_id": "pybind::f", "config": {"path": "no-slash"}})

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "Trigger registration failed" in r.getMessage()]

    wait_until(logged, what="the SDK logged the refused trigger")
    assert "pyhook" in logged()[0] and '"/path"' in logged()[0], logged()

    # engine::register_trigger from the same session is refused as the call's error.
    e = refused(c, "engine::register_trigger", {"trigger_type": "pyhook", "function_id": "pybind::f", "config": {"path": 7}})
    assert e.code == "validation_error" and '"/path"' in e.message, e.message

    # A good config reaches the provider; the refused ones never did.
    c.register_trigger({"type": "pyhook", "function_id": "pybind::f", "config": {"path": "/ok"}})
    wait_until(lambda: {"path": "/ok"} in setup["hooks"].configs(), what="good binding at the provider")
    assert all(cfg.get("path") == "/ok" for cfg in setup["hooks"].configs() if "path" in cfg), setup["hooks"].configs()


def test_warn_passes_and_logs(setup):
    c = setup["client"](setup["engine"].warn_port, "py-warn")
    bad = {"sku": 5}
    assert c.trigger({"function_id": "py::explicit", "payload": bad}) == {"seen": bad}
    assert bad in setup["seen"]("py::explicit")
    log = wait_until(
        lambda: (lambda t: t if "validate: warn" in t and "py::explicit" in t and "result passed anyway" in t else None)(
            setup["engine"].log()
        ),
        what="warn lines for the input and the result",
    )
    assert "(at JSON pointer" in log


def test_off_is_unchanged(setup):
    c = setup["client"](setup["engine"].ws_port, "py-off")
    assert c.trigger({"function_id": "py::explicit", "payload": "not an object"}) == {"seen": "not an object"}
    with pytest.raises(InvocationError) as ei:
        c.trigger({"function_id": "engine::register_trigger", "payload": {"trigger_type": 5}})
    assert ei.value.code == "deserialization_error", ei.value
