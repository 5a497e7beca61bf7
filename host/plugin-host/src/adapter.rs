//! A loaded adapter component of any world: one long-lived instance behind a mutex and a
//! supervisor that replaces it after a trap. What the instance exports, and how calls reach
//! it, is the world module's business ([`crate::worlds`]); this file knows no world.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Component, InstancePre};
use wasmtime::{Store, UpdateDeadline};

use crate::cache::CacheOutcome;
use crate::caps::{AdapterCtx, Capabilities};
use crate::containment::{self, Contained, Limits, Observed};
use crate::error::PluginError;
use crate::host::HostInner;
use crate::worlds::{GuestError, WorldBinding};

/// A running instance and its export handles.
pub(crate) struct Live<W: WorldBinding> {
    pub(crate) store: Store<AdapterCtx>,
    pub(crate) exports: W::Exports,
}

/// Why the supervisor stopped restarting an adapter.
struct GaveUp {
    restarts: usize,
    last: String,
}

pub(crate) struct Slot<W: WorldBinding> {
    pub(crate) live: Option<Live<W>>,
    /// Start times of recent restarts, for the restart cap.
    restarts: VecDeque<Instant>,
    total_restarts: u64,
    /// True while a call runs. Still true when the next caller gets the
    /// lock means the previous call's future was dropped mid-call (the
    /// caller was cancelled): the instance may be half-way through an
    /// export and must not be entered again.
    pub(crate) in_call: bool,
    /// Set once the supervisor gives up; every later call fails with it.
    gave_up: Option<GaveUp>,
}

/// Everything [`Adapter::start`] needs besides the host.
pub(crate) struct StartArgs<'a> {
    pub(crate) label: String,
    pub(crate) component: &'a Component,
    pub(crate) caps: Capabilities,
    pub(crate) limits: Limits,
    pub(crate) cache: CacheOutcome,
}

/// A loaded, supervised adapter component implementing world `W`. The world module gives it
/// typed methods returning [`PluginError`] and implements the world's store trait (e.g.
/// [`iii_adapter_api::StateStore`] for `Adapter<StateWorld>`) over them.
pub struct Adapter<W: WorldBinding> {
    pub(crate) label: String,
    host: Arc<HostInner>,
    pre: InstancePre<AdapterCtx>,
    pub(crate) indices: W::Indices,
    caps: Capabilities,
    pub(crate) limits: Limits,
    cache: CacheOutcome,
    pub(crate) slot: tokio::sync::Mutex<Slot<W>>,
}

