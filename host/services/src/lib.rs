//! The built-in services of iii, one module each. Each implements [`iii_core::Service`];
//! the composition root (`iii-engine`) holds the list. Services never import each other:
//! what they share is in [`common`], and handles between them go through the prepare context.
//!
//! - [`worker_socket`]: the worker socket listeners (`iii-worker-manager`).
//! - [`engine_fns`]: `engine::*` listings, the handshake, trigger registration, channels.
//! - [`observability`]: `engine::log::*`, baggage diagnostics, health, the log level.
//! - [`configuration`]: settings entries with JSON Schemas, including the builtin services',
//!   stored as YAML files and watched.
//! - [`listed_worker`]: upstream entries that are listed as workers and need no work here.
//! - [`http`]: the REST trigger server and the `http` trigger type.
//! - [`state`]: `state::*` and the `state` trigger type on a state adapter.
//! - [`stream`]: `stream::*` and the `stream` trigger type on a stream adapter.
//! - [`queue`]: durable topics, named queues and dead letters on a queue adapter.
//! - [`pubsub`]: `publish` and the `subscribe` trigger type on a pub/sub bus.
//! - [`bridge_worker`]: `iii-bridge`, this engine as a worker of another (expose, forward,
//!   `bridge.invoke`); the `bridge` adapters of state and stream share its client.
//! - [`cron`]: the `cron` trigger type, each fire behind a lock adapter.
//! - [`http_functions`]: functions a worker registers with a URL, which the engine calls.
//! - [`rbac`]: worker RBAC and invocation middleware of a worker-socket listener (not a
//!   service: the listener's service builds it from its own entry).
//! - [`policies`]: WebAssembly policies (components or Extism modules) as in-process functions.
//! - [`external`]: daemons run out of process as workers and supervised (`iii-sandbox`).
//! - [`validation`]: opt-in JSON Schema checks of a worker-socket listener's payloads
//!   (`validate:`; not a service: the listener's service builds it from its own entry).

mod bridge;
pub mod bridge_worker;
mod common;
mod config_schema;
pub mod configuration;
pub mod cron;
pub mod engine_fns;
pub mod external;
pub mod http;
pub mod http_functions;
pub mod listed_worker;
pub mod observability;
pub mod policies;
pub mod pubsub;
pub mod queue;
pub mod rbac;
pub mod state;
pub mod stream;
pub mod validation;
pub mod worker_socket;
