//! A fixed-window rate limiter as an Extism plugin (`wasm32-unknown-unknown`), for listener
//! middleware (`on_invocation`) and HTTP middleware (`on_http_request`).
//!
//! Every call runs in a fresh instance, so the counts live in the host: one Extism var,
//! `window`, holding `{"start": <ms>, "counts": {<key>: n}}`. The host keeps vars per plugin
//! across calls, bounded (1 MiB per plugin); `config.max_keys` (default 4096) bounds the keys
//! of one window, and keys beyond it share one bucket. The module has no clock (no WASI), so it
//! uses the `now_ms` the iii host adds to every hook's input.
//!
//! Config (strings or numbers): `limit` calls per window and key (default 100), `window_ms`
//! (default 1000). The key of an invocation is the context's `sub`/`subject`/`tenant`, of an
//! HTTP request the `authorization` header (`config.header` names another), else `*`.
//! Over the limit: `{"reject": {"code": "RATE_LIMITED", …}}`, or a 429 response.

use extism_pdk::*;
use serde_json::{json, Map, Value};

fn config_u64(key: &str, default: u64) -> u64 {
    config::get(key)
        .ok()
        .flatten()
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// Counts one call of `key`; `false` when the key is over its limit in this window.
fn admit(key: &str, now: u64) -> Result<bool, Error> {
    let limit = config_u64("limit", 100);
    let window_ms = config_u64("window_ms", 1000);
    let max_keys = usize::try_from(config_u64("max_keys", 4096)).unwrap_or(4096);
    let mut w: Value = var::get::<String>("window")?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let start = w["start"].as_u64().unwrap_or(0);
    if w.is_null() || now.saturating_sub(start) >= window_ms {
        // The window starts with its first call.
        w = json!({"start": now, "counts": {}});
    }
    let counts = w["counts"].as_object_mut().expect("built above");
    let key = if counts.contains_key(key) || counts.len() < max_keys {
        key.to_string()
    } else {
        "~overflow".to_string()
    };
    let n = counts.get(&key).and_then(Value::as_u64).unwrap_or(0);
    if n >= limit {
        return Ok(false);
    }
    counts.insert(key, json!(n + 1));
    var::set("window", w.to_string())?;
    Ok(true)
}

fn now(input: &Value) -> u64 {
    input["now_ms"].as_u64().unwrap_or(0)
}

fn subject(ctx: &Value) -> String {
    ["sub", "subject", "tenant"]
        .iter()
        .find_map(|k| ctx[*k].as_str())
        .unwrap_or("*")
        .to_string()
}

#[plugin_fn]
pub fn on_invocation(input: String) -> FnResult<String> {
    let call: Value = serde_json::from_str(&input)?;
    let key = subject(&call["context"]);
    if admit(&key, now(&call))? {
        Ok(json!({"proceed": call["payload"]}).to_string())
    } else {
        Ok(json!({"reject": {"code": "RATE_LIMITED",
            "message": format!("rate limit of {} calls per {} ms reached for {key}",
                config_u64("limit", 100), config_u64("window_ms", 1000))}})
        .to_string())
    }
}

#[plugin_fn]
pub fn on_http_request(input: String) -> FnResult<String> {
    let req: Value = serde_json::from_str(&input)?;
    let header = config::get("header")?.unwrap_or_else(|| "authorization".into());
    let key = req["headers"][header.as_str()]
        .as_str()
        .unwrap_or("*")
        .to_string();
    if admit(&key, now(&req))? {
        return Ok(json!("proceed").to_string());
    }
    let mut headers = Map::new();
    headers.insert(
        "retry-after".into(),
        json!((config_u64("window_ms", 1000).div_ceil(1000)).to_string()),
    );
    Ok(json!({"respond": {"status_code": 429, "headers": headers,
        "body": {"error": {"code": "RATE_LIMITED", "message": "too many requests"}}}})
    .to_string())
}
