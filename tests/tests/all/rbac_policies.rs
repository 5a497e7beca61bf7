//! RBAC with WebAssembly policies in the places SDK functions usually fill (issue 11): a
//! component as the auth function and as listener middleware, an Extism rate limiter as
//! middleware, a tenant policy giving each session its prefix, and hostile policies (endless
//! loop, memory bomb, trap) as auth and middleware: each denies, and the engine keeps serving.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use iii_tests::{free_port, EngineProc, RawWorker};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::policies::{examples, guest_build};

/// The tenant-prefix example and the hostile fixture, built once.
fn more() -> &'static (PathBuf, PathBuf) {
    static M: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.parent().unwrap_or(tmp).join("wasm-plugins");
        guest_build::build(
            &root.join("plugins/Cargo.toml"),
            &["iii-policy-tenant-prefix"],
            "wasm32-wasip2",
            &dir,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // The plugin-host tests build their fixtures here too (same target dir): built once.
        let fixtures = tmp.join("plugin-fixtures");
        guest_build::build(
            &root.join("host/plugin-host/tests/fixtures/Cargo.toml"),
            &["fixture-hostile-policy"],
            "wasm32-wasip2",
            &fixtures,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (
            dir.join("wasm32-wasip2/release/iii_policy_tenant_prefix.wasm"),
            fixtures.join("wasm32-wasip2/release/fixture_hostile_policy.wasm"),
        )
    })
}

struct Ports {
    bearer: u16,
    tenant: u16,
    limited: u16,
    loop_auth: u16,
    trap_auth: u16,
    bomb_mw: u16,
}

fn engine() -> (EngineProc, Ports) {
    let (bearer, audit, limit) = examples().clone();
    let (tenant, hostile) = more().clone();
    let p = Ports {
        bearer: free_port(),
        tenant: free_port(),
        limited: free_port(),
        loop_auth: free_port(),
        trap_auth: free_port(),
        bomb_mw: free_port(),
    };
    let (b, t, l, la, ta, bm) = (
        p.bearer,
        p.tenant,
        p.limited,
        p.loop_auth,
        p.trap_auth,
        p.bomb_mw,
    );
    let (bearer, audit, limit, tenant, hostile) = (
        bearer.display().to_string(),
        audit.display().to_string(),
        limit.display().to_string(),
        tenant.display().to_string(),
        hostile.display().to_string(),
    );
    let e = EngineProc::start_with(move |ws, http| {
        format!(
            r#"workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {ws}, handshake_timeout_ms: 5000}}
  - name: http
    config: {{host: 127.0.0.1, port: {http}, middleware: [{{function_id: policy::bearer, priority: 1}}]}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {b}
      middleware_function_id: policy::audit
      rbac:
        auth_function_id: policy::bearer
        expose_functions: [match("svc::*")]
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {t}
      rbac: {{auth_function_id: policy::tenant, expose_functions: [match("engine::functions::list")]}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {l}, middleware_function_id: policy::limit}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {la}, handshake_timeout_ms: 5000, rbac: {{auth_function_id: policy::loop}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {ta}, rbac: {{auth_function_id: policy::trap}}}}
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {bm}, middleware_function_id: policy::bomb}}
  - name: policies
    config:
      policies:
        - {{id: policy::bearer, path: "{bearer}", config: {{tokens: {{t1: {{context: {{sub: ada}}}}, t2: {{forbidden_functions: [svc::echo]}}}}}}}}
        - {{id: policy::audit, path: "{audit}"}}
        - {{id: policy::limit, path: "{limit}", config: {{limit: 2, window_ms: 3600000}}}}
        - {{id: policy::tenant, path: "{tenant}", config: {{tenants: {{tok-acme: acme}}}}}}
        - {{id: policy::loop, path: "{hostile}", config: {{mode: loop}}, limits: {{deadline_ms: 200}}}}
        - {{id: policy::trap, path: "{hostile}", config: {{mode: trap}}}}
        - {{id: policy::bomb, path: "{hostile}", config: {{mode: membomb}}, limits: {{memory_mb: 16}}}}
"#
        )
    });
    (e, p)
}

/// A worker on the trusted listener serving `svc::echo` with its input.
async fn echo_service(url: &str) {
    let mut w = RawWorker::connect_named(url, "svc", None).await;
    w.register_function("svc::echo", json!({})).await;
    w.register_function("svc::other", json!({})).await;
    w.sync().await;
    tokio::spawn(async move {
        loop {
            let Some(v) = w.recv_raw(Duration::from_secs(3600)).await else {
                return;
            };
            if v["type"] == "invokefunction" {
                w.send(json!({"type": "invocationresult", "invocation_id": v["invocation_id"],
                    "function_id": v["function_id"], "result": {"echo": v["data"], "fn": v["function_id"],
                    "status_code": 200, "body": {"fn": v["function_id"]}}}))
                    .await;
            }
        }
    });
}

