//! Access control of a worker-socket listener (PROTOCOL.md §9): the seam through which a
//! policy decides who may connect, what a session may call and register, and whether its
//! calls go through a middleware function.
//!
//! The core calls these traits at its enforcement points (the upgrade, `invokefunction`,
//! `engine::workers::register`, every registration frame, the invocation of a prefixed
//! function) and never knows how they decide. The RBAC of upstream's `iii-worker-manager`
//! entry is one implementation, built by the service that configures the listener; a listener
//! without one is trusted and pays nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use iii_protocol::{ErrorBody, Kind};
use serde_json::Value;

use crate::core::Core;

/// What a connecting client presented (PROTOCOL.md §9.2): the auth function's input.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ConnectRequest {
    /// Header names lowercase, one value per name (the last one sent).
    pub headers: BTreeMap<String, String>,
    /// Query parameters, values not URL-decoded, in the order sent.
    pub query_params: BTreeMap<String, Vec<String>>,
    /// The peer's address, without port.
    pub ip_address: String,
}

/// A listener's gate: decides once per connection, before `workerregistered`.
#[async_trait]
pub trait ListenerAccess: Send + Sync {
    /// Admits a connection with the session's grants, or refuses it with the `AUTH_ERROR`
    /// the client is sent before the socket closes.
    async fn admit(
        &self,
        core: &Core,
        request: ConnectRequest,
    ) -> Result<Arc<dyn SessionAccess>, ErrorBody>;
}

/// What becomes of one registration frame of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Registration {
    /// Apply this frame (the one sent, or a rewritten one), a JSON object in wire form.
    Apply(Value),
    /// Drop it without telling the worker (upstream's behaviour for refused registrations);
    /// the reason is logged.
    Drop(String),
    /// Refuse it with this error: a `registertrigger` whose target the session may not call
    /// gets a `triggerregistrationresult` carrying it.
    Refuse(ErrorBody),
}

/// One admitted session's grants and hooks.
#[async_trait]
pub trait SessionAccess: Send + Sync {
    /// May this session call `function_id` in `namespace`? The error (`FORBIDDEN`) is the
    /// caller's answer.
    fn may_call(&self, core: &Core, function_id: &str, namespace: &str) -> Result<(), ErrorBody>;

    /// May this session declare `namespace` through `engine::workers::register`?
    fn may_use_namespace(&self, namespace: &str) -> Result<(), ErrorBody>;

    /// May this session bind triggers of `trigger_type` (also through
    /// `engine::register_trigger`)?
    fn may_bind_trigger_type(&self, trigger_type: &str) -> bool;

    /// Decides a registration frame (`kind` is a registration kind) the session sent in
    /// `namespace`; `frame` is its JSON object. Hooks may call functions, so this may wait.
    async fn registration(
        &self,
        core: &Core,
        kind: Kind,
        namespace: &str,
        frame: Value,
    ) -> Registration;

    /// The prefix the session's functions are stored under (`P` of `P::X`, PROTOCOL.md §9.7).
    fn prefix(&self) -> Option<&str> {
        None
    }

    /// The middleware the session's calls go through, with the auth context passed to it
    /// (PROTOCOL.md §9.5).
    fn middleware(&self) -> Option<(&str, &Value)> {
        None
    }
}

/// `P::X` for a session with prefix `P`, else `id` as it is.
pub fn prefixed(access: Option<&Arc<dyn SessionAccess>>, id: &str) -> String {
    with_prefix(access.and_then(|a| a.prefix()), id)
}

/// `P::X` for `Some(P)`, else `id` as it is: how a prefix is applied (PROTOCOL.md §9.7).
pub fn with_prefix(prefix: Option<&str>, id: &str) -> String {
    match prefix {
        Some(p) => format!("{p}::{id}"),
        None => id.to_string(),
    }
}

/// The id a session with a prefix knows its function `P::X` by: `X` (PROTOCOL.md §9.7).
pub fn unprefixed<'a>(access: Option<&Arc<dyn SessionAccess>>, id: &'a str) -> &'a str {
    access
        .and_then(|a| a.prefix())
        .and_then(|p| id.strip_prefix(p))
        .and_then(|rest| rest.strip_prefix("::"))
        .unwrap_or(id)
}
