//! Unit tests of the core's intricate parts, against a real [`crate::Core`] with test
//! connections whose outbound frames the test reads.

mod invocation;
mod router;
mod support;
mod triggers;
mod validation;
