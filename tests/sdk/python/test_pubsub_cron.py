"""`publish` / `subscribe` and the `cron` trigger type through the official Python SDK
(spec §4.6.2, §4.6.5, §5.5)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import DEFAULT_BIN, Engine, call, wait_function, wait_until


@pytest.fixture
def engine(request: pytest.FixtureRequest):
    """This module's engine also runs the pubsub and cron services (entries are opt-in)."""
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-pubcron-") as tmp:
        eng = Engine(binary, Path(tmp))
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(cfg.read_text() + "  - name: pubsub\n  - name: cron\n")
        eng.start()
        try:
            yield eng
        finally:
            eng.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                print(eng.log()[-20000:])


class Inbox:
    """Records what each function id received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: dict[str, list] = {}

    def handler(self, function_id: str):  # noqa: ANN201
        def h(data, *_):  # noqa: ANN001, ANN202
            with self.lock:
                self.got.setdefault(function_id, []).append(data)
            return None

        return h

    def of(self, function_id: str) -> list:
        with self.lock:
            return list(self.got.get(function_id, []))


def bindings(w, function_id: str) -> list:  # noqa: ANN001
    r = call(w, "engine::registered-triggers::list", {"function_id": function_id})
    return r["registered_triggers"]


def test_publish_reaches_each_subscriber_of_the_topic_and_unsubscribe_takes_only_one(workers):
    subs = workers("py-subs")
    other = workers("py-other")
    pub = workers("py-pub")
    inbox = Inbox()
    for fid in ("pyorders::one", "pyorders::two"):
        subs.register_function(fid, inbox.handler(fid))
    other.register_function("pyinvoices::one", inbox.handler("pyinvoices::one"))
    for fid in ("pyorders::one", "pyorders::two", "pyinvoices::one"):
        wait_function(pub, fid)
    t_one = subs.register_trigger({"type": "subscribe", "function_id": "pyorders::one", "config": {"topic": "orders"}})
    subs.register_trigger({"type": "subscribe", "function_id": "pyorders::two", "config": {"topic": "orders"}})
    other.register_trigger({"type": "subscribe", "function_id": "pyinvoices::one", "config": {"topic": "invoices"}})
    wait_until(lambda: len(bindings(pub, "pyorders::two")) == 1 and len(bindings(pub, "pyinvoices::one")) == 1, what="bindings listed")

    assert call(pub, "publish", {"topic": "orders", "data": {"n": 1}}) is None
    wait_until(lambda: inbox.of("pyorders::one") and inbox.of("pyorders::two"), what="both subscribers called")
    assert inbox.of("pyorders::one") == [{"n": 1}]
    assert inbox.of("pyorders::two") == [{"n": 1}]
    time.sleep(0.3)
    assert inbox.of("pyinvoices::one") == [], "a subscriber of another topic was called"

    t_one.unregister()
    wait_until(lambda: not bindings(pub, "pyorders::one"), what="binding gone")
    call(pub, "publish", {"topic": "orders", "data": 2})
    wait_until(lambda: len(inbox.of("pyorders::two")) == 2, what="the remaining subscriber called")
    time.sleep(0.3)
    assert inbox.of("pyorders::one") == [{"n": 1}], "the unsubscribed binding was called"
    assert inbox.of("pyorders::two") == [{"n": 1}, 2]

    with pytest.raises(Exception) as ei:
        call(pub, "publish", {"data": 1})
    assert "topic_not_set" in str(ei.value) or "Topic is not set" in str(ei.value), ei.value


def test_a_seven_field_cron_fires_and_bad_expressions_are_registration_errors(workers, caplog):
    w = workers("py-cron")
    inbox = Inbox()
    w.register_function("pyjobs::tick", inbox.handler("pyjobs::tick"))
    w.register_function("pyjobs::bad", inbox.handler("pyjobs::bad"))
    wait_function(w, "pyjobs::bad")
    with caplog.at_level(logging.ERROR, logger="iii"):
        w.register_trigger({"type": "cron", "function_id": "pyjobs::bad", "config": {"expression": "* * * * *"}})
        w.register_trigger({"type": "cron", "function_id": "pyjobs::bad", "config": {"expression": "not a cron at all"}})
        wait_until(
            lambda: len([r for r in caplog.records if "Invalid cron expression" in r.getMessage()]) == 2,
            what="two registration errors reported to the SDK",
        )
    assert bindings(w, "pyjobs::bad") == []

    # Still connected: the same worker registers a good job and gets its ticks.
    w.register_trigger({"type": "cron", "function_id": "pyjobs::tick", "config": {"expression": "* * * * * * *"}})
    wait_until(lambda: inbox.of("pyjobs::tick"), timeout=3, what="an every-second job fired within 3 s")
    p = inbox.of("pyjobs::tick")[0]
    assert p["trigger"] == "cron"
    assert p["job_id"] == bindings(w, "pyjobs::tick")[0]["id"]
    sched = datetime.fromisoformat(p["scheduled_time"])
    actual = datetime.fromisoformat(p["actual_time"])
    assert sched.microsecond == 0 and sched.utcoffset().total_seconds() == 0
    assert actual >= sched
    assert inbox.of("pyjobs::bad") == []
