"""Fixtures for the black-box suite that drives a real `iii` engine with the
official Python SDK (PyPI `iii-sdk` 0.25.0).

Each test gets its own engine process on free ports, started from a temporary
working directory with a generated `config.yaml`; its stdout/stderr go to a
file that is printed when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

HERE = Path(__file__).resolve().parent
DEFAULT_BIN = "/work/main/target/debug/iii"


# --------------------------------------------------------------------------- utils


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Polls `fn` until it returns a truthy value (returned). Exceptions count as
    "not yet". This is a liveness bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def http_request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Returns (status, lowercase headers, body bytes) for any status code."""
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


_POLICY_WASM: dict[str, str] = {}


def policy_wasm() -> dict[str, str]:
    """The example policies and the hostile fixture, name -> .wasm path, built (or found
    warm) by the one shared script, plugins/policies/build.sh, once per session."""
    if not _POLICY_WASM:
        script = HERE.parents[2] / "plugins/policies/build.sh"
        r = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            pytest.fail(f"{script} failed ({r.returncode}):\n{r.stderr}")
        for line in r.stdout.splitlines():
            name, _, path = line.partition("=")
            _POLICY_WASM[name] = path
    return _POLICY_WASM


# --------------------------------------------------------------------------- engine


class Engine:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.ws_port = free_port()
        self.http_port = free_port()
        self.log_path = workdir / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        (workdir / "config.yaml").write_text(
            "workers:\n"
            "  - name: iii-worker-manager\n"
            f"    config: {{host: 127.0.0.1, port: {self.ws_port}}}\n"
            "  - name: iii-http\n"
            f"    config: {{host: 127.0.0.1, port: {self.http_port}}}\n"
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20) -> None:
        if not os.path.exists(self.binary):
            pytest.fail(f"engine binary not found: {self.binary} (set III_BIN)")
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== engine start #{self.starts} =====\n".encode())
        log.flush()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            [self.binary, "--config", "config.yaml"],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.ws_port):
            if self.proc.poll() is not None:
                pytest.fail(f"engine exited with {self.proc.returncode} before listening:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"engine did not accept TCP on {self.ws_port} within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def wait_http(self) -> None:
        wait_until(lambda: port_open(self.http_port), timeout=10, what=f"iii-http listening on {self.http_port}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        # the port must be free again before a restart
        wait_until(lambda: not port_open(self.ws_port), timeout=5, what="engine port released")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no engine log>"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def engine(request: pytest.FixtureRequest):
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-") as tmp:
        eng = Engine(binary, Path(tmp))
        eng.start()
        try:
            yield eng
        finally:
            eng.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                tail = eng.log()
                if len(tail) > 20000:
                    tail = "...<truncated>...\n" + tail[-20000:]
                sys.stdout.write(f"\n----- engine log ({eng.log_path}) -----\n{tail}\n----- end engine log -----\n")


# --------------------------------------------------------------------------- SDK workers


def _shutdown_worker(w: Any) -> None:
    t = threading.Thread(target=w.shutdown, daemon=True)
    t.start()
    t.join(timeout=8)
    if t.is_alive():
        # Never let a stuck SDK loop keep the test process alive.
        try:
            w._loop.call_soon_threadsafe(w._loop.stop)
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def workers(engine: Engine):
    """Factory: `workers(name=None, **InitOptions fields)` -> connected III client."""
    from iii import InitOptions, register_worker
    from iii.iii import III

    made: list[Any] = []

    def make(name: str | None = None, address: str | None = "", wait: bool = True, **opts: Any) -> Any:
        # address "" -> this test's engine; None -> let the SDK resolve it (III_URL)
        # wait=False -> construct the client without blocking until connected
        options = InitOptions(worker_name=name, **opts)
        if not wait:
            w = III(engine.ws_url if address == "" else address, options)
            made.append(w)
            return w
        w = register_worker(engine.ws_url if address == "" else address, options)
        made.append(w)
        # register_worker returns once the socket is open; the engine's first
        # frame (`workerregistered`, §1.2) carries the worker id.
        wait_until(lambda: w.worker_id, timeout=10, what="workerregistered (worker_id) received")
        return w

    make.created = made  # type: ignore[attr-defined]
    yield make
    for w in reversed(made):
        if getattr(w, "_test_shut_down", False):
            continue
        _shutdown_worker(w)


def shutdown(w: Any) -> None:
    """Shut a worker down inside a test (teardown will skip it)."""
    _shutdown_worker(w)
    w._test_shut_down = True


def call(w: Any, function_id: str, payload: Any = None, **extra: Any) -> Any:
    req: dict[str, Any] = {"function_id": function_id, "payload": payload}
    req.update(extra)
    return w.trigger(req)


def list_functions(w: Any) -> list[dict[str, Any]]:
    return call(w, "engine::functions::list", {})["functions"]


def function_ids(w: Any) -> set[str]:
    return {f["function_id"] for f in list_functions(w)}


def wait_function(w: Any, function_id: str, present: bool = True, timeout: float = 10.0) -> None:
    wait_until(
        lambda: (function_id in function_ids(w)) == present,
        timeout=timeout,
        what=f"{function_id} {'listed' if present else 'gone'} in engine::functions::list",
    )


def list_workers(w: Any) -> list[dict[str, Any]]:
    return call(w, "engine::workers::list", {})["workers"]


def pytest_sessionfinish(session, exitstatus):  # type: ignore[no-untyped-def]
    session.config._iii_exitstatus = int(exitstatus)


def pytest_unconfigure(config):  # type: ignore[no-untyped-def]
    # SDK event-loop threads are non-daemon; if one is stuck the interpreter
    # would hang at exit. Give them a moment, then leave hard with the status.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        if not alive:
            return
        time.sleep(0.1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(getattr(config, "_iii_exitstatus", 1))
