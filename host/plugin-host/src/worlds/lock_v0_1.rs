//! `iii:lock@0.1.0` (`wit/lock-0.1.0`): the `lock-adapter` world and its proxy (the leases
//! the cron service takes so engines sharing a backend fire each tick once).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use iii_adapter_api::{AdapterError, LockStore, LockWorld};
use wasmtime::component::{Instance, InstancePre, Linker};
use wasmtime::Store;

use super::{world, ExportMismatch, GuestError, Package, WorldBinding};
use crate::adapter::{invoke, Adapter};
use crate::caps::AdapterCtx;
use crate::error::PluginError;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/lock-0.1.0",
        world: "lock-adapter",
        exports: { default: async },
        with: {
            "iii:adapter/types": crate::worlds::adapter_v0_1::bindings::iii::adapter::types,
            "iii:adapter/logging": crate::worlds::adapter_v0_1::bindings::iii::adapter::logging,
            "iii:adapter/config": crate::worlds::adapter_v0_1::bindings::iii::adapter::config,
        },
    });
}

use bindings::exports::iii::adapter::lifecycle;
use bindings::exports::iii::lock::lock_store as wit;

const LIFECYCLE: &str = "iii:adapter/lifecycle@0.1.0";
const LOCK_STORE: &str = "iii:lock/lock-store@0.1.0";

/// The package's registration in [`super::PACKAGES`].
pub(crate) const PACKAGE: Package = Package {
    add_imports,
    worlds: &[world::<LockWorld>()],
};

/// The world's imports are `iii:adapter@0.1.0`'s logging and config, which that package
/// already links into the shared linker; linking them twice would be a duplicate definition.
fn add_imports(_linker: &mut Linker<AdapterCtx>) -> wasmtime::Result<()> {
    Ok(())
}

/// Export indices of `lock-adapter`.
pub struct Indices {
    lifecycle: lifecycle::GuestIndices,
    store: wit::GuestIndices,
}

/// Export handles of a live `lock-adapter` instance.
pub struct Exports {
    lifecycle: lifecycle::Guest,
    store: wit::Guest,
}

impl WorldBinding for LockWorld {
    const EXPORTS: &'static [&'static str] = &[LIFECYCLE, LOCK_STORE];
    type Indices = Indices;
    type Exports = Exports;

    fn indices(pre: &InstancePre<AdapterCtx>) -> Result<Self::Indices, ExportMismatch> {
        Ok(Indices {
            lifecycle: lifecycle::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                export: LIFECYCLE,
                error,
            })?,
            store: wit::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                export: LOCK_STORE,
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

    fn into_store(adapter: Arc<Adapter<Self>>) -> Arc<dyn LockStore> {
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

/// The lock store calls, with the host's own error type.
impl Adapter<LockWorld> {
    /// [`LockStore::try_acquire`].
    pub async fn try_acquire(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<bool, PluginError> {
        invoke!(self, |s, e| e.store.call_try_acquire(s, key, owner, ttl_ms))
    }

    /// [`LockStore::release`].
    pub async fn release(&self, key: &str, owner: &str) -> Result<bool, PluginError> {
        invoke!(self, |s, e| e.store.call_release(s, key, owner))
    }
}

#[async_trait]
impl LockStore for Adapter<LockWorld> {
    async fn try_acquire(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, AdapterError> {
        Ok(Self::try_acquire(self, key, owner, ttl_ms).await?)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, AdapterError> {
        Ok(Self::release(self, key, owner).await?)
    }
}
