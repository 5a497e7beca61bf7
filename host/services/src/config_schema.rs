//! Building blocks of the services' config schemas ([`iii_core::Service::config_schema`]).
//!
//! A schema describes what the service's `configure` accepts, so the `configuration` service
//! can refuse a bad value with a JSON pointer before the service sees it; `configure` stays the
//! final judge (it checks ranges across fields, adapter names, host syntax). Numbers are also
//! accepted as digit strings, as `configure` reads them, because `${PORT:3111}` interpolates to
//! a string in some YAML positions. Each top-level property carries `x-apply`.

use serde_json::{json, Map, Value};

/// `x-apply: live`: applied to the running service in place.
pub(crate) const LIVE: &str = "live";
/// `x-apply: rebind`: the service is recreated (new instance first, then the old drains).
pub(crate) const REBIND: &str = "rebind";
/// `x-apply: restart`: takes effect at the next start.
pub(crate) const RESTART: &str = "restart";

/// A non-negative integer of at least `min` (and at most `max`), or a string of digits.
pub(crate) fn uint(min: u64, max: Option<u64>) -> Value {
    let mut n = json!({"type": "integer", "minimum": min});
    if let Some(m) = max {
        n["maximum"] = json!(m);
    }
    json!({"anyOf": [n, {"type": "string", "pattern": "^\\s*[0-9]+\\s*$"}]})
}

/// A port number.
pub(crate) fn port() -> Value {
    uint(0, Some(65535))
}

/// A listen address: an IP address or `localhost` (`configure` checks the syntax).
pub(crate) fn host() -> Value {
    json!({"type": "string", "minLength": 1, "description": "an IP address or `localhost`"})
}

/// A string that names a function.
pub(crate) fn function_id() -> Value {
    json!({"type": "string", "pattern": "\\S"})
}

/// The `adapter:` entry (`{name | path, config, grants}`), or null for the default.
pub(crate) fn adapter() -> Value {
    json!({
        "type": ["object", "null"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string"},
            "path": {"type": "string"},
            "config": {"type": ["object", "null"]},
            "grants": {"type": ["object", "null"], "additionalProperties": false, "properties": {
                "network": {"type": "array", "items": {"type": "string"}},
                "data_dir": {"type": ["string", "null"]},
                "memory_mb": {"type": ["integer", "null"], "minimum": 1},
                "deadline_ms": {"type": ["integer", "null"], "minimum": 1},
                "fuel": {"type": ["integer", "null"], "minimum": 0}}}
        },
        "not": {"required": ["name", "path"]}
    })
}

/// `s` with `x-apply: tier` (and a description).
pub(crate) fn field(tier: &str, description: &str, mut s: Value) -> Value {
    if let Some(o) = s.as_object_mut() {
        o.insert("x-apply".into(), json!(tier));
        o.insert("description".into(), json!(description));
    }
    s
}

/// The schema of a `config:` block: an object (or null, for an absent block) with exactly
/// `props` unless `open` (a service that ignores keys it does not read).
pub(crate) fn block(title: &str, props: Vec<(&str, Value)>, open: bool) -> Value {
    let props: Map<String, Value> = props.into_iter().map(|(k, v)| (k.into(), v)).collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": ["object", "null"],
        "properties": props,
        "additionalProperties": open,
    })
}
