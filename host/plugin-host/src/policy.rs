//! Extism plugins for policy-style functions (auth, middleware, trigger
//! conditions): bytes in, bytes out, one fresh instance per call from an
//! `InstancePre`.
//!
//! Rather than linking the `extism` crate (which pins a different wasmtime
//! and would compile a second copy), this module implements the subset of
//! the `extism:host/env` ABI that plugins built with an Extism PDK import,
//! on our own engine: the host-side memory (`alloc`, `free`, `length`,
//! `load_*`, `store_*`), `input_*`, `output_set`, `error_set`,
//! `config_get`, `var_get`/`var_set` and `log_*`. HTTP imports exist but
//! always deny (policy plugins get no network). Plugins must be built
//! without WASI (`wasm32-unknown-unknown`); one importing WASI fails to load
//! with an error naming the import.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::{Caller, InstancePre, Linker, Module, Store, UpdateDeadline};

use crate::caps::Limiter;
use crate::containment::{self, Contained, Limits, Observed};
use crate::host::PluginHost;

const ENV: &str = "extism:host/env";

/// Errors of loading and calling policy plugins.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy plugin file {} does not exist", path.display())]
    MissingFile { path: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy plugin `{plugin}` is not a valid WebAssembly module: {reason}")]
    NotAModule { plugin: String, reason: String },
    #[error("policy plugin `{plugin}` needs imports this host does not provide (build it for wasm32-unknown-unknown): {reason}")]
    UnsatisfiedImport { plugin: String, reason: String },
    #[error("policy plugin `{plugin}` has no exported function `{function}`")]
    MissingFunction { plugin: String, function: String },
    #[error("policy plugin `{plugin}` {cause}")]
    Contained { plugin: String, cause: Contained },
    #[error("policy plugin `{plugin}` function `{function}` failed (code {code}): {message}")]
    Failed {
        plugin: String,
        function: String,
        code: i32,
        message: String,
    },
    #[error("policy plugin `{plugin}` returned invalid JSON: {message}")]
    InvalidJson { plugin: String, message: String },
    #[error("policy plugin `{plugin}` asks for fuel but the host runs without fuel metering")]
    FuelUnavailable { plugin: String },
    #[error("wasmtime: {0}")]
    Engine(String),
}

/// A policy plugin as configured.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// The `.wasm` module (relative paths resolve against the host base dir).
    pub path: PathBuf,
    /// String config readable with the PDK's `config::get`.
    pub config: BTreeMap<String, String>,
    pub memory_mb: u64,
    pub deadline_ms: u64,
    pub fuel: Option<u64>,
}

impl PolicySpec {
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
    vars: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    limiter: Limiter,
    deadline: Instant,
    denied: Option<String>,
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
            let v = c.data().vars.lock().get(&k).cloned();
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
                d.vars.lock().insert(k, v);
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
    vars: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    limits: Limits,
}

impl PluginHost {
    /// Loads an Extism plugin (a core module) for per-call use.
    pub fn load_policy(&self, spec: &PolicySpec) -> Result<PolicyPlugin, PolicyError> {
        let path = if spec.path.is_absolute() {
            spec.path.clone()
        } else {
            self.config().base_dir.join(&spec.path)
        };
        if !path.exists() {
            return Err(PolicyError::MissingFile { path });
        }
        let bytes = std::fs::read(&path).map_err(|source| PolicyError::Io {
            path: path.clone(),
            source,
        })?;
        let label = spec.path.display().to_string();
        if spec.fuel.is_some() && !self.config().fuel {
            return Err(PolicyError::FuelUnavailable { plugin: label });
        }
        let engine = self.engine().clone();
        let module = Module::new(&engine, &bytes).map_err(|e| PolicyError::NotAModule {
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
        Ok(PolicyPlugin {
            label,
            engine,
            pre,
            config: Arc::new(spec.config.clone()),
            vars: Arc::default(),
            limits: Limits {
                deadline_ms: spec.deadline_ms,
                memory_mb: spec.memory_mb,
                fuel: spec.fuel,
                deadline_knob: "deadline_ms",
                memory_knob: "memory_mb",
            },
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
        PolicyError::Contained {
            plugin: self.label.clone(),
            cause: containment::classify(&e, observed, &self.limits, self.limits.deadline_ms),
        }
    }

    /// Creates (and drops) one instance: what every call pays before running.
    pub async fn instantiate(&self) -> Result<(), PolicyError> {
        let mut store = self.store(Vec::new())?;
        match self.pre.instantiate_async(&mut store).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.classify(&store, e)),
        }
    }

    /// Calls `function` with raw input bytes in a fresh instance.
    pub async fn call_bytes(&self, function: &str, input: &[u8]) -> Result<Vec<u8>, PolicyError> {
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
