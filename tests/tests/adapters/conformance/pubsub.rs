use std::time::Duration;

use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

use super::bus_backends;
use crate::{engine_config, ok};

#[tokio::test]
async fn publish_reaches_the_subscribers_of_its_topic_on_every_bus() {
    for b in bus_backends() {
        let extra = format!(
            "  - name: iii-pubsub\n    config: {{adapter: {}}}\n",
            b.adapter
        );
        let e = EngineProc::start_with(|ws, _| engine_config(ws, &extra));
        let mut s = RawWorker::connect_named(&e.url(), "subs", None).await;
        s.register_function("on::orders", json!({})).await;
        s.send(json!({"type": "registertrigger", "id": "t1", "trigger_type": "subscribe", "function_id": "on::orders", "config": {"topic": "orders"}})).await;
        s.sync().await;
        let mut p = RawWorker::connect(&e.url()).await;
        ok(&mut p, "publish", json!({"topic": "other", "data": 0})).await;
        ok(
            &mut p,
            "publish",
            json!({"topic": "orders", "data": {"n": 1}}),
        )
        .await;
        let inv = tokio::time::timeout(Duration::from_secs(5), s.serve_one(|_| Value::Null))
            .await
            .unwrap_or_else(|_| panic!("{}: no delivery", b.name));
        assert_eq!(inv["function_id"], "on::orders", "{}", b.name);
        assert_eq!(inv["data"], json!({"n": 1}), "{}", b.name);
        s.expect_none(Duration::from_millis(300), |v| {
            v["type"] == "invokefunction"
        })
        .await;
    }
}