async fn first_frame(port: u16, query: &str) -> Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/{query}"))
        .await
        .expect("upgrade");
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no first frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_policies_authenticate_and_mediate_calls() {
    let (e, p) = engine();
    echo_service(&e.url()).await;

    // A component authenticates: a listed token gets in, anything else is AUTH_ERROR.
    let refused = first_frame(p.bearer, "?token=nope").await;
    assert_eq!(refused["error"]["code"], "AUTH_ERROR", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("policy::bearer"),
        "{refused}"
    );
    let mut w = RawWorker::connect(&format!("ws://127.0.0.1:{}/?token=t1", p.bearer)).await;
    // The audit component is the listener's middleware: it proceeds and the target answers.
    let r = w.call("svc::echo", json!({"n": 1})).await;
    assert_eq!(r["result"]["echo"]["n"], 1, "{r}");
    let r = w.call("other::fn", json!({})).await;
    assert_eq!(
        r["error"]["code"], "FORBIDDEN",
        "RBAC runs before middleware: {r}"
    );
    let log = e.wait_for_log(&["invoke svc::echo"]);
    assert!(
        log.contains("subject=ada"),
        "the audit line names the subject"
    );
    // The grants come from the policy's answer: t2's forbidden_functions win.
    let mut w2 = RawWorker::connect(&format!("ws://127.0.0.1:{}/?token=t2", p.bearer)).await;
    let r = w2.call("svc::echo", json!({})).await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");
    let r = w2.call("svc::other", json!({})).await;
    assert_eq!(r["result"]["fn"], "svc::other", "{r}");

    // The tenant component hands out a prefix: the session's `add` is stored as `acme::add`.
    let mut trusted = RawWorker::connect(&e.url()).await;
    let mut t = RawWorker::connect_with_headers(
        &format!("ws://127.0.0.1:{}/", p.tenant),
        &[("authorization", "Bearer tok-acme")],
    )
    .await;
    t.declare("acme-worker", None).await;
    t.register_function("add", json!({})).await;
    t.sync().await;
    let r = trusted
        .call("engine::functions::list", json!({"prefix": "acme::"}))
        .await;
    let ids: Vec<&str> = r["result"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["acme::add"], "{r}");
    let no_tenant = first_frame(p.tenant, "").await;
    assert_eq!(no_tenant["error"]["code"], "AUTH_ERROR", "{no_tenant}");

    // The Extism rate limiter as middleware: two calls pass, the third is RATE_LIMITED.
    let mut l = RawWorker::connect(&format!("ws://127.0.0.1:{}/", p.limited)).await;
    for _ in 0..2 {
        let r = l.call("svc::echo", json!({})).await;
        assert!(r.get("error").is_none(), "{r}");
    }
    let r = l.call("svc::echo", json!({})).await;
    assert_eq!(r["error"]["code"], "RATE_LIMITED", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policies_deny_and_the_engine_keeps_serving() {
    let (e, p) = engine();
    echo_service(&e.url()).await;
    let mut trusted = RawWorker::connect(&e.url()).await;

    // An auth policy that never returns is stopped by its deadline; one that traps is a trap.
    for (port, needle) in [(p.loop_auth, "policy::loop"), (p.trap_auth, "policy::trap")] {
        let f = first_frame(port, "").await;
        assert_eq!(f["error"]["code"], "AUTH_ERROR", "{f}");
        let msg = f["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{f}");
        assert!(
            !msg.contains("did not finish within"),
            "the policy's own limit, not the handshake timeout, ended it: {msg}"
        );
        let r = trusted.call("svc::echo", json!({"still": "here"})).await;
        assert_eq!(r["result"]["echo"]["still"], "here", "{r}");
    }

    // A memory bomb as middleware: the call fails with the policy's reason, others go on.
    let mut b = RawWorker::connect(&format!("ws://127.0.0.1:{}/", p.bomb_mw)).await;
    for _ in 0..3 {
        let r = b.call("svc::echo", json!({})).await;
        assert_eq!(r["error"]["code"], "policy_failed", "{r}");
    }
    let r = trusted.call("svc::echo", json!({"after": "bomb"})).await;
    assert_eq!(r["result"]["echo"]["after"], "bomb", "{r}");
    let log = e.log();
    assert!(
        log.contains("policy::bomb"),
        "the failure is logged with the policy's id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_policy_guards_http_routes() {
    let (e, _p) = engine();
    echo_service(&e.url()).await;
    let mut w = RawWorker::connect_named(&e.url(), "routes", None).await;
    w.send(json!({"type": "registertrigger", "id": "r1", "trigger_type": "http", "function_id": "svc::echo",
        "config": {"api_path": "hello", "http_method": "GET"}}))
        .await;
    w.sync().await;
    let port = e.http_port;
    let (status, headers, body) =
        tokio::task::spawn_blocking(move || iii_tests::http(port, "GET", "/hello", &[], b""))
            .await
            .unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        iii_tests::header(&headers, "www-authenticate"),
        Some("Bearer")
    );
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        iii_tests::http(
            port,
            "GET",
            "/hello",
            &[("authorization", "Bearer t1")],
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["fn"], "svc::echo", "{v}");
}
