//! The stream socket (PROTOCOL.md §4.6.4): a WebSocket listener (default 127.0.0.1:3112) where
//! browsers and other clients `join` and `leave` subscriptions to a stream group or item, get a
//! `sync` of the current data and then every event the `stream::*` functions emit.
//!
//! Differences from upstream, on purpose: the `auth_function` fails closed (the upgrade is
//! refused with 401/503 instead of accepted without context), a join handler that fails denies
//! the join, and `stream:join`/`stream:leave` bindings honour their `stream_name` filter.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use iii_adapter_api::StreamStore;
use iii_core::{CancellationToken, Core, DEFAULT_NS};
use iii_protocol::codes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::hub::{Hub, Outbox, Subscription};
use crate::common::filter_eq;

/// The trigger type fired (and asked) before a subscription starts.
pub(crate) const JOIN: &str = "stream:join";
/// The trigger type fired when a subscription ends.
pub(crate) const LEAVE: &str = "stream:leave";

/// How long the `auth_function` may take before the upgrade is refused with 503.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one join handler (or its condition) may take before the join is denied.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket's settings (keys of the `stream` entry's `config:`).
#[derive(Debug, Clone, PartialEq)]
pub struct SocketConfig {
    /// The address to bind (`host`, default 127.0.0.1).
    pub host: String,
    /// The port to bind (`port`, default 3112; 0 picks a free one, the log line says which).
    pub port: u16,
    /// Function called before each upgrade (`auth_function`).
    pub auth_function: Option<String>,
    /// Bytes queued for one connection before it is dropped as a slow consumer
    /// (`max_outbound_bytes`).
    pub max_outbound_bytes: usize,
    /// Largest frame a client may send (`max_message_bytes`); larger closes with 1009.
    pub max_message_bytes: usize,
    /// Subscriptions one connection may hold at once (`max_subscriptions`).
    pub max_subscriptions: usize,
    /// Sockets open at once, handshakes included (`max_connections`); the next gets 503.
    pub max_connections: usize,
    /// How long a client may take to send its upgrade request (`handshake_timeout_ms`).
    pub handshake_timeout: Duration,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            host: "127.0.0.1".into(),
            port: 3112,
            auth_function: None,
            max_outbound_bytes: 16 << 20,
            max_message_bytes: 1 << 20,
            max_subscriptions: 1024,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound socket, ready to serve.
pub(crate) struct BoundSocket {
    listener: TcpListener,
    /// The address it listens on.
    pub(crate) addr: SocketAddr,
    cfg: SocketConfig,
}

impl BoundSocket {
    /// Binds `cfg.host:cfg.port` and logs the address.
    pub(crate) async fn bind(cfg: SocketConfig) -> std::io::Result<BoundSocket> {
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
        let addr = listener.local_addr()?;
        tracing::info!("stream socket listening on ws://{addr}");
        Ok(BoundSocket {
            listener,
            addr,
            cfg,
        })
    }

