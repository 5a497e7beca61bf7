//! Pieces the state and stream services share: the `adapter:` config key, adapter loading,
//! adapter errors as wire errors, trigger-config filters and a trigger type that validates
//! binding configs. Not a service; services never import each other, only this.

use iii_adapter_api::{AdapterError, AdapterLoader, AdapterSource, AdapterSpec};
use iii_core::config::ConfigError;
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::{Core, Entry, FunctionSpec, PrepareCx, StartError};
use iii_protocol::ErrorBody;
use serde_json::Value;
use std::sync::Arc;

/// An adapter failure as the service's error code plus the adapter's message.
pub(crate) fn err(code: &str, e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(code, e.to_string())
}

/// Reads the `adapter:` key of a service entry (the builtin kv when absent).
pub(crate) fn adapter_spec(
    e: &Entry<'_>,
    m: &serde_yaml::Mapping,
) -> Result<AdapterSpec, ConfigError> {
    let Some(a) = m.get("adapter").filter(|a| !a.is_null()) else {
        return Ok(AdapterSpec::named("kv"));
    };
    let at = e.key("config.adapter");
    let json = serde_json::to_value(a).map_err(|x| e.reader.error(format!("`{at}`: {x}")))?;
    AdapterSpec::from_value(&json).map_err(|x| e.reader.error(format!("`{at}`: {x}")))
}

/// The spec of an adapter that talks to one network server named by a URL in its config
/// (`redis_url`, `amqp_url`): without `grants.network` it gets exactly the URL's `host:port`;
/// with one that does not cover it, the start-up is refused naming both.
pub(crate) fn network_adapter_spec(
    spec: &AdapterSpec,
    url_key: &str,
    default_url: &str,
) -> Result<AdapterSpec, String> {
    let raw = match spec.config.get(url_key) {
        None | Some(Value::Null) => default_url,
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(format!(
                "`config.{url_key}` must be a URL string, not {other}"
            ))
        }
    };
    let url = url::Url::parse(raw)
        .map_err(|e| format!("`config.{url_key}` {raw:?} is not a URL: {e}"))?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`config.{url_key}` {raw:?} names no host"))?;
    let port = url
        .port_or_known_default()
        .or_else(|| url::Url::parse(default_url).ok()?.port_or_known_default())
        .ok_or_else(|| format!("`config.{url_key}` {raw:?} names no port"))?;
    // `Url` keeps IPv6 hosts bracketed, as a `host:port` grant writes them.
    let addr = format!("{host}:{port}");
    let mut out = spec.clone();
    if out.grants.network.is_empty() {
        out.grants.network = vec![addr];
    } else if !out
        .grants
        .network
        .iter()
        .any(|g| g.eq_ignore_ascii_case(&addr))
    {
        return Err(format!(
            "`grants.network` {:?} does not cover {addr}, the server of `config.{url_key}` {raw:?}: add \"{addr}\" to it or leave it out",
            out.grants.network
        ));
    }
    Ok(out)
}

/// Loads the service's adapter through the loader the composition root provided. The builtin
/// kv adapter is durable by default: without a `data_dir` grant it gets
/// `<project>/.iii/data/<service>` (unless its config asks for `store_method: in_memory`).
pub(crate) async fn load_adapter<W: iii_adapter_api::AdapterWorld>(
    cx: &mut PrepareCx<'_>,
    service: &'static str,
    spec: &AdapterSpec,
) -> Result<(Arc<W::Store>, AdapterSpec), StartError> {
    let mut spec = spec.clone();
    // The embedded durable components keep their data under the project by default.
    let builtin_kv = matches!(&spec.source, AdapterSource::Name(n) if n == "kv" || n == "queue");
    let in_memory = spec.config.get("store_method").and_then(Value::as_str) == Some("in_memory");
    if builtin_kv && !in_memory && spec.grants.data_dir.is_none() {
        spec.grants.data_dir = Some(cx.data_dir(service)?);
    }
    let loader: Arc<dyn AdapterLoader> = cx.get(service)?;
    let store = iii_adapter_api::load::<W>(&*loader, &spec)
        .await
        .map_err(|e: AdapterError| StartError::Service {
            service,
            message: format!("its adapter failed to load: {e}"),
        })?;
    tracing::info!(adapter = %spec.label(), data_dir = ?spec.grants.data_dir, "{service} service ready");
    Ok((store, spec))
}

/// `true` when the optional string filter `key` of a binding config is absent or equals `value`.
pub(crate) fn filter_eq(config: &Value, key: &str, value: &str) -> bool {
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

/// Trigger types fired by a service; arming only validates the config.
pub(crate) struct ServiceTriggerType {
    pub string_keys: &'static [&'static str],
    pub required: &'static [&'static str],
}

