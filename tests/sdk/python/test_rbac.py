"""Worker RBAC and listener middleware (spec §9) through the official Python SDK.

One engine for the module with three worker listeners: a trusted one, an `rbac` one (auth
function, `expose_functions` by match, metadata and namespace, the three registration hooks)
and one with `middleware_function_id`. The auth function, the hooks and the middleware are
SDK functions of a worker on the trusted listener; every other client is an SDK worker on a
gated listener, so what is asserted is what an SDK user sees.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from iii import InitOptions, InvocationError, MiddlewareFunctionInput, TriggerAction, register_worker
from iii.iii import III
from iii.triggers import TriggerConfig, TriggerHandler
from iii_helpers.observability import ReconnectionConfig

from conftest import DEFAULT_BIN, Engine, _shutdown_worker, free_port, wait_until

NO_OTEL = {"enabled": False}


class Policy:
    """What the trusted policy worker saw: (function id, input, metadata) per call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any, Any]] = []

    def record(self, fid: str, data: Any, metadata: Any = None) -> None:
        with self.lock:
            self.calls.append((fid, data, metadata))

    def of(self, fid: str) -> list[tuple[Any, Any]]:
        with self.lock:
            return [(d, m) for f, d, m in self.calls if f == fid]

    def auth_tokens(self) -> list[str]:
        return [(d.get("query_params", {}).get("token") or [""])[0] for d, _ in self.of("pol::auth")]


def auth(inp: dict) -> Any:
    """The grants for each `?token=` (or an `Authorization` header)."""
    if inp["headers"].get("authorization") == "Bearer from-header":
        return {"allowed_functions": ["extra::one"], "context": {"via": "header"}}
    token = (inp["query_params"].get("token") or [""])[0]
    if token == "full":
        return {
            "namespaces": {"default": [], "tenant": ["t::*"]},
            "allowed_functions": ["extra::one"],
            "forbidden_functions": ["pub::secret", "engine::log::info"],
            "context": {"user": "u-full"},
        }
    if token == "bare":
        return {}
    if token == "prefix":
        return {"function_registration_prefix": "p1", "context": {"tenant": "p1"}}
    if token == "types":
        return {
            "allow_trigger_type_registration": True,
            "allowed_trigger_types": ["mine"],
            "context": {"user": "u-types"},
        }
    if token == "null":
        return None
    raise RuntimeError("unknown token")


@pytest.fixture(scope="module")
def rbac_engine():
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-rbac-") as tmp:
        eng = Engine(binary, Path(tmp))
        eng.rbac_port, eng.mw_port = free_port(), free_port()
        (eng.workdir / "config.yaml").write_text(
            f"""workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {eng.ws_port}}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {eng.rbac_port}
      rbac:
        auth_function_id: pol::auth
        expose_functions:
          - match("link::*")
          - metadata: {{ public: true }}
          - metadata: {{ tier: match("pro*") }}
          - {{ match: "svc::*", namespace: orders }}
          - match("engine::functions::*")
        on_function_registration_function_id: pol::on_fn
        on_trigger_registration_function_id: pol::on_trigger
        on_trigger_type_registration_function_id: pol::on_type
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {eng.mw_port}
      middleware_function_id: pol::mw
      rbac:
        auth_function_id: pol::auth
        expose_functions: [match("link::*"), match("engine::functions::list")]
"""
        )
        eng.start()
        wait_until(lambda: _port_ready(eng.rbac_port) and _port_ready(eng.mw_port), what="gated listeners")
        try:
            yield eng
        finally:
            eng.stop()


def _port_ready(port: int) -> bool:
    from conftest import port_open

    return port_open(port)


