//! The builtin services' config schemas accept what their `configure` accepts: every `config:`
//! block of the embedded defaults, the repo's documentation and the shared seed documents
//! validates, and for a table of values (unknown keys included) schema and `configure` agree.

use std::path::{Path, PathBuf};

use iii_core::config::{interpolate, EntryReader};
use iii_core::{Entry, Service};
use iii_services::configuration::schema;
use serde_json::{json, Value};

fn service_for<'a>(all: &'a [Box<dyn Service>], name: &str) -> Option<&'a dyn Service> {
    all.iter()
        .map(|s| s.as_ref())
        .find(|s| s.info().name == name || s.info().deprecated_names.contains(&name))
}

/// Does `configure` take `config` as the service's only entry?
fn configure_accepts(s: &dyn Service, config: &Value) -> Result<(), String> {
    let y: serde_yaml::Value = serde_yaml::to_value(config).unwrap();
    let e = [Entry {
        at: format!("workers[0]({})", s.info().name),
        name: s.info().name,
        config: &y,
        reader: EntryReader { path: "t.yaml" },
    }];
    s.configure(&e).map(|_| ()).map_err(|e| e.to_string())
}

fn schema_accepts(s: &dyn Service, config: &Value) -> Result<(), String> {
    let sc = s.config_schema().expect("configurable");
    let v = schema::compile(&sc).map_err(|e| e.to_string())?;
    schema::check(&v, config).map_err(|e| e.to_string())
}

/// The ```yaml blocks of a Markdown file, or the whole text when it has none.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match &mut cur {
            None if t.starts_with("```yaml") || t.starts_with("```yml") => {
                cur = Some(String::new())
            }
            Some(_) if t.starts_with("```") => out.extend(cur.take()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

fn docs() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files: Vec<PathBuf> = vec![
        root.join("README.md"),
        root.join("host/protocol/PROTOCOL.md"),
    ];
    for dir in ["plugins", "plugins/policies"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for d in rd.flatten() {
                files.push(d.path().join("README.md"));
            }
        }
    }
    // The shared seed documents sit beside the repository (absent in some checkouts).
    for seeds in [
        root.join("../shared/seeds"),
        root.join("../../shared/seeds"),
    ] {
        if let Ok(rd) = std::fs::read_dir(&seeds) {
            files.extend(rd.flatten().map(|d| d.path()));
        }
    }
    let mut out = vec![(
        "EMBEDDED".to_string(),
        iii_engine::config::EMBEDDED.to_string(),
    )];
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            for (i, b) in yaml_blocks(&text).into_iter().enumerate() {
                out.push((format!("{}#{i}", f.display()), b));
            }
        }
    }
    out
}

