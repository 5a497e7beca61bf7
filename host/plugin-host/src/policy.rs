//! Extism plugins for policy-style functions (auth, middleware, trigger
//! conditions): bytes in, bytes out, one fresh instance per call from an
//! `InstancePre`. A module exporting the hooks `authenticate`,
//! `on_registration`, `on_invocation`, `on_http_request` (JSON in, JSON out,
//! the serde forms of [`iii_adapter_api::policy`], plus `now_ms`, the host's
//! clock in Unix milliseconds, since the module has none) is a
//! [`Policy`](iii_adapter_api::Policy); a hook it does not export fails when
//! called, with [`PolicyError::HookMissing`].
//!
//! Rather than linking the `extism` crate (which pins a different wasmtime
//! and would compile a second copy), this module implements the subset of
//! the `extism:host/env` ABI that plugins built with an Extism PDK import,
//! on our own engine: the host-side memory (`alloc`, `free`, `length`,
//! `load_*`, `store_*`), `input_*`, `output_set`, `error_set`,
//! `config_get`, `var_get`/`var_set` and `log_*`. Vars are the only state
//! that outlives a call: kept by the host per plugin, at most
//! [`MAX_VAR_BYTES`] in all (a `var_set` beyond that traps). HTTP imports exist but
//! always deny (policy plugins get no network). Plugins must be built
//! without WASI (`wasm32-unknown-unknown`); one importing WASI fails to load
//! with an error naming the import.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use iii_adapter_api::policy::{
    AuthDecision, Connection, HttpDecision, HttpRequest, Invocation, InvocationDecision, Policy,
    RegistrationDecision, RegistrationKind,
};
use iii_adapter_api::{AdapterError, AdapterErrorKind};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Caller, InstancePre, Linker, Module, Store, UpdateDeadline};

use crate::caps::Limiter;
use crate::containment::{self, Contained, Limits, Observed};
use crate::host::PluginHost;

const ENV: &str = "extism:host/env";

/// Bytes (keys and values) one plugin may keep in its vars.
pub const MAX_VAR_BYTES: usize = 1 << 20;

/// The policy hooks, as Extism export names.
pub const HOOKS: [&str; 4] = [
    "authenticate",
    "on_registration",
    "on_invocation",
    "on_http_request",
];

