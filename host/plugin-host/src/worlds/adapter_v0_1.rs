//! `iii:adapter@0.1.0` (`wit/adapter-0.1.0`): the host imports (logging, config), and the
//! `state-adapter` and `stream-adapter` worlds with their proxies.
//!
//! `Adapter<StateWorld>` and `Adapter<StreamWorld>` have typed methods returning
//! [`PluginError`] (what tests match on) and implement [`StateStore`]/[`StreamStore`] over
//! them, mapping the error to [`AdapterError`] (what services see).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use iii_adapter_api::{
    AdapterError, AdapterErrorKind, SetResult, StateStore, StateWorld, StreamGroups, StreamStore,
    StreamWorld, UpdateOp, UpdateOpError, UpdateResult,
};
use serde_json::Value;
use wasmtime::component::{HasSelf, Instance, InstancePre, Linker};
use wasmtime::Store;

use super::{world, ExportMismatch, GuestError, Package, WorldBinding};
use crate::adapter::{invoke, Adapter};
use crate::caps::AdapterCtx;
use crate::error::PluginError;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/adapter-0.1.0",
        world: "kv-adapter",
        exports: { default: async },
    });
}

use bindings::exports::iii::adapter::{lifecycle, state_store, stream_store};
use bindings::iii::adapter::{config, logging, types};

const LIFECYCLE: &str = "iii:adapter/lifecycle@0.1.0";
const STATE_STORE: &str = "iii:adapter/state-store@0.1.0";
const STREAM_STORE: &str = "iii:adapter/stream-store@0.1.0";

/// The package's registration in [`super::PACKAGES`].
pub(crate) const PACKAGE: Package = Package {
    add_imports,
    worlds: &[world::<StateWorld>(), world::<StreamWorld>()],
};

impl logging::Host for AdapterCtx {
    fn log(&mut self, level: logging::Level, context: String, message: String) {
        let adapter = &*self.adapter;
        match level {
            logging::Level::Trace => tracing::trace!(adapter, context, "{message}"),
            logging::Level::Debug => tracing::debug!(adapter, context, "{message}"),
            logging::Level::Info => tracing::info!(adapter, context, "{message}"),
            logging::Level::Warn => tracing::warn!(adapter, context, "{message}"),
            logging::Level::Error | logging::Level::Critical => {
                tracing::error!(adapter, context, "{message}")
            }
        }
    }
}

impl config::Host for AdapterCtx {
    fn get(&mut self, key: String) -> Result<Option<String>, config::Error> {
        Ok(self.config.get(&key).map(Value::to_string))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config::Error> {
        Ok(self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect())
    }
}

impl types::Host for AdapterCtx {}

/// Adds the `iii:adapter@0.1.0` host imports (logging, config) to `linker`.
fn add_imports(linker: &mut Linker<AdapterCtx>) -> wasmtime::Result<()> {
    bindings::KvAdapter::add_to_linker::<AdapterCtx, HasSelf<AdapterCtx>>(linker, |c| c)
}

impl From<types::Error> for GuestError {
    fn from(e: types::Error) -> Self {
        let (kind, message) = match e {
            types::Error::InvalidInput(m) => (AdapterErrorKind::InvalidInput, m),
            types::Error::Backend(m) => (AdapterErrorKind::Backend, m),
            types::Error::Other(m) => (AdapterErrorKind::Other, m),
        };
        GuestError { kind, message }
    }
}

/// Export indices of a world of this package: the lifecycle plus one store interface.
pub struct Indices<S> {
    lifecycle: lifecycle::GuestIndices,
    store: S,
}

/// Export handles of a live instance: the lifecycle plus one store interface.
pub struct Exports<S> {
    lifecycle: lifecycle::Guest,
    store: S,
}

fn lifecycle_indices(
    pre: &InstancePre<AdapterCtx>,
) -> Result<lifecycle::GuestIndices, ExportMismatch> {
    lifecycle::GuestIndices::new(pre).map_err(|error| ExportMismatch {
        export: LIFECYCLE,
        error,
    })
}

async fn init<S>(
    exports: &Exports<S>,
    store: &mut Store<AdapterCtx>,
) -> wasmtime::Result<Result<(), GuestError>> {
    Ok(exports
        .lifecycle
        .call_init(store)
        .await?
        .map_err(GuestError::from))
}

impl WorldBinding for StateWorld {
    const EXPORTS: &'static [&'static str] = &[LIFECYCLE, STATE_STORE];
    type Indices = Indices<state_store::GuestIndices>;
    type Exports = Exports<state_store::Guest>;

