//! Opt-in payload validation of a worker-socket listener (PROTOCOL.md §3.9): the seam through
//! which a listener with `validate: warn | enforce` checks its sessions' calls against the
//! target's `request_format`, their bindings' configs against the trigger type's
//! `trigger_request_format`, and (warn) results against `response_format`.
//!
//! The core knows neither JSON Schema nor the modes. It asks the session's
//! [`PayloadValidator`], set by the service that configures the listener, at its enforcement
//! points (the routing of `invokefunction`, the application of `registertrigger`, the arrival of
//! a result), and only when the function or trigger type has a schema at all: a session
//! without a validator, or a function without a schema, pays one pointer check.
//!
//! Compiled schemas belong with the registration they come from: a validator keeps them in the
//! [`FunctionEntry`]'s derived slot ([`FunctionEntry::derived`]), so they are dropped when the
//! function is unregistered or its worker leaves.

use iii_protocol::ErrorBody;
use serde_json::Value;

use crate::core::FunctionEntry;

/// One listener's payload checks, shared by its sessions.
pub trait PayloadValidator: Send + Sync {
    /// Checks `data` (the call's JSON text as sent, `null` when absent) against
    /// `entry.request_format`, which is set. `Err` refuses the call with that answer; a
    /// validator that only warns logs and returns `Ok`.
    fn check_call(&self, entry: &FunctionEntry, data: &str) -> Result<(), ErrorBody>;

    /// Whether results are checked: the core then keeps the function's entry with calls to
    /// functions that have a `response_format`, and hands their results to
    /// [`PayloadValidator::check_result`].
    fn checks_results(&self) -> bool {
        false
    }

    /// Checks a successful result (JSON text, `None` for no result) against
    /// `entry.response_format`, which is set. Log only: a result is never withheld.
    fn check_result(&self, entry: &FunctionEntry, result: Option<&str>) {
        let _ = (entry, result);
    }

    /// Checks a binding's `config` against `schema`, the `trigger_request_format` of the
    /// trigger type `trigger_type` it resolves to. `Err` refuses the registration.
    fn check_trigger_config(
        &self,
        trigger_type: &str,
        schema: &Value,
        config: &Value,
    ) -> Result<(), ErrorBody>;
}
