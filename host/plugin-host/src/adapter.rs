//! A loaded adapter component: one long-lived instance behind a mutex, a
//! supervisor that replaces it after a trap, and the proxies that turn
//! [`StateStore`]/[`StreamStore`] calls into component calls.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::api::{
    SetResult, StateStore, StreamGroups, StreamStore, UpdateOp, UpdateOpError, UpdateResult,
};
use crate::cache::CacheOutcome;
use crate::caps::{Capabilities, Ctx};
use crate::error::{AdapterErrorKind, PluginError};
use crate::host::HostInner;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/adapter-0.1.0",
        world: "kv-adapter",
        exports: { default: async },
    });
}

use bindings::exports::iii::adapter::{lifecycle, state_store, stream_store};
use bindings::iii::adapter::{config, logging, types};

pub(crate) const PACKAGE: &str = "iii:adapter";
pub(crate) const VERSION: &str = "0.1.0";

/// Which store interface an adapter is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    State,
    Stream,
}

impl AdapterKind {
    fn world(self) -> String {
        match self {
            AdapterKind::State => format!("{PACKAGE}/state-adapter@{VERSION}"),
            AdapterKind::Stream => format!("{PACKAGE}/stream-adapter@{VERSION}"),
        }
    }

    fn required_exports(self) -> [String; 2] {
        let store = match self {
            AdapterKind::State => "state-store",
            AdapterKind::Stream => "stream-store",
        };
        [
            format!("{PACKAGE}/lifecycle@{VERSION}"),
            format!("{PACKAGE}/{store}@{VERSION}"),
        ]
    }
}