    fn indices(pre: &InstancePre<AdapterCtx>) -> Result<Self::Indices, ExportMismatch> {
        Ok(Indices {
            lifecycle: lifecycle_indices(pre)?,
            store: state_store::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                export: STATE_STORE,
                error,
            })?,
        })
    }

    fn load(
        i: &Self::Indices,
        store: &mut Store<AdapterCtx>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Exports> {
        Ok(Exports {
            lifecycle: i.lifecycle.load(&mut *store, instance)?,
            store: i.store.load(&mut *store, instance)?,
        })
    }

    fn init<'a>(
        exports: &'a Self::Exports,
        store: &'a mut Store<AdapterCtx>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), GuestError>>> + Send + 'a {
        init(exports, store)
    }

    fn into_store(adapter: Arc<Adapter<Self>>) -> Arc<dyn StateStore> {
        adapter
    }
}

impl WorldBinding for StreamWorld {
    const EXPORTS: &'static [&'static str] = &[LIFECYCLE, STREAM_STORE];
    type Indices = Indices<stream_store::GuestIndices>;
    type Exports = Exports<stream_store::Guest>;

    fn indices(pre: &InstancePre<AdapterCtx>) -> Result<Self::Indices, ExportMismatch> {
        Ok(Indices {
            lifecycle: lifecycle_indices(pre)?,
            store: stream_store::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                export: STREAM_STORE,
                error,
            })?,
        })
    }

    fn load(
        i: &Self::Indices,
        store: &mut Store<AdapterCtx>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Exports> {
        Ok(Exports {
            lifecycle: i.lifecycle.load(&mut *store, instance)?,
            store: i.store.load(&mut *store, instance)?,
        })
    }

    fn init<'a>(
        exports: &'a Self::Exports,
        store: &'a mut Store<AdapterCtx>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), GuestError>>> + Send + 'a {
        init(exports, store)
    }

    fn into_store(adapter: Arc<Adapter<Self>>) -> Arc<dyn StreamStore> {
        adapter
    }
}

/// Copies a stored JSON text to a value, naming the adapter on failure.
pub(crate) fn json(label: &str, text: &str) -> Result<Value, PluginError> {
    serde_json::from_str(text).map_err(|e| PluginError::InvalidJson {
        adapter: label.to_string(),
        message: e.to_string(),
    })
}

fn opt_json(label: &str, text: Option<String>) -> Result<Option<Value>, PluginError> {
    text.map(|t| json(label, &t)).transpose()
}

fn wit_ops(ops: &[UpdateOp]) -> Vec<types::UpdateOp> {
    ops.iter()
        .map(|op| match op {
            UpdateOp::Set { path, value } => types::UpdateOp::Set(types::SetOp {
                path: path.clone(),
                value: value.to_string(),
            }),
            UpdateOp::Merge { path, value } => types::UpdateOp::Merge(types::MergeOp {
                path: path.as_ref().map(|p| p.segments()).unwrap_or_default(),
                value: value.to_string(),
            }),
            UpdateOp::Increment { path, by } => types::UpdateOp::Increment(types::NumberOp {
                path: path.clone(),
                by: *by,
            }),
            UpdateOp::Decrement { path, by } => types::UpdateOp::Decrement(types::NumberOp {
                path: path.clone(),
                by: *by,
            }),
            UpdateOp::Append { path, value } => types::UpdateOp::Append(types::AppendOp {
                path: path.as_ref().map(|p| p.segments()).unwrap_or_default(),
                value: value.to_string(),
            }),
            UpdateOp::Remove { path } => types::UpdateOp::Remove(path.clone()),
        })
        .collect()
}

fn update_result(label: &str, r: types::UpdateResult) -> Result<UpdateResult, PluginError> {
    Ok(UpdateResult {
        old_value: opt_json(label, r.old_value)?,
        new_value: json(label, &r.new_value)?,
        errors: r
            .errors
            .into_iter()
            .map(|e| UpdateOpError {
                op_index: e.op_index as usize,
                code: e.code,
                message: e.message,
                doc_url: e.doc_url,
            })
            .collect(),
    })
}

fn set_result(label: &str, r: types::SetResult) -> Result<SetResult, PluginError> {
    Ok(SetResult {
        old_value: opt_json(label, r.old_value)?,
        new_value: json(label, &r.new_value)?,
    })
}

