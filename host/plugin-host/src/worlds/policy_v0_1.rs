//! `iii:policy@0.1.0` (`wit/policy-0.1.0`): the `policy` world and [`ComponentPolicy`], which
//! runs every decision in a fresh instance.
//!
//! Policies are not supervised adapters: they hold no state, so each call takes a new
//! `Store` and instance from one `InstancePre` (the pooling allocator makes that cheap), runs
//! the export under the spec's deadline (epoch), memory cap (`StoreLimits`) and optional
//! fuel, and drops both. A trap, a deadline or the cap fails that call only (the caller
//! denies); the next call starts clean. WASI is linked with nothing granted; the logging and
//! config imports are `iii:adapter@0.1.0`'s, linked once by that package.
//!
//! The world is registered in [`super::PACKAGES`] with a loader of its own, so
//! `load::<PolicyWorld>(loader, &spec)` gives an `Arc<dyn Policy>` for a component or an
//! Extism module alike ([`PluginHost::load_policy_spec`] tells them apart by their bytes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use iii_adapter_api::policy::{
    AuthDecision, Connection, HttpDecision, HttpRequest, HttpResponse, Invocation,
    InvocationDecision, Policy, PolicyWorld, RegistrationDecision, RegistrationKind, Rejection,
};
use iii_adapter_api::{AdapterError, AdapterSource, AdapterSpec, AdapterWorld, Grants};
use parking_lot::Mutex;
use serde_json::Value;
use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Store, UpdateDeadline};

use super::{Package, World};
use crate::cache::CacheOutcome;
use crate::caps::{AdapterCtx, Capabilities};
use crate::containment::{self, Limits, Observed};
use crate::error::PluginError;
use crate::host::{HostInner, PluginHost};
use crate::policy::{PolicyError, PolicySpec};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/policy-0.1.0",
        world: "policy",
        exports: { default: async },
        with: {
            "iii:adapter/types": crate::worlds::adapter_v0_1::bindings::iii::adapter::types,
            "iii:adapter/logging": crate::worlds::adapter_v0_1::bindings::iii::adapter::logging,
            "iii:adapter/config": crate::worlds::adapter_v0_1::bindings::iii::adapter::config,
        },
    });
}

use bindings::exports::iii::policy::decisions as wit;

const DECISIONS: &str = "iii:policy/decisions@0.1.0";

/// Default memory cap of one policy call's instance, in MiB.
pub const POLICY_DEFAULT_MEMORY_MB: u64 = 32;
/// Default deadline of one policy call (instantiation included), in milliseconds.
pub const POLICY_DEFAULT_DEADLINE_MS: u64 = 100;

/// The package's registration in [`super::PACKAGES`].
pub(crate) const PACKAGE: Package = Package {
    add_imports,
    worlds: &[World {
        name: PolicyWorld::WORLD,
        load: load_erased,
    }],
};

/// The world imports `iii:adapter@0.1.0`'s logging and config, linked by that package.
fn add_imports(_linker: &mut Linker<AdapterCtx>) -> wasmtime::Result<()> {
    Ok(())
}

fn load_erased<'a>(host: &'a PluginHost, spec: &'a AdapterSpec) -> super::LoadFuture<'a> {
    Box::pin(async move {
        let policy = host.load_policy_spec(spec)?;
        Ok(Box::new(policy) as super::AnyStore)
    })
}

/// What the bytes of a `.wasm` file are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A component (component-model layer).
    Component,
    /// A core module (an Extism plugin).
    Module,
}

/// Tells a component from a core module by the preamble: `\0asm`, then version 1 for a core
/// module or a component-model version with layer 1.
pub fn wasm_kind(bytes: &[u8]) -> Option<WasmKind> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return None;
    }
    match (&bytes[4..6], &bytes[6..8]) {
        (_, [1, 0]) => Some(WasmKind::Component),
        ([1, 0], [0, 0]) => Some(WasmKind::Module),
        _ => None,
    }
}

/// A policy component: one `InstancePre`, a fresh instance per call.
///
/// Instantiation is most of a call's cost, so one instance is kept ready: made in the
/// background after each call takes the previous one, and used once, like any other (a used
/// instance is dropped, never reused). Calls that find none ready instantiate inline.
pub struct ComponentPolicy {
    inner: Arc<Shared>,
}

