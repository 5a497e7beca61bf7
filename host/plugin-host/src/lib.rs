//! iii plugin host.
//!
//! Storage adapters are WebAssembly components implementing the worlds of
//! `wit/adapter-0.1.0` (`iii:adapter@0.1.0`); services reach them through
//! [`AdapterLoader`] and the consumer-side traits of `iii-adapter-api`
//! ([`StateStore`], [`StreamStore`]). Each WIT package@version is one module
//! of [`worlds`]. Policies (auth, registration hooks, middleware) are
//! components of `iii:policy@0.1.0` ([`worlds::policy_v0_1`]) or Extism
//! modules ([`policy`]), one fresh instance per call; services load both as
//! `load::<PolicyWorld>` and get an `Arc<dyn Policy>`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), iii_plugin_host::AdapterError> {
//! use iii_plugin_host::{AdapterSpec, HostConfig, PluginHost, StateWorld};
//! let host = PluginHost::new(HostConfig::default())?;
//! let state = iii_plugin_host::load::<StateWorld>(&host, &AdapterSpec::named("kv")).await?;
//! state.set("users", "u1", &serde_json::json!({"name": "ada"})).await?;
//! # Ok(()) }
//! ```

mod adapter;
mod cache;
mod caps;
mod containment;
pub mod embedded;
mod error;
mod host;
pub mod policy;
pub mod worlds;

pub use adapter::Adapter;
pub use cache::CacheOutcome;
pub use caps::{AdapterCtx, GUEST_DATA_DIR};
pub use containment::Contained;
pub use error::PluginError;
pub use host::{HostConfig, PluginHost};
pub use iii_adapter_api::{
    load, AdapterError, AdapterErrorKind, AdapterLoader, AdapterSource, AdapterSpec, AdapterWorld,
    Grants, Policy, PolicyWorld, QueueStore, QueueWorld, SegmentPath, SetResult, SpecError,
    StateStore, StateWorld, StreamGroups, StreamStore, StreamWorld, UpdateOp, UpdateOpError,
    UpdateResult, DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MB,
};
pub use worlds::policy_v0_1::{
    wasm_kind, ComponentPolicy, WasmKind, POLICY_DEFAULT_DEADLINE_MS, POLICY_DEFAULT_MEMORY_MB,
};
