"""Core request/response behaviour through the official Python SDK (spec §2, §3, §5.1)."""

from __future__ import annotations

import asyncio
import random
import string
import threading
import time

import pytest
from iii import InvocationError, TriggerAction

from conftest import call, function_ids, list_functions, list_workers, wait_function, wait_until


def strip_caller(data):  # noqa: ANN001, ANN201
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k != "_caller_worker_id"}
    return data


# --------------------------------------------------------------------------- connect / listing


def test_connect_and_listing(engine, workers, monkeypatch):
    # III_URL is how the SDK finds the engine when no address is given (§1.6).
    monkeypatch.setenv("III_URL", engine.ws_url)
    w = workers("py-lister", address=None, worker_description="lists things")
    assert w.get_connection_state() == "connected"
    assert w.get_address() == engine.ws_url
    assert isinstance(w.worker_id, str) and len(w.worker_id) == 36  # UUID from workerregistered

    w.register_function("pylist::echo", lambda d: d, description="Echo for listing")
    wait_function(w, "pylist::echo")

    funcs = list_functions(w)
    entry = next(f for f in funcs if f["function_id"] == "pylist::echo")
    assert entry["namespace"] == "default"
    assert entry["worker_name"] == "py-lister"
    assert entry["description"] == "Echo for listing"
    # engine::* builtins are hidden from the default listing (except engine::queue::*)
    assert not [f for f in funcs if f["function_id"].startswith("engine::") and not f["function_id"].startswith("engine::queue::")]
    ids = [f["function_id"] for f in funcs]
    assert ids == sorted(ids), "engine::functions::list is sorted by id"

    def me():  # noqa: ANN202
        return next((x for x in list_workers(w) if x.get("id") == w.worker_id), None)

    wk = wait_until(lambda: (m := me()) and m.get("name") == "py-lister" and m, what="worker listed with its name")
    assert wk["name"] == "py-lister"
    assert wk["runtime"] == "python"
    assert wk["version"] == "0.25.0"
    assert wk["namespace"] == "default"
    assert wk["status"] == "connected"
    assert wk["description"] == "lists things"
    assert wk["function_count"] >= 1

    info = call(w, "engine::functions::info", {"function_id": "pylist::echo"})
    assert info["function_id"] == "pylist::echo"
    assert info["namespace"] == "default"
    assert info["worker_name"] == "py-lister"
    assert info["description"] == "Echo for listing"


# --------------------------------------------------------------------------- invoke


def test_invoke_across_two_workers(workers):
    a = workers("py-callee")
    b = workers("py-caller")
    seen = []

    def add(data):  # noqa: ANN001, ANN202
        seen.append(data)
        return {"c": data["a"] + data["b"]}

    a.register_function("pymath::add", add)
    wait_function(b, "pymath::add")
    assert call(b, "pymath::add", {"a": 2, "b": 3}) == {"c": 5}
    # §3.3: the engine injects the caller's worker id into object payloads
    assert seen[-1]["_caller_worker_id"] == b.worker_id
    assert strip_caller(seen[-1]) == {"a": 2, "b": 3}


def test_handler_error_is_invocation_failed_with_stacktrace(workers):
    a = workers("py-thrower")
    b = workers()

    def boom(data):  # noqa: ANN001, ANN202
        raise ValueError("boom-xyz ünïcode")

    a.register_function("pyerr::boom", boom)
    wait_function(b, "pyerr::boom")
    with pytest.raises(InvocationError) as ei:
        call(b, "pyerr::boom", {"x": 1})
    err = ei.value
    assert err.code == "invocation_failed"
    assert err.message == "boom-xyz ünïcode"
    assert err.stacktrace and "Traceback" in err.stacktrace and "ValueError" in err.stacktrace
    assert err.function_id == "pyerr::boom"


