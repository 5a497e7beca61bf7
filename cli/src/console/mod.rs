//! `iii console`: a local web UI for a running engine. It is an ordinary worker named
//! `iii-console` on the engine's worker socket (so the listener's RBAC applies to it), and an
//! HTTP server for the browser: the embedded page and one JSON endpoint that forwards a call to
//! the engine's public functions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::trigger::{CallError, Client, SharedClient};

#[derive(Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Port to run the console server on
    #[arg(short = 'p', long, default_value_t = 3113)]
    pub port: u16,
    /// Host to bind the console server to
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Host where the iii engine is running
    #[arg(long, default_value = "127.0.0.1")]
    pub engine_host: String,
    /// Port for the iii engine REST API (links to `http` triggers)
    #[arg(long, default_value_t = 3111)]
    pub engine_port: u16,
    /// Port for the iii engine stream WebSocket
    #[arg(long, default_value_t = 3112)]
    pub ws_port: u16,
    /// Engine WebSocket port the console connects to as the worker `iii-console`
    #[arg(long, default_value_t = 49134)]
    pub bridge_port: u16,
    /// Disable OpenTelemetry export (the console exports none yet; accepted for compatibility)
    #[arg(long, env = "OTEL_DISABLED")]
    pub no_otel: bool,
    /// OpenTelemetry service name; sent as the console worker's telemetry name
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "iii-console")]
    pub otel_service_name: String,
    /// Enable the experimental flow page (triggers → functions → workers)
    #[arg(long, env = "III_ENABLE_FLOW")]
    pub enable_flow: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot bind the console to {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid --host `{0}`: expected an IP address or `localhost`")]
    Host(String),
    #[error("the engine refused the worker name `iii-console` (is another console connected?)")]
    NameRefused,
}

/// The page and its two assets, compiled into the binary (no CDN; works offline).
const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// The largest request body the API reads (a function payload typed into a form).
const MAX_BODY: usize = 4 << 20;
/// The default and the ceiling for one forwarded call.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(300);

struct Console {
    args: ConsoleArgs,
    engine_url: String,
    /// The one worker connection, opened on first use and reopened after the engine went away.
    client: tokio::sync::Mutex<Option<Arc<SharedClient>>>,
}

