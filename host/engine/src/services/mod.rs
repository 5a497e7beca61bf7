//! Built-in stateful services. Each talks only to an adapter trait from the plugin host
//! (`StateStore`, `StreamStore`); the backend is a WASM component chosen in `config.yaml`.

pub mod custom_stream;
pub mod state;
pub mod stream;

use std::sync::Arc;

use iii_protocol::ErrorBody;
use serde_json::Value;

pub(crate) use crate::builtins::input;
use crate::engine::{BuiltinFn, CallCtx, Engine};

/// An adapter failure as the service's error code plus the adapter's message.
pub(crate) fn err(code: &str, e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(code, e.to_string())
}

/// A builtin function that also receives the service's shared state.
pub(crate) fn builtin<S, F, Fut>(svc: &S, f: F) -> BuiltinFn
where
    S: Clone + Send + Sync + 'static,
    F: Fn(Engine, CallCtx, Value, S) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
{
    let svc = svc.clone();
    Arc::new(move |e, c, v| Box::pin(f(e, c, v, svc.clone())))
}
use crate::triggers::{Binding, BuiltinTriggerType};

/// Runs every armed binding of `trigger_type` whose config `matches`, one after the other,
/// honouring `condition_function_id` (spec §4.5: exactly `false` skips, an error skips).
pub async fn fire_matching(
    engine: &Engine,
    trigger_type: &str,
    payload: &Value,
    matches: impl Fn(&Value) -> bool,
) {
    let bindings = engine.inner.triggers.lock().armed_bindings(trigger_type);
    if bindings.is_empty() {
        return;
    }
    let text = payload.to_string();
    for b in bindings.iter().filter(|b| matches(&b.config)) {
        let meta = b.metadata.as_ref().map(Value::to_string);
        if let Some(cond) = b
            .config
            .get("condition_function_id")
            .and_then(Value::as_str)
        {
            match engine
                .call(&b.namespace, cond, &text, meta.as_deref(), None)
                .await
            {
                Ok(Some(r)) if r.get().trim() == "false" => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(trigger_id = %b.id, condition = cond, error = %e, "condition function failed; trigger skipped");
                    continue;
                }
            }
        }
        if let Err(e) = engine
            .call(&b.namespace, &b.function_id, &text, meta.as_deref(), None)
            .await
        {
            tracing::warn!(trigger_id = %b.id, function_id = %b.function_id, error = %e, "trigger handler failed");
        }
    }
}

/// `true` when the optional string filter `key` of a binding config is absent or equals `value`.
pub fn filter_eq(config: &Value, key: &str, value: &str) -> bool {
    match config.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s == value,
        Some(_) => false,
    }
}

/// Checks that the listed config keys are strings when present.
fn check_string_keys(b: &Binding, keys: &[&str]) -> Result<(), String> {
    match &b.config {
        Value::Null => Ok(()),
        Value::Object(m) => {
            for k in keys {
                if let Some(v) = m.get(*k) {
                    if !v.is_null() && !v.is_string() {
                        return Err(format!("`{k}` must be a string"));
                    }
                }
            }
            Ok(())
        }
        _ => Err("trigger config must be an object".into()),
    }
}

/// Engine trigger types fired by a service; arming only validates the config.
pub struct ServiceTriggerType {
    pub string_keys: &'static [&'static str],
    pub required: &'static [&'static str],
}

impl BuiltinTriggerType for ServiceTriggerType {
    fn register(&self, b: &Binding) -> Result<(), String> {
        check_string_keys(b, self.string_keys)?;
        for k in self.required {
            if b.config
                .get(*k)
                .and_then(Value::as_str)
                .is_none_or(|s| s.is_empty())
            {
                return Err(format!("`{k}` is required"));
            }
        }
        Ok(())
    }
    fn unregister(&self, _b: &Binding) {}
}
