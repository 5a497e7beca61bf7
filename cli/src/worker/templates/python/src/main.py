"""{{worker_name}}: an iii worker on the official Python SDK (PyPI iii-sdk).

Run it against an engine: III_URL=ws://localhost:49134 python3 src/main.py
Call it: iii trigger {{worker_name}}::hello --json '{"name": "you"}'
"""

from __future__ import annotations

import os
import signal
import threading

from iii import InitOptions, register_worker

WORKER_NAME = "{{worker_name}}"


def hello(data):  # noqa: ANN001
    name = (data or {}).get("name", "world")
    return {"message": f"Hello, {name}!"}


def main() -> None:
    url = os.environ.get("III_URL", "ws://localhost:49134")
    worker = register_worker(url, InitOptions(worker_name=WORKER_NAME))
    worker.register_function(f"{WORKER_NAME}::hello", hello, description="Greets the caller")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"{WORKER_NAME} connected to {url}", flush=True)
    stop.wait()
    worker.shutdown()


if __name__ == "__main__":
    main()
