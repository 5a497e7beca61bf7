//! `state::*` functions and the `state` trigger type (spec §5.3, §4.6.3) over a [`StateStore`].

use std::sync::Arc;

use iii_plugin_host::{StateStore, UpdateOp};
use iii_protocol::ErrorBody;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{builtin, err, filter_eq, fire_matching, input, ServiceTriggerType};
use crate::engine::Engine;

const WORKER: &str = "iii-state";

#[derive(Clone)]
pub struct StateOptions {
    pub triggers_enabled: bool,
    pub max_value_bytes: Option<usize>,
}

#[derive(Deserialize)]
struct ScopeKey {
    scope: String,
    key: String,
}

#[derive(Deserialize)]
struct SetIn {
    scope: String,
    key: String,
    value: Option<Value>,
    /// Accepted as an alias of `value`.
    data: Option<Value>,
}

#[derive(Deserialize)]
struct UpdateIn {
    scope: String,
    key: String,
    ops: Value,
}

#[derive(Deserialize)]
struct ScopeIn {
    scope: String,
}

type Svc = Arc<(Arc<dyn StateStore>, StateOptions)>;

/// Fires `state` triggers after a successful write, on a background task (spec §4.6.3).
fn emit(
    engine: &Engine,
    svc: &Svc,
    scope: &str,
    key: &str,
    old: Option<Value>,
    new: Option<Value>,
) {
    if !svc.1.triggers_enabled {
        return;
    }
    let event = match (&old, &new) {
        (_, None) => "state:deleted",
        (None, Some(_)) => "state:created",
        (Some(_), Some(_)) => "state:updated",
    };
    let payload = json!({"type": "state", "event_type": event, "scope": scope, "key": key,
        "old_value": old.unwrap_or(Value::Null), "new_value": new.unwrap_or(Value::Null)});
    let (engine, scope, key) = (engine.clone(), scope.to_string(), key.to_string());
    tokio::spawn(async move {
        fire_matching(&engine, "state", &payload, |cfg| {
            filter_eq(cfg, "scope", &scope) && filter_eq(cfg, "key", &key)
        })
        .await;
    });
}

pub fn install(engine: &Engine, store: Arc<dyn StateStore>, opts: StateOptions) {
    engine.inner.triggers.lock().register_builtin_type(
        "state",
        "Fires after state::set, state::update and state::delete",
        Arc::new(ServiceTriggerType {
            string_keys: &["scope", "key", "condition_function_id"],
            required: &[],
        }),
    );
    let svc: Svc = Arc::new((store, opts));
    engine.register_builtin(
        WORKER,
        "state::set",
        "Store a value under scope/key",
        None,
        builtin(&svc, |e, ctx, v, svc| async move {
            let i: SetIn = input(&ctx, v)?;
            let value = i.value.or(i.data).unwrap_or(Value::Null);
            if let Some(max) = svc.1.max_value_bytes {
                let len = value.to_string().len();
                if len > max {
                    return Err(ErrorBody::new(
                        "VALUE_TOO_LARGE",
                        format!("value is {len} bytes of JSON; max_value_bytes is {max}"),
                    ));
                }
            }
            let r = svc
                .0
                .set(&i.scope, &i.key, &value)
                .await
                .map_err(|e| err("SET_ERROR", e))?;
            emit(
                &e,
                &svc,
                &i.scope,
                &i.key,
                r.old_value.clone(),
                Some(r.new_value.clone()),
            );
            Ok(json!({"old_value": r.old_value, "new_value": r.new_value}))
        }),
    );
    engine.register_builtin(
        WORKER,
        "state::get",
        "Read the value under scope/key",
        None,
        builtin(&svc, |_e, ctx, v, svc| async move {
            let i: ScopeKey = input(&ctx, v)?;
            Ok(svc
                .0
                .get(&i.scope, &i.key)
                .await
                .map_err(|e| err("GET_ERROR", e))?
                .unwrap_or(Value::Null))
        }),
    );
    engine.register_builtin(
        WORKER,
        "state::delete",
        "Remove the value under scope/key",
        None,
        builtin(&svc, |e, ctx, v, svc| async move {
            let i: ScopeKey = input(&ctx, v)?;
            let old = svc
                .0
                .delete(&i.scope, &i.key)
                .await
                .map_err(|e| err("DELETE_ERROR", e))?;
            if old.is_some() {
                emit(&e, &svc, &i.scope, &i.key, old.clone(), None);
            }
            Ok(old.unwrap_or(Value::Null))
        }),
    );
    engine.register_builtin(
        WORKER,
        "state::update",
        "Apply update ops to the value under scope/key",
        None,
        builtin(&svc, |e, ctx, v, svc| async move {
            let i: UpdateIn = input(&ctx, v)?;
            let ops = UpdateOp::parse_list(&i.ops)
                .map_err(|e| err("UPDATE_ERROR", format!("invalid ops: {e}")))?;
            let r = svc
                .0
                .update(&i.scope, &i.key, &ops)
                .await
                .map_err(|e| err("UPDATE_ERROR", e))?;
            emit(
                &e,
                &svc,
                &i.scope,
                &i.key,
                r.old_value.clone(),
                Some(r.new_value.clone()),
            );
            serde_json::to_value(&r).map_err(|e| err("serialization_error", e))
        }),
    );
    engine.register_builtin(
        WORKER,
        "state::list",
        "All values of a scope, in insertion order",
        None,
        builtin(&svc, |_e, ctx, v, svc| async move {
            let i: ScopeIn = input(&ctx, v)?;
            Ok(Value::Array(
                svc.0
                    .list(&i.scope)
                    .await
                    .map_err(|e| err("LIST_ERROR", e))?,
            ))
        }),
    );
    engine.register_builtin(
        WORKER,
        "state::list_groups",
        "All scopes, sorted",
        None,
        builtin(&svc, |_e, _ctx, _v, svc| async move {
            let g = svc
                .0
                .list_groups()
                .await
                .map_err(|e| err("LIST_GROUPS_ERROR", e))?;
            Ok(json!({ "groups": g }))
        }),
    );
}