@pytest.fixture(scope="module")
def policy(rbac_engine):
    """The trusted worker serving the auth function, hooks, middleware and the targets, plus
    providers in namespaces `tenant` and `orders`."""
    pol = Policy()
    w = register_worker(rbac_engine.ws_url, InitOptions(worker_name="py-policy"))

    def recorded(fid, fn):  # noqa: ANN001, ANN202
        def handler(data, metadata=None):  # noqa: ANN001, ANN202
            pol.record(fid, data, metadata)
            return fn(data)

        return handler

    def on_fn(d):  # noqa: ANN001, ANN202
        fid = d["function_id"]
        if fid.startswith("drop::"):
            raise RuntimeError("no such function here")
        if fid.startswith("nullres::"):
            return None
        if fid.startswith("rename::"):
            return {"function_id": "renamed::" + fid.split("::", 1)[1], "description": "set by hook"}
        return {}

    def on_trigger(d):  # noqa: ANN001, ANN202
        mode = (d.get("config") or {}).get("k")
        if mode == "drop":
            return None
        if mode == "rewrite":
            return {"config": {"k": "rewritten"}}
        return {}

    def on_type(d):  # noqa: ANN001, ANN202
        if d["trigger_type_id"] == "bad":
            raise RuntimeError("no such type")
        if d["trigger_type_id"] == "renameme":
            return {"trigger_type_id": "renamed-type"}
        return {"description": "checked by hook"}

    def mw(d, metadata=None):  # noqa: ANN001, ANN202
        pol.record("pol::mw", d, metadata)
        mid = MiddlewareFunctionInput(**d)  # the SDK's own model of the §9.5 input
        if mid.payload.get("reject"):
            raise RuntimeError("middleware said no")
        enriched = {**mid.payload, "via_mw": True, "user": mid.context.get("user")}
        return w.trigger({"function_id": mid.function_id, "payload": enriched, "namespace": mid.namespace})

    w.register_function("pol::auth", recorded("pol::auth", auth))
    w.register_function("pol::on_fn", recorded("pol::on_fn", on_fn))
    w.register_function("pol::on_trigger", recorded("pol::on_trigger", on_trigger))
    w.register_function("pol::on_type", recorded("pol::on_type", on_type))
    w.register_function("pol::mw", mw)
    for fid, md in [
        ("link::echo", None),
        ("pub::a", {"public": True}),
        ("pub::secret", {"public": True}),
        ("pro::b", {"tier": "pro-2"}),
        ("priv::c", {"public": False}),
        ("extra::one", None),
    ]:
        w.register_function(fid, recorded(fid, lambda d, fid=fid: {"served": fid, "data": d}), metadata=md)

    tenant = register_worker(rbac_engine.ws_url, InitOptions(worker_name="py-tenant", namespace="tenant"))
    tenant.register_function("t::x", recorded("t::x", lambda d: {"served": "t::x"}))
    orders = register_worker(rbac_engine.ws_url, InitOptions(worker_name="py-orders", namespace="orders"))
    orders.register_function("svc::x", recorded("svc::x", lambda d: {"served": "svc::x"}))

    def listed() -> bool:
        fs = w.trigger({"function_id": "engine::functions::list", "payload": {}})["functions"]
        have = {(f["function_id"], f["namespace"]) for f in fs}
        return {("pol::auth", "default"), ("extra::one", "default"), ("t::x", "tenant"), ("svc::x", "orders")} <= have

    wait_until(listed, what="policy functions registered")
    pol.worker = w
    try:
        yield pol
    finally:
        for c in (orders, tenant, w):
            _shutdown_worker(c)


@pytest.fixture
def clients(rbac_engine, policy):
    """Factory: `clients(port, query="", wait=True, **InitOptions fields)` -> SDK client."""
    made: list[Any] = []

    def make(port: int, query: str = "", wait: bool = True, **opts: Any) -> III:
        opts.setdefault("otel", NO_OTEL)
        # Distinct names: the engine refuses a second live worker of the same name.
        opts.setdefault("worker_name", f"py-rbac-{len(made)}-{port}")
        url = f"ws://127.0.0.1:{port}/{query}"
        c = III(url, InitOptions(**opts))
        made.append(c)
        if wait:
            wait_until(lambda: c.worker_id, what=f"workerregistered on {url}")
        return c

    yield make
    for c in reversed(made):
        _shutdown_worker(c)


def call(c: Any, fid: str, payload: Any = None, **extra: Any) -> Any:
    return c.trigger({"function_id": fid, "payload": payload, **extra})


def forbidden(c: Any, fid: str, **extra: Any) -> InvocationError:
    with pytest.raises(InvocationError) as ei:
        call(c, fid, {}, **extra)
    err = ei.value
    assert err.code == "FORBIDDEN", err
    assert err.function_id == fid
    assert str(err) == f"FORBIDDEN: {err.message}"
    return err


def trusted_ids(policy: Policy) -> set[str]:
    return {f["function_id"] for f in call(policy.worker, "engine::functions::list", {"prefix": ""})["functions"]}


# --------------------------------------------------------------------------- auth


