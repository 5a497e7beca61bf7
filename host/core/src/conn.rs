//! A worker connection as the engine sees it: identity, outbound queue, namespace state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use crate::access::SessionAccess;
use crate::limits::ConnLimits;
use crate::validation::PayloadValidator;

/// What the writer task sends to the socket.
pub enum Out {
    /// A text frame.
    Text(String),
    /// Close the socket after what is queued.
    Close,
    /// Close the socket at once with this status code and reason (a protocol error).
    CloseWith(u16, String),
}

/// What a worker declared through `engine::workers::register`.
#[derive(Debug, Clone, Default)]
pub struct WorkerMeta {
    /// `runtime` from `engine::workers::register` (e.g. `node`).
    pub runtime: Option<String>,
    /// The SDK version.
    pub version: Option<String>,
    /// The worker name (unique per namespace among live connections).
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Operating system.
    pub os: Option<String>,
    /// Process id; workers without one are hidden from listings, as upstream.
    pub pid: Option<u64>,
    /// Isolation details the worker reports.
    pub isolation: Option<Value>,
    /// Telemetry details the worker reports.
    pub telemetry: Option<Value>,
}

#[derive(Default)]
/// Mutable state of a connection.
pub struct ConnState {
    /// `None` until the worker declares it or the grace period ends (PROTOCOL.md §3.8).
    pub namespace: Option<String>,
    /// Registration frames received before the namespace was known, in arrival order.
    pub buffer: Vec<String>,
    /// Bytes held in `buffer`.
    pub buffer_bytes: usize,
    /// Live registrations of this connection by (kind, id): the frame size each came in.
    pub registrations: std::collections::HashMap<(u8, String), usize>,
    /// Sum of the sizes in `registrations`.
    pub registration_bytes: usize,
    /// Malformed frames seen in the current log window, and when the window started.
    pub malformed: (u32, Option<Instant>),
    /// What the worker declared about itself.
    pub meta: WorkerMeta,
    /// The namespace it last declared, if its policy refused it (and it has declared none
    /// since): its buffered registrations are then dropped at the grace period's end.
    pub namespace_refused: Option<String>,
}

/// One worker connection.
pub struct Conn {
    /// The worker id.
    pub id: u128,
    /// The worker id as the wire writes it.
    pub id_str: String,
    /// The reattach token given to the worker.
    pub token: u128,
    /// The peer's IP address.
    pub ip: String,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: u64,
    tx: mpsc::UnboundedSender<Out>,
    /// Bytes queued and not yet handed to the socket (shared with the writer task).
    queued: Arc<AtomicUsize>,
    /// The listener's limits.
    pub limits: Arc<ConnLimits>,
    /// Calls this connection made that are still in flight.
    pub(crate) calls_made: AtomicUsize,
    /// Calls this connection serves that are still in flight.
    pub(crate) calls_served: AtomicUsize,
    slow: AtomicBool,
    /// Namespace, buffered registrations and metadata.
    pub state: Mutex<ConnState>,
    closing: AtomicBool,
    cleanup_started: AtomicBool,
    cleaned: AtomicBool,
    pub(crate) close_now: Notify,
    pub(crate) cleaned_notify: Notify,
    /// The listener policy's grants for this session; unset on a trusted listener.
    access: OnceLock<Arc<dyn SessionAccess>>,
    /// The listener's payload checks; unset when it does not validate (`validate: off`).
    validator: OnceLock<Arc<dyn PayloadValidator>>,
}

