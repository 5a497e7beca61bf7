//! Policies (`iii:policy@0.1.0` components and Extism modules) loaded the way services load
//! them, `load::<PolicyWorld>`: the example policies' decisions, and hostile policies contained
//! call by call while the host keeps serving.

use std::sync::Arc;

use iii_adapter_api::policy::{
    AuthDecision, Connection, HttpDecision, HttpRequest, Invocation, InvocationDecision, Policy,
    RegistrationDecision, RegistrationKind,
};
use iii_plugin_host::policy::PolicyError;
use iii_plugin_host::{
    load, AdapterErrorKind, AdapterSpec, Contained, Grants, PolicyWorld, WasmKind,
};
use serde_json::{json, Value};

use crate::fixtures;
use crate::host;

fn spec(path: &std::path::Path, config: Value) -> AdapterSpec {
    let Value::Object(config) = config else {
        panic!("config must be an object")
    };
    // Generous: the default 100 ms is for production, not for a loaded test machine.
    AdapterSpec::path(path)
        .with_config(config)
        .with_grants(Grants {
            deadline_ms: Some(5_000),
            ..Grants::default()
        })
}

async fn policy(path: &std::path::Path, config: Value) -> Arc<dyn Policy> {
    load::<PolicyWorld>(&host(), &spec(path, config))
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn conn(headers: &[(&str, &str)], query: &[(&str, &str)]) -> Connection {
    Connection {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        query_params: query
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect(),
        ip_address: "127.0.0.1".into(),
    }
}

fn call(function_id: &str, context: Value) -> Invocation {
    Invocation {
        function_id: function_id.into(),
        namespace: "default".into(),
        payload: json!({"n": 1}),
        action: Value::Null,
        context,
        metadata: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_admits_listed_tokens_only() {
    let ex = fixtures::examples();
    assert_eq!(
        iii_plugin_host::wasm_kind(&std::fs::read(&ex.bearer).unwrap()),
        Some(WasmKind::Component)
    );
    let list = policy(&ex.bearer, json!({"tokens": ["t1", "t2"]})).await;
    let d = list
        .authenticate(&conn(&[("authorization", "Bearer t2")], &[]))
        .await
        .unwrap();
    assert_eq!(d, AuthDecision::Allow(json!({})));
    let d = list
        .authenticate(&conn(&[], &[("token", "t1")]))
        .await
        .unwrap();
    assert_eq!(d, AuthDecision::Allow(json!({})), "?token= works too");
    let d = list
        .authenticate(&conn(&[("authorization", "Bearer nope")], &[]))
        .await
        .unwrap();
    assert!(matches!(d, AuthDecision::Deny(why) if why.contains("allowlist")));
    let d = list.authenticate(&conn(&[], &[])).await.unwrap();
    assert!(matches!(d, AuthDecision::Deny(why) if why.contains("no bearer token")));

    let grants =
        json!({"tokens": {"admin": {"allowed_functions": ["svc::x"], "context": {"sub": "root"}}}});
    let map = policy(&ex.bearer, grants).await;
    let d = map
        .authenticate(&conn(&[("authorization", "bearer admin")], &[]))
        .await
        .unwrap();
    assert_eq!(
        d,
        AuthDecision::Allow(json!({"allowed_functions": ["svc::x"], "context": {"sub": "root"}}))
    );

    let req = |auth: Option<&str>| HttpRequest {
        method: "GET".into(),
        headers: auth
            .map(|a| vec![("authorization".to_string(), a.to_string())])
            .unwrap_or_default(),
        ..HttpRequest::default()
    };
    assert_eq!(
        list.on_http_request(&req(Some("Bearer t1"))).await.unwrap(),
        HttpDecision::Proceed
    );
    match list.on_http_request(&req(None)).await.unwrap() {
        HttpDecision::Respond(r) => {
            assert_eq!(r.status_code, 401);
            assert_eq!(r.body["error"]["code"], "UNAUTHORIZED");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    // Without `config.tokens` nothing is admitted (fail closed).
    let none = policy(&ex.bearer, json!({})).await;
    let d = none
        .authenticate(&conn(&[("authorization", "Bearer t1")], &[]))
        .await
        .unwrap();
    assert!(matches!(d, AuthDecision::Deny(why) if why.contains("config.tokens")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_prefix_keeps_registrations_inside_the_tenant() {
    let ex = fixtures::examples();
    let p = policy(&ex.tenant_prefix, json!({})).await;
    let d = p
        .authenticate(&conn(&[("x-tenant", "acme")], &[]))
        .await
        .unwrap();
    assert_eq!(
        d,
        AuthDecision::Allow(
            json!({"function_registration_prefix": "acme", "context": {"tenant": "acme"}})
        )
    );
    let d = p
        .authenticate(&conn(&[("x-tenant", "a b")], &[]))
        .await
        .unwrap();
    assert!(matches!(d, AuthDecision::Deny(_)), "{d:?}");

    let ctx = json!({"tenant": "acme"});
    let f = json!({"function_id": "orders::create", "description": null, "metadata": null, "namespace": "default", "context": ctx});
    assert_eq!(
        p.on_registration(RegistrationKind::Function, &f)
            .await
            .unwrap(),
        RegistrationDecision::Rewrite(json!({"function_id": "acme::orders::create"}))
    );
    let already = json!({"function_id": "acme::x", "context": ctx});
    assert_eq!(
        p.on_registration(RegistrationKind::Function, &already)
            .await
            .unwrap(),
        RegistrationDecision::Allow
    );
    let t = json!({"trigger_id": "t1", "trigger_type": "http", "function_id": "acme::f", "config": {}, "context": ctx});
    assert_eq!(
        p.on_registration(RegistrationKind::Trigger, &t)
            .await
            .unwrap(),
        RegistrationDecision::Rewrite(json!({"trigger_id": "acme::t1"}))
    );
    let anon = json!({"trigger_type_id": "x", "context": {}});
    assert!(matches!(
        p.on_registration(RegistrationKind::TriggerType, &anon)
            .await
            .unwrap(),
        RegistrationDecision::Deny(_)
    ));

    // With a token → tenant map, the header is not trusted.
    let p = policy(&ex.tenant_prefix, json!({"tenants": {"tok-a": "alpha"}})).await;
    let d = p
        .authenticate(&conn(
            &[("authorization", "Bearer tok-a"), ("x-tenant", "evil")],
            &[],
        ))
        .await
        .unwrap();
    assert!(matches!(d, AuthDecision::Allow(r) if r["function_registration_prefix"] == "alpha"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lets_every_invocation_proceed_unchanged() {
    let ex = fixtures::examples();
    let p = policy(&ex.audit, json!({"level": "info"})).await;
    let c = call("orders::create", json!({"sub": "ada"}));
    assert_eq!(
        p.on_invocation(&c).await.unwrap(),
        InvocationDecision::Proceed(json!({"n": 1}))
    );
    assert_eq!(
        p.on_http_request(&HttpRequest::default()).await.unwrap(),
        HttpDecision::Proceed
    );
    assert!(matches!(
        p.authenticate(&conn(&[], &[])).await.unwrap(),
        AuthDecision::Deny(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extism_rate_limiter_counts_in_host_vars() {
    let ex = fixtures::examples();
    assert_eq!(
        iii_plugin_host::wasm_kind(&std::fs::read(&ex.rate_limit).unwrap()),
        Some(WasmKind::Module)
    );
    // A window far longer than the test, so the counts cannot roll over mid-test.
    let p = policy(&ex.rate_limit, json!({"limit": 2, "window_ms": 3_600_000})).await;
    let ada = call("svc::x", json!({"sub": "ada"}));
    for _ in 0..2 {
        assert_eq!(
            p.on_invocation(&ada).await.unwrap(),
            InvocationDecision::Proceed(json!({"n": 1}))
        );
    }
    match p.on_invocation(&ada).await.unwrap() {
        InvocationDecision::Reject(r) => {
            assert_eq!(r.code, "RATE_LIMITED");
            assert!(r.message.contains("ada"), "{}", r.message);
        }
        other => panic!("the third call must be limited, got {other:?}"),
    }
    let bob = call("svc::x", json!({"sub": "bob"}));
    assert!(
        matches!(
            p.on_invocation(&bob).await.unwrap(),
            InvocationDecision::Proceed(_)
        ),
        "keys are counted apart"
    );
    let req = HttpRequest {
        headers: vec![("authorization".into(), "k".into())],
        ..HttpRequest::default()
    };
    assert_eq!(
        p.on_http_request(&req).await.unwrap(),
        HttpDecision::Proceed
    );
    assert_eq!(
        p.on_http_request(&req).await.unwrap(),
        HttpDecision::Proceed
    );
    match p.on_http_request(&req).await.unwrap() {
        HttpDecision::Respond(r) => assert_eq!(r.status_code, 429),
        other => panic!("expected 429, got {other:?}"),
    }
    // A hook the module does not export is a clear error, not a decision.
    let e = p.authenticate(&conn(&[], &[])).await.unwrap_err();
    assert_eq!(e.kind, AdapterErrorKind::Unsupported);
    assert!(
        e.message.contains("does not implement `authenticate`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policies_fail_closed_and_the_host_keeps_serving() {
    let path = fixtures::hostile_policy();
    let limited = |mode: &str| {
        let mut s = spec(path, json!({"mode": mode}));
        s.grants = Grants {
            memory_mb: Some(16),
            deadline_ms: Some(150),
            ..Grants::default()
        };
        s
    };
    let h = host();
    let spin = h.load_component_policy(&limited("loop")).unwrap();
    match spin.authenticate(&conn(&[], &[])).await.unwrap_err() {
        PolicyError::Contained {
            cause: Contained::DeadlineExceeded { deadline_ms, knob },
            ..
        } => {
            assert_eq!(deadline_ms, 150);
            assert_eq!(knob, "limits.deadline_ms");
        }
        other => panic!("expected a deadline, got {other}"),
    }
    let hog = h.load_component_policy(&limited("membomb")).unwrap();
    let e = hog.on_invocation(&call("f", json!({}))).await.unwrap_err();
    assert!(
        matches!(
            e,
            PolicyError::Contained {
                cause: Contained::MemoryLimit { limit_mb: 16, .. },
                ..
            }
        ),
        "{e}"
    );
    let trap = h.load_component_policy(&limited("trap")).unwrap();
    // More trapping calls than the host has instance slots: nothing leaks.
    for _ in 0..80 {
        let e = trap
            .on_http_request(&HttpRequest::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::Contained {
                    cause: Contained::Trap { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
    // The trait view of the same failure is an unavailable policy: the caller denies.
    let as_policy: Arc<dyn Policy> = trap.clone();
    let e = as_policy
        .on_registration(RegistrationKind::Function, &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, AdapterErrorKind::Unavailable);
    let bad = h.load_component_policy(&limited("badjson")).unwrap();
    let e = bad.authenticate(&conn(&[], &[])).await.unwrap_err();
    assert!(matches!(e, PolicyError::InvalidJson { .. }), "{e}");

    // After all that, policies still decide, concurrently, more at once than there are slots.
    // A generous deadline: 64 calls share the slots, on a loaded test machine.
    let mut ok = limited("ok");
    ok.grants.deadline_ms = Some(10_000);
    let fine = h.load_component_policy(&ok).unwrap();
    let mut calls = Vec::new();
    for _ in 0..64 {
        let p = fine.clone();
        calls.push(tokio::spawn(async move {
            p.authenticate(&conn(&[], &[])).await
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), AuthDecision::Allow(json!({})));
    }
    let again = spin.on_invocation(&call("f", json!({}))).await.unwrap_err();
    assert!(
        matches!(again, PolicyError::Contained { .. }),
        "still contained: {again}"
    );
}

/// A core module that imports WASI (`wasi_snapshot_preview1.sched_yield`) and nothing else.
fn wasi_module() -> Vec<u8> {
    let module = b"wasi_snapshot_preview1";
    let name = b"sched_yield";
    let mut entry = vec![u8::try_from(module.len()).unwrap()];
    entry.extend_from_slice(module);
    entry.push(u8::try_from(name.len()).unwrap());
    entry.extend_from_slice(name);
    entry.extend_from_slice(&[0x00, 0x00]); // a function of type 0
    let mut imports = vec![0x01];
    imports.extend_from_slice(&entry);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type 0: () -> ()
    m.push(0x02);
    m.push(u8::try_from(imports.len()).unwrap());
    m.extend_from_slice(&imports);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_that_import_wasi_or_lack_the_world_are_refused_at_load() {
    let dir = crate::tempdir();
    let wasi = dir.path().join("wasi.wasm");
    std::fs::write(&wasi, wasi_module()).unwrap();
    let e = host()
        .load_policy_spec(&AdapterSpec::path(&wasi))
        .err()
        .unwrap();
    assert!(matches!(e, PolicyError::UnsatisfiedImport { .. }), "{e}");
    assert!(e.to_string().contains("wasm32-unknown-unknown"), "{e}");

    // A component of another world (the builtin kv adapter) is not a policy.
    let kv = dir.path().join("kv.wasm");
    std::fs::write(&kv, iii_plugin_host::embedded::KV_WASM).unwrap();
    let e = host()
        .load_policy_spec(&AdapterSpec::path(&kv))
        .err()
        .unwrap();
    assert!(matches!(e, PolicyError::MissingExport { .. }), "{e}");
    assert!(e.to_string().contains("iii:policy/decisions@0.1.0"), "{e}");

    // An Extism module exporting none of the hooks (the old fixture) is not a policy either.
    let e = host()
        .load_policy_spec(&AdapterSpec::path(fixtures::policy()))
        .err()
        .unwrap();
    assert!(matches!(e, PolicyError::MissingExport { .. }), "{e}");

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let e = host()
        .load_policy_spec(&AdapterSpec::path(&junk))
        .err()
        .unwrap();
    assert!(matches!(e, PolicyError::NotAModule { .. }), "{e}");
    let e = host()
        .load_policy_spec(&AdapterSpec::path(dir.path().join("absent.wasm")))
        .err()
        .unwrap();
    assert!(matches!(e, PolicyError::MissingFile { .. }), "{e}");
    let e = host()
        .load_policy_spec(&AdapterSpec::named("kv"))
        .err()
        .unwrap();
    assert!(matches!(e, PolicyError::InvalidSpec(_)), "{e}");
    let mut granted = AdapterSpec::path(&kv);
    granted.grants.network = vec!["localhost:80".into()];
    let e = host().load_policy_spec(&granted).err().unwrap();
    assert!(matches!(e, PolicyError::InvalidSpec(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_gets_a_fresh_instance_made_ahead_or_inline() {
    let p = host()
        .load_component_policy(&spec(fixtures::hostile_policy(), json!({"mode": "count"})))
        .unwrap();
    let calls = |d: AuthDecision| match d {
        AuthDecision::Allow(v) => v["calls"].clone(),
        other => panic!("expected allow, got {other:?}"),
    };
    // Inline: nothing was made ahead of the first call.
    assert!(!p.has_ready_instance());
    assert_eq!(calls(p.authenticate(&conn(&[], &[])).await.unwrap()), 1);
    // Made ahead: the instance a call takes has served no call before.
    for i in 0..20 {
        p.prepare_next().await;
        assert!(p.has_ready_instance(), "round {i}: an instance is ready");
        assert_eq!(
            calls(p.authenticate(&conn(&[], &[])).await.unwrap()),
            1,
            "round {i}: a used instance is never reused"
        );
    }
    // Back to back, made ahead or not: still one call per instance.
    for _ in 0..20 {
        assert_eq!(calls(p.authenticate(&conn(&[], &[])).await.unwrap()), 1);
    }
}
