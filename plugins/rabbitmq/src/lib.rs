//! The iii RabbitMQ queue adapter as a WebAssembly component (`queue-router-adapter` world):
//! AMQP 0-9-1 over wasi:sockets with the `amq-protocol` codec. Topology (spec section 8.4):
//!
//! * queue `Q` of the service → durable queue `iii.q.Q` (with `x-max-priority` when
//!   `max_priority` is set);
//! * a retry after `d` ms → durable queue `iii.retry.<d>.Q` with `x-message-ttl: d` dead-lettered
//!   back into `iii.q.Q` (one per distinct delay, expiring a minute after its last use);
//! * dead letters → durable queue `iii.dlq.Q`;
//! * topic `T` → durable fanout exchange `iii.topic.T`, each subscriber queue bound to it;
//! * every queue ever used is recorded in the durable queue `iii.registry` for `queues`.
//!
//! A lease is an unacknowledged `basic.get` delivery on this adapter's channel, at most
//! `prefetch_count` per queue (1 with FIFO). The lease lasts until ack/nack or until the
//! connection ends (the broker then redelivers): `lease-ms` is not enforced by the broker.
//! Tokens carry the connection generation, so an ack/nack after a reconnect answers `stale`.

pub mod amqp;

#[cfg(target_arch = "wasm32")]
mod component;
