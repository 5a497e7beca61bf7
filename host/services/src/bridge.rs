//! The `bridge` adapters (spec section 8.1, 8.2, 8.4, 8.7): state, stream, queue publishes
//! and configuration delegated to another iii engine over the worker protocol. Not a
//! WebAssembly component: the bridge speaks the engine's own protocol to another engine (it
//! is a worker of that engine), not a third-party backend, so it lives on the host side with
//! the engine client. Shared by the services like [`crate::common`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iii_adapter_api::{
    AdapterError, AdapterErrorKind, AdapterSource, AdapterSpec, SetResult, StateStore,
    StreamGroups, StreamStore, UpdateOp, UpdateResult,
};
use iii_core::StartError;
use iii_engine_client::{Client, ClientError, Options};
use serde_json::{json, Value};

/// How long one delegated adapter call may take before it fails (`config.timeout_ms`).
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// True when the entry selects the bridge adapter.
pub(crate) fn is_bridge(spec: &AdapterSpec) -> bool {
    matches!(&spec.source, AdapterSource::Name(n) if n == "bridge")
}

/// Reads `config.bridge_url` (a `ws://` or `wss://` URL) and `config.timeout_ms`.
pub(crate) fn bridge_config(spec: &AdapterSpec) -> Result<(String, Duration), String> {
    for k in spec.config.keys() {
        if k != "bridge_url" && k != "timeout_ms" {
            return Err(format!(
                "`adapter.config.{k}` is not a bridge adapter key (expected `bridge_url`, `timeout_ms`)"
            ));
        }
    }
    let url = spec
        .config
        .get("bridge_url")
        .and_then(Value::as_str)
        .ok_or(
            "the bridge adapter needs `adapter.config.bridge_url` (e.g. ws://other-engine:49134)",
        )?;
    check_ws_url(url).map_err(|e| format!("`adapter.config.bridge_url`: {e}"))?;
    let timeout = match spec.config.get("timeout_ms") {
        None => DEFAULT_TIMEOUT_MS,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or("`adapter.config.timeout_ms` must be a positive integer (milliseconds)")?,
    };
    Ok((url.to_string(), Duration::from_millis(timeout)))
}

/// Checks that `url` is a `ws://` or `wss://` URL with a host.
pub(crate) fn check_ws_url(url: &str) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(u.scheme(), "ws" | "wss") || u.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "`{url}` is not a ws:// URL of an engine's worker socket"
        ));
    }
    Ok(())
}

/// The connection to the remote engine an adapter delegates to, with the per-call timeout.
#[derive(Clone)]
pub(crate) struct Remote {
    client: Client,
    timeout: Duration,
}

impl Remote {
    /// Starts connecting for `service`; start-up does not wait for the remote engine (calls
    /// fail with a clear error until it is reachable).
    pub(crate) fn start(service: &'static str, spec: &AdapterSpec) -> Result<Remote, StartError> {
        let (url, timeout) =
            bridge_config(spec).map_err(|message| StartError::Service { service, message })?;
        let client = Client::start(
            &url,
            Options {
                worker_name: format!("iii-bridge-{service}"),
                ..Options::default()
            },
        );
        tracing::info!(%url, "{service} service delegates to the remote engine (bridge adapter)");
        Ok(Remote { client, timeout })
    }

    /// Calls `function_id` on the remote engine.
    pub(crate) async fn call(&self, function_id: &str, data: Value) -> Result<Value, AdapterError> {
        self.client
            .invoke(function_id, data, self.timeout)
            .await
            .map(|v| v.unwrap_or(Value::Null))
            .map_err(|e| adapter_error(function_id, e))
    }

    async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        function_id: &str,
        data: Value,
    ) -> Result<T, AdapterError> {
        let v = self.call(function_id, data).await?;
        serde_json::from_value(v).map_err(|e| {
            AdapterError::new(
                AdapterErrorKind::Backend,
                format!(
                    "bridge: the remote engine's `{function_id}` answered an unexpected shape: {e}"
                ),
            )
        })
    }
}

/// A client failure as an adapter error: a down remote is `Unavailable`, a remote error keeps
/// its code and message.
pub(crate) fn adapter_error(function_id: &str, e: ClientError) -> AdapterError {
    match e {
        ClientError::Remote(body) => AdapterError::new(
            AdapterErrorKind::Backend,
            format!("bridge: the remote engine's `{function_id}` failed: {body}"),
        ),
        other => AdapterError::new(AdapterErrorKind::Unavailable, format!("bridge: {other}")),
    }
}

fn opt(v: Value) -> Option<Value> {
    Some(v).filter(|v| !v.is_null())
}

/// `state::*` on the remote engine.
pub(crate) struct BridgeState(pub(crate) Remote);