impl Console {
    async fn client(&self) -> Result<Arc<SharedClient>, CallError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let connect = async {
            let c = Client::connect(&self.engine_url).await?.into_shared();
            // Without `pid` the engine hides a worker from engine::workers::list.
            let meta = json!({
                "name": "iii-console",
                "runtime": "rust",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "iii web console",
                "os": std::env::consts::OS,
                "pid": std::process::id(),
                "telemetry": {"service_name": self.args.otel_service_name, "enabled": !self.args.no_otel},
            });
            let r = c
                .call(
                    "engine::workers::register",
                    &meta,
                    None,
                    Duration::from_secs(10),
                )
                .await?;
            if r.as_ref().and_then(|v| v.get("success")) == Some(&Value::Bool(false)) {
                return Err(CallError::Remote(json!({
                    "code": "NAME_CONFLICT",
                    "message": ConsoleError::NameRefused.to_string(),
                })));
            }
            Ok(Arc::new(c))
        };
        let c = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .unwrap_or(Err(CallError::Timeout))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/" | "/index.html") => asset(INDEX_HTML, "text/html; charset=utf-8"),
            (&Method::GET, "/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
            (&Method::GET, "/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
            (&Method::GET, "/favicon.ico") => empty(StatusCode::NO_CONTENT),
            (&Method::GET, "/api/config") => json_response(
                StatusCode::OK,
                &json!({
                    "engine_host": self.args.engine_host,
                    "engine_port": self.args.engine_port,
                    "ws_port": self.args.ws_port,
                    "bridge_port": self.args.bridge_port,
                    "enable_flow": self.args.enable_flow,
                    "version": env!("CARGO_PKG_VERSION"),
                }),
            ),
            (&Method::POST, "/api/call") => self.api_call(req).await,
            (_, "/api/call") => api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "use POST",
            ),
            _ => api_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("no page {path}"),
            ),
        }
    }

    /// `POST /api/call {function_id, data?, namespace?, timeout_ms?}` → `{"result"}` or
    /// `{"error"}` (the engine's error object, or the console's own when the engine is not
    /// reachable).
    async fn api_call(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // A page on another origin may POST here (the console binds a predictable port);
        // demanding JSON forces a CORS preflight the console never grants, and a foreign
        // Origin is refused outright.
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return api_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_REQUEST",
                "send Content-Type: application/json",
            );
        }
        if let Some(origin) = req.headers().get(ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = req
                .headers()
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if origin != format!("http://{host}") {
                return api_error(
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN",
                    "cross-origin calls are refused",
                );
            }
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return api_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "INVALID_REQUEST",
                    &format!("the request body is unreadable or larger than {MAX_BODY} bytes"),
                )
            }
        };
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    &format!("the body is not JSON: {e}"),
                )
            }
        };
        let Some(function_id) = v
            .get("function_id")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
        else {
            return api_error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "`function_id` (a non-empty string) is required",
            );
        };
        let data = v.get("data").cloned().unwrap_or_else(|| json!({}));
        let namespace = v.get("namespace").and_then(Value::as_str);
        let timeout = v
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CALL_TIMEOUT)
            .min(MAX_CALL_TIMEOUT);
        let client = match self.client().await {
            Ok(c) => c,
            Err(CallError::Remote(e)) => {
                return json_response(StatusCode::BAD_GATEWAY, &json!({"error": e}))
            }
            Err(e) => {
                return api_error(
                    StatusCode::BAD_GATEWAY,
                    "ENGINE_UNREACHABLE",
                    &format!("{} ({})", e, self.engine_url),
                )
            }
        };
        match client.call(function_id, &data, namespace, timeout).await {
            Ok(r) => json_response(StatusCode::OK, &json!({"result": r})),
            Err(CallError::Remote(e)) => json_response(StatusCode::OK, &json!({"error": e})),
            Err(CallError::Timeout) => api_error(
                StatusCode::GATEWAY_TIMEOUT,
                "TIMEOUT",
                &format!(
                    "no result from `{function_id}` within {} ms",
                    timeout.as_millis()
                ),
            ),
            Err(e) => api_error(
                StatusCode::BAD_GATEWAY,
                "ENGINE_UNREACHABLE",
                &e.to_string(),
            ),
        }
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn bind_addr(args: &ConsoleArgs) -> Result<SocketAddr, ConsoleError> {
    let ip = match args.host.as_str() {
        "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
        h => h.parse().map_err(|_| ConsoleError::Host(h.to_string()))?,
    };
    Ok(SocketAddr::new(ip, args.port))
}

async fn serve(args: ConsoleArgs) -> anyhow::Result<()> {
    let addr = bind_addr(&args)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr()?;
    let console = Arc::new(Console {
        engine_url: format!("ws://{}:{}", args.engine_host, args.bridge_port),
        args,
        client: tokio::sync::Mutex::new(None),
    });
    // Connect now so a wrong port shows at start; the page still serves and retries if not.
    if let Err(e) = console.client().await {
        eprintln!(
            "Warning: the engine at {} is not reachable yet ({e}); the console retries on each request",
            console.engine_url
        );
    }
    println!(
        "iii console listening on http://{local}/ (engine {})",
        console.engine_url
    );
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let console = console.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let console = console.clone();
                async move { Ok::<_, Infallible>(console.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub fn main(args: ConsoleArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ConsoleArgs,
    }

    #[test]
    fn defaults_follow_seed_000() {
        let a = T::parse_from(["x"]).a;
        assert_eq!(
            (
                a.port,
                a.host.as_str(),
                a.engine_port,
                a.ws_port,
                a.bridge_port
            ),
            (3113, "127.0.0.1", 3111, 3112, 49134)
        );
        assert_eq!(bind_addr(&a).unwrap().to_string(), "127.0.0.1:3113");
        let a = T::parse_from(["x", "--host", "not a host"]).a;
        assert!(matches!(bind_addr(&a), Err(ConsoleError::Host(_))));
    }

    #[test]
    fn assets_are_embedded_and_reference_no_remote_url() {
        for a in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!a.is_empty());
            assert!(
                !a.contains("https://"),
                "an embedded asset loads something remote"
            );
        }
        assert!(INDEX_HTML.contains("app.js") && INDEX_HTML.contains("app.css"));
    }
}
