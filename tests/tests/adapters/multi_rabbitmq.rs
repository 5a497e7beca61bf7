//! Two engines on one RabbitMQ broker: a topic's durable messages go to the competing
//! consumers of a subscriber function on both engines, each exactly once; and when one engine
//! dies mid-delivery its unacknowledged messages reach the other.

use std::collections::HashMap;
use std::time::Duration;

use iii_tests::rabbitmq::Broker;
use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

use crate::conformance::queue::serve;

fn engine(broker: &Broker) -> EngineProc {
    EngineProc::start(&format!(
        "  - name: queue\n    config:\n      adapter:\n        name: rabbitmq\n        config: {{amqp_url: \"{}\", prefetch_count: 4}}\n",
        broker.url()
    ))
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn competing_consumers_on_two_engines_get_each_message_once() {
    let broker = Broker::shared();
    let (a, b) = (engine(broker), engine(broker));
    let topic = unique("compete");
    let fid = unique("worker");
    let mut on_a = serve(&a.url(), &fid, &topic, json!({"concurrency": 2}), |_| false).await;
    let mut on_b = serve(&b.url(), &fid, &topic, json!({"concurrency": 2}), |_| false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Published on engine A only: engine B's consumers compete for the same durable queue.
    let mut p = RawWorker::connect(&a.url()).await;
    const N: u64 = 300;
    for i in 0..N {
        let r = p
            .call(
                "iii::durable::publish",
                json!({"topic": topic, "data": {"i": i}}),
            )
            .await;
        assert!(r.get("error").is_none_or(Value::is_null), "{r}");
    }
    let mut count: HashMap<u64, usize> = HashMap::new();
    let (mut from_a, mut from_b) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count.len() < N as usize {
        tokio::select! {
            Some(v) = on_a.recv() => { from_a += 1; *count.entry(v["i"].as_u64().unwrap()).or_default() += 1; }
            Some(v) = on_b.recv() => { from_b += 1; *count.entry(v["i"].as_u64().unwrap()).or_default() += 1; }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    // Let any duplicate show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(v) = on_a.try_recv() {
        *count.entry(v["i"].as_u64().unwrap()).or_default() += 1;
    }
    while let Ok(v) = on_b.try_recv() {
        *count.entry(v["i"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(
        count.len(),
        N as usize,
        "delivered {} of {N} (engine A {from_a}, engine B {from_b})",
        count.len()
    );
    let dup: Vec<_> = count.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dup.is_empty(), "delivered more than once: {dup:?}");
    eprintln!("competing consumers: engine A handled {from_a}, engine B {from_b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_engines_unacknowledged_messages_reach_the_other() {
    let broker = Broker::shared();
    let a = engine(broker);
    let b = engine(broker);
    let topic = unique("failover");
    let fid = unique("worker");
    // Engine A's worker takes deliveries and never answers.
    let mut held = RawWorker::connect_named(&a.url(), "holder", None).await;
    held.register_function(&fid, json!({})).await;
    held.send(
        json!({"type": "registertrigger", "id": "t-hold", "trigger_type": "durable:subscriber",
        "function_id": fid, "config": {"topic": topic, "queue_config": {"concurrency": 4}}}),
    )
    .await;
    held.sync().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut p = RawWorker::connect(&a.url()).await;
    const N: u64 = 10;
    for i in 0..N {
        let r = p
            .call(
                "iii::durable::publish",
                json!({"topic": topic, "data": {"i": i}}),
            )
            .await;
        assert!(r.get("error").is_none_or(Value::is_null), "{r}");
    }
    let first = held.recv_where(|v| v["type"] == "invokefunction").await;
    assert!(first["data"]["i"].is_u64(), "engine A delivered: {first}");
    // Engine B's worker comes up, then engine A dies with deliveries in flight.
    let mut on_b = serve(&b.url(), &fid, &topic, json!({"concurrency": 4}), |_| false).await;
    drop(p);
    drop(held);
    drop(a);
    let mut got: HashMap<u64, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < N as usize {
        match tokio::time::timeout_at(deadline, on_b.recv()).await {
            Ok(Some(v)) => *got.entry(v["i"].as_u64().unwrap()).or_default() += 1,
            _ => break,
        }
    }
    assert_eq!(
        got.len(),
        N as usize,
        "engine B got {:?} of {N}",
        got.keys().collect::<Vec<_>>()
    );
}