def test_auth_by_query_and_by_header_admits_the_sdk_worker(rbac_engine, policy, clients, monkeypatch):
    c = clients(rbac_engine.rbac_port, "?token=full&x=a%20b", headers={"X-Custom": "v1"})
    inputs = [d for d, _ in policy.of("pol::auth") if d["query_params"].get("x") == ["a%20b"]]
    assert len(inputs) == 1, "one auth call per admitted connection"
    assert inputs[-1]["query_params"] == {"token": ["full"], "x": ["a%20b"]}
    assert inputs[-1]["headers"]["x-custom"] == "v1"
    assert inputs[-1]["ip_address"] == "127.0.0.1"
    assert call(c, "extra::one", {"n": 1})["served"] == "extra::one"

    h = clients(rbac_engine.rbac_port, headers={"Authorization": "Bearer from-header"})
    assert call(h, "extra::one", {})["served"] == "extra::one"
    # A gated session, not a trusted one: what the header's grants do not cover is refused.
    forbidden(h, "priv::c")

    # The SDK's own credential: III_TOKEN becomes `Authorization: Bearer …` on the handshake.
    monkeypatch.setenv("III_TOKEN", "from-header")
    t = clients(rbac_engine.rbac_port)
    monkeypatch.delenv("III_TOKEN")
    assert call(t, "extra::one", {})["served"] == "extra::one"
    forbidden(t, "priv::c")


@pytest.mark.parametrize("token,reason", [("nope", "unknown token"), ("null", "returned null")])
def test_auth_failure_is_a_refused_connection_the_sdk_retries(rbac_engine, policy, clients, token, reason):
    before = policy.auth_tokens().count(token)
    c = clients(
        rbac_engine.rbac_port,
        f"?token={token}",
        wait=False,
        reconnection_config=ReconnectionConfig(initial_delay_ms=50, max_delay_ms=200),
    )
    # The SDK ignores the AUTH_ERROR frame and treats the close as a drop: it reconnects and
    # is refused again, and never gets a worker id.
    wait_until(lambda: policy.auth_tokens().count(token) >= before + 2, what=f"two auth attempts with {token}")
    assert c.worker_id is None
    with pytest.raises(InvocationError) as ei:
        call(c, "link::echo", {}, timeout_ms=800)
    assert ei.value.code == "TIMEOUT"
    log = rbac_engine.log()
    assert "connection refused by the listener's auth" in log and reason in log


# --------------------------------------------------------------------------- authorization


def test_calls_follow_match_metadata_namespace_and_grants(rbac_engine, policy, clients):
    c = clients(rbac_engine.rbac_port, "?token=full")
    for fid, ns in [
        ("link::echo", None),  # match("link::*")
        ("pub::a", None),  # metadata {public: true}
        ("pro::b", None),  # metadata {tier: match("pro*")}
        ("extra::one", None),  # allowed_functions
        ("t::x", "tenant"),  # namespaces.tenant grant
        ("svc::x", "orders"),  # {match: svc::*, namespace: orders}
    ]:
        extra = {"namespace": ns} if ns else {}
        assert call(c, fid, {"k": 1}, **extra)["served"] == fid, (fid, ns)

    expose, remove = "add to rbac.expose_functions", "remove from rbac.forbidden_functions"
    for fid, ns, hint in [
        ("priv::c", None, expose),
        ("missing::fn", None, expose),
        ("pub::secret", None, remove),  # forbidden wins over a metadata rule
        ("engine::log::info", None, remove),  # ... and over the infrastructure carve-out
        ("link::echo", "tenant", expose),  # rules bind to their namespace
        ("svc::x", None, expose),
    ]:
        extra = {"namespace": ns} if ns else {}
        err = forbidden(c, fid, **extra)
        assert err.message == f"function '{fid}' not allowed ({hint})"

    ids = {f["function_id"] for f in call(c, "engine::functions::list", {})["functions"]}
    assert {"link::echo", "pub::a", "pro::b", "extra::one"} <= ids, ids
    assert not ids & {"priv::c", "pub::secret", "pol::auth", "pol::mw"}, ids


