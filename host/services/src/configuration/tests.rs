//! Unit tests of the configuration service against a real core, with the memory or fs store
//! and a small in-memory [`ServiceControl`].

use super::*;
use iii_core::control::{Applied, ApplyTier, ServiceSetting};
use iii_core::testing::TestCore;

const SCHEMA: &str = r#"{"type": "object", "properties": {
    "url": {"type": "string", "minLength": 1},
    "pool": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}},
    "required": ["url"]}"#;

fn schema() -> Value {
    serde_json::from_str(SCHEMA).unwrap()
}

async fn core(config: &str) -> TestCore {
    let mut t = TestCore::new();
    t.start(&Configuration, config).await.unwrap();
    t
}

fn bind(t: &TestCore, id: &str, function_id: &str, config: Value) {
    let b = Binding {
        id: id.into(),
        trigger_type: TRIGGER_TYPE.into(),
        function_id: function_id.into(),
        config,
        metadata: None,
        owner: None,
        namespace: "default".into(),
        trigger_namespace: None,
        home_namespace: "default".into(),
        provider: None,
    };
    let mut sends = Vec::new();
    t.core.triggers().upsert(b, &mut sends).unwrap();
}

async fn register(t: &TestCore, id: &str, initial: Value) -> Result<Value, ErrorBody> {
    t.call(
        "configuration::register",
        json!({"id": id, "name": "Database", "description": "where data lives",
            "schema": schema(), "initial_value": initial}),
    )
    .await
}

#[tokio::test]
async fn register_set_get_list_schema() {
    let t = core("adapter: {name: memory}").await;
    let e = register(&t, "app.db", json!({"url": "sqlite://a"}))
        .await
        .unwrap();
    assert_eq!(e["value"], json!({"url": "sqlite://a"}));
    assert_eq!(e["schema"], schema());
    // Idempotent: the same registration changes nothing, and keeps the stored value.
    let again = register(&t, "app.db", json!({"url": "other://"}))
        .await
        .unwrap();
    assert_eq!(again["value"], json!({"url": "sqlite://a"}));

    let r = t
        .call(
            "configuration::set",
            json!({"id": "app.db", "value": {"url": "pg://b", "pool": {"size": 4}}}),
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"old_value": {"url": "sqlite://a"}, "new_value": {"url": "pg://b", "pool": {"size": 4}}})
    );
    let g = t
        .call("configuration::get", json!({"id": "app.db"}))
        .await
        .unwrap();
    assert_eq!(
        g,
        json!({"id": "app.db", "value": {"url": "pg://b", "pool": {"size": 4}}})
    );

    register(&t, "a.first", json!({"url": "x"})).await.unwrap();
    let l = t.call("configuration::list", json!({})).await.unwrap();
    let rows = l["configurations"].as_array().unwrap();
    let ids: Vec<_> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a.first", "app.db"]);
    assert!(rows.iter().all(|r| r.get("value").is_none()), "{l}");
    let s = t
        .call("configuration::schema", json!({"id": "app.db"}))
        .await
        .unwrap();
    assert_eq!(
        s,
        json!({"id": "app.db", "name": "Database", "description": "where data lives", "schema": schema()})
    );
}

