//! The worker socket: one port serving `/` (workers), `/otel` (telemetry) and
//! `/ws/channels/{id}` (data channels), with a handshake deadline. Every engine has at least
//! one; the service that configures them (upstream's `iii-worker-manager` entry) binds and
//! serves them through this module.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use futures_util::SinkExt;
use iii_protocol::{codes, ErrorBody};
use tokio_tungstenite::tungstenite::Message;

use crate::access::{ConnectRequest, ListenerAccess, SessionAccess};
use crate::channels::{Direction, SideState};
use crate::core::Core;
use crate::limits::ConnLimits;
use crate::validation::PayloadValidator;

enum Route {
    Worker,
    Otel,
    Channel {
        id: String,
        dir: Direction,
    },
    /// A channel side that was already taken: upgrade, then close at once (PROTOCOL.md §6).
    ChannelTaken,
}

/// Initial read buffer of a worker socket (see [`ws_config`]).
const READ_BUFFER_BYTES: usize = 16 << 10;

/// WebSocket limits from the listener's [`ConnLimits`]: by default messages up to 64 MiB (the
/// SDKs' own limit), frames up to 16 MiB. The message limit also bounds an unfinished
/// fragmented message: tungstenite refuses the fragment that would take it past the limit.
pub fn ws_config(limits: &ConnLimits) -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    // tungstenite zero-fills the free part of its read buffer before every read; at its 128 KiB
    // default that memset was the engine's largest user-space cost per tiny frame. Larger
    // frames still arrive in one read: the buffer grows to the frame's announced length.
    c.read_buffer_size = READ_BUFFER_BYTES;
    c.max_message_size = Some(limits.max_message_bytes);
    c.max_frame_size = Some(limits.max_frame_bytes);
    c
}

/// Logs a repeated warning at most once a second, with how many were not logged.
struct LogThrottle {
    last: Option<Instant>,
    skipped: u64,
}

