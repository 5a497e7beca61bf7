//! The `configuration` service (PROTOCOL.md §5.5, §4.6.7, §8.7) through the real `iii` and a
//! raw worker: the functions and their errors, `${VAR}` expansion, the trigger, the watched
//! `./config/<id>.yaml` files, and `ttl_seconds`.

use std::time::{Duration, Instant};

use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

fn schema() -> Value {
    json!({"type": "object", "required": ["url"], "additionalProperties": false, "properties": {
        "url": {"type": "string", "minLength": 1},
        "pool": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}}})
}

async fn ok(w: &mut RawWorker, f: &str, data: Value) -> Value {
    let r = w.call(f, data).await;
    assert!(r.get("error").is_none_or(Value::is_null), "{f}: {r}");
    r["result"].clone()
}

async fn err(w: &mut RawWorker, f: &str, data: Value) -> Value {
    let r = w.call(f, data).await;
    assert!(r["error"].is_object(), "{f} should fail: {r}");
    r["error"].clone()
}

async fn register(w: &mut RawWorker, id: &str, initial: Value) -> Value {
    ok(
        w,
        "configuration::register",
        json!({"id": id, "name": "App database", "description": "where app data lives",
            "schema": schema(), "initial_value": initial}),
    )
    .await
}

#[tokio::test]
async fn functions_errors_and_expansion() {
    let e = EngineProc::start_with_env(
        |ws, http| {
            format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: http\n    config: {{host: 127.0.0.1, port: {http}}}\n")
        },
        &[("III_BB_DB_URL", "pg://from-env")],
    );
    let mut w = RawWorker::connect(&e.url()).await;
    let entry = register(&mut w, "app.db", json!({"url": "${III_BB_DB_URL}"})).await;
    assert_eq!(entry["id"], "app.db");
    assert_eq!(entry["value"], json!({"url": "${III_BB_DB_URL}"}));

    // Expanded unless raw; a lone placeholder in an integer field becomes a number.
    let set = ok(
        &mut w,
        "configuration::set",
        json!({"id": "app.db", "value": {"url": "${III_BB_DB_URL}", "pool": {"size": "${III_BB_POOL:6}"}}}),
    )
    .await;
    assert_eq!(set["old_value"], json!({"url": "${III_BB_DB_URL}"}));
    let got = ok(&mut w, "configuration::get", json!({"id": "app.db"})).await;
    assert_eq!(
        got,
        json!({"id": "app.db", "value": {"url": "pg://from-env", "pool": {"size": 6}}})
    );
    let raw = ok(
        &mut w,
        "configuration::get",
        json!({"id": "app.db", "raw": true}),
    )
    .await;
    assert_eq!(raw["value"]["pool"]["size"], "${III_BB_POOL:6}");

    // Invalid values: the validator's message with the JSON pointer; the old value stays.
    let bad = err(
        &mut w,
        "configuration::set",
        json!({"id": "app.db", "value": {"url": "x", "pool": {"size": 0}}}),
    )
    .await;
    assert_eq!(bad["code"], "SCHEMA_INVALID");
    let msg = bad["message"].as_str().unwrap();
    assert!(
        msg.contains("/pool/size") && msg.contains("minimum"),
        "{msg}"
    );
    let extra = err(
        &mut w,
        "configuration::set",
        json!({"id": "app.db", "value": {"url": "x", "colour": "red"}}),
    )
    .await;
    assert_eq!(extra["code"], "SCHEMA_INVALID");
    assert!(
        extra["message"].as_str().unwrap().contains("colour"),
        "{extra}"
    );
    let still = ok(
        &mut w,
        "configuration::get",
        json!({"id": "app.db", "raw": true}),
    )
    .await;
    assert_eq!(still["value"], raw["value"]);

    assert_eq!(
        err(
            &mut w,
            "configuration::set",
            json!({"id": "nope", "value": {}})
        )
        .await["code"],
        "NOT_REGISTERED"
    );
    assert_eq!(
        err(
            &mut w,
            "configuration::set",
            json!({"id": "../x", "value": {}})
        )
        .await["code"],
        "INVALID_ID"
    );
    assert_eq!(
        err(&mut w, "configuration::get", json!({"id": "nope"})).await["code"],
        "NOT_FOUND"
    );
    assert_eq!(
        err(
            &mut w,
            "configuration::register",
            json!({"id": "s", "schema": {"type": "bogus"}})
        )
        .await["code"],
        "SCHEMA_INVALID"
    );
    assert_eq!(
        err(
            &mut w,
            "configuration::set",
            json!({"id": "app.db", "value": {"url": "${III_BB_NEVER_SET}"}})
        )
        .await["code"],
        "EXPAND_FAILED"
    );

    register(&mut w, "a.cache", json!({"url": "mem://"})).await;
    let list = ok(&mut w, "configuration::list", json!({})).await;
    let ids: Vec<&str> = list["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.starts_with(&["a.cache", "app.db"]), "{ids:?}");
    assert!(list["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("value").is_none()));
    let s = ok(&mut w, "configuration::schema", json!({"id": "app.db"})).await;
    assert_eq!(s["schema"], schema());
    assert_eq!(s["name"], "App database");

    // Stored as YAML under ./config and kept across a restart.
    let text = std::fs::read_to_string(e.dir.join("config/app.db.yaml")).unwrap();
    assert!(
        text.contains("id: app.db") && text.contains("III_BB_POOL"),
        "{text}"
    );
    drop(w);
    let mut e = e;
    e.sigterm_and_restart();
    let mut w = RawWorker::connect(&e.url()).await;
    let after = ok(
        &mut w,
        "configuration::get",
        json!({"id": "app.db", "raw": true}),
    )
    .await;
    assert_eq!(after["value"], raw["value"]);
}

/// A worker bound to the `configuration` trigger with `config`; returns it.
async fn subscriber(e: &EngineProc, function_id: &str, config: Value) -> RawWorker {
    let mut w = RawWorker::connect_named(&e.url(), function_id, None).await;
    w.register_function(function_id, json!({})).await;
    w.send(
        json!({"type": "registertrigger", "id": format!("t-{function_id}"),
        "trigger_type": "configuration", "function_id": function_id, "config": config}),
    )
    .await;
    // Only a refused binding is answered; a round trip shows it was applied.
    w.sync().await;
    w.expect_none(Duration::from_millis(50), |v| {
        v["type"] == "triggerregistrationresult"
    })
    .await;
    w
}

async fn next_event(w: &mut RawWorker) -> Value {
    let inv = w.recv_where(|v| v["type"] == "invokefunction").await;
    w.send(
        json!({"type": "invocationresult", "invocation_id": inv["invocation_id"],
        "function_id": inv["function_id"], "result": null}),
    )
    .await;
    inv["data"].clone()
}

#[tokio::test]
async fn the_trigger_fires_on_registered_and_updated() {
    let e = EngineProc::start("");
    let mut sub = subscriber(&e, "cfg::on_change", json!({"configuration_id": "app.db"})).await;
    let mut upd = subscriber(
        &e,
        "cfg::on_update",
        json!({"event_types": ["configuration:updated"]}),
    )
    .await;
    let mut w = RawWorker::connect(&e.url()).await;
    register(&mut w, "other", json!({"url": "o"})).await;
    register(&mut w, "app.db", json!({"url": "a"})).await;
    let reg = next_event(&mut sub).await;
    assert_eq!(reg["type"], "configuration");
    assert_eq!(reg["event_type"], "configuration:registered");
    assert_eq!(reg["id"], "app.db");
    assert_eq!(reg["schema"], schema());
    assert_eq!(reg["new_value"], json!({"url": "a"}));
    ok(
        &mut w,
        "configuration::set",
        json!({"id": "app.db", "value": {"url": "b"}}),
    )
    .await;
    let up = next_event(&mut sub).await;
    assert_eq!(up["event_type"], "configuration:updated");
    assert_eq!(up["old_value"], json!({"url": "a"}));
    assert_eq!(up["new_value"], json!({"url": "b"}));
    // The event_types filter saw only the update.
    let only = next_event(&mut upd).await;
    assert_eq!(only["event_type"], "configuration:updated");
    upd.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;

    // A bad trigger config is refused.
    let mut bad = RawWorker::connect_named(&e.url(), "bad", None).await;
    bad.register_function("cfg::bad", json!({})).await;
    bad.send(
        json!({"type": "registertrigger", "id": "t-bad", "trigger_type": "configuration",
        "function_id": "cfg::bad", "config": {"event_types": ["configuration:changed"]}}),
    )
    .await;
    let r = bad
        .recv_where(|v| v["type"] == "triggerregistrationresult")
        .await;
    assert!(r["error"].is_object(), "{r}");
}

async fn wait_value(w: &mut RawWorker, id: &str, want: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = w.call("configuration::get", json!({"id": id})).await;
        let v = r["result"]["value"].clone();
        if &v == want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn external_edits_are_validated_like_set() {
    let e = EngineProc::start("");
    let mut sub = subscriber(
        &e,
        "cfg::edits",
        json!({"configuration_id": "app.db", "event_types": ["configuration:updated"]}),
    )
    .await;
    let mut w = RawWorker::connect(&e.url()).await;
    register(&mut w, "app.db", json!({"url": "a"})).await;
    let file = e.dir.join("config/app.db.yaml");
    let write = |value: &str| {
        std::fs::write(
            &file,
            format!(
                "id: app.db\nname: App database\ndescription: edited by hand\nvalue: {value}\n"
            ),
        )
        .unwrap()
    };

    // Schema-invalid: refused with a logged error naming the file; the old value is served.
    write("{url: ''}");
    let log = e.wait_for_log(&["external edit rejected"]);
    assert!(log.contains("app.db.yaml"), "{log}");
    // Not YAML at all.
    std::fs::write(&file, "id: app.db\nvalue: [unclosed\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.log().matches("external edit rejected").count() < 2 {
        assert!(Instant::now() < deadline, "{}", e.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        wait_value(&mut w, "app.db", &json!({"url": "a"})).await,
        json!({"url": "a"})
    );
    sub.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;

    // A valid edit applies like a set and fires the trigger.
    write("{url: 'edited://'}");
    let ev = next_event(&mut sub).await;
    assert_eq!(ev["new_value"], json!({"url": "edited://"}));
    assert_eq!(ev["old_value"], json!({"url": "a"}));
    assert_eq!(
        wait_value(&mut w, "app.db", &json!({"url": "edited://"})).await,
        json!({"url": "edited://"})
    );
}

#[tokio::test]
async fn ttl_deletes_entries_nothing_subscribes_to() {
    let e = EngineProc::start("  - name: configuration\n    config: {ttl_seconds: 1}\n");
    let mut sub = subscriber(&e, "cfg::kept", json!({"configuration_id": "kept"})).await;
    let mut w = RawWorker::connect(&e.url()).await;
    register(&mut w, "kept", json!({"url": "k"})).await;
    register(&mut w, "lonely", json!({"url": "l"})).await;
    let _registered = next_event(&mut sub).await;
    assert!(e.dir.join("config/lonely.yaml").exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = w.call("configuration::get", json!({"id": "lonely"})).await;
        if r["error"]["code"] == "NOT_FOUND" {
            break;
        }
        assert!(Instant::now() < deadline, "lonely never expired: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!e.dir.join("config/lonely.yaml").exists());
    ok(&mut w, "configuration::get", json!({"id": "kept"})).await;
}

#[tokio::test]
async fn builtin_services_are_entries_applied_by_tier() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    let s = ok(&mut w, "configuration::schema", json!({"id": "iii-http"})).await;
    assert_eq!(s["schema"]["properties"]["cors"]["x-apply"], "live");
    assert_eq!(s["schema"]["properties"]["port"]["x-apply"], "rebind");
    // The value the service runs with (its config.yaml block).
    let running = ok(&mut w, "configuration::get", json!({"id": "iii-http"})).await;
    assert_eq!(running["value"]["host"], "127.0.0.1", "{running}");
    assert_eq!(running["value"]["default_timeout"], 5000, "{running}");
    let list = ok(&mut w, "configuration::list", json!({})).await;
    assert!(
        list["configurations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "iii-observability"),
        "{list}"
    );

    // Refused by the schema, with the pointer; the service is untouched.
    let mut bad = running["value"].clone();
    bad["port"] = json!("not-a-port");
    let r = err(
        &mut w,
        "configuration::set",
        json!({"id": "iii-http", "value": bad}),
    )
    .await;
    assert_eq!(r["code"], "SCHEMA_INVALID");
    assert!(r["message"].as_str().unwrap().contains("/port"), "{r}");

    // CORS is live: the set reports the tier, the value is stored for the next start.
    let mut v = running["value"].clone();
    v["cors"] = json!({"allowed_origins": ["https://app.example"]});
    let r = ok(
        &mut w,
        "configuration::set",
        json!({"id": "iii-http", "value": v}),
    )
    .await;
    assert_eq!(r["applied"]["tier"], "live", "{r}");
    let got = ok(&mut w, "configuration::get", json!({"id": "iii-http"})).await;
    assert_eq!(
        got["value"]["cors"]["allowed_origins"][0],
        "https://app.example"
    );
    assert!(e.dir.join("config/iii-http.yaml").exists());
    // ... and the next response carries it.
    let port = e.http_port;
    let (_, headers, _) = tokio::task::spawn_blocking(move || {
        iii_tests::http(
            port,
            "GET",
            "/none",
            &[("Origin", "https://app.example")],
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(
        iii_tests::header(&headers, "access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[tokio::test]
async fn a_live_state_setting_applies_to_the_running_service() {
    let e = EngineProc::start(
        "  - name: state\n    config: {adapter: {name: kv, config: {store_method: in_memory}}}\n",
    );
    let mut w = RawWorker::connect(&e.url()).await;
    ok(
        &mut w,
        "state::set",
        json!({"scope": "s", "key": "k", "value": "a fairly long value"}),
    )
    .await;
    let running = ok(&mut w, "configuration::get", json!({"id": "iii-state"})).await;
    let mut v = running["value"].clone();
    v["max_value_bytes"] = json!(8);
    let r = ok(
        &mut w,
        "configuration::set",
        json!({"id": "iii-state", "value": v}),
    )
    .await;
    assert_eq!(r["applied"]["tier"], "live", "{r}");
    let r = err(
        &mut w,
        "state::set",
        json!({"scope": "s", "key": "k", "value": "a fairly long value"}),
    )
    .await;
    assert_eq!(r["code"], "VALUE_TOO_LARGE", "{r}");
    // Applied in place: the value stored before is still there (same store, no restart).
    let got = ok(&mut w, "state::get", json!({"scope": "s", "key": "k"})).await;
    assert_eq!(got, json!("a fairly long value"));
    // An adapter change is restart-tier: reported, not applied.
    let mut v2 = v.clone();
    v2["adapter"] = json!({"name": "kv"});
    let r = ok(
        &mut w,
        "configuration::set",
        json!({"id": "iii-state", "value": v2}),
    )
    .await;
    assert_eq!(r["applied"]["tier"], "restart", "{r}");
    assert!(
        r["applied"]["note"].as_str().unwrap().contains("adapter"),
        "{r}"
    );
}
