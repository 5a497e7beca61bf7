//! Durable queues through the official Rust SDK (`iii-sdk` 0.25.0, issue 10): 10 000
//! messages published at concurrency 16 reach both subscriber functions (duplicates counted
//! and reported), and `TriggerAction::Enqueue` on a named queue runs the function later.
#![allow(
    deprecated,
    reason = "register_trigger is the SDK's only call for a durable:subscriber binding against a 0.23-compatible engine (observe needs an extension it does not advertise)"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iii_sdk::protocol::{RegisterTriggerInput, TriggerRequest};
use iii_sdk::{RegisterFunction, TriggerAction};
use iii_sdk_rust_tests::*;
use iii_tests::EngineProc;
use serde_json::{json, Value};
use tokio::sync::Mutex;

const QUEUE: &str = "  - name: iii-queue\n    config:\n      queue_configs:\n        payment: {max_retries: 3, backoff_ms: 20}\n";

type Seen = Arc<Mutex<HashMap<u64, u32>>>;

fn recording(c: &iii_sdk::IIIClient, function_id: &str) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    c.register_function(
        function_id,
        RegisterFunction::new_async(move |input: Value| {
            let s = s.clone();
            async move {
                if let Some(i) = input["i"].as_u64() {
                    *s.lock().await.entry(i).or_default() += 1;
                }
                Ok(Value::Null)
            }
        }),
    );
    seen
}

async fn wait_count(seen: &Seen, n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let got = seen.lock().await.len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_publishes_at_c16_reach_both_subscriber_functions() {
    const N: u64 = 10_000;
    let e = EngineProc::start(QUEUE);
    let subs = connect_ready(&e.url(), &unique_name("q-subs")).await;
    let a = recording(&subs, "rsq::a");
    let b = recording(&subs, "rsq::b");
    for f in ["rsq::a", "rsq::b"] {
        subs.register_trigger(RegisterTriggerInput::new(
            "durable:subscriber",
            f,
            json!({"topic": "fan", "queue_config": {"concurrency": 16}}),
        ))
        .expect("subscribe");
    }
    let publisher = Arc::new(connect_ready(&e.url(), &unique_name("q-pub")).await);
    let deadline = Instant::now() + WAIT;
    loop {
        let s = call(
            &publisher,
            "engine::queue::topic_stats",
            json!({"topic": "fan"}),
        )
        .await
        .expect("stats");
        if s["consumer_count"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "subscribers never bound: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 16 publishers, each with one publish outstanding.
    let mut tasks = Vec::new();
    for lane in 0..16u64 {
        let p = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = lane;
            while i < N {
                call_timeout(
                    &p,
                    "iii::durable::publish",
                    json!({"topic": "fan", "data": {"i": i}}),
                    30_000,
                )
                .await
                .expect("publish acknowledged");
                i += 16;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (name, seen) in [("rsq::a", &a), ("rsq::b", &b)] {
        let got = wait_count(seen, N as usize, Duration::from_secs(240)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let map = seen.lock().await;
        let dups: u32 = map.values().map(|n| n - 1).sum();
        eprintln!("{name}: {got} distinct of {N} delivered, {dups} duplicate deliveries");
        assert_eq!(map.len() as u64, N, "{name} missed messages");
    }
    stop(&subs);
    stop(&publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_action_returns_a_receipt_and_the_function_runs_later() {
    let e = EngineProc::start(QUEUE);
    let w = connect_ready(&e.url(), &unique_name("q-enq")).await;
    let seen = recording(&w, "rsq::pay");
    wait_for_function(&w, "rsq::pay").await;
    let mut req = TriggerRequest::new("rsq::pay", json!({"i": 42}));
    req.action = Some(TriggerAction::Enqueue {
        queue: "payment".into(),
    });
    let r = w.trigger(req).await.expect("enqueue");
    assert_eq!(
        r["messageReceiptId"].as_str().map(str::len),
        Some(36),
        "{r}"
    );
    assert_eq!(wait_count(&seen, 1, WAIT).await, 1);
    let mut req = TriggerRequest::new("rsq::pay", json!({}));
    req.action = Some(TriggerAction::Enqueue {
        queue: "nope".into(),
    });
    let (code, message, _) = remote_error(w.trigger(req).await);
    assert_eq!(code, "enqueue_error", "{message}");
    assert!(message.contains("nope"), "{message}");
    stop(&w);
}
