//! Trigger registry (PROTOCOL.md §4.3, §4.4): parking, replay, re-homing, resends of unanswered
//! `registertrigger` frames, protection of service types, unregistering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::support::{Armed, RecordingType, TestConn};
use crate::triggers::{deliver, Provider, TriggerTypeEntry};
use crate::{Core, CoreSettings, DEFAULT_NS};

fn core() -> Core {
    Core::new(CoreSettings::default())
}

fn type_frame(id: &str) -> Value {
    json!({"type": "registertriggertype", "id": id, "description": "a test type"})
}

fn bind_frame(id: &str, ty: &str) -> Value {
    json!({
        "type": "registertrigger",
        "id": id,
        "trigger_type": ty,
        "function_id": "app::on_hook",
        "config": {"path": "/x"},
    })
}

fn ack_frame(id: &str, ty: &str) -> Value {
    json!({
        "type": "triggerregistrationresult",
        "id": id,
        "trigger_type": ty,
        "function_id": "app::on_hook",
    })
}

/// Where binding `id` is armed: `Some((namespace, type))`, or `None` while parked.
fn armed_at(core: &Core, id: &str) -> Option<(String, String)> {
    core.triggers()
        .binding(id)
        .expect("binding exists")
        .provider
}

fn at(ns: &str, ty: &str) -> Option<(String, String)> {
    Some((ns.to_string(), ty.to_string()))
}

/// Checks a `registertrigger` the engine sent a provider for `bind_frame(id, "hook")`.
fn assert_arms(frame: &Value, id: &str, trigger_namespace: Option<&str>) {
    assert_eq!(frame["type"], "registertrigger", "{frame}");
    assert_eq!(frame["id"], id);
    assert_eq!(frame["trigger_type"], "hook");
    assert_eq!(frame["function_id"], "app::on_hook");
    assert_eq!(frame["config"], json!({"path": "/x"}));
    assert_eq!(
        frame.get("trigger_namespace").and_then(Value::as_str),
        trigger_namespace,
        "{frame}"
    );
}

fn service_type(core: &Core, id: &str, provider: Arc<RecordingType>) {
    core.triggers().register_builtin_type(TriggerTypeEntry {
        namespace: DEFAULT_NS.into(),
        id: id.into(),
        description: "a service type".into(),
        trigger_request_format: None,
        call_request_format: None,
        response_format: None,
        provider: Provider::Builtin(provider),
        worker: Some("test-service"),
    });
}

#[tokio::test]
async fn binding_for_an_unknown_type_is_parked_then_armed_when_a_worker_provides_it() {
    let core = core();
    let mut owner = TestConn::connect(&core, DEFAULT_NS);
    let mut provider = TestConn::connect(&core, DEFAULT_NS);

    owner.register(&core, bind_frame("t1", "hook")).await;
    assert_eq!(armed_at(&core, "t1"), None, "no provider yet: parked");
    // Parking is not an error: the owner hears nothing.
    owner.assert_silent();

    provider.register(&core, type_frame("hook")).await;
    let f = provider.expect("registertrigger").await;
    assert_arms(&f, "t1", None);
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));
    provider.assert_silent();
    owner.assert_silent();
}