def test_namespace_declaration_is_bounded_by_the_grants(rbac_engine, policy, clients):
    # The SDK's own engine::workers::register for `elsewhere` is refused; asked again, the
    # caller sees why.
    c = clients(rbac_engine.rbac_port, "?token=full", namespace="elsewhere")
    with pytest.raises(InvocationError) as ei:
        call(c, "engine::workers::register", {"name": "py-elsewhere", "namespace": "elsewhere"})
    assert ei.value.code == "FORBIDDEN"
    assert ei.value.message == "namespace 'elsewhere' not allowed for this session (permitted: default, tenant)"

    t = clients(rbac_engine.rbac_port, "?token=full", namespace="tenant", worker_name="py-in-tenant")
    t.register_function("t::mine", lambda d: {"mine": d.get("v")})
    wait_until(
        lambda: call(policy.worker, "t::mine", {"v": 3}, namespace="tenant", timeout_ms=1000) == {"mine": 3},
        what="t::mine served in namespace tenant",
    )


def test_infrastructure_functions_work_for_a_session_without_grants(rbac_engine, policy, clients):
    c = clients(rbac_engine.rbac_port, "?token=bare", worker_name="py-bare")
    # engine::workers::register (sent by the SDK on connect) succeeded: the name is listed.
    wait_until(
        lambda: any(w.get("name") == "py-bare" for w in call(policy.worker, "engine::workers::list", {})["workers"]),
        what="py-bare registered",
    )
    call(c, "engine::log::warn", {"message": "from a bare session"})
    call(c, "engine::log::info", {"message": "not forbidden for this session"})
    forbidden(c, "priv::c")

    def handler(d):  # noqa: ANN001, ANN202
        # A handler of the restricted session using the logger, as SDK users do.
        call(c, "engine::log::info", {"message": "inside a handler", "data": d})
        return {"logged": True}

    c.register_function("bare::fn", handler)
    wait_until(
        lambda: call(policy.worker, "bare::fn", {"x": 1}, timeout_ms=2000) == {"logged": True},
        what="bare::fn served",
    )


# --------------------------------------------------------------------------- registration


class Recorder(TriggerHandler):
    def __init__(self) -> None:
        self.registered: list[TriggerConfig] = []

    async def register_trigger(self, config: TriggerConfig) -> None:
        self.registered.append(config)

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        pass


def test_registration_hooks_allow_rewrite_and_drop(rbac_engine, policy, clients, caplog):
    c = clients(rbac_engine.rbac_port, "?token=types", worker_name="py-hooked")
    c.register_function("keep::me", lambda d: "kept", description="as sent", metadata={"m": 1})
    c.register_function("rename::me", lambda d: "renamed")
    c.register_function("drop::me", lambda d: "never")
    c.register_function("nullres::me", lambda d: "never")
    rec = Recorder()
    c.register_trigger_type({"id": "mine", "description": "as sent"}, rec)
    c.register_trigger_type({"id": "bad", "description": "x"}, Recorder())
    c.register_trigger_type({"id": "renameme", "description": "x"}, Recorder())
    for k in ["keep", "rewrite", "drop"]:
        c.register_trigger({"type": "mine", "function_id": "link::echo", "config": {"k": k}})
    c.register_trigger({"type": "mine", "function_id": "priv::c", "config": {"k": "denied-target"}})
    c.register_trigger({"type": "cron", "function_id": "link::echo", "config": {"expression": "* * * * * *"}})

    # The SDK worker provides `mine`: it is told of the bindings the hook kept, as rewritten.
    wait_until(lambda: len(rec.registered) >= 2, what="bindings delivered to the provider")
    wait_until(lambda: len(policy.of("pol::on_trigger")) >= 4, what="trigger hook calls")
    assert sorted(r.config["k"] for r in rec.registered) == ["keep", "rewritten"]
    assert all(r.function_id == "link::echo" for r in rec.registered)
    # The binding whose target the session may not call is refused with FORBIDDEN, which the
    # SDK reports (it has no other channel for a triggerregistrationresult).
    wait_until(
        lambda: "function 'priv::c' not allowed (add to rbac.expose_functions)" in caplog.text,
        what="the SDK logged the refused binding",
    )

    ids = trusted_ids(policy)
    assert {"keep::me", "renamed::me"} <= ids, ids
    assert not ids & {"rename::me", "drop::me", "nullres::me"}, ids
    info = call(policy.worker, "engine::functions::info", {"function_id": "renamed::me"})
    assert info["description"] == "set by hook"

    types = {t["id"]: t for t in call(policy.worker, "engine::triggers::list", {})["triggers"]}
    assert "mine" in types and "renamed-type" in types, types.keys()
    assert "bad" not in types and "renameme" not in types
    assert types["mine"]["description"] == "checked by hook"

    bound = call(policy.worker, "engine::registered-triggers::list", {"include_internal": True})["registered_triggers"]
    mine = [b for b in bound if b["trigger_type"] == "mine"]
    assert sorted(b["config"]["k"] for b in mine) == ["keep", "rewritten"], mine
    assert not [b for b in bound if b["trigger_type"] == "cron"]

    # The hooks saw the §9.6 inputs with the session's context.
    fn_in = [d for d, _ in policy.of("pol::on_fn") if d["function_id"] == "keep::me"][-1]
    assert fn_in["description"] == "as sent" and fn_in["metadata"] == {"m": 1}
    assert fn_in["namespace"] == "default" and fn_in["context"] == {"user": "u-types"}
    type_in = [d for d, _ in policy.of("pol::on_type") if d["trigger_type_id"] == "mine"][-1]
    assert type_in == {"trigger_type_id": "mine", "description": "as sent", "context": {"user": "u-types"}}
    trig_in = [d for d, _ in policy.of("pol::on_trigger") if d["config"].get("k") == "keep"][-1]
    assert trig_in["trigger_type"] == "mine" and trig_in["function_id"] == "link::echo"
    assert trig_in["context"] == {"user": "u-types"} and trig_in["trigger_id"]
    # allowed_trigger_types is checked before the hook.
    assert not [d for d, _ in policy.of("pol::on_trigger") if d["trigger_type"] == "cron"]

    # Without allow_trigger_type_registration (the default under an auth function) a type
    # never reaches the hook and is not registered.
    f = clients(rbac_engine.rbac_port, "?token=full", worker_name="py-no-types")
    f.register_trigger_type({"id": "not-allowed", "description": "x"}, Recorder())
    f.register_function("link::sync", lambda d: None)
    wait_until(lambda: "link::sync" in trusted_ids(policy), what="later registration applied")
    assert "not-allowed" not in {t["id"] for t in call(policy.worker, "engine::triggers::list", {})["triggers"]}
    assert not [d for d, _ in policy.of("pol::on_type") if d["trigger_type_id"] == "not-allowed"]


