//! `iii:queue@0.1.0` (`wit/queue-0.1.0`): the `queue-adapter` world and its proxy.
//!
//! The package shares `iii:adapter@0.1.0`'s types, host imports and lifecycle (its `deps/`
//! links that package), so the bindings reuse [`super::adapter_v0_1`]'s generated imports
//! and the imports are linked once, by that package. `Adapter<QueueWorld>` has typed methods
//! returning [`PluginError`] and implements [`QueueStore`] over them. A component that also
//! exports `topic-router` (world `queue-router-adapter`) is loaded through the same world;
//! [`QueueStore::router`] then hands the service its [`TopicRouter`].

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use iii_adapter_api::queue::{
    DeadLetter, Delivery, LeaseRequest, Leased, NackOutcome, NewMessage, QueueStats,
};
use iii_adapter_api::{AdapterError, QueueStore, QueueWorld, TopicRouter};
use wasmtime::component::{Instance, InstancePre, Linker};
use wasmtime::Store;

use super::adapter_v0_1::json;
use super::{world, ExportMismatch, GuestError, Package, WorldBinding};
use crate::adapter::{invoke, Adapter};
use crate::caps::AdapterCtx;
use crate::error::PluginError;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/queue-0.1.0",
        world: "queue-router-adapter",
        exports: { default: async },
        with: {
            "iii:adapter/types": crate::worlds::adapter_v0_1::bindings::iii::adapter::types,
            "iii:adapter/logging": crate::worlds::adapter_v0_1::bindings::iii::adapter::logging,
            "iii:adapter/config": crate::worlds::adapter_v0_1::bindings::iii::adapter::config,
        },
    });
}

use bindings::exports::iii::adapter::lifecycle;
use bindings::exports::iii::queue::queue_store as wit;
use bindings::exports::iii::queue::topic_router as router;

const LIFECYCLE: &str = "iii:adapter/lifecycle@0.1.0";
const QUEUE_STORE: &str = "iii:queue/queue-store@0.1.0";
const TOPIC_ROUTER: &str = "iii:queue/topic-router@0.1.0";

/// The package's registration in [`super::PACKAGES`].
pub(crate) const PACKAGE: Package = Package {
    add_imports,
    worlds: &[world::<QueueWorld>()],
};

/// The world's imports are `iii:adapter@0.1.0`'s logging and config, which that package
/// already links into the shared linker; linking them twice would be a duplicate definition.
fn add_imports(_linker: &mut Linker<AdapterCtx>) -> wasmtime::Result<()> {
    Ok(())
}

/// Export indices of `queue-adapter`.
pub struct Indices {
    lifecycle: lifecycle::GuestIndices,
    store: wit::GuestIndices,
    /// Present when the component exports `topic-router` (optional).
    router: Option<router::GuestIndices>,
}

/// Export handles of a live `queue-adapter` instance.
pub struct Exports {
    lifecycle: lifecycle::Guest,
    store: wit::Guest,
    router: Option<router::Guest>,
}

