//! A worker-protocol client of an iii engine (PROTOCOL.md §1, §2): what the bridge adapters
//! and the `iii-bridge` worker use to talk to another engine.
//!
//! One [`Client`] owns one logical connection. A background task connects (the engine sends
//! `workerregistered` first), replays every registered function and trigger, reads frames and
//! reconnects with exponential backoff when the socket drops. While it is down, calls fail at
//! once with [`ClientError::Disconnected`] instead of waiting: a caller gets a clear error and
//! the next call after the reconnect succeeds. Dropping the last handle stops the task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use iii_protocol::ErrorBody;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Why a call through the client failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// No live connection to the remote engine right now (it is reconnecting).
    #[error(
        "the remote engine at {url} is not connected ({reason}); the bridge reconnects by itself"
    )]
    Disconnected {
        /// The remote engine's URL.
        url: String,
        /// The last connection failure.
        reason: String,
    },
    /// The remote engine did not answer within the timeout.
    #[error("the remote engine at {url} did not answer `{function_id}` within {timeout_ms} ms")]
    Timeout {
        /// The remote engine's URL.
        url: String,
        /// The function called.
        function_id: String,
        /// The timeout that passed.
        timeout_ms: u64,
    },
    /// The connection dropped while the call was outstanding.
    #[error(
        "the connection to the remote engine at {url} dropped while `{function_id}` was running"
    )]
    Dropped {
        /// The remote engine's URL.
        url: String,
        /// The function called.
        function_id: String,
    },
    /// The remote function answered with an error.
    #[error("{0}")]
    Remote(ErrorBody),
}

/// What a served function returns.
pub type HandlerResult = Result<Value, ErrorBody>;
/// A function this client serves for the remote engine: gets the invocation's `data`.
pub type Handler =
    Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

/// Connection options.
#[derive(Debug, Clone)]
pub struct Options {
    /// First reconnect delay; doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Name declared to the remote engine with `engine::workers::register`, the handshake
    /// call that ends the engine's namespace buffering of this connection's registrations.
    pub worker_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            worker_name: "iii-bridge".into(),
        }
    }
}

type Pending = HashMap<String, (String, oneshot::Sender<Result<Option<Value>, ClientError>>)>;

struct Inner {
    url: String,
    /// The writer of the live connection, `None` while disconnected.
    tx: Mutex<Option<mpsc::UnboundedSender<Message>>>,
    /// The reason of the last failure, for [`ClientError::Disconnected`].
    last_error: Mutex<String>,
    pending: Mutex<Pending>,
    /// Served functions: id → (`registerfunction` frame, handler), replayed on every connect.
    functions: Mutex<HashMap<String, (Value, Handler)>>,
    /// Trigger registrations (`registertrigger` frames by id), replayed on every connect.
    triggers: Mutex<HashMap<String, Value>>,
    connected: watch::Sender<bool>,
    cancel: CancellationToken,
    opts: Options,
}

/// A handle on one reconnecting connection to a remote engine; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _guard: Arc<StopOnDrop>,
}

