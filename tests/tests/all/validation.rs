//! Opt-in payload validation as a user configures it (issue 19 item 4, PROTOCOL.md §3.9): one
//! engine with a trusted listener (`validate` unset, so off), a `validate: warn` listener and a
//! `validate: enforce` listener. A worker on the trusted listener serves a function with a
//! `request_format` and `response_format`, one without, and provides a trigger type with a
//! `trigger_request_format`; raw-WebSocket callers on each listener call them.

use std::time::Duration;

use iii_tests::{free_port, EngineProc, RawWorker};
use serde_json::{json, Value};

struct Engine {
    e: EngineProc,
    warn: String,
    enforce: String,
}

fn engine() -> Engine {
    let (w, f) = (free_port(), free_port());
    let e = EngineProc::start_with(move |ws, _| {
        format!(
            "workers:\n\
             \x20 - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n\
             \x20 - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {w}, validate: warn}}\n\
             \x20 - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {f}, validate: enforce}}\n\
             \x20 - name: cron\n"
        )
    });
    Engine {
        e,
        warn: format!("ws://127.0.0.1:{w}/"),
        enforce: format!("ws://127.0.0.1:{f}/"),
    }
}

fn order_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["sku", "qty"],
        "properties": {
            "sku": {"type": "string"},
            "qty": {"type": "integer", "minimum": 1},
            "lines": {"type": "array", "items": {"type": "object", "required": ["n"],
                      "properties": {"n": {"type": "integer"}}}}
        }
    })
}

/// The serving worker on the trusted listener: `orders::create` (schemas), `orders::free`
/// (none), `orders::liar` (answers what its `response_format` forbids) and the trigger type
/// `hook` (a config schema). Every call is answered `{"seen": data}` (the liar: `42`).
async fn provider(url: &str) -> RawWorker {
    let mut p = RawWorker::connect_named(url, "orders", None).await;
    p.register_function(
        "orders::create",
        json!({"request_format": order_schema(), "response_format": {"type": "object"}}),
    )
    .await;
    p.register_function("orders::free", json!({})).await;
    p.register_function(
        "orders::liar",
        json!({"response_format": {"type": "object", "required": ["ok"]}}),
    )
    .await;
    p.send(
        json!({"type": "registertriggertype", "id": "hook", "description": "hooks",
        "trigger_request_format": {"type": "object", "required": ["path"],
                                   "properties": {"path": {"type": "string", "pattern": "^/"}}}}),
    )
    .await;
    p.sync().await;
    p
}

/// Serves calls on `p` in the background; each seen call's data goes to the returned channel.
fn serve(mut p: RawWorker) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Some(v) = p.recv_raw(Duration::from_secs(120)).await else {
                return;
            };
            match v["type"].as_str() {
                Some("invokefunction") => {
                    let result = if v["function_id"] == "orders::liar" {
                        json!(42)
                    } else {
                        json!({"seen": v["data"]})
                    };
                    let _ = tx.send(v["data"].clone());
                    p.send(json!({"type": "invocationresult", "invocation_id": v["invocation_id"], "result": result})).await;
                }
                Some("registertrigger") => {
                    p.send(json!({"type": "triggerregistrationresult", "id": v["id"],
                        "trigger_type": v["trigger_type"], "function_id": v["function_id"]}))
                        .await;
                }
                _ => {}
            }
        }
    });
    rx
}

fn good() -> Value {
    json!({"sku": "A-1", "qty": 2, "lines": [{"n": 1}]})
}

