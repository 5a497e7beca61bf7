//! `iii-sandbox`: the sandbox daemon. A worker (on the official `iii-sdk` crate) that the
//! engine starts for a `- name: iii-sandbox` entry; it serves `sandbox::*` over isolated
//! sandboxes run by [`iii_sandbox_runtime`] (microVMs or Linux namespaces), each booted from a
//! read-only image lower with its own writable upper.
//!
//! - [`config`]: the flat `config:` block.
//! - [`catalog`]: presets and custom images, the allowlist.
//! - [`images`]: catalog entry → root filesystem (cache, build, import).
//! - [`registry`]: live sandboxes, admission, activity.
//! - [`daemon`]: create / exec / stop / list and the reaper pass.
//! - [`fs`][crate::fs]: the `sandbox::fs::*` handlers.
//! - [`run`][crate::run]: the `sandbox::run` handler.
//! - [`agent`]: sessions with a sandbox's guest agent.
//! - [`request`]: exec shapes, env, modes, base64.
//! - [`error`]: the S-code catalogue and envelope.
//! - [`worker`]: the SDK registration, signals and the engine lifeline.

pub mod agent;
pub mod catalog;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod images;
pub mod registry;
pub mod request;
pub mod run;
pub mod worker;
