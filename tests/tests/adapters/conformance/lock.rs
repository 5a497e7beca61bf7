use std::time::Duration;

use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

use super::lock_backends;
use crate::engine_config;

#[tokio::test]
async fn cron_fires_behind_every_lock_backend() {
    for b in lock_backends() {
        let extra = format!(
            "  - name: iii-cron\n    config: {{adapter: {}}}\n",
            b.adapter
        );
        let e = EngineProc::start_with(|ws, _| engine_config(ws, &extra));
        let mut w = RawWorker::connect_named(&e.url(), "cron-worker", None).await;
        w.register_function("jobs::tick", json!({})).await;
        w.send(json!({"type": "registertrigger", "id": "tick", "trigger_type": "cron", "function_id": "jobs::tick", "config": {"expression": "* * * * * * *"}}))
            .await;
        for _ in 0..2 {
            let inv = tokio::time::timeout(Duration::from_secs(3), w.serve_one(|_| Value::Null))
                .await
                .unwrap_or_else(|_| panic!("{}: an every-second job fires within 3 s", b.name));
            assert_eq!(inv["data"]["job_id"], "tick", "{}", b.name);
        }
    }
}
