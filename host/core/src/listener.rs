//! The worker socket: one port serving `/` (workers), `/otel` (telemetry) and
//! `/ws/channels/{id}` (data channels), with a handshake deadline. Every engine has at least
//! one; the service that configures them (upstream's `iii-worker-manager` entry) binds and
//! serves them through this module.

use std::net::SocketAddr;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::channels::{Direction, SideState};
use crate::core::Core;

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

/// WebSocket limits: messages up to 64 MiB (the SDKs' own limit), frames up to 16 MiB.
pub fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(64 << 20);
    c.max_frame_size = Some(16 << 20);
    c
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
}

/// Binds the listener's port.
pub async fn bind(cfg: &WorkerSocketConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind((cfg.host.as_str(), cfg.port)).await
}

/// Accepts connections until `stop` is cancelled.
pub async fn serve(
    engine: Core,
    listener: TcpListener,
    cfg: WorkerSocketConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let engine = engine.clone();
        let deadline = cfg.handshake_timeout;
        tokio::spawn(async move { handle(engine, stream, addr, deadline).await });
    }
}

async fn handle(engine: Core, stream: TcpStream, addr: SocketAddr, deadline: std::time::Duration) {
    let _ = stream.set_nodelay(true);
    let mut route = None;
    #[allow(
        clippy::result_large_err,
        reason = "tungstenite's callback signature fixes the error type"
    )]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        if path == "/" || path.is_empty() {
            route = Some(Route::Worker);
            return Ok(resp);
        }
        if path == "/otel" || path == "/otel/" {
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
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())),
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
    match route {
        Some(Route::Worker) => crate::session::run_worker(engine, ws, addr.ip().to_string()).await,
        Some(Route::Otel) => {
            // Telemetry is accepted so SDK exporters do not error; it is not stored yet.
            let (_sink, mut stream) = ws.split();
            while let Some(Ok(_)) = stream.next().await {}
        }
        Some(Route::Channel { id, dir }) => crate::channels::run_socket(engine, ws, id, dir).await,
        Some(Route::ChannelTaken) => {
            let mut ws = ws;
            let _ = ws.close(None).await;
        }
        None => {}
    }
}

fn error_response(status: StatusCode, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = status;
    r
}
