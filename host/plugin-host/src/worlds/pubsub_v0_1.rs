//! `iii:pubsub@0.1.0` (`wit/pubsub-0.1.0`): the `pubsub-adapter` world and its proxy.
//!
//! `poll` blocks inside the component for up to `wait-ms`, holding the instance, so a bus
//! used for publishing and polling at once should be two loads (the services do that).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use iii_adapter_api::{AdapterError, BusMessage, PubSubBus, PubSubWorld};
use serde_json::Value;
use wasmtime::component::{Instance, InstancePre, Linker};
use wasmtime::Store;

use super::adapter_v0_1::json;
use super::{world, ExportMismatch, GuestError, Package, WorldBinding};
use crate::adapter::{invoke, Adapter};
use crate::caps::AdapterCtx;
use crate::error::PluginError;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/pubsub-0.1.0",
        world: "pubsub-adapter",
        exports: { default: async },
        with: {
            "iii:adapter/types": crate::worlds::adapter_v0_1::bindings::iii::adapter::types,
            "iii:adapter/logging": crate::worlds::adapter_v0_1::bindings::iii::adapter::logging,
            "iii:adapter/config": crate::worlds::adapter_v0_1::bindings::iii::adapter::config,
        },
    });
}

use bindings::exports::iii::adapter::lifecycle;
use bindings::exports::iii::pubsub::bus as wit;

const LIFECYCLE: &str = "iii:adapter/lifecycle@0.1.0";
const BUS: &str = "iii:pubsub/bus@0.1.0";

/// The package's registration in [`super::PACKAGES`].
pub(crate) const PACKAGE: Package = Package {
    add_imports,
    worlds: &[world::<PubSubWorld>()],
};

/// The world's imports are `iii:adapter@0.1.0`'s logging and config, which that package
/// already links into the shared linker; linking them twice would be a duplicate definition.
fn add_imports(_linker: &mut Linker<AdapterCtx>) -> wasmtime::Result<()> {
    Ok(())
}

/// Export indices of `pubsub-adapter`.
pub struct Indices {
    lifecycle: lifecycle::GuestIndices,
    store: wit::GuestIndices,
}

/// Export handles of a live `pubsub-adapter` instance.
pub struct Exports {
    lifecycle: lifecycle::Guest,
    store: wit::Guest,
}

impl WorldBinding for PubSubWorld {
    const EXPORTS: &'static [&'static str] = &[LIFECYCLE, BUS];
    type Indices = Indices;
    type Exports = Exports;

    fn indices(pre: &InstancePre<AdapterCtx>) -> Result<Self::Indices, ExportMismatch> {
        Ok(Indices {
            lifecycle: lifecycle::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                export: LIFECYCLE,
                error,
            })?,
            store: wit::GuestIndices::new(pre)
                .map_err(|error| ExportMismatch { export: BUS, error })?,
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

    fn into_store(adapter: Arc<Adapter<Self>>) -> Arc<dyn PubSubBus> {
        adapter
    }
}

async fn init(
    exports: &Exports,
    store: &mut Store<AdapterCtx>,
) -> wasmtime::Result<Result<(), GuestError>> {
    Ok(exports
        .lifecycle
        .call_init(store)
        .await?
        .map_err(GuestError::from))
}

/// The bus calls, with the host's own error type.
impl Adapter<PubSubWorld> {
    /// [`PubSubBus::publish`].
    pub async fn publish(&self, topic: &str, data: &Value) -> Result<(), PluginError> {
        let data = data.to_string();
        invoke!(self, |s, e| e.store.call_publish(s, topic, &data))
    }

    /// [`PubSubBus::subscribe`].
    pub async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        invoke!(self, |s, e| e.store.call_subscribe(s, topic))
    }

    /// [`PubSubBus::unsubscribe`].
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        invoke!(self, |s, e| e.store.call_unsubscribe(s, topic))
    }

    /// [`PubSubBus::poll`].
    pub async fn poll(&self, max: u32, wait_ms: u32) -> Result<Vec<BusMessage>, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_poll(s, max, wait_ms))?;
        r.into_iter()
            .map(|m| {
                Ok(BusMessage {
                    data: json(&self.label, &m.data)?,
                    topic: m.topic,
                })
            })
            .collect()
    }
}

#[async_trait]
impl PubSubBus for Adapter<PubSubWorld> {
    async fn publish(&self, topic: &str, data: &Value) -> Result<(), AdapterError> {
        Ok(Self::publish(self, topic, data).await?)
    }

    async fn subscribe(&self, topic: &str) -> Result<(), AdapterError> {
        Ok(Self::subscribe(self, topic).await?)
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), AdapterError> {
        Ok(Self::unsubscribe(self, topic).await?)
    }

    async fn poll(&self, max: u32, wait_ms: u32) -> Result<Vec<BusMessage>, AdapterError> {
        Ok(Self::poll(self, max, wait_ms).await?)
    }
}