    /// Accepts connections until `stop` is cancelled.
    pub(crate) async fn serve(
        self,
        core: Core,
        hub: Arc<Hub>,
        store: Arc<dyn StreamStore>,
        stop: CancellationToken,
    ) {
        let shared = Arc::new(Shared {
            core,
            hub,
            store,
            cfg: self.cfg,
            next_conn: AtomicU64::new(1),
            stop: stop.clone(),
        });
        let mut accept_errors = Throttle::default();
        let mut refusals = Throttle::default();
        let open = Arc::new(AtomicUsize::new(0));
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if let Some(skipped) = accept_errors.allow() {
                        tracing::warn!(error = %e, repeated = skipped, "stream socket: accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let limit = shared.cfg.max_connections;
            if open.fetch_add(1, Ordering::SeqCst) >= limit {
                open.fetch_sub(1, Ordering::SeqCst);
                if let Some(skipped) = refusals.allow() {
                    tracing::warn!(peer = %peer, limit, refused_unlogged = skipped, "stream socket: connection refused: connection limit reached");
                }
                tokio::spawn(refuse_over_limit(stream, limit));
                continue;
            }
            let slot = Arc::new(Slot(open.clone()));
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let timeout = shared.cfg.handshake_timeout;
                // The slot is held by this task and by the WebSocket session, if one starts.
                let svc = hyper::service::service_fn(move |req| {
                    let (shared, slot) = (shared.clone(), slot.clone());
                    async move { Ok::<_, Infallible>(upgrade(shared, req, peer, slot).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

/// Holds one of the socket's connection slots until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers 503 without reading the request, then closes.
async fn refuse_over_limit(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::AsyncWriteExt;
    let body = json!({"error": {"code": codes::STREAM_CONNECTION_LIMIT, "message": format!("connection limit reached: the stream socket serves at most {limit} connections at once (config key max_connections)")}}).to_string();
    let resp = format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// What every connection of one socket shares.
struct Shared {
    core: Core,
    hub: Arc<Hub>,
    store: Arc<dyn StreamStore>,
    cfg: SocketConfig,
    next_conn: AtomicU64,
    stop: CancellationToken,
}

/// Logs a repeated warning at most once a second, with how many were not logged.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
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

fn json_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn header_has(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Why the auth function refused an upgrade.
#[derive(Debug, PartialEq)]
enum AuthRefusal {
    /// The function is missing or did not answer: 503.
    Unavailable(String),
    /// The function said no, failed, or answered something unusable: 401.
    Denied(String),
}

/// The auth function's input: headers (one value per name, repeated ones joined with `, `),
/// the path, the query as lists of values, the peer address.
fn auth_input(req: &Request<Incoming>, peer: SocketAddr) -> Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(v));
            }
        }
    }
    let mut query: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(q) = req.uri().query() {
        for (k, v) in form_pairs(q) {
            query.entry(k).or_default().push(v);
        }
    }
    json!({"headers": headers, "path": req.uri().path(), "query_params": query, "addr": peer.to_string()})
}

/// `a=1&b=x%20y&a=2` → pairs in order, decoded (`+` is a space).
fn form_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// Runs the auth function: `Ok(context)` when it returned an object with a `context` key.
async fn authenticate(core: &Core, function_id: &str, input: Value) -> Result<Value, AuthRefusal> {
    if core.lookup(DEFAULT_NS, function_id).is_none() {
        return Err(AuthRefusal::Unavailable(format!(
            "auth function {function_id} is not registered"
        )));
    }
    let input = input.to_string();
    let call = core.call(DEFAULT_NS, function_id, &input, None, None);
    let outcome = match tokio::time::timeout(AUTH_TIMEOUT, call).await {
        Ok(o) => o,
        Err(_) => {
            return Err(AuthRefusal::Unavailable(format!(
                "auth function {function_id} did not answer within {AUTH_TIMEOUT:?}"
            )))
        }
    };
    match outcome {
        Err(e) if e.code == codes::FUNCTION_NOT_FOUND => Err(AuthRefusal::Unavailable(format!(
            "auth function {function_id} is not registered"
        ))),
        Err(e) => Err(AuthRefusal::Denied(format!(
            "auth function {function_id} failed: {}: {}",
            e.code, e.message
        ))),
        Ok(raw) => {
            let v: Value = raw
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .unwrap_or(Value::Null);
            match v {
                Value::Object(mut m) if m.contains_key("context") => {
                    Ok(m.remove("context").unwrap_or(Value::Null))
                }
                other => Err(AuthRefusal::Denied(format!(
                    "auth function {function_id} must return an object with a `context` key, returned {}",
                    describe(&other)
                ))),
            }
        }
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object without `context`",
    }
}

/// Answers one HTTP request: a WebSocket upgrade (after the auth function, if any) or 426.
async fn upgrade(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    slot: Arc<Slot>,
) -> Response<Full<Bytes>> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let is_upgrade = req.method() == hyper::Method::GET
        && header_has(&req, UPGRADE, "websocket")
        && header_has(&req, CONNECTION, "upgrade")
        && req
            .headers()
            .get("sec-websocket-version")
            .is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| is_upgrade) else {
        let mut r = json_response(
            StatusCode::UPGRADE_REQUIRED,
            codes::WEBSOCKET_UPGRADE_REQUIRED,
            "the stream socket speaks WebSocket (version 13) only",
        );
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return r;
    };
    let context = match &shared.cfg.auth_function {
        None => Value::Null,
        Some(f) => match authenticate(&shared.core, f, auth_input(&req, peer)).await {
            Ok(c) => c,
            Err(refusal) => {
                let (status, code, msg) = match refusal {
                    AuthRefusal::Unavailable(m) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        codes::STREAM_AUTH_UNAVAILABLE,
                        m,
                    ),
                    AuthRefusal::Denied(m) => {
                        (StatusCode::UNAUTHORIZED, codes::STREAM_AUTH_FAILED, m)
                    }
                };
                tracing::info!(peer = %peer, status = status.as_u16(), reason = %msg, "stream socket: upgrade refused");
                return json_response(status, code, &msg);
            }
        },
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "stream socket: upgrade failed");
                return;
            }
        };
        let mut wsc = WebSocketConfig::default();
        wsc.max_message_size = Some(shared.cfg.max_message_bytes);
        wsc.max_frame_size = Some(shared.cfg.max_message_bytes);
        let ws = WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            Some(wsc),
        )
        .await;
        Session::new(shared, conn_id, context).run(ws).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    r
}