impl logging::Host for Ctx {
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

impl config::Host for Ctx {
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

impl types::Host for Ctx {}

/// Adds the `iii:adapter` host imports (logging, config) to `linker`.
pub(crate) fn add_imports(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    bindings::KvAdapter::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c)
}

/// A running instance.
struct Live {
    store: Store<Ctx>,
    state: Option<state_store::Guest>,
    stream: Option<stream_store::Guest>,
}

/// Why the supervisor stopped restarting an adapter.
struct GaveUp {
    restarts: usize,
    last: String,
}

struct Slot {
    live: Option<Live>,
    /// Start times of recent restarts, for the restart cap.
    restarts: VecDeque<Instant>,
    total_restarts: u64,
    /// True while a call runs. Still true when the next caller gets the
    /// lock means the previous call's future was dropped mid-call (the
    /// caller was cancelled): the instance may be half-way through an
    /// export and must not be entered again.
    in_call: bool,
    /// Set once the supervisor gives up; every later call fails with it.
    gave_up: Option<GaveUp>,
}

/// A loaded, supervised adapter component. Implements [`StateStore`] and/or
/// [`StreamStore`] depending on what it was loaded as.
pub struct Adapter {
    label: String,
    kind: AdapterKind,
    host: Arc<HostInner>,
    pre: InstancePre<Ctx>,
    lifecycle: lifecycle::GuestIndices,
    state: Option<state_store::GuestIndices>,
    stream: Option<stream_store::GuestIndices>,
    caps: Capabilities,
    deadline_ms: u64,
    memory_mb: u64,
    fuel: Option<u64>,
    cache: CacheOutcome,
    slot: tokio::sync::Mutex<Slot>,
}

/// Copies a stored JSON text to a value, naming the adapter on failure.
fn json(label: &str, text: &str) -> Result<Value, PluginError> {
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

impl Adapter {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        label: String,
        kind: AdapterKind,
        host: Arc<HostInner>,
        component: &wasmtime::component::Component,
        caps: Capabilities,
        deadline_ms: u64,
        memory_mb: u64,
        fuel: Option<u64>,
        cache: CacheOutcome,
    ) -> Result<Arc<Adapter>, PluginError> {
        // Name the missing export precisely before the generic type check.
        let ty = component.component_type();
        let exported: Vec<String> = ty
            .exports(&host.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        for want in kind.required_exports() {
            if !exported.contains(&want) {
                return Err(PluginError::MissingExport {
                    adapter: label.clone(),
                    world: kind.world(),
                    export: want,
                });
            }
        }
        let pre =
            host.linker
                .instantiate_pre(component)
                .map_err(|e| PluginError::UnsatisfiedImport {
                    adapter: label.clone(),
                    reason: format!("{e:#}"),
                })?;
        let mismatch = |export: &str, e: wasmtime::Error| PluginError::MissingExport {
            adapter: label.clone(),
            world: kind.world(),
            export: format!("{PACKAGE}/{export}@{VERSION} with the expected signatures ({e:#})"),
        };
        let lifecycle = lifecycle::GuestIndices::new(&pre).map_err(|e| mismatch("lifecycle", e))?;
        let (state, stream) = match kind {
            AdapterKind::State => (
                Some(state_store::GuestIndices::new(&pre).map_err(|e| mismatch("state-store", e))?),
                None,
            ),
            AdapterKind::Stream => (
                None,
                Some(
                    stream_store::GuestIndices::new(&pre)
                        .map_err(|e| mismatch("stream-store", e))?,
                ),
            ),
        };
        let adapter = Arc::new(Adapter {
            label,
            kind,
            host,
            pre,
            lifecycle,
            state,
            stream,
            caps,
            deadline_ms,
            memory_mb,
            fuel,
            cache,
            slot: tokio::sync::Mutex::new(Slot {
                live: None,
                restarts: VecDeque::new(),
                total_restarts: 0,
                in_call: false,
                gave_up: None,
            }),
        });
        // The first start is not supervised: a plugin that cannot start is a
        // configuration error to report at load.
        let live = adapter.instantiate().await?;
        adapter.slot.lock().await.live = Some(live);
        Ok(adapter)
    }

    /// The adapter's name or path, as configured.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn kind(&self) -> AdapterKind {
        self.kind
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn compile_cache(&self) -> CacheOutcome {
        self.cache
    }

    /// How many times the supervisor has restarted the instance.
    pub async fn restarts(&self) -> u64 {
        self.slot.lock().await.total_restarts
    }

    /// Prepares the store for one call: fresh deadline, fuel and flags.
    fn arm(&self, store: &mut Store<Ctx>, deadline_ms: u64) -> Result<(), PluginError> {
        store.data_mut().call_deadline =
            Instant::now() + std::time::Duration::from_millis(deadline_ms);
        store.set_epoch_deadline(1);
        if let Some(f) = self.fuel {
            store
                .set_fuel(f)
                .map_err(|e| PluginError::Engine(e.to_string()))?;
        }
        let data = store.data_mut();
        data.limiter.hit = false;
        data.denials.lock().clear();
        Ok(())
    }

    /// Maps a wasmtime failure of a call to a structured error.
    fn classify(&self, store: &Store<Ctx>, err: wasmtime::Error, deadline_ms: u64) -> PluginError {
        let adapter = self.label.clone();
        if store.data().limiter.hit {
            return PluginError::MemoryLimit {
                adapter,
                limit_mb: self.memory_mb,
            };
        }
        if let Some(d) = store.data().denials.lock().first() {
            return PluginError::CapabilityDenied {
                adapter,
                capability: d.clone(),
            };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::DeadlineExceeded {
                adapter,
                deadline_ms,
            },
            Some(Trap::OutOfFuel) => PluginError::FuelExhausted {
                adapter,
                fuel: self.fuel.unwrap_or(0),
            },
            _ => PluginError::Trap {
                adapter,
                message: format!("{err:#}"),
            },
        }
    }

    fn adapter_error(&self, store: &Store<Ctx>, e: types::Error) -> PluginError {
        if let Some(d) = store.data().denials.lock().first() {
            return PluginError::CapabilityDenied {
                adapter: self.label.clone(),
                capability: d.clone(),
            };
        }
        let (kind, message) = match e {
            types::Error::InvalidInput(m) => (AdapterErrorKind::InvalidInput, m),
            types::Error::Backend(m) => (AdapterErrorKind::Backend, m),
            types::Error::Other(m) => (AdapterErrorKind::Other, m),
        };
        PluginError::Adapter {
            adapter: self.label.clone(),
            kind,
            message,
        }
    }

    /// A fresh instance, initialised (`lifecycle.init`).
    async fn instantiate(&self) -> Result<Live, PluginError> {
        let mut store = Store::new(&self.host.engine, self.caps.build()?);
        store.limiter(|c| &mut c.limiter);
        // On every tick a running call yields to the executor (so a busy
        // plugin cannot starve other tasks on this thread) until its
        // deadline passes, then it is interrupted with a trap.
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().call_deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        let init_ms = self.host.cfg.init_deadline_ms.max(self.deadline_ms);
        self.arm(&mut store, init_ms)?;
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => return Err(self.classify(&store, e, init_ms)),
        };
        let load_err = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let lifecycle = self
            .lifecycle
            .load(&mut store, &instance)
            .map_err(load_err)?;
        let state = match &self.state {
            Some(i) => Some(i.load(&mut store, &instance).map_err(load_err)?),
            None => None,
        };
        let stream = match &self.stream {
            Some(i) => Some(i.load(&mut store, &instance).map_err(load_err)?),
            None => None,
        };
        match lifecycle.call_init(&mut store).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(PluginError::Init {
                    adapter: self.label.clone(),
                    message: self.adapter_error(&store, e).to_string(),
                })
            }
            Err(e) => return Err(self.classify(&store, e, init_ms)),
        }
        Ok(Live {
            store,
            state,
            stream,
        })
    }

    /// Returns the live instance, or the supervisor's verdict.
    async fn ensure_live<'a>(&self, slot: &'a mut Slot) -> Result<&'a mut Live, PluginError> {
        if let Some(e) = &slot.gave_up {
            return Err(self.gave_up_error(e));
        }
        if slot.in_call {
            // A cancelled call is not the plugin's fault: replace the
            // instance without charging the restart budget.
            slot.in_call = false;
            slot.live = None;
            tracing::debug!(adapter = %self.label, "replacing instance after a cancelled call");
            slot.live = Some(self.instantiate().await?);
        }
        if slot.live.is_none() {
            self.restart(slot, "instance missing").await;
            if let Some(e) = &slot.gave_up {
                return Err(self.gave_up_error(e));
            }
        }
        Ok(slot
            .live
            .as_mut()
            .expect("restart leaves an instance or gives up"))
    }

    fn gave_up_error(&self, g: &GaveUp) -> PluginError {
        PluginError::GaveUp {
            adapter: self.label.clone(),
            restarts: g.restarts,
            window_s: self.host.cfg.restart_window.as_secs(),
            last: g.last.clone(),
        }
    }

    /// Replaces the instance unless the restart budget is spent.
    async fn restart(&self, slot: &mut Slot, cause: &str) {
        slot.live = None;
        let now = Instant::now();
        let window = self.host.cfg.restart_window;
        while slot
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            slot.restarts.pop_front();
        }
        if slot.restarts.len() >= self.host.cfg.max_restarts {
            tracing::error!(adapter = %self.label, cause, "adapter keeps failing; supervisor gives up");
            slot.gave_up = Some(GaveUp {
                restarts: slot.restarts.len(),
                last: cause.to_string(),
            });
            return;
        }
        slot.restarts.push_back(now);
        slot.total_restarts += 1;
        tracing::warn!(adapter = %self.label, cause, "restarting adapter instance");
        match self.instantiate().await {
            Ok(live) => slot.live = Some(live),
            Err(e) => {
                slot.gave_up = Some(GaveUp {
                    restarts: slot.restarts.len(),
                    last: format!("{cause}; restart failed: {e}"),
                })
            }
        }
    }

    /// Turns a call outcome into the proxy's result; after an instance
    /// failure the supervisor restarts the instance before returning.
    async fn settle<T>(
        &self,
        slot: &mut Slot,
        outcome: wasmtime::Result<Result<T, types::Error>>,
    ) -> Result<T, PluginError> {
        let live = slot.live.as_ref().expect("called with a live instance");
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.adapter_error(&live.store, e)),
            Err(e) => {
                let err = self.classify(&live.store, e, self.deadline_ms);
                self.restart(slot, &err.to_string()).await;
                Err(err)
            }
        }
    }
}