#[test]
fn every_documented_config_block_satisfies_its_services_schema() {
    let all = iii_engine::services();
    let mut checked = 0;
    for (origin, text) in docs() {
        // Unset variables take their defaults; a block needing a real variable is skipped.
        let Ok(text) = interpolate(&text, &origin, &|_| None) else {
            continue;
        };
        let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
            continue;
        };
        let Some(workers) = doc.get("workers").and_then(|w| w.as_sequence()) else {
            continue;
        };
        for w in workers {
            let Some(name) = w.get("name").and_then(|n| n.as_str()) else {
                continue;
            };
            let Some(s) = service_for(&all, name) else {
                continue;
            };
            if s.config_schema().is_none() {
                continue;
            }
            let config: Value = match w.get("config") {
                None => json!({}),
                Some(c) => serde_json::to_value(c).unwrap(),
            };
            if configure_accepts(s, &config).is_err() {
                continue; // an example of a refusal, or of a feature this engine lacks
            }
            if let Err(e) = schema_accepts(s, &config) {
                panic!("{origin}: `{name}` block {config} is accepted by configure but not by its schema: {e}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} blocks found; is the doc walk broken?"
    );
}

#[test]
fn schema_and_configure_agree_on_a_table_of_values() {
    let all = iii_engine::services();
    let cases: Vec<(&str, Value, bool)> = vec![
        ("http", json!({}), true),
        ("http", json!(null), true),
        (
            "http",
            json!({"port": 3111, "host": "127.0.0.1", "default_timeout": 500,
            "cors": {"allowed_origins": ["*"], "allowed_methods": ["GET"]},
            "middleware": [{"function_id": "m::a", "phase": "preHandler", "priority": 2}],
            "middleware_timeout_ms": 10, "concurrency_request_limit": 4,
            "body_limit_bytes": 10, "header_read_timeout_ms": 5, "body_read_timeout_ms": 5}),
            true,
        ),
        ("http", json!({"port": "3111"}), true),
        ("http", json!({"port": "x"}), false),
        ("http", json!({"port": 70000}), false),
        ("http", json!({"default_timeout": 0}), false),
        ("http", json!({"cors": {"origins": []}}), false),
        (
            "http",
            json!({"middleware": [{"phase": "preHandler"}]}),
            false,
        ),
        (
            "http",
            json!({"middleware": [{"function_id": "m", "phase": "onSend"}]}),
            false,
        ),
        ("http", json!({"colour": 1}), false),
        (
            "state",
            json!({"triggers_enabled": false, "max_value_bytes": 10}),
            true,
        ),
        ("state", json!({"triggers_enabled": "yes"}), false),
        ("state", json!({"max_value_bytes": 0}), false),
        ("state", json!({"save_interval_ms": 50}), false),
        (
            "state",
            json!({"adapter": {"name": "kv", "config": {"store_method": "in_memory"}}}),
            true,
        ),
        (
            "state",
            json!({"adapter": {"name": "kv", "path": "x.wasm"}}),
            false,
        ),
        (
            "state",
            json!({"adapter": {"name": "kv", "colour": 1}}),
            false,
        ),
        ("state", json!({"colour": 1}), false),
        (
            "stream",
            json!({"port": 3112, "host": "127.0.0.1", "auth_function": "a::b", "max_connections": 3}),
            true,
        ),
        ("stream", json!({"max_connections": 0}), false),
        ("stream", json!({"colour": 1}), false),
        (
            "queue",
            json!({"queue_configs": {"q": {"max_retries": 2, "concurrency": 1, "type": "standard"}}}),
            true,
        ),
        (
            "queue",
            json!({"queue_configs": {"q": {"concurrency": 0}}}),
            false,
        ),
        (
            "queue",
            json!({"queue_configs": {"q": {"type": "lifo"}}}),
            false,
        ),
        (
            "queue",
            json!({"queue_configs": {"q": {"colour": 1}}}),
            false,
        ),
        ("queue", json!({"colour": 1}), false),
        ("pubsub", json!({"adapter": {"name": "local"}}), true),
        ("pubsub", json!({"colour": 1}), false),
        ("cron", json!({"adapter": {"name": "kv"}}), true),
        ("cron", json!({"colour": 1}), false),
        ("iii-observability", json!({"level": "debug"}), true),
        ("iii-observability", json!({"level": "loud"}), false),
        // Upstream's exporter keys are accepted and not read, by both.
        (
            "iii-observability",
            json!({"exporter": "otlp", "sampling_ratio": 0.5}),
            true,
        ),
    ];
    for (name, config, ok) in cases {
        let s = service_for(&all, name).unwrap();
        let c = configure_accepts(s, &config);
        let v = schema_accepts(s, &config);
        assert_eq!(c.is_ok(), ok, "{name} {config}: configure said {c:?}");
        assert_eq!(v.is_ok(), ok, "{name} {config}: the schema said {v:?}");
    }
}

#[test]
fn every_configurable_builtin_declares_a_tier_for_each_field() {
    let all = iii_engine::services();
    let mut names = Vec::new();
    for s in &all {
        let Some(sc) = s.config_schema() else {
            continue;
        };
        schema::compile(&sc).unwrap_or_else(|e| panic!("{}: {e}", s.info().name));
        for (k, p) in sc["properties"].as_object().unwrap() {
            let tier = p["x-apply"].as_str().unwrap_or("");
            assert!(
                ["live", "rebind", "restart"].contains(&tier),
                "{}.{k} has x-apply {tier:?}",
                s.info().name
            );
        }
        names.push(s.info().worker);
    }
    for w in [
        "iii-http",
        "iii-state",
        "iii-stream",
        "iii-queue",
        "iii-pubsub",
        "iii-cron",
        "iii-observability",
    ] {
        assert!(names.contains(&w), "{w} has no config schema ({names:?})");
    }
}
