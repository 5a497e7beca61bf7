//! Two engines on one Redis: what one writes the other reads and fires on; pub/sub fans out
//! to the subscribers of both; a cron job fires once per tick across them; stream events
//! reach a stream-socket subscriber on the other engine.

use std::time::Duration;

use iii_tests::redis::Server;
use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

use crate::{engine_config, ok};

fn engines(s: &Server, services: &str) -> (EngineProc, EngineProc) {
    let a = services.replace("URL", &s.url());
    (
        EngineProc::start_with(|ws, _| engine_config(ws, &a)),
        EngineProc::start_with(|ws, _| engine_config(ws, &a)),
    )
}

fn redis_adapter() -> &'static str {
    "{adapter: {name: redis, config: {redis_url: 'URL'}}}"
}

#[tokio::test]
async fn state_written_on_one_engine_is_read_and_fires_on_the_other() {
    let s = Server::start();
    let (a, b) = engines(
        &s,
        &format!("  - name: iii-state\n    config: {}\n", redis_adapter()),
    );
    let mut hb = RawWorker::connect_named(&b.url(), "watcher-b", None).await;
    hb.register_function("on::state", json!({})).await;
    hb.send(json!({"type": "registertrigger", "id": "s1", "trigger_type": "state", "function_id": "on::state", "config": {"scope": "users"}})).await;
    hb.sync().await;
    // The relay subscribes in the background; give it a moment before the write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut wa = RawWorker::connect(&a.url()).await;
    ok(
        &mut wa,
        "state::set",
        json!({"scope": "users", "key": "u1", "value": {"n": 1}}),
    )
    .await;
    let mut wb = RawWorker::connect(&b.url()).await;
    assert_eq!(
        ok(
            &mut wb,
            "state::get",
            json!({"scope": "users", "key": "u1"})
        )
        .await,
        json!({"n": 1})
    );
    let inv = tokio::time::timeout(Duration::from_secs(5), hb.serve_one(|_| Value::Null))
        .await
        .expect("B's state trigger fires for A's write");
    assert_eq!(inv["data"]["event_type"], "state:created");
    assert_eq!(inv["data"]["key"], "u1");
    // Exactly once: B does not also get its own relayed copy of nothing, nor a duplicate.
    hb.expect_none(Duration::from_millis(500), |v| {
        v["type"] == "invokefunction"
    })
    .await;
    // B's own write fires B's trigger once (not again through the relay).
    ok(
        &mut wb,
        "state::set",
        json!({"scope": "users", "key": "u2", "value": 2}),
    )
    .await;
    hb.serve_one(|_| Value::Null).await;
    hb.expect_none(Duration::from_millis(500), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}

#[tokio::test]
async fn pubsub_fans_out_to_subscribers_on_both_engines() {
    let s = Server::start();
    let (a, b) = engines(
        &s,
        &format!("  - name: iii-pubsub\n    config: {}\n", redis_adapter()),
    );
    let mut subs = Vec::new();
    for (n, e) in [("a", &a), ("b", &b)] {
        let mut w = RawWorker::connect_named(&e.url(), &format!("sub-{n}"), None).await;
        w.register_function(&format!("on::{n}"), json!({})).await;
        w.send(json!({"type": "registertrigger", "id": format!("t-{n}"), "trigger_type": "subscribe", "function_id": format!("on::{n}"), "config": {"topic": "news"}})).await;
        w.sync().await;
        subs.push(w);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut p = RawWorker::connect(&a.url()).await;
    ok(
        &mut p,
        "publish",
        json!({"topic": "news", "data": {"h": 1}}),
    )
    .await;
    for w in &mut subs {
        let inv = tokio::time::timeout(Duration::from_secs(5), w.serve_one(|_| Value::Null))
            .await
            .expect("each engine's subscriber gets the message");
        assert_eq!(inv["data"], json!({"h": 1}));
        w.expect_none(Duration::from_millis(300), |v| {
            v["type"] == "invokefunction"
        })
        .await;
    }
}

#[tokio::test]
async fn a_cron_job_fires_once_per_tick_across_engines() {
    let s = Server::start();
    let (a, b) = engines(
        &s,
        &format!("  - name: iii-cron\n    config: {}\n", redis_adapter()),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut tasks = Vec::new();
    for e in [&a, &b] {
        let mut w = RawWorker::connect_named(&e.url(), "cron-worker", None).await;
        w.register_function("jobs::tick", json!({})).await;
        w.send(json!({"type": "registertrigger", "id": "tick", "trigger_type": "cron", "function_id": "jobs::tick", "config": {"expression": "* * * * * * *"}})).await;
        w.sync().await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let inv = w.serve_one(|_| Value::Null).await;
                let _ = tx.send(
                    inv["data"]["scheduled_time"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }));
    }
    let mut ticks = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(t)) = tokio::time::timeout_at(end, rx.recv()).await {
        ticks.push(t);
    }
    for t in tasks {
        t.abort();
    }
    assert!(ticks.len() >= 3, "the job fired: {ticks:?}");
    let unique: std::collections::BTreeSet<&String> = ticks.iter().collect();
    assert_eq!(
        unique.len(),
        ticks.len(),
        "one fire per tick across the engines: {ticks:?}"
    );
}