impl ServiceTriggerType {
    /// The JSON Schema of a binding config this type accepts.
    pub(crate) fn config_schema(&self) -> Value {
        let props: serde_json::Map<String, Value> = self
            .string_keys
            .iter()
            .map(|k| (k.to_string(), serde_json::json!({"type": "string"})))
            .collect();
        serde_json::json!({"type": "object", "properties": props, "required": self.required})
    }
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

/// A typed function whose handler gets the core, its input and a clone of the service's
/// `state` (its store, options, shared tables) on every call.
pub(crate) fn function<S, In, F, Fut>(state: &S, id: &str, description: &str, f: F) -> FunctionSpec
where
    S: Clone + Send + Sync + 'static,
    In: serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static,
    F: Fn(Core, In, S) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
{
    let state = state.clone();
    FunctionSpec::typed(id, description, move |core, _ctx, i: In| {
        f(core, i, state.clone())
    })
}

/// The worker socket's listeners as daemons started by the engine reach them (provided by the
/// worker socket service at prepare).
#[derive(Debug, Clone, Default)]
pub struct WorkerEndpoints(pub Vec<WorkerEndpoint>);

/// One worker socket listener.
#[derive(Debug, Clone)]
pub struct WorkerEndpoint {
    /// Where it listens (an unspecified host is reached on loopback).
    pub addr: std::net::SocketAddr,
    /// Whether RBAC or middleware gates it.
    pub gated: bool,
}

impl WorkerEndpoints {
    /// The address an engine-started daemon connects to: the first ungated listener, on
    /// loopback when it listens on every address.
    pub fn for_daemons(&self) -> Option<std::net::SocketAddr> {
        let e = self.0.iter().find(|e| !e.gated)?;
        let mut a = e.addr;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Some(a)
    }
}

/// The default `config.redis_url`.
pub(crate) const DEFAULT_REDIS_URL: &str = "redis://localhost:6379";

/// A bus over two instances of one pub/sub component: `poll` blocks inside its instance for
/// up to its wait, so publishing goes through a second instance and never queues behind a
/// poll. Subscriptions live on the polling instance (its subscriber connection).
pub(crate) struct SplitBus {
    pub(crate) publisher: Arc<dyn iii_adapter_api::PubSubBus>,
    pub(crate) receiver: Arc<dyn iii_adapter_api::PubSubBus>,
}

#[async_trait::async_trait]
impl iii_adapter_api::PubSubBus for SplitBus {
    async fn publish(&self, topic: &str, data: &Value) -> Result<(), AdapterError> {
        self.publisher.publish(topic, data).await
    }
    async fn subscribe(&self, topic: &str) -> Result<(), AdapterError> {
        self.receiver.subscribe(topic).await
    }
    async fn unsubscribe(&self, topic: &str) -> Result<(), AdapterError> {
        self.receiver.unsubscribe(topic).await
    }
    async fn poll(
        &self,
        max: u32,
        wait_ms: u32,
    ) -> Result<Vec<iii_adapter_api::BusMessage>, AdapterError> {
        self.receiver.poll(max, wait_ms).await
    }
}

/// Loads a pub/sub component twice as a [`SplitBus`].
pub(crate) async fn load_split_bus(
    cx: &mut PrepareCx<'_>,
    service: &'static str,
    spec: &AdapterSpec,
) -> Result<Arc<dyn iii_adapter_api::PubSubBus>, StartError> {
    let publisher = load_adapter::<iii_adapter_api::PubSubWorld>(cx, service, spec)
        .await?
        .0;
    let receiver = load_adapter::<iii_adapter_api::PubSubWorld>(cx, service, spec)
        .await?
        .0;
    Ok(Arc::new(SplitBus {
        publisher,
        receiver,
    }))
}

/// Carries a service's change events to the other engines sharing its backend (state and
/// stream over Redis): every event is published on `channel` tagged with this engine's
/// instance id, and the events of other instances are handed to the service's delivery
/// function, so each engine fires its own triggers and feeds its own sockets once.
pub(crate) struct EventRelay {
    tx: tokio::sync::mpsc::UnboundedSender<Value>,
    instance: String,
}

/// The parts [`EventRelay::new`] returns for the service's `run`.
pub(crate) struct RelayTask {
    bus: Arc<dyn iii_adapter_api::PubSubBus>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    channel: &'static str,
    instance: String,
}

impl EventRelay {
    pub(crate) fn new(
        bus: Arc<dyn iii_adapter_api::PubSubBus>,
        channel: &'static str,
    ) -> (Arc<EventRelay>, RelayTask) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let instance = format!("{}-{nanos:x}", std::process::id());
        (
            Arc::new(EventRelay {
                tx,
                instance: instance.clone(),
            }),
            RelayTask {
                bus,
                rx,
                channel,
                instance,
            },
        )
    }

