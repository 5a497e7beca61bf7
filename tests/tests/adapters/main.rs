//! Adapter backends against real servers (issue 15), black-box: the same behaviour over every
//! backend of a world (`conformance/`), each backend's own faults, and several engines on one
//! Redis or one RabbitMQ (`multi_*.rs`). Real servers only: `iii_tests::redis::Server`,
//! `iii_tests::rabbitmq::Broker`.

mod bridge;
mod conformance;
mod multi_rabbitmq;
mod multi_redis;
mod rabbitmq;
mod redis;
mod upstream_configs;

use iii_tests::RawWorker;
use serde_json::Value;

/// Calls `f` and returns its result, failing the test on an error.
pub async fn ok(w: &mut RawWorker, f: &str, data: Value) -> Value {
    let r = w.call(f, data).await;
    assert!(r.get("error").is_none(), "{f} failed: {r}");
    r.get("result").cloned().unwrap_or(Value::Null)
}

/// The `workers:` entries of an engine with a worker socket on `ws` and `extra` after it.
pub fn engine_config(ws: u16, extra: &str) -> String {
    format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}, handshake_timeout_ms: 2000}}\n{extra}")
}
