"""Durable queues through the official Python SDK: `iii::durable::publish` with
`durable:subscriber` bindings (spec 4.6.6), `TriggerAction.Enqueue` on named queues
(3.4), retries, dead letters and redrive (5.5), FIFO groups, and redelivery after a
callee SIGKILL and after an engine SIGKILL (issue 10)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import DEFAULT_BIN, HERE, Engine, call, wait_function, wait_until

QUEUE_CONFIG = (
    "  - name: iii-queue\n"
    "    config:\n"
    "      queue_configs:\n"
    "        payment: {max_retries: 3, concurrency: 2, backoff_ms: 50}\n"
    "        ordered: {type: fifo, message_group_field: customer, concurrency: 4, backoff_ms: 20}\n"
)


@pytest.fixture
def engine(request: pytest.FixtureRequest):
    """This module's engine: the default test engine plus the queue service."""
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-q-") as tmp:
        eng = Engine(binary, Path(tmp))
        cfg = eng.workdir / "config.yaml"
        cfg.write_text(cfg.read_text() + QUEUE_CONFIG)
        eng.start()
        try:
            yield eng
        finally:
            eng.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                sys.stdout.write(f"\n----- engine log -----\n{eng.log()[-20000:]}\n----- end -----\n")


def subscribe(w, function_id: str, topic: str, **queue_config):  # noqa: ANN001, ANN201
    cfg: dict = {"topic": topic}
    if queue_config:
        cfg["queue_config"] = queue_config
    return w.register_trigger({"type": "durable:subscriber", "function_id": function_id, "config": cfg})


def publish(w, topic: str, data) -> None:  # noqa: ANN001
    assert call(w, "iii::durable::publish", {"topic": topic, "data": data}) is None


def test_durable_publish_gives_each_subscribed_function_its_own_copy(workers):
    w = workers("py-q-subs")
    got: dict[str, list] = {"a": [], "b": [], "other": []}
    for name in got:
        w.register_function(f"pyq::{name}", lambda data, n=name: got[n].append(data))
    subscribe(w, "pyq::a", "orders")
    subscribe(w, "pyq::b", "orders")
    subscribe(w, "pyq::other", "invoices")
    wait_until(
        lambda: call(w, "engine::queue::topic_stats", {"topic": "orders"})["consumer_count"] == 2,
        what="both subscribers bound",
    )
    for n in range(5):
        publish(w, "orders", {"n": n})
    wait_until(lambda: len(got["a"]) == 5 and len(got["b"]) == 5, what="both functions got all five")
    assert sorted(d["n"] for d in got["a"]) == list(range(5))
    assert sorted(d["n"] for d in got["b"]) == list(range(5))
    time.sleep(0.2)
    assert got["other"] == []
    topics = {t["name"]: t for t in call(w, "engine::queue::list_topics", {})}
    assert topics["orders"]["subscriber_count"] == 2


def test_publish_without_topic_is_topic_not_set(workers):
    w = workers("py-q-notopic")
    with pytest.raises(Exception) as e:
        call(w, "iii::durable::publish", {"data": 1})
    assert "topic_not_set" in str(e.value)


def test_enqueue_action_returns_a_receipt_and_runs_the_function_later(workers):
    w = workers("py-q-enqueue")
    got: list = []
    w.register_function("pyq::pay", lambda data: got.append(data))
    wait_function(w, "pyq::pay")
    r = call(w, "pyq::pay", {"amount": 100}, action={"type": "enqueue", "queue": "payment"})
    assert isinstance(r["messageReceiptId"], str) and len(r["messageReceiptId"]) == 36
    wait_until(lambda: got == [{"amount": 100}], what="the enqueued call ran")


def test_enqueue_to_an_unknown_queue_is_enqueue_error(workers):
    w = workers("py-q-unknown")
    w.register_function("pyq::noop", lambda data: None)
    with pytest.raises(Exception) as e:
        call(w, "pyq::noop", {}, action={"type": "enqueue", "queue": "nope"})
    assert "enqueue_error" in str(e.value) or "not found" in str(e.value)
    assert "nope" in str(e.value)