#[tokio::test]
async fn bindings_are_replayed_to_a_new_provider_after_the_old_one_leaves() {
    let core = core();
    let mut owner = TestConn::connect(&core, DEFAULT_NS);
    let mut old = TestConn::connect(&core, DEFAULT_NS);
    old.register(&core, type_frame("hook")).await;
    owner.register(&core, bind_frame("t1", "hook")).await;
    owner.register(&core, bind_frame("t2", "hook")).await;
    for _ in 0..2 {
        old.expect("registertrigger").await;
    }
    old.trigger_result(&core, ack_frame("t1", "hook")).await;
    old.trigger_result(&core, ack_frame("t2", "hook")).await;

    old.leave(&core).await;
    // The bindings belong to `owner`, which is still here: they wait, parked.
    assert_eq!(armed_at(&core, "t1"), None);
    assert_eq!(armed_at(&core, "t2"), None);
    assert!(core.triggers().types().is_empty(), "the type left with it");
    owner.assert_silent();

    let mut new = TestConn::connect(&core, DEFAULT_NS);
    new.register(&core, type_frame("hook")).await;
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..2 {
        let f = new.expect("registertrigger").await;
        assert_arms(&f, f["id"].as_str().expect("id"), None);
        ids.push(f["id"].as_str().expect("id").to_string());
    }
    ids.sort();
    assert_eq!(ids, ["t1", "t2"]);
    new.assert_silent();
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));
    assert_eq!(armed_at(&core, "t2"), at(DEFAULT_NS, "hook"));
}

#[tokio::test]
async fn a_provider_registering_its_type_again_gets_its_bindings_again() {
    let core = core();
    let owner = TestConn::connect(&core, DEFAULT_NS);
    let mut provider = TestConn::connect(&core, DEFAULT_NS);
    provider.register(&core, type_frame("hook")).await;
    owner.register(&core, bind_frame("t1", "hook")).await;
    assert_arms(&provider.expect("registertrigger").await, "t1", None);

    // E.g. an SDK that re-sends its registrations after a reload.
    provider.register(&core, type_frame("hook")).await;
    assert_arms(&provider.expect("registertrigger").await, "t1", None);
    provider.assert_silent();
}

#[tokio::test]
async fn a_binding_on_the_default_provider_moves_home_when_its_namespace_provides_the_type() {
    let core = core();
    let mut fallback = TestConn::connect(&core, DEFAULT_NS);
    fallback.register(&core, type_frame("hook")).await;
    // The owner lives in `orders`, which has no `hook` provider yet.
    let owner = TestConn::connect(&core, "orders");
    owner.register(&core, bind_frame("t1", "hook")).await;
    assert_arms(&fallback.expect("registertrigger").await, "t1", None);
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));

    let mut home = TestConn::connect(&core, "orders");
    home.register(&core, type_frame("hook")).await;
    assert_arms(&home.expect("registertrigger").await, "t1", Some("orders"));
    let f = fallback.expect("unregistertrigger").await;
    assert_eq!(f["id"], "t1");
    assert_eq!(f["trigger_type"], "hook");
    assert_eq!(armed_at(&core, "t1"), at("orders", "hook"));
    fallback.assert_silent();
    home.assert_silent();

    // A late answer from the old provider does not count for the new one.
    fallback
        .trigger_result(&core, ack_frame("t1", "hook"))
        .await;
    let sends = core
        .triggers()
        .resend_unacked(Instant::now() + Duration::from_secs(1));
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0.id, home.conn.id);
    deliver(sends).await;
    assert_arms(&home.expect("registertrigger").await, "t1", Some("orders"));
    home.trigger_result(&core, ack_frame("t1", "hook")).await;

    // When the home provider leaves, the binding falls back to `default` again.
    home.leave(&core).await;
    assert_arms(&fallback.expect("registertrigger").await, "t1", None);
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));
}