/// The state store calls, with the host's own error type.
impl Adapter<StateWorld> {
    /// [`StateStore::get`].
    pub async fn get(&self, scope: &str, key: &str) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_get(s, scope, key))?;
        opt_json(&self.label, r)
    }

    /// [`StateStore::set`].
    pub async fn set(
        &self,
        scope: &str,
        key: &str,
        value: &Value,
    ) -> Result<SetResult, PluginError> {
        let text = value.to_string();
        let r = invoke!(self, |s, e| e.store.call_set(s, scope, key, &text))?;
        set_result(&self.label, r)
    }

    /// [`StateStore::delete`].
    pub async fn delete(&self, scope: &str, key: &str) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_delete(s, scope, key))?;
        opt_json(&self.label, r)
    }

    /// [`StateStore::update`].
    pub async fn update(
        &self,
        scope: &str,
        key: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, PluginError> {
        let ops = wit_ops(ops);
        let r = invoke!(self, |s, e| e.store.call_update(s, scope, key, &ops))?;
        update_result(&self.label, r)
    }

    /// [`StateStore::list`].
    pub async fn list(&self, scope: &str) -> Result<Vec<Value>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_list(s, scope))?;
        r.iter().map(|t| json(&self.label, t)).collect()
    }

    /// [`StateStore::list_groups`].
    pub async fn list_groups(&self) -> Result<Vec<String>, PluginError> {
        invoke!(self, |s, e| e.store.call_list_groups(s))
    }
}

// Inherent methods win over trait methods of the same name, so `Self::get` below is the
// typed call above.
#[async_trait]
impl StateStore for Adapter<StateWorld> {
    async fn get(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError> {
        Ok(Self::get(self, scope, key).await?)
    }

    async fn set(&self, scope: &str, key: &str, value: &Value) -> Result<SetResult, AdapterError> {
        Ok(Self::set(self, scope, key, value).await?)
    }

    async fn delete(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError> {
        Ok(Self::delete(self, scope, key).await?)
    }

    async fn update(
        &self,
        scope: &str,
        key: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError> {
        Ok(Self::update(self, scope, key, ops).await?)
    }

    async fn list(&self, scope: &str) -> Result<Vec<Value>, AdapterError> {
        Ok(Self::list(self, scope).await?)
    }

    async fn list_groups(&self) -> Result<Vec<String>, AdapterError> {
        Ok(Self::list_groups(self).await?)
    }
}

/// The stream store calls, with the host's own error type.
impl Adapter<StreamWorld> {
    /// [`StreamStore::get`].
    pub async fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_get(s, stream, group, item))?;
        opt_json(&self.label, r)
    }

    /// [`StreamStore::set`].
    pub async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        value: &Value,
    ) -> Result<SetResult, PluginError> {
        let text = value.to_string();
        let r = invoke!(self, |s, e| e.store.call_set(s, stream, group, item, &text))?;
        set_result(&self.label, r)
    }

    /// [`StreamStore::delete`].
    pub async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_delete(s, stream, group, item))?;
        opt_json(&self.label, r)
    }

    /// [`StreamStore::update`].
    pub async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, PluginError> {
        let ops = wit_ops(ops);
        let r = invoke!(self, |s, e| e
            .store
            .call_update(s, stream, group, item, &ops))?;
        update_result(&self.label, r)
    }

    /// [`StreamStore::list`].
    pub async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_list(s, stream, group))?;
        r.iter().map(|t| json(&self.label, t)).collect()
    }

    /// [`StreamStore::list_groups`].
    pub async fn list_groups(&self, stream: &str) -> Result<Vec<String>, PluginError> {
        invoke!(self, |s, e| e.store.call_list_groups(s, stream))
    }

    /// [`StreamStore::list_all`].
    pub async fn list_all(&self) -> Result<Vec<StreamGroups>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_list_all(s))?;
        Ok(r.into_iter()
            .map(|sg| StreamGroups {
                id: sg.stream,
                groups: sg.groups,
            })
            .collect())
    }
}

#[async_trait]
impl StreamStore for Adapter<StreamWorld> {
    async fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError> {
        Ok(Self::get(self, stream, group, item).await?)
    }

    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        value: &Value,
    ) -> Result<SetResult, AdapterError> {
        Ok(Self::set(self, stream, group, item, value).await?)
    }

    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError> {
        Ok(Self::delete(self, stream, group, item).await?)
    }

    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError> {
        Ok(Self::update(self, stream, group, item, ops).await?)
    }

    async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, AdapterError> {
        Ok(Self::list(self, stream, group).await?)
    }

    async fn list_groups(&self, stream: &str) -> Result<Vec<String>, AdapterError> {
        Ok(Self::list_groups(self, stream).await?)
    }

    async fn list_all(&self) -> Result<Vec<StreamGroups>, AdapterError> {
        Ok(Self::list_all(self).await?)
    }
}
