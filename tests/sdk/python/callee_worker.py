"""A callee worker run as a separate process (so a test can SIGKILL it).

Usage: III_URL=ws://... python callee_worker.py <function_id> <marker_file>

Registers <function_id>, whose handler touches <marker_file> and then blocks
forever. On SIGTERM the worker closes its connection gracefully
(`shutdown()`) and exits; SIGKILL is the abrupt variant.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from iii import InitOptions, register_worker


def main() -> None:
    function_id, marker = sys.argv[1], Path(sys.argv[2])
    worker = register_worker(None, InitOptions(worker_name=f"callee-{os.getpid()}"))
    never = threading.Event()

    def hang(data):  # noqa: ANN001
        marker.write_text("entered")
        never.wait()
        return {"unreachable": True}

    worker.register_function(function_id, hang, description="blocks forever")

    stop = threading.Event()

    def on_term(signum, frame):  # noqa: ANN001
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    stop.wait()
    # graceful close of the WebSocket while a call is in flight
    t = threading.Thread(target=worker.shutdown, daemon=True)
    t.start()
    t.join(timeout=5)
    os._exit(0)


if __name__ == "__main__":
    main()
