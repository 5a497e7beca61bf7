//! Queue conformance: fan-out to every subscriber exactly once, retries then a dead letter,
//! dead-letter listing, redrive and discard; over every backend.

use std::collections::HashMap;
use std::time::Duration;

use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

use super::{QueueBackend, QUEUE_BACKENDS};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Serves `function_id` on `w` for `topic` with `queue_config`, answering with `f(data)`
/// (`Err` fails the invocation); every `data` received goes to the channel.
pub async fn serve(
    url: &str,
    function_id: &str,
    topic: &str,
    queue_config: Value,
    fail: fn(&Value) -> bool,
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let mut w = RawWorker::connect_named(url, &format!("sub-{function_id}"), None).await;
    w.register_function(function_id, json!({})).await;
    w.send(json!({"type": "registertrigger", "id": format!("t-{function_id}"), "trigger_type": "durable:subscriber",
        "function_id": function_id, "config": {"topic": topic, "queue_config": queue_config}}))
        .await;
    w.sync().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Idle stretches (a broker restart) are normal: wait long, end when the socket closes.
        while let Some(inv) = w.recv_raw(Duration::from_secs(600)).await {
            if inv["type"] != "invokefunction" {
                continue;
            }
            let data = inv["data"].clone();
            let reply = if fail(&data) {
                json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": inv["function_id"],
                    "error": {"code": "E_TEST", "message": "told to fail"}})
            } else {
                json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": inv["function_id"], "result": null})
            };
            let _ = tx.send(data);
            w.send(reply).await;
        }
    });
    rx
}

/// Receives until `n` distinct `data.i` arrived or `limit` passed; counts per `i`.
pub async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    n: usize,
    limit: Duration,
) -> HashMap<u64, usize> {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(v)) => *seen.entry(v["i"].as_u64().unwrap_or(u64::MAX)).or_default() += 1,
            _ => break,
        }
    }
    seen
}

async fn publish(w: &mut RawWorker, topic: &str, data: Value) {
    let r = w
        .call(
            "iii::durable::publish",
            json!({"topic": topic, "data": data}),
        )
        .await;
    assert!(
        r.get("error").is_none_or(Value::is_null),
        "publish failed: {r}"
    );
}

async fn fan_out_reaches_every_subscriber_once(b: QueueBackend) {
    let e = EngineProc::start(&b.entry(""));
    let url = e.url();
    let topic = unique("fan");
    let mut a = serve(
        &url,
        &unique("a"),
        &topic,
        json!({"concurrency": 8}),
        |_| false,
    )
    .await;
    let mut c = serve(
        &url,
        &unique("c"),
        &topic,
        json!({"concurrency": 8}),
        |_| false,
    )
    .await;
    // Bindings reach the backend asynchronously; give them a moment before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut p = RawWorker::connect(&url).await;
    const N: u64 = 200;
    for i in 0..N {
        publish(&mut p, &topic, json!({"i": i})).await;
    }
    for (name, rx) in [("a", &mut a), ("c", &mut c)] {
        let seen = collect(rx, N as usize, Duration::from_secs(60)).await;
        assert_eq!(
            seen.len(),
            N as usize,
            "{b:?}: subscriber {name} got {} of {N}",
            seen.len()
        );
        assert!(
            seen.values().all(|&k| k == 1),
            "{b:?}: subscriber {name} got duplicates"
        );
    }
}

async fn failures_retry_then_dead_letter_redrive_and_discard(b: QueueBackend) {
    let e = EngineProc::start(&b.entry(""));
    let url = e.url();
    let topic = unique("dlq");
    let fid = unique("fails");
    let mut rx = serve(&url, &fid, &topic, json!({"backoffDelayMs": 50}), |d| {
        d["fail"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut p = RawWorker::connect(&url).await;
    publish(&mut p, &topic, json!({"i": 1, "fail": true})).await;
    publish(&mut p, &topic, json!({"i": 2, "fail": true})).await;
    // Three attempts each (the default), then dead-lettered.
    let mut attempts: HashMap<u64, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while attempts.values().sum::<usize>() < 6 {
        let Ok(Some(v)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        *attempts.entry(v["i"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(attempts.get(&1), Some(&3), "{b:?}: attempts {attempts:?}");
    assert_eq!(attempts.get(&2), Some(&3), "{b:?}: attempts {attempts:?}");
    let mut dead = Value::Null;
    for _ in 0..100 {
        dead = p
            .call("engine::queue::dlq_messages", json!({"topic": topic}))
            .await["result"]
            .clone();
        if dead.as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead.as_array().cloned().unwrap_or_default();
    assert_eq!(dead.len(), 2, "{b:?}: dead letters {dead:?}");
    let text = serde_json::to_string(&dead).unwrap();
    assert!(
        text.contains("told to fail"),
        "{b:?}: the last error is kept: {text}"
    );
    // Listing does not consume them.
    let stats = p
        .call("engine::queue::topic_stats", json!({"topic": topic}))
        .await;
    assert_eq!(stats["result"]["dlq_depth"], 2, "{b:?}: {stats}");
    // Discard one by id, redrive the other: it is delivered again (and fails 3 more times).
    let id = |d: &Value| -> String {
        d.get("id")
            .or(d.get("message_id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let first = id(&dead[0]);
    assert!(
        !first.is_empty(),
        "{b:?}: dead letters name their id: {text}"
    );
    let r = p
        .call(
            "iii::queue::discard_message",
            json!({"queue": topic, "message_id": first}),
        )
        .await;
    assert_eq!(r["result"]["redriven"], 1, "{b:?}: discard {r}");
    let r = p.call("iii::queue::redrive", json!({"queue": topic})).await;
    assert_eq!(r["result"]["redriven"], 1, "{b:?}: redrive {r}");
    let again = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
    assert!(
        matches!(again, Ok(Some(_))),
        "{b:?}: the redriven message is delivered again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_fan_out_reaches_every_subscriber_once() {
    for b in QUEUE_BACKENDS {
        fan_out_reaches_every_subscriber_once(*b).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_failures_retry_then_dead_letter_redrive_and_discard() {
    for b in QUEUE_BACKENDS {
        failures_retry_then_dead_letter_redrive_and_discard(*b).await;
    }
}
