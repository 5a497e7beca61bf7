//! `stream::*` functions and the `stream` trigger type (PROTOCOL.md §5.4, §4.6.4) over a
//! [`StreamStore`] adapter, with custom stream providers ([`custom`]). Config entry `stream`
//! (`iii-stream` is the deprecated name).

mod custom;

use iii_protocol::codes;
use std::sync::Arc;

use iii_adapter_api::{AdapterSpec, StreamStore, StreamWorld, UpdateOp};
use iii_core::config::ConfigError;
use iii_core::{
    Configured, Core, Entry, FunctionSpec, NoInput, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError, TriggerTypeSpec,
};
use iii_protocol::ErrorBody;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{adapter_spec, err, filter_eq, load_adapter, ServiceTriggerType};

/// The stream service.
pub struct Stream;

/// What the `stream` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// The `adapter:` entry; the builtin kv when absent.
    pub adapter: AdapterSpec,
    /// The entry asked for the browser stream socket (`port`/`auth_function`), which this
    /// engine does not serve yet.
    pub wants_socket: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            adapter: AdapterSpec::named("kv"),
            wants_socket: false,
        }
    }
}

impl Service for Stream {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "stream",
            worker: "iii-stream",
            deprecated_names: &["iii-stream"],
            repeatable: false,
            always_on: false,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut sc = StreamConfig::default();
        let Some(e) = entries.first() else {
            return Ok(Box::new(sc));
        };
        let at = e.key("config");
        let Some(m) = e.reader.mapping(e.config, &at)? else {
            return Ok(Box::new(sc));
        };
        e.reader
            .check_keys(m, &at, &["adapter", "port", "host", "auth_function"])?;
        sc.adapter = adapter_spec(e, m)?;
        sc.wants_socket = m.contains_key("port") || m.contains_key("auth_function");
        Ok(Box::new(sc))
    }
}

