//! `stream::*` functions and the `stream` trigger type (spec §5.4, §4.6.4) over a [`StreamStore`].

use std::sync::Arc;

use iii_plugin_host::{StreamStore, UpdateOp};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{builtin, err, filter_eq, fire_matching, input, ServiceTriggerType};
use crate::engine::Engine;

const WORKER: &str = "iii-stream";

#[derive(Deserialize)]
struct Item {
    stream_name: String,
    group_id: String,
    item_id: String,
}

#[derive(Deserialize)]
struct SetIn {
    stream_name: String,
    group_id: String,
    item_id: String,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct UpdateIn {
    stream_name: String,
    group_id: String,
    item_id: String,
    ops: Value,
}

#[derive(Deserialize)]
struct GroupIn {
    stream_name: String,
    group_id: String,
}

#[derive(Deserialize)]
struct StreamIn {
    stream_name: String,
}

#[derive(Deserialize)]
struct SendIn {
    stream_name: String,
    group_id: String,
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

type Svc = Arc<dyn StreamStore>;

/// Fires `stream` triggers with the wrapper subscribers receive (camelCase, spec §4.6.4).
fn emit(engine: &Engine, stream: &str, group: &str, id: Option<&str>, event: Value) {
    let payload = json!({"type": "stream", "timestamp": crate::conn::now_ms(), "streamName": stream, "groupId": group, "id": id, "event": event});
    let (engine, stream, group, id) = (
        engine.clone(),
        stream.to_string(),
        group.to_string(),
        id.map(str::to_string),
    );
    tokio::spawn(async move {
        fire_matching(&engine, "stream", &payload, |cfg| {
            filter_eq(cfg, "stream_name", &stream)
                && filter_eq(cfg, "group_id", &group)
                && match (cfg.get("item_id").and_then(Value::as_str), &id) {
                    (None, _) => true,
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                }
        })
        .await;
    });
}

fn write_event(old: &Option<Value>, new: &Value) -> Value {
    json!({"type": if old.is_some() { "update" } else { "create" }, "data": new})
}

pub fn install(engine: &Engine, store: Arc<dyn StreamStore>) {
    engine.inner.triggers.lock().register_builtin_type(
        "stream",
        "Fires on stream::set, stream::update, stream::delete and stream::send",
        Arc::new(ServiceTriggerType {
            string_keys: &[
                "stream_name",
                "group_id",
                "item_id",
                "condition_function_id",
            ],
            required: &["stream_name"],
        }),
    );
    let svc: Svc = Arc::new(super::custom_stream::DelegatingStreams::new(engine, store));
    engine.register_builtin(
        WORKER,
        "stream::set",
        "Store an item",
        None,
        builtin(&svc, |e, ctx, v, s| async move {
            let i: SetIn = input(&ctx, v)?;
            let r = s
                .set(&i.stream_name, &i.group_id, &i.item_id, &i.data)
                .await
                .map_err(|e| err("STREAM_SET_ERROR", e))?;
            emit(
                &e,
                &i.stream_name,
                &i.group_id,
                Some(&i.item_id),
                write_event(&r.old_value, &r.new_value),
            );
            Ok(json!({"old_value": r.old_value, "new_value": r.new_value}))
        }),
    );
    engine.register_builtin(
        WORKER,
        "stream::get",
        "Read an item",
        None,
        builtin(&svc, |_e, ctx, v, s| async move {
            let i: Item = input(&ctx, v)?;
            Ok(s.get(&i.stream_name, &i.group_id, &i.item_id)
                .await
                .map_err(|e| err("STREAM_GET_ERROR", e))?
                .unwrap_or(Value::Null))
        }),
    );
    engine.register_builtin(
        WORKER,
        "stream::delete",
        "Remove an item",
        None,
        builtin(&svc, |e, ctx, v, s| async move {
            let i: Item = input(&ctx, v)?;
            let old = s
                .delete(&i.stream_name, &i.group_id, &i.item_id)
                .await
                .map_err(|e| err("STREAM_DELETE_ERROR", e))?;
            if let Some(o) = &old {
                emit(
                    &e,
                    &i.stream_name,
                    &i.group_id,
                    Some(&i.item_id),
                    json!({"type": "delete", "data": o}),
                );
            }
            Ok(json!({ "old_value": old }))
        }),
    );
    engine.register_builtin(
        WORKER,
        "stream::update",
        "Apply update ops to an item",
        None,
        builtin(&svc, |e, ctx, v, s| async move {
            let i: UpdateIn = input(&ctx, v)?;
            let ops = UpdateOp::parse_list(&i.ops)
                .map_err(|e| err("STREAM_UPDATE_ERROR", format!("invalid ops: {e}")))?;
            let r = s
                .update(&i.stream_name, &i.group_id, &i.item_id, &ops)
                .await
                .map_err(|e| err("STREAM_UPDATE_ERROR", e))?;
            emit(
                &e,
                &i.stream_name,
                &i.group_id,
                Some(&i.item_id),
                write_event(&r.old_value, &r.new_value),
            );
            serde_json::to_value(&r).map_err(|e| err("JSON_ERROR", e))
        }),
    );
    engine.register_builtin(
        WORKER,
        "stream::list",
        "All items of a group",
        None,
        builtin(&svc, |_e, ctx, v, s| async move {
            let i: GroupIn = input(&ctx, v)?;
            Ok(Value::Array(
                s.list(&i.stream_name, &i.group_id)
                    .await
                    .map_err(|e| err("STREAM_GET_GROUP_ERROR", e))?,
            ))
        }),
    );
    engine.register_builtin(
        WORKER,
        "stream::list_groups",
        "Group ids of a stream",
        None,
        builtin(&svc, |_e, ctx, v, s| async move {
            let i: StreamIn = input(&ctx, v)?;
            Ok(json!(s
                .list_groups(&i.stream_name)
                .await
                .map_err(|e| err("STREAM_LIST_GROUPS_ERROR", e))?))
        }),
    );
    engine.register_builtin(
        WORKER,
        "stream::list_all",
        "Every stream with its groups",
        None,
        builtin(&svc, |_e, _ctx, _v, s| async move {
            let all = s
                .list_all()
                .await
                .map_err(|e| err("STREAM_LIST_ALL_ERROR", e))?;
            let count = all.len();
            Ok(json!({"stream": all, "count": count}))
        }),
    );
    engine.register_builtin(
        WORKER,
        "stream::send",
        "Send a custom event to a group's subscribers",
        None,
        builtin(&svc, |e, ctx, v, _s| async move {
            let i: SendIn = input(&ctx, v)?;
            emit(
                &e,
                &i.stream_name,
                &i.group_id,
                i.id.as_deref(),
                json!({"type": "event", "event": {"type": i.kind, "data": i.data}}),
            );
            Ok(Value::Null)
        }),
    );
}
