//! The policies written in Python (`plugins/policies/python-allowlist`, componentize-py) and
//! JavaScript (`plugins/policies/js-tenant`, componentize-js), loaded as services load any
//! policy (`load::<PolicyWorld>`), with each of their decisions checked.
//!
//! The components come from `plugins/policies/build-lang.sh`, see [`super::lang_fixtures`].

use std::sync::Arc;

use iii_adapter_api::policy::{
    AuthDecision, Connection, HttpDecision, HttpRequest, Invocation, InvocationDecision,
    RegistrationDecision, RegistrationKind,
};
use iii_plugin_host::{load, AdapterSpec, Grants, Policy, PolicyWorld};
use serde_json::{json, Value};

use super::lang_fixtures::lang_policy;

/// Loads one at a time: the first load of each component compiles it (seconds for an
/// interpreter) and fills the host's code cache, the others then deserialize it instead of
/// compiling the same code side by side.
static LOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn policy(name: &str, config: Value) -> Arc<dyn Policy> {
    policy_with(name, config, Grants::default()).await
}

async fn policy_with(name: &str, config: Value, grants: Grants) -> Arc<dyn Policy> {
    let Value::Object(config) = config else {
        panic!("config must be an object")
    };
    let spec = AdapterSpec::path(lang_policy(name))
        .with_config(config)
        .with_grants(grants);
    let _one = LOADING.lock().await;
    load::<PolicyWorld>(&super::host(), &spec)
        .await
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn conn(headers: &[(&str, &str)]) -> Connection {
    Connection {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        query_params: Vec::new(),
        ip_address: "127.0.0.1".into(),
    }
}

fn request(headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path_params: vec![("id".into(), "7".into())],
        query_params: Vec::new(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        context: Value::Null,
    }
}

fn call(function_id: &str, payload: Value, context: Value) -> Invocation {
    Invocation {
        function_id: function_id.into(),
        namespace: "default".into(),
        payload,
        action: Value::Null,
        context,
        metadata: None,
    }
}

fn allowed(d: AuthDecision) -> Value {
    match d {
        AuthDecision::Allow(v) => v,
        AuthDecision::Deny(why) => panic!("denied: {why}"),
    }
}

fn denied(d: AuthDecision) -> String {
    match d {
        AuthDecision::Deny(why) => why,
        AuthDecision::Allow(v) => panic!("allowed with {v}"),
    }
}

fn rejected(d: InvocationDecision) -> (String, String) {
    match d {
        InvocationDecision::Reject(r) => (r.code, r.message),
        InvocationDecision::Proceed(p) => panic!("proceeded with {p}"),
    }
}

fn proceeded(d: InvocationDecision) -> Value {
    match d {
        InvocationDecision::Proceed(p) => p,
        InvocationDecision::Reject(r) => panic!("rejected: {} {}", r.code, r.message),
    }
}

/// `(status, header names, body)` of a `respond` decision.
fn responded(d: HttpDecision) -> (u16, Vec<(String, String)>, Value) {
    match d {
        HttpDecision::Respond(r) => (r.status_code, r.headers, r.body),
        HttpDecision::Proceed => panic!("proceeded"),
    }
}

fn allowlist_config() -> Value {
    json!({
        "keys": {
            "k-shop": {"namespaces": {"shop": ["*"]}, "context": {"client": "shop-frontend"}},
            "k-ops": {}
        },
        "deny": ["admin::*", "*::drop", "exact::one"]
    })
}

#[tokio::test]
async fn python_allowlist_authenticates_by_api_key() {
    let p = policy("python-allowlist", allowlist_config()).await;
    assert_eq!(
        allowed(
            p.authenticate(&conn(&[("x-api-key", "k-shop")]))
                .await
                .unwrap()
        ),
        json!({"namespaces": {"shop": ["*"]}, "context": {"client": "shop-frontend"}})
    );
    assert_eq!(
        allowed(
            p.authenticate(&conn(&[("x-api-key", "k-ops")]))
                .await
                .unwrap()
        ),
        json!({})
    );
    assert_eq!(
        denied(
            p.authenticate(&conn(&[("x-api-key", "k-nope")]))
                .await
                .unwrap()
        ),
        "unknown x-api-key"
    );
    assert_eq!(
        denied(
            p.authenticate(&conn(&[("authorization", "Bearer k-shop")]))
                .await
                .unwrap()
        ),
        "missing x-api-key header"
    );

    // A list of keys grants `{}`; the header name is configurable (and matched without case).
    let p = policy(
        "python-allowlist",
        json!({"keys": ["k1", "k2"], "header": "X-Client-Key"}),
    )
    .await;
    assert_eq!(
        allowed(
            p.authenticate(&conn(&[("x-client-key", "k2")]))
                .await
                .unwrap()
        ),
        json!({})
    );
    assert_eq!(
        denied(p.authenticate(&conn(&[("x-api-key", "k2")])).await.unwrap()),
        "missing x-client-key header"
    );
}

#[tokio::test]
async fn python_allowlist_fails_closed_on_a_bad_config() {
    for (config, why) in [
        (json!({}), "config.keys is missing"),
        (json!({"keys": 5}), "config.keys must be a list"),
        (json!({"keys": ["k", 1]}), "must hold strings only"),
        (
            json!({"keys": {"k": "all"}}),
            "config.keys.k must be an AuthResult object",
        ),
    ] {
        let p = policy("python-allowlist", config.clone()).await;
        let why_got = denied(p.authenticate(&conn(&[("x-api-key", "k")])).await.unwrap());
        assert!(
            why_got.starts_with("policy misconfigured: ") && why_got.contains(why),
            "{config}: {why_got}"
        );
    }
    let p = policy("python-allowlist", json!({"keys": [], "deny": "admin::*"})).await;
    let (code, message) = rejected(
        p.on_invocation(&call("shop::buy", json!({}), Value::Null))
            .await
            .unwrap(),
    );
    assert_eq!(code, "POLICY_MISCONFIGURED");
    assert!(message.contains("config.deny must be a list"), "{message}");
}

#[tokio::test]
async fn python_allowlist_rejects_denied_functions_and_passes_the_rest_unchanged() {
    let p = policy("python-allowlist", allowlist_config()).await;
    for id in ["admin::users", "admin::", "shop::drop", "exact::one"] {
        let (code, message) = rejected(
            p.on_invocation(&call(id, json!({"x": 1}), Value::Null))
                .await
                .unwrap(),
        );
        assert_eq!(code, "FORBIDDEN", "{id}");
        assert!(message.contains(id), "{id}: {message}");
    }
    let payload = json!({"order": {"id": 7, "lines": [1, 2, 3]}, "note": "ünïcode ✓"});
    for id in ["shop::buy", "exact::one::more", "administrator::x", "drop"] {
        assert_eq!(
            proceeded(
                p.on_invocation(&call(id, payload.clone(), json!({"client": "c"})))
                    .await
                    .unwrap()
            ),
            payload,
            "{id}"
        );
    }
}

#[tokio::test]
async fn python_allowlist_allows_registrations_and_guards_http_routes() {
    let p = policy("python-allowlist", allowlist_config()).await;
    for kind in [
        RegistrationKind::Function,
        RegistrationKind::Trigger,
        RegistrationKind::TriggerType,
    ] {
        let d = p
            .on_registration(kind, &json!({"function_id": "admin::x"}))
            .await
            .unwrap();
        assert_eq!(d, RegistrationDecision::Allow, "{kind:?}");
    }

    let (status, headers, body) = responded(p.on_http_request(&request(&[])).await.unwrap());
    assert_eq!(status, 401);
    assert!(
        headers.contains(&("www-authenticate".into(), "ApiKey".into())),
        "{headers:?}"
    );
    assert_eq!(body, json!({"error": "missing x-api-key header"}));
    let (status, _, body) = responded(
        p.on_http_request(&request(&[("x-api-key", "wrong")]))
            .await
            .unwrap(),
    );
    assert_eq!((status, body), (403, json!({"error": "unknown x-api-key"})));
    assert_eq!(
        p.on_http_request(&request(&[("X-Api-Key", "k-ops")]))
            .await
            .unwrap(),
        HttpDecision::Proceed
    );
}

fn tenant_config() -> Value {
    json!({"tokens": {"tok-acme": "acme", "tok-globex": "globex"}})
}

#[tokio::test]
async fn js_tenant_maps_bearer_tokens_to_tenant_namespaces() {
    let p = policy("js-tenant", tenant_config()).await;
    assert_eq!(
        allowed(
            p.authenticate(&conn(&[("authorization", "Bearer tok-acme")]))
                .await
                .unwrap()
        ),
        json!({"namespaces": {"acme": ["*"]}, "context": {"tenant": "acme"}})
    );
    // The scheme is case-insensitive (RFC 7235), the token is not.
    assert_eq!(
        allowed(
            p.authenticate(&conn(&[("authorization", "bearer tok-globex")]))
                .await
                .unwrap()
        )["namespaces"],
        json!({"globex": ["*"]})
    );
    for (headers, why) in [
        (
            vec![("authorization", "Bearer TOK-ACME")],
            "unknown bearer token",
        ),
        (
            vec![("authorization", "Basic dTpw")],
            "missing bearer token",
        ),
        (vec![("x-api-key", "tok-acme")], "missing bearer token"),
        (vec![], "missing bearer token"),
    ] {
        assert_eq!(
            denied(p.authenticate(&conn(&headers)).await.unwrap()),
            why,
            "{headers:?}"
        );
    }

    for (config, why) in [
        (json!({}), "config.tokens is missing"),
        (
            json!({"tokens": ["tok-acme"]}),
            "config.tokens must be a map",
        ),
        (
            json!({"tokens": {"tok-acme": 7}}),
            "every tenant must be a non-empty string",
        ),
    ] {
        let p = policy("js-tenant", config.clone()).await;
        let got = denied(
            p.authenticate(&conn(&[("authorization", "Bearer tok-acme")]))
                .await
                .unwrap(),
        );
        assert!(
            got.starts_with("policy misconfigured: ") && got.contains(why),
            "{config}: {got}"
        );
    }
}

#[tokio::test]
async fn js_tenant_writes_the_callers_tenant_into_the_payload() {
    let p = policy("js-tenant", tenant_config()).await;
    let acme = json!({"tenant": "acme", "user": "u1"});
    assert_eq!(
        proceeded(
            p.on_invocation(&call(
                "acme::orders",
                json!({"n": 1, "items": [{"sku": "a"}]}),
                acme.clone()
            ))
            .await
            .unwrap()
        ),
        json!({"n": 1, "items": [{"sku": "a"}], "tenant": "acme"})
    );
    // A caller cannot pose as another tenant through the payload.
    assert_eq!(
        proceeded(
            p.on_invocation(&call(
                "acme::orders",
                json!({"tenant": "globex"}),
                acme.clone()
            ))
            .await
            .unwrap()
        ),
        json!({"tenant": "acme"})
    );
    for (payload, context, code) in [
        (json!({}), Value::Null, "NO_TENANT"),
        (json!({}), json!({"tenant": ""}), "NO_TENANT"),
        (json!({}), json!({"user": "u1"}), "NO_TENANT"),
        (json!([1, 2]), acme.clone(), "INVALID_PAYLOAD"),
        (Value::Null, acme.clone(), "INVALID_PAYLOAD"),
        (json!("text"), acme.clone(), "INVALID_PAYLOAD"),
    ] {
        let (got, message) = rejected(
            p.on_invocation(&call("acme::orders", payload.clone(), context.clone()))
                .await
                .unwrap(),
        );
        assert_eq!(got, code, "{payload} {context}");
        assert!(message.contains("acme::orders"), "{message}");
    }
}

#[tokio::test]
async fn js_tenant_allows_registrations_and_guards_http_routes() {
    let p = policy("js-tenant", tenant_config()).await;
    for kind in [
        RegistrationKind::Function,
        RegistrationKind::Trigger,
        RegistrationKind::TriggerType,
    ] {
        assert_eq!(
            p.on_registration(kind, &json!({"trigger_type_id": "t"}))
                .await
                .unwrap(),
            RegistrationDecision::Allow
        );
    }
    let (status, headers, body) = responded(
        p.on_http_request(&request(&[("authorization", "Bearer nope")]))
            .await
            .unwrap(),
    );
    assert_eq!(status, 401);
    assert!(
        headers.contains(&("www-authenticate".into(), "Bearer".into())),
        "{headers:?}"
    );
    assert_eq!(body, json!({"error": "unknown bearer token"}));
    assert_eq!(
        p.on_http_request(&request(&[("authorization", "Bearer tok-globex")]))
            .await
            .unwrap(),
        HttpDecision::Proceed
    );
}

/// Per-call instances run side by side: many concurrent calls of each language's policy all
/// decide, each on its own input. The deadline is wall time from the call's start, slot wait
/// included; 48 interpreter calls at once on a loaded 2-core machine need more than the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_instance() {
    let grants = || Grants {
        deadline_ms: Some(10_000),
        ..Grants::default()
    };
    let py = policy_with("python-allowlist", allowlist_config(), grants()).await;
    let js = policy_with("js-tenant", tenant_config(), grants()).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (py, js) = (py.clone(), js.clone());
        tasks.push(tokio::spawn(async move {
            let payload = json!({"i": i});
            let got = proceeded(
                py.on_invocation(&call("shop::buy", payload.clone(), Value::Null))
                    .await
                    .unwrap(),
            );
            assert_eq!(got, payload);
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            let got = proceeded(
                js.on_invocation(&call("x::y", payload, json!({"tenant": tenant})))
                    .await
                    .unwrap(),
            );
            assert_eq!(got, json!({"i": i, "tenant": tenant}));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}
