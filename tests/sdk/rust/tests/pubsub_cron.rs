//! `publish` / `subscribe` and the `cron` trigger type through the official Rust SDK
//! (`iii-sdk` 0.25.0; spec §4.6.2, §4.6.5, §5.5).

#![allow(
    deprecated,
    reason = "register_trigger is deprecated in iii-sdk 0.25 in favour of observe(), which this engine does not implement; it is still the 0.23 wire path under test"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iii_sdk::protocol::RegisterTriggerInput;
use iii_sdk::{IIIClient, RegisterFunction};
use iii_sdk_rust_tests::*;
use iii_tests::EngineProc;
use serde_json::{json, Value};

type Inbox = Arc<Mutex<HashMap<String, Vec<Value>>>>;

fn engine() -> EngineProc {
    EngineProc::start("  - name: pubsub\n  - name: cron\n")
}

/// Registers `function_id` on `w`; every payload it gets is recorded in `inbox`.
fn recorder(w: &IIIClient, inbox: &Inbox, function_id: &str) {
    let (inbox, id) = (inbox.clone(), function_id.to_string());
    w.register_function(
        function_id,
        RegisterFunction::new_async(move |input: Value| {
            let (inbox, id) = (inbox.clone(), id.clone());
            async move {
                inbox.lock().unwrap().entry(id).or_default().push(input);
                Ok(Value::Null)
            }
        }),
    );
}

fn got(inbox: &Inbox, function_id: &str) -> Vec<Value> {
    inbox
        .lock()
        .unwrap()
        .get(function_id)
        .cloned()
        .unwrap_or_default()
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bindings(c: &IIIClient, function_id: &str) -> Vec<Value> {
    let r = call(
        c,
        "engine::registered-triggers::list",
        json!({"function_id": function_id}),
    )
    .await
    .expect("registered-triggers::list");
    r["registered_triggers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_bindings(c: &IIIClient, function_id: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while bindings(c, function_id).await.len() != n {
        assert!(
            Instant::now() < deadline,
            "{function_id} never had {n} bindings"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn trigger(ty: &str, function_id: &str, config: Value) -> RegisterTriggerInput {
    RegisterTriggerInput::new(ty, function_id, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_each_subscriber_of_its_topic_and_unsubscribe_takes_only_one() {
    let e = engine();
    let subs = connect_ready(&e.url(), &unique_name("rs-subs")).await;
    let other = connect_ready(&e.url(), &unique_name("rs-other")).await;
    let publisher = connect_ready(&e.url(), &unique_name("rs-pub")).await;
    let inbox = Inbox::default();
    recorder(&subs, &inbox, "rsorders::one");
    recorder(&subs, &inbox, "rsorders::two");
    recorder(&other, &inbox, "rsinvoices::one");
    for f in ["rsorders::one", "rsorders::two", "rsinvoices::one"] {
        wait_for_function(&publisher, f).await;
    }
    let one = subs
        .register_trigger(trigger(
            "subscribe",
            "rsorders::one",
            json!({"topic": "orders"}),
        ))
        .expect("subscribe one");
    subs.register_trigger(trigger(
        "subscribe",
        "rsorders::two",
        json!({"topic": "orders"}),
    ))
    .expect("subscribe two");
    other
        .register_trigger(trigger(
            "subscribe",
            "rsinvoices::one",
            json!({"topic": "invoices"}),
        ))
        .expect("subscribe invoices");
    wait_bindings(&publisher, "rsorders::two", 1).await;
    wait_bindings(&publisher, "rsinvoices::one", 1).await;

    let r = call(
        &publisher,
        "publish",
        json!({"topic": "orders", "data": {"n": 1}}),
    )
    .await
    .expect("publish");
    assert_eq!(r, Value::Null);
    wait_until("both subscribers called", WAIT, || {
        !got(&inbox, "rsorders::one").is_empty() && !got(&inbox, "rsorders::two").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got(&inbox, "rsorders::one"), [json!({"n": 1})]);
    assert_eq!(got(&inbox, "rsorders::two"), [json!({"n": 1})]);
    assert!(
        got(&inbox, "rsinvoices::one").is_empty(),
        "another topic's subscriber was called"
    );

    one.unregister();
    wait_bindings(&publisher, "rsorders::one", 0).await;
    call(&publisher, "publish", json!({"topic": "orders", "data": 2}))
        .await
        .expect("publish");
    wait_until("the remaining subscriber called", WAIT, || {
        got(&inbox, "rsorders::two").len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got(&inbox, "rsorders::one"), [json!({"n": 1})]);
    assert_eq!(got(&inbox, "rsorders::two"), [json!({"n": 1}), json!(2)]);

    let e = call(&publisher, "publish", json!({"data": 1}))
        .await
        .expect_err("publish without a topic");
    match e {
        iii_sdk::Error::Remote { code, .. } => assert_eq!(code, "topic_not_set"),
        other => panic!("expected a remote topic_not_set, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seven_field_cron_fires_and_bad_expressions_are_registration_errors() {
    let e = engine();
    let w = connect_ready(&e.url(), &unique_name("rs-cron")).await;
    let inbox = Inbox::default();
    recorder(&w, &inbox, "rsjobs::tick");
    recorder(&w, &inbox, "rsjobs::bad");
    wait_for_function(&w, "rsjobs::bad").await;
    for expr in ["* * * * *", "not a cron at all"] {
        w.register_trigger(trigger("cron", "rsjobs::bad", json!({"expression": expr})))
            .expect("the SDK sends it; the engine refuses it");
    }
    // The refusals reach the engine log; the bindings never exist.
    let deadline = Instant::now() + WAIT;
    while e.log().matches("Invalid cron expression").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no registration errors:\n{}",
            e.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bindings(&w, "rsjobs::bad").await.is_empty());

    // The same worker is still connected and its good job fires.
    w.register_trigger(trigger(
        "cron",
        "rsjobs::tick",
        json!({"expression": "* * * * * * *"}),
    ))
    .expect("cron trigger");
    wait_until(
        "an every-second job fired within 3 s",
        Duration::from_secs(3),
        || !got(&inbox, "rsjobs::tick").is_empty(),
    )
    .await;
    let p = got(&inbox, "rsjobs::tick")[0].clone();
    assert_eq!(p["trigger"], "cron");
    let ids: Vec<Value> = bindings(&w, "rsjobs::tick")
        .await
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    assert_eq!(ids, [p["job_id"].clone()]);
    let sched = p["scheduled_time"].as_str().unwrap_or_default();
    assert!(sched.ends_with(".000+00:00"), "whole-second UTC tick: {p}");
    assert!(
        p["actual_time"].as_str().unwrap_or_default() >= sched,
        "{p}"
    );
    assert!(got(&inbox, "rsjobs::bad").is_empty());
}
