"""Worker-provided (custom) trigger types through the official Python SDK
(spec §2.3 registertriggertype/registertrigger/unregistertrigger, §4.3, §4.4)."""

from __future__ import annotations

import threading
import warnings

from iii.triggers import TriggerConfig, TriggerHandler

from conftest import shutdown, wait_function, wait_until

warnings.filterwarnings("ignore", category=DeprecationWarning)


class RecordingHandler(TriggerHandler):
    def __init__(self) -> None:
        self.registered: list[TriggerConfig] = []
        self.unregistered: list[TriggerConfig] = []

    async def register_trigger(self, config: TriggerConfig) -> None:
        self.registered.append(config)

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        self.unregistered.append(config)


def test_custom_trigger_type_binding_fire_and_unregister(workers):
    provider = workers("py-provider")
    handler = RecordingHandler()
    provider.register_trigger_type({"id": "pytest-hook", "description": "test webhook type"}, handler)

    consumer = workers("py-consumer")
    fired: list = []
    done = threading.Event()

    def on_hook(data, metadata=None):  # noqa: ANN001, ANN202
        fired.append((data, metadata))
        done.set()
        return {"handled": data.get("event")}

    consumer.register_function("pyhook::on_hook", on_hook)
    wait_function(provider, "pyhook::on_hook")
    trig = consumer.register_trigger(
        {"type": "pytest-hook", "function_id": "pyhook::on_hook", "config": {"url": "/incoming", "secret": "s3"}, "metadata": {"source": "unit", "n": 1}}
    )

    # the engine forwards the binding to the provider (registertrigger E→W)
    wait_until(lambda: handler.registered, what="provider received the binding")
    cfg = handler.registered[0]
    assert cfg.function_id == "pyhook::on_hook"
    assert cfg.config == {"url": "/incoming", "secret": "s3"}
    assert cfg.metadata == {"source": "unit", "n": 1}
    assert isinstance(cfg.id, str) and len(cfg.id) == 36

    # the provider fires the trigger itself, passing the binding metadata along
    result = provider.trigger({"function_id": cfg.function_id, "payload": {"event": "push"}, "metadata": cfg.metadata})
    assert result == {"handled": "push"}
    assert done.wait(5)
    data, metadata = fired[0]
    assert data["event"] == "push"
    assert metadata == {"source": "unit", "n": 1}

    # unregistering the binding tells the provider (unregistertrigger E→W)
    trig.unregister()
    wait_until(lambda: handler.unregistered, what="provider told about unregister")
    assert handler.unregistered[0].id == cfg.id


def test_binding_owner_disconnect_unregisters_at_provider(workers):
    provider = workers("py-provider2")
    handler = RecordingHandler()
    provider.register_trigger_type({"id": "pytest-owner", "description": "owner gone"}, handler)
    consumer = workers("py-consumer2")
    consumer.register_function("pyowner::fn", lambda d: None)
    consumer.register_trigger({"type": "pytest-owner", "function_id": "pyowner::fn", "config": {"k": 1}})
    wait_until(lambda: handler.registered, what="provider received the binding")
    tid = handler.registered[0].id
    shutdown(consumer)
    wait_until(lambda: [c for c in handler.unregistered if c.id == tid], what="provider told the binding is gone")


def test_binding_parked_until_provider_registers(workers):
    # §4.3: a binding whose type does not exist yet is parked without error and
    # delivered once a provider registers the type.
    consumer = workers("py-early-consumer")
    consumer.register_function("pypark::fn", lambda d: "ok")
    consumer.register_trigger({"type": "pytest-late", "function_id": "pypark::fn", "config": {"late": True}})
    wait_function(consumer, "pypark::fn")

    provider = workers("py-late-provider")
    handler = RecordingHandler()
    provider.register_trigger_type({"id": "pytest-late", "description": "late provider"}, handler)
    wait_until(lambda: handler.registered, what="parked binding delivered to the new provider")
    assert handler.registered[0].function_id == "pypark::fn"
    assert handler.registered[0].config == {"late": True}


def test_provider_reregistration_replays_bindings(workers):
    # §4.3: when a provider goes and another registers the type, existing
    # bindings are delivered to the new provider.
    p1 = workers("py-prov-1")
    h1 = RecordingHandler()
    p1.register_trigger_type({"id": "pytest-replay", "description": "replayed"}, h1)
    consumer = workers("py-replay-consumer")
    consumer.register_function("pyreplay::fn", lambda d: "ok")
    consumer.register_trigger({"type": "pytest-replay", "function_id": "pyreplay::fn", "config": {"r": 1}})
    wait_until(lambda: h1.registered, what="first provider got the binding")
    tid = h1.registered[0].id
    shutdown(p1)

    p2 = workers("py-prov-2")
    h2 = RecordingHandler()
    p2.register_trigger_type({"id": "pytest-replay", "description": "replayed"}, h2)
    wait_until(lambda: h2.registered, what="second provider got the binding replayed")
    assert h2.registered[0].id == tid
    assert h2.registered[0].config == {"r": 1}
