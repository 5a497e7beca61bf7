"""Cross-SDK: the official Python SDK (0.25.0) and Node SDK (0.22.1) call each
other through the engine, unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


from conftest import call, wait_function

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


def test_python_and_node_workers_call_each_other(engine, workers, tmp_path):
    node = shutil.which("node")
    assert node, "node is required (tests/sdk/setup.sh installs the Node SDK)"
    assert (NODE_DIR / "node_modules" / "iii-sdk").exists(), "run tests/sdk/setup.sh first"
    py = workers("py-interop")

    def fail(d):  # noqa: ANN001, ANN202
        raise KeyError("py-side failure")

    py.register_function("interop::py_upper", lambda d: d["text"].upper())
    py.register_function("interop::py_fail", fail)
    log = open(tmp_path / "node.log", "wb")
    proc = subprocess.Popen(
        [node, str(NODE_DIR / "interop_worker.mjs")],
        cwd=NODE_DIR,
        env=dict(os.environ, III_URL=engine.ws_url),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        wait_function(py, "interop::node_echo", timeout=20)
        got = call(py, "interop::node_echo", {"text": "grüße, node"}, metadata={"from": "python"})
        assert got["runtime"] == "node"
        assert got["upper"] == "GRÜSSE, NODE"
        assert got["metadata"] == {"from": "python"}
        assert got["caller"] == py.worker_id
        f = got["failure"]
        assert f["code"] == "invocation_failed"
        assert f["message"] == "invocation_failed: 'py-side failure'"
        assert "Traceback" in f["stacktrace"] and "KeyError" in f["stacktrace"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        sys.stdout.write("----- node worker log -----\n" + (tmp_path / "node.log").read_text(errors="replace"))
