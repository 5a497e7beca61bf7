//! RBAC decisions against a real core with in-process functions.

use super::*;
use iii_core::{FunctionSpec, Registrar};

fn reader() -> EntryReader<'static> {
    EntryReader {
        path: "config.yaml",
    }
}

fn policy(yaml: &str) -> Result<Option<ListenerPolicy>, ConfigError> {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test yaml");
    let m = v.as_mapping().expect("a mapping").clone();
    ListenerPolicy::from_config(&reader(), &m, "workers[0](iii-worker-manager).config")
}

fn core_with(functions: &[(&str, Value)]) -> Core {
    let core = Core::new(iii_core::CoreSettings::default());
    let mut reg = Registrar::new(&core, "test");
    for (id, md) in functions {
        reg.function(
            FunctionSpec::raw(*id, "t", |_c, _x, v| async move { Ok(v) }).metadata(md.clone()),
        );
    }
    core
}

fn session(p: ListenerPolicy, grants: Grants) -> Session {
    Session {
        policy: Arc::new(p),
        grants,
    }
}

#[test]
fn no_rbac_and_no_middleware_means_no_gate() {
    assert_eq!(policy("{port: 1}").unwrap(), None);
    let p = policy("{middleware_function_id: auth::mw}")
        .unwrap()
        .unwrap();
    assert!(p.rbac.is_none());
    assert_eq!(p.middleware_function_id.as_deref(), Some("auth::mw"));
}

#[test]
fn upstream_rbac_block_parses() {
    let p = policy(
        r#"
rbac:
  auth_function_id: auth::browser
  expose_functions:
    - match("link::create")
    - { match: "svc::*", namespace: orders }
    - metadata: { public: true }
    - metadata: { tier: match("pro*") }
  on_function_registration_function_id: auth::on_fn
  on_trigger_registration_function_id: auth::on_trigger
  on_trigger_type_registration_function_id: auth::on_type
"#,
    )
    .unwrap()
    .unwrap();
    let r = p.rbac.unwrap();
    assert_eq!(r.auth_function_id.as_deref(), Some("auth::browser"));
    assert_eq!(r.expose_functions.len(), 4);
    assert!(r.expose_functions[1].exposes("svc::a", "orders", None));
    assert!(r.expose_functions[3].exposes("x", "default", Some(&json!({"tier": "pro"}))));
    assert_eq!(
        r.on_trigger_type_registration.as_deref(),
        Some("auth::on_type")
    );
}

#[test]
fn bad_rules_name_their_key() {
    let e = policy("rbac: {expose_functions: [{match: a, metadata: {x: 1}}]}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expose_functions[0]") && e.contains("exactly one"),
        "{e}"
    );
    let e = policy("rbac: {expose_functions: [{pattern: a}]}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expose_functions[0].pattern"), "{e}");
    let e = policy("rbac: {auth_fn: x}").unwrap_err().to_string();
    assert!(e.contains("rbac.auth_fn"), "{e}");
    let e = policy("rbac: {expose_functions: 3}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("rbac.expose_functions"), "{e}");
}

#[test]
fn auth_results_default_and_refuse_what_is_unusable() {
    let g = Grants::from_auth_result(&json!({})).unwrap();
    assert!(!g.allow_trigger_type_registration && g.allow_function_registration);
    assert!(g.allowed_trigger_types.is_none() && g.context == json!({}));
    let g = Grants::from_auth_result(&json!({
        "namespaces": {"orders": ["svc::*", "match(\"x::y\")"]},
        "function_registration_prefix": "tenant-a",
        "context": {"user": "u1"},
        "unknown": 1,
    }))
    .unwrap();
    assert!(g.namespaces["orders"][1].matches("x::y"));
    assert_eq!(g.function_registration_prefix.as_deref(), Some("tenant-a"));
    for bad in [
        json!(null),
        json!("yes"),
        json!({"allowed_functions": "a"}),
        json!({"namespaces": {"a": "b"}}),
        json!({"allow_function_registration": "no"}),
    ] {
        assert!(Grants::from_auth_result(&bad).is_err(), "{bad}");
    }
}

