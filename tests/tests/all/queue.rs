//! The durable queue as a user sees it (issue 10): fan-out of 10 000 messages at concurrency 16
//! to two subscriber functions with duplicates counted, acknowledged publishes surviving an
//! engine SIGKILL in the middle of a publishing burst, and bad bindings refused while the
//! worker stays up.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const QUEUE: &str = "  - name: iii-queue\n";

/// A subscriber connection serving `function_id`, bound to `topic`; every delivered `data.i`
/// goes to the returned channel.
async fn subscriber(
    url: &str,
    function_id: &str,
    topic: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<u64> {
    let mut w = RawWorker::connect_named(url, &format!("sub-{function_id}"), None).await;
    w.register_function(function_id, json!({})).await;
    w.send(json!({"type": "registertrigger", "id": format!("t-{function_id}"), "trigger_type": "durable:subscriber",
        "function_id": function_id, "config": {"topic": topic, "queue_config": {"concurrency": 16}}}))
        .await;
    w.sync().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let fid = function_id.to_string();
    tokio::spawn(async move {
        let mut ws = w.ws;
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] != "invokefunction" {
                continue;
            }
            if let Some(i) = v["data"]["i"].as_u64() {
                let _ = tx.send(i);
            }
            let reply = json!({"type": "invocationresult", "invocation_id": v["invocation_id"], "function_id": fid, "result": null});
            if ws.send(Message::text(reply.to_string())).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Publishes `data.i` for `range` with `c` publishes outstanding; returns the acknowledged ones
/// (all of them unless the engine went away).
async fn publish_range(url: &str, topic: &str, range: std::ops::Range<u64>, c: usize) -> Vec<u64> {
    let w = RawWorker::connect(url).await;
    let mut ws = w.ws;
    let mut pending: HashMap<String, u64> = HashMap::new();
    let mut acked = Vec::new();
    let mut next = range.start;
    loop {
        while pending.len() < c && next < range.end {
            let id = uuid::Uuid::new_v4().to_string();
            let f = json!({"type": "invokefunction", "invocation_id": id, "function_id": "iii::durable::publish",
                "data": {"topic": topic, "data": {"i": next}}});
            if ws.send(Message::text(f.to_string())).await.is_err() {
                return acked;
            }
            pending.insert(id, next);
            next += 1;
        }
        if pending.is_empty() {
            return acked;
        }
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await else {
            return acked;
        };
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] != "invocationresult" {
            continue;
        }
        if let Some(i) = v["invocation_id"]
            .as_str()
            .and_then(|id| pending.remove(id))
        {
            assert!(
                v.get("error").is_none_or(Value::is_null),
                "publish failed: {v}"
            );
            acked.push(i);
        }
    }
}

/// Collects deliveries until every id in `want` arrived (or `limit` passed); returns
/// (distinct ids seen, duplicate deliveries).
async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
    want: usize,
    limit: Duration,
) -> (HashMap<u64, u32>, usize) {
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    while seen.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(i)) => *seen.entry(i).or_default() += 1,
            _ => break,
        }
    }
    // Late duplicates of what already arrived.
    while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        *seen.entry(i).or_default() += 1;
    }
    let dups = seen.values().map(|n| (*n as usize).saturating_sub(1)).sum();
    (seen, dups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_reach_both_subscriber_functions() {
    let e = EngineProc::start(QUEUE);
    let mut a = subscriber(&e.url(), "fan::a", "fan").await;
    let mut b = subscriber(&e.url(), "fan::b", "fan").await;
    let acked = publish_range(&e.url(), "fan", 0..10_000, 16).await;
    assert_eq!(acked.len(), 10_000);
    for (name, rx) in [("fan::a", &mut a), ("fan::b", &mut b)] {
        let (seen, dups) = collect(rx, 10_000, Duration::from_secs(240)).await;
        eprintln!(
            "{name}: {} distinct of 10000 delivered, {dups} duplicate deliveries",
            seen.len()
        );
        assert_eq!(seen.len(), 10_000, "{name} missed messages");
        assert!(seen.keys().all(|i| *i < 10_000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_an_engine_sigkill_mid_burst() {
    let mut e = EngineProc::start(QUEUE);
    let url = e.url();
    let burst = tokio::spawn(async move { publish_range(&url, "burst", 0..3000, 32).await });
    // Kill the engine while publishes are in flight.
    tokio::time::sleep(Duration::from_millis(400)).await;
    e.kill9_and_restart();
    let acked = burst.await.unwrap();
    eprintln!("{} publishes acknowledged before the SIGKILL", acked.len());
    let mut rx = subscriber(&e.url(), "burst::sink", "burst").await;
    let (seen, dups) = collect(&mut rx, acked.len(), Duration::from_secs(120)).await;
    let lost: Vec<_> = acked.iter().filter(|i| !seen.contains_key(i)).collect();
    eprintln!(
        "after restart: {} distinct delivered, {dups} duplicates, {} acknowledged lost",
        seen.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged publishes lost: {lost:?}");
}

#[tokio::test]
async fn a_bad_subscriber_binding_is_refused_and_the_worker_stays() {
    let e = EngineProc::start(QUEUE);
    let mut w = RawWorker::connect_named(&e.url(), "bad-sub", None).await;
    w.register_function("bad::h", json!({})).await;
    for (id, config, needle) in [
        ("b1", json!({}), "topic"),
        (
            "b2",
            json!({"topic": "x", "queue_config": {"type": "lifo"}}),
            "queue_config.type",
        ),
        (
            "b3",
            json!({"topic": "x", "queue_config": {"concurrency": 0}}),
            "concurrency",
        ),
    ] {
        w.send(json!({"type": "registertrigger", "id": id, "trigger_type": "durable:subscriber", "function_id": "bad::h", "config": config})).await;
        let r = w
            .recv_where(|v| v["type"] == "triggerregistrationresult" && v["id"] == id)
            .await;
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{id}: {r}");
    }
    // Still connected and served; and the queue functions answer structured errors.
    let r = w.call("iii::durable::publish", json!({"data": 1})).await;
    assert_eq!(r["error"]["code"], "topic_not_set", "{r}");
    let r = w.call("engine::queue::dlq_messages", json!({})).await;
    assert_eq!(r["error"]["code"], "topic_required", "{r}");
    let r = w
        .call_with(
            "bad::h",
            json!({}),
            json!({"action": {"type": "enqueue", "queue": "missing"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "enqueue_error", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Queue 'missing' not found"),
        "{r}"
    );
}