/// Errors of loading and calling policy plugins.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The module file does not exist.
    #[error("policy plugin file {} does not exist", path.display())]
    MissingFile {
        /// The path after resolving it against the host's base dir.
        path: PathBuf,
    },
    /// Reading the module failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a core module this engine can compile.
    #[error("policy plugin `{plugin}` is not a valid WebAssembly module: {reason}")]
    NotAModule {
        /// The plugin's path as configured.
        plugin: String,
        /// wasmtime's reason.
        reason: String,
    },
    /// The module imports something beyond the Extism host ABI (typically WASI).
    #[error("policy plugin `{plugin}` needs imports this host does not provide (build it for wasm32-unknown-unknown): {reason}")]
    UnsatisfiedImport {
        /// The plugin's path as configured.
        plugin: String,
        /// wasmtime's description of the missing import.
        reason: String,
    },
    /// The called function is not exported.
    #[error("policy plugin `{plugin}` has no exported function `{function}`")]
    MissingFunction {
        /// The plugin's path as configured.
        plugin: String,
        /// The function asked for.
        function: String,
    },
    /// The host stopped the call (deadline, memory, fuel, trap) or refused a capability.
    #[error("policy plugin `{plugin}` {cause}")]
    Contained {
        /// The plugin's path as configured.
        plugin: String,
        /// Why.
        cause: Contained,
    },
    /// The function returned a non-zero code (with the message it set through `error_set`).
    #[error("policy plugin `{plugin}` function `{function}` failed (code {code}): {message}")]
    Failed {
        /// The plugin's path as configured.
        plugin: String,
        /// The function.
        function: String,
        /// Its return code.
        code: i32,
        /// Its error message, or "no error message".
        message: String,
    },
    /// The output of [`PolicyPlugin::call`] is not JSON.
    #[error("policy plugin `{plugin}` returned invalid JSON: {message}")]
    InvalidJson {
        /// The plugin's path as configured.
        plugin: String,
        /// The parse error.
        message: String,
    },
    /// The spec asks for fuel on a host built without fuel metering.
    #[error("policy plugin `{plugin}` asks for fuel but the host runs without fuel metering")]
    FuelUnavailable {
        /// The plugin's path as configured.
        plugin: String,
    },
    /// The policy entry asks for something policies cannot have.
    #[error("invalid policy spec: {0}")]
    InvalidSpec(String),
    /// A component lacks the world's export, or has it with other signatures.
    #[error("policy `{plugin}` is not an iii:policy/policy@0.1.0 component: {reason}")]
    MissingExport {
        /// The policy's path as configured.
        plugin: String,
        /// What is missing.
        reason: String,
    },
    /// The policy does not implement the hook it was called for.
    #[error(
        "policy `{plugin}` does not implement `{hook}` (its module exports no function `{hook}`)"
    )]
    HookMissing {
        /// The policy's path as configured.
        plugin: String,
        /// The hook.
        hook: &'static str,
    },
    /// Every per-call instance slot stayed taken for the whole deadline.
    #[error("policy `{plugin}` found no free instance slot within its deadline of {deadline_ms} ms (the host runs too many policy calls at once)")]
    Busy {
        /// The policy's path as configured.
        plugin: String,
        /// The deadline it waited for.
        deadline_ms: u64,
    },
    /// wasmtime failed outside a plugin call.
    #[error("wasmtime: {0}")]
    Engine(String),
}

/// What services see: a hook the policy lacks is [`AdapterErrorKind::Unsupported`], a call
/// the host stopped is [`AdapterErrorKind::Unavailable`], bad output is
/// [`AdapterErrorKind::InvalidInput`]; the message is this error's text.
impl From<PolicyError> for AdapterError {
    fn from(e: PolicyError) -> Self {
        let kind = match &e {
            PolicyError::HookMissing { .. } => AdapterErrorKind::Unsupported,
            PolicyError::Contained { .. } | PolicyError::Busy { .. } => {
                AdapterErrorKind::Unavailable
            }
            PolicyError::InvalidJson { .. } => AdapterErrorKind::InvalidInput,
            _ => AdapterErrorKind::Other,
        };
        AdapterError::new(kind, e.to_string())
    }
}