def test_failures_retry_then_dead_letter_then_redrive(workers):
    w = workers("py-q-dlq")
    attempts: list = []
    healthy = threading.Event()

    def job(data):  # noqa: ANN001, ANN202
        attempts.append(data)
        if not healthy.is_set():
            raise RuntimeError(f"attempt {len(attempts)} failed")
        return {"ok": True}

    w.register_function("pyq::job", job)
    subscribe(w, "pyq::job", "jobs", maxRetries=2, backoffDelayMs=20)
    wait_until(lambda: call(w, "engine::queue::topic_stats", {"topic": "jobs"})["consumer_count"] == 1)
    publish(w, "jobs", {"k": "v"})
    dlq = wait_until(lambda: call(w, "engine::queue::dlq_messages", {"topic": "jobs"}), what="a dead letter")
    assert len(attempts) == 3, "maxRetries 2 = three attempts"
    assert dlq[0]["payload"] == {"k": "v"}
    assert dlq[0]["retries"] == 3
    assert "attempt 3 failed" in dlq[0]["error"]
    assert {"topic": "jobs", "broker_type": "builtin", "message_count": 1} in call(w, "engine::queue::dlq_topics", {})
    healthy.set()
    assert call(w, "iii::queue::redrive", {"queue": "jobs"}) == {"queue": "jobs", "redriven": 1}
    wait_until(lambda: len(attempts) == 4, what="the redriven message ran again")
    wait_until(lambda: call(w, "engine::queue::topic_stats", {"topic": "jobs"})["dlq_depth"] == 0)


def test_fifo_queue_keeps_order_per_group_under_concurrency_4(workers):
    w = workers("py-q-fifo")
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()
    inflight = {"now": 0, "max": 0}

    def ordered(data):  # noqa: ANN001, ANN202
        with lock:
            inflight["now"] += 1
            inflight["max"] = max(inflight["max"], inflight["now"])
        time.sleep(random.uniform(0.001, 0.01))
        with lock:
            seen.setdefault(data["customer"], []).append(data["seq"])
            inflight["now"] -= 1

    w.register_function("pyq::ordered", ordered)
    wait_function(w, "pyq::ordered")
    for seq in range(15):
        for customer in ("c1", "c2", "c3", "c4"):
            call(w, "pyq::ordered", {"customer": customer, "seq": seq}, action={"type": "enqueue", "queue": "ordered"})
    wait_until(lambda: sum(len(v) for v in seen.values()) == 60, timeout=30, what="all 60 handled")
    for customer, seqs in seen.items():
        assert seqs == list(range(15)), f"group {customer} out of order: {seqs}"
    assert inflight["max"] <= 4
    # A fifo queue refuses a message without its group field.
    with pytest.raises(Exception) as e:
        call(w, "pyq::ordered", {"seq": 1}, action={"type": "enqueue", "queue": "ordered"})
    assert "customer" in str(e.value)


def test_a_callee_sigkilled_mid_delivery_gets_the_message_again(engine, workers, tmp_path):
    fid = "pyq::hang"
    marker = tmp_path / "entered"
    out = open(tmp_path / "callee.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "callee_worker.py"), fid, str(marker)],
        env=dict(os.environ, III_URL=engine.ws_url),
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    out.close()
    try:
        w = workers("py-q-kill-sub")
        wait_function(w, fid, timeout=20)
        subscribe(w, fid, "fragile", maxRetries=50, backoffDelayMs=100, backoffType="fixed")
        publish(w, "fragile", {"job": 7})
        wait_until(marker.exists, timeout=10, what="the callee started the delivery")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The same function id, now served by a healthy worker, gets the message.
        got: list = []
        w.register_function(fid, lambda data: got.append(data))
        wait_until(lambda: got, timeout=20, what="redelivery to the new callee")
        assert got[0] == {"job": 7}
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_delivery_in_flight_when_the_engine_is_sigkilled_is_redelivered(engine, workers):
    w = workers("py-q-engine-kill")
    calls: list = []
    release = threading.Event()

    def slow(data):  # noqa: ANN001, ANN202
        calls.append(data)
        if len(calls) == 1:
            release.wait(30)  # the first delivery never finishes: the engine dies under it
        return None

    w.register_function("pyq::slow", slow)
    subscribe(w, "pyq::slow", "durable")
    wait_until(lambda: call(w, "engine::queue::topic_stats", {"topic": "durable"})["consumer_count"] == 1)
    publish(w, "durable", {"important": True})
    wait_until(lambda: calls, what="first delivery started")
    engine.kill(signal.SIGKILL)
    engine.start()
    # The SDK reconnects and re-registers its function and binding; the message comes back.
    wait_until(lambda: len(calls) >= 2, timeout=30, what="redelivery after the engine restart")
    release.set()
    assert calls[1] == {"important": True}
    wait_until(lambda: call(w, "engine::queue::topic_stats", {"topic": "durable"})["depth"] == 0, timeout=15)


def test_an_acknowledged_publish_survives_engine_sigkill(engine, workers):
    w = workers("py-q-ack-kill")
    for n in range(20):
        publish(w, "later", {"n": n})
    engine.kill(signal.SIGKILL)
    engine.start()
    got: list = []
    w.register_function("pyq::later", lambda data: got.append(data["n"]))
    wait_function(w, "pyq::later", timeout=20)
    subscribe(w, "pyq::later", "later")
    wait_until(lambda: len(got) >= 20, timeout=20, what="all 20 published messages")
    assert sorted(set(got)) == list(range(20))