#[async_trait]
impl StateStore for BridgeState {
    async fn get(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError> {
        Ok(opt(self
            .0
            .call("state::get", json!({"scope": scope, "key": key}))
            .await?))
    }
    async fn set(&self, scope: &str, key: &str, value: &Value) -> Result<SetResult, AdapterError> {
        self.0
            .call_as(
                "state::set",
                json!({"scope": scope, "key": key, "value": value}),
            )
            .await
    }
    async fn delete(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError> {
        Ok(opt(self
            .0
            .call("state::delete", json!({"scope": scope, "key": key}))
            .await?))
    }
    async fn update(
        &self,
        scope: &str,
        key: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError> {
        self.0
            .call_as(
                "state::update",
                json!({"scope": scope, "key": key, "ops": ops}),
            )
            .await
    }
    async fn list(&self, scope: &str) -> Result<Vec<Value>, AdapterError> {
        self.0.call_as("state::list", json!({"scope": scope})).await
    }
    async fn list_groups(&self) -> Result<Vec<String>, AdapterError> {
        #[derive(serde::Deserialize)]
        struct Groups {
            groups: Vec<String>,
        }
        let g: Groups = self.0.call_as("state::list_groups", json!({})).await?;
        Ok(g.groups)
    }
}

/// `stream::*` storage on the remote engine.
pub(crate) struct BridgeStream(pub(crate) Remote);

fn item(stream: &str, group: &str, item: &str) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": item})
}

#[async_trait]
impl StreamStore for BridgeStream {
    async fn get(
        &self,
        stream: &str,
        group: &str,
        id: &str,
    ) -> Result<Option<Value>, AdapterError> {
        Ok(opt(self
            .0
            .call("stream::get", item(stream, group, id))
            .await?))
    }
    async fn set(
        &self,
        stream: &str,
        group: &str,
        id: &str,
        value: &Value,
    ) -> Result<SetResult, AdapterError> {
        let mut data = item(stream, group, id);
        data["data"] = value.clone();
        self.0.call_as("stream::set", data).await
    }
    async fn delete(
        &self,
        stream: &str,
        group: &str,
        id: &str,
    ) -> Result<Option<Value>, AdapterError> {
        let v = self
            .0
            .call("stream::delete", item(stream, group, id))
            .await?;
        Ok(opt(v.get("old_value").cloned().unwrap_or(Value::Null)))
    }
    async fn update(
        &self,
        stream: &str,
        group: &str,
        id: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError> {
        let mut data = item(stream, group, id);
        data["ops"] = json!(ops);
        self.0.call_as("stream::update", data).await
    }
    async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, AdapterError> {
        self.0
            .call_as(
                "stream::list",
                json!({"stream_name": stream, "group_id": group}),
            )
            .await
    }
    async fn list_groups(&self, stream: &str) -> Result<Vec<String>, AdapterError> {
        self.0
            .call_as("stream::list_groups", json!({"stream_name": stream}))
            .await
    }
    async fn list_all(&self) -> Result<Vec<StreamGroups>, AdapterError> {
        #[derive(serde::Deserialize)]
        struct All {
            stream: Vec<StreamGroups>,
        }
        let a: All = self.0.call_as("stream::list_all", json!({})).await?;
        Ok(a.stream)
    }
}

/// A bridge state store and the client its events are relayed over.
pub(crate) type BridgedState = (Arc<dyn StateStore>, Client);

/// The bridge state store when the entry names it, with its client (for the event relay).
pub(crate) fn state_store(
    service: &'static str,
    spec: &AdapterSpec,
) -> Result<Option<BridgedState>, StartError> {
    if !is_bridge(spec) {
        return Ok(None);
    }
    let remote = Remote::start(service, spec)?;
    let client = remote.client.clone();
    Ok(Some((Arc::new(BridgeState(remote)), client)))
}

/// Relays the remote engine's `trigger_type` events to `on_event`: serves a relay function
/// on the remote engine and binds it to the trigger type there (the client replays both after
/// every reconnect), so triggers on this engine fire for writes made on either engine. The
/// event arrives without the remote's caller tag.
pub(crate) fn relay_events(
    client: &Client,
    trigger_type: &str,
    on_event: impl Fn(Value) + Send + Sync + 'static,
) {
    let id = format!(
        "iii-bridge::relay::{trigger_type}::{}",
        uuid::Uuid::new_v4().simple()
    );
    let on_event = Arc::new(on_event);
    client.register_function(
        &id,
        json!({"description": format!("Relays {trigger_type} events to a bridged engine"), "metadata": {"internal": true}}),
        Arc::new(move |mut event: Value| {
            if let Some(m) = event.as_object_mut() {
                m.remove(iii_protocol::ids::CALLER_WORKER_ID_KEY);
            }
            on_event(event);
            Box::pin(async { Ok(Value::Null) })
        }),
    );
    client.register_trigger(trigger_type, &id, json!({}));
}

/// [`state_store`] for streams.
pub(crate) fn stream_store(
    service: &'static str,
    spec: &AdapterSpec,
) -> Result<Option<Arc<dyn StreamStore>>, StartError> {
    if !is_bridge(spec) {
        return Ok(None);
    }
    Ok(Some(Arc::new(BridgeStream(Remote::start(service, spec)?))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(config: Value) -> AdapterSpec {
        AdapterSpec::from_value(&json!({"name": "bridge", "config": config})).unwrap()
    }

    #[test]
    fn config_is_checked() {
        let (url, t) = bridge_config(&spec(json!({"bridge_url": "ws://h:1"}))).unwrap();
        assert_eq!((url.as_str(), t), ("ws://h:1", Duration::from_secs(30)));
        let e = bridge_config(&spec(json!({}))).unwrap_err();
        assert!(e.contains("bridge_url"), "{e}");
        let e = bridge_config(&spec(json!({"bridge_url": "http://h:1"}))).unwrap_err();
        assert!(e.contains("ws://"), "{e}");
        let e = bridge_config(&spec(json!({"bridge_url": "ws://h:1", "x": 1}))).unwrap_err();
        assert!(e.contains("adapter.config.x"), "{e}");
        let e =
            bridge_config(&spec(json!({"bridge_url": "ws://h:1", "timeout_ms": 0}))).unwrap_err();
        assert!(e.contains("timeout_ms"), "{e}");
    }
}