    /// Queues `event` for the other engines (in order, never waiting on the backend).
    pub(crate) fn send(&self, event: &Value) {
        let _ = self
            .tx
            .send(serde_json::json!({"origin": self.instance, "event": event}));
    }
}

impl RelayTask {
    /// Publishes queued events and delivers other engines' events until `stop`.
    pub(crate) async fn run(
        self,
        stop: iii_core::CancellationToken,
        deliver: impl Fn(Value) + Send + Sync + 'static,
    ) {
        let RelayTask {
            bus,
            mut rx,
            channel,
            instance,
        } = self;
        let publisher = {
            let bus = bus.clone();
            tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if let Err(e) = bus.publish(channel, &m).await {
                        tracing::warn!(channel, error = %e, "could not relay an event to the other engines");
                    }
                }
            })
        };
        loop {
            match bus.subscribe(channel).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "event relay cannot subscribe; retrying in 1 s");
                    tokio::select! {
                        _ = stop.cancelled() => { publisher.abort(); return }
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        loop {
            let got = tokio::select! {
                _ = stop.cancelled() => break,
                got = bus.poll(256, 250) => got,
            };
            match got {
                Ok(ms) => {
                    for m in ms {
                        if m.data.get("origin").and_then(Value::as_str) == Some(instance.as_str()) {
                            continue;
                        }
                        if let Some(ev) = m.data.get("event") {
                            deliver(ev.clone());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "event relay poll failed; retrying in 1 s");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        publisher.abort();
    }
}

/// For `name: redis`: the spec with its network grant, and the event relay over the same
/// server (a split bus: two more instances of the component).
pub(crate) async fn redis_relay(
    cx: &mut PrepareCx<'_>,
    service: &'static str,
    spec: &AdapterSpec,
    channel: &'static str,
) -> Result<Option<(Arc<EventRelay>, RelayTask)>, StartError> {
    if !matches!(&spec.source, AdapterSource::Name(n) if n == "redis") {
        return Ok(None);
    }
    let mut bus_spec = spec.clone();
    bus_spec.config.retain(|k, _| {
        matches!(
            k.as_str(),
            "redis_url" | "connect_timeout_ms" | "timeout_ms"
        )
    });
    let bus = load_split_bus(cx, service, &bus_spec).await?;
    Ok(Some(EventRelay::new(bus, channel)))
}

/// Applies [`network_adapter_spec`] to a `name: redis` spec, as a start-up error.
pub(crate) fn redis_spec(
    service: &'static str,
    spec: &AdapterSpec,
) -> Result<AdapterSpec, StartError> {
    if !matches!(&spec.source, AdapterSource::Name(n) if n == "redis") {
        return Ok(spec.clone());
    }
    network_adapter_spec(spec, "redis_url", DEFAULT_REDIS_URL)
        .map_err(|message| StartError::Service { service, message })
}

#[cfg(test)]
mod network_spec_tests {
    use super::*;

    fn spec(config: Value) -> AdapterSpec {
        AdapterSpec::from_value(&config).unwrap()
    }

    #[test]
    fn grant_is_derived_from_the_url_or_checked_against_it() {
        let s = network_adapter_spec(
            &spec(serde_json::json!({"name": "redis"})),
            "redis_url",
            DEFAULT_REDIS_URL,
        )
        .unwrap();
        assert_eq!(s.grants.network, vec!["localhost:6379"]);
        let s = network_adapter_spec(
            &spec(serde_json::json!({"name": "redis", "config": {"redis_url": "redis://10.1.2.3:7000/2"}})),
            "redis_url",
            DEFAULT_REDIS_URL,
        )
        .unwrap();
        assert_eq!(s.grants.network, vec!["10.1.2.3:7000"]);
        let s = network_adapter_spec(
            &spec(serde_json::json!({"name": "redis", "config": {"redis_url": "redis://h"}})),
            "redis_url",
            DEFAULT_REDIS_URL,
        )
        .unwrap();
        assert_eq!(s.grants.network, vec!["h:6379"], "the default URL's port");
        let e = network_adapter_spec(
            &spec(serde_json::json!({"name": "redis", "config": {"redis_url": "redis://h:1"}, "grants": {"network": ["h:2"]}})),
            "redis_url",
            DEFAULT_REDIS_URL,
        )
        .unwrap_err();
        assert!(e.contains("grants.network") && e.contains("h:1"), "{e}");
        assert!(network_adapter_spec(
            &spec(serde_json::json!({"name": "redis", "config": {"redis_url": 5}})),
            "redis_url",
            DEFAULT_REDIS_URL
        )
        .is_err());
    }
}