/// Takes one of the host's per-call instance slots, waiting at most `deadline`: the pool has
/// a fixed number of instances, and a burst of policy calls waits for a slot instead of failing
/// on an exhausted pool.
pub(crate) async fn slot(
    slots: &Arc<Semaphore>,
    plugin: &str,
    deadline: Duration,
) -> Result<OwnedSemaphorePermit, PolicyError> {
    match tokio::time::timeout(deadline, slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(PolicyError::Busy {
            plugin: plugin.to_string(),
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// A policy plugin as configured.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// The `.wasm` module (relative paths resolve against the host base dir).
    pub path: PathBuf,
    /// String config readable with the PDK's `config::get`.
    pub config: BTreeMap<String, String>,
    /// Memory cap of one call's instance, in MiB (default 32).
    pub memory_mb: u64,
    /// Per-call deadline in milliseconds (default 1000).
    pub deadline_ms: u64,
    /// Fuel units per call; needs `HostConfig::fuel`.
    pub fuel: Option<u64>,
}

impl PolicySpec {
    /// The module at `path` with no config and the default limits.
    pub fn new(path: impl Into<PathBuf>) -> PolicySpec {
        PolicySpec {
            path: path.into(),
            config: BTreeMap::new(),
            memory_mb: 32,
            deadline_ms: 1_000,
            fuel: None,
        }
    }
}

/// The Extism host-side memory of one call: a byte arena addressed by
/// offsets (0 is null), with the length of every allocation.
#[derive(Default)]
struct Arena {
    bytes: Vec<u8>,
    blocks: HashMap<u64, u64>,
}

impl Arena {
    fn alloc(&mut self, len: u64, cap: usize) -> Option<u64> {
        if self.bytes.is_empty() {
            // Offset 0 means "no block" in the ABI.
            self.bytes.push(0);
        }
        let offs = self.bytes.len() as u64;
        let new_len = self
            .bytes
            .len()
            .checked_add(usize::try_from(len.max(1)).ok()?)?;
        if new_len > cap {
            return None;
        }
        self.bytes.resize(new_len, 0);
        self.blocks.insert(offs, len);
        Some(offs)
    }

    fn block(&self, offs: u64) -> Option<&[u8]> {
        let len = *self.blocks.get(&offs)?;
        self.bytes.get(offs as usize..(offs + len) as usize)
    }

    fn range(&self, offs: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offs).ok()?;
        self.bytes
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }
}

struct PolicyCtx {
    plugin: Arc<str>,
    arena: Arena,
    arena_cap: usize,
    arena_hit: bool,
    input: Vec<u8>,
    output: Option<(u64, u64)>,
    error: Option<u64>,
    config: Arc<BTreeMap<String, String>>,
    vars: Arc<Mutex<Vars>>,
    limiter: Limiter,
    deadline: Instant,
    denied: Option<String>,
}

/// A plugin's vars and their size, bounded by [`MAX_VAR_BYTES`].
#[derive(Default)]
struct Vars {
    map: HashMap<String, Vec<u8>>,
    bytes: usize,
}

impl Vars {
    fn remove(&mut self, k: &str) {
        if let Some(v) = self.map.remove(k) {
            self.bytes -= k.len() + v.len();
        }
    }

    fn set(&mut self, k: String, v: Vec<u8>) -> bool {
        let old = self.map.get(&k).map_or(0, |o| k.len() + o.len());
        let total = self.bytes - old + k.len() + v.len();
        if total > MAX_VAR_BYTES {
            return false;
        }
        self.bytes = total;
        self.map.insert(k, v);
        true
    }
}

fn trap(msg: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::msg(msg.into())
}

fn alloc_bytes(c: &mut PolicyCtx, data: &[u8]) -> wasmtime::Result<u64> {
    let offs = match c.arena.alloc(data.len() as u64, c.arena_cap) {
        Some(o) => o,
        None => {
            c.arena_hit = true;
            return Err(trap("extism memory cap reached"));
        }
    };
    let start = offs as usize;
    c.arena.bytes[start..start + data.len()].copy_from_slice(data);
    Ok(offs)
}

fn block_string(c: &PolicyCtx, offs: u64) -> wasmtime::Result<String> {
    let b = c
        .arena
        .block(offs)
        .ok_or_else(|| trap(format!("invalid extism memory block {offs}")))?;
    Ok(String::from_utf8_lossy(b).into_owned())
}

fn build_linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<PolicyCtx>> {
    let mut l: Linker<PolicyCtx> = Linker::new(engine);
    l.func_wrap(
        ENV,
        "alloc",
        |mut c: Caller<'_, PolicyCtx>, len: u64| -> wasmtime::Result<u64> {
            let d = c.data_mut();
            match d.arena.alloc(len, d.arena_cap) {
                Some(o) => Ok(o),
                None => {
                    d.arena_hit = true;
                    Err(trap("extism memory cap reached"))
                }
            }
        },
    )?;
    l.func_wrap(ENV, "free", |mut c: Caller<'_, PolicyCtx>, offs: u64| {
        // The arena lives for one call, so freeing only forgets the block.
        c.data_mut().arena.blocks.remove(&offs);
    })?;
    for name in ["length", "length_unsafe"] {
        l.func_wrap(ENV, name, |c: Caller<'_, PolicyCtx>, offs: u64| -> u64 {
            c.data().arena.blocks.get(&offs).copied().unwrap_or(0)
        })?;
    }
    l.func_wrap(
        ENV,
        "load_u8",
        |c: Caller<'_, PolicyCtx>, offs: u64| -> wasmtime::Result<u32> {
            c.data()
                .arena
                .range(offs, 1)
                .map(|b| b[0] as u32)
                .ok_or_else(|| trap(format!("extism load_u8 out of bounds at {offs}")))
        },
    )?;
    l.func_wrap(
        ENV,
        "load_u64",
        |c: Caller<'_, PolicyCtx>, offs: u64| -> wasmtime::Result<u64> {
            c.data()
                .arena
                .range(offs, 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| trap(format!("extism load_u64 out of bounds at {offs}")))
        },
    )?;
    l.func_wrap(
        ENV,
        "store_u8",
        |mut c: Caller<'_, PolicyCtx>, offs: u64, v: u32| -> wasmtime::Result<()> {
            let b = c
                .data_mut()
                .arena
                .bytes
                .get_mut(offs as usize)
                .ok_or_else(|| trap("extism store_u8 out of bounds"))?;
            *b = v as u8;
            Ok(())
        },
    )?;
    l.func_wrap(
        ENV,
        "store_u64",
        |mut c: Caller<'_, PolicyCtx>, offs: u64, v: u64| -> wasmtime::Result<()> {
            let start = offs as usize;
            let dst = c
                .data_mut()
                .arena
                .bytes
                .get_mut(start..start.saturating_add(8))
                .ok_or_else(|| trap("extism store_u64 out of bounds"))?;
            dst.copy_from_slice(&v.to_le_bytes());
            Ok(())
        },
    )?;
    l.func_wrap(ENV, "input_length", |c: Caller<'_, PolicyCtx>| -> u64 {
        c.data().input.len() as u64
    })?;
    l.func_wrap(
        ENV,
        "input_load_u8",
        |c: Caller<'_, PolicyCtx>, i: u64| -> wasmtime::Result<u32> {
            c.data()
                .input
                .get(i as usize)
                .map(|b| *b as u32)
                .ok_or_else(|| trap("extism input_load_u8 out of bounds"))
        },
    )?;
    l.func_wrap(
        ENV,
        "input_load_u64",
        |c: Caller<'_, PolicyCtx>, i: u64| -> wasmtime::Result<u64> {
            let start = i as usize;
            c.data()
                .input
                .get(start..start.saturating_add(8))
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| trap("extism input_load_u64 out of bounds"))
        },
    )?;
    l.func_wrap(
        ENV,
        "output_set",
        |mut c: Caller<'_, PolicyCtx>, offs: u64, len: u64| {
            c.data_mut().output = Some((offs, len));
        },
    )?;
    l.func_wrap(
        ENV,
        "error_set",
        |mut c: Caller<'_, PolicyCtx>, offs: u64| {
            c.data_mut().error = Some(offs);
        },
    )?;
    l.func_wrap(
        ENV,
        "config_get",
        |mut c: Caller<'_, PolicyCtx>, key: u64| -> wasmtime::Result<u64> {
            let k = block_string(c.data(), key)?;
            let v = c.data().config.get(&k).cloned();
            match v {
                Some(v) => alloc_bytes(c.data_mut(), v.as_bytes()),
                None => Ok(0),
            }
        },
    )?;
    l.func_wrap(
        ENV,
        "var_get",
        |mut c: Caller<'_, PolicyCtx>, key: u64| -> wasmtime::Result<u64> {
            let k = block_string(c.data(), key)?;
            let v = c.data().vars.lock().map.get(&k).cloned();
            match v {
                Some(v) => alloc_bytes(c.data_mut(), &v),
                None => Ok(0),
            }
        },
    )?;
    l.func_wrap(
        ENV,
        "var_set",
        |mut c: Caller<'_, PolicyCtx>, key: u64, val: u64| -> wasmtime::Result<()> {
            let d = c.data_mut();
            let k = block_string(d, key)?;
            if val == 0 {
                d.vars.lock().remove(&k);
            } else {
                let v = d
                    .arena
                    .block(val)
                    .ok_or_else(|| trap("invalid var value block"))?
                    .to_vec();
                if !d.vars.lock().set(k, v) {
                    return Err(trap(format!(
                        "extism var_set: the plugin's vars would exceed {MAX_VAR_BYTES} bytes"
                    )));
                }
            }
            Ok(())
        },
    )?;
    for (name, level) in [
        ("log_trace", tracing::Level::TRACE),
        ("log_debug", tracing::Level::DEBUG),
        ("log_info", tracing::Level::INFO),
        ("log_warn", tracing::Level::WARN),
        ("log_error", tracing::Level::ERROR),
    ] {
        l.func_wrap(
            ENV,
            name,
            move |c: Caller<'_, PolicyCtx>, offs: u64| -> wasmtime::Result<()> {
                let msg = block_string(c.data(), offs)?;
                let plugin = &*c.data().plugin;
                match level {
                    tracing::Level::TRACE => tracing::trace!(plugin, "{msg}"),
                    tracing::Level::DEBUG => tracing::debug!(plugin, "{msg}"),
                    tracing::Level::INFO => tracing::info!(plugin, "{msg}"),
                    tracing::Level::WARN => tracing::warn!(plugin, "{msg}"),
                    _ => tracing::error!(plugin, "{msg}"),
                }
                Ok(())
            },
        )?;
    }
    // Info: the PDK skips formatting records below it.
    l.func_wrap(ENV, "get_log_level", |_c: Caller<'_, PolicyCtx>| -> i32 {
        2
    })?;
    l.func_wrap(
        ENV,
        "http_request",
        |mut c: Caller<'_, PolicyCtx>, _req: u64, _body: u64| -> wasmtime::Result<u64> {
            c.data_mut().denied = Some("http_request (policy plugins have no network)".into());
            Err(trap("http_request denied"))
        },
    )?;
    l.func_wrap(
        ENV,
        "http_status_code",
        |_c: Caller<'_, PolicyCtx>| -> i32 { 0 },
    )?;
    l.func_wrap(ENV, "http_headers", |_c: Caller<'_, PolicyCtx>| -> u64 {
        0
    })?;
    Ok(l)
}