/// One call into the live instance: lock, arm the deadline, call, settle.
macro_rules! invoke {
    ($adapter:expr, $iface:ident, |$store:ident, $guest:ident| $call:expr) => {{
        let adapter: &Adapter = $adapter;
        let mut slot = adapter.slot.lock().await;
        adapter.ensure_live(&mut slot).await?;
        slot.in_call = true;
        let live = slot.live.as_mut().expect("ensure_live leaves an instance");
        adapter.arm(&mut live.store, adapter.deadline_ms)?;
        let outcome = {
            let $guest = live
                .$iface
                .as_ref()
                .ok_or_else(|| PluginError::MissingExport {
                    adapter: adapter.label.clone(),
                    world: adapter.kind.world(),
                    export: stringify!($iface).to_string(),
                })?;
            let $store = &mut live.store;
            $call.await
        };
        slot.in_call = false;
        adapter.settle(&mut slot, outcome).await
    }};
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

#[async_trait]
impl StateStore for Adapter {
    async fn get(&self, scope: &str, key: &str) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, state, |s, g| g.call_get(s, scope, key))?;
        opt_json(&self.label, r)
    }

    async fn set(&self, scope: &str, key: &str, value: &Value) -> Result<SetResult, PluginError> {
        let text = value.to_string();
        let r = invoke!(self, state, |s, g| g.call_set(s, scope, key, &text))?;
        set_result(&self.label, r)
    }

    async fn delete(&self, scope: &str, key: &str) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, state, |s, g| g.call_delete(s, scope, key))?;
        opt_json(&self.label, r)
    }

    async fn update(
        &self,
        scope: &str,
        key: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, PluginError> {
        let ops = wit_ops(ops);
        let r = invoke!(self, state, |s, g| g.call_update(s, scope, key, &ops))?;
        update_result(&self.label, r)
    }

    async fn list(&self, scope: &str) -> Result<Vec<Value>, PluginError> {
        let r = invoke!(self, state, |s, g| g.call_list(s, scope))?;
        r.iter().map(|t| json(&self.label, t)).collect()
    }

    async fn list_groups(&self) -> Result<Vec<String>, PluginError> {
        invoke!(self, state, |s, g| g.call_list_groups(s))
    }
}