#[derive(Debug, thiserror::Error)]
/// Why a frame could not be queued.
pub enum SendError {
    #[error("connection is closed")]
    /// The connection is closed.
    Closed,
    #[error("connection stopped reading: more than {limit} bytes queued for it; disconnected as a slow consumer")]
    /// The outbound queue exceeded its byte bound; the connection was closed.
    SlowConsumer {
        /// The bound, in bytes.
        limit: usize,
    },
    #[error("frame of {len} bytes exceeds the {limit}-byte message limit of the receiving worker")]
    /// The frame is larger than any worker accepts; nothing was queued, the connection stays.
    TooLarge {
        /// The frame's size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl Conn {
    /// A connection with the default limits that queues outbound frames on `tx`.
    pub fn new(id: u128, token: u128, ip: String, tx: mpsc::UnboundedSender<Out>) -> Self {
        Self::with_limits(id, token, ip, tx, Arc::default(), Arc::default())
    }

    /// A connection under `limits`; `queued` is the byte count the writer task decrements.
    pub fn with_limits(
        id: u128,
        token: u128,
        ip: String,
        tx: mpsc::UnboundedSender<Out>,
        queued: Arc<AtomicUsize>,
        limits: Arc<ConnLimits>,
    ) -> Self {
        Conn {
            id,
            id_str: iii_protocol::format_uuid(id),
            token,
            ip,
            connected_at_ms: now_ms(),
            tx,
            queued,
            limits,
            calls_made: AtomicUsize::new(0),
            calls_served: AtomicUsize::new(0),
            slow: AtomicBool::new(false),
            state: Mutex::new(ConnState::default()),
            closing: AtomicBool::new(false),
            cleanup_started: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
            close_now: Notify::new(),
            cleaned_notify: Notify::new(),
            access: OnceLock::new(),
            validator: OnceLock::new(),
        }
    }

    /// Queues a text frame without ever waiting (NATS's slow-consumer model): a frame larger
    /// than the message limit is refused and the connection stays; a frame that would take the
    /// queue past its byte bound disconnects the connection as a slow consumer, so no sender —
    /// least of all another connection's read loop — waits on this one.
    pub async fn send(&self, frame: String) -> Result<(), SendError> {
        self.try_send(frame)
    }

    /// [`Conn::send`], usable outside async code.
    pub fn try_send(&self, frame: String) -> Result<(), SendError> {
        let len = frame.len();
        if len > self.limits.max_message_bytes {
            return Err(SendError::TooLarge {
                len,
                limit: self.limits.max_message_bytes,
            });
        }
        if self.is_closing() {
            return Err(SendError::Closed);
        }
        let before = self.queued.fetch_add(len, Ordering::SeqCst);
        // An empty queue always takes one frame, so the bound never refuses a legal frame.
        if before > 0 && before + len > self.limits.max_outbound_bytes {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            let limit = self.limits.max_outbound_bytes;
            if !self.slow.swap(true, Ordering::SeqCst) {
                tracing::warn!(worker_id = %self.id_str, queued_bytes = before, limit_bytes = limit, "slow consumer: worker stopped reading its socket; disconnecting it (its calls end with invocation_stopped)");
            }
            self.close();
            return Err(SendError::SlowConsumer { limit });
        }
        if self.tx.send(Out::Text(frame)).is_err() {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// The connection was disconnected for exceeding its outbound byte bound.
    pub fn is_slow_consumer(&self) -> bool {
        self.slow.load(Ordering::SeqCst)
    }

    /// Bytes queued for this connection right now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Closes the socket at once with a WebSocket status code (1007, 1009 …).
    pub(crate) fn close_with(&self, code: u16, reason: String) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Out::CloseWith(code, reason));
        self.close_now.notify_one();
    }

    /// Asks the session to end: flushes queued frames, sends Close, runs cleanup.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Out::Close);
        self.close_now.notify_one();
    }

    /// The connection is closing or closed.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// True for the first caller only: cleanup runs exactly once.
    pub(crate) fn begin_cleanup(&self) -> bool {
        !self.cleanup_started.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn finish_cleanup(&self) {
        self.cleaned.store(true, Ordering::SeqCst);
        self.cleaned_notify.notify_waiters();
    }

    /// Waits until cleanup has finished, or `limit` passes.
    pub async fn wait_cleaned(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.cleaned_notify.notified();
            if self.cleaned.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.cleaned.load(Ordering::SeqCst);
            }
        }
    }

    /// The namespace, once fixed.
    pub fn namespace(&self) -> Option<String> {
        self.state.lock().namespace.clone()
    }

    /// The declared worker name.
    pub fn name(&self) -> Option<String> {
        self.state.lock().meta.name.clone()
    }

    /// The session's access policy (PROTOCOL.md §9); `None` on a trusted listener.
    pub fn access(&self) -> Option<&Arc<dyn SessionAccess>> {
        self.access.get()
    }

    /// Sets the session's access policy, once, before the session serves anything.
    pub(crate) fn set_access(&self, access: Arc<dyn SessionAccess>) {
        let _ = self.access.set(access);
    }

    /// The listener's payload checks (PROTOCOL.md §3.9); `None` when it does not validate.
    pub fn validator(&self) -> Option<&Arc<dyn PayloadValidator>> {
        self.validator.get()
    }

    /// Sets the session's payload checks, once, before the session serves anything.
    pub(crate) fn set_validator(&self, validator: Arc<dyn PayloadValidator>) {
        let _ = self.validator.set(validator);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(
        max_outbound_bytes: usize,
        max_message_bytes: usize,
    ) -> (Conn, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let limits = ConnLimits {
            max_outbound_bytes,
            max_message_bytes,
            ..ConnLimits::default()
        };
        let c = Conn::with_limits(1, 2, "x".into(), tx, Arc::default(), Arc::new(limits));
        (c, rx)
    }

    #[test]
    fn queue_is_bounded_in_bytes_and_a_slow_consumer_is_closed() {
        let (c, _rx) = conn(100, 1000);
        // An empty queue takes one frame even past the bound.
        c.try_send("a".repeat(150)).unwrap();
        assert_eq!(c.queued_bytes(), 150);
        assert!(matches!(
            c.try_send("b".into()),
            Err(SendError::SlowConsumer { limit: 100 })
        ));
        assert!(c.is_closing());
        assert!(matches!(c.try_send("c".into()), Err(SendError::Closed)));
    }

    #[test]
    fn frames_over_the_message_limit_are_refused_and_the_connection_stays() {
        let (c, mut rx) = conn(10_000, 10);
        assert!(matches!(
            c.try_send("x".repeat(11)),
            Err(SendError::TooLarge { len: 11, limit: 10 })
        ));
        assert!(!c.is_closing());
        c.try_send("ok".into()).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Out::Text(t)) if t == "ok"));
    }
}
