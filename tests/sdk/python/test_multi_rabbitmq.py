"""Two engines on one RabbitMQ broker through the official Python SDK (issue 15): a topic
published on engine A reaches the subscriber function that only engine B's worker bound (the
broker routes topics, contract 4), and competing workers of one function on both engines get
each message once. The broker is a scratch `rabbitmq-server` on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import DEFAULT_BIN, Engine, call, free_port, wait_until

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


@pytest.fixture(scope="module")
def broker():
    if not os.path.exists(SERVER):
        pytest.fail("rabbitmq-server is not installed: run tests/setup.sh")
    d = Path(tempfile.mkdtemp(prefix="iii-py-rabbitmq-"))
    (d / "mnesia").mkdir()
    (d / "log").mkdir()
    (d / "enabled_plugins").write_text("[].\n")
    port, dist, epmd = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update(
        HOME=str(d),
        RABBITMQ_NODENAME=f"iii-py-{uuid.uuid4().hex[:10]}@localhost",
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(dist),
        ERL_EPMD_PORT=str(epmd),
        ERL_EPMD_ADDRESS="127.0.0.1",
        RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
        RABBITMQ_LOG_BASE=str(d / "log"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
        RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
        RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
    )
    out = open(d / "server.out", "wb")
    proc = subprocess.Popen([SERVER], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        wait_until(listening, timeout=120, interval=0.2, what="rabbitmq-server listening")
        yield f"amqp://guest:guest@127.0.0.1:{port}/%2f"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        subprocess.run(["epmd", "-kill"], env={**os.environ, "ERL_EPMD_PORT": str(epmd)}, capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def engines(broker):
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    made = []
    tmps = []
    for _ in range(2):
        tmp = tempfile.TemporaryDirectory(prefix="iii-sdk-py-rmq-")
        tmps.append(tmp)
        eng = Engine(binary, Path(tmp.name))
        cfg = eng.workdir / "config.yaml"
        cfg.write_text(
            cfg.read_text()
            + "  - name: queue\n    config:\n      adapter:\n        name: rabbitmq\n"
            + f'        config: {{amqp_url: "{broker}", prefetch_count: 4}}\n'
        )
        eng.start(timeout=60)
        made.append(eng)
    try:
        yield made
    finally:
        for e in made:
            e.stop()
        for t in tmps:
            t.cleanup()


def worker(address: str, name: str):
    from iii import InitOptions, register_worker

    w = register_worker(address, InitOptions(worker_name=name))
    wait_until(lambda: w.worker_id, timeout=10, what="workerregistered")
    return w


def stop(w) -> None:
    t = threading.Thread(target=w.shutdown, daemon=True)
    t.start()
    t.join(timeout=8)


def test_publish_on_one_engine_reaches_a_subscriber_bound_on_the_other(engines):
    a, b = engines
    topic = f"py-cross-{uuid.uuid4().hex[:8]}"
    got: list = []
    lock = threading.Lock()
    wb = worker(b.ws_url, "py-rmq-sub")
    wa = worker(a.ws_url, "py-rmq-pub")
    try:

        def handle(data):
            with lock:
                got.append(data["n"])

        wb.register_function("pyrmq::sink", handle)
        wb.register_trigger({"type": "durable:subscriber", "function_id": "pyrmq::sink", "config": {"topic": topic}})
        wait_until(
            lambda: call(wb, "engine::queue::topic_stats", {"topic": topic})["consumer_count"] == 1,
            what="the subscriber bound on engine B",
        )
        time.sleep(0.5)  # the binding reaches the broker asynchronously
        for n in range(20):
            assert call(wa, "iii::durable::publish", {"topic": topic, "data": {"n": n}}) is None
        wait_until(lambda: len(set(got)) == 20, timeout=30, what="all 20 published on A delivered on B")
        time.sleep(0.5)
        assert sorted(got) == list(range(20)), "each message once"
    finally:
        stop(wa)
        stop(wb)


def test_competing_workers_on_two_engines_share_the_messages(engines):
    a, b = engines
    topic = f"py-compete-{uuid.uuid4().hex[:8]}"
    got: dict[str, list] = {"a": [], "b": []}
    lock = threading.Lock()
    wa = worker(a.ws_url, "py-rmq-a")
    wb = worker(b.ws_url, "py-rmq-b")
    try:
        for name, w in (("a", wa), ("b", wb)):

            def handle(data, name=name):
                with lock:
                    got[name].append(data["n"])

            w.register_function("pyrmq::compete", handle)
            w.register_trigger({"type": "durable:subscriber", "function_id": "pyrmq::compete", "config": {"topic": topic}})
        time.sleep(1.0)
        for n in range(60):
            assert call(wa, "iii::durable::publish", {"topic": topic, "data": {"n": n}}) is None
        wait_until(lambda: len(got["a"]) + len(got["b"]) >= 60, timeout=30, what="all 60 delivered")
        time.sleep(0.5)
        both = got["a"] + got["b"]
        assert sorted(both) == list(range(60)), f"each once across engines: a={len(got['a'])} b={len(got['b'])}"
    finally:
        stop(wa)
        stop(wb)