/// A client frame (PROTOCOL.md §4.6.4).
#[derive(Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
enum ClientFrame {
    Join(JoinData),
    Leave(LeaveData),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinData {
    subscription_id: String,
    stream_name: String,
    group_id: String,
    #[serde(default)]
    id: Option<String>,
}

/// A leave names its subscription; the other fields of the join may be repeated and are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaveData {
    subscription_id: String,
}

/// What a connection remembers of one of its subscriptions.
struct Open {
    stream: String,
    group: String,
    item: Option<String>,
}

/// One socket connection.
struct Session {
    shared: Arc<Shared>,
    conn: u64,
    context: Value,
    subs: HashMap<String, Open>,
    malformed: Throttle,
}

/// `{"type":"stream",…}` for one subscription.
fn stream_frame(stream: &str, group: &str, item: Option<&str>, event: Value, sub: &str) -> String {
    json!({"type": "stream", "timestamp": iii_core::conn::now_ms(), "streamName": stream,
        "groupId": group, "id": item, "event": event, "subscriptionId": sub})
    .to_string()
}

fn error_frame(code: &str, message: &str, sub: Option<&str>) -> String {
    let mut f = json!({"type": "error", "error": {"code": code, "message": message}});
    if let Some(s) = sub {
        f["subscriptionId"] = json!(s);
    }
    f.to_string()
}

impl Session {
    fn new(shared: Arc<Shared>, conn: u64, context: Value) -> Self {
        Session {
            shared,
            conn,
            context,
            subs: HashMap::new(),
            malformed: Throttle::default(),
        }
    }

