"""math-python: provides math::add on the official Python SDK (PyPI iii-sdk).

`iii worker add ./workers/python` runs it with III_URL pointing at the engine; by hand:
III_URL=ws://localhost:49134 python3 src/main.py
"""

from __future__ import annotations

import os
import signal
import threading

from iii import InitOptions, register_worker


def add(data):  # noqa: ANN001
    a = (data or {}).get("a")
    b = (data or {}).get("b")
    # bool is an int in Python; true + 1 is not an addition anyone means.
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
        raise ValueError(f"math::add needs numbers a and b, got a={a!r} b={b!r}")
    return {"c": a + b}


def main() -> None:
    url = os.environ.get("III_URL", "ws://localhost:49134")
    worker = register_worker(url, InitOptions(worker_name="math-python"))
    worker.register_function("math::add", add, description="Adds a and b: {a, b} -> {c}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"math-python connected to {url}", flush=True)
    stop.wait()
    worker.shutdown()


if __name__ == "__main__":
    main()
