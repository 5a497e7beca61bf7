//! WebAssembly policies as a user sees them: the real `iii` with a `policies:` entry, the policy
//! functions called directly over the worker socket in each input shape (auth, middleware
//! proxying to a worker's function, HTTP middleware), and a policy that cannot load failing
//! start-up with the entry and the file named.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use iii_tests::{run_iii, EngineProc, RawWorker};
use serde_json::json;

#[path = "../../../host/plugin-host/guest_build.rs"]
pub(crate) mod guest_build;

/// The example policies of `plugins/policies`, built once (components and the Extism module).
pub(crate) fn examples() -> &'static (PathBuf, PathBuf, PathBuf) {
    static E: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    E.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = root.join("plugins/Cargo.toml");
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Where the plugin host's build builds the plugins workspace: its guest deps are reused.
        let dir = tmp.parent().unwrap_or(tmp).join("wasm-plugins");
        for (pkgs, target) in [
            (
                &["iii-policy-bearer", "iii-policy-audit"][..],
                "wasm32-wasip2",
            ),
            (&["iii-policy-rate-limit"][..], "wasm32-unknown-unknown"),
        ] {
            if let Err(e) = guest_build::build(&manifest, pkgs, target, &dir) {
                panic!("{e}");
            }
        }
        (
            dir.join("wasm32-wasip2/release/iii_policy_bearer.wasm"),
            dir.join("wasm32-wasip2/release/iii_policy_audit.wasm"),
            dir.join("wasm32-unknown-unknown/release/iii_policy_rate_limit.wasm"),
        )
    })
}

fn policies_entry() -> String {
    let (bearer, audit, limit) = examples();
    format!(
        "  - name: policies\n    config:\n      policies:\n\
         \x20       - id: policy::bearer\n          path: {}\n          config: {{tokens: {{t1: {{context: {{sub: ada}}}}}}}}\n          limits: {{deadline_ms: 5000}}\n\
         \x20       - id: policy::audit\n          path: {}\n          limits: {{memory_mb: 16, deadline_ms: 5000}}\n\
         \x20       - id: policy::limit\n          path: {}\n          config: {{limit: 1, window_ms: 3600000}}\n          limits: {{deadline_ms: 5000}}\n",
        bearer.display(),
        audit.display(),
        limit.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_functions_answer_every_input_shape() {
    let e = EngineProc::start(&policies_entry());
    let mut caller = RawWorker::connect(&e.url()).await;

    // Auth shape (§9.2).
    let r = caller
        .call(
            "policy::bearer",
            json!({"headers": {"authorization": "Bearer t1"}, "query_params": {}, "ip_address": "127.0.0.1"}),
        )
        .await;
    assert_eq!(r["result"], json!({"context": {"sub": "ada"}}), "{r}");
    let r = caller
        .call(
            "policy::bearer",
            json!({"headers": {}, "query_params": {"token": ["wrong"]}, "ip_address": "127.0.0.1"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "policy_denied", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowlist"),
        "{r}"
    );

    // Middleware shape (§9.5): the policy proxies to the target, served by another worker.
    let mut svc = RawWorker::connect_named(&e.url(), "svc", None).await;
    svc.register_function("svc::echo", json!({})).await;
    svc.sync().await;
    let call = json!({"function_id": "svc::echo", "payload": {"n": 7}, "action": null,
        "context": {"sub": "ada"}, "namespace": "default"});
    let (r, inv) = tokio::join!(
        caller.call("policy::audit", call.clone()),
        svc.serve_one(|d| json!({"echo": d}))
    );
    // The engine adds `_caller_worker_id` for a call a worker started (upstream does too).
    assert_eq!(inv["data"]["n"], 7, "the target gets the payload: {inv}");
    assert_eq!(r["result"]["echo"]["n"], 7, "its result is the answer: {r}");

    // The Extism rate limiter: one call per window, then the policy's own error code.
    let (r, _) = tokio::join!(
        caller.call("policy::limit", call.clone()),
        svc.serve_one(|_| json!("ok"))
    );
    assert_eq!(r["result"], json!("ok"), "{r}");
    let r = caller.call("policy::limit", call.clone()).await;
    assert_eq!(r["error"]["code"], "RATE_LIMITED", "{r}");
    // A hook the Extism module lacks fails closed with a clear message.
    let r = caller
        .call(
            "policy::limit",
            json!({"headers": {}, "query_params": {}, "ip_address": "127.0.0.1"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "policy_failed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not implement `authenticate`"),
        "{r}"
    );

    // HTTP middleware shape (§4.6.1).
    let http = |auth: Option<&str>| {
        let mut headers = json!({});
        if let Some(a) = auth {
            headers["authorization"] = json!(a);
        }
        json!({"phase": "preHandler", "request": {"path_params": {}, "query_params": {},
            "headers": headers, "method": "GET"}, "context": {}})
    };
    let r = caller.call("policy::bearer", http(Some("Bearer t1"))).await;
    assert_eq!(r["result"], json!({"action": "continue"}), "{r}");
    let r = caller.call("policy::bearer", http(None)).await;
    assert_eq!(r["result"]["action"], "respond", "{r}");
    assert_eq!(r["result"]["response"]["status_code"], 401, "{r}");
    assert_eq!(
        r["result"]["response"]["headers"]["www-authenticate"],
        "Bearer"
    );

    // Registration hook shape (§9.6): allow overrides nothing.
    let r = caller
        .call(
            "policy::audit",
            json!({"function_id": "svc::new", "description": null, "metadata": null,
                "namespace": "default", "context": {}}),
        )
        .await;
    assert_eq!(r["result"], json!({}), "{r}");

    // Anything else names the accepted shapes.
    let r = caller.call("policy::bearer", json!({"what": 1})).await;
    assert_eq!(r["error"]["code"], "deserialization_error", "{r}");

    // The policy functions are listed as the service's.
    let r = caller.call("engine::functions::list", json!({})).await;
    let listed = r["result"]["functions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|f| f["function_id"].as_str().or(f["id"].as_str()))
        .collect();
    for id in ["policy::bearer", "policy::audit", "policy::limit"] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    let log = e.log();
    assert!(log.contains("policy loaded"), "{log}");
}

#[test]
fn a_policy_that_cannot_load_fails_start_up_naming_entry_and_file() {
    let d = std::env::temp_dir().join(format!("iii-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("config.yaml"),
        "workers:\n  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n  - name: policies\n    config:\n      policies:\n        - {id: policy::gone, path: ./policies/gone.wasm}\n",
    )
    .unwrap();
    let (code, _, err) = run_iii(&[], Some(&d));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("policy::gone") && err.contains("gone.wasm") && err.contains("does not exist"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_the_stream_sockets_auth_function() {
    let e = EngineProc::start(&format!(
        "{}  - name: stream\n    config: {{port: 0, auth_function: policy::bearer, adapter: {{name: kv, config: {{store_method: in_memory}}}}}}\n",
        policies_entry()
    ));
    let ok = tokio_tungstenite::connect_async(format!("{}?token=t1", e.stream_url())).await;
    assert!(ok.is_ok(), "the allowlisted token is let in: {ok:?}");
    let refused = tokio_tungstenite::connect_async(format!("{}?token=nope", e.stream_url()))
        .await
        .expect_err("an unknown token is refused");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status().as_u16(), 401);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("allowlist"), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}