impl WorldBinding for QueueWorld {
    const EXPORTS: &'static [&'static str] = &[LIFECYCLE, QUEUE_STORE];
    type Indices = Indices;
    type Exports = Exports;

    fn indices(pre: &InstancePre<AdapterCtx>) -> Result<Self::Indices, ExportMismatch> {
        Ok(Indices {
            lifecycle: lifecycle::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                export: LIFECYCLE,
                error,
            })?,
            store: wit::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                export: QUEUE_STORE,
                error,
            })?,
            // Optional, but when exported by name its signatures must match.
            router: match pre.component().get_export_index(None, TOPIC_ROUTER) {
                None => None,
                Some(_) => {
                    Some(
                        router::GuestIndices::new(pre).map_err(|error| ExportMismatch {
                            export: TOPIC_ROUTER,
                            error,
                        })?,
                    )
                }
            },
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
            router: match &i.router {
                Some(r) => Some(r.load(&mut *store, instance)?),
                None => None,
            },
        })
    }

    fn init<'a>(
        exports: &'a Self::Exports,
        store: &'a mut Store<AdapterCtx>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), GuestError>>> + Send + 'a {
        init(exports, store)
    }

    fn into_store(adapter: Arc<Adapter<Self>>) -> Arc<dyn QueueStore> {
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

fn delivery(label: &str, d: wit::Delivery) -> Result<Delivery, PluginError> {
    Ok(Delivery {
        payload: json(label, &d.payload)?,
        meta: json(label, &d.meta)?,
        token: d.token,
        message_id: d.message_id,
        group: d.group,
        attempt: d.attempt,
        max_attempts: d.max_attempts,
    })
}

fn dead_letter(label: &str, d: wit::DeadLetter) -> Result<DeadLetter, PluginError> {
    Ok(DeadLetter {
        payload: json(label, &d.payload)?,
        meta: json(label, &d.meta)?,
        message_id: d.message_id,
        error: d.error,
        failed_at_ms: d.failed_at_ms,
        attempts: d.attempts,
        max_attempts: d.max_attempts,
        group: d.group,
    })
}

/// The queue store calls, with the host's own error type.
impl Adapter<QueueWorld> {
    /// [`QueueStore::enqueue`].
    pub async fn enqueue(&self, queue: &str, msg: &NewMessage) -> Result<(), PluginError> {
        let msg = wit::NewMessage {
            id: msg.id.clone(),
            payload: msg.payload.to_string(),
            meta: msg.meta.to_string(),
            group: msg.group.clone(),
            max_attempts: msg.max_attempts,
            delay_ms: msg.delay_ms,
        };
        invoke!(self, |s, e| e.store.call_enqueue(s, queue, &msg))
    }

    /// [`QueueStore::lease`].
    pub async fn lease(&self, queue: &str, req: LeaseRequest) -> Result<Leased, PluginError> {
        let req = wit::LeaseRequest {
            max: req.max,
            lease_ms: req.lease_ms,
            fifo: req.fifo,
        };
        let r = invoke!(self, |s, e| e.store.call_lease(s, queue, req))?;
        Ok(Leased {
            deliveries: r
                .deliveries
                .into_iter()
                .map(|d| delivery(&self.label, d))
                .collect::<Result<_, _>>()?,
            next_due_ms: r.next_due_ms,
        })
    }

    /// [`QueueStore::ack`].
    pub async fn ack(&self, queue: &str, token: &str) -> Result<bool, PluginError> {
        invoke!(self, |s, e| e.store.call_ack(s, queue, token))
    }

    /// [`QueueStore::nack`].
    pub async fn nack(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
        error: &str,
    ) -> Result<NackOutcome, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_nack(
            s,
            queue,
            token,
            retry_after_ms,
            error
        ))?;
        Ok(match r {
            wit::NackOutcome::Retrying => NackOutcome::Retrying,
            wit::NackOutcome::DeadLettered => NackOutcome::DeadLettered,
            wit::NackOutcome::Stale => NackOutcome::Stale,
        })
    }

    /// [`QueueStore::release`].
    pub async fn release(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
    ) -> Result<bool, PluginError> {
        invoke!(self, |s, e| e.store.call_release(
            s,
            queue,
            token,
            retry_after_ms
        ))
    }

    /// [`QueueStore::dead_letters`].
    pub async fn dead_letters(
        &self,
        queue: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, PluginError> {
        let r = invoke!(self, |s, e| e
            .store
            .call_dead_letters(s, queue, offset, limit))?;
        r.into_iter().map(|d| dead_letter(&self.label, d)).collect()
    }

    /// [`QueueStore::redrive`].
    pub async fn redrive(&self, queue: &str, message_id: Option<&str>) -> Result<u64, PluginError> {
        invoke!(self, |s, e| e.store.call_redrive(s, queue, message_id))
    }

    /// [`QueueStore::discard`].
    pub async fn discard(&self, queue: &str, message_id: &str) -> Result<bool, PluginError> {
        invoke!(self, |s, e| e.store.call_discard(s, queue, message_id))
    }

    /// [`QueueStore::stats`].
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, PluginError> {
        let r = invoke!(self, |s, e| e.store.call_stats(s, queue))?;
        Ok(QueueStats {
            waiting: r.waiting,
            in_flight: r.in_flight,
            dead: r.dead,
        })
    }

    /// [`QueueStore::queues`].
    pub async fn queues(&self) -> Result<Vec<String>, PluginError> {
        invoke!(self, |s, e| e.store.call_queues(s))
    }
}

