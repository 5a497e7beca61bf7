//! The observability tap: one optional [`Observer`] a service installs to see finished
//! invocations and the telemetry frames workers send on `/otel`. Without an observer the
//! hot path pays one atomic load per call and takes no time stamp.

use std::sync::Arc;
use std::time::Duration;

/// A finished invocation, as the router saw it.
pub struct InvocationEvent<'a> {
    /// The function called.
    pub function_id: &'a str,
    /// The error code, when the call failed.
    pub error_code: Option<&'a str>,
    /// The error message, when the call failed.
    pub error_message: Option<&'a str>,
    /// From the router taking the call to the result arriving.
    pub duration: Duration,
    /// The caller's W3C `traceparent`, when it sent one.
    pub traceparent: Option<&'a str>,
    /// The caller's W3C `baggage`, when it sent one.
    pub baggage: Option<&'a str>,
    /// The worker that made the call, when one did (its connection id).
    pub caller: Option<&'a str>,
    /// Whether an in-process builtin served the call (else a worker did).
    pub builtin: bool,
}

/// What the observability service installs into the core.
pub trait Observer: Send + Sync {
    /// An invocation finished (successfully or not).
    fn invocation(&self, ev: &InvocationEvent<'_>);
    /// A binary frame a worker sent on its `/otel` socket (4-byte kind + OTLP/JSON), with the
    /// connection's remote address.
    fn telemetry_frame(&self, frame: &[u8], peer: &str);
}

pub(crate) type Slot = std::sync::OnceLock<Arc<dyn Observer>>;
