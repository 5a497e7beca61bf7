//! `state::*` and `stream::*` on the builtin kv component, their triggers, and durability.

use std::time::Duration;

use iii_tests::{run_iii, EngineProc, RawWorker};
use serde_json::{json, Value};

fn with_services(ws: u16, http: u16) -> String {
    format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}}}\n  - name: iii-state\n    config: {{adapter: {{name: kv}}}}\n  - name: iii-stream\n    config: {{port: 0}}\n"
    )
}

async fn ok(w: &mut RawWorker, f: &str, data: Value) -> Value {
    let r = w.call(f, data).await;
    assert!(r.get("error").is_none(), "{f} failed: {r}");
    r.get("result").cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn state_functions_follow_the_spec() {
    let e = EngineProc::start_with(with_services);
    let mut w = RawWorker::connect(&e.url()).await;
    assert_eq!(
        ok(&mut w, "state::get", json!({"scope": "users", "key": "u1"})).await,
        Value::Null
    );
    assert_eq!(
        ok(
            &mut w,
            "state::set",
            json!({"scope": "users", "key": "u1", "value": {"name": "ann"}})
        )
        .await,
        json!({"old_value": null, "new_value": {"name": "ann"}})
    );
    assert_eq!(
        ok(
            &mut w,
            "state::set",
            json!({"scope": "users", "key": "u1", "data": {"name": "bob"}})
        )
        .await,
        json!({"old_value": {"name": "ann"}, "new_value": {"name": "bob"}}),
        "`data` is an alias of `value`"
    );
    ok(
        &mut w,
        "state::set",
        json!({"scope": "users", "key": "u2", "value": 2}),
    )
    .await;
    ok(
        &mut w,
        "state::set",
        json!({"scope": "teams", "key": "t", "value": "x"}),
    )
    .await;
    assert_eq!(
        ok(&mut w, "state::list", json!({"scope": "users"})).await,
        json!([{"name": "bob"}, 2]),
        "values in insertion order"
    );
    assert_eq!(
        ok(&mut w, "state::list_groups", json!({})).await,
        json!({"groups": ["teams", "users"]})
    );
    let r = ok(
        &mut w,
        "state::update",
        json!({"scope": "users", "key": "u3", "ops": [
            {"type": "set", "path": "a", "value": 1},
            {"type": "increment", "path": "n", "by": 5},
            {"type": "merge", "path": ["profile", "address"], "value": {"city": "Oslo"}},
            {"type": "append", "path": "log", "value": "x"},
            {"type": "increment", "path": "a", "by": 2},
            {"type": "merge", "value": "not an object"},
            {"type": "remove", "path": "gone"}
        ]}),
    )
    .await;
    assert_eq!(r["old_value"], Value::Null);
    // Appending a string to a missing field gives the string itself (PROTOCOL.md §8.3).
    assert_eq!(
        r["new_value"],
        json!({"a": 3, "n": 5, "profile": {"address": {"city": "Oslo"}}, "log": "x"})
    );
    let errors = r["errors"].as_array().expect("errors listed");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["op_index"], 5);
    assert_eq!(errors[0]["code"], "merge.value.not_an_object");
    let r = ok(&mut w, "state::update", json!({"scope": "users", "key": "u3", "ops": [{"type": "decrement", "path": "n", "by": 1}, {"type": "increment", "path": "log", "by": 1}]})).await;
    assert_eq!(r["new_value"]["n"], 4);
    assert_eq!(r["errors"][0]["code"], "increment.not_number");
    assert_eq!(
        ok(
            &mut w,
            "state::delete",
            json!({"scope": "users", "key": "u2"})
        )
        .await,
        json!(2)
    );
    assert_eq!(
        ok(
            &mut w,
            "state::delete",
            json!({"scope": "users", "key": "u2"})
        )
        .await,
        Value::Null
    );
    let bad = w.call("state::set", json!({"scope": "users"})).await;
    assert_eq!(bad["error"]["code"], "deserialization_error");
    // The same through the CLI, as a user would.
    let port = e.ws_port.to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_iii(
            &[
                "trigger",
                "state::get",
                "scope=users",
                "key=u1",
                "--address",
                "127.0.0.1",
                "--port",
                &port,
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"name": "bob"})
    );
}

