"""Observability through the official Python SDK: its logger's records and its spans reach the
engine over `/otel` and come back through engine::logs::*, engine::traces::*,
engine::metrics::list and the Prometheus endpoint (parsed with prometheus_client's parser).

The SDK's OpenTelemetry providers are process-global and bound to the first engine a worker
dialled, so everything is checked in one test against one engine."""

from __future__ import annotations

import urllib.request

from iii_helpers.observability import Logger

from conftest import call, free_port, wait_function, wait_until


def _restart_with_observability(engine, prom_port: int) -> None:  # noqa: ANN001
    engine.stop()
    cfg = engine.workdir / "config.yaml"
    cfg.write_text(
        cfg.read_text()
        + "  - name: iii-observability\n"
        + f"    config: {{prometheus_address: \"127.0.0.1:{prom_port}\"}}\n"
    )
    engine.start()


def test_python_logs_chain_trace_and_metrics(engine, workers):
    prom = free_port()
    _restart_with_observability(engine, prom)
    w = workers("obs-py")
    log = Logger(service_name="obs-py")

    async def c(data):  # noqa: ANN001, ANN202
        log.info("in c", {"step": "c"})
        return {"c": data["n"]}

    async def b(data):  # noqa: ANN001, ANN202
        return await w.trigger_async({"function_id": "obspy::c", "payload": data})

    async def a(data):  # noqa: ANN001, ANN202
        return await w.trigger_async({"function_id": "obspy::b", "payload": data})

    async def fails(data):  # noqa: ANN001, ANN202
        raise RuntimeError("nope")

    for fid, fn in [("obspy::a", a), ("obspy::b", b), ("obspy::c", c), ("obspy::fails", fails)]:
        w.register_function(fid, fn)
    wait_function(w, "obspy::fails")

    assert call(w, "obspy::a", {"n": 7}) == {"c": 7}
    for _ in range(2):
        try:
            call(w, "obspy::fails", {})
        except Exception:  # noqa: BLE001
            pass

    # The log written inside C carries the trace id of the A -> B -> C chain.
    logs = wait_until(
        lambda: (r := call(w, "engine::logs::list", {"service_name": "obs-py"}))["total"] >= 1 and r,
        what="the SDK log record stored",
    )
    rec = next(l for l in logs["logs"] if l["message"] == "in c")
    assert rec["level"] == "info"
    assert rec["data"] == {"step": "c"}
    trace_id = rec.get("trace_id")
    assert trace_id and len(trace_id) == 32, rec
    by_trace = call(w, "engine::logs::list", {"trace_id": trace_id})
    assert any(l["message"] == "in c" for l in by_trace["logs"])

    def chain():  # noqa: ANN202
        tree = call(w, "engine::traces::tree", {"trace_id": trace_id})
        names = {s["name"] for s in tree["spans"]}
        return {"execute obspy::a", "execute obspy::b", "execute obspy::c"} <= names and tree

    tree = wait_until(chain, what="the A -> B -> C spans in one trace")
    spans = {s["name"]: s for s in tree["spans"]}
    a_s, b_s, c_s = spans["execute obspy::a"], spans["execute obspy::b"], spans["execute obspy::c"]
    # C descends from B, B from A (through any client span the SDK puts between them).
    by_id = {s["span_id"]: s for s in tree["spans"]}

    def ancestors(s):  # noqa: ANN001, ANN202
        out = []
        while s.get("parent_span_id") in by_id:
            s = by_id[s["parent_span_id"]]
            out.append(s["span_id"])
        return out

    assert b_s["span_id"] in ancestors(c_s)
    assert a_s["span_id"] in ancestors(b_s)
    listed = call(w, "engine::traces::list", {"function_id": "obspy::c"})
    assert any(t["trace_id"] == trace_id for t in listed["traces"])

    m = call(w, "engine::metrics::list", {})["metrics"]

    def value(name, **labels):  # noqa: ANN001, ANN003, ANN202
        return next((x.get("value", x.get("count")) for x in m if x["name"] == name and all(x["labels"].get(k) == v for k, v in labels.items())), None)

    assert value("iii_invocations_total", function_id="obspy::c", status="ok") == 1
    assert value("iii_invocations_total", function_id="obspy::fails", status="error") == 2
    assert value("iii_invocation_duration_seconds", function_id="obspy::a") == 1

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("iii_invocations_total", (("function_id", "obspy::fails"), ("status", "error")))] == 2
    assert samples[("iii_invocation_duration_seconds_count", (("function_id", "obspy::c"),))] == 1
