//! Extism policy plugins built with the official Rust PDK, run on our own
//! implementation of the Extism host ABI.

mod common;

use iii_plugin_host::policy::{PolicyError, PolicySpec};
use iii_plugin_host::Contained;
use serde_json::json;

fn spec() -> PolicySpec {
    let mut s = PolicySpec::new(&common::fixtures().policy);
    s.config.insert("allowed_roles".into(), "admin,ops".into());
    s.deadline_ms = 200;
    s.memory_mb = 16;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_in_json_out_with_config_and_vars() {
    let p = common::host().load_policy(&spec()).unwrap();
    let out = p.call("check", &json!({"role": "admin"})).await.unwrap();
    assert_eq!(out, json!({"allow": true, "role": "admin", "calls": 1}));
    let out = p.call("check", &json!({"role": "guest"})).await.unwrap();
    assert_eq!(
        out,
        json!({"allow": false, "role": "guest", "calls": 2}),
        "vars persist across calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_deadlines_and_memory_are_reported() {
    let p = common::host().load_policy(&spec()).unwrap();
    match p.call("fail", &json!({})).await.unwrap_err() {
        PolicyError::Failed { code, message, .. } => {
            assert_eq!(code, 1);
            assert!(message.contains("denied by policy"), "{message}");
        }
        other => panic!("expected Failed, got {other}"),
    }
    let e = p.call("spin", &json!({})).await.unwrap_err();
    assert!(
        matches!(
            e,
            PolicyError::Contained {
                cause: Contained::DeadlineExceeded {
                    deadline_ms: 200,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("raise `deadline_ms`"), "{e}");
    let e = p.call("hog", &json!({})).await.unwrap_err();
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
    let e = p.call("nope", &json!({})).await.unwrap_err();
    assert!(matches!(e, PolicyError::MissingFunction { .. }), "{e}");
    // The plugin still works after all that: every call is a fresh instance.
    let out = p.call("check", &json!({"role": "ops"})).await.unwrap();
    assert_eq!(out["allow"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_is_not_a_policy_module() {
    let mut s = spec();
    s.path = common::fixtures().hostile.clone();
    let e = common::host().load_policy(&s).err().unwrap();
    assert!(matches!(e, PolicyError::NotAModule { .. }), "{e}");
}
