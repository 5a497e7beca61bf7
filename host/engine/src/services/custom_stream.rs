//! Custom stream providers (spec §5.4): a worker that registers `stream::get(<name>)` (likewise
//! `set`, `delete`, `list`, `list_groups`, `update`) in `default` serves that stream instead of the
//! adapter. The wrapper sits between the `stream::*` functions and the adapter, so events and
//! triggers fire the same way for both.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use iii_plugin_host::{
    AdapterError, AdapterErrorKind, SetResult, StreamGroups, StreamStore, UpdateOp, UpdateResult,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::engine::{Engine, Inner, DEFAULT_NS};

pub struct DelegatingStreams {
    /// Weak: the engine owns the functions that own this store.
    engine: Weak<Inner>,
    inner: Arc<dyn StreamStore>,
}

impl DelegatingStreams {
    pub fn new(engine: &Engine, inner: Arc<dyn StreamStore>) -> Self {
        DelegatingStreams {
            engine: Arc::downgrade(&engine.inner),
            inner,
        }
    }

    /// Calls the provider function for `op` on `stream` if a worker registered one.
    async fn provider<T: DeserializeOwned>(
        &self,
        op: &str,
        stream: &str,
        input: Value,
    ) -> Option<Result<T, AdapterError>> {
        let engine = Engine {
            inner: self.engine.upgrade()?,
        };
        let id = format!("stream::{op}({stream})");
        engine.lookup(DEFAULT_NS, &id)?;
        let result = match engine
            .call(DEFAULT_NS, &id, &input.to_string(), None, None)
            .await
        {
            Ok(r) => r
                .map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
                .unwrap_or(Value::Null),
            Err(e) => {
                return Some(Err(AdapterError::new(
                    AdapterErrorKind::Other,
                    format!(
                        "adapter `{id}` reported an error: {}: {}",
                        e.code, e.message
                    ),
                )))
            }
        };
        Some(
            serde_json::from_value(result).map_err(|e| {
                AdapterError::new(
                    AdapterErrorKind::Other,
                    format!(
                        "adapter `{id}` returned invalid JSON: result does not have the shape of {op}: {e}"
                    ),
                )
            }),
        )
    }
}

#[derive(serde::Deserialize)]
struct Deleted {
    old_value: Option<Value>,
}

#[async_trait]
impl StreamStore for DelegatingStreams {
    async fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError> {
        let input = json!({"stream_name": stream, "group_id": group, "item_id": item});
        match self.provider::<Value>("get", stream, input).await {
            Some(r) => r.map(|v| (!v.is_null()).then_some(v)),
            None => self.inner.get(stream, group, item).await,
        }
    }

    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        value: &Value,
    ) -> Result<SetResult, AdapterError> {
        let input =
            json!({"stream_name": stream, "group_id": group, "item_id": item, "data": value});
        match self.provider("set", stream, input).await {
            Some(r) => r,
            None => self.inner.set(stream, group, item, value).await,
        }
    }

    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError> {
        let input = json!({"stream_name": stream, "group_id": group, "item_id": item});
        match self.provider::<Deleted>("delete", stream, input).await {
            Some(r) => r.map(|d| d.old_value),
            None => self.inner.delete(stream, group, item).await,
        }
    }

    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError> {
        let input = json!({"stream_name": stream, "group_id": group, "item_id": item, "ops": ops});
        match self.provider("update", stream, input).await {
            Some(r) => r,
            None => self.inner.update(stream, group, item, ops).await,
        }
    }

    async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, AdapterError> {
        let input = json!({"stream_name": stream, "group_id": group});
        match self.provider("list", stream, input).await {
            Some(r) => r,
            None => self.inner.list(stream, group).await,
        }
    }

    async fn list_groups(&self, stream: &str) -> Result<Vec<String>, AdapterError> {
        match self
            .provider("list_groups", stream, json!({"stream_name": stream}))
            .await
        {
            Some(r) => r,
            None => self.inner.list_groups(stream).await,
        }
    }

    async fn list_all(&self) -> Result<Vec<StreamGroups>, AdapterError> {
        self.inner.list_all().await
    }
}
