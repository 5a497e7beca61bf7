//! `stream::*` functions and the `stream` trigger type (PROTOCOL.md §5.4, §4.6.4) over a
//! [`StreamStore`] adapter, with custom stream providers ([`custom`]), and the stream socket
//! ([`socket`]) whose subscribers get every event ([`hub`]). Config entry `stream`
//! (`iii-stream` is the deprecated name).

mod custom;
mod hub;
mod socket;

pub use socket::SocketConfig;

use iii_protocol::codes;
use std::sync::Arc;

use iii_adapter_api::{AdapterSpec, StreamStore, StreamWorld, UpdateOp};
use iii_core::config::ConfigError;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, FunctionSpec, NoInput, PrepareCx, Prepared,
    Registrar, Service, ServiceInfo, StartError, TriggerTypeSpec,
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
    /// The stream socket. It runs whenever the service does, on 127.0.0.1:3112 unless
    /// configured (`port: 0` picks a free port); `None` only in tests of the functions alone.
    pub socket: Option<SocketConfig>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            adapter: AdapterSpec::named("kv"),
            socket: Some(SocketConfig::default()),
        }
    }
}

/// The `stream` entry's keys that configure the socket.
const SOCKET_KEYS: &[&str] = &[
    "port",
    "host",
    "auth_function",
    "max_outbound_bytes",
    "max_message_bytes",
    "max_subscriptions",
    "max_connections",
    "handshake_timeout_ms",
];

/// Reads the socket's keys of the entry's `config:` mapping `m` (at `at`).
fn socket_config(
    e: &Entry<'_>,
    m: &serde_yaml::Mapping,
    at: &str,
) -> Result<Option<SocketConfig>, ConfigError> {
    let r = &e.reader;
    let mut c = SocketConfig::default();
    if let Some(v) = m.get("port") {
        c.port = r.port(v, &format!("{at}.port"))?;
    }
    if let Some(v) = m.get("host") {
        c.host = r.host(v, &format!("{at}.host"))?;
    }
    if let Some(v) = m.get("auth_function").filter(|v| !v.is_null()) {
        let f = r.string(v, &format!("{at}.auth_function"))?;
        if f.trim().is_empty() {
            return Err(r.invalid(&format!("{at}.auth_function"), "a function id", v));
        }
        c.auth_function = Some(f);
    }
    let positive = |k: &str| -> Result<Option<u64>, ConfigError> {
        let Some(v) = m.get(k) else { return Ok(None) };
        let key = format!("{at}.{k}");
        match r.u64(v, &key)? {
            0 => Err(r.invalid(&key, "a positive integer", v)),
            n => Ok(Some(n)),
        }
    };
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(n) = positive("max_outbound_bytes")? {
        c.max_outbound_bytes = size(n);
    }
    if let Some(n) = positive("max_message_bytes")? {
        c.max_message_bytes = size(n);
    }
    if let Some(n) = positive("max_subscriptions")? {
        c.max_subscriptions = size(n);
    }
    if let Some(n) = positive("max_connections")? {
        c.max_connections = size(n);
    }
    if let Some(n) = positive("handshake_timeout_ms")? {
        c.handshake_timeout = std::time::Duration::from_millis(n);
    }
    Ok(Some(c))
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

    fn config_schema(&self) -> Option<Value> {
        use crate::config_schema::*;
        let pos = |d: &str| field(REBIND, d, uint(1, None));
        Some(block(
            "iii-stream",
            vec![
                ("adapter", field(RESTART, "stream adapter (kv)", adapter())),
                ("port", field(REBIND, "stream socket port (3112)", port())),
                (
                    "host",
                    field(REBIND, "stream socket address (127.0.0.1)", host()),
                ),
                (
                    "auth_function",
                    field(
                        REBIND,
                        "function that authenticates stream socket clients",
                        json!({"anyOf": [function_id(), {"type": "null"}]}),
                    ),
                ),
                ("max_outbound_bytes", pos("bytes queued per client")),
                ("max_message_bytes", pos("largest client message")),
                ("max_subscriptions", pos("subscriptions per client")),
                ("max_connections", pos("clients at once")),
                ("handshake_timeout_ms", pos("time to finish the handshake")),
            ],
            false,
        ))
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
        let mut allowed = vec!["adapter"];
        allowed.extend_from_slice(SOCKET_KEYS);
        e.reader.check_keys(m, &at, &allowed)?;
        sc.adapter = adapter_spec(e, m)?;
        sc.socket = socket_config(e, m, &at)?;
        Ok(Box::new(sc))
    }
}