/// A loaded policy plugin. Each call runs in a fresh instance; `var`s
/// persist across calls of the same plugin, as in Extism.
pub struct PolicyPlugin {
    label: String,
    engine: wasmtime::Engine,
    pre: InstancePre<PolicyCtx>,
    config: Arc<BTreeMap<String, String>>,
    vars: Arc<Mutex<Vars>>,
    limits: Limits,
    /// The module's exported function names.
    exports: Vec<String>,
    slots: Arc<Semaphore>,
}

impl PluginHost {
    /// The bytes of a policy file (relative paths resolve against the host's base dir).
    pub(crate) fn policy_bytes(&self, p: &Path) -> Result<Vec<u8>, PolicyError> {
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.config().base_dir.join(p)
        };
        if !path.exists() {
            return Err(PolicyError::MissingFile { path });
        }
        std::fs::read(&path).map_err(|source| PolicyError::Io { path, source })
    }

    /// Loads an Extism plugin (a core module) for per-call use.
    pub fn load_policy(&self, spec: &PolicySpec) -> Result<PolicyPlugin, PolicyError> {
        let bytes = self.policy_bytes(&spec.path)?;
        let limits = Limits {
            deadline_ms: spec.deadline_ms,
            memory_mb: spec.memory_mb,
            fuel: spec.fuel,
            deadline_knob: "deadline_ms",
            memory_knob: "memory_mb",
        };
        self.load_policy_bytes(spec, &bytes, limits)
    }

    pub(crate) fn load_policy_bytes(
        &self,
        spec: &PolicySpec,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<PolicyPlugin, PolicyError> {
        let label = spec.path.display().to_string();
        if spec.fuel.is_some() && !self.config().fuel {
            return Err(PolicyError::FuelUnavailable { plugin: label });
        }
        let engine = self.engine().clone();
        let module = Module::new(&engine, bytes).map_err(|e| PolicyError::NotAModule {
            plugin: label.clone(),
            reason: format!("{e:#}"),
        })?;
        let linker = build_linker(&engine).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| PolicyError::UnsatisfiedImport {
                plugin: label.clone(),
                reason: format!("{e:#}"),
            })?;
        let exports = module
            .exports()
            .filter(|e| e.ty().func().is_some())
            .map(|e| e.name().to_string())
            .collect();
        Ok(PolicyPlugin {
            label,
            engine,
            pre,
            config: Arc::new(spec.config.clone()),
            vars: Arc::default(),
            limits,
            exports,
            slots: self.inner.policy_slots.clone(),
        })
    }
}

