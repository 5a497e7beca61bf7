"""Worker RBAC and listener middleware (spec §9) with WebAssembly policies in the places SDK
functions usually fill, through the official Python SDK (issue 11).

One engine for the module. Its `policies:` entry loads the examples of plugins/policies
(bearer, audit, tenant-prefix: Rust components; rate-limit: Extism; python-allowlist and
js-tenant: componentize-py / componentize-js) and the hostile fixture; each gated listener
names them as `auth_function_id`, `middleware_function_id` or registration hooks. The
functions called are served by an SDK worker on the trusted listener, every other client is
an SDK worker on a gated listener. The wasm comes from plugins/policies/build.sh.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from iii import InitOptions, InvocationError, register_worker
from iii.iii import III
from iii_helpers.observability import ReconnectionConfig

from conftest import DEFAULT_BIN, Engine, _shutdown_worker, free_port, http_request, policy_wasm, port_open, wait_until

NO_OTEL = {"enabled": False}
LISTENERS = ["bearer", "limited", "apikey", "jstenant", "prefix", "hooked", "extism_auth", "loop_auth", "trap_auth", "bomb_mw"]
REFUSED = "connection refused by the listener's auth"


@pytest.fixture(scope="module")
def pol_engine():
    wasm = policy_wasm()
    binary = os.environ.get("III_BIN", DEFAULT_BIN)
    with tempfile.TemporaryDirectory(prefix="iii-sdk-py-pol-") as tmp:
        eng = Engine(binary, Path(tmp))
        eng.ports = {name: free_port() for name in LISTENERS}
        p = eng.ports
        (eng.workdir / "config.yaml").write_text(
            f"""workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {eng.ws_port}}}
  - name: iii-http
    config: {{host: 127.0.0.1, port: {eng.http_port}}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {p["bearer"]}
      middleware_function_id: policy::audit
      rbac: {{auth_function_id: policy::bearer, expose_functions: [match("svc::*"), match("engine::functions::list")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {p["limited"]}
      middleware_function_id: policy::limit
      rbac: {{auth_function_id: policy::bearer, expose_functions: [match("svc::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {p["apikey"]}
      middleware_function_id: policy::apikey
      rbac: {{auth_function_id: policy::apikey, expose_functions: [match("svc::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {p["jstenant"]}
      middleware_function_id: policy::jstenant
      rbac: {{auth_function_id: policy::jstenant, expose_functions: [match("svc::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {p["prefix"]}
      rbac: {{auth_function_id: policy::prefix, expose_functions: [match("engine::functions::list"), match("acme::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {p["hooked"]}
      rbac:
        auth_function_id: policy::bearer
        on_function_registration_function_id: policy::prefix
        on_trigger_registration_function_id: policy::prefix
        expose_functions: [match("svc::*"), match("acme::*")]
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {p["extism_auth"]}, rbac: {{auth_function_id: policy::limit}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {p["loop_auth"]}, handshake_timeout_ms: 5000, rbac: {{auth_function_id: policy::loop}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {p["trap_auth"]}, rbac: {{auth_function_id: policy::trap}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {p["bomb_mw"]}, middleware_function_id: policy::bomb}}
  - name: policies
    config:
      policies:
        - id: policy::bearer
          path: "{wasm["bearer"]}"
          config: {{tokens: {{t1: {{context: {{sub: ada}}}}, t2: {{forbidden_functions: [svc::echo], context: {{sub: bob}}}}, t3: {{context: {{sub: cy}}}}, t-acme: {{context: {{tenant: acme}}}}}}}}
        - {{id: policy::audit, path: "{wasm["audit"]}"}}
        - {{id: policy::limit, path: "{wasm["rate-limit"]}", config: {{limit: 2, window_ms: 3600000}}}}
        - id: policy::apikey
          path: "{wasm["python-allowlist"]}"
          config: {{keys: {{k-shop: {{context: {{client: shop}}}}}}, deny: ["svc::admin*"]}}
        - {{id: policy::jstenant, path: "{wasm["js-tenant"]}", config: {{tokens: {{tok-acme: acme}}}}}}
        - {{id: policy::prefix, path: "{wasm["tenant-prefix"]}", config: {{tenants: {{tok-acme: acme}}}}}}
        - {{id: policy::loop, path: "{wasm["hostile"]}", config: {{mode: loop}}, limits: {{deadline_ms: 200}}}}
        - {{id: policy::trap, path: "{wasm["hostile"]}", config: {{mode: trap}}}}
        - {{id: policy::bomb, path: "{wasm["hostile"]}", config: {{mode: membomb}}, limits: {{memory_mb: 16}}}}
"""
        )
        # The sockets accept before the policies are compiled; the engine says "ready" after.
        # The interpreters' first compile (Python, JS) takes tens of seconds, later starts hit
        # the compiled-code cache.
        eng.start(timeout=180)
        wait_until(lambda: _ready(eng), timeout=180, what="the engine's ready line")
        wait_until(lambda: all(port_open(q) for q in p.values()), what="gated listeners")
        try:
            yield eng
        finally:
            eng.stop()


def _ready(eng: Engine) -> bool:
    if eng.proc is not None and eng.proc.poll() is not None:
        pytest.fail(f"engine exited with {eng.proc.returncode}:\n{eng.log()}")
    log = eng.log()
    return "iii engine" in log and " ready" in log


class Service:
    """The trusted SDK worker serving the functions the gated clients call."""

    def __init__(self, url: str) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, Any]] = []
        self.worker = register_worker(url, InitOptions(worker_name="py-pol-svc", otel=NO_OTEL))
        for fid in ["svc::echo", "svc::other", "svc::admin_reset"]:
            self.worker.register_function(fid, self._handler(fid))

    def _handler(self, fid: str):  # noqa: ANN202
        def handler(data: Any) -> Any:
            with self.lock:
                self.seen.append((fid, data))
            return {"served": fid, "data": data}

        return handler

    def payloads(self, fid: str) -> list[Any]:
        with self.lock:
            return [_strip(d) for f, d in self.seen if f == fid]


def _strip(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: v for k, v in d.items() if k != "_caller_worker_id"}
    return d


@pytest.fixture(scope="module")
def svc(pol_engine):
    s = Service(pol_engine.ws_url)
    wait_until(
        lambda: {"svc::echo", "svc::admin_reset"}
        <= {f["function_id"] for f in s.worker.trigger({"function_id": "engine::functions::list", "payload": {}})["functions"]},
        what="service functions registered",
    )
    try:
        yield s
    finally:
        _shutdown_worker(s.worker)


@pytest.fixture
def clients(pol_engine, svc):
    """Factory: `clients(listener, query="", wait=True, **InitOptions fields)` -> SDK client;
    `listener` is a key of `pol_engine.ports` or "trusted"."""
    made: list[Any] = []

    def make(listener: str, query: str = "", wait: bool = True, **opts: Any) -> III:
        opts.setdefault("otel", NO_OTEL)
        opts.setdefault("worker_name", f"py-pol-{listener}-{len(made)}")
        port = pol_engine.ws_port if listener == "trusted" else pol_engine.ports[listener]
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


def error_of(c: Any, fid: str, payload: Any = None, **extra: Any) -> InvocationError:
    with pytest.raises(InvocationError) as ei:
        call(c, fid, {} if payload is None else payload, **extra)
    return ei.value


def forbidden(c: Any, fid: str, hint: str = "add to rbac.expose_functions") -> None:
    err = error_of(c, fid)
    assert err.code == "FORBIDDEN", err
    assert err.function_id == fid
    assert err.message == f"function '{fid}' not allowed ({hint})"
    assert str(err) == f"FORBIDDEN: {err.message}"


def refusals(eng: Engine, needle: str) -> int:
    """Refused connections whose log line names `needle` (the policy's id or its reason)."""
    return sum(1 for line in eng.log().splitlines() if REFUSED in line and needle in line)


def assert_refused(eng: Engine, clients: Any, listener: str, needle: str, query: str = "", **opts: Any) -> None:
    """The policy denies: the SDK ignores the AUTH_ERROR frame, treats the close as a drop and
    reconnects (refused again), never gets a worker id, and its calls time out."""
    before = refusals(eng, needle)
    c = clients(
        listener,
        query,
        wait=False,
        reconnection_config=ReconnectionConfig(initial_delay_ms=50, max_delay_ms=200),
        **opts,
    )
    wait_until(lambda: refusals(eng, needle) >= before + 2, timeout=20, what=f"two refusals naming {needle!r}")
    assert c.worker_id is None
    err = error_of(c, "svc::echo", timeout_ms=800)
    assert err.code == "TIMEOUT", err


def bound_to(svc: Service, api_path: str) -> list[str]:
    """The targets of the http bindings on `api_path`, once there is one (a binding's hook
    runs after the function registrations sent before it)."""

    def targets() -> list[str]:
        bound = call(svc.worker, "engine::registered-triggers::list", {})["registered_triggers"]
        return [b["function_id"] for b in bound if b["trigger_type"] == "http" and b["config"].get("api_path") == api_path]

    return wait_until(targets, what=f"an http binding on {api_path}")


# --------------------------------------------------------------------------- auth


def test_component_bearer_admits_listed_tokens_and_refuses_others(pol_engine, svc, clients, monkeypatch):
    c = clients("bearer", "?token=t1")
    assert call(c, "svc::echo", {"n": 1})["served"] == "svc::echo"
    h = clients("bearer", headers={"Authorization": "Bearer t1"})
    assert call(h, "svc::other", {})["served"] == "svc::other"
    # The SDK's own credential: III_TOKEN becomes `Authorization: Bearer …`.
    monkeypatch.setenv("III_TOKEN", "t3")
    t = clients("bearer")
    monkeypatch.delenv("III_TOKEN")
    assert call(t, "svc::echo", {"n": 3})["served"] == "svc::echo"

    assert_refused(pol_engine, clients, "bearer", "policy::bearer", "?token=nope")
    assert refusals(pol_engine, "the bearer token is not on the allowlist") >= 2


def test_python_and_javascript_policies_authenticate(pol_engine, svc, clients):
    c = clients("apikey", headers={"x-api-key": "k-shop"})
    assert call(c, "svc::echo", {"n": 1})["served"] == "svc::echo"
    assert_refused(pol_engine, clients, "apikey", "unknown x-api-key", headers={"x-api-key": "k-other"})
    assert_refused(pol_engine, clients, "apikey", "missing x-api-key header")

    j = clients("jstenant", headers={"Authorization": "Bearer tok-acme"})
    assert call(j, "svc::echo", {"n": 1})["data"]["tenant"] == "acme"
    assert_refused(pol_engine, clients, "jstenant", "unknown bearer token", headers={"Authorization": "Bearer tok-x"})


def test_an_extism_module_without_authenticate_fails_closed(pol_engine, svc, clients):
    # rate-limit exports no `authenticate`: naming it as the auth function denies everyone.
    assert_refused(pol_engine, clients, "extism_auth", "does not implement `authenticate`")


# --------------------------------------------------------------------------- authorization


def test_grants_follow_the_policys_auth_result(pol_engine, svc, clients):
    ada = clients("bearer", "?token=t1")
    assert call(ada, "svc::other", {})["served"] == "svc::other"
    forbidden(ada, "other::fn")
    # t2's AuthResult carries forbidden_functions: it wins over expose_functions.
    bob = clients("bearer", "?token=t2")
    forbidden(bob, "svc::echo", "remove from rbac.forbidden_functions")
    assert call(bob, "svc::other", {})["served"] == "svc::other"
    ids = {f["function_id"] for f in call(bob, "engine::functions::list", {})["functions"]}
    assert "svc::other" in ids and "svc::echo" not in ids and "policy::bearer" not in ids, ids

    # The JavaScript policy grants the tenant's namespace: declaring another is refused.
    j = clients("jstenant", headers={"Authorization": "Bearer tok-acme"})
    err = error_of(j, "engine::workers::register", {"name": "py-globex", "namespace": "globex"})
    assert err.code == "FORBIDDEN"
    assert err.message == "namespace 'globex' not allowed for this session (permitted: acme)"
    forbidden(j, "other::fn")


# --------------------------------------------------------------------------- middleware


def test_component_middleware_proceeds_and_audits(pol_engine, svc, clients):
    c = clients("bearer", "?token=t1")
    r = call(c, "svc::echo", {"n": 7, "audit": "py"})
    assert r["served"] == "svc::echo"
    assert _strip(r["data"]) == {"n": 7, "audit": "py"}, "audit proceeds with the payload unchanged"
    assert {"n": 7, "audit": "py"} in svc.payloads("svc::echo")
    wait_until(lambda: "invoke svc::echo" in pol_engine.log() and "subject=ada" in pol_engine.log(), what="audit line")
    # RBAC runs before the middleware: a refused call never reaches it.
    forbidden(c, "other::fn")


def test_python_middleware_rejects_denied_functions(pol_engine, svc, clients):
    c = clients("apikey", headers={"x-api-key": "k-shop"})
    r = call(c, "svc::echo", {"n": 2, "tenant": "as-sent"})
    assert _strip(r["data"]) == {"n": 2, "tenant": "as-sent"}
    n = len(svc.payloads("svc::admin_reset"))
    err = error_of(c, "svc::admin_reset", {"x": 1})
    assert err.code == "FORBIDDEN", err
    assert err.message == "calls to svc::admin_reset are denied by policy (pattern svc::admin*)"
    assert len(svc.payloads("svc::admin_reset")) == n, "the target never ran"


def test_javascript_middleware_rewrites_the_tenant_and_rejects_non_objects(pol_engine, svc, clients):
    c = clients("jstenant", headers={"Authorization": "Bearer tok-acme"})
    r = call(c, "svc::echo", {"n": 1, "tenant": "globex"})
    assert _strip(r["data"]) == {"n": 1, "tenant": "acme"}, r
    assert {"n": 1, "tenant": "acme"} in svc.payloads("svc::echo"), "the handler saw the rewritten payload"
    err = error_of(c, "svc::echo", [1, 2])
    assert err.code == "INVALID_PAYLOAD", err
    assert err.message == "tenant routing needs an object payload for svc::echo"


def test_extism_rate_limiter_denies_after_its_limit_per_subject(pol_engine, svc, clients):
    ada = clients("limited", "?token=t1")
    for i in range(2):
        assert call(ada, "svc::echo", {"i": i})["served"] == "svc::echo"
    err = error_of(ada, "svc::echo", {"i": 2})
    assert err.code == "RATE_LIMITED", err
    assert err.message
    # The count is kept per subject (the bearer policy's context.sub): cy has its own window.
    cy = clients("limited", "?token=t3")
    assert call(cy, "svc::echo", {"i": 0})["served"] == "svc::echo"
    assert error_of(ada, "svc::echo", {}).code == "RATE_LIMITED"


# --------------------------------------------------------------------------- registration


def test_tenant_prefix_auth_prefixes_functions_and_trigger_targets(pol_engine, svc, clients):
    # The policy's AuthResult carries function_registration_prefix: the engine stores `add` as
    # `acme::add` and strips the prefix when it calls the SDK worker, whose handler runs.
    c = clients("prefix", headers={"Authorization": "Bearer tok-acme"}, worker_name="py-acme")
    seen: list = []

    def add(d):  # noqa: ANN001, ANN202
        seen.append(d)
        return {"sum": d["a"] + d["b"]}

    c.register_function("add", add)
    c.register_function("hello", lambda req: {"status_code": 200, "body": {"hi": "acme"}})
    c.register_trigger({"type": "http", "function_id": "hello", "config": {"api_path": "acme-hello", "http_method": "GET"}})

    def acme_ids() -> list[str]:
        fs = call(svc.worker, "engine::functions::list", {"prefix": "acme::"})["functions"]
        return sorted(f["function_id"] for f in fs)

    wait_until(lambda: acme_ids() == ["acme::add", "acme::hello"], what="acme::add and acme::hello registered")
    assert call(svc.worker, "acme::add", {"a": 2, "b": 3}) == {"sum": 5}
    assert _strip(seen[-1]) == {"a": 2, "b": 3}
    assert bound_to(svc, "acme-hello") == ["acme::hello"]
    status, _, body = http_request("GET", f"{pol_engine.http_url}/acme-hello")
    assert status == 200, body
    assert b"acme" in body

    assert_refused(pol_engine, clients, "prefix", "unknown token", headers={"Authorization": "Bearer tok-x"})


def test_tenant_prefix_as_registration_hook_rewrites_and_drops(pol_engine, svc, clients):
    # Here the bearer policy authenticates (context.tenant, no prefix) and tenant-prefix is the
    # §9.6 hook: it rewrites the registered ids into the tenant, and drops the registrations
    # of a session without one.
    c = clients("hooked", "?token=t-acme", worker_name="py-hooked-acme")
    c.register_function("hooked_fn", lambda d: d)
    c.register_trigger({"type": "http", "function_id": "hooked_fn", "config": {"api_path": "hooked", "http_method": "GET"}})
    ada = clients("hooked", "?token=t1", worker_name="py-hooked-ada")
    ada.register_function("ada_fn", lambda d: d)

    def ids() -> set[str]:
        return {f["function_id"] for f in call(svc.worker, "engine::functions::list", {})["functions"]}

    wait_until(lambda: "acme::hooked_fn" in ids(), what="acme::hooked_fn registered")
    assert "hooked_fn" not in ids()
    assert bound_to(svc, "hooked") == ["acme::hooked_fn"]
    wait_until(
        lambda: "registration dropped by the listener's access policy" in pol_engine.log()
        and "the session has no tenant" in pol_engine.log(),
        what="ada's registration dropped",
    )
    assert not {i for i in ids() if i.endswith("ada_fn")}


# --------------------------------------------------------------------------- hostile


@pytest.mark.parametrize("listener,policy_id", [("loop_auth", "policy::loop"), ("trap_auth", "policy::trap")])
def test_hostile_auth_policies_deny_and_the_engine_keeps_serving(pol_engine, svc, clients, listener, policy_id):
    trusted = clients("trusted")
    assert_refused(pol_engine, clients, listener, policy_id)
    log = "\n".join(line for line in pol_engine.log().splitlines() if REFUSED in line and policy_id in line)
    assert "did not finish within" not in log, "the policy's own limit ended it, not the handshake timeout"
    assert call(trusted, "svc::echo", {"still": "here"})["data"]["still"] == "here"


def test_a_memory_bomb_middleware_fails_the_call_and_others_go_on(pol_engine, svc, clients):
    trusted = clients("trusted")
    b = clients("bomb_mw")
    for _ in range(2):
        err = error_of(b, "svc::echo", {})
        assert err.code == "policy_failed", err
        assert err.message, err
    assert call(trusted, "svc::echo", {"after": "bomb"})["data"]["after"] == "bomb"
    assert "policy::bomb" in pol_engine.log()