def test_unknown_function_is_function_not_found_quickly(workers):
    b = workers()
    t0 = time.monotonic()
    with pytest.raises(InvocationError) as ei:
        call(b, "nope::missing", {"x": 1}, timeout_ms=30000)
    elapsed = time.monotonic() - t0
    assert ei.value.code == "function_not_found"
    assert ei.value.message.startswith("Function nope::missing not found in namespace default"), ei.value.message
    assert elapsed < 2.0, f"function_not_found took {elapsed:.2f}s (SDK timeout is 30s)"


def test_unregister_function(workers):
    a = workers("py-unreg")
    b = workers()
    ref = a.register_function("pyunreg::f", lambda d: "ok")
    wait_function(b, "pyunreg::f")
    assert call(b, "pyunreg::f", {}) == "ok"
    ref.unregister()

    def gone() -> bool:
        try:
            call(b, "pyunreg::f", {}, timeout_ms=5000)
            return False
        except InvocationError as e:
            assert e.code == "function_not_found", e
            return True

    wait_until(gone, what="call to an unregistered function fails function_not_found")
    assert "pyunreg::f" not in function_ids(b)
    # the worker itself stays connected and usable
    a.register_function("pyunreg::g", lambda d: "g")
    wait_function(b, "pyunreg::g")
    assert call(b, "pyunreg::g", {}) == "g"


# --------------------------------------------------------------------------- payloads


def _echo_worker(workers):  # noqa: ANN001, ANN202
    a = workers("py-echo")
    b = workers("py-echo-caller")
    a.register_function("pyecho::wrapped", lambda d: d["v"])
    a.register_function("pyecho::raw", lambda d: {"got": d})
    wait_function(b, "pyecho::raw")
    wait_function(b, "pyecho::wrapped")
    return a, b


def test_nested_and_unicode_payloads_round_trip(workers):
    _, b = _echo_worker(workers)
    nested = {
        "a": [1, {"b": [None, True, False, 1.5, -3, 2**53 - 1]}],
        "deep": {"x": {"y": {"z": [[[], {}], [[["leaf"]]]]}}},
        "unicode": "héllo wörld — 中文 — 日本語 — 😀🚀 — \u202e rtl \u0000 nul \t\n\"\\",
        "emoji_key_😀": {"ключ": "значение"},
        "empty": "",
        "float": 0.1,
        "neg": -0.0001,
        "i64": [2**63 - 1, -(2**63), 2**64 - 1],
        "floats": [1e-7, 1.7976931348623157e308, 5e-324, 123456.789],
    }
    assert call(b, "pyecho::wrapped", {"v": nested}) == nested
    # non-object payloads reach the handler unchanged (no _caller_worker_id injection)
    for payload in ([1, "two", {"three": 3}], "just a string 😀", 42, 3.25, True, False):
        assert call(b, "pyecho::raw", payload) == {"got": payload}


def test_missing_data_is_null(workers):
    # Python 0.25 drops None-valued fields: `payload=None` reaches the engine
    # as an invokefunction without `data`; the engine must treat it as null (§2.1, §14).
    _, b = _echo_worker(workers)
    assert call(b, "pyecho::raw", None, timeout_ms=5000) == {"got": None}


