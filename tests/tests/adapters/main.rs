//! Adapter backends against real servers (issue 15): the same conformance bodies over every
//! backend of a world, and each backend's own faults and multi-engine scenarios.

mod conformance;
mod multi_rabbitmq;
mod rabbitmq;