#[tokio::test]
async fn state_triggers_fire_on_created_updated_deleted_with_filters() {
    let e = EngineProc::start_with(with_services);
    let mut h = RawWorker::connect_named(&e.url(), "watcher", None).await;
    h.register_function("on::state", json!({})).await;
    h.register_function("cond::no_admin", json!({})).await;
    h.send(json!({"type": "registertrigger", "id": "s1", "trigger_type": "state", "function_id": "on::state", "config": {"scope": "users"}, "metadata": {"k": 1}})).await;
    h.send(json!({"type": "registertrigger", "id": "s2", "trigger_type": "state", "function_id": "on::state", "config": {"scope": "users", "key": "u9", "condition_function_id": "cond::no_admin"}})).await;
    h.sync().await;
    let mut w = RawWorker::connect(&e.url()).await;
    ok(
        &mut w,
        "state::set",
        json!({"scope": "other", "key": "x", "value": 1}),
    )
    .await; // filtered out
    ok(
        &mut w,
        "state::set",
        json!({"scope": "users", "key": "u1", "value": 1}),
    )
    .await;
    let inv = h.serve_one(|_| Value::Null).await;
    assert_eq!(
        inv["data"],
        json!({"type": "state", "event_type": "state:created", "scope": "users", "key": "u1", "old_value": null, "new_value": 1})
    );
    assert_eq!(inv["metadata"], json!({"k": 1}));
    ok(
        &mut w,
        "state::update",
        json!({"scope": "users", "key": "u1", "ops": [{"type": "increment", "path": "", "by": 1}]}),
    )
    .await;
    let inv = h.serve_one(|_| Value::Null).await;
    assert_eq!(inv["data"]["event_type"], "state:updated");
    assert_eq!(inv["data"]["old_value"], 1);
    assert_eq!(inv["data"]["new_value"], 2);
    ok(
        &mut w,
        "state::delete",
        json!({"scope": "users", "key": "u1"}),
    )
    .await;
    let inv = h.serve_one(|_| Value::Null).await;
    assert_eq!(inv["data"]["event_type"], "state:deleted");
    assert_eq!(inv["data"]["new_value"], Value::Null);
    // Condition false → only the unconditioned binding runs.
    ok(
        &mut w,
        "state::set",
        json!({"scope": "users", "key": "u9", "value": "admin"}),
    )
    .await;
    let mut handled = 0;
    for _ in 0..2 {
        let inv = h.recv_where(|v| v["type"] == "invokefunction").await;
        let answer = if inv["function_id"] == "cond::no_admin" {
            json!(false)
        } else {
            handled += 1;
            Value::Null
        };
        h.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": inv["function_id"], "result": answer})).await;
    }
    assert_eq!(handled, 1);
    h.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}