struct Shared {
    label: String,
    host: Arc<HostInner>,
    pre: InstancePre<AdapterCtx>,
    indices: wit::GuestIndices,
    caps: Capabilities,
    limits: Limits,
    cache: CacheOutcome,
    /// The instance made ahead of the next call, if any.
    ready: Mutex<Option<Call>>,
    /// A background instantiation is under way (at most one per policy).
    refilling: AtomicBool,
}

/// One call's instance; dropped (store, instance, pool slot) when the call ends.
struct Call {
    store: Store<AdapterCtx>,
    guest: wit::Guest,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// The limits of a policy spec: `grants.memory_mb`, `grants.deadline_ms`, `grants.fuel`
/// with the policy defaults; policies get no files and no network.
fn policy_limits(host: &PluginHost, label: &str, g: &Grants) -> Result<Limits, PolicyError> {
    if !g.network.is_empty() || g.data_dir.is_some() {
        return Err(PolicyError::InvalidSpec(format!(
            "policy `{label}` asks for network or a data directory; policies get neither"
        )));
    }
    let memory_mb = g.memory_mb.unwrap_or(POLICY_DEFAULT_MEMORY_MB);
    if memory_mb > host.config().max_memory_mb {
        return Err(PolicyError::InvalidSpec(format!(
            "policy `{label}` asks for memory_mb {memory_mb}, above the host maximum of {} MiB",
            host.config().max_memory_mb
        )));
    }
    if g.fuel.is_some() && !host.config().fuel {
        return Err(PolicyError::FuelUnavailable {
            plugin: label.to_string(),
        });
    }
    Ok(Limits {
        deadline_ms: g.deadline_ms.unwrap_or(POLICY_DEFAULT_DEADLINE_MS),
        memory_mb,
        fuel: g.fuel,
        deadline_knob: "limits.deadline_ms",
        memory_knob: "limits.memory_mb",
    })
}

impl PluginHost {
    /// Loads a policy from `spec` (`path:` of a component of world `iii:policy/policy@0.1.0`
    /// or of an Extism module, told apart by the bytes), for per-call use. `config` reaches
    /// the policy through the config import; `grants.memory_mb`/`deadline_ms`/`fuel` are its
    /// per-call limits (defaults [`POLICY_DEFAULT_MEMORY_MB`], [`POLICY_DEFAULT_DEADLINE_MS`]).
    pub fn load_policy_spec(&self, spec: &AdapterSpec) -> Result<Arc<dyn Policy>, PolicyError> {
        let label = spec.label();
        let AdapterSource::Path(path) = &spec.source else {
            return Err(PolicyError::InvalidSpec(format!(
                "policy `{label}`: policies load from `path: ./policy.wasm`; there are no builtin ones"
            )));
        };
        let bytes = self.policy_bytes(path)?;
        match wasm_kind(&bytes) {
            Some(WasmKind::Component) => Ok(self.component_policy(spec, &bytes)?),
            Some(WasmKind::Module) => {
                let limits = policy_limits(self, &label, &spec.grants)?;
                let mut ps = PolicySpec::new(path.clone());
                ps.config = spec
                    .config
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect();
                ps.memory_mb = limits.memory_mb;
                ps.deadline_ms = limits.deadline_ms;
                ps.fuel = limits.fuel;
                let plugin = self.load_policy_bytes(&ps, &bytes, limits)?;
                plugin.require_some_hook()?;
                Ok(Arc::new(plugin))
            }
            None => Err(PolicyError::NotAModule {
                plugin: label,
                reason: "the file is neither a WebAssembly component nor a core module".into(),
            }),
        }
    }

    /// Loads a policy component (world `iii:policy/policy@0.1.0`) from `spec`.
    pub fn load_component_policy(
        &self,
        spec: &AdapterSpec,
    ) -> Result<Arc<ComponentPolicy>, PolicyError> {
        let label = spec.label();
        let AdapterSource::Path(path) = &spec.source else {
            return Err(PolicyError::InvalidSpec(format!(
                "policy `{label}` needs a `path:`"
            )));
        };
        let bytes = self.policy_bytes(path)?;
        self.component_policy(spec, &bytes)
    }

