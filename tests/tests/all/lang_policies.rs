//! The policies written in Python and JavaScript as a user runs them: the real `iii` with a
//! `policies:` entry naming `python-allowlist.wasm` (componentize-py) and `js-tenant.wasm`
//! (componentize-js), their functions called over the worker socket in each input shape.
//!
//! The components come from `plugins/policies/build-lang.sh`: `$III_LANG_POLICIES` when set
//! (tests/plugins.sh builds first), else the script is run once here (content-keyed cache).

use iii_tests::{EngineProc, RawWorker};

#[path = "../../../host/plugin-host/tests/all/lang_fixtures.rs"]
mod lang_fixtures;
use lang_fixtures::lang_policy;
use serde_json::{json, Value};

fn entry() -> String {
    let py = lang_policy("python-allowlist");
    let js = lang_policy("js-tenant");
    format!(
        "  - name: policies\n    config:\n      policies:\n\
         \x20       - id: policy::apikey\n          path: {}\n          config: {{keys: {{k-shop: {{namespaces: {{shop: ['*']}}}}}}, deny: ['svc::admin*']}}\n\
         \x20       - id: policy::tenant\n          path: {}\n          config: {{tokens: {{tok-acme: acme}}}}\n",
        py.display(),
        js.display()
    )
}

fn auth(headers: Value) -> Value {
    json!({"headers": headers, "query_params": {}, "ip_address": "127.0.0.1"})
}

fn middleware(function_id: &str, payload: Value, context: Value) -> Value {
    json!({"function_id": function_id, "payload": payload, "action": null,
        "context": context, "namespace": "default"})
}

fn http(headers: Value) -> Value {
    json!({"phase": "preHandler", "request": {"path_params": {}, "query_params": {},
        "headers": headers, "method": "GET"}, "context": {}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_policies_decide_in_the_real_engine() {
    let e = EngineProc::start(&entry());
    let mut caller = RawWorker::connect(&e.url()).await;
    let mut svc = RawWorker::connect_named(&e.url(), "svc", None).await;
    svc.register_function("svc::echo", json!({})).await;
    svc.register_function("svc::admin_reset", json!({})).await;
    svc.sync().await;

    // Python: authenticate by API key.
    let r = caller
        .call("policy::apikey", auth(json!({"x-api-key": "k-shop"})))
        .await;
    assert_eq!(r["result"], json!({"namespaces": {"shop": ["*"]}}), "{r}");
    let r = caller
        .call("policy::apikey", auth(json!({"x-api-key": "other"})))
        .await;
    assert_eq!(r["error"]["code"], "policy_denied", "{r}");
    assert_eq!(r["error"]["message"], "unknown x-api-key", "{r}");

    // Python: a denied function is answered with the policy's code, the target never runs;
    // another goes through to the worker with its payload unchanged.
    let r = caller
        .call(
            "policy::apikey",
            middleware("svc::admin_reset", json!({}), json!({})),
        )
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");
    let (r, inv) = tokio::join!(
        caller.call(
            "policy::apikey",
            middleware("svc::echo", json!({"n": 7}), json!({}))
        ),
        svc.serve_one(|d| json!({"echo": d}))
    );
    assert_eq!(inv["function_id"], "svc::echo", "{inv}");
    assert_eq!(inv["data"]["n"], 7, "{inv}");
    assert!(inv["data"].get("tenant").is_none(), "{inv}");
    assert_eq!(r["result"]["echo"]["n"], 7, "{r}");

    // Python: HTTP middleware without a key answers 401 itself.
    let r = caller.call("policy::apikey", http(json!({}))).await;
    assert_eq!(r["result"]["action"], "respond", "{r}");
    assert_eq!(r["result"]["response"]["status_code"], 401, "{r}");
    let r = caller
        .call("policy::apikey", http(json!({"x-api-key": "k-shop"})))
        .await;
    assert_eq!(r["result"], json!({"action": "continue"}), "{r}");

    // JavaScript: bearer token → tenant namespace.
    let r = caller
        .call(
            "policy::tenant",
            auth(json!({"authorization": "Bearer tok-acme"})),
        )
        .await;
    assert_eq!(
        r["result"],
        json!({"namespaces": {"acme": ["*"]}, "context": {"tenant": "acme"}}),
        "{r}"
    );
    let r = caller.call("policy::tenant", auth(json!({}))).await;
    assert_eq!(r["error"]["code"], "policy_denied", "{r}");

    // JavaScript: the caller's tenant reaches the target in the payload, over a forged one.
    let (r, inv) = tokio::join!(
        caller.call(
            "policy::tenant",
            middleware(
                "svc::echo",
                json!({"n": 1, "tenant": "globex"}),
                json!({"tenant": "acme"})
            )
        ),
        svc.serve_one(|d| json!({"got": d}))
    );
    assert_eq!(inv["data"]["tenant"], "acme", "{inv}");
    assert_eq!(inv["data"]["n"], 1, "{inv}");
    assert_eq!(r["result"]["got"]["tenant"], "acme", "{r}");
    let r = caller
        .call(
            "policy::tenant",
            middleware("svc::echo", json!({"n": 1}), json!({})),
        )
        .await;
    assert_eq!(r["error"]["code"], "NO_TENANT", "{r}");

    // Both: registration hooks allow (overriding nothing).
    for id in ["policy::apikey", "policy::tenant"] {
        let r = caller
            .call(
                id,
                json!({"function_id": "svc::new", "description": null, "metadata": null,
                    "namespace": "default", "context": {}}),
            )
            .await;
        assert_eq!(r["result"], json!({}), "{id}: {r}");
    }
}
