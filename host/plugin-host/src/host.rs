//! The plugin host: one wasmtime `Engine` (pooling allocator, epoch
//! interruption driven by a ticker thread), one component `Linker`, the
//! compiled-code cache, and the loaders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use async_trait::async_trait;
use iii_adapter_api::{AdapterError, AdapterLoader, AdapterSource, AdapterSpec};

use crate::adapter::{Adapter, StartArgs};
use crate::cache::{self, CacheOutcome, CodeCache};
use crate::caps::{AdapterCtx, Capabilities};
use crate::containment::Limits;
use crate::embedded;
use crate::error::PluginError;
use crate::worlds::{self, WorldBinding};

/// Host-wide settings (not per adapter).
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Compiled-code cache directory; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Relative `path:` and `data_dir` grants are resolved against this.
    pub base_dir: PathBuf,
    /// Largest `grants.memory_mb` any adapter may ask for (pool slot size).
    pub max_memory_mb: u64,
    /// Concurrent instances the pool holds (adapters + policy instances).
    pub max_instances: u32,
    /// Epoch tick; deadlines are rounded up to it.
    pub epoch_tick: Duration,
    /// Restarts allowed within `restart_window` before the supervisor gives up.
    pub max_restarts: usize,
    /// The sliding window `max_restarts` counts in.
    pub restart_window: Duration,
    /// Deadline for instantiation + `lifecycle.init` (log replay).
    pub init_deadline_ms: u64,
    /// Compile with fuel metering so `grants.fuel` can be honoured (slower code).
    pub fuel: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cache_dir: None,
            base_dir: PathBuf::from("."),
            max_memory_mb: 1024,
            max_instances: 128,
            epoch_tick: Duration::from_millis(1),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            init_deadline_ms: 60_000,
            fuel: false,
        }
    }
}

pub(crate) struct HostInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<AdapterCtx>,
    pub(crate) cfg: HostConfig,
    cache: Option<CodeCache>,
    stop_ticker: Arc<AtomicBool>,
    /// Per-call policy instances in flight at once (half the pool; adapters hold the rest).
    pub(crate) policy_slots: Arc<tokio::sync::Semaphore>,
    /// The number of `policy_slots`.
    pub(crate) policy_slot_count: usize,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Loads and supervises plugins. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct PluginHost {
    pub(crate) inner: Arc<HostInner>,
}

fn engine_err(e: wasmtime::Error) -> PluginError {
    PluginError::Engine(format!("{e:#}"))
}