impl LogThrottle {
    /// `Some(skipped since the last line)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Holds one of the listener's connection slots until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a client over the connection limit reads before the socket closes.
fn refusal(limit: usize) -> String {
    let body = format!("connection limit reached: this listener serves at most {limit} connections at once (config key max_connections)\n");
    format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// One worker-socket listener.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSocketConfig {
    /// Its label in logs and errors (`iii-worker-manager`, `iii-worker-manager#1`).
    pub name: String,
    /// The address to bind.
    pub host: String,
    /// The port to bind (0 picks a free one; the log line says which).
    pub port: u16,
    /// How long a client may take to finish the WebSocket upgrade.
    pub handshake_timeout: std::time::Duration,
    /// What each connection may make the engine hold.
    pub limits: ConnLimits,
}

/// Binds the listener's port.
pub async fn bind(cfg: &WorkerSocketConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind((cfg.host.as_str(), cfg.port)).await
}

/// What a listener applies to its sessions besides its socket settings.
#[derive(Clone, Default)]
pub struct SessionPolicy {
    /// Admits every worker and telemetry connection first (PROTOCOL.md §9.2); `None`: the
    /// listener is trusted.
    pub access: Option<Arc<dyn ListenerAccess>>,
    /// Checks the sessions' payloads (PROTOCOL.md §3.9); `None`: `validate: off`.
    pub validator: Option<Arc<dyn PayloadValidator>>,
}

/// Accepts connections until `stop` is cancelled, applying `policy` to every session.
pub async fn serve(
    engine: Core,
    listener: TcpListener,
    cfg: WorkerSocketConfig,
    policy: SessionPolicy,
    stop: tokio_util::sync::CancellationToken,
) {
    let limits = Arc::new(cfg.limits.clone());
    engine
        .channels()
        .set_unclaimed_timeout(limits.channel_unclaimed_timeout);
    let open = Arc::new(AtomicUsize::new(0));
    let mut accept_log = LogThrottle {
        last: None,
        skipped: 0,
    };
    let mut refuse_log = LogThrottle {
        last: None,
        skipped: 0,
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (mut stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if let Some(skipped) = accept_log.allow() {
                    tracing::warn!(listener = %cfg.name, error = %e, repeated = skipped, "accept failed (out of file descriptors? lower max_connections or raise the fd limit)");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            open.fetch_sub(1, Ordering::SeqCst);
            if let Some(skipped) = refuse_log.allow() {
                tracing::warn!(listener = %cfg.name, peer = %addr, limit = limits.max_connections, refused_unlogged = skipped, "connection refused: connection limit reached");
            }
            let limit = limits.max_connections;
            tokio::spawn(async move {
                // Answer without reading the request: the client sees a 503 with the reason.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(refusal(limit).as_bytes()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        }
        let slot = Slot(open.clone());
        let engine = engine.clone();
        let deadline = cfg.handshake_timeout;
        let limits = limits.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            handle(engine, stream, addr, deadline, limits, policy).await;
            drop(slot);
        });
    }
}

async fn handle(
    engine: Core,
    stream: TcpStream,
    addr: SocketAddr,
    deadline: Duration,
    limits: Arc<ConnLimits>,
    policy: SessionPolicy,
) {
    let SessionPolicy { access, validator } = policy;
    let _ = stream.set_nodelay(true);
    let mut route = None;
    let mut presented = ConnectRequest::default();
    let gated = access.is_some();
    #[allow(
        clippy::result_large_err,
        reason = "tungstenite's callback signature fixes the error type"
    )]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        let is_worker = path == "/" || path.is_empty();
        let is_otel = path == "/otel" || path == "/otel/";
        if gated && (is_worker || is_otel) {
            presented = connect_request(req, query);
        }
        if is_worker {
            route = Some(Route::Worker);
            return Ok(resp);
        }
        if is_otel {
            route = Some(Route::Otel);
            return Ok(resp);
        }
        if let Some(id) = path.strip_prefix("/ws/channels/") {
            let q = crate::url::parse_query(query);
            let key = q.get("key").cloned().unwrap_or_default();
            let dir = match q.get("dir").map(String::as_str) {
                Some("read") => Some(Direction::Read),
                Some("write") => Some(Direction::Write),
                _ => None,
            };
            if let Some(dir) = dir {
                match engine.channels().check(id, &key, dir) {
                    SideState::Available => {
                        route = Some(Route::Channel {
                            id: id.to_string(),
                            dir,
                        });
                        return Ok(resp);
                    }
                    SideState::Taken => {
                        route = Some(Route::ChannelTaken);
                        return Ok(resp);
                    }
                    SideState::NotFound => {}
                }
            }
            return Err(error_response(StatusCode::NOT_FOUND, "Channel not found"));
        }
        Err(error_response(StatusCode::NOT_FOUND, "Not found"))
    };
    let accepted = tokio::time::timeout(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(&limits))),
    )
    .await;
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "WS upgrade not completed within handshake deadline");
            return;
        }
    };
    let session = match (&access, &route) {
        (Some(gate), Some(Route::Worker | Route::Otel)) => {
            presented.ip_address = addr.ip().to_string();
            match admit(&engine, gate.as_ref(), presented, deadline).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(peer = %addr, code = %e.code, reason = %e.message, "connection refused by the listener's auth");
                    let mut ws = ws;
                    let frame = serde_json::json!({"type": "error", "error": e}).to_string();
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        let _ = ws.send(Message::text(frame)).await;
                        let _ = ws.close(None).await;
                    })
                    .await;
                    return;
                }
            }
        }
        _ => None,
    };
    match route {
        Some(Route::Worker) => {
            crate::session::run_worker(
                engine,
                ws,
                addr.ip().to_string(),
                limits,
                session,
                validator,
            )
            .await
        }
        Some(Route::Otel) => {
            // Telemetry goes to the observability tap when one is installed; otherwise it is
            // accepted and dropped, so SDK exporters do not keep reconnecting.
            let (_sink, mut stream) = ws.split();
            let peer = addr.to_string();
            while let Some(Ok(m)) = stream.next().await {
                let Some(obs) = engine.observer() else {
                    continue;
                };
                match m {
                    Message::Binary(b) => obs.telemetry_frame(&b, &peer),
                    Message::Text(t) => obs.telemetry_frame(t.as_bytes(), &peer),
                    _ => {}
                }
            }
        }
        Some(Route::Channel { id, dir }) => {
            crate::channels::run_socket(engine, ws, id, dir, limits.max_channel_buffer_bytes).await
        }
        Some(Route::ChannelTaken) => {
            let mut ws = ws;
            let _ = ws.close(None).await;
        }
        None => {}
    }
}

/// What the client presented at the upgrade, as the auth function sees it: lowercase header
/// names with the last value of each, query values as sent (not URL-decoded).
fn connect_request(req: &Request, query: &str) -> ConnectRequest {
    let mut r = ConnectRequest::default();
    for (k, v) in req.headers() {
        r.headers.insert(
            k.as_str().to_ascii_lowercase(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        r.query_params
            .entry(k.to_string())
            .or_default()
            .push(v.to_string());
    }
    r
}

/// Runs the listener's gate under the handshake deadline; a gate that does not decide in time
/// refuses (fail closed).
async fn admit(
    engine: &Core,
    gate: &dyn ListenerAccess,
    request: ConnectRequest,
    deadline: Duration,
) -> Result<Arc<dyn SessionAccess>, ErrorBody> {
    match tokio::time::timeout(deadline, gate.admit(engine, request)).await {
        Ok(r) => r,
        Err(_) => Err(ErrorBody::new(
            codes::AUTH_ERROR,
            format!(
                "authentication did not finish within {} ms",
                deadline.as_millis()
            ),
        )),
    }
}

fn error_response(status: StatusCode, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = status;
    r
}
