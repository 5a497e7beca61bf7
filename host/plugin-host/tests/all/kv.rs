//! The embedded kv adapter, called through the host's traits.

use crate::{host, tempdir};

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use iii_plugin_host::{
    Adapter, AdapterSpec, CacheOutcome, Grants, PluginError, StateWorld, StreamGroups, StreamStore,
    StreamWorld, UpdateOp,
};
use serde_json::{json, Map, Value};

fn durable(dir: &Path) -> AdapterSpec {
    AdapterSpec::named("kv").with_grants(Grants {
        data_dir: Some(dir.to_path_buf()),
        ..Grants::default()
    })
}

async fn state(spec: &AdapterSpec) -> Arc<Adapter<StateWorld>> {
    host()
        .load_adapter::<StateWorld>(spec)
        .await
        .expect("load kv")
}

fn ops(v: Value) -> Vec<UpdateOp> {
    UpdateOp::parse_list(&v).expect("ops parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_set_get_delete_roundtrip() {
    let dir = tempdir();
    let s = state(&durable(dir.path())).await;
    assert_eq!(s.get("users", "u1").await.unwrap(), None);
    let r = s.set("users", "u1", &json!({"name": "ada"})).await.unwrap();
    assert_eq!(r.old_value, None);
    assert_eq!(r.new_value, json!({"name": "ada"}));
    let r = s.set("users", "u1", &json!({"name": "bob"})).await.unwrap();
    assert_eq!(r.old_value, Some(json!({"name": "ada"})));
    assert_eq!(
        s.get("users", "u1").await.unwrap(),
        Some(json!({"name": "bob"}))
    );
    // Scalars and null are values too.
    s.set("misc", "n", &json!(42)).await.unwrap();
    s.set("misc", "z", &Value::Null).await.unwrap();
    assert_eq!(s.get("misc", "n").await.unwrap(), Some(json!(42)));
    assert_eq!(s.get("misc", "z").await.unwrap(), Some(Value::Null));
    assert_eq!(
        s.delete("users", "u1").await.unwrap(),
        Some(json!({"name": "bob"}))
    );
    assert_eq!(
        s.delete("users", "u1").await.unwrap(),
        None,
        "second delete is a no-op"
    );
    assert_eq!(s.get("users", "u1").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_keeps_insertion_order_and_groups_are_sorted() {
    let s = state(&AdapterSpec::named("kv")).await;
    for k in ["c", "a", "b", "d"] {
        s.set("letters", k, &json!(k)).await.unwrap();
    }
    s.delete("letters", "a").await.unwrap();
    // Overwriting keeps the original position.
    s.set("letters", "c", &json!("C")).await.unwrap();
    assert_eq!(
        s.list("letters").await.unwrap(),
        vec![json!("C"), json!("b"), json!("d")]
    );
    assert_eq!(s.list("nothing").await.unwrap(), Vec::<Value>::new());
    s.set("zeta", "k", &json!(1)).await.unwrap();
    s.set("alpha", "k", &json!(1)).await.unwrap();
    s.set("gone", "k", &json!(1)).await.unwrap();
    s.delete("gone", "k").await.unwrap();
    assert_eq!(
        s.list_groups().await.unwrap(),
        vec!["alpha", "letters", "zeta"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_ops_apply_in_order_and_report_errors() {
    let s = state(&AdapterSpec::named("kv")).await;
    // Missing value starts as {}.
    let r = s
        .update(
            "orders",
            "o1",
            &ops(json!([
                {"type": "set", "path": "status", "value": "new"},
                {"type": "increment", "path": "count", "by": 2},
                {"type": "decrement", "path": "stock", "by": 3},
                {"type": "merge", "path": ["meta", "tags"], "value": {"a": 1}},
                {"type": "append", "path": "log", "value": "x"},
                {"type": "append", "path": ["events", "list"], "value": {"e": 1}},
                {"type": "set", "path": "a.b", "value": true}
            ])),
        )
        .await
        .unwrap();
    assert_eq!(r.old_value, None);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let want = json!({
        "status": "new", "count": 2, "stock": -3,
        "meta": {"tags": {"a": 1}}, "log": "x",
        "events": {"list": [{"e": 1}]}, "a.b": true
    });
    assert_eq!(r.new_value, want);
    assert_eq!(s.get("orders", "o1").await.unwrap(), Some(want.clone()));

    // Failing ops are skipped, the rest apply, the result is stored.
    let r = s
        .update(
            "orders",
            "o1",
            &ops(json!([
                {"type": "increment", "path": "status", "by": 1},
                {"type": "merge", "value": [1, 2]},
                {"type": "merge", "path": ["__proto__"], "value": {"x": 1}},
                {"type": "merge", "path": (0..33).map(|i| format!("p{i}")).collect::<Vec<_>>(), "value": {}},
                {"type": "merge", "value": {"constructor": 1}},
                {"type": "append", "path": "count", "value": 1},
                {"type": "append", "path": "log", "value": "y"},
                {"type": "remove", "path": "stock"},
                {"type": "merge", "path": "meta", "value": {"v": 2}}
            ])),
        )
        .await
        .unwrap();
    let codes: Vec<(usize, &str)> = r
        .errors
        .iter()
        .map(|e| (e.op_index, e.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (0, "increment.not_number"),
            (1, "merge.value.not_an_object"),
            (2, "merge.path.proto_polluted"),
            (3, "merge.path.too_deep"),
            (4, "merge.value.proto_polluted"),
            (5, "append.type_mismatch"),
        ]
    );
    assert!(r
        .errors
        .iter()
        .all(|e| e.doc_url.is_some() && !e.message.is_empty()));
    assert_eq!(r.old_value, Some(want));
    let v = s.get("orders", "o1").await.unwrap().unwrap();
    assert_eq!(v["log"], json!("xy"));
    assert_eq!(v.get("stock"), None);
    assert_eq!(v["meta"], json!({"tags": {"a": 1}, "v": 2}));

    // Root operations: replace, then non-object targets.
    let r = s
        .update(
            "orders",
            "o2",
            &ops(json!([
                {"type": "set", "path": "", "value": 5},
                {"type": "increment", "path": "", "by": 10},
                {"type": "set", "path": "x", "value": 1},
                {"type": "remove", "path": "x"}
            ])),
        )
        .await
        .unwrap();
    assert_eq!(r.new_value, json!(15));
    let codes: Vec<&str> = r.errors.iter().map(|e| e.code.as_str()).collect();
    assert_eq!(
        codes,
        vec!["set.target_not_object", "remove.target_not_object"]
    );
    let r = s
        .update(
            "orders",
            "o3",
            &ops(json!([{"type": "remove", "path": ""}])),
        )
        .await
        .unwrap();
    assert_eq!(r.new_value, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ops_are_rejected_before_the_adapter() {
    let bad = json!([{"type": "explode", "path": "x"}]);
    assert!(UpdateOp::parse_list(&bad).is_err());
    let bad = json!([{"type": "increment", "path": "x", "by": "one"}]);
    assert!(UpdateOp::parse_list(&bad).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ops() {
    let host = host();
    // Through the loader, as the stream service does: the trait object.
    let s: Arc<dyn StreamStore> =
        iii_plugin_host::load::<StreamWorld>(&host, &AdapterSpec::named("kv"))
            .await
            .unwrap();
    assert_eq!(s.get("chat", "room-1", "m1").await.unwrap(), None);
    let r = s
        .set("chat", "room-1", "m1", &json!({"t": "hi"}))
        .await
        .unwrap();
    assert_eq!(r.old_value, None);
    s.set("chat", "room-1", "m2", &json!({"t": "yo"}))
        .await
        .unwrap();
    s.set("chat", "room-0", "m1", &json!(1)).await.unwrap();
    s.set("alerts", "g", "a1", &json!(2)).await.unwrap();
    assert_eq!(
        s.list("chat", "room-1").await.unwrap(),
        vec![json!({"t": "hi"}), json!({"t": "yo"})]
    );
    assert_eq!(
        s.list_groups("chat").await.unwrap(),
        vec!["room-0", "room-1"]
    );
    let r = s
        .update(
            "chat",
            "room-1",
            "m1",
            &ops(json!([{"type": "append", "path": "reactions", "value": "+1"}])),
        )
        .await
        .unwrap();
    assert_eq!(r.new_value, json!({"t": "hi", "reactions": "+1"}));
    assert_eq!(
        s.delete("chat", "room-0", "m1").await.unwrap(),
        Some(json!(1))
    );
    assert_eq!(s.delete("chat", "room-0", "m1").await.unwrap(), None);
    assert_eq!(
        s.list_all().await.unwrap(),
        vec![
            StreamGroups {
                id: "alerts".into(),
                groups: vec!["g".into()]
            },
            StreamGroups {
                id: "chat".into(),
                groups: vec!["room-1".into()]
            },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_reload() {
    let dir = tempdir();
    {
        let s = state(&durable(dir.path())).await;
        s.set("a", "1", &json!({"v": 1})).await.unwrap();
        s.set("a", "2", &json!({"v": 2})).await.unwrap();
        s.update(
            "a",
            "1",
            &ops(json!([{"type": "increment", "path": "v", "by": 10}])),
        )
        .await
        .unwrap();
        s.delete("a", "2").await.unwrap();
        s.set("b", "x", &json!("y")).await.unwrap();
    }
    let s = state(&durable(dir.path())).await;
    assert_eq!(s.get("a", "1").await.unwrap(), Some(json!({"v": 11})));
    assert_eq!(s.get("a", "2").await.unwrap(), None);
    assert_eq!(s.list_groups().await.unwrap(), vec!["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_ignored_without_losing_earlier_writes() {
    let dir = tempdir();
    {
        let s = state(&durable(dir.path())).await;
        s.set("s", "k1", &json!("one")).await.unwrap();
        s.set("s", "k2", &json!("two")).await.unwrap();
    }
    let log = dir.path().join("kv.wal");
    let intact = std::fs::metadata(&log).unwrap().len();
    // A record header promising 100 bytes followed by only 5: a write torn
    // by a crash.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    drop(f);
    {
        let s = state(&durable(dir.path())).await;
        assert_eq!(s.get("s", "k1").await.unwrap(), Some(json!("one")));
        assert_eq!(s.get("s", "k2").await.unwrap(), Some(json!("two")));
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            intact,
            "torn tail cut off"
        );
        s.set("s", "k3", &json!("three")).await.unwrap();
    }
    // A flipped byte in the last record's payload fails its checksum: that
    // record is dropped, the earlier ones stay.
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&log, &bytes).unwrap();
    let s = state(&durable(dir.path())).await;
    assert_eq!(s.get("s", "k3").await.unwrap(), None);
    assert_eq!(s.list("s").await.unwrap(), vec![json!("one"), json!("two")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_bounds_the_log() {
    let dir = tempdir();
    let mut cfg = Map::new();
    cfg.insert("compact_min_bytes".into(), json!(4096));
    let spec = durable(dir.path()).with_config(cfg);
    {
        let s = state(&spec).await;
        for i in 0..500 {
            s.set(
                "hot",
                "counter",
                &json!({"i": i, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}),
            )
            .await
            .unwrap();
        }
        s.set("cold", "keep", &json!(true)).await.unwrap();
    }
    let len = std::fs::metadata(dir.path().join("kv.wal")).unwrap().len();
    // 500 records of ~80 bytes would be ~40 KB without compaction.
    assert!(len < 8192, "log is {len} bytes");
    let s = state(&spec).await;
    assert_eq!(
        s.get("hot", "counter").await.unwrap().unwrap()["i"],
        json!(499)
    );
    assert_eq!(s.get("cold", "keep").await.unwrap(), Some(json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_without_a_data_dir_and_bad_config_is_an_init_error() {
    let s = state(&AdapterSpec::named("kv")).await;
    s.set("x", "y", &json!(1)).await.unwrap();
    let again = state(&AdapterSpec::named("kv")).await;
    assert_eq!(
        again.get("x", "y").await.unwrap(),
        None,
        "separate in-memory instances"
    );

    let mut cfg = Map::new();
    cfg.insert("store_method".into(), json!("file_based"));
    let err = host()
        .load_adapter::<StateWorld>(&AdapterSpec::named("kv").with_config(cfg))
        .await
        .err()
        .expect("file_based without a data dir must fail");
    assert!(matches!(err, PluginError::Init { .. }), "{err}");
    assert!(err.to_string().contains("data_dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_missing_files_are_reported() {
    let host = host();
    let err = host
        .load_adapter::<StateWorld>(&AdapterSpec::named("memcached"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::UnknownAdapter { .. }), "{err}");
    assert!(
        err.to_string().contains("`memcached`")
            && err.to_string().contains("kv")
            && err.to_string().contains("redis"),
        "{err}"
    );
    let err = host
        .load_adapter::<StateWorld>(&AdapterSpec::path("/nonexistent/adapter.wasm"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::MissingFile { .. }), "{err}");
    let junk = tempdir();
    let p = junk.path().join("junk.wasm");
    std::fs::write(&p, b"not wasm at all").unwrap();
    let err = host
        .load_adapter::<StateWorld>(&AdapterSpec::path(&p))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::NotAComponent { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_load_hits_the_compiled_code_cache() {
    let host = host();
    host.load_adapter::<StateWorld>(&AdapterSpec::named("kv"))
        .await
        .unwrap();
    let again = host
        .load_adapter::<StateWorld>(&AdapterSpec::named("kv"))
        .await
        .unwrap();
    assert_eq!(again.compile_cache(), CacheOutcome::Hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_writes_survive_a_reload_and_a_data_dir_has_one_owner() {
    let dir = tempdir();
    let host = host();
    {
        let s = host
            .load_adapter::<StreamWorld>(&durable(dir.path()))
            .await
            .unwrap();
        s.set("chat", "g1", "m1", &json!("a")).await.unwrap();
        s.set("chat", "g1", "m2", &json!("b")).await.unwrap();
        s.delete("chat", "g1", "m1").await.unwrap();
        // While it is open, nobody else may write the same log.
        let err = host
            .load_adapter::<StateWorld>(&durable(dir.path()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, PluginError::DataDirInUse { .. }), "{err}");
    }
    let s = host
        .load_adapter::<StreamWorld>(&durable(dir.path()))
        .await
        .unwrap();
    assert_eq!(s.list("chat", "g1").await.unwrap(), vec![json!("b")]);
}