    async fn run<S>(mut self, ws: WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, mut stream) = ws.split();
        let (outbox, rx, queued) = Outbox::new(self.shared.cfg.max_outbound_bytes);
        let writer = tokio::spawn(write_frames(sink, rx, queued));
        let stop = self.shared.stop.clone();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = outbox.dropped().cancelled() => break,
                _ = stop.cancelled() => break,
            };
            match msg {
                Some(Ok(Message::Text(t))) => self.handle(t.as_str(), &outbox).await,
                Some(Ok(Message::Binary(_))) => self.malformed(
                    &outbox,
                    "binary frames are not part of the stream protocol; send JSON text",
                ),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(conn = self.conn, error = %e, "stream socket: read failed; closing");
                    break;
                }
            }
        }
        // First out of the hub: its subscriptions hold the outbox, so the writer's queue only
        // ends once they are gone.
        self.leave_all();
        if outbox.is_slow() {
            writer.abort();
        } else {
            // Let queued frames (an error frame, say) reach the client, then say goodbye.
            drop(outbox);
            let mut writer = writer;
            if tokio::time::timeout(Duration::from_secs(1), &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
    }

    async fn handle(&mut self, text: &str, outbox: &Arc<Outbox>) {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return self.malformed(
                    outbox,
                    &format!("expected {{\"type\":\"join\"|\"leave\",\"data\":{{\"subscriptionId\",\"streamName\",\"groupId\",\"id\"?}}}}: {e}"),
                )
            }
        };
        match frame {
            ClientFrame::Join(j) => self.join(j, outbox).await,
            ClientFrame::Leave(l) => self.leave(&l.subscription_id),
        }
    }

    fn malformed(&mut self, outbox: &Outbox, message: &str) {
        if let Some(skipped) = self.malformed.allow() {
            tracing::warn!(
                conn = self.conn,
                unlogged = skipped,
                reason = message,
                "stream socket: malformed frame"
            );
        }
        outbox.push(error_frame(codes::INVALID_STREAM_FRAME, message, None));
    }

    async fn join(&mut self, j: JoinData, outbox: &Arc<Outbox>) {
        let sid = j.subscription_id.clone();
        for (field, v) in [
            ("subscriptionId", &j.subscription_id),
            ("streamName", &j.stream_name),
            ("groupId", &j.group_id),
        ] {
            if v.is_empty() {
                outbox.push(error_frame(
                    codes::INVALID_STREAM_FRAME,
                    &format!("join: `{field}` must not be empty"),
                    Some(&sid),
                ));
                return;
            }
        }
        if self.subs.contains_key(&sid) {
            outbox.push(error_frame(
                codes::SUBSCRIPTION_EXISTS,
                &format!("subscription {sid} is already open on this connection; leave it first"),
                Some(&sid),
            ));
            return;
        }
        if self.subs.len() >= self.shared.cfg.max_subscriptions {
            outbox.push(error_frame(
                codes::SUBSCRIPTION_LIMIT_EXCEEDED,
                &format!(
                    "this connection already holds {} subscriptions (config key max_subscriptions)",
                    self.subs.len()
                ),
                Some(&sid),
            ));
            return;
        }
        let payload = json!({"subscription_id": sid, "stream_name": j.stream_name,
            "group_id": j.group_id, "id": j.id, "context": self.context});
        if let Err(reason) = admit(&self.shared.core, &payload, &j.stream_name).await {
            tracing::info!(conn = self.conn, subscription = %sid, stream = %j.stream_name, group = %j.group_id, %reason, "stream socket: join denied");
            outbox.push(stream_frame(
                &j.stream_name,
                &j.group_id,
                j.id.as_deref(),
                json!({"type": "unauthorized"}),
                &sid,
            ));
            return;
        }
        // Recorded before the snapshot is read, so no event falls between them; events that
        // arrive meanwhile are held until `sync` is queued (they may repeat what sync has).
        let sub = Arc::new(Subscription::new(
            self.conn,
            sid.clone(),
            j.id.clone(),
            outbox.clone(),
        ));
        let hub = &self.shared.hub;
        hub.add(&j.stream_name, &j.group_id, sub.clone());
        let store = &self.shared.store;
        let snapshot = match &j.id {
            Some(item) => store
                .get(&j.stream_name, &j.group_id, item)
                .await
                .map(|v| v.unwrap_or(Value::Null))
                .map_err(|e| (codes::STREAM_GET_ERROR, e)),
            None => store
                .list(&j.stream_name, &j.group_id)
                .await
                .map(Value::Array)
                .map_err(|e| (codes::STREAM_GET_GROUP_ERROR, e)),
        };
        match snapshot {
            Ok(data) => {
                sub.go_live(stream_frame(
                    &j.stream_name,
                    &j.group_id,
                    j.id.as_deref(),
                    json!({"type": "sync", "data": data}),
                    &sid,
                ));
                self.subs.insert(
                    sid,
                    Open {
                        stream: j.stream_name,
                        group: j.group_id,
                        item: j.id,
                    },
                );
            }
            Err((code, e)) => {
                hub.remove(&j.stream_name, &j.group_id, self.conn, &sid);
                outbox.push(error_frame(
                    code,
                    &format!("reading the data to sync failed: {e}"),
                    Some(&sid),
                ));
                // The join handlers admitted it; tell the leave handlers it is over.
                self.fire_leave(&sid, &j.stream_name, &j.group_id, j.id.as_deref());
            }
        }
    }

    /// Ends subscription `sid`; an unknown one is ignored.
    fn leave(&mut self, sid: &str) {
        let Some(open) = self.subs.remove(sid) else {
            tracing::debug!(
                conn = self.conn,
                subscription = sid,
                "stream socket: leave for an unknown subscription ignored"
            );
            return;
        };
        self.shared
            .hub
            .remove(&open.stream, &open.group, self.conn, sid);
        self.fire_leave(sid, &open.stream, &open.group, open.item.as_deref());
    }

    fn leave_all(&mut self) {
        let ids: Vec<String> = self.subs.keys().cloned().collect();
        for sid in ids {
            self.leave(&sid);
        }
    }

    fn fire_leave(&self, sid: &str, stream: &str, group: &str, item: Option<&str>) {
        let payload = json!({"subscription_id": sid, "stream_name": stream, "group_id": group,
            "id": item, "context": self.context});
        let stream = stream.to_string();
        self.shared.core.fire(LEAVE, payload, move |cfg| {
            filter_eq(cfg, "stream_name", &stream)
        });
    }
}

