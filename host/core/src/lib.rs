#![deny(missing_docs)]
//! The iii engine core: what every engine has, whatever services it runs.
//!
//! It holds the function registry and invocation router ([`Core`]), in-flight calls
//! ([`pending`]), trigger types and bindings ([`triggers`]), worker-socket sessions
//! ([`conn`], [`session`], [`listener`]), data channels ([`channels`]), config-entry reading
//! ([`config`]), the seam every capability plugs into ([`service`]), the one for functions
//! served on a worker's behalf ([`invocation`]) and the one for a listener's opt-in payload
//! checks ([`validation`]).
//!
//! It never names a service and links no wasmtime: services depend on it, never the reverse.
//! The wire contract is `host/protocol/PROTOCOL.md`; "§" references point there.

pub mod access;
pub mod channels;
pub mod config;
pub mod conn;
pub mod control;
mod core;
pub mod invocation;
pub mod limits;
pub mod listener;
pub mod pending;
mod reply;
pub mod service;
pub mod session;
pub mod tap;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod triggers;
pub mod url;
pub mod validation;

#[cfg(test)]
mod tests;

pub use crate::core::{
    new_id, sanitize_name, stopped, BoxFut, BuiltinFn, CallCtx, Core, CoreSettings, FunctionEntry,
    Handler, WeakCore, DEFAULT_NS,
};
pub use reply::{Reply, SharedJson};
pub use service::{
    CancellationToken, Configured, Entry, FunctionSpec, Handles, Installed, LiveConfig, NoInput,
    PrepareCx, Prepared, Registrar, Service, ServiceInfo, StartError, TriggerTypeSpec,
};