#[tokio::test]
async fn an_invalid_value_is_refused_with_its_pointer_and_the_old_value_stays() {
    let t = core("adapter: {name: memory}").await;
    register(&t, "db", json!({"url": "a"})).await.unwrap();
    let e = t
        .call(
            "configuration::set",
            json!({"id": "db", "value": {"url": "b", "pool": {"size": 0}}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::SCHEMA_INVALID);
    assert!(e.message.contains("`/pool/size`"), "{}", e.message);
    assert!(e.message.contains("minimum"), "{}", e.message);
    let g = t
        .call("configuration::get", json!({"id": "db"}))
        .await
        .unwrap();
    assert_eq!(g["value"], json!({"url": "a"}));

    let missing = t
        .call("configuration::set", json!({"id": "db", "value": {}}))
        .await
        .unwrap_err();
    assert_eq!(missing.code, codes::SCHEMA_INVALID);
    assert!(missing.message.contains("url"), "{}", missing.message);
}

#[tokio::test]
async fn unknown_ids_bad_ids_and_bad_schemas_have_their_codes() {
    let t = core("adapter: {name: memory}").await;
    let e = t
        .call("configuration::set", json!({"id": "nope", "value": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::NOT_REGISTERED);
    for bad in ["", "../etc", "a/b", ".hidden", "sp ace"] {
        let e = t
            .call("configuration::set", json!({"id": bad, "value": 1}))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::INVALID_ID, "{bad}");
        let e = t
            .call("configuration::register", json!({"id": bad, "schema": {}}))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::INVALID_ID, "{bad}");
    }
    for id in ["configuration::get", "configuration::schema"] {
        let e = t.call(id, json!({"id": "nope"})).await.unwrap_err();
        assert_eq!(e.code, codes::NOT_FOUND, "{id}");
    }
    let e = t
        .call(
            "configuration::register",
            json!({"id": "x", "schema": {"type": "nonsense"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::SCHEMA_INVALID);
    let e = t
        .call(
            "configuration::register",
            json!({"id": "x", "schema": {"$ref": "https://example.org/s.json"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::SCHEMA_UNAVAILABLE);
    let e = t
        .call(
            "configuration::register",
            json!({"id": "x", "schema": {"type": "integer"}, "initial_value": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::SCHEMA_INVALID);
    assert!(
        t.call("configuration::get", json!({"id": "x"}))
            .await
            .is_err(),
        "a refused registration registers nothing"
    );
}

#[tokio::test]
async fn get_expands_placeholders_unless_raw() {
    std::env::set_var("III_CFG_TEST_URL", "pg://from-env");
    let t = core("adapter: {name: memory}").await;
    register(
        &t,
        "db",
        json!({"url": "${III_CFG_TEST_URL}", "pool": {"size": "${III_CFG_TEST_UNSET:8}"}}),
    )
    .await
    .unwrap();
    let g = t
        .call("configuration::get", json!({"id": "db"}))
        .await
        .unwrap();
    assert_eq!(
        g["value"],
        json!({"url": "pg://from-env", "pool": {"size": 8}})
    );
    let raw = t
        .call("configuration::get", json!({"id": "db", "raw": true}))
        .await
        .unwrap();
    assert_eq!(
        raw["value"],
        json!({"url": "${III_CFG_TEST_URL}", "pool": {"size": "${III_CFG_TEST_UNSET:8}"}})
    );
    let e = t
        .call(
            "configuration::set",
            json!({"id": "db", "value": {"url": "${III_CFG_TEST_NEVER_SET}"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::EXPAND_FAILED);
    assert!(e.message.contains("`/url`"), "{}", e.message);
}

#[tokio::test]
async fn the_trigger_fires_on_registered_and_updated_filtered_by_id_and_event() {
    let t = core("adapter: {name: memory}").await;
    let all = t.recorder("h::all", json!(null));
    let db_updates = t.recorder("h::db", json!(null));
    let cond_no = t.recorder("h::cond", json!(false));
    let skipped = t.recorder("h::skipped", json!(null));
    bind(&t, "t1", "h::all", json!({}));
    bind(
        &t,
        "t2",
        "h::db",
        json!({"configuration_id": "db", "event_types": ["configuration:updated"]}),
    );
    bind(
        &t,
        "t3",
        "h::skipped",
        json!({"condition_function_id": "h::cond"}),
    );
    register(&t, "db", json!({"url": "a"})).await.unwrap();
    register(&t, "other", json!({"url": "a"})).await.unwrap();
    t.call(
        "configuration::set",
        json!({"id": "db", "value": {"url": "b"}}),
    )
    .await
    .unwrap();
    let got = TestCore::wait_for(&all, 3, 2000).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let events: Vec<_> = got
        .iter()
        .map(|p| p["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [REGISTERED, REGISTERED, UPDATED],
        "in order of the changes"
    );
    let upd = &got[2];
    assert_eq!(upd["type"], "configuration");
    assert_eq!(upd["id"], "db");
    assert_eq!(upd["name"], "Database");
    assert_eq!(upd["schema"], schema());
    assert_eq!(upd["old_value"], json!({"url": "a"}));
    assert_eq!(upd["new_value"], json!({"url": "b"}));
    let db = TestCore::wait_for(&db_updates, 1, 500).await;
    assert_eq!(db.len(), 1, "{db:?}");
    assert_eq!(db[0]["event_type"], UPDATED);
    assert_eq!(TestCore::wait_for(&cond_no, 3, 2000).await.len(), 3);
    assert!(skipped.lock().is_empty(), "a false condition skips");
}

#[tokio::test]
async fn bad_trigger_configs_are_refused() {
    let tt = ConfigTriggerType;
    let b = |config: Value| Binding {
        id: "b".into(),
        trigger_type: TRIGGER_TYPE.into(),
        function_id: "f".into(),
        config,
        metadata: None,
        owner: None,
        namespace: "default".into(),
        trigger_namespace: None,
        home_namespace: "default".into(),
        provider: None,
    };
    assert!(tt.register(&b(json!({"configuration_id": 3}))).is_err());
    let e = tt
        .register(&b(json!({"event_types": ["configuration:changed"]})))
        .unwrap_err();
    assert!(e.contains("configuration:updated"), "{e}");
    assert!(tt.register(&b(json!({"event_types": "x"}))).is_err());
    assert!(tt
        .register(&b(
            json!({"configuration_id": "a", "event_types": [DELETED]})
        ))
        .is_ok());
}

/// A control over one pretend service `svc-http` whose config is `{port, cors}`: `port` rebinds,
/// `cors` is live, `adapter` applies at the next start; a port of 1 cannot bind.
#[derive(Default)]
struct FakeControl {
    value: Mutex<Value>,
    applied: Mutex<Vec<Value>>,
}

fn fake_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "port": {"type": "integer", "x-apply": "rebind"},
        "cors": {"type": "object", "x-apply": "live"},
        "adapter": {"type": "object", "x-apply": "restart"}}})
}

#[async_trait::async_trait]
impl ServiceControl for FakeControl {
    fn settings(&self) -> Vec<ServiceSetting> {
        vec![ServiceSetting {
            id: "svc-http".into(),
            name: "http".into(),
            description: "pretend http".into(),
            schema: fake_schema(),
            value: self.value.lock().clone(),
        }]
    }
    async fn apply(&self, id: &str, value: Value) -> Result<Applied, ControlError> {
        if id != "svc-http" {
            return Err(ControlError::Unknown(id.into()));
        }
        if value.get("port") == Some(&json!(1)) {
            return Err(ControlError::Start {
                id: id.into(),
                source: StartError::Service {
                    service: "http",
                    message: "port 1 is taken".into(),
                },
            });
        }
        self.applied.lock().push(value.clone());
        let old = std::mem::replace(&mut *self.value.lock(), value.clone());
        let tier = ApplyTier::of_change(&fake_schema(), &old, &value);
        let note =
            (tier == Some(ApplyTier::Restart)).then(|| "applies at next start: adapter".into());
        Ok(Applied { tier, note })
    }
}

async fn with_control(control: Arc<FakeControl>, config: &str, t: &mut TestCore) {
    let c: Arc<dyn ServiceControl> = control;
    t.handles.insert(c);
    t.start(&Configuration, config).await.unwrap();
}

#[tokio::test]
async fn builtin_services_are_entries_and_set_applies_through_the_control() {
    let control = Arc::new(FakeControl::default());
    *control.value.lock() = json!({"port": 3111});
    let mut t = TestCore::new();
    with_control(control.clone(), "", &mut t).await;

    let s = t
        .call("configuration::schema", json!({"id": "svc-http"}))
        .await
        .unwrap();
    assert_eq!(s["schema"], fake_schema());
    assert_eq!(s["metadata"]["builtin"], true);
    let g = t
        .call("configuration::get", json!({"id": "svc-http"}))
        .await
        .unwrap();
    assert_eq!(g["value"], json!({"port": 3111}));

    // Invalid by the schema: refused before the control sees it.
    let e = t
        .call(
            "configuration::set",
            json!({"id": "svc-http", "value": {"port": "x"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::SCHEMA_INVALID);
    assert!(e.message.contains("`/port`"), "{}", e.message);
    assert!(control.applied.lock().is_empty());

    let r = t
        .call(
            "configuration::set",
            json!({"id": "svc-http", "value": {"port": 3111, "cors": {"allowed_origins": ["x"]}}}),
        )
        .await
        .unwrap();
    assert_eq!(r["old_value"], json!({"port": 3111}));
    assert_eq!(r["applied"], json!({"tier": "live"}));
    let r = t
        .call(
            "configuration::set",
            json!({"id": "svc-http", "value": {"port": 3111, "adapter": {"name": "redis"}}}),
        )
        .await
        .unwrap();
    assert_eq!(
        r["applied"],
        json!({"tier": "restart", "note": "applies at next start: adapter"})
    );

    // The service refuses: the old value stays.
    let e = t
        .call(
            "configuration::set",
            json!({"id": "svc-http", "value": {"port": 1}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::APPLY_FAILED);
    assert!(e.message.contains("port 1 is taken"), "{}", e.message);
    let g = t
        .call("configuration::get", json!({"id": "svc-http"}))
        .await
        .unwrap();
    assert_eq!(
        g["value"],
        json!({"port": 3111, "adapter": {"name": "redis"}})
    );

    // Workers cannot take a builtin's id.
    let e = t
        .call(
            "configuration::register",
            json!({"id": "svc-http", "schema": {}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_ID);
}

#[tokio::test]
async fn a_stored_builtin_value_is_applied_at_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "adapter: {{name: fs, config: {{directory: '{}'}}}}",
        dir.path().display()
    );
    {
        let control = Arc::new(FakeControl::default());
        *control.value.lock() = json!({"port": 3111});
        let mut t = TestCore::new();
        with_control(control.clone(), &cfg, &mut t).await;
        t.call(
            "configuration::set",
            json!({"id": "svc-http", "value": {"port": 4000}}),
        )
        .await
        .unwrap();
        assert!(dir.path().join("svc-http.yaml").exists());
    }
    let control = Arc::new(FakeControl::default());
    *control.value.lock() = json!({"port": 3111});
    let mut t = TestCore::new();
    with_control(control.clone(), &cfg, &mut t).await;
    assert_eq!(*control.applied.lock(), vec![json!({"port": 4000})]);
    let g = t
        .call("configuration::get", json!({"id": "svc-http"}))
        .await
        .unwrap();
    assert_eq!(g["value"], json!({"port": 4000}));
}

#[tokio::test]
async fn entries_survive_a_restart_in_the_fs_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "adapter: {{name: fs, config: {{directory: '{}'}}}}",
        dir.path().display()
    );
    {
        let t = core(&cfg).await;
        register(&t, "db", json!({"url": "a"})).await.unwrap();
        t.call(
            "configuration::set",
            json!({"id": "db", "value": {"url": "b"}}),
        )
        .await
        .unwrap();
    }
    let text = std::fs::read_to_string(dir.path().join("db.yaml")).unwrap();
    assert!(text.contains("id: db") && text.contains("url: b"), "{text}");
    let t = core(&cfg).await;
    let g = t
        .call("configuration::get", json!({"id": "db"}))
        .await
        .unwrap();
    assert_eq!(g["value"], json!({"url": "b"}));
    // The stored value beats the initial value of a repeated registration.
    let e = register(&t, "db", json!({"url": "c"})).await.unwrap();
    assert_eq!(e["value"], json!({"url": "b"}));
}

async fn wait_value(t: &TestCore, id: &str, want: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let g = t
            .call("configuration::get", json!({"id": id}))
            .await
            .map(|g| g["value"].clone())
            .unwrap_or(Value::Null);
        if &g == want || Instant::now() > deadline {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_edits_apply_when_valid_and_are_refused_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "adapter: {{name: fs, config: {{directory: '{}'}}}}",
        dir.path().display()
    );
    let t = core(&cfg).await;
    let seen = t.recorder("h::seen", json!(null));
    bind(&t, "t", "h::seen", json!({"event_types": [UPDATED]}));
    register(&t, "db", json!({"url": "a"})).await.unwrap();
    let file = dir.path().join("db.yaml");
    let edit = |v: &str| {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut e: StoredEntry = serde_yaml::from_str(&text).unwrap();
        e.value = serde_json::from_str(v).unwrap();
        std::fs::write(&file, serde_yaml::to_string(&e).unwrap()).unwrap();
    };
    edit(r#"{"url": "edited"}"#);
    assert_eq!(
        wait_value(&t, "db", &json!({"url": "edited"})).await,
        json!({"url": "edited"})
    );
    let got = TestCore::wait_for(&seen, 1, 2000).await;
    assert_eq!(got[0]["new_value"], json!({"url": "edited"}));

    // Schema-invalid, then not YAML: refused, the previous value is served.
    edit(r#"{"url": ""}"#);
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::fs::write(&file, "id: db\nvalue: [unclosed").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let g = t
        .call("configuration::get", json!({"id": "db"}))
        .await
        .unwrap();
    assert_eq!(g["value"], json!({"url": "edited"}));
    assert_eq!(seen.lock().len(), 1, "refused edits fire nothing");

    // Our own writes are not taken for edits.
    t.call(
        "configuration::set",
        json!({"id": "db", "value": {"url": "set"}}),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(seen.lock().len(), 2, "{:?}", seen.lock());

    // A new file with a schema is a new entry; a deleted file deletes it.
    std::fs::write(
        dir.path().join("new.one.yaml"),
        "id: new.one\nname: N\ndescription: D\nschema: {type: integer}\nvalue: 5\n",
    )
    .unwrap();
    assert_eq!(wait_value(&t, "new.one", &json!(5)).await, json!(5));
    // Registering rewrote the file in the store's layout; that is not another edit.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(seen.lock().len(), 2, "{:?}", seen.lock());
    std::fs::remove_file(dir.path().join("new.one.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while t
        .call("configuration::get", json!({"id": "new.one"}))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "deleted file still served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_without_subscribers_expire_after_the_ttl() {
    let t = core("adapter: {name: memory}\nttl_seconds: 1").await;
    let seen = t.recorder("h::seen", json!(null));
    bind(
        &t,
        "t",
        "h::seen",
        json!({"configuration_id": "kept", "event_types": [DELETED]}),
    );
    let gone = t.recorder("h::gone", json!(null));
    bind(
        &t,
        "t2",
        "h::gone",
        json!({"configuration_id": "nobody-else", "event_types": [DELETED]}),
    );
    register(&t, "kept", json!({"url": "a"})).await.unwrap();
    register(&t, "lonely", json!({"url": "a"})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(t
        .call("configuration::get", json!({"id": "kept"}))
        .await
        .is_ok());
    let e = t
        .call("configuration::get", json!({"id": "lonely"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::NOT_FOUND);
    assert!(seen.lock().is_empty());
    let _ = gone;
}

#[test]
fn configure_reads_the_adapter_and_ttl_and_refuses_the_rest() {
    let parse = |y: &str| -> Result<ConfigurationConfig, String> {
        let v: serde_yaml::Value = serde_yaml::from_str(y).unwrap();
        let e = [Entry {
            at: "workers[0](configuration)".into(),
            name: "configuration",
            config: &v,
            reader: iii_core::config::EntryReader { path: "c.yaml" },
        }];
        Configuration
            .configure(&e)
            .map(|c| {
                c.as_any()
                    .downcast_ref::<ConfigurationConfig>()
                    .unwrap()
                    .clone()
            })
            .map_err(|e| e.to_string())
    };
    assert_eq!(parse("{}").unwrap(), ConfigurationConfig::default());
    let c = parse("adapter: {name: fs, config: {directory: ./settings}}\nttl_seconds: 30").unwrap();
    assert_eq!(
        c.store,
        StoreChoice::Fs {
            directory: "./settings".into()
        }
    );
    assert_eq!(c.ttl, Some(Duration::from_secs(30)));
    assert_eq!(parse("ttl_seconds: 0").unwrap().ttl, None);
    assert!(parse("colour: red").unwrap_err().contains("colour"));
    assert!(parse("adapter: {name: bridge}")
        .unwrap_err()
        .contains("bridge"));
    assert!(parse("adapter: {name: fs, config: {dir: x}}")
        .unwrap_err()
        .contains("dir"));
    assert!(parse("ttl_seconds: -1")
        .unwrap_err()
        .contains("ttl_seconds"));
}