// Inherent methods win over trait methods of the same name, so `Self::enqueue` below is the
// typed call above.
#[async_trait]
impl QueueStore for Adapter<QueueWorld> {
    async fn enqueue(&self, queue: &str, msg: &NewMessage) -> Result<(), AdapterError> {
        Ok(Self::enqueue(self, queue, msg).await?)
    }

    async fn lease(&self, queue: &str, req: LeaseRequest) -> Result<Leased, AdapterError> {
        Ok(Self::lease(self, queue, req).await?)
    }

    async fn ack(&self, queue: &str, token: &str) -> Result<bool, AdapterError> {
        Ok(Self::ack(self, queue, token).await?)
    }

    async fn nack(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
        error: &str,
    ) -> Result<NackOutcome, AdapterError> {
        Ok(Self::nack(self, queue, token, retry_after_ms, error).await?)
    }

    async fn release(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
    ) -> Result<bool, AdapterError> {
        Ok(Self::release(self, queue, token, retry_after_ms).await?)
    }

    async fn dead_letters(
        &self,
        queue: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, AdapterError> {
        Ok(Self::dead_letters(self, queue, offset, limit).await?)
    }

    async fn redrive(&self, queue: &str, message_id: Option<&str>) -> Result<u64, AdapterError> {
        Ok(Self::redrive(self, queue, message_id).await?)
    }

    async fn discard(&self, queue: &str, message_id: &str) -> Result<bool, AdapterError> {
        Ok(Self::discard(self, queue, message_id).await?)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, AdapterError> {
        Ok(Self::stats(self, queue).await?)
    }

    async fn queues(&self) -> Result<Vec<String>, AdapterError> {
        Ok(Self::queues(self).await?)
    }

    fn router(&self) -> Option<&dyn TopicRouter> {
        self.indices
            .router
            .as_ref()
            .map(|_| self as &dyn TopicRouter)
    }
}

/// The exports of a component whose indices have a router have one too.
fn router_of(e: &Exports) -> &router::Guest {
    e.router
        .as_ref()
        .expect("router() is Some only for components exporting topic-router")
}

fn wit_message(msg: &NewMessage) -> wit::NewMessage {
    wit::NewMessage {
        id: msg.id.clone(),
        payload: msg.payload.to_string(),
        meta: msg.meta.to_string(),
        group: msg.group.clone(),
        max_attempts: msg.max_attempts,
        delay_ms: msg.delay_ms,
    }
}

/// The topic router calls (only reached through [`QueueStore::router`]).
#[async_trait]
impl TopicRouter for Adapter<QueueWorld> {
    async fn bind(&self, topic: &str, queue: &str) -> Result<(), AdapterError> {
        let r: Result<(), PluginError> =
            invoke!(self, |s, e| router_of(e).call_bind(s, topic, queue));
        Ok(r?)
    }

    async fn unbind(&self, topic: &str, queue: &str) -> Result<(), AdapterError> {
        let r: Result<(), PluginError> =
            invoke!(self, |s, e| router_of(e).call_unbind(s, topic, queue));
        Ok(r?)
    }

    async fn publish(
        &self,
        topic: &str,
        unrouted: &str,
        msg: &NewMessage,
    ) -> Result<(), AdapterError> {
        let msg = wit_message(msg);
        let r: Result<(), PluginError> = invoke!(self, |s, e| router_of(e)
            .call_publish(s, topic, unrouted, &msg));
        Ok(r?)
    }
}