fn bad() -> Value {
    json!({"sku": "A-1", "qty": 2, "lines": [{"n": 1}, {"n": "two"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_bad_payloads_with_the_pointer_and_nothing_else() {
    let en = engine();
    let mut seen = serve(provider(&en.e.url()).await);
    let mut c = RawWorker::connect(&en.enforce).await;

    let r = c.call("orders::create", bad()).await;
    let err = &r["error"];
    assert_eq!(err["code"], "validation_error", "{r}");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("orders::create") && msg.contains("\"/lines/1/n\"") && msg.contains("integer"),
        "{msg}"
    );
    assert_eq!(err["details"]["instance_path"], "/lines/1/n", "{r}");
    assert_eq!(err["details"]["function_id"], "orders::create");
    assert_eq!(r["function_id"], "orders::create");

    let r = c.call("orders::create", json!({"sku": "A-1"})).await;
    assert_eq!(r["error"]["details"]["instance_path"], "", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("qty"));

    // The refused calls never reached the worker; a good one does, unchanged.
    let r = c.call("orders::create", good()).await;
    assert!(r.get("error").is_none(), "{r}");
    let data = seen.recv().await.unwrap();
    assert_eq!(data["lines"], good()["lines"], "{data}");

    // A function without a schema takes anything.
    let r = c.call("orders::free", json!([1, "x", null])).await;
    assert_eq!(r["result"]["seen"][0], 1, "{r}");
    seen.recv().await.unwrap();

    // Enqueue and void calls are checked too: the void one is dropped without reaching the worker.
    c.send(
        json!({"type": "invokefunction", "function_id": "orders::create", "data": bad(),
        "action": {"type": "void"}}),
    )
    .await;
    let r = c
        .call_with(
            "orders::create",
            bad(),
            json!({"action": {"type": "enqueue", "queue": "q"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "validation_error", "{r}");
    let r = c.call("orders::create", good()).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        seen.recv().await.unwrap()["qty"],
        2,
        "the void call never arrived"
    );

    // Results are not checked in enforce mode: the liar's answer is delivered.
    let r = c.call("orders::liar", json!({})).await;
    assert_eq!(r["result"], 42, "{r}");

    // Engine functions are checked against their own schemas; a missing input reads as {}.
    let r = c.call("engine::functions::list", Value::Null).await;
    assert!(r.get("error").is_none(), "{r}");
    let r = c
        .call(
            "engine::register_trigger",
            json!({"trigger_type": 5, "function_id": "orders::free"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "validation_error", "{r}");
    assert_eq!(
        r["error"]["details"]["instance_path"], "/trigger_type",
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_trigger_configs_through_the_trigger_failure_path() {
    let en = engine();
    let _seen = serve(provider(&en.e.url()).await);
    let mut c = RawWorker::connect_named(&en.enforce, "binder", None).await;
    c.register_function("binder::f", json!({})).await;

    // A worker-provided type: refused before the provider is asked.
    c.send(
        json!({"type": "registertrigger", "id": "t-bad", "trigger_type": "hook",
        "function_id": "binder::f", "config": {"path": "no-slash"}}),
    )
    .await;
    let r = c
        .recv_where(|v| v["type"] == "triggerregistrationresult" && v["id"] == "t-bad")
        .await;
    assert_eq!(r["error"]["code"], "validation_error", "{r}");
    assert_eq!(r["error"]["details"]["instance_path"], "/path", "{r}");
    assert_eq!(r["error"]["details"]["trigger_type"], "hook", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("hook"),
        "{r}"
    );

    // A builtin type (cron requires a string `expression`).
    c.send(
        json!({"type": "registertrigger", "id": "t-cron", "trigger_type": "cron",
        "function_id": "binder::f", "config": {"expression": 5}}),
    )
    .await;
    let r = c
        .recv_where(|v| v["type"] == "triggerregistrationresult" && v["id"] == "t-cron")
        .await;
    assert_eq!(r["error"]["code"], "validation_error", "{r}");
    assert_eq!(r["error"]["details"]["instance_path"], "/expression", "{r}");

    // engine::register_trigger from the same session: the same check, as the call's error.
    let r = c
        .call(
            "engine::register_trigger",
            json!({"trigger_type": "hook", "function_id": "binder::f", "config": {"path": 1}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "validation_error", "{r}");
    assert_eq!(r["error"]["details"]["instance_path"], "/path", "{r}");

    // Neither refused binding exists; a good one is registered.
    let list = c.call("engine::registered-triggers::list", json!({})).await;
    let text = list["result"].to_string();
    assert!(
        !text.contains("t-bad") && !text.contains("t-cron"),
        "{text}"
    );
    c.send(
        json!({"type": "registertrigger", "id": "t-good", "trigger_type": "hook",
        "function_id": "binder::f", "config": {"path": "/ok"}}),
    )
    .await;
    wait_binding(&mut c, "t-good").await;
}

/// Waits until `engine::registered-triggers::list` shows the binding `id`.
async fn wait_binding(c: &mut RawWorker, id: &str) {
    for _ in 0..500 {
        let list = c.call("engine::registered-triggers::list", json!({})).await;
        if list["result"].to_string().contains(id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("binding {id} was never registered");
}

/// A call's data as the worker got it, without the `_caller_worker_id` the engine adds.
fn strip_caller(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("_caller_worker_id");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_passes_and_logs_and_off_is_unchanged() {
    let en = engine();
    let mut seen = serve(provider(&en.e.url()).await);

    let mut w = RawWorker::connect(&en.warn).await;
    let r = w.call("orders::create", bad()).await;
    assert_eq!(
        strip_caller(r["result"]["seen"].clone()),
        bad(),
        "warn passes: {r}"
    );
    assert_eq!(strip_caller(seen.recv().await.unwrap()), bad());
    en.e.wait_for_log(&["validate: warn", "orders::create", "/lines/1/n"]);
    // Results are checked in warn mode (logged, still delivered).
    let r = w.call("orders::liar", json!({})).await;
    assert_eq!(r["result"], 42, "{r}");
    seen.recv().await.unwrap();
    en.e.wait_for_log(&["result passed anyway", "orders::liar"]);
    // A warned trigger config is registered.
    w.send(
        json!({"type": "registertrigger", "id": "w-hook", "trigger_type": "hook",
        "function_id": "orders::free", "config": {"path": 3}}),
    )
    .await;
    wait_binding(&mut w, "w-hook").await;

    // The trusted listener (no `validate`) never checks: upstream behaviour.
    let mut t = RawWorker::connect(&en.e.url()).await;
    let r = t.call("orders::create", json!("not even an object")).await;
    assert_eq!(r["result"]["seen"], "not even an object", "{r}");
    seen.recv().await.unwrap();
    let r = t
        .call("engine::register_trigger", json!({"trigger_type": 5}))
        .await;
    assert_eq!(r["error"]["code"], "deserialization_error", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_does_not_compile_is_logged_once_and_not_checked() {
    let en = engine();
    let mut p = RawWorker::connect_named(&en.e.url(), "broken", None).await;
    p.register_function(
        "broken::f",
        json!({"request_format": {"type": "not-a-type"}}),
    )
    .await;
    p.sync().await;
    let mut seen = serve(p);
    let mut c = RawWorker::connect(&en.enforce).await;
    for i in 0..3 {
        let r = c.call("broken::f", json!({"i": i})).await;
        assert_eq!(r["result"]["seen"]["i"], i, "{r}");
        seen.recv().await.unwrap();
    }
    let log =
        en.e.wait_for_log(&["request_format of function `broken::f` does not compile"]);
    assert_eq!(
        log.matches("request_format of function `broken::f` does not compile")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn a_bad_mode_fails_start_up_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("iii-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        "workers:\n  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0, validate: strict}\n",
    )
    .unwrap();
    let (code, out, err) = iii_tests::run_iii(&[], Some(&dir));
    assert_ne!(code, 0);
    let text = format!("{out}{err}");
    assert!(
        text.contains("config.validate") && text.contains("off, warn, enforce"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