#[tokio::test]
async fn an_unanswered_registertrigger_is_sent_again_after_1s_and_3s_then_no_more() {
    let core = core();
    let owner = TestConn::connect(&core, DEFAULT_NS);
    let mut provider = TestConn::connect(&core, DEFAULT_NS);
    provider.register(&core, type_frame("hook")).await;

    let before = Instant::now();
    owner.register(&core, bind_frame("t1", "hook")).await;
    let after = Instant::now();
    let first = provider.expect("registertrigger").await;
    assert_arms(&first, "t1", None);

    let resend = |now: Instant| core.triggers().resend_unacked(now);

    assert!(resend(before + Duration::from_millis(990)).is_empty());
    let sends = resend(after + Duration::from_secs(1));
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0.id, provider.conn.id);
    deliver(sends).await;
    assert_eq!(provider.expect("registertrigger").await, first);
    let resent_1 = after + Duration::from_secs(1);

    // The second resend waits 3 s from the first one.
    assert!(resend(resent_1 + Duration::from_millis(2900)).is_empty());
    let sends = resend(resent_1 + Duration::from_secs(3));
    assert_eq!(sends.len(), 1);
    deliver(sends).await;
    assert_eq!(provider.expect("registertrigger").await, first);
    let resent_2 = resent_1 + Duration::from_secs(3);

    // Then it gives up.
    assert!(resend(resent_2 + Duration::from_secs(3)).is_empty());
    assert!(resend(resent_2 + Duration::from_secs(600)).is_empty());
    provider.assert_silent();
    // Giving up does not disarm: the binding stays where it was sent.
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));
}

#[tokio::test]
async fn an_answered_registertrigger_is_not_sent_again() {
    let core = core();
    let owner = TestConn::connect(&core, DEFAULT_NS);
    let mut provider = TestConn::connect(&core, DEFAULT_NS);
    provider.register(&core, type_frame("hook")).await;
    owner.register(&core, bind_frame("t1", "hook")).await;
    owner.register(&core, bind_frame("t2", "hook")).await;
    let after = Instant::now();
    provider.expect("registertrigger").await;
    provider.expect("registertrigger").await;

    // An answer from a connection that is not the provider does not count.
    owner.trigger_result(&core, ack_frame("t1", "hook")).await;
    provider
        .trigger_result(&core, ack_frame("t2", "hook"))
        .await;
    let sends = core
        .triggers()
        .resend_unacked(after + Duration::from_secs(1));
    let ids: Vec<String> = sends
        .iter()
        .map(|(_, text)| {
            let f: Value = serde_json::from_str(text).expect("json");
            assert_eq!(f["type"], "registertrigger");
            f["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(ids, ["t1"], "only the binding nobody answered is resent");
    deliver(sends).await;
    provider.expect("registertrigger").await;

    // Answered after one resend: the second resend does not happen.
    provider
        .trigger_result(&core, ack_frame("t1", "hook"))
        .await;
    let later = after + Duration::from_secs(60);
    assert!(core.triggers().resend_unacked(later).is_empty());
    provider.assert_silent();
}

#[tokio::test]
async fn a_rejected_binding_is_parked_and_the_owner_hears_why() {
    let core = core();
    let mut owner = TestConn::connect(&core, DEFAULT_NS);
    let mut provider = TestConn::connect(&core, DEFAULT_NS);
    provider.register(&core, type_frame("hook")).await;
    owner.register(&core, bind_frame("t1", "hook")).await;
    provider.expect("registertrigger").await;

    let mut nack = ack_frame("t1", "hook");
    nack["error"] = json!({"code": "bad_config", "message": "path must be absolute"});
    provider.trigger_result(&core, nack).await;
    assert_eq!(armed_at(&core, "t1"), None);
    let f = owner.expect("triggerregistrationresult").await;
    assert_eq!(f["id"], "t1");
    assert_eq!(f["error"]["code"], "bad_config");
    assert_eq!(f["error"]["message"], "path must be absolute");
    assert!(core
        .triggers()
        .resend_unacked(Instant::now() + Duration::from_secs(10))
        .is_empty());
}

#[tokio::test]
async fn a_worker_cannot_take_over_a_trigger_type_a_service_provides() {
    let core = core();
    let service = Arc::new(RecordingType::default());
    service_type(&core, "hook", service.clone());

    let mut worker = TestConn::connect(&core, DEFAULT_NS);
    worker.register(&core, type_frame("hook")).await;
    let types = core.triggers().types();
    assert_eq!(types.len(), 1);
    assert!(matches!(types[0].provider, Provider::Builtin(_)));
    assert_eq!(types[0].worker_name(), "test-service");

    let owner = TestConn::connect(&core, DEFAULT_NS);
    owner.register(&core, bind_frame("t1", "hook")).await;
    assert_eq!(service.events(), [Armed::Register("t1".into())]);
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));
    worker.assert_silent();

    // Nor does its leaving remove the service's type or disarm its bindings.
    worker.leave(&core).await;
    assert_eq!(core.triggers().types().len(), 1);
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));
    assert_eq!(service.events(), [Armed::Register("t1".into())]);
}

