"""Sandboxes through the official Python SDK (issue #12; workers-and-sandboxes spec §4): the
engine supervises the iii-sandbox daemon (namespace runtime) and an SDK worker drives
`sandbox::*` — a one-shot run, the create/write/exec/read/stop flow, and structured errors whose
`fix` is parsed from the error message and merged back into the request.

Needs root and the iii-sandbox, iii-init and iii-mkrootfs binaries next to $III_BIN; the python
and node presets are built once into the shared image cache (slow the first time)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from iii import InvocationError

from conftest import DEFAULT_BIN, Engine, call, wait_until

BIN = os.environ.get("III_BIN", DEFAULT_BIN)
LONG = 300_000  # ms; create may import an image on a cold cache


@pytest.fixture(scope="session")
def presets() -> None:
    tool = Path(BIN).parent / "iii-mkrootfs"
    if not tool.exists():
        pytest.fail(f"{tool} not found: build it (cargo build -p iii-oci-rootfs)")
    for name in ("python", "node"):
        r = subprocess.run([str(tool), "preset", name], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            pytest.fail(f"iii-mkrootfs preset {name} failed ({r.returncode}):\n{r.stderr}")


@pytest.fixture
def engine(presets, request, monkeypatch):  # noqa: ANN001, ANN201 - overrides conftest's engine
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-sb-") as tmp, tempfile.TemporaryDirectory(prefix="sbp-", dir="/tmp") as root:
        monkeypatch.setenv("III_SANDBOX_ROOT", root)
        eng = Engine(BIN, Path(tmp))
        with open(eng.workdir / "config.yaml", "a") as f:
            f.write("  - name: iii-sandbox\n    config:\n      runtime: namespace\n      image_allowlist: [python, node]\n")
        eng.start()
        eng.sandbox_root = root  # type: ignore[attr-defined]
        try:
            yield eng
        finally:
            eng.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                tail = eng.log()[-20000:]
                sys.stdout.write(f"\n----- engine log -----\n{tail}\n----- end engine log -----\n")


def sb(w: Any, fn: str, payload: dict[str, Any]) -> Any:
    return call(w, fn, payload, timeout_ms=LONG)


def ready(workers: Any) -> Any:
    w = workers("py-sandbox-user")
    wait_until(lambda: isinstance(sb(w, "sandbox::list", {}).get("sandboxes"), list), timeout=60, what="the sandbox daemon answers sandbox::list")
    return w


def envelope(err: InvocationError) -> dict[str, Any]:
    """The §4.5 envelope: JSON inside the handler error's message (after `handler error: `)."""
    msg = err.message
    assert "{" in msg, msg
    return json.loads(msg[msg.index("{"):])


def test_run_defaults_lang_from_the_preset(workers):
    w = ready(workers)
    r = sb(w, "sandbox::run", {"image": "python", "code": "print(2+2)"})
    assert r["stdout"] == "4\n", r
    assert (r["exit_code"], r["success"], r["timed_out"]) == (0, True, False)
    assert "sandbox_id" not in r
    r = sb(w, "sandbox::run", {"image": "node", "code": "console.log([1,2,3].map(x => x * 2).join(','))"})
    assert r["stdout"] == "2,4,6\n", r
    assert sb(w, "sandbox::list", {})["sandboxes"] == [], "run stops its sandbox"


def test_create_write_exec_read_stop(workers, engine):
    w = ready(workers)
    created = sb(w, "sandbox::create", {"image": "python", "env": {"WHO": "sdk"}, "name": "py-flow"})
    sid = created["sandbox_id"]
    uuid.UUID(sid)
    assert created["image"] == "python"
    assert os.path.isdir(os.path.join(engine.sandbox_root, sid))

    wrote = sb(w, "sandbox::fs::write", {"sandbox_id": sid, "path": "/workspace/app/main.py", "parents": True,
                                         "content": "import os, sys\nprint('hello', os.environ['WHO'], os.environ.get('EXTRA'), sys.stdin.read().strip())\n"})
    assert wrote["bytes_written"] > 0
    r = sb(w, "sandbox::exec", {"sandbox_id": sid, "argv": ["python3", "main.py"], "workdir": "/workspace/app",
                                "env": ["EXTRA=x"], "stdin": base64.b64encode(b"from-stdin\n").decode()})
    assert r["stdout"] == "hello sdk x from-stdin\n", r
    assert r["exit_code"] == 0
    r = sb(w, "sandbox::exec", {"sandbox_id": sid, "cmd": "python3 -c 'open(\"/workspace/out.txt\",\"w\").write(\"result: 42\")'"})
    assert r["exit_code"] == 0, r
    got = sb(w, "sandbox::fs::read", {"sandbox_id": sid, "path": "/workspace/out.txt"})
    assert got["body"] == "result: 42"
    assert got["size"] == 10
    assert set(got["content"]) >= {"channel_id", "access_key", "direction"}
    listed = sb(w, "sandbox::list", {})["sandboxes"]
    assert [(s["sandbox_id"], s["name"]) for s in listed] == [(sid, "py-flow")]

    assert sb(w, "sandbox::stop", {"sandbox_id": sid}) == {"sandbox_id": sid, "stopped": True}
    assert sb(w, "sandbox::list", {})["sandboxes"] == []
    assert not os.path.exists(os.path.join(engine.sandbox_root, sid)), "stop leaves no state dir"


def test_structured_errors_carry_fix(workers):
    w = ready(workers)
    sid = sb(w, "sandbox::create", {"image": "python"})["sandbox_id"]
    req = {"sandbox_id": sid, "path": "/workspace/deep/er/f.txt", "content": "x"}
    with pytest.raises(InvocationError) as ei:
        sb(w, "sandbox::fs::write", req)
    env = envelope(ei.value)
    assert (env["code"], env["type"], env["retryable"]) == ("S211", "filesystem", False), env
    assert env["message"] == "parent directory not found: /workspace/deep/er", env
    assert env["fix"] == {"parents": True}
    assert "parents: true" in env["fix_note"]
    assert env["docs_url"].endswith("#S211")
    # The documented recovery: merge `fix` into the request and resubmit.
    assert sb(w, "sandbox::fs::write", {**req, **env["fix"]})["bytes_written"] == 1

    with pytest.raises(InvocationError) as ei:
        sb(w, "sandbox::exec", {"sandbox_id": sid, "argv": ["sleep", "30"], "timeout_ms": 200})
    env = envelope(ei.value)
    assert (env["code"], env["message"], env["fix"]) == ("S200", "exec timed out after 200 ms", None), env

    ghost = str(uuid.uuid4())
    with pytest.raises(InvocationError) as ei:
        sb(w, "sandbox::exec", {"sandbox_id": ghost, "argv": ["true"]})
    env = envelope(ei.value)
    assert (env["code"], env["message"], env["fix"]) == ("S002", f"sandbox not found: {ghost}", None), env
    assert env["fix_note"] == "the sandbox is gone; call sandbox::create first"

    with pytest.raises(InvocationError) as ei:
        sb(w, "sandbox::run", {"image": "ruby", "lang": "ruby", "code": "puts 1"})
    env = envelope(ei.value)
    assert env["code"] == "S100" and env["type"] == "config", env
    assert env["message"].startswith("during sandbox::run step `create` (sandbox_id=): image 'ruby' not in catalog"), env
    assert env["fix"] == {"context": "during sandbox::run step `create`", "sandbox_id": "", "inner_code": "S100"}
    sb(w, "sandbox::stop", {"sandbox_id": sid})
