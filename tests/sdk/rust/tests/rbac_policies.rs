//! Worker RBAC and listener middleware (PROTOCOL.md §9) with WebAssembly policies in the places
//! SDK functions usually fill, through the official Rust SDK (`iii-sdk` 0.25.0; issue 11).
//!
//! One engine for the file (one test, its parts run in order). Its `policies:` entry loads the
//! examples of plugins/policies (bearer, audit, tenant-prefix: Rust components; rate-limit:
//! Extism; python-allowlist and js-tenant: componentize-py / componentize-js) and the hostile
//! fixture; each gated listener names them as `auth_function_id`, `middleware_function_id` or
//! registration hooks. The functions called are served by an SDK worker on the trusted
//! listener; every other client is an SDK worker on a gated listener. The wasm comes from
//! `plugins/policies/build.sh` ([`policy_wasm`]).

#![allow(
    deprecated,
    reason = "register_trigger is deprecated in iii-sdk 0.25 in favour of observe(), which a 0.23-compatible engine does not offer; it is the wire path under test"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iii_sdk::builtin_triggers::{HttpMethod, HttpTriggerConfig};
use iii_sdk::runtime::WorkerMetadata;
use iii_sdk::trigger::IIITrigger;
use iii_sdk::{register_worker, Error, IIIClient, InitOptions, RegisterFunction};
use iii_sdk_rust_tests::*;
use iii_tests::{free_port, EngineProc};
use serde_json::{json, Value};

const REFUSED: &str = "connection refused by the listener's auth";

/// What the trusted service worker was called with: (function id, payload).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

struct Ports {
    bearer: u16,
    limited: u16,
    apikey: u16,
    jstenant: u16,
    prefix: u16,
    hooked: u16,
    extism_auth: u16,
    loop_auth: u16,
    trap_auth: u16,
    bomb_mw: u16,
}

struct Setup {
    engine: EngineProc,
    p: Ports,
    svc: IIIClient,
    seen: Seen,
    clients: Mutex<Vec<IIIClient>>,
}