    fn component_policy(
        &self,
        spec: &AdapterSpec,
        bytes: &[u8],
    ) -> Result<Arc<ComponentPolicy>, PolicyError> {
        let label = spec.label();
        let limits = policy_limits(self, &label, &spec.grants)?;
        let (component, cache) = self.compile(bytes, &label).map_err(|e| match e {
            PluginError::NotAComponent { reason, .. } => PolicyError::NotAModule {
                plugin: label.clone(),
                reason,
            },
            other => PolicyError::Engine(other.to_string()),
        })?;
        let exported = component
            .component_type()
            .exports(self.engine())
            .any(|(n, _)| n == DECISIONS);
        if !exported {
            return Err(PolicyError::MissingExport {
                plugin: label,
                reason: format!(
                    "it does not export `{DECISIONS}` (build it against world `{}`)",
                    PolicyWorld::WORLD
                ),
            });
        }
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            PolicyError::UnsatisfiedImport {
                plugin: label.clone(),
                reason: format!("{e:#}"),
            }
        })?;
        let indices = wit::GuestIndices::new(&pre).map_err(|e| PolicyError::MissingExport {
            plugin: label.clone(),
            reason: format!("`{DECISIONS}` does not have the expected signatures: {e:#}"),
        })?;
        let grants = Grants {
            memory_mb: Some(limits.memory_mb),
            ..Grants::default()
        };
        let caps = Capabilities::new(
            &label,
            spec.config.clone(),
            &grants,
            &self.inner.cfg.base_dir,
        )
        .map_err(|e| PolicyError::Engine(e.to_string()))?;
        Ok(Arc::new(ComponentPolicy {
            inner: Arc::new(Shared {
                label,
                host: self.inner.clone(),
                pre,
                indices,
                caps,
                limits,
                cache,
                ready: Mutex::new(None),
                refilling: AtomicBool::new(false),
            }),
        }))
    }
}

impl Shared {
    /// A new instance in a new store, under the call's limits counted from `start`.
    async fn instantiate(
        &self,
        start: Instant,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Call, PolicyError> {
        let ctx = self
            .caps
            .build()
            .map_err(|e| PolicyError::Engine(e.to_string()))?;
        let mut store = Store::new(&self.host.engine, ctx);
        store.limiter(|c| &mut c.limiter);
        // Each tick yields to the executor until the deadline, then interrupts: a spinning
        // policy neither starves its thread nor outlives its deadline.
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().call_deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        self.arm(&mut store, start)?;
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => return Err(self.contained(&store, "instantiate", e)),
        };
        let guest = self
            .indices
            .load(&mut store, &instance)
            .map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        Ok(Call {
            store,
            guest,
            _slot: slot,
        })
    }

    /// Sets the call's deadline (from `start`: it covers the wait for a slot, instantiation
    /// when not made ahead, and the call) and its fuel.
    fn arm(&self, store: &mut Store<AdapterCtx>, start: Instant) -> Result<(), PolicyError> {
        store.data_mut().call_deadline = start + Duration::from_millis(self.limits.deadline_ms);
        store.set_epoch_deadline(1);
        if let Some(f) = self.limits.fuel {
            store
                .set_fuel(f)
                .map_err(|e| PolicyError::Engine(e.to_string()))?;
        }
        Ok(())
    }

