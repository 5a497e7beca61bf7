//! The queue adapter (PROTOCOL.md §8.4): durable messages in named queues, leased to a
//! consumer, acknowledged or retried, dead-lettered after the last attempt.
//!
//! The queue service owns topics, fan-out, subscribers and the consumer loop; an adapter only
//! stores messages and hands out leases. Names are opaque to the adapter (the service builds
//! them from topics, functions and namespaces).
//!
//! Delivery contract, for every implementation:
//! * `enqueue` returns only when the message is as durable as the adapter promises.
//! * `lease` hands a ready message to exactly one caller until the lease ends (ack, nack, or
//!   `lease_ms` elapsing, after which the message is ready again with the attempt counted).
//!   A restarted adapter treats every lease as ended: nothing in flight is lost.
//! * `ack` with a token whose lease ended returns `false` and changes nothing, so a message
//!   redelivered after a lapsed lease is not deleted by the first holder's late ack.
//! * In a FIFO lease (`fifo: true`) a message is handed out only when it is the oldest live
//!   message of its group and no message of the group is leased or waiting for a retry, so a
//!   group is processed strictly in order, retries included. Messages without a group form one
//!   group.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AdapterError, AdapterWorld};

/// A message to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The message id (a UUID the service assigns); unique within the queue.
    pub id: String,
    /// The payload.
    pub payload: Value,
    /// What the service needs to deliver it (function id, namespace, traceparent, baggage);
    /// stored and returned as is.
    pub meta: Value,
    /// The FIFO group key, if any.
    pub group: Option<String>,
    /// Attempts before the message goes to the dead-letter list (at least 1).
    pub max_attempts: u32,
    /// Milliseconds before the first delivery.
    pub delay_ms: u64,
}

/// What `lease` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    /// At most this many messages.
    pub max: u32,
    /// How long each lease lasts before the message is ready again.
    pub lease_ms: u64,
    /// Hand out messages in FIFO group order (see the module docs).
    pub fifo: bool,
}

/// One leased message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The lease token for `ack`/`nack`; a new one for every lease.
    pub token: String,
    /// The message id.
    pub message_id: String,
    /// The payload.
    pub payload: Value,
    /// The stored `meta`.
    pub meta: Value,
    /// The FIFO group key, if any.
    pub group: Option<String>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The message's attempt limit.
    pub max_attempts: u32,
}

/// The result of a `lease`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Leased {
    /// The messages now leased to the caller.
    pub deliveries: Vec<Delivery>,
    /// Milliseconds until the next delayed message (or lapsing lease) is due, if any; a
    /// consumer with nothing to do may sleep that long.
    pub next_due_ms: Option<u64>,
}

/// What a `nack` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackOutcome {
    /// The message will be ready again after the requested delay.
    Retrying,
    /// That was the last attempt: the message is now dead-lettered.
    DeadLettered,
    /// The lease had already ended; nothing changed.
    Stale,
}

/// A dead-lettered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The message id.
    pub message_id: String,
    /// The payload.
    pub payload: Value,
    /// The stored `meta`.
    pub meta: Value,
    /// The last failure's text.
    pub error: String,
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    pub failed_at_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The message's attempt limit (kept for a redrive).
    pub max_attempts: u32,
    /// The FIFO group key, if any (kept for a redrive).
    pub group: Option<String>,
}

/// Counts of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueStats {
    /// Ready or delayed, not leased.
    pub waiting: u64,
    /// Leased now.
    pub in_flight: u64,
    /// Dead-lettered.
    pub dead: u64,
}

/// A queue adapter. Calls may run concurrently; the provider serialises them as it needs.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Stores a message in `queue` (created on first use). Enqueuing an id the queue already
    /// holds (live or dead) is a no-op, so a retried publish is not duplicated.
    async fn enqueue(&self, queue: &str, msg: &NewMessage) -> Result<(), AdapterError>;
    /// Leases up to `req.max` ready messages of `queue`, oldest first.
    async fn lease(&self, queue: &str, req: LeaseRequest) -> Result<Leased, AdapterError>;
    /// Deletes the leased message. `false` when the lease had ended (nothing changed).
    async fn ack(&self, queue: &str, token: &str) -> Result<bool, AdapterError>;
    /// Ends the lease as a failure: the attempt is counted; the message is ready again after
    /// `retry_after_ms`, or dead-lettered with `error` when that was its last attempt.
    async fn nack(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
        error: &str,
    ) -> Result<NackOutcome, AdapterError>;
    /// Ends the lease without counting the attempt: the message is ready again after
    /// `retry_after_ms` (the consumer could not start it, e.g. its function is not registered
    /// yet, or the consumer is stopping). `false` when the lease had already ended. Nothing to
    /// persist: a restarted adapter voids every lease anyway.
    async fn release(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
    ) -> Result<bool, AdapterError>;
    /// Dead letters of `queue`, oldest first.
    async fn dead_letters(
        &self,
        queue: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, AdapterError>;
    /// Moves dead letters back to ready with their attempts reset: one (`Some(id)`) or all.
    /// Returns how many moved.
    async fn redrive(&self, queue: &str, message_id: Option<&str>) -> Result<u64, AdapterError>;
    /// Deletes one dead letter; `false` when there was none with that id.
    async fn discard(&self, queue: &str, message_id: &str) -> Result<bool, AdapterError>;
    /// Counts of `queue` (zeros for an unknown queue).
    async fn stats(&self, queue: &str) -> Result<QueueStats, AdapterError>;
    /// Every queue that holds a message, live or dead, sorted.
    async fn queues(&self) -> Result<Vec<String>, AdapterError>;
    /// Topic routing inside the backend (`iii:queue/topic-router`), when the adapter has it:
    /// the backend is shared by several engines and routes topics itself. `None` (the
    /// default): the queue service fans a topic out into the queues it knows.
    fn router(&self) -> Option<&dyn TopicRouter> {
        None
    }
}

/// Topic fan-out done by the backend (`iii:queue/topic-router@0.1.0`): bindings are durable
/// in the backend and shared by every engine on it.
#[async_trait]
pub trait TopicRouter: Send + Sync {
    /// From now on a message published to `topic` is also stored in `queue` (idempotent).
    async fn bind(&self, topic: &str, queue: &str) -> Result<(), AdapterError>;
    /// Stops routing `topic` into `queue`; the queue and its messages stay.
    async fn unbind(&self, topic: &str, queue: &str) -> Result<(), AdapterError>;
    /// One copy of `msg` in every queue bound to `topic`, or in `unrouted` when none is; returns
    /// once every copy is durable.
    async fn publish(
        &self,
        topic: &str,
        unrouted: &str,
        msg: &NewMessage,
    ) -> Result<(), AdapterError>;
}

/// The `queue-adapter` world of `iii:queue@0.1.0`.
pub struct QueueWorld;
impl AdapterWorld for QueueWorld {
    const WORLD: &'static str = "iii:queue/queue-adapter@0.1.0";
    type Store = dyn QueueStore;
}