impl PolicyPlugin {
    fn store(&self, input: Vec<u8>) -> Result<Store<PolicyCtx>, PolicyError> {
        let cap = usize::try_from(self.limits.memory_mb.saturating_mul(1024 * 1024))
            .unwrap_or(usize::MAX);
        let mut store = Store::new(
            &self.engine,
            PolicyCtx {
                plugin: self.label.as_str().into(),
                arena: Arena::default(),
                arena_cap: cap,
                arena_hit: false,
                input,
                output: None,
                error: None,
                config: self.config.clone(),
                vars: self.vars.clone(),
                limiter: Limiter::new(cap),
                deadline: Instant::now() + Duration::from_millis(self.limits.deadline_ms),
                denied: None,
            },
        );
        store.limiter(|c| &mut c.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        if let Some(f) = self.limits.fuel {
            store
                .set_fuel(f)
                .map_err(|e| PolicyError::Engine(e.to_string()))?;
        }
        Ok(store)
    }

    fn classify(&self, store: &Store<PolicyCtx>, e: wasmtime::Error) -> PolicyError {
        let d = store.data();
        let observed = Observed {
            memory_hit: d.limiter.hit || d.arena_hit,
            denial: d.denied.as_deref(),
        };
        let err = PolicyError::Contained {
            plugin: self.label.clone(),
            cause: containment::classify(&e, observed, &self.limits, self.limits.deadline_ms),
        };
        tracing::warn!(policy = %self.label, "policy call failed (the caller denies): {err}");
        err
    }

    /// Creates (and drops) one instance: what every call pays before running.
    pub async fn instantiate(&self) -> Result<(), PolicyError> {
        let deadline = Duration::from_millis(self.limits.deadline_ms);
        let _slot = slot(&self.slots, &self.label, deadline).await?;
        let mut store = self.store(Vec::new())?;
        match self.pre.instantiate_async(&mut store).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.classify(&store, e)),
        }
    }

    /// Calls `function` with raw input bytes in a fresh instance.
    pub async fn call_bytes(&self, function: &str, input: &[u8]) -> Result<Vec<u8>, PolicyError> {
        let deadline = Duration::from_millis(self.limits.deadline_ms);
        let _slot = slot(&self.slots, &self.label, deadline).await?;
        let mut store = self.store(input.to_vec())?;
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => return Err(self.classify(&store, e)),
        };
        // wasip1 "reactor" style modules must run their initialiser first.
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            if let Err(e) = init.call_async(&mut store, ()).await {
                return Err(self.classify(&store, e));
            }
        }
        let func = instance
            .get_typed_func::<(), i32>(&mut store, function)
            .map_err(|_| PolicyError::MissingFunction {
                plugin: self.label.clone(),
                function: function.to_string(),
            })?;
        let rc = match func.call_async(&mut store, ()).await {
            Ok(rc) => rc,
            Err(e) => return Err(self.classify(&store, e)),
        };
        let d = store.data();
        if rc != 0 {
            let message = d
                .error
                .and_then(|o| d.arena.block(o))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| "no error message".into());
            return Err(PolicyError::Failed {
                plugin: self.label.clone(),
                function: function.to_string(),
                code: rc,
                message,
            });
        }
        Ok(match d.output {
            Some((offs, len)) => d
                .arena
                .range(offs, len)
                .ok_or_else(|| PolicyError::Contained {
                    plugin: self.label.clone(),
                    cause: Contained::Trap {
                        message: "output points outside extism memory".into(),
                    },
                })?
                .to_vec(),
            None => Vec::new(),
        })
    }

    /// Calls `function` with a JSON input and parses its JSON output.
    pub async fn call(
        &self,
        function: &str,
        input: &serde_json::Value,
    ) -> Result<serde_json::Value, PolicyError> {
        let out = self
            .call_bytes(function, input.to_string().as_bytes())
            .await?;
        serde_json::from_slice(&out).map_err(|e| PolicyError::InvalidJson {
            plugin: self.label.clone(),
            message: e.to_string(),
        })
    }
}

