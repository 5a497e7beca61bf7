"""Registry semantics seen through the official Python SDK: function ownership
conflicts, namespaces, introspection builtins, availability trigger types,
fragmented (>16 MiB) messages (spec §1.3, §2.3, §3.1, §3.2, §3.8, §4.6.9, §5.1)."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest
from iii import InvocationError
from iii.triggers import TriggerConfig, TriggerHandler

from conftest import call, list_functions, shutdown, wait_function, wait_until

warnings.filterwarnings("ignore", category=DeprecationWarning)


def test_function_conflict_first_owner_keeps_it(workers, caplog):
    caplog.set_level(logging.WARNING, logger="iii.iii")
    a = workers("py-owner-1")
    c = workers("py-conflict-caller")
    a.register_function("pyconf::f", lambda d: "first")
    wait_function(c, "pyconf::f")
    b = workers("py-owner-2")
    b.register_function("pyconf::f", lambda d: "second")
    b.register_function("pyconf::other", lambda d: "b-other")

    # b gets registrationrejected FUNCTION_NAMESPACE_CONFLICT for that one function (logged by the SDK)
    def rejected():  # noqa: ANN202
        return [r for r in caplog.records if "FUNCTION_NAMESPACE_CONFLICT" in r.getMessage() and "pyconf::f" in r.getMessage()]

    recs = wait_until(rejected, what="FUNCTION_NAMESPACE_CONFLICT reported to the second worker")
    assert a.worker_id in recs[0].getMessage(), "owner_worker_id names the current owner"
    # ... the rest of its registrations proceed and its connection stays up
    wait_function(c, "pyconf::other")
    assert call(c, "pyconf::other", {}) == "b-other"
    assert b.get_connection_state() == "connected"
    for _ in range(5):
        assert call(c, "pyconf::f", {}) == "first"
    entry = next(f for f in list_functions(c) if f["function_id"] == "pyconf::f")
    assert entry["worker_name"] == "py-owner-1"
    # when the owner leaves the function disappears; the refused worker is not promoted
    shutdown(a)
    wait_function(c, "pyconf::f", present=False)
    with pytest.raises(InvocationError) as ei:
        call(c, "pyconf::f", {})
    assert ei.value.code == "function_not_found"


def test_namespaces_strict_resolution(workers):
    n = workers("py-ns-worker", namespace="nsA")
    c = workers("py-ns-caller")
    n.register_function("pyns::f", lambda d: {"ns": "nsA", "caller": d.get("_caller_worker_id")})
    wait_until(lambda: ("nsA", "pyns::f") in {(f["namespace"], f["function_id"]) for f in list_functions(c)}, what="pyns::f listed in nsA")
    # explicit namespace resolves
    assert call(c, "pyns::f", {}, namespace="nsA") == {"ns": "nsA", "caller": c.worker_id}
    # absent namespace = default, never the caller's or any other: miss with a hint
    with pytest.raises(InvocationError) as ei:
        call(c, "pyns::f", {})
    assert ei.value.code == "function_not_found"
    assert ei.value.message.startswith("Function pyns::f not found in namespace default"), ei.value.message
    assert "nsA" in ei.value.message, "hint names the namespace the id is registered in"
    # the namespaced worker's own calls default to its namespace (SDK behaviour), builtins to default
    assert call(n, "pyns::f", {}) == {"ns": "nsA", "caller": n.worker_id}
    me = next(w for w in call(c, "engine::workers::list", {})["workers"] if w["id"] == n.worker_id)
    assert me["namespace"] == "nsA"


def test_introspection_builtins(workers):
    w = workers("py-intro")
    schema = {"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]}
    out_schema = {"type": "object", "properties": {"c": {"type": "number"}}}
    w.register_function(
        "pyintro::add",
        lambda d: {"c": d["a"]},
        description="adds",
        request_format=schema,
        response_format=out_schema,
        metadata={"owner": "team-x"},
    )
    w.register_function("pyintro::hidden", lambda d: None, metadata={"internal": True})
    w.register_function("pyintro::http", lambda r: {"body": "x"})
    w.register_trigger({"type": "http", "function_id": "pyintro::http", "config": {"api_path": "intro/x", "http_method": "GET"}})
    wait_function(w, "pyintro::add")

    info = call(w, "engine::functions::info", {"function_id": "pyintro::add"})
    assert info["request_schema"] == schema
    assert info["response_schema"] == out_schema
    assert info["metadata"] == {"owner": "team-x"}
    assert info["description"] == "adds"
    assert info["registered_triggers"] == []

    # metadata.internal hides a function unless include_internal
    ids = {f["function_id"] for f in list_functions(w)}
    assert "pyintro::hidden" not in ids
    ids_all = {f["function_id"] for f in call(w, "engine::functions::list", {"include_internal": True})["functions"]}
    assert "pyintro::hidden" in ids_all
    assert "pyintro::add" in {f["function_id"] for f in call(w, "engine::functions::list", {"prefix": "pyintro::"})["functions"]}

    # the http binding shows up in registered-triggers and in functions::info
    def http_binding():  # noqa: ANN202
        regs = call(w, "engine::registered-triggers::list", {})["registered_triggers"]
        return next((r for r in regs if r["function_id"] == "pyintro::http"), None)

    reg = wait_until(http_binding, what="http binding in engine::registered-triggers::list")
    assert reg["trigger_type"] == "http"
    assert reg["config"] == {"api_path": "intro/x", "http_method": "GET"}
    assert reg["worker_name"] == "py-intro"
    hinfo = call(w, "engine::functions::info", {"function_id": "pyintro::http"})
    assert [t["trigger_type"] for t in hinfo["registered_triggers"]] == ["http"]

    # unknown function -> NOT_FOUND error from the builtin
    with pytest.raises(InvocationError) as ei:
        call(w, "engine::functions::info", {"function_id": "pyintro::nope"})
    assert ei.value.code == "NOT_FOUND"

    # built-in trigger types are listed
    types = {t["id"] for t in call(w, "engine::triggers::list", {})["triggers"]}
    assert "http" in types


class _Nop(TriggerHandler):
    def __init__(self) -> None:
        self.registered: list[TriggerConfig] = []

    async def register_trigger(self, config: TriggerConfig) -> None:
        self.registered.append(config)

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        pass


def test_worker_trigger_type_listed_and_unregistered(workers):
    p = workers("py-type-owner")
    h = _Nop()
    p.register_trigger_type({"id": "pytest-listed", "description": "a listed type"}, h)

    def listed():  # noqa: ANN202
        return next((t for t in call(p, "engine::triggers::list", {})["triggers"] if t["id"] == "pytest-listed"), None)

    t = wait_until(listed, what="worker trigger type in engine::triggers::list")
    assert t["description"] == "a listed type"
    assert t["worker_name"] == "py-type-owner"

    # §2.2: `unregistertriggertype` (sent by the SDK) SHOULD remove the provider
    p.unregister_trigger_type({"id": "pytest-listed"})
    wait_until(lambda: listed() is None, what="trigger type removed after unregistertriggertype")


def test_workers_available_trigger(workers):
    watcher = workers("py-avail-watcher")
    events: list = []
    lock = threading.Lock()

    def on_event(data, metadata=None):  # noqa: ANN001, ANN202
        with lock:
            events.append((data, metadata))
        return None

    watcher.register_function("pyavail::on", on_event)
    watcher.register_trigger({"type": "engine::workers-available", "function_id": "pyavail::on", "config": None, "metadata": {"watch": 1}})
    # barrier: frames on one connection are applied in order (§1.3), so once a
    # call made after register_trigger is answered the binding is in place
    wait_function(watcher, "pyavail::on")
    x = workers("py-avail-x")
    xid = x.worker_id

    def seen(kind):  # noqa: ANN001, ANN202
        with lock:
            return [(d, m) for d, m in events if isinstance(d, dict) and d.get("event") == kind and d.get("worker_id") == xid]

    d, m = wait_until(lambda: seen("worker_connected"), what="worker_connected event")[0]
    assert m == {"watch": 1}
    wait_until(lambda: seen("worker_metadata_updated"), what="worker_metadata_updated event")
    shutdown(x)
    wait_until(lambda: seen("worker_disconnected"), what="worker_disconnected event")


def test_fragmented_message_over_16_mib(workers):
    # Python 0.25 sends JSON > 16 MiB as 1 MiB continuation fragments (§1.3);
    # the engine MUST reassemble messages up to 64 MiB.
    a = workers("py-frag")
    b = workers("py-frag-caller")
    a.register_function("pyfrag::size", lambda d: {"len": len(d["blob"]), "head": d["blob"][:16], "tail": d["blob"][-16:]})
    wait_function(b, "pyfrag::size")
    blob = ("0123456789abcdef" * 65536) * 20 + "END-é"  # ~20 MiB
    got = call(b, "pyfrag::size", {"blob": blob}, timeout_ms=60000)
    assert got == {"len": len(blob), "head": blob[:16], "tail": blob[-16:]}