#[async_trait::async_trait]
impl Configured for StreamConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        if self.wants_socket {
            tracing::warn!("config entry `stream` (stream socket) starts nothing: the browser stream socket (port 3112) is not served by this engine yet; stream::* functions and stream triggers work");
        }
        let (store, _) = load_adapter::<StreamWorld>(cx, "stream", &self.adapter).await?;
        let store: Arc<dyn StreamStore> =
            Arc::new(custom::DelegatingStreams::new(cx.core(), store));
        Ok(Box::new(StreamService { store }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The prepared service: the store (custom providers first, then the adapter).
#[derive(Clone)]
pub struct StreamService {
    store: Arc<dyn StreamStore>,
}

impl StreamService {
    /// A service over `store`, with custom providers looked up in `core` (for tests).
    pub fn new(core: &Core, store: Arc<dyn StreamStore>) -> Self {
        StreamService {
            store: Arc::new(custom::DelegatingStreams::new(core, store)),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
struct Item {
    stream_name: String,
    group_id: String,
    item_id: String,
}

#[derive(Deserialize, JsonSchema)]
struct SetIn {
    stream_name: String,
    group_id: String,
    item_id: String,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize, JsonSchema)]
struct UpdateIn {
    stream_name: String,
    group_id: String,
    item_id: String,
    /// Update ops, applied in order.
    ops: Value,
}

#[derive(Deserialize, JsonSchema)]
struct GroupIn {
    stream_name: String,
    group_id: String,
}

#[derive(Deserialize, JsonSchema)]
struct StreamIn {
    stream_name: String,
}

#[derive(Deserialize, JsonSchema)]
struct SendIn {
    stream_name: String,
    group_id: String,
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// Fires `stream` triggers with the wrapper subscribers receive (camelCase, §4.6.4).
fn emit(core: &Core, stream: &str, group: &str, id: Option<&str>, event: Value) {
    let payload = json!({"type": "stream", "timestamp": iii_core::conn::now_ms(), "streamName": stream, "groupId": group, "id": id, "event": event});
    let (stream, group, id) = (
        stream.to_string(),
        group.to_string(),
        id.map(str::to_string),
    );
    core.fire("stream", payload, move |cfg| {
        filter_eq(cfg, "stream_name", &stream)
            && filter_eq(cfg, "group_id", &group)
            && match (cfg.get("item_id").and_then(Value::as_str), &id) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            }
    });
}

fn write_event(old: &Option<Value>, new: &Value) -> Value {
    json!({"type": if old.is_some() { "update" } else { "create" }, "data": new})
}

/// A stream function: typed input plus the store.
fn function<In, F, Fut>(svc: &StreamService, id: &str, description: &str, f: F) -> FunctionSpec
where
    In: serde::de::DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(Core, In, Arc<dyn StreamStore>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
{
    let store = svc.store.clone();
    FunctionSpec::typed(id, description, move |core, _ctx, i: In| {
        f(core, i, store.clone())
    })
}

fn old_new_schema() -> Value {
    json!({"type": "object", "properties": {"old_value": {}, "new_value": {}}})
}

impl Prepared for StreamService {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        let tt = ServiceTriggerType {
            string_keys: &[
                "stream_name",
                "group_id",
                "item_id",
                "condition_function_id",
            ],
            required: &["stream_name"],
        };
        reg.trigger_type(TriggerTypeSpec {
            id: "stream".into(),
            description: "Fires on stream::set, stream::update, stream::delete and stream::send"
                .into(),
            config_schema: Some(tt.config_schema()),
            request_schema: Some(json!({"type": "object", "properties": {
                "type": {"const": "stream"}, "timestamp": {"type": "integer"},
                "streamName": {"type": "string"}, "groupId": {"type": "string"},
                "id": {"type": ["string", "null"]}, "event": {"type": "object"}}})),
            response_schema: None,
            provider: Arc::new(tt),
        });
        let svc = self.clone();
        reg.function(
            function(
                &svc,
                "stream::set",
                "Store an item",
                |e, i: SetIn, s| async move {
                    let r = s
                        .set(&i.stream_name, &i.group_id, &i.item_id, &i.data)
                        .await
                        .map_err(|e| err(codes::STREAM_SET_ERROR, e))?;
                    emit(
                        &e,
                        &i.stream_name,
                        &i.group_id,
                        Some(&i.item_id),
                        write_event(&r.old_value, &r.new_value),
                    );
                    Ok(json!({"old_value": r.old_value, "new_value": r.new_value}))
                },
            )
            .returns(old_new_schema()),
        );
        reg.function(
            function(
                &svc,
                "stream::get",
                "Read an item",
                |_e, i: Item, s| async move {
                    Ok(s.get(&i.stream_name, &i.group_id, &i.item_id)
                        .await
                        .map_err(|e| err(codes::STREAM_GET_ERROR, e))?
                        .unwrap_or(Value::Null))
                },
            )
            .returns(json!({"description": "the item, or null when absent"})),
        );
        reg.function(
            function(
                &svc,
                "stream::delete",
                "Remove an item",
                |e, i: Item, s| async move {
                    let old = s
                        .delete(&i.stream_name, &i.group_id, &i.item_id)
                        .await
                        .map_err(|e| err(codes::STREAM_DELETE_ERROR, e))?;
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
                },
            )
            .returns(json!({"type": "object", "properties": {"old_value": {}}})),
        );
        reg.function(
            function(
                &svc,
                "stream::update",
                "Apply update ops to an item",
                |e, i: UpdateIn, s| async move {
                    let ops = UpdateOp::parse_list(&i.ops).map_err(|e| {
                        err(codes::STREAM_UPDATE_ERROR, format!("invalid ops: {e}"))
                    })?;
                    let r = s
                        .update(&i.stream_name, &i.group_id, &i.item_id, &ops)
                        .await
                        .map_err(|e| err(codes::STREAM_UPDATE_ERROR, e))?;
                    emit(
                        &e,
                        &i.stream_name,
                        &i.group_id,
                        Some(&i.item_id),
                        write_event(&r.old_value, &r.new_value),
                    );
                    serde_json::to_value(&r).map_err(|e| err(codes::JSON_ERROR, e))
                },
            )
            .returns(
                json!({"type": "object", "properties": {"old_value": {}, "new_value": {},
                "errors": {"type": "array", "items": {"type": "object"}}}}),
            ),
        );
        reg.function(
            function(
                &svc,
                "stream::list",
                "All items of a group",
                |_e, i: GroupIn, s| async move {
                    Ok(Value::Array(
                        s.list(&i.stream_name, &i.group_id)
                            .await
                            .map_err(|e| err(codes::STREAM_GET_GROUP_ERROR, e))?,
                    ))
                },
            )
            .returns(json!({"type": "array"})),
        );
        reg.function(
            function(
                &svc,
                "stream::list_groups",
                "Group ids of a stream",
                |_e, i: StreamIn, s| async move {
                    Ok(json!(s
                        .list_groups(&i.stream_name)
                        .await
                        .map_err(|e| err(codes::STREAM_LIST_GROUPS_ERROR, e))?))
                },
            )
            .returns(json!({"type": "array", "items": {"type": "string"}})),
        );
        reg.function(
            function(&svc, "stream::list_all", "Every stream with its groups", |_e, _i: NoInput, s| async move {
                let all = s
                    .list_all()
                    .await
                    .map_err(|e| err(codes::STREAM_LIST_ALL_ERROR, e))?;
                let count = all.len();
                Ok(json!({"stream": all, "count": count}))
            })
            .returns(json!({"type": "object", "properties": {"stream": {"type": "array"}, "count": {"type": "integer"}}})),
        );
        reg.function(
            function(
                &svc,
                "stream::send",
                "Send a custom event to a group's subscribers",
                |e, i: SendIn, _s| async move {
                    emit(
                        &e,
                        &i.stream_name,
                        &i.group_id,
                        i.id.as_deref(),
                        json!({"type": "event", "event": {"type": i.kind, "data": i.data}}),
                    );
                    Ok(Value::Null)
                },
            )
            .returns(json!({"type": "null"})),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_adapter_api::memory::MemoryLoader;
    use iii_adapter_api::AdapterLoader;
    use iii_core::testing::TestCore;
    use iii_core::triggers::Binding;

    async fn stream_core() -> TestCore {
        let mut t = TestCore::new();
        let loader: Arc<dyn AdapterLoader> = Arc::new(MemoryLoader);
        t.handles.insert(loader);
        t.start(&Stream, "").await.unwrap();
        t
    }

    #[tokio::test]
    async fn items_round_trip_and_fire_stream_triggers() {
        let t = stream_core().await;
        let seen = t.recorder("chat::on_message", Value::Null);
        let b = Binding {
            id: "b1".into(),
            trigger_type: "stream".into(),
            function_id: "chat::on_message".into(),
            config: json!({"stream_name": "chat", "group_id": "room1"}),
            metadata: None,
            owner: None,
            namespace: "default".into(),
            trigger_namespace: None,
            home_namespace: "default".into(),
            provider: None,
        };
        t.core.triggers().upsert(b, &mut Vec::new()).unwrap();
        let item = json!({"stream_name": "chat", "group_id": "room1", "item_id": "m1"});
        let mut set = item.clone();
        set["data"] = json!({"text": "hi"});
        t.call("stream::set", set).await.unwrap();
        assert_eq!(
            t.call("stream::get", item.clone()).await.unwrap(),
            json!({"text": "hi"})
        );
        t.call(
            "stream::set",
            json!({"stream_name": "chat", "group_id": "room2", "item_id": "m1", "data": 1}),
        )
        .await
        .unwrap();
        assert_eq!(
            t.call("stream::list_groups", json!({"stream_name": "chat"}))
                .await
                .unwrap(),
            json!(["room1", "room2"])
        );
        t.call("stream::delete", item).await.unwrap();
        let got = TestCore::wait_for(&seen, 2, 2000).await;
        assert_eq!(got.len(), 2, "room2 does not match the binding: {got:?}");
        assert_eq!(got[0]["event"]["type"], "create");
        assert_eq!(got[0]["streamName"], "chat");
        assert_eq!(got[1]["event"]["type"], "delete");
    }

    #[tokio::test]
    async fn a_custom_provider_serves_its_stream_and_others_use_the_adapter() {
        let t = stream_core().await;
        let calls = t.recorder("stream::get(live)", json!({"from": "provider"}));
        let r = t
            .call(
                "stream::get",
                json!({"stream_name": "live", "group_id": "g", "item_id": "x"}),
            )
            .await
            .unwrap();
        assert_eq!(r, json!({"from": "provider"}));
        assert_eq!(calls.lock().len(), 1);
        let r = t
            .call(
                "stream::get",
                json!({"stream_name": "stored", "group_id": "g", "item_id": "x"}),
            )
            .await
            .unwrap();
        assert_eq!(r, Value::Null);
    }

    #[tokio::test]
    async fn a_binding_without_stream_name_is_refused() {
        let t = stream_core().await;
        let b = Binding {
            id: "b2".into(),
            trigger_type: "stream".into(),
            function_id: "f".into(),
            config: json!({}),
            metadata: None,
            owner: None,
            namespace: "default".into(),
            trigger_namespace: None,
            home_namespace: "default".into(),
            provider: None,
        };
        let e = t.core.triggers().upsert(b, &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("`stream_name` is required"), "{e}");
    }
}