def test_function_registration_prefix(rbac_engine, policy, clients):
    c = clients(rbac_engine.rbac_port, "?token=prefix", worker_name="py-prefixed")
    seen: list = []

    def add(d):  # noqa: ANN001, ANN202
        seen.append(d)
        return {"sum": d["a"] + 1}

    ref = c.register_function("add", add)
    wait_until(lambda: "p1::add" in trusted_ids(policy), what="p1::add registered")
    assert "add" not in trusted_ids(policy)
    assert call(policy.worker, "p1::add", {"a": 1}) == {"sum": 2}
    assert seen and seen[-1]["a"] == 1
    ref.unregister()
    wait_until(lambda: "p1::add" not in trusted_ids(policy), what="p1::add unregistered")


# --------------------------------------------------------------------------- middleware


def test_listener_middleware_proxies_rewrites_and_rejects(rbac_engine, policy, clients):
    c = clients(rbac_engine.mw_port, "?token=full")
    r = call(c, "link::echo", {"n": 1}, metadata={"trace": "m1"})
    assert r["served"] == "link::echo"
    data = {k: v for k, v in r["data"].items() if k != "_caller_worker_id"}
    assert data == {"n": 1, "via_mw": True, "user": "u-full"}, r

    mw_in, mw_meta = policy.of("pol::mw")[-1]
    assert mw_in == {
        "function_id": "link::echo",
        "payload": {"n": 1},
        "action": None,
        "context": {"user": "u-full"},
        "namespace": "default",
    }
    assert mw_meta == {"trace": "m1"}

    with pytest.raises(InvocationError) as ei:
        call(c, "link::echo", {"reject": True})
    assert ei.value.code == "invocation_failed"
    assert ei.value.message == "middleware said no"

    # A void call goes through the middleware as well.
    assert call(c, "link::echo", {"mark": "v1"}, action=TriggerAction.Void()) is None
    wait_until(
        lambda: [d for d, _ in policy.of("link::echo") if d.get("mark") == "v1"],
        what="the void call proxied to link::echo",
    )
    assert [d for d, _ in policy.of("pol::mw") if d["payload"].get("mark") == "v1"][-1]["action"] == {"type": "void"}

    # RBAC comes first (the middleware never sees a refused call); engine builtins bypass it.
    n = len(policy.of("pol::mw"))
    forbidden(c, "priv::c")
    assert isinstance(call(c, "engine::functions::list", {})["functions"], list)
    assert len(policy.of("pol::mw")) == n