impl PluginHost {
    /// Builds the engine (pooling allocator sized by `cfg`, epoch interruption), links every
    /// registered world package's host imports and starts the epoch ticker thread.
    pub fn new(cfg: HostConfig) -> Result<PluginHost, PluginError> {
        let mut pool = PoolingAllocationConfig::new();
        let n = cfg.max_instances;
        pool.total_component_instances(n)
            // A Rust wasip2 component holds a handful of core instances
            // (the program plus adapter shims); policy modules need one.
            .total_core_instances(n * 8)
            .max_core_instances_per_component(32)
            .total_memories(n * 2)
            .max_memories_per_component(4)
            .total_tables(n * 4)
            .max_tables_per_component(16)
            .total_stacks(n)
            .max_memory_size(usize::try_from(cfg.max_memory_mb * 1024 * 1024).unwrap_or(usize::MAX))
            // A policy call is one short-lived instance. When it is dropped, the pages it
            // dirtied (found by PAGEMAP_SCAN where the kernel has it, up to these sizes) are
            // reset in place instead of unmapped, so the next instance in the slot starts
            // without page faults.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(cfg.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        for package in worlds::PACKAGES {
            (package.add_imports)(&mut linker).map_err(engine_err)?;
        }
        let cache = match &cfg.cache_dir {
            Some(dir) => Some(CodeCache::new(dir, &engine)?),
            None => None,
        };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            let tick = cfg.epoch_tick;
            std::thread::Builder::new()
                .name("iii-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Engine(format!("spawning the epoch ticker: {e}")))?;
        }
        let policy_slot_count = usize::try_from((cfg.max_instances / 2).max(1)).unwrap_or(1);
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                policy_slots: Arc::new(tokio::sync::Semaphore::new(policy_slot_count)),
                policy_slot_count,
                cfg,
                cache,
                stop_ticker,
            }),
        })
    }

    /// The shared wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The settings the host was built with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.cfg
    }

    /// The component bytes a spec refers to.
    pub fn resolve_bytes(
        &self,
        spec: &AdapterSpec,
    ) -> Result<std::borrow::Cow<'static, [u8]>, PluginError> {
        match &spec.source {
            AdapterSource::Name(name) => embedded::lookup(name)
                .map(std::borrow::Cow::Borrowed)
                .ok_or_else(|| PluginError::UnknownAdapter {
                    name: name.clone(),
                    known: embedded::NAMES.join(", "),
                }),
            AdapterSource::Path(p) => {
                let path = self.resolve_path(p);
                if !path.exists() {
                    return Err(PluginError::MissingFile { path });
                }
                std::fs::read(&path)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|source| PluginError::Io { path, source })
            }
        }
    }

    fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.inner.cfg.base_dir.join(p)
        }
    }

    /// Compiles (or loads from the cache) a component.
    pub fn compile(
        &self,
        bytes: &[u8],
        label: &str,
    ) -> Result<(Component, CacheOutcome), PluginError> {
        match &self.inner.cache {
            Some(c) => c.load(&self.inner.engine, bytes, &cache::digest(bytes), label),
            None => Ok((
                cache::compile(&self.inner.engine, bytes, label)?,
                CacheOutcome::Disabled,
            )),
        }
    }

    /// Loads, instantiates and initialises an adapter implementing world `W`, e.g.
    /// `load_adapter::<StateWorld>(&spec)`. Services load through [`AdapterLoader`] instead
    /// and get the world's store trait object.
    pub async fn load_adapter<W: WorldBinding>(
        &self,
        spec: &AdapterSpec,
    ) -> Result<Arc<Adapter<W>>, PluginError> {
        let label = spec.label();
        let g = &spec.grants;
        if g.memory_mb() > self.inner.cfg.max_memory_mb {
            return Err(PluginError::InvalidSpec(format!(
                "grants.memory_mb {} of adapter `{label}` exceeds the host maximum of {} MiB",
                g.memory_mb(),
                self.inner.cfg.max_memory_mb
            )));
        }
        if g.fuel.is_some() && !self.inner.cfg.fuel {
            return Err(PluginError::InvalidSpec(format!(
                "adapter `{label}` asks for grants.fuel but the host runs without fuel metering"
            )));
        }
        let bytes = self.resolve_bytes(spec)?;
        let (component, cache) = self.compile(&bytes, &label)?;
        let caps = Capabilities::new(&label, spec.config.clone(), g, &self.inner.cfg.base_dir)?;
        let limits = Limits {
            deadline_ms: g.deadline_ms(),
            memory_mb: g.memory_mb(),
            fuel: g.fuel,
            deadline_knob: "grants.deadline_ms",
            memory_knob: "grants.memory_mb",
        };
        Adapter::start(
            self.inner.clone(),
            StartArgs {
                label,
                component: &component,
                caps,
                limits,
                cache,
            },
        )
        .await
    }
}

/// Services load adapters through this: `iii_adapter_api::load::<StateWorld>(&host, &spec)`
/// gives an `Arc<dyn StateStore>`. The world name picks the registered world module.
#[async_trait]
impl AdapterLoader for PluginHost {
    async fn load_any(
        &self,
        world: &'static str,
        spec: &AdapterSpec,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, AdapterError> {
        let entry = worlds::find(world).ok_or_else(|| PluginError::UnknownWorld {
            world: world.to_string(),
            known: worlds::names(),
        })?;
        Ok((entry.load)(self, spec).await?)
    }
}