    /// Makes the ready instance (the caller set `refilling`). It takes a pool slot only when
    /// more than half of the policy slots are free, so ready instances never keep calls from
    /// slots; a failure leaves none ready (the next call instantiates inline and reports it).
    async fn refill(self: &Arc<Self>) {
        let slots = &self.host.policy_slots;
        let spare = slots.available_permits() > self.host.policy_slot_count / 2;
        let slot = if spare && self.ready.lock().is_none() {
            slots.clone().try_acquire_owned().ok()
        } else {
            None
        };
        if let Some(slot) = slot {
            match self.instantiate(Instant::now(), slot).await {
                Ok(call) => *self.ready.lock() = Some(call),
                Err(e) => tracing::debug!(policy = %self.label, "no instance made ahead: {e}"),
            }
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// A failed call as the reason the host stopped it, logged.
    fn contained(&self, store: &Store<AdapterCtx>, hook: &str, e: wasmtime::Error) -> PolicyError {
        let data = store.data();
        let denials = data.denials.lock();
        let observed = Observed {
            memory_hit: data.limiter.hit,
            denial: denials.first().map(String::as_str),
        };
        let cause = containment::classify(&e, observed, &self.limits, self.limits.deadline_ms);
        let err = PolicyError::Contained {
            plugin: self.label.clone(),
            cause,
        };
        tracing::warn!(policy = %self.label, hook, "policy call failed (the caller denies): {err}");
        err
    }
}

impl ComponentPolicy {
    /// The policy's path, as configured.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn compile_cache(&self) -> CacheOutcome {
        self.inner.cache
    }

    /// Creates (and drops) one fresh instance, bypassing the ready instance: the
    /// instantiation cost that the ready instance hides from calls.
    pub async fn instantiate(&self) -> Result<(), PolicyError> {
        let start = Instant::now();
        let deadline = Duration::from_millis(self.inner.limits.deadline_ms);
        let slot =
            crate::policy::slot(&self.inner.host.policy_slots, &self.inner.label, deadline).await?;
        self.inner.instantiate(start, slot).await.map(drop)
    }

    /// Makes the ready instance now if there is none (and a spare slot), and waits for it:
    /// what the background refill does between calls. For benches and tests.
    pub async fn prepare_next(&self) {
        while !self.has_ready_instance() {
            if !self.inner.refilling.swap(true, Ordering::AcqRel) {
                Shared::refill(&self.inner).await;
                return;
            }
            // A background refill is under way: let it finish.
            tokio::task::yield_now().await;
        }
    }

    /// Whether an instance is ready for the next call.
    pub fn has_ready_instance(&self) -> bool {
        self.inner.ready.lock().is_some()
    }

    /// The instance for one call: the ready one if there is one, else a new one. Either way
    /// the next one is then made in the background.
    async fn call_instance(&self) -> Result<Call, PolicyError> {
        let start = Instant::now();
        let taken = self.inner.ready.lock().take();
        let call = match taken {
            Some(mut c) => {
                self.inner.arm(&mut c.store, start)?;
                c
            }
            None => {
                let deadline = Duration::from_millis(self.inner.limits.deadline_ms);
                let slot =
                    crate::policy::slot(&self.inner.host.policy_slots, &self.inner.label, deadline)
                        .await?;
                // A policy that cannot be instantiated fails here, and is not retried in the
                // background.
                self.inner.instantiate(start, slot).await?
            }
        };
        self.spawn_refill();
        Ok(call)
    }

    /// Starts making the next call's instance on the runtime, unless one is ready or under way.
    fn spawn_refill(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        rt.spawn(async move { Shared::refill(&inner).await });
    }

    fn contained(&self, store: &Store<AdapterCtx>, hook: &str, e: wasmtime::Error) -> PolicyError {
        self.inner.contained(store, hook, e)
    }

    fn json(&self, hook: &str, text: &str) -> Result<Value, PolicyError> {
        serde_json::from_str(text).map_err(|e| PolicyError::InvalidJson {
            plugin: self.inner.label.clone(),
            message: format!("{hook}: {e}"),
        })
    }

    /// [`Policy::authenticate`] with the host's error type.
    pub async fn authenticate(&self, conn: &Connection) -> Result<AuthDecision, PolicyError> {
        let mut c = self.call_instance().await?;
        let arg = wit::Connection {
            headers: conn.headers.clone(),
            query_params: conn.query_params.clone(),
            ip_address: conn.ip_address.clone(),
        };
        let out = c.guest.call_authenticate(&mut c.store, &arg).await;
        match out.map_err(|e| self.contained(&c.store, "authenticate", e))? {
            wit::AuthDecision::Allow(j) => Ok(AuthDecision::Allow(self.json("authenticate", &j)?)),
            wit::AuthDecision::Deny(why) => Ok(AuthDecision::Deny(why)),
        }
    }

    /// [`Policy::on_registration`] with the host's error type.
    pub async fn on_registration(
        &self,
        kind: RegistrationKind,
        registration: &Value,
    ) -> Result<RegistrationDecision, PolicyError> {
        let mut c = self.call_instance().await?;
        let kind = match kind {
            RegistrationKind::Function => wit::RegistrationKind::Function,
            RegistrationKind::Trigger => wit::RegistrationKind::Trigger,
            RegistrationKind::TriggerType => wit::RegistrationKind::TriggerType,
        };
        let out = c
            .guest
            .call_on_registration(&mut c.store, kind, &registration.to_string())
            .await;
        match out.map_err(|e| self.contained(&c.store, "on-registration", e))? {
            wit::RegistrationDecision::Allow => Ok(RegistrationDecision::Allow),
            wit::RegistrationDecision::Rewrite(j) => Ok(RegistrationDecision::Rewrite(
                self.json("on-registration", &j)?,
            )),
            wit::RegistrationDecision::Deny(why) => Ok(RegistrationDecision::Deny(why)),
        }
    }

    /// [`Policy::on_invocation`] with the host's error type.
    pub async fn on_invocation(
        &self,
        call: &Invocation,
    ) -> Result<InvocationDecision, PolicyError> {
        let mut c = self.call_instance().await?;
        let arg = wit::Invocation {
            function_id: call.function_id.clone(),
            namespace: call.namespace.clone(),
            payload: call.payload.to_string(),
            action: call.action.to_string(),
            context: call.context.to_string(),
            metadata: call.metadata.as_ref().map(Value::to_string),
        };
        let out = c.guest.call_on_invocation(&mut c.store, &arg).await;
        match out.map_err(|e| self.contained(&c.store, "on-invocation", e))? {
            wit::InvocationDecision::Proceed(j) => {
                Ok(InvocationDecision::Proceed(self.json("on-invocation", &j)?))
            }
            wit::InvocationDecision::Reject(r) => Ok(InvocationDecision::Reject(Rejection {
                code: r.code,
                message: r.message,
            })),
        }
    }

    /// [`Policy::on_http_request`] with the host's error type.
    pub async fn on_http_request(&self, req: &HttpRequest) -> Result<HttpDecision, PolicyError> {
        let mut c = self.call_instance().await?;
        let arg = wit::HttpRequest {
            method: req.method.clone(),
            path_params: req.path_params.clone(),
            query_params: req.query_params.clone(),
            headers: req.headers.clone(),
            context: req.context.to_string(),
        };
        let out = c.guest.call_on_http_request(&mut c.store, &arg).await;
        match out.map_err(|e| self.contained(&c.store, "on-http-request", e))? {
            wit::HttpDecision::Proceed => Ok(HttpDecision::Proceed),
            wit::HttpDecision::Respond(r) => Ok(HttpDecision::Respond(HttpResponse {
                status_code: r.status_code,
                headers: r.headers,
                body: self.json("on-http-request", &r.body)?,
            })),
        }
    }
}

#[async_trait]
impl Policy for ComponentPolicy {
    async fn authenticate(&self, conn: &Connection) -> Result<AuthDecision, AdapterError> {
        Ok(ComponentPolicy::authenticate(self, conn).await?)
    }

    async fn on_registration(
        &self,
        kind: RegistrationKind,
        registration: &Value,
    ) -> Result<RegistrationDecision, AdapterError> {
        Ok(ComponentPolicy::on_registration(self, kind, registration).await?)
    }

    async fn on_invocation(&self, call: &Invocation) -> Result<InvocationDecision, AdapterError> {
        Ok(ComponentPolicy::on_invocation(self, call).await?)
    }

    async fn on_http_request(&self, request: &HttpRequest) -> Result<HttpDecision, AdapterError> {
        Ok(ComponentPolicy::on_http_request(self, request).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_and_modules_are_told_apart_by_their_preamble() {
        assert_eq!(
            wasm_kind(b"\0asm\x01\0\0\0rest"),
            Some(WasmKind::Module),
            "core module version 1"
        );
        assert_eq!(
            wasm_kind(b"\0asm\x0d\0\x01\0rest"),
            Some(WasmKind::Component),
            "component-model layer 1"
        );
        assert_eq!(wasm_kind(b"\0asm"), None);
        assert_eq!(wasm_kind(b"not wasm at all"), None);
    }
}