#[tokio::test]
async fn unregistering_removes_the_binding_and_disarms_it() {
    let core = core();
    let service = Arc::new(RecordingType::default());
    service_type(&core, "svc", service.clone());
    let mut provider = TestConn::connect(&core, DEFAULT_NS);
    provider.register(&core, type_frame("hook")).await;
    let owner = TestConn::connect(&core, DEFAULT_NS);

    // At a worker provider, before it answered: it is told, and nothing is resent.
    owner.register(&core, bind_frame("t1", "hook")).await;
    provider.expect("registertrigger").await;
    owner
        .register(&core, json!({"type": "unregistertrigger", "id": "t1"}))
        .await;
    let f = provider.expect("unregistertrigger").await;
    assert_eq!(f["id"], "t1");
    assert_eq!(f["trigger_type"], "hook");
    assert!(core.triggers().binding("t1").is_none());
    assert!(core
        .triggers()
        .resend_unacked(Instant::now() + Duration::from_secs(10))
        .is_empty());

    // At a service provider.
    owner.register(&core, bind_frame("t2", "svc")).await;
    owner
        .register(&core, json!({"type": "unregistertrigger", "id": "t2"}))
        .await;
    assert_eq!(
        service.events(),
        [Armed::Register("t2".into()), Armed::Unregister("t2".into())]
    );
    assert!(core.triggers().binding("t2").is_none());
    assert!(core.triggers().bindings().is_empty());
    provider.assert_silent();
}

#[tokio::test]
async fn an_owner_leaving_removes_and_disarms_its_bindings() {
    let core = core();
    let mut provider = TestConn::connect(&core, DEFAULT_NS);
    provider.register(&core, type_frame("hook")).await;
    let owner = TestConn::connect(&core, DEFAULT_NS);
    let stays = TestConn::connect(&core, DEFAULT_NS);
    owner.register(&core, bind_frame("t1", "hook")).await;
    stays.register(&core, bind_frame("t2", "hook")).await;
    provider.expect("registertrigger").await;
    provider.expect("registertrigger").await;

    owner.leave(&core).await;
    let f = provider.expect("unregistertrigger").await;
    assert_eq!(f["id"], "t1");
    provider.assert_silent();
    assert!(core.triggers().binding("t1").is_none());
    assert_eq!(armed_at(&core, "t2"), at(DEFAULT_NS, "hook"));
}

#[tokio::test]
async fn a_binding_parked_on_a_closing_provider_falls_back_when_that_provider_leaves() {
    let core = core();
    let mut fallback = TestConn::connect(&core, DEFAULT_NS);
    fallback.register(&core, type_frame("hook")).await;
    let mut home = TestConn::connect(&core, "orders");
    home.register(&core, type_frame("hook")).await;

    // The home provider is tearing down when the binding arrives: it is parked (§4.3).
    home.conn.close();
    let owner = TestConn::connect(&core, "orders");
    owner.register(&core, bind_frame("t1", "hook")).await;
    assert_eq!(armed_at(&core, "t1"), None);

    // Once the home provider is gone the binding resolves to `default`, as it would have had
    // it arrived a moment later; parking must not strand it while a provider can serve it.
    home.leave(&core).await;
    home.assert_silent();
    assert_arms(&fallback.expect("registertrigger").await, "t1", None);
    assert_eq!(armed_at(&core, "t1"), at(DEFAULT_NS, "hook"));
}