#[test]
fn the_decision_follows_section_9_3_in_order() {
    let core = core_with(&[
        ("pub::a", json!({"public": true})),
        ("pro::b", json!({"tier": "pro-9"})),
        ("priv::c", json!({"public": false})),
    ]);
    let p = policy(
        r#"
rbac:
  expose_functions:
    - match("link::*")
    - { match: "svc::*", namespace: orders }
    - metadata: { public: true }
    - metadata: { tier: match("pro*") }
"#,
    )
    .unwrap()
    .unwrap();
    let mut g = Grants::from_auth_result(&json!({
        "namespaces": {"tenant": ["t::*"]},
        "allowed_functions": ["extra::one"],
        "forbidden_functions": ["link::secret", "engine::log::info"],
    }))
    .unwrap();
    let s = session(p.clone(), g.clone());
    let ok = |id: &str, ns: &str| s.may_call(&core, id, ns).is_ok();
    assert!(ok("link::create", "default"));
    assert!(!ok("link::create", "orders"), "rules are per namespace");
    assert!(ok("svc::x", "orders") && !ok("svc::x", "default"));
    assert!(ok("pub::a", "default") && ok("pro::b", "default"));
    assert!(!ok("priv::c", "default"));
    assert!(
        !ok("missing::fn", "default"),
        "a missing function matches no metadata rule"
    );
    assert!(ok("t::anything", "tenant") && !ok("t::anything", "default"));
    assert!(ok("extra::one", "default") && !ok("extra::one", "tenant"));
    assert!(
        ok("engine::log::warn", "default"),
        "infrastructure is always allowed"
    );
    let e = s.may_call(&core, "link::secret", "default").unwrap_err();
    assert_eq!(e.code, "FORBIDDEN");
    assert!(
        e.message.contains("remove from rbac.forbidden_functions"),
        "{e}"
    );
    assert!(
        !ok("engine::log::info", "default"),
        "forbidden wins over infrastructure"
    );
    let e = s.may_call(&core, "priv::c", "default").unwrap_err();
    assert_eq!(
        e.message,
        "function 'priv::c' not allowed (add to rbac.expose_functions)"
    );
    // Without rbac (a listener with only middleware) only forbidden_functions denies.
    g.namespaces.clear();
    let trusted = session(
        ListenerPolicy {
            rbac: None,
            middleware_function_id: Some("mw".into()),
        },
        g,
    );
    assert!(trusted.may_call(&core, "priv::c", "default").is_ok());
    assert!(trusted.may_call(&core, "link::secret", "default").is_err());
}

#[test]
fn namespace_declarations_are_bounded_by_the_grant_keys() {
    let p = ListenerPolicy {
        rbac: Some(RbacConfig::default()),
        middleware_function_id: None,
    };
    let s = session(
        p.clone(),
        Grants::from_auth_result(&json!({"namespaces": {"a": [], "b": []}})).unwrap(),
    );
    assert!(s.may_use_namespace("a").is_ok());
    let e = s.may_use_namespace("c").unwrap_err();
    assert_eq!(e.code, "FORBIDDEN");
    assert_eq!(
        e.message,
        "namespace 'c' not allowed for this session (permitted: a, b)"
    );
    let open = session(p, Grants::from_auth_result(&json!({})).unwrap());
    assert!(open.may_use_namespace("anything").is_ok());
}

#[tokio::test]
async fn registrations_are_prefixed_gated_and_checked() {
    let core = core_with(&[]);
    let p = policy("rbac: {expose_functions: [match(\"t1::*\")]}")
        .unwrap()
        .unwrap();
    let s = session(
        p,
        Grants::from_auth_result(&json!({
            "function_registration_prefix": "t1",
            "allowed_trigger_types": ["http"],
        }))
        .unwrap(),
    );
    let r = s
        .registration(
            &core,
            Kind::RegisterFunction,
            "default",
            json!({"type": "registerfunction", "id": "add"}),
        )
        .await;
    assert_eq!(
        r,
        Registration::Apply(json!({"type": "registerfunction", "id": "t1::add"}))
    );
    let r = s
        .registration(
            &core,
            Kind::RegisterTriggerType,
            "default",
            json!({"type": "registertriggertype", "id": "mine"}),
        )
        .await;
    assert!(matches!(r, Registration::Drop(_)), "{r:?}");
    let r = s
        .registration(
            &core,
            Kind::RegisterTrigger,
            "default",
            json!({"type": "registertrigger", "id": "b", "trigger_type": "cron", "function_id": "add"}),
        )
        .await;
    assert!(matches!(r, Registration::Drop(_)), "{r:?}");
    let r = s
        .registration(
            &core,
            Kind::RegisterTrigger,
            "default",
            json!({"type": "registertrigger", "id": "b", "trigger_type": "http", "function_id": "add"}),
        )
        .await;
    assert!(
        matches!(&r, Registration::Apply(v) if v["function_id"] == "t1::add"),
        "{r:?}"
    );
    let r = s
        .registration(
            &core,
            Kind::RegisterTrigger,
            "default",
            json!({"type": "registertrigger", "id": "b", "trigger_type": "http", "function_id": "add", "namespace": "other"}),
        )
        .await;
    assert!(
        matches!(&r, Registration::Refuse(e) if e.code == "FORBIDDEN"),
        "{r:?}"
    );
}
