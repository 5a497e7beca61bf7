//! A worker connection as the engine sees it: identity, outbound queue, namespace state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

/// Outbound queue depth per connection. A reader that stops reading for longer than
/// [`SEND_STALL_LIMIT`] while its queue is full is disconnected instead of stalling the engine.
pub const OUTBOUND_QUEUE: usize = 1024;
/// How long a send may wait on a full outbound queue before the connection counts as stalled.
pub const SEND_STALL_LIMIT: Duration = Duration::from_secs(30);

/// What the writer task sends to the socket.
pub enum Out {
    /// A text frame.
    Text(String),
    /// Close the socket after what is queued.
    Close,
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
    /// What the worker declared about itself.
    pub meta: WorkerMeta,
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
    tx: mpsc::Sender<Out>,
    /// Namespace, buffered registrations and metadata.
    pub state: Mutex<ConnState>,
    closing: AtomicBool,
    cleanup_started: AtomicBool,
    cleaned: AtomicBool,
    pub(crate) close_now: Notify,
    pub(crate) cleaned_notify: Notify,
}

#[derive(Debug, thiserror::Error)]
/// Why a frame could not be queued.
pub enum SendError {
    #[error("connection is closed")]
    /// The connection is closed.
    Closed,
    #[error("connection stopped reading (outbound queue full for {0:?})")]
    /// The outbound queue stayed full for this long; the connection was closed.
    Stalled(Duration),
}

impl Conn {
    /// A connection that queues outbound frames on `tx`.
    pub fn new(id: u128, token: u128, ip: String, tx: mpsc::Sender<Out>) -> Self {
        Conn {
            id,
            id_str: iii_protocol::format_uuid(id),
            token,
            ip,
            connected_at_ms: now_ms(),
            tx,
            state: Mutex::new(ConnState::default()),
            closing: AtomicBool::new(false),
            cleanup_started: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
            close_now: Notify::new(),
            cleaned_notify: Notify::new(),
        }
    }

    /// Queues a text frame. Waits while the queue is full, up to [`SEND_STALL_LIMIT`].
    pub async fn send(&self, frame: String) -> Result<(), SendError> {
        match self.tx.try_send(Out::Text(frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
            Err(mpsc::error::TrySendError::Full(Out::Text(frame))) => {
                match tokio::time::timeout(SEND_STALL_LIMIT, self.tx.send(Out::Text(frame))).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(SendError::Closed),
                    Err(_) => {
                        tracing::warn!(worker_id = %self.id_str, "worker stopped reading; disconnecting it");
                        self.close();
                        Err(SendError::Stalled(SEND_STALL_LIMIT))
                    }
                }
            }
            Err(mpsc::error::TrySendError::Full(Out::Close)) => Err(SendError::Closed),
        }
    }

    /// Asks the session to end: flushes queued frames, sends Close, runs cleanup.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.tx.try_send(Out::Close);
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
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