/// Asks every `stream:join` binding of `stream` (honouring `condition_function_id`, one after
/// another). `Err(reason)` when one answered `{"unauthorized": true}`, failed, or timed out.
async fn admit(core: &Core, payload: &Value, stream: &str) -> Result<(), String> {
    let bindings = core.triggers().armed_bindings(JOIN);
    let text = payload.to_string();
    for b in bindings
        .iter()
        .filter(|b| filter_eq(&b.config, "stream_name", stream))
    {
        let meta = b.metadata.as_ref().map(Value::to_string);
        let call = |f| join_call(core, &b.namespace, f, &text, meta.as_deref());
        if let Some(cond) = b
            .config
            .get("condition_function_id")
            .and_then(Value::as_str)
        {
            let check = core.condition(&b.namespace, cond, &text, meta.as_deref());
            match tokio::time::timeout(JOIN_TIMEOUT, check).await {
                Ok(Ok(false)) => continue,
                Ok(Ok(true)) => {}
                Ok(Err(e)) => return Err(format!("condition {cond} of {} failed: {e}", b.id)),
                Err(_) => return Err(format!("condition {cond} of {} timed out", b.id)),
            }
        }
        match call(&b.function_id).await {
            Ok(Ok(Some(r))) => {
                let v: Value = serde_json::from_str(r.get()).unwrap_or(Value::Null);
                if v.get("unauthorized") == Some(&Value::Bool(true)) {
                    return Err(format!("{} answered unauthorized", b.function_id));
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(format!("join handler {} failed: {e}", b.function_id)),
            Err(_) => return Err(format!("join handler {} timed out", b.function_id)),
        }
    }
    Ok(())
}

/// One call of a join handler or condition, bounded by [`JOIN_TIMEOUT`].
async fn join_call(
    core: &Core,
    ns: &str,
    function_id: &str,
    input: &str,
    metadata: Option<&str>,
) -> Result<iii_core::pending::Outcome, tokio::time::error::Elapsed> {
    tokio::time::timeout(
        JOIN_TIMEOUT,
        core.call(ns, function_id, input, metadata, None),
    )
    .await
}

async fn write_frames<W>(
    mut sink: W,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    queued: Arc<AtomicUsize>,
) where
    W: futures_util::Sink<Message> + Unpin,
{
    while let Some(f) = rx.recv().await {
        let len = f.len();
        let sent = sink.send(Message::text(f)).await;
        queued.fetch_sub(len, Ordering::SeqCst);
        if sent.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_keep_every_value_and_decode() {
        assert_eq!(
            form_pairs("a=1&b=x+y%21&a=2&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("a".into(), "2".into()),
                ("c".into(), "".into())
            ]
        );
    }

    #[test]
    fn frames_parse_and_bad_ones_say_why() {
        let j: ClientFrame = serde_json::from_str(
            r#"{"type":"join","data":{"subscriptionId":"s","streamName":"c","groupId":"g","id":"m"}}"#,
        )
        .unwrap();
        assert!(matches!(j, ClientFrame::Join(JoinData { id: Some(ref i), .. }) if i == "m"));
        let l: ClientFrame = serde_json::from_str(
            r#"{"type":"leave","data":{"subscriptionId":"s","streamName":"c"}}"#,
        )
        .unwrap();
        assert!(
            matches!(l, ClientFrame::Leave(LeaveData { ref subscription_id }) if subscription_id == "s")
        );
        let e = serde_json::from_str::<ClientFrame>(r#"{"type":"join","data":{"streamName":"c"}}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("subscriptionId"), "{e}");
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout"}"#).is_err());
    }
}
