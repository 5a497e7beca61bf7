//! iii plugin host.
//!
//! Storage adapters are WebAssembly components implementing the worlds of
//! `wit/adapter-0.1.0` (`iii:adapter@0.1.0`); the engine calls them through
//! the [`StateStore`] and [`StreamStore`] traits. Policy-style functions
//! (auth, middleware) are Extism plugins, see [`policy`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), iii_plugin_host::PluginError> {
//! use iii_plugin_host::{AdapterSpec, HostConfig, PluginHost};
//! let host = PluginHost::new(HostConfig::default())?;
//! let state = host.load_state_store(&AdapterSpec::named("kv")).await?;
//! state.set("users", "u1", &serde_json::json!({"name": "ada"})).await?;
//! # Ok(()) }
//! ```

mod adapter;
mod api;
mod cache;
mod caps;
pub mod embedded;
mod error;
mod host;
pub mod policy;

pub use adapter::{Adapter, AdapterKind};
pub use api::{
    SegmentPath, SetResult, StateStore, StreamGroups, StreamStore, UpdateOp, UpdateOpError,
    UpdateResult,
};
pub use cache::CacheOutcome;
pub use caps::GUEST_DATA_DIR;
pub use error::{AdapterErrorKind, PluginError};
pub use host::{HostConfig, PluginHost};
pub use iii_adapter_api::{
    AdapterSource, AdapterSpec, Grants, SpecError, DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MB,
};
