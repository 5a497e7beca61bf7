//! The seam for functions the engine serves on a worker's behalf: a `registerfunction` that
//! carries `invocation` (PROTOCOL.md §3.10). The core does not know what an invocation is; a
//! service that does installs an [`InvocationProvider`] through
//! [`Registrar::invocation_provider`](crate::Registrar::invocation_provider), and the core asks
//! it to turn each such registration into an in-process handler.
//!
//! The handler is registered as owned by the worker that sent the frame: listings show that
//! worker's name, `unregisterfunction` and the worker's disconnect remove it, and the usual
//! ownership and conflict rules apply (§3.2). Calls in flight when the worker disconnects end
//! with `invocation_stopped`, as calls to a worker's own functions do (§3.6).

use iii_protocol::ErrorBody;
use serde_json::Value;

use crate::core::{BoxFut, BuiltinFn};

/// What a registration asks for: the function and where it lives.
#[derive(Debug, Clone, Copy)]
pub struct InvocationTarget<'a> {
    /// The function id (after any RBAC prefix).
    pub function_id: &'a str,
    /// The namespace it is registered in.
    pub namespace: &'a str,
    /// The registering worker's id, as the wire writes it.
    pub worker_id: &'a str,
}

/// A registration the provider accepted.
pub struct BuiltInvocation {
    /// Serves each call.
    pub handler: BuiltinFn,
    /// A check that needs I/O (e.g. resolving the URL's host), run after the function is
    /// registered so the worker's other frames never wait for it. An error withdraws the
    /// registration (if it is still this one) and is sent to the worker as the refusal. It
    /// must not be the only guard: calls that arrive before it finishes are served.
    pub verify: Option<BoxFut<Result<(), ErrorBody>>>,
}

/// Turns `invocation` objects into handlers. Installed by at most one service.
pub trait InvocationProvider: Send + Sync {
    /// Validates `invocation` (the `registerfunction.invocation` object, as sent) without
    /// blocking and builds its handler, or refuses it with a structured error the worker is
    /// sent (a code of the catalogue, a message that says what to fix).
    fn build(
        &self,
        target: InvocationTarget<'_>,
        invocation: &Value,
    ) -> Result<BuiltInvocation, ErrorBody>;
}
