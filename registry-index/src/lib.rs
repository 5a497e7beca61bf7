//! The iii plugin index.
//!
//! * [`IndexRecord`]: one published plugin version, the serde form of `iii:registry@0.1.0`'s
//!   `index-record` (`wit/registry-0.1.0/registry.wit`).
//! * [`resolve`]: `ns:name@<semver range>` → the newest matching record, prereleases excluded
//!   unless asked for.
//! * [`IndexDir`]: the on-disk index (`<dir>/index/<ns>/<name>.json`, every version of one
//!   plugin) that `iii registry serve` serves and `iii plugin publish --index` writes.
//! * [`LockedPlugin`]: one entry of the `plugins:` section of `iii.lock`, read by the engine
//!   (no network) and written by `iii plugin add`.
//! * [`server`]: the registry server (plugin index plus the worker registry API).
//!
//! Nothing here links wasmtime: the component facts in a record come from
//! `iii_plugin_host::inspect`, which the CLI calls and hands in.
#![deny(missing_docs)]

mod lock;
mod record;
mod resolve;
pub mod server;
mod store;

pub use lock::{plugin_cache_path, read_plugins, LockedPlugin, PluginLockError};
pub use record::{sha256_digest, IndexRecord, RecordError, Requirement, Signature};
pub use resolve::{parse_ref, resolve, PluginRef, ResolveError};
pub use store::{IndexDir, StoreError};