struct StopOnDrop(CancellationToken);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Client {
    /// Starts connecting to `url` (`ws://host:port`) in the background; returns at once.
    /// Must be called inside a tokio runtime.
    pub fn start(url: &str, opts: Options) -> Client {
        let cancel = CancellationToken::new();
        let (connected, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            url: url.to_string(),
            tx: Mutex::new(None),
            last_error: Mutex::new("not connected yet".into()),
            pending: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            triggers: Mutex::new(HashMap::new()),
            connected,
            cancel: cancel.clone(),
            opts,
        });
        // The task holds the inner state but not the guard, so dropping every handle stops it.
        tokio::spawn(run(inner.clone()));
        Client {
            inner,
            _guard: Arc::new(StopOnDrop(cancel)),
        }
    }

    /// The remote engine's URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until connected, at most `limit`; true when connected.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn disconnected(&self) -> ClientError {
        ClientError::Disconnected {
            url: self.inner.url.clone(),
            reason: self.inner.last_error.lock().clone(),
        }
    }

    fn send(&self, frame: &Value) -> Result<(), ClientError> {
        let tx = self.inner.tx.lock();
        match tx.as_ref() {
            Some(tx) if tx.send(Message::text(frame.to_string())).is_ok() => Ok(()),
            _ => Err(self.disconnected()),
        }
    }

    /// Calls `function_id` on the remote engine and waits at most `timeout` for its result
    /// (`None` for a null result).
    pub async fn invoke(
        &self,
        function_id: &str,
        data: Value,
        timeout: Duration,
    ) -> Result<Option<Value>, ClientError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .insert(id.clone(), (function_id.to_string(), tx));
        let frame = json!({"type": "invokefunction", "invocation_id": id, "function_id": function_id, "data": data});
        if let Err(e) = self.send(&frame) {
            self.inner.pending.lock().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Dropped {
                url: self.inner.url.clone(),
                function_id: function_id.to_string(),
            }),
            Err(_) => {
                self.inner.pending.lock().remove(&id);
                Err(ClientError::Timeout {
                    url: self.inner.url.clone(),
                    function_id: function_id.to_string(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    /// Calls `function_id` without waiting for a result (no `invocation_id`, PROTOCOL.md
    /// §3.4). Fails only when not connected.
    pub fn invoke_void(&self, function_id: &str, data: Value) -> Result<(), ClientError> {
        self.send(&json!({"type": "invokefunction", "function_id": function_id, "data": data}))
    }

    /// Serves `id` for the remote engine with `handler`; `extra` fields (description,
    /// metadata, formats) go into the `registerfunction` frame. Kept across reconnects.
    pub fn register_function(&self, id: &str, extra: Value, handler: Handler) {
        let mut frame = json!({"type": "registerfunction", "id": id});
        if let (Some(f), Value::Object(m)) = (frame.as_object_mut(), extra) {
            f.extend(m);
        }
        self.inner
            .functions
            .lock()
            .insert(id.to_string(), (frame.clone(), handler));
        // While disconnected the frame goes out with the replay after the next connect.
        let _ = self.send(&frame);
    }

    /// Binds `function_id` (served by this client) to a trigger on the remote engine; kept
    /// across reconnects. Returns the trigger's id.
    pub fn register_trigger(&self, trigger_type: &str, function_id: &str, config: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let frame = json!({"type": "registertrigger", "id": id, "trigger_type": trigger_type, "function_id": function_id, "config": config});
        self.inner.triggers.lock().insert(id.clone(), frame.clone());
        let _ = self.send(&frame);
        id
    }
}

/// The connection loop: connect, replay, read; on a drop fail what is outstanding and retry.
async fn run(inner: Arc<Inner>) {
    let mut backoff = inner.opts.initial_backoff;
    loop {
        let attempt = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = tokio_tungstenite::connect_async(inner.url.as_str()) => r,
        };
        match attempt {
            Ok((ws, _)) => {
                backoff = inner.opts.initial_backoff;
                let reason = session(&inner, ws).await;
                *inner.last_error.lock() = reason;
            }
            Err(e) => {
                let reason = match e {
                    tokio_tungstenite::tungstenite::Error::Io(io) => io.to_string(),
                    other => other.to_string(),
                };
                let mut last = inner.last_error.lock();
                if *last != reason {
                    tracing::warn!(url = %inner.url, "cannot reach the remote engine: {reason}; retrying");
                }
                *last = reason;
            }
        }
        if inner.cancel.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(inner.opts.max_backoff);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connected session; returns why it ended.
async fn session(inner: &Arc<Inner>, ws: Socket) -> String {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    // Registrations first, in a fixed order: functions before the triggers that target them.
    let mut replay: Vec<Value> = inner
        .functions
        .lock()
        .values()
        .map(|(f, _)| f.clone())
        .collect();
    replay.extend(inner.triggers.lock().values().cloned());
    replay.push(json!({"type": "invokefunction", "function_id": iii_protocol::ids::functions::WORKERS_REGISTER, "data": {"name": inner.opts.worker_name}}));
    for f in replay {
        let _ = tx.send(Message::text(f.to_string()));
    }
    *inner.tx.lock() = Some(tx.clone());
    inner.connected.send_replace(true);
    tracing::info!(url = %inner.url, "connected to the remote engine");

    let writer = async {
        while let Some(m) = rx.recv().await {
            if let Err(e) = sink.send(m).await {
                return e.to_string();
            }
        }
        "writer closed".to_string()
    };
    let reader = async {
        while let Some(m) = stream.next().await {
            let text = match m {
                Ok(Message::Text(t)) => t.to_string(),
                Ok(Message::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(Message::Close(_)) => return "the remote engine closed the connection".into(),
                Ok(_) => continue,
                Err(e) => return e.to_string(),
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            on_frame(inner, &tx, v);
        }
        "the remote engine closed the connection".to_string()
    };
    let reason = tokio::select! {
        r = writer => r,
        r = reader => r,
        _ = inner.cancel.cancelled() => "stopped".to_string(),
    };
    *inner.tx.lock() = None;
    inner.connected.send_replace(false);
    tracing::warn!(url = %inner.url, "lost the remote engine: {reason}; reconnecting");
    // Outstanding calls cannot complete on a new connection: fail them now.
    let failed: Vec<_> = inner.pending.lock().drain().collect();
    for (_, (function_id, done)) in failed {
        let _ = done.send(Err(ClientError::Dropped {
            url: inner.url.clone(),
            function_id,
        }));
    }
    reason
}

fn on_frame(inner: &Arc<Inner>, tx: &mpsc::UnboundedSender<Message>, v: Value) {
    match v["type"].as_str() {
        Some("invocationresult") => {
            let Some(id) = v["invocation_id"].as_str() else {
                return;
            };
            let Some((_, done)) = inner.pending.lock().remove(id) else {
                return;
            };
            let r = match v.get("error").filter(|e| !e.is_null()) {
                Some(e) => Err(ClientError::Remote(
                    serde_json::from_value(e.clone()).unwrap_or_else(|_| {
                        ErrorBody::new(iii_protocol::codes::BRIDGE_ERROR, e.to_string())
                    }),
                )),
                None => Ok(v.get("result").cloned().filter(|r| !r.is_null())),
            };
            let _ = done.send(r);
        }
        Some("invokefunction") => {
            let function_id = v["function_id"].as_str().unwrap_or_default().to_string();
            let invocation_id = v.get("invocation_id").cloned().filter(|i| !i.is_null());
            let handler = inner
                .functions
                .lock()
                .get(&function_id)
                .map(|(_, h)| h.clone());
            let data = v.get("data").cloned().unwrap_or(Value::Null);
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = match handler {
                    Some(h) => h(data).await,
                    None => Err(ErrorBody::new(
                        iii_protocol::codes::FUNCTION_NOT_FOUND,
                        format!("function `{function_id}` is not served by this bridge"),
                    )),
                };
                let Some(id) = invocation_id else { return };
                let mut frame = json!({"type": "invocationresult", "invocation_id": id, "function_id": function_id});
                match r {
                    Ok(result) => frame["result"] = result,
                    Err(e) => frame["error"] = serde_json::to_value(e).unwrap_or(Value::Null),
                }
                let _ = tx.send(Message::text(frame.to_string()));
            });
        }
        Some("ping") => {
            let _ = tx.send(Message::text(json!({"type": "pong"}).to_string()));
        }
        _ => {}
    }
}