fn engine(p: &Ports) -> EngineProc {
    let w = policy_wasm();
    let path = |n: &str| w[n].display().to_string();
    let (bearer, audit, limit, apikey, jstenant, prefix, hostile) = (
        path("bearer"),
        path("audit"),
        path("rate-limit"),
        path("python-allowlist"),
        path("js-tenant"),
        path("tenant-prefix"),
        path("hostile"),
    );
    let (b, l, a, j, pf, h, ea, la, ta, bm) = (
        p.bearer,
        p.limited,
        p.apikey,
        p.jstenant,
        p.prefix,
        p.hooked,
        p.extism_auth,
        p.loop_auth,
        p.trap_auth,
        p.bomb_mw,
    );
    EngineProc::start_with(move |ws, http| {
        format!(
            r#"workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {ws}}}
  - name: iii-http
    config: {{host: 127.0.0.1, port: {http}}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {b}
      middleware_function_id: policy::audit
      rbac: {{auth_function_id: policy::bearer, expose_functions: [match("svc::*"), match("engine::functions::list")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {l}
      middleware_function_id: policy::limit
      rbac: {{auth_function_id: policy::bearer, expose_functions: [match("svc::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {a}
      middleware_function_id: policy::apikey
      rbac: {{auth_function_id: policy::apikey, expose_functions: [match("svc::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {j}
      middleware_function_id: policy::jstenant
      rbac: {{auth_function_id: policy::jstenant, expose_functions: [match("svc::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {pf}
      rbac: {{auth_function_id: policy::prefix, expose_functions: [match("engine::functions::list"), match("acme::*")]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {h}
      rbac:
        auth_function_id: policy::bearer
        on_function_registration_function_id: policy::prefix
        on_trigger_registration_function_id: policy::prefix
        expose_functions: [match("svc::*"), match("acme::*")]
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {ea}, rbac: {{auth_function_id: policy::limit}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {la}, handshake_timeout_ms: 5000, rbac: {{auth_function_id: policy::loop}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {ta}, rbac: {{auth_function_id: policy::trap}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {bm}, middleware_function_id: policy::bomb}}
  - name: policies
    config:
      policies:
        - id: policy::bearer
          path: "{bearer}"
          config: {{tokens: {{t1: {{context: {{sub: ada}}}}, t2: {{forbidden_functions: [svc::echo], context: {{sub: bob}}}}, t3: {{context: {{sub: cy}}}}, t-acme: {{context: {{tenant: acme}}}}}}}}
        - {{id: policy::audit, path: "{audit}"}}
        - {{id: policy::limit, path: "{limit}", config: {{limit: 2, window_ms: 3600000}}}}
        - id: policy::apikey
          path: "{apikey}"
          config: {{keys: {{k-shop: {{context: {{client: shop}}}}}}, deny: ["svc::admin*"]}}
        - {{id: policy::jstenant, path: "{jstenant}", config: {{tokens: {{tok-acme: acme}}}}}}
        - {{id: policy::prefix, path: "{prefix}", config: {{tenants: {{tok-acme: acme}}}}}}
        - {{id: policy::loop, path: "{hostile}", config: {{mode: loop}}, limits: {{deadline_ms: 200}}}}
        - {{id: policy::trap, path: "{hostile}", config: {{mode: trap}}}}
        - {{id: policy::bomb, path: "{hostile}", config: {{mode: membomb}}, limits: {{memory_mb: 16}}}}
"#
        )
    })
}

async fn setup() -> Setup {
    let p = Ports {
        bearer: free_port(),
        limited: free_port(),
        apikey: free_port(),
        jstenant: free_port(),
        prefix: free_port(),
        hooked: free_port(),
        extism_auth: free_port(),
        loop_auth: free_port(),
        trap_auth: free_port(),
        bomb_mw: free_port(),
    };
    let engine = engine(&p);
    let seen: Seen = Arc::default();
    let svc = connect(&engine.url(), &unique_name("rs-pol-svc"));
    for fid in ["svc::echo", "svc::other", "svc::admin_reset"] {
        let (seen, id) = (seen.clone(), fid.to_string());
        svc.register_function(
            fid,
            RegisterFunction::new_async(move |d: Value| {
                let (seen, id) = (seen.clone(), id.clone());
                async move {
                    seen.lock().unwrap().push((id.clone(), d.clone()));
                    Ok(json!({"served": id, "data": d}))
                }
            }),
        );
    }
    svc.wait_until_registered(WAIT).await.expect("svc");
    wait_for_function(&svc, "svc::admin_reset").await;
    Setup {
        engine,
        p,
        svc,
        seen,
        clients: Mutex::default(),
    }
}

impl Setup {
    /// An SDK client on `port` (`ws://127.0.0.1:port/query`) with handshake `headers`.
    fn client(&self, port: u16, query: &str, headers: &[(&str, &str)]) -> IIIClient {
        let headers: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = register_worker(
            &format!("ws://127.0.0.1:{port}/{query}"),
            InitOptions {
                metadata: Some(WorkerMetadata {
                    name: unique_name("rs-pol"),
                    ..WorkerMetadata::default()
                }),
                headers: (!headers.is_empty()).then_some(headers),
                ..InitOptions::default()
            },
        );
        self.clients.lock().unwrap().push(c.clone());
        c
    }

    /// [`Setup::client`], admitted (`workerregistered` received).
    async fn admitted(&self, port: u16, query: &str, headers: &[(&str, &str)]) -> IIIClient {
        let c = self.client(port, query, headers);
        c.wait_until_registered(WAIT)
            .await
            .unwrap_or_else(|e| panic!("not admitted on {port} {query} {headers:?}: {e:?}"));
        c
    }

    fn payloads(&self, fid: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(f, _)| f == fid)
            .map(|(_, d)| {
                let mut d = d.clone();
                take_caller_id(&mut d);
                d
            })
            .collect()
    }

    /// Refused connections whose log line names `needle` (the policy's id or its reason).
    fn refusals(&self, needle: &str) -> usize {
        self.engine
            .log()
            .lines()
            .filter(|l| l.contains(REFUSED) && l.contains(needle))
            .count()
    }

    /// The policy denies: the SDK ignores the AUTH_ERROR frame, treats the close as a drop and
    /// reconnects (refused again), never gets a worker id, and its calls time out.
    async fn refused(&self, port: u16, needle: &str, query: &str, headers: &[(&str, &str)]) {
        let before = self.refusals(needle);
        let c = self.client(port, query, headers);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.refusals(needle) < before + 2 {
            assert!(
                Instant::now() < deadline,
                "no two refusals naming {needle:?}:\n{}",
                self.engine.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(matches!(
            c.wait_until_registered(Duration::from_millis(200)).await,
            Err(Error::Timeout)
        ));
        let r = call_timeout(&c, "svc::echo", json!({}), 800).await;
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    }

    fn stop(self) {
        for c in self.clients.lock().unwrap().iter() {
            stop(c);
        }
        stop(&self.svc);
        drop(self.engine);
    }
}

/// The typed remote error of `r`: (code, message), with `Display` as `CODE: message`.
fn error_of(r: Result<Value, Error>) -> (String, String) {
    let err = r.expect_err("the call was answered");
    let inv = err
        .invocation_error()
        .unwrap_or_else(|| panic!("not a remote error: {err:?}"));
    assert_eq!(inv.to_string(), format!("{}: {}", inv.code, inv.message));
    (inv.code.clone(), inv.message.clone())
}

fn assert_forbidden(r: Result<Value, Error>, fid: &str, hint: &str) {
    let (code, message) = error_of(r);
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(message, format!("function '{fid}' not allowed ({hint})"));
}

const EXPOSE: &str = "add to rbac.expose_functions";

async fn ok(c: &IIIClient, fid: &str, payload: Value) -> Value {
    call(c, fid, payload)
        .await
        .unwrap_or_else(|e| panic!("{fid}: {e:?}"))
}

// ------------------------------------------------------------------------------------- auth

async fn auth(s: &Setup) {
    // The bearer component: a listed token by query or header is admitted.
    let c = s.admitted(s.p.bearer, "?token=t1", &[]).await;
    assert_eq!(
        ok(&c, "svc::echo", json!({"n": 1})).await["served"],
        "svc::echo"
    );
    let h = s
        .admitted(s.p.bearer, "", &[("Authorization", "Bearer t1")])
        .await;
    assert_eq!(
        ok(&h, "svc::other", json!({})).await["served"],
        "svc::other"
    );
    s.refused(s.p.bearer, "policy::bearer", "?token=nope", &[])
        .await;
    assert!(s.refusals("the bearer token is not on the allowlist") >= 2);

    // Python (componentize-py) and JavaScript (componentize-js) policies.
    let c = s.admitted(s.p.apikey, "", &[("x-api-key", "k-shop")]).await;
    assert_eq!(
        ok(&c, "svc::echo", json!({"n": 1})).await["served"],
        "svc::echo"
    );
    s.refused(
        s.p.apikey,
        "unknown x-api-key",
        "",
        &[("x-api-key", "k-other")],
    )
    .await;
    s.refused(s.p.apikey, "missing x-api-key header", "", &[])
        .await;
    let j = s
        .admitted(s.p.jstenant, "", &[("Authorization", "Bearer tok-acme")])
        .await;
    assert_eq!(
        ok(&j, "svc::echo", json!({"n": 1})).await["data"]["tenant"],
        "acme"
    );
    s.refused(
        s.p.jstenant,
        "unknown bearer token",
        "",
        &[("Authorization", "Bearer tok-x")],
    )
    .await;

    // rate-limit (Extism) exports no `authenticate`: as the auth function it denies everyone.
    s.refused(
        s.p.extism_auth,
        "does not implement `authenticate`",
        "",
        &[],
    )
    .await;
}

// ---------------------------------------------------------------------------- authorization

async fn grants(s: &Setup) {
    let ada = s.admitted(s.p.bearer, "?token=t1", &[]).await;
    assert_eq!(
        ok(&ada, "svc::other", json!({})).await["served"],
        "svc::other"
    );
    assert_forbidden(
        call(&ada, "other::fn", json!({})).await,
        "other::fn",
        EXPOSE,
    );
    // t2's AuthResult carries forbidden_functions: it wins over expose_functions.
    let bob = s.admitted(s.p.bearer, "?token=t2", &[]).await;
    assert_forbidden(
        call(&bob, "svc::echo", json!({})).await,
        "svc::echo",
        "remove from rbac.forbidden_functions",
    );
    assert_eq!(
        ok(&bob, "svc::other", json!({})).await["served"],
        "svc::other"
    );
    let listed = ok(&bob, "engine::functions::list", json!({})).await;
    let ids: Vec<&str> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function_id"].as_str())
        .collect();
    assert!(ids.contains(&"svc::other"), "{ids:?}");
    assert!(
        !ids.contains(&"svc::echo") && !ids.contains(&"policy::bearer"),
        "{ids:?}"
    );

    // The JavaScript policy grants the tenant's namespace: declaring another is refused.
    let j = s
        .admitted(s.p.jstenant, "", &[("Authorization", "Bearer tok-acme")])
        .await;
    let (code, message) = error_of(
        call(
            &j,
            "engine::workers::register",
            json!({"name": "rs-globex", "namespace": "globex"}),
        )
        .await,
    );
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(
        message,
        "namespace 'globex' not allowed for this session (permitted: acme)"
    );
    assert_forbidden(call(&j, "other::fn", json!({})).await, "other::fn", EXPOSE);
}

// ------------------------------------------------------------------------------- middleware

async fn middleware(s: &Setup) {
    // audit (component): proceeds with the payload unchanged and logs the subject.
    let c = s.admitted(s.p.bearer, "?token=t1", &[]).await;
    let mut r = ok(&c, "svc::echo", json!({"n": 7, "audit": "rust"})).await;
    take_caller_id(&mut r["data"]);
    assert_eq!(r["data"], json!({"n": 7, "audit": "rust"}), "{r}");
    assert!(s
        .payloads("svc::echo")
        .contains(&json!({"n": 7, "audit": "rust"})));
    let log = s.engine.wait_for_log(&["invoke svc::echo"]);
    assert!(
        log.contains("subject=ada"),
        "the audit line names the subject"
    );
    assert_forbidden(call(&c, "other::fn", json!({})).await, "other::fn", EXPOSE);

    // python-allowlist: a denied pattern is rejected with the policy's error, the target never runs.
    let c = s.admitted(s.p.apikey, "", &[("x-api-key", "k-shop")]).await;
    let mut r = ok(&c, "svc::echo", json!({"n": 2, "tenant": "as-sent"})).await;
    take_caller_id(&mut r["data"]);
    assert_eq!(r["data"], json!({"n": 2, "tenant": "as-sent"}));
    let n = s.payloads("svc::admin_reset").len();
    let (code, message) = error_of(call(&c, "svc::admin_reset", json!({"x": 1})).await);
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(
        message,
        "calls to svc::admin_reset are denied by policy (pattern svc::admin*)"
    );
    assert_eq!(
        s.payloads("svc::admin_reset").len(),
        n,
        "the target never ran"
    );

    // js-tenant: the caller's tenant overwrites a forged one; a non-object payload is rejected.
    let c = s
        .admitted(s.p.jstenant, "", &[("Authorization", "Bearer tok-acme")])
        .await;
    let mut r = ok(&c, "svc::echo", json!({"n": 1, "tenant": "globex"})).await;
    take_caller_id(&mut r["data"]);
    assert_eq!(r["data"], json!({"n": 1, "tenant": "acme"}), "{r}");
    assert!(s
        .payloads("svc::echo")
        .contains(&json!({"n": 1, "tenant": "acme"})));
    let (code, message) = error_of(call(&c, "svc::echo", json!([1, 2])).await);
    assert_eq!(code, "INVALID_PAYLOAD");
    assert_eq!(
        message,
        "tenant routing needs an object payload for svc::echo"
    );

    // rate-limit (Extism): two calls per subject, then RATE_LIMITED; another subject goes on.
    let ada = s.admitted(s.p.limited, "?token=t1", &[]).await;
    for i in 0..2 {
        assert_eq!(
            ok(&ada, "svc::echo", json!({"i": i})).await["served"],
            "svc::echo"
        );
    }
    assert_eq!(
        error_of(call(&ada, "svc::echo", json!({"i": 2})).await).0,
        "RATE_LIMITED"
    );
    let cy = s.admitted(s.p.limited, "?token=t3", &[]).await;
    assert_eq!(
        ok(&cy, "svc::echo", json!({"i": 0})).await["served"],
        "svc::echo"
    );
    assert_eq!(
        error_of(call(&ada, "svc::echo", json!({})).await).0,
        "RATE_LIMITED"
    );
}

// ----------------------------------------------------------------------------- registration

async fn acme_ids(s: &Setup) -> Vec<String> {
    let r = ok(
        &s.svc,
        "engine::functions::list",
        json!({"prefix": "acme::"}),
    )
    .await;
    let mut ids: Vec<String> = r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// The targets of the http bindings on `api_path`, once there is one.
async fn bound_to(s: &Setup, api_path: &str) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = ok(&s.svc, "engine::registered-triggers::list", json!({})).await;
        let targets: Vec<Value> = r["registered_triggers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| {
                b["config"]["api_path"]
                    .as_str()
                    .map(|p| p.trim_start_matches('/'))
                    == Some(api_path)
            })
            .map(|b| b["function_id"].clone())
            .collect();
        if !targets.is_empty() || Instant::now() > deadline {
            return targets;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until_ids(s: &Setup, want: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = acme_ids(s).await;
        if ids == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "acme:: ids {ids:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn registration(s: &Setup) {
    // tenant-prefix as auth: its AuthResult carries function_registration_prefix, so `add` is
    // stored as `acme::add` and called as `add` on the SDK worker, whose handler runs.
    let c = s
        .admitted(s.p.prefix, "", &[("Authorization", "Bearer tok-acme")])
        .await;
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    c.register_function(
        "add",
        RegisterFunction::new_async(move |d: Value| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(d.clone());
                Ok(json!({"sum": d["a"].as_i64().unwrap_or(0) + d["b"].as_i64().unwrap_or(0)}))
            }
        }),
    );
    c.register_function(
        "hello",
        RegisterFunction::new_async(|_req: Value| async move {
            Ok(json!({"status_code": 200, "body": {"hi": "acme"}}))
        }),
    );
    c.register_trigger(
        IIITrigger::Http(HttpTriggerConfig::new("acme-hello").method(HttpMethod::Get))
            .for_function("hello"),
    )
    .expect("register_trigger");
    until_ids(s, &["acme::add", "acme::hello"]).await;
    assert_eq!(
        ok(&s.svc, "acme::add", json!({"a": 2, "b": 3})).await,
        json!({"sum": 5})
    );
    let mut last = got.lock().unwrap().last().cloned().expect("add ran");
    take_caller_id(&mut last);
    assert_eq!(last, json!({"a": 2, "b": 3}));
    assert_eq!(bound_to(s, "acme-hello").await, vec![json!("acme::hello")]);
    let (status, _, body) = http(s.engine.http_port, "GET", "/acme-hello", &[], b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"hi": "acme"})
    );
    s.refused(
        s.p.prefix,
        "unknown token",
        "",
        &[("Authorization", "Bearer tok-x")],
    )
    .await;

    // tenant-prefix as the §9.6 hooks (the bearer policy authenticates, context.tenant without
    // a prefix): ids are rewritten into the tenant; a session without a tenant has its
    // registrations dropped.
    let c = s.admitted(s.p.hooked, "?token=t-acme", &[]).await;
    c.register_function(
        "hooked_fn",
        RegisterFunction::new_async(|d: Value| async move { Ok(d) }),
    );
    c.register_trigger(
        IIITrigger::Http(HttpTriggerConfig::new("hooked").method(HttpMethod::Get))
            .for_function("hooked_fn"),
    )
    .expect("register_trigger");
    let ada = s.admitted(s.p.hooked, "?token=t1", &[]).await;
    ada.register_function(
        "ada_fn",
        RegisterFunction::new_async(|d: Value| async move { Ok(d) }),
    );
    until_ids(s, &["acme::add", "acme::hello", "acme::hooked_fn"]).await;
    assert_eq!(bound_to(s, "hooked").await, vec![json!("acme::hooked_fn")]);
    let log = s.engine.wait_for_log(&[
        "registration dropped by the listener's access policy",
        "the session has no tenant",
    ]);
    assert!(!log.is_empty());
    let all = ok(&s.svc, "engine::functions::list", json!({})).await;
    assert!(
        !all["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function_id"]
                .as_str()
                .is_some_and(|i| i.ends_with("ada_fn"))
                || f["function_id"] == "hooked_fn"),
        "{all}"
    );
}

// ---------------------------------------------------------------------------------- hostile

async fn hostile(s: &Setup) {
    let trusted = s.client(s.engine.ws_port, "", &[]);
    trusted.wait_until_registered(WAIT).await.expect("trusted");
    for (port, id) in [
        (s.p.loop_auth, "policy::loop"),
        (s.p.trap_auth, "policy::trap"),
    ] {
        s.refused(port, id, "", &[]).await;
        let log = s.engine.log();
        assert!(
            !log.lines().any(|l| l.contains(REFUSED)
                && l.contains(id)
                && l.contains("did not finish within")),
            "the policy's own limit ended it, not the handshake timeout"
        );
        let r = ok(&trusted, "svc::echo", json!({"still": "here"})).await;
        assert_eq!(r["data"]["still"], "here");
    }
    // A memory bomb as middleware: the call fails with policy_failed, others go on.
    let b = s.admitted(s.p.bomb_mw, "", &[]).await;
    for _ in 0..2 {
        assert_eq!(
            error_of(call(&b, "svc::echo", json!({})).await).0,
            "policy_failed"
        );
    }
    let r = ok(&trusted, "svc::echo", json!({"after": "bomb"})).await;
    assert_eq!(r["data"]["after"], "bomb");
    assert!(s.engine.log().contains("policy::bomb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_policies_gate_sdk_workers() {
    let s = setup().await;
    auth(&s).await;
    grants(&s).await;
    middleware(&s).await;
    registration(&s).await;
    hostile(&s).await;
    s.stop();
}
