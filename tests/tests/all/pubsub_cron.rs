//! `publish` / `subscribe` and the `cron` trigger type against the real engine, with raw
//! worker sockets.

use std::time::Duration;

use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

fn engine() -> EngineProc {
    EngineProc::start("  - name: pubsub\n  - name: cron\n")
}

fn subscribe(id: &str, function_id: &str, topic: &str) -> Value {
    json!({"type": "registertrigger", "id": id, "trigger_type": "subscribe", "function_id": function_id, "config": {"topic": topic}})
}

/// Answers the next invocation with null and returns `(function_id, data)`.
async fn next_call(w: &mut RawWorker) -> (String, Value) {
    let inv = w.serve_one(|_| Value::Null).await;
    (
        inv["function_id"].as_str().unwrap_or_default().to_string(),
        inv["data"].clone(),
    )
}

#[tokio::test]
async fn publish_reaches_each_subscriber_of_its_topic_and_unsubscribe_takes_only_one() {
    let e = engine();
    let mut a = RawWorker::connect_named(&e.url(), "subs-a", None).await;
    let mut b = RawWorker::connect_named(&e.url(), "subs-b", None).await;
    let mut p = RawWorker::connect_named(&e.url(), "publisher", None).await;
    a.register_function("orders::one", json!({})).await;
    a.register_function("orders::two", json!({})).await;
    b.register_function("invoices::one", json!({})).await;
    a.send(subscribe("t-one", "orders::one", "orders")).await;
    a.send(subscribe("t-two", "orders::two", "orders")).await;
    b.send(subscribe("t-inv", "invoices::one", "invoices"))
        .await;
    a.sync().await;
    b.sync().await;

    let r = p
        .call("publish", json!({"topic": "orders", "data": {"n": 1}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert!(r.get("result").is_none_or(Value::is_null), "{r}");
    let mut got = vec![next_call(&mut a).await, next_call(&mut a).await];
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        [
            ("orders::one".to_string(), json!({"n": 1})),
            ("orders::two".to_string(), json!({"n": 1}))
        ]
    );
    b.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;

    // Unsubscribing one binding leaves the topic's other subscriber.
    a.send(json!({"type": "unregistertrigger", "id": "t-one", "trigger_type": "subscribe"}))
        .await;
    a.sync().await;
    p.call("publish", json!({"topic": "orders", "data": 2}))
        .await;
    assert_eq!(
        next_call(&mut a).await,
        ("orders::two".to_string(), json!(2))
    );
    a.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;

    let r = p
        .call("publish", json!({"topic": "invoices", "data": "x"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        next_call(&mut b).await,
        ("invoices::one".to_string(), json!("x"))
    );

    let r = p.call("publish", json!({"data": 1})).await;
    assert_eq!(r["error"]["code"], "topic_not_set", "{r}");
}

#[tokio::test]
async fn a_seven_field_cron_fires_and_bad_expressions_are_registration_errors() {
    let e = engine();
    let mut w = RawWorker::connect_named(&e.url(), "cron-worker", None).await;
    w.register_function("jobs::bad", json!({})).await;
    for (id, expr) in [("bad-5", "* * * * *"), ("bad-x", "every second please")] {
        w.send(json!({"type": "registertrigger", "id": id, "trigger_type": "cron", "function_id": "jobs::bad", "config": {"expression": expr}}))
            .await;
        let r = w
            .recv_where(|v| v["type"] == "triggerregistrationresult")
            .await;
        assert_eq!(r["id"], id);
        assert_eq!(r["error"]["code"], "trigger_registration_failed", "{r}");
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with("Invalid cron expression"), "{msg}");
    }
    w.send(json!({"type": "registertrigger", "id": "empty", "trigger_type": "cron", "function_id": "jobs::bad", "config": {"expression": ""}}))
        .await;
    let r = w
        .recv_where(|v| v["type"] == "triggerregistrationresult")
        .await;
    assert_eq!(r["error"]["message"], "Cron expression is required");

    // The worker is still connected and registers a good job.
    w.sync().await;
    w.register_function("jobs::tick", json!({})).await;
    w.send(json!({"type": "registertrigger", "id": "tick", "trigger_type": "cron", "function_id": "jobs::tick", "config": {"expression": "* * * * * * *"}, "metadata": {"m": 1}}))
        .await;
    let inv = tokio::time::timeout(Duration::from_secs(3), w.serve_one(|_| Value::Null))
        .await
        .expect("an every-second job fires within 3 s");
    assert_eq!(inv["function_id"], "jobs::tick");
    let p = &inv["data"];
    assert_eq!(p["trigger"], "cron");
    assert_eq!(p["job_id"], "tick");
    let sched = p["scheduled_time"].as_str().unwrap();
    let actual = p["actual_time"].as_str().unwrap();
    assert!(
        sched.ends_with("+00:00") && actual.ends_with("+00:00"),
        "{p}"
    );
    assert!(
        sched.contains(".000"),
        "ticks fall on whole seconds: {sched}"
    );
    assert!(actual >= sched, "{p}");
    assert_eq!(inv["metadata"], json!({"m": 1}));

    // Unregistered: it stops.
    w.send(json!({"type": "unregistertrigger", "id": "tick", "trigger_type": "cron"}))
        .await;
    w.sync().await;
    // A tick already on its way may still arrive; after that, nothing.
    let _ = w.recv_raw(Duration::from_millis(200)).await;
    w.expect_none(Duration::from_millis(1500), |v| {
        v["type"] == "invokefunction" && v["function_id"] == "jobs::tick"
    })
    .await;
}