#[async_trait::async_trait]
impl Configured for StreamConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let socket = match &self.socket {
            None => None,
            Some(c) => Some(
                socket::BoundSocket::bind(c.clone())
                    .await
                    .map_err(|source| StartError::Bind {
                        what: "stream socket (stream)".into(),
                        host: c.host.clone(),
                        port: c.port,
                        source,
                    })?,
            ),
        };
        let (store, relay) = match crate::bridge::stream_store("stream", &self.adapter)? {
            Some(remote) => (remote, None),
            None => {
                let spec = crate::common::redis_spec("stream", &self.adapter)?;
                let (store, _) = load_adapter::<StreamWorld>(cx, "stream", &spec).await?;
                let relay =
                    crate::common::redis_relay(cx, "stream", &spec, "stream::events").await?;
                (store, relay)
            }
        };
        let store: Arc<dyn StreamStore> =
            Arc::new(custom::DelegatingStreams::new(cx.core(), store));
        let hub: Arc<hub::Hub> = Arc::default();
        let relay_task = relay.map(|(r, task)| {
            let _ = hub.relay.set(r);
            task
        });
        Ok(Box::new(Running {
            svc: StreamService { store, hub },
            socket,
            relay_task,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The prepared service: the store (custom providers first, then the adapter) and the
/// socket's subscribers, which every event reaches.
#[derive(Clone)]
pub struct StreamService {
    store: Arc<dyn StreamStore>,
    hub: Arc<hub::Hub>,
}

impl StreamService {
    /// A service over `store`, with custom providers looked up in `core` (for tests).
    pub fn new(core: &Core, store: Arc<dyn StreamStore>) -> Self {
        StreamService {
            store: Arc::new(custom::DelegatingStreams::new(core, store)),
            hub: Arc::default(),
        }
    }
}

/// The service with its socket, if configured, bound and waiting for `run`.
struct Running {
    svc: StreamService,
    socket: Option<socket::BoundSocket>,
    /// With a shared backend (redis): delivers the other engines' events here.
    relay_task: Option<crate::common::RelayTask>,
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

/// Pushes an event to the socket's subscribers and fires `stream` triggers, both with the same
/// wrapper (camelCase, §4.6.4). Never waits on a subscriber.
fn emit(core: &Core, hub: &hub::Hub, stream: &str, group: &str, id: Option<&str>, event: Value) {
    let payload = json!({"type": "stream", "timestamp": iii_core::conn::now_ms(), "streamName": stream, "groupId": group, "id": id, "event": event});
    if let Some(r) = hub.relay.get() {
        r.send(&payload);
    }
    deliver(core, hub, payload);
}

/// Hands an event (this engine's or another's) to this engine's sockets and triggers.
fn deliver(core: &Core, hub: &hub::Hub, payload: Value) {
    let stream = payload["streamName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let group = payload["groupId"].as_str().unwrap_or_default().to_string();
    let id = payload["id"].as_str().map(str::to_string);
    hub.publish(&stream, &group, id.as_deref(), &payload);
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

/// A stream function: its handler gets the store and the socket hub with every call.
fn function<In, F, Fut>(svc: &StreamService, id: &str, description: &str, f: F) -> FunctionSpec
where
    In: serde::de::DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(Core, In, (Arc<dyn StreamStore>, Arc<hub::Hub>)) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
{
    crate::common::function(&(svc.store.clone(), svc.hub.clone()), id, description, f)
}

fn old_new_schema() -> Value {
    json!({"type": "object", "properties": {"old_value": {}, "new_value": {}}})
}

impl Prepared for Running {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        self.svc.install(reg);
        // The socket's trigger types exist whether or not the socket runs, so bindings made
        // for it are accepted (and stay inert) on an engine that does not serve it.
        for (id, description) in [
            (socket::JOIN, "Asked before a stream socket subscription starts; answer {\"unauthorized\": true} to refuse it"),
            (socket::LEAVE, "Fired when a stream socket subscription ends (leave frame or socket closed)"),
        ] {
            let tt = ServiceTriggerType {
                string_keys: &["stream_name", "condition_function_id"],
                required: &[],
            };
            reg.trigger_type(TriggerTypeSpec {
                id: id.into(),
                description: description.into(),
                config_schema: Some(tt.config_schema()),
                request_schema: Some(json!({"type": "object", "properties": {
                    "subscription_id": {"type": "string"}, "stream_name": {"type": "string"},
                    "group_id": {"type": "string"}, "id": {"type": ["string", "null"]},
                    "context": {}}})),
                response_schema: (id == socket::JOIN).then(|| {
                    json!({"type": ["object", "null"], "properties": {"unauthorized": {"type": "boolean"}}})
                }),
                provider: Arc::new(tt),
            });
        }
    }

    fn listening(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        self.socket
            .iter()
            .map(|s| ("stream socket", s.addr))
            .collect()
    }

    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let Running {
            svc,
            socket,
            relay_task,
        } = *self;
        let relay = relay_task.map(|task| {
            let (core, hub) = (core.clone(), svc.hub.clone());
            task.run(stop.clone(), move |ev| deliver(&core, &hub, ev))
        });
        match (socket, relay) {
            (None, None) => None,
            (Some(s), None) => Some(Box::pin(s.serve(core, svc.hub, svc.store, stop))),
            (None, Some(r)) => Some(Box::pin(r)),
            (Some(s), Some(r)) => Some(Box::pin(async move {
                tokio::join!(s.serve(core, svc.hub, svc.store, stop), r);
            })),
        }
    }
}

impl StreamService {
    fn install(&self, reg: &mut Registrar<'_>) {
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
                |e, i: SetIn, (s, h)| async move {
                    let r = s
                        .set(&i.stream_name, &i.group_id, &i.item_id, &i.data)
                        .await
                        .map_err(|e| err(codes::STREAM_SET_ERROR, e))?;
                    emit(
                        &e,
                        &h,
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
                |_e, i: Item, (s, _h)| async move {
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
                |e, i: Item, (s, h)| async move {
                    let old = s
                        .delete(&i.stream_name, &i.group_id, &i.item_id)
                        .await
                        .map_err(|e| err(codes::STREAM_DELETE_ERROR, e))?;
                    if let Some(o) = &old {
                        emit(
                            &e,
                            &h,
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
                |e, i: UpdateIn, (s, h)| async move {
                    let ops = UpdateOp::parse_list(&i.ops).map_err(|e| {
                        err(codes::STREAM_UPDATE_ERROR, format!("invalid ops: {e}"))
                    })?;
                    let r = s
                        .update(&i.stream_name, &i.group_id, &i.item_id, &ops)
                        .await
                        .map_err(|e| err(codes::STREAM_UPDATE_ERROR, e))?;
                    emit(
                        &e,
                        &h,
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
                |_e, i: GroupIn, (s, _h)| async move {
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
                |_e, i: StreamIn, (s, _h)| async move {
                    Ok(json!(s
                        .list_groups(&i.stream_name)
                        .await
                        .map_err(|e| err(codes::STREAM_LIST_GROUPS_ERROR, e))?))
                },
            )
            .returns(json!({"type": "array", "items": {"type": "string"}})),
        );
        reg.function(
            function(&svc, "stream::list_all", "Every stream with its groups", |_e, _i: NoInput, (s, _h)| async move {
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
                |e, i: SendIn, (_s, h)| async move {
                    emit(
                        &e,
                        &h,
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

    fn read(yaml: &str) -> Result<StreamConfig, String> {
        let config: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        let e = Entry {
            at: "workers[0](stream)".into(),
            name: "stream",
            config: &config,
            reader: iii_core::config::EntryReader { path: "test.yaml" },
        };
        let c = Stream.configure(&[e]).map_err(|e| e.to_string())?;
        Ok(c.as_any()
            .downcast_ref::<StreamConfig>()
            .expect("a StreamConfig")
            .clone())
    }

    #[test]
    fn the_socket_runs_on_loopback_3112_by_default() {
        for bare in ["", "{adapter: {name: kv}}"] {
            let s = read(bare).unwrap().socket.unwrap();
            assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 3112), "{bare}");
        }
        let s = read("{port: 0}").unwrap().socket.unwrap();
        assert_eq!(
            (s.host.as_str(), s.port),
            ("127.0.0.1", 0),
            "loopback unless configured"
        );
        let s = read("{auth_function: app::auth}").unwrap().socket.unwrap();
        assert_eq!(s.port, 3112);
        assert_eq!(s.auth_function.as_deref(), Some("app::auth"));
        let s = read("{host: 0.0.0.0, max_outbound_bytes: 1024, max_message_bytes: 2048, max_subscriptions: 3, max_connections: 4, handshake_timeout_ms: 50}")
            .unwrap()
            .socket
            .unwrap();
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(
            (
                s.max_outbound_bytes,
                s.max_message_bytes,
                s.max_subscriptions
            ),
            (1024, 2048, 3)
        );
        assert_eq!(s.handshake_timeout, std::time::Duration::from_millis(50));
    }

    #[test]
    fn bad_socket_keys_name_the_dotted_key() {
        for (yaml, key) in [
            ("{port: 70000}", "workers[0](stream).config.port"),
            ("{host: 'not a host'}", "workers[0](stream).config.host"),
            (
                "{auth_function: ''}",
                "workers[0](stream).config.auth_function",
            ),
            (
                "{auth_function: 3}",
                "workers[0](stream).config.auth_function",
            ),
            (
                "{max_outbound_bytes: 0}",
                "workers[0](stream).config.max_outbound_bytes",
            ),
            (
                "{max_subscriptions: -1}",
                "workers[0](stream).config.max_subscriptions",
            ),
            ("{prot: 3112}", "workers[0](stream).config.prot"),
        ] {
            let e = read(yaml).unwrap_err();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    async fn stream_core() -> TestCore {
        let mut t = TestCore::new();
        let loader: Arc<dyn AdapterLoader> = Arc::new(MemoryLoader);
        t.handles.insert(loader);
        t.start(&Stream, "port: 0").await.unwrap();
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