#[async_trait]
impl StreamStore for Adapter {
    async fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, stream, |s, g| g.call_get(s, stream, group, item))?;
        opt_json(&self.label, r)
    }

    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        value: &Value,
    ) -> Result<SetResult, PluginError> {
        let text = value.to_string();
        let r = invoke!(self, stream, |s, g| g
            .call_set(s, stream, group, item, &text))?;
        set_result(&self.label, r)
    }

    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, PluginError> {
        let r = invoke!(self, stream, |s, g| g.call_delete(s, stream, group, item))?;
        opt_json(&self.label, r)
    }

    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, PluginError> {
        let ops = wit_ops(ops);
        let r = invoke!(self, stream, |s, g| g
            .call_update(s, stream, group, item, &ops))?;
        update_result(&self.label, r)
    }

    async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, PluginError> {
        let r = invoke!(self, stream, |s, g| g.call_list(s, stream, group))?;
        r.iter().map(|t| json(&self.label, t)).collect()
    }

    async fn list_groups(&self, stream: &str) -> Result<Vec<String>, PluginError> {
        invoke!(self, stream, |s, g| g.call_list_groups(s, stream))
    }

    async fn list_all(&self) -> Result<Vec<StreamGroups>, PluginError> {
        let r = invoke!(self, stream, |s, g| g.call_list_all(s))?;
        Ok(r.into_iter()
            .map(|sg| StreamGroups {
                id: sg.stream,
                groups: sg.groups,
            })
            .collect())
    }
}