#[tokio::test]
async fn stream_functions_and_triggers() {
    let e = EngineProc::start_with(with_services);
    let mut h = RawWorker::connect_named(&e.url(), "watcher", None).await;
    h.register_function("on::chat", json!({})).await;
    h.send(json!({"type": "registertrigger", "id": "c1", "trigger_type": "stream", "function_id": "on::chat", "config": {"stream_name": "chat", "group_id": "room-1"}})).await;
    h.send(json!({"type": "registertrigger", "id": "c2", "trigger_type": "stream", "function_id": "on::chat", "config": {"group_id": "x"}})).await;
    let r = h
        .recv_where(|v| v["type"] == "triggerregistrationresult")
        .await;
    assert_eq!(r["id"], "c2");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream_name"),
        "{r}"
    );
    h.sync().await;
    let mut w = RawWorker::connect(&e.url()).await;
    let item = |id: &str| json!({"stream_name": "chat", "group_id": "room-1", "item_id": id});
    assert_eq!(ok(&mut w, "stream::set", json!({"stream_name": "chat", "group_id": "room-1", "item_id": "m1", "data": {"text": "hi"}})).await, json!({"old_value": null, "new_value": {"text": "hi"}}));
    let inv = h.serve_one(|_| Value::Null).await;
    let d = &inv["data"];
    assert_eq!(
        (
            d["type"].as_str(),
            d["streamName"].as_str(),
            d["groupId"].as_str(),
            d["id"].as_str()
        ),
        (Some("stream"), Some("chat"), Some("room-1"), Some("m1"))
    );
    assert_eq!(
        d["event"],
        json!({"type": "create", "data": {"text": "hi"}})
    );
    assert!(d["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    ok(&mut w, "stream::update", json!({"stream_name": "chat", "group_id": "room-1", "item_id": "m1", "ops": [{"type": "set", "path": "edited", "value": true}]})).await;
    let inv = h.serve_one(|_| Value::Null).await;
    assert_eq!(
        inv["data"]["event"],
        json!({"type": "update", "data": {"text": "hi", "edited": true}})
    );
    ok(
        &mut w,
        "stream::set",
        json!({"stream_name": "chat", "group_id": "room-1", "item_id": "m2", "data": 2}),
    )
    .await;
    h.serve_one(|_| Value::Null).await;
    ok(
        &mut w,
        "stream::set",
        json!({"stream_name": "chat", "group_id": "room-2", "item_id": "m1", "data": 3}),
    )
    .await; // other group: no fire
    assert_eq!(
        ok(&mut w, "stream::get", item("m1")).await,
        json!({"text": "hi", "edited": true})
    );
    assert_eq!(
        ok(
            &mut w,
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room-1"})
        )
        .await,
        json!([{"text": "hi", "edited": true}, 2])
    );
    assert_eq!(
        ok(
            &mut w,
            "stream::list_groups",
            json!({"stream_name": "chat"})
        )
        .await,
        json!(["room-1", "room-2"])
    );
    assert_eq!(
        ok(&mut w, "stream::list_all", json!({})).await,
        json!({"stream": [{"id": "chat", "groups": ["room-1", "room-2"]}], "count": 1})
    );
    ok(&mut w, "stream::send", json!({"stream_name": "chat", "group_id": "room-1", "type": "typing", "data": {"who": "ann"}})).await;
    let inv = h.serve_one(|_| Value::Null).await;
    assert_eq!(
        inv["data"]["event"],
        json!({"type": "event", "event": {"type": "typing", "data": {"who": "ann"}}})
    );
    assert_eq!(
        ok(&mut w, "stream::delete", item("m2")).await,
        json!({"old_value": 2})
    );
    let inv = h.serve_one(|_| Value::Null).await;
    assert_eq!(inv["data"]["event"], json!({"type": "delete", "data": 2}));
    assert_eq!(
        ok(&mut w, "stream::delete", item("m2")).await,
        json!({"old_value": null})
    );
    h.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    acknowledged_writes_survive(EngineProc::kill9_and_restart).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_sigterm() {
    acknowledged_writes_survive(EngineProc::sigterm_and_restart).await;
}

/// Writes, deletes and a stream write, each acknowledged; then `stop_and_restart` the engine
/// and read everything back.
async fn acknowledged_writes_survive(stop_and_restart: fn(&mut EngineProc)) {
    let mut e = EngineProc::start_with(with_services);
    let mut w = RawWorker::connect(&e.url()).await;
    for i in 0..50 {
        ok(
            &mut w,
            "state::set",
            json!({"scope": "durable", "key": format!("k{i}"), "value": {"i": i, "s": "é✓"}}),
        )
        .await;
    }
    ok(
        &mut w,
        "state::delete",
        json!({"scope": "durable", "key": "k7"}),
    )
    .await;
    ok(
        &mut w,
        "stream::set",
        json!({"stream_name": "s", "group_id": "g", "item_id": "i", "data": [1, 2, 3]}),
    )
    .await;
    // The last write was acknowledged: stop the engine right now.
    stop_and_restart(&mut e);
    let mut w = RawWorker::connect(&e.url()).await;
    let list = ok(&mut w, "state::list", json!({"scope": "durable"})).await;
    assert_eq!(list.as_array().unwrap().len(), 49);
    assert_eq!(
        ok(
            &mut w,
            "state::get",
            json!({"scope": "durable", "key": "k49"})
        )
        .await,
        json!({"i": 49, "s": "é✓"})
    );
    assert_eq!(
        ok(
            &mut w,
            "state::get",
            json!({"scope": "durable", "key": "k7"})
        )
        .await,
        Value::Null
    );
    assert_eq!(
        ok(
            &mut w,
            "stream::get",
            json!({"stream_name": "s", "group_id": "g", "item_id": "i"})
        )
        .await,
        json!([1, 2, 3])
    );
    assert!(
        e.dir.join(".iii/data/state").is_dir(),
        "data lives in the project directory"
    );
}

#[tokio::test]
async fn state_is_opt_in_when_a_config_file_lists_workers() {
    // As upstream: a config file enables only what it lists. (The embedded defaults include
    // state and stream; see cli.rs.)
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    let r = w
        .call("state::get", json!({"scope": "a", "key": "b"}))
        .await;
    assert_eq!(
        r["error"]["code"], "function_not_found",
        "state is opt-in when a config file lists workers"
    );
}

#[test]
fn bad_adapter_entries_fail_start_up_clearly() {
    for (adapter, expect) in [
        ("{path: ./missing.wasm}", "missing.wasm"),
        // A name no adapter has (`redis` is one now: it starts and retries while the server is down).
        ("{name: no-such-store}", "no-such-store"),
    ] {
        let d = std::env::temp_dir().join(format!("iii-adapter-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        let port = iii_tests::free_port();
        std::fs::write(d.join("config.yaml"), format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {port}}}\n  - name: iii-state\n    config: {{adapter: {adapter}}}\n")).unwrap();
        let (code, _, err) = run_iii(&[], Some(&d));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("state service") && err.contains(expect),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[tokio::test]
async fn custom_stream_providers_serve_their_stream_and_events_still_fire() {
    let e = EngineProc::start_with(with_services);
    let mut p = RawWorker::connect_named(&e.url(), "live-scores", None).await;
    p.register_function("stream::get(scores)", json!({})).await;
    p.register_function("stream::set(scores)", json!({})).await;
    p.register_function("on::scores", json!({})).await;
    p.send(json!({"type": "registertrigger", "id": "sc", "trigger_type": "stream", "function_id": "on::scores", "config": {"stream_name": "scores"}})).await;
    p.sync().await;
    let mut w = RawWorker::connect(&e.url()).await;
    let call = tokio::spawn(async move {
        let r = w
            .call(
                "stream::get",
                json!({"stream_name": "scores", "group_id": "g", "item_id": "match-1"}),
            )
            .await;
        (w, r)
    });
    let inv = p.serve_one(|_| json!({"home": 2, "away": 1})).await;
    assert_eq!(inv["function_id"], "stream::get(scores)");
    assert_eq!(
        inv["data"],
        json!({"stream_name": "scores", "group_id": "g", "item_id": "match-1"})
    );
    let (mut w, r) = call.await.unwrap();
    assert_eq!(r["result"], json!({"home": 2, "away": 1}));
    let call = tokio::spawn(async move {
        w.call("stream::set", json!({"stream_name": "scores", "group_id": "g", "item_id": "match-1", "data": {"home": 3}})).await
    });
    let inv = p
        .serve_one(|d| json!({"old_value": {"home": 2}, "new_value": d["data"]}))
        .await;
    assert_eq!(inv["function_id"], "stream::set(scores)");
    assert_eq!(
        call.await.unwrap()["result"],
        json!({"old_value": {"home": 2}, "new_value": {"home": 3}})
    );
    // The trigger fires from the provider's answer.
    let ev = p.serve_one(|_| Value::Null).await;
    assert_eq!(ev["function_id"], "on::scores");
    assert_eq!(
        ev["data"]["event"],
        json!({"type": "update", "data": {"home": 3}})
    );
    // Other streams still use the adapter.
    let mut w = RawWorker::connect(&e.url()).await;
    ok(
        &mut w,
        "stream::set",
        json!({"stream_name": "plain", "group_id": "g", "item_id": "i", "data": 1}),
    )
    .await;
    assert_eq!(
        ok(
            &mut w,
            "stream::get",
            json!({"stream_name": "plain", "group_id": "g", "item_id": "i"})
        )
        .await,
        json!(1)
    );
}