impl<W: WorldBinding> Adapter<W> {
    pub(crate) async fn start(
        host: Arc<HostInner>,
        args: StartArgs<'_>,
    ) -> Result<Arc<Adapter<W>>, PluginError> {
        let StartArgs {
            label,
            component,
            caps,
            limits,
            cache,
        } = args;
        // Name the missing export precisely before the generic type check.
        let ty = component.component_type();
        let exported: Vec<String> = ty
            .exports(&host.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        for want in W::EXPORTS {
            if !exported.iter().any(|e| e == want) {
                return Err(PluginError::MissingExport {
                    adapter: label.clone(),
                    world: W::WORLD.to_string(),
                    export: want.to_string(),
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
        let indices = W::indices(&pre).map_err(|m| PluginError::MissingExport {
            adapter: label.clone(),
            world: W::WORLD.to_string(),
            export: format!("{} with the expected signatures ({:#})", m.export, m.error),
        })?;
        let adapter = Arc::new(Adapter {
            label,
            host,
            pre,
            indices,
            caps,
            limits,
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

    /// The WIT world the adapter was loaded as, e.g. `iii:adapter/state-adapter@0.1.0`.
    pub fn world(&self) -> &'static str {
        W::WORLD
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
    pub(crate) fn arm(
        &self,
        store: &mut Store<AdapterCtx>,
        deadline_ms: u64,
    ) -> Result<(), PluginError> {
        store.data_mut().call_deadline =
            Instant::now() + std::time::Duration::from_millis(deadline_ms);
        store.set_epoch_deadline(1);
        if let Some(f) = self.limits.fuel {
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
    fn classify(
        &self,
        store: &Store<AdapterCtx>,
        err: wasmtime::Error,
        deadline_ms: u64,
    ) -> PluginError {
        let data = store.data();
        let denials = data.denials.lock();
        let observed = Observed {
            memory_hit: data.limiter.hit,
            denial: denials.first().map(String::as_str),
        };
        PluginError::Contained {
            adapter: self.label.clone(),
            cause: containment::classify(&err, observed, &self.limits, deadline_ms),
        }
    }

    /// An error the adapter returned, unless a capability denial explains it better.
    fn adapter_error(&self, store: &Store<AdapterCtx>, e: GuestError) -> PluginError {
        if let Some(d) = store.data().denials.lock().first() {
            return PluginError::Contained {
                adapter: self.label.clone(),
                cause: Contained::CapabilityDenied {
                    capability: d.clone(),
                },
            };
        }
        PluginError::Adapter {
            adapter: self.label.clone(),
            kind: e.kind,
            message: e.message,
        }
    }

    /// A fresh instance, initialised (`lifecycle.init`).
    async fn instantiate(&self) -> Result<Live<W>, PluginError> {
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
        let init_ms = self.host.cfg.init_deadline_ms.max(self.limits.deadline_ms);
        self.arm(&mut store, init_ms)?;
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => return Err(self.classify(&store, e, init_ms)),
        };
        let exports = W::load(&self.indices, &mut store, &instance)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        match W::init(&exports, &mut store).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(PluginError::Init {
                    adapter: self.label.clone(),
                    message: self.adapter_error(&store, e).to_string(),
                })
            }
            Err(e) => return Err(self.classify(&store, e, init_ms)),
        }
        Ok(Live { store, exports })
    }

    /// Returns the live instance, or the supervisor's verdict.
    pub(crate) async fn ensure_live<'a>(
        &self,
        slot: &'a mut Slot<W>,
    ) -> Result<&'a mut Live<W>, PluginError> {
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
    async fn restart(&self, slot: &mut Slot<W>, cause: &str) {
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
    pub(crate) async fn settle<T, E: Into<GuestError>>(
        &self,
        slot: &mut Slot<W>,
        outcome: wasmtime::Result<Result<T, E>>,
    ) -> Result<T, PluginError> {
        let live = slot.live.as_ref().expect("called with a live instance");
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.adapter_error(&live.store, e.into())),
            Err(e) => {
                let err = self.classify(&live.store, e, self.limits.deadline_ms);
                self.restart(slot, &err.to_string()).await;
                Err(err)
            }
        }
    }
}

/// Slack past the deadline before the wall-clock guard cancels a call, so a call that is
/// computing (interrupted by the epoch at the deadline) reports as a trap, not a cancel.
pub(crate) const IO_GRACE_MS: u64 = 250;

/// One call into the live instance of an [`Adapter`]: lock, arm the deadline, call, settle.
/// `$store` is the instance's store and `$exports` its [`WorldBinding::Exports`].
macro_rules! invoke {
    ($adapter:expr, |$store:ident, $exports:ident| $call:expr) => {{
        let adapter = $adapter;
        let mut slot = adapter.slot.lock().await;
        adapter.ensure_live(&mut slot).await?;
        slot.in_call = true;
        let live = slot.live.as_mut().expect("ensure_live leaves an instance");
        adapter.arm(&mut live.store, adapter.limits.deadline_ms)?;
        let deadline_ms = adapter.limits.deadline_ms;
        // Epoch interruption stops wasm code, not a guest blocked in a host I/O call (a
        // socket read from a hung server), so the wall clock bounds the whole call too. On
        // expiry `in_call` stays set: the next call replaces the half-run instance.
        let outcome = {
            let $exports = &live.exports;
            let $store = &mut live.store;
            tokio::time::timeout(
                std::time::Duration::from_millis(deadline_ms).saturating_add(
                    std::time::Duration::from_millis($crate::adapter::IO_GRACE_MS),
                ),
                $call,
            )
            .await
        };
        match outcome {
            Ok(outcome) => {
                slot.in_call = false;
                adapter.settle(&mut slot, outcome).await
            }
            Err(_) => Err($crate::error::PluginError::Contained {
                adapter: adapter.label.clone(),
                cause: $crate::containment::Contained::DeadlineExceeded {
                    deadline_ms,
                    knob: adapter.limits.deadline_knob,
                },
            }),
        }
    }};
}
pub(crate) use invoke;