impl PolicyPlugin {
    /// The plugin's path, as configured.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Does the module export a function `name`?
    pub fn exports_function(&self, name: &str) -> bool {
        self.exports.iter().any(|e| e == name)
    }

    /// A module loaded as a policy must export at least one hook.
    pub(crate) fn require_some_hook(&self) -> Result<(), PolicyError> {
        if HOOKS.iter().any(|h| self.exports_function(h)) {
            return Ok(());
        }
        Err(PolicyError::MissingExport {
            plugin: self.label.clone(),
            reason: format!(
                "an Extism policy exports at least one of the functions {}",
                HOOKS.join(", ")
            ),
        })
    }

    /// One hook: its JSON input, the decision parsed from its JSON output.
    async fn hook<T: DeserializeOwned>(
        &self,
        hook: &'static str,
        input: &Value,
    ) -> Result<T, PolicyError> {
        if !self.exports_function(hook) {
            return Err(PolicyError::HookMissing {
                plugin: self.label.clone(),
                hook,
            });
        }
        // An Extism module has no clock (WASI is refused), so the host lends it one.
        let mut input = input.clone();
        if let Value::Object(m) = &mut input {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            m.insert("now_ms".into(), json!(now));
        }
        let out = self.call(hook, &input).await?;
        serde_json::from_value(out).map_err(|e| PolicyError::InvalidJson {
            plugin: self.label.clone(),
            message: format!("`{hook}` returned no valid decision: {e}"),
        })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// An Extism module as a policy: each hook is the export of the same name.
#[async_trait]
impl Policy for PolicyPlugin {
    async fn authenticate(&self, conn: &Connection) -> Result<AuthDecision, AdapterError> {
        Ok(self.hook("authenticate", &to_json(conn)).await?)
    }

    async fn on_registration(
        &self,
        kind: RegistrationKind,
        registration: &Value,
    ) -> Result<RegistrationDecision, AdapterError> {
        let input = json!({"kind": kind, "registration": registration});
        Ok(self.hook("on_registration", &input).await?)
    }

    async fn on_invocation(&self, call: &Invocation) -> Result<InvocationDecision, AdapterError> {
        Ok(self.hook("on_invocation", &to_json(call)).await?)
    }

    async fn on_http_request(&self, request: &HttpRequest) -> Result<HttpDecision, AdapterError> {
        Ok(self.hook("on_http_request", &to_json(request)).await?)
    }
}