@pytest.mark.parametrize("size_mib", [1, 4])
def test_large_payload_round_trip(workers, size_mib):
    _, b = _echo_worker(workers)
    rnd = random.Random(size_mib)
    alphabet = string.ascii_letters + string.digits + "é中😀"
    chunk = "".join(rnd.choice(alphabet) for _ in range(4096))
    big = (chunk * (size_mib * 1024 * 1024 // len(chunk.encode()) + 1))
    payload = {"v": {"blob": big, "list": list(range(1000)), "size": len(big)}}
    assert len(big.encode()) >= size_mib * 1024 * 1024
    got = call(b, "pyecho::wrapped", payload, timeout_ms=60000)
    assert got["size"] == len(big)
    assert got["list"] == list(range(1000))
    assert got["blob"] == big


def test_two_hundred_parallel_invocations(workers):
    a = workers("py-par")
    b = workers("py-par-caller")

    async def slow_double(data):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.05)
        return {"i": data["i"], "double": data["i"] * 2}

    a.register_function("pypar::double", slow_double)
    wait_function(b, "pypar::double")

    async def run_all():  # noqa: ANN202
        return await asyncio.gather(
            *[b.trigger_async({"function_id": "pypar::double", "payload": {"i": i}}) for i in range(200)],
            return_exceptions=True,
        )

    results = asyncio.run(run_all())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of 200 calls failed, first: {errors[0]!r}"
    assert results == [{"i": i, "double": i * 2} for i in range(200)]


# --------------------------------------------------------------------------- void / callbacks


def test_fire_and_forget_reaches_handler(workers):
    a = workers("py-void")
    b = workers()
    got: list = []
    done = threading.Event()

    def record(data):  # noqa: ANN001, ANN202
        got.append(data)
        done.set()
        return None

    a.register_function("pyvoid::record", record)
    wait_function(b, "pyvoid::record")
    assert call(b, "pyvoid::record", {"event": "login", "n": 7}, action=TriggerAction.Void()) is None
    assert done.wait(10), "void invocation never reached the handler"
    assert strip_caller(got[0]) == {"event": "login", "n": 7}


def test_callee_calls_back_into_caller(workers):
    a = workers("py-a")
    b = workers("py-b")
    a.register_function("pya::inc", lambda d: {"n": d["n"] + 1})

    def b_work(data):  # noqa: ANN001, ANN202
        # B's handler calls a function that lives on A while A waits on B
        inner = b.trigger({"function_id": "pya::inc", "payload": {"n": data["n"] * 10}})
        return {"from_a": inner["n"], "caller": data["_caller_worker_id"]}

    b.register_function("pyb::work", b_work)
    wait_function(a, "pyb::work")
    wait_function(a, "pya::inc")
    assert call(a, "pyb::work", {"n": 4}) == {"from_a": 41, "caller": a.worker_id}


def test_metadata_side_channel(workers):
    a = workers("py-meta")
    b = workers()

    def with_meta(data, metadata=None):  # noqa: ANN001, ANN202
        return {"data": strip_caller(data), "metadata": metadata}

    a.register_function("pymeta::echo", with_meta)
    a.register_function("pymeta::plain", lambda d: strip_caller(d))
    wait_function(b, "pymeta::echo")
    wait_function(b, "pymeta::plain")
    meta = {"tenant": "acme", "nested": {"k": [1, 2]}, "ü": "ß"}
    # metadata is delivered as the handler's second argument, never merged into data
    assert call(b, "pymeta::echo", {"x": 1}, metadata=meta) == {"data": {"x": 1}, "metadata": meta}
    assert call(b, "pymeta::echo", {"x": 2}) == {"data": {"x": 2}, "metadata": None}
    assert call(b, "pymeta::plain", {"y": 1}, metadata=meta) == {"y": 1}


def test_traceparent_passthrough(workers):
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from iii.invocation_context import current_context

    a = workers("py-trace")
    b = workers()

    def show(data):  # noqa: ANN001, ANN202
        ctx = current_context()
        return {"traceparent": ctx.traceparent if ctx else None}

    a.register_function("pytrace::show", show)
    wait_function(b, "pytrace::show")

    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    span = NonRecordingSpan(SpanContext(trace_id=trace_id, span_id=0x00F067AA0BA902B7, is_remote=False, trace_flags=TraceFlags(1)))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        got = call(b, "pytrace::show", {})
    finally:
        otel_context.detach(token)
    tp = got["traceparent"]
    assert isinstance(tp, str), f"callee saw no traceparent: {got}"
    parts = tp.split("-")
    assert len(parts) == 4 and parts[0] == "00", tp
    assert parts[1] == "4bf92f3577b34da6a3ce929d0e0e4736", f"trace id not propagated: {tp}"
