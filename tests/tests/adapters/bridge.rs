//! The `bridge` adapter and the `iii-bridge` worker between two engines (spec section 5.5,
//! 7.4, 8.1, 8.2): raw-protocol workers on each engine.

use std::time::{Duration, Instant};

use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

/// An engine whose state and stream delegate to `backend` through the bridge adapter.
fn bridged_engine(backend: &EngineProc) -> EngineProc {
    EngineProc::start(&format!(
        "  - name: state\n    config: {{adapter: {{name: bridge, config: {{bridge_url: '{url}', timeout_ms: 3000}}}}}}\n  - name: stream\n    config: {{port: 0, adapter: {{name: bridge, config: {{bridge_url: '{url}', timeout_ms: 3000}}}}}}\n",
        url = backend.url()
    ))
}

fn backend() -> EngineProc {
    EngineProc::start("  - name: state\n    config: {adapter: {name: kv, config: {store_method: in_memory}}}\n  - name: stream\n    config: {port: 0, adapter: {name: kv, config: {store_method: in_memory}}}\n")
}

/// Calls until the result has no error (the bridge connects in the background), at most 20 s.
async fn call_ok(w: &mut RawWorker, f: &str, data: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = w.call(f, data.clone()).await;
        if r.get("error").is_none_or(Value::is_null) {
            return r["result"].clone();
        }
        assert!(Instant::now() < deadline, "{f} still fails after 20 s: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_stream_live_on_the_remote_engine() {
    let b = backend();
    let a = bridged_engine(&b);
    let mut wa = RawWorker::connect(&a.url()).await;
    let mut wb = RawWorker::connect(&b.url()).await;

    let r = call_ok(
        &mut wa,
        "state::set",
        json!({"scope": "s", "key": "k", "value": {"n": 1}}),
    )
    .await;
    assert_eq!(r, json!({"old_value": null, "new_value": {"n": 1}}));
    // The write is on B, not on A.
    let r = wb
        .call("state::get", json!({"scope": "s", "key": "k"}))
        .await;
    assert_eq!(r["result"], json!({"n": 1}), "{r}");
    let r = call_ok(
        &mut wa,
        "state::update",
        json!({"scope": "s", "key": "k", "ops": [{"type": "increment", "path": "n", "by": 2}]}),
    )
    .await;
    assert_eq!(r["new_value"], json!({"n": 3}), "{r}");
    let r = call_ok(&mut wa, "state::list_groups", json!({})).await;
    assert_eq!(r, json!({"groups": ["s"]}));
    let r = call_ok(&mut wa, "state::delete", json!({"scope": "s", "key": "k"})).await;
    assert_eq!(r, json!({"n": 3}));
    let r = wb
        .call("state::get", json!({"scope": "s", "key": "k"}))
        .await;
    assert_eq!(r["result"], Value::Null, "{r}");

    let item = json!({"stream_name": "chat", "group_id": "room", "item_id": "m1"});
    let mut set = item.clone();
    set["data"] = json!({"text": "hi"});
    call_ok(&mut wa, "stream::set", set).await;
    let r = wb.call("stream::get", item.clone()).await;
    assert_eq!(r["result"], json!({"text": "hi"}), "{r}");
    let r = call_ok(
        &mut wa,
        "stream::list_groups",
        json!({"stream_name": "chat"}),
    )
    .await;
    assert_eq!(r, json!(["room"]));
    let r = call_ok(&mut wa, "stream::delete", item.clone()).await;
    assert_eq!(r, json!({"old_value": {"text": "hi"}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_remote_engine_is_a_clear_error_and_recovery_needs_no_restart() {
    let mut b = backend();
    let a = bridged_engine(&b);
    let mut wa = RawWorker::connect(&a.url()).await;
    call_ok(
        &mut wa,
        "state::set",
        json!({"scope": "s", "key": "k", "value": 1}),
    )
    .await;

    let _ = b.child.kill();
    let _ = b.child.wait();
    // Every call fails at once with the adapter's code and a message naming the remote.
    let url = b.url();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        let r = wa
            .call("state::get", json!({"scope": "s", "key": "k"}))
            .await;
        if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "state::get still answers with B dead: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(err["code"], "GET_ERROR", "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("bridge") && msg.contains(&url), "{msg}");
    let t = Instant::now();
    let r = wa
        .call(
            "stream::get",
            json!({"stream_name": "x", "group_id": "g", "item_id": "i"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "STREAM_GET_ERROR", "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a down remote must not stall callers"
    );

    // Same ports: the bridge reconnects by itself.
    b.kill9_and_restart();
    call_ok(
        &mut wa,
        "state::set",
        json!({"scope": "s", "key": "k", "value": 2}),
    )
    .await;
    let mut wb = RawWorker::connect(&b.url()).await;
    let r = wb
        .call("state::get", json!({"scope": "s", "key": "k"}))
        .await;
    assert_eq!(r["result"], json!(2), "{r}");
}

/// Starts the engine on `workers` (YAML list items) and returns its output once it exits,
/// which it must do within 30 s (a refused configuration).
pub(crate) fn refused(workers: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: 0}}\n{workers}"),
    )
    .unwrap();
    let mut child = std::process::Command::new(iii_tests::iii_bin())
        .args(["-c", "config.yaml"])
        .current_dir(dir.path())
        .env("III_WATCH_CONFIG", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started anyway: {text}");
    text
}

#[test]
fn a_bad_bridge_url_is_refused_at_start() {
    let err = refused("  - name: state\n    config: {adapter: {name: bridge, config: {bridge_url: 'http://x:1'}}}\n");
    assert!(err.contains("bridge_url") && err.contains("ws://"), "{err}");
    let err = refused("  - name: stream\n    config: {port: 0, adapter: {name: bridge}}\n");
    assert!(err.contains("bridge_url"), "{err}");
}

/// Engine B serves `math::add` from a raw worker; engine A forwards, exposes and invokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_worker_forwards_exposes_and_invokes() {
    let b = EngineProc::start("");
    let a = EngineProc::start(&format!(
        "  - name: iii-bridge\n    config:\n      url: '{}'\n      forward:\n        - {{local_function: remote.add, remote_function: math::add, timeout_ms: 2000}}\n      expose:\n        - {{local_function: local::echo, remote_function: a::echo}}\n",
        b.url()
    ));
    let mut server = RawWorker::connect(&b.url()).await;
    server.register_function("math::add", json!({})).await;
    server.sync().await;
    let serve = tokio::spawn(async move {
        loop {
            server
                .serve_one(
                    |d| json!({"c": d["a"].as_i64().unwrap_or(0) + d["b"].as_i64().unwrap_or(0)}),
                )
                .await;
        }
    });

    let mut wa = RawWorker::connect(&a.url()).await;
    let r = call_ok(&mut wa, "remote.add", json!({"a": 2, "b": 3})).await;
    assert_eq!(r, json!({"c": 5}));
    let r = call_ok(
        &mut wa,
        "bridge.invoke",
        json!({"function_id": "math::add", "data": {"a": 1, "b": 1}}),
    )
    .await;
    assert_eq!(r, json!({"c": 2}));
    let r = wa
        .call("bridge.invoke", json!({"function_id": "nope::missing"}))
        .await;
    assert_eq!(r["error"]["code"], "bridge_error", "{r}");
    assert_eq!(r["error"]["details"]["code"], "function_not_found", "{r}");
    let r = wa
        .call(
            "bridge.invoke_async",
            json!({"function_id": "math::add", "data": {"a": 1, "b": 2}}),
        )
        .await;
    assert!(r.get("error").is_none_or(Value::is_null), "{r}");

    // Expose: a worker on B calls `a::echo`, which runs A's `local::echo`.
    let mut echo = RawWorker::connect(&a.url()).await;
    echo.register_function("local::echo", json!({})).await;
    echo.sync().await;
    let echo_task = tokio::spawn(async move {
        loop {
            echo.serve_one(|d| json!({"echo": d.clone()})).await;
        }
    });
    let mut wb = RawWorker::connect(&b.url()).await;
    let r = call_ok(&mut wb, "a::echo", json!({"x": 1})).await;
    assert_eq!(r, json!({"echo": {"x": 1}}));
    serve.abort();
    echo_task.abort();
}

#[test]
fn bridge_worker_config_is_checked() {
    // Upstream's sample keys `service_id`/`service_name` are not bridge keys (spec section 7.4).
    let err =
        refused("  - name: iii-bridge\n    config: {url: 'ws://127.0.0.1:1', service_id: x}\n");
    assert!(err.contains("service_id"), "{err}");
    let err = refused("  - name: iii-bridge\n    config: {url: 'ws://127.0.0.1:1', forward: [{local_function: a}]}\n");
    assert!(err.contains("remote_function"), "{err}");
}

/// A `state` trigger on the bridged engine fires for writes made on either engine, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_triggers_fire_on_the_bridged_engine_for_writes_on_either_engine() {
    let b = backend();
    let a = bridged_engine(&b);
    // Named: the registrations apply at once, not after the namespace grace period.
    let mut watcher = RawWorker::connect_named(&a.url(), "watcher", None).await;
    watcher.register_function("watch::state", json!({})).await;
    watcher
        .send(json!({"type": "registertrigger", "id": "t1", "trigger_type": "state", "function_id": "watch::state", "config": {"scope": "orders"}}))
        .await;
    watcher.sync().await;
    let mut wa = RawWorker::connect(&a.url()).await;
    // call_ok waits until the bridge is connected; its relay is bound on B by then.
    call_ok(
        &mut wa,
        "state::set",
        json!({"scope": "orders", "key": "o1", "value": 1}),
    )
    .await;
    let inv = watcher.serve_one(|_| Value::Null).await;
    assert_eq!(inv["data"]["key"], "o1", "{inv}");
    assert_eq!(inv["data"]["event_type"], "state:created", "{inv}");

    let mut wb = RawWorker::connect(&b.url()).await;
    let r = wb
        .call(
            "state::set",
            json!({"scope": "orders", "key": "o2", "value": 2}),
        )
        .await;
    assert!(r.get("error").is_none_or(Value::is_null), "{r}");
    let inv = watcher.serve_one(|_| Value::Null).await;
    assert_eq!(inv["data"]["key"], "o2", "{inv}");
    assert_eq!(inv["data"]["new_value"], 2, "{inv}");
    // Other scopes do not match, and nothing fired twice.
    wb.call(
        "state::set",
        json!({"scope": "other", "key": "x", "value": 0}),
    )
    .await;
    watcher
        .expect_none(Duration::from_millis(500), |v| {
            v["type"] == "invokefunction"
        })
        .await;
}

/// `iii::durable::publish` on an engine with the queue's bridge adapter reaches the
/// subscribers of the remote engine; a down remote engine is a clear error, not a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_publishes_go_to_the_remote_engine() {
    let b = EngineProc::start("  - name: queue\n    config: {}\n");
    let a = EngineProc::start(&format!(
        "  - name: queue\n    config: {{adapter: {{name: bridge, config: {{bridge_url: '{}', timeout_ms: 3000}}}}}}\n",
        b.url()
    ));
    let mut sub = RawWorker::connect_named(&b.url(), "subscriber", None).await;
    sub.register_function("orders::on_created", json!({})).await;
    sub.send(json!({"type": "registertrigger", "id": "d1", "trigger_type": "durable:subscriber", "function_id": "orders::on_created", "config": {"topic": "orders.created"}}))
        .await;
    sub.sync().await;

    let mut wa = RawWorker::connect(&a.url()).await;
    call_ok(
        &mut wa,
        "iii::durable::publish",
        json!({"topic": "orders.created", "data": {"id": 7}}),
    )
    .await;
    let inv = sub.serve_one(|_| Value::Null).await;
    assert_eq!(inv["function_id"], "orders::on_created", "{inv}");
    assert_eq!(inv["data"], json!({"id": 7}), "{inv}");

    // Nothing listens here: the publish fails at once with the bridge's reason.
    let down = EngineProc::start(&format!(
        "  - name: queue\n    config: {{adapter: {{name: bridge, config: {{bridge_url: 'ws://127.0.0.1:{}'}}}}}}\n",
        iii_tests::free_port()
    ));
    let mut wd = RawWorker::connect(&down.url()).await;
    let r = wd
        .call("iii::durable::publish", json!({"topic": "t", "data": 1}))
        .await;
    let e = &r["error"];
    assert_eq!(e["code"], "enqueue_error", "{r}");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("bridge"),
        "{r}"
    );
}
