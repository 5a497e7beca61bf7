//! The route table (the `http` trigger type's provider) and the REST trigger server
//! (PROTOCOL.md §4.6.1).

use iii_protocol::codes;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use iii_core::channels::{ChanItem, Direction};
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::{CancellationToken, Core, DEFAULT_NS};

use super::HttpConfig;

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// The largest WebSocket message the official SDKs accept (PROTOCOL.md §1). A call whose
/// `invokefunction` frame would be larger is answered 413 here: sent, it would disconnect the
/// handler's worker instead.
pub const MAX_WORKER_MESSAGE: usize = 64 << 20;

/// Room left in a frame for everything beside the request's own JSON (type, ids, metadata is
/// counted separately).
const FRAME_OVERHEAD: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Param(String),
}

#[derive(Debug, Clone)]
/// One HTTP route: method and path pattern, bound to a function.
pub struct Route {
    /// The HTTP method, upper case.
    pub method: String,
    /// The registered path without its leading slash (`users/:id`).
    pub path: String,
    segs: Vec<Seg>,
    /// The binding that made it.
    pub trigger_id: String,
    /// The function a request calls.
    pub function_id: String,
    /// The namespace the function resolves in.
    pub namespace: String,
    /// The binding's metadata, handed to each call.
    pub metadata: Option<Value>,
    /// A function asked first; exactly `false` answers 422.
    pub condition_function_id: Option<String>,
    /// Middleware run after the condition and before the handler, in this order, in the
    /// route's namespace.
    pub middleware_function_ids: Vec<String>,
}

impl Route {
    fn same_shape(&self, other: &Route) -> bool {
        self.method == other.method
            && self.segs.len() == other.segs.len()
            && self
                .segs
                .iter()
                .zip(&other.segs)
                .all(|(a, b)| match (a, b) {
                    (Seg::Lit(x), Seg::Lit(y)) => x == y,
                    (Seg::Param(_), Seg::Param(_)) => true,
                    _ => false,
                })
    }

    fn matches(&self, parts: &[&str]) -> Option<HashMap<String, String>> {
        if parts.len() != self.segs.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (seg, part) in self.segs.iter().zip(parts) {
            match seg {
                Seg::Lit(l) if l == part => {}
                Seg::Lit(_) => return None,
                Seg::Param(name) => {
                    params.insert(name.clone(), iii_core::url::decode_path_segment(part));
                }
            }
        }
        Some(params)
    }

    fn literal_count(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| matches!(s, Seg::Lit(_)))
            .count()
    }
}

fn split_path(p: &str) -> Vec<&str> {
    p.split('/').filter(|s| !s.is_empty()).collect()
}

/// The route table; also the provider of the `http` trigger type.
#[derive(Default)]
pub struct HttpRoutes {
    routes: RwLock<Vec<Route>>,
}

impl HttpRoutes {
    fn route_from(b: &Binding) -> Result<Route, String> {
        let cfg = &b.config;
        let api_path = cfg
            .get("api_path")
            .and_then(Value::as_str)
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| "http trigger config requires a non-empty `api_path`".to_string())?;
        let method = match cfg.get("http_method") {
            None | Some(Value::Null) => "GET".to_string(),
            Some(Value::String(m)) => m.to_ascii_uppercase(),
            Some(other) => return Err(format!("`http_method` must be a string, found {other}")),
        };
        if !METHODS.contains(&method.as_str()) {
            return Err(format!(
                "unsupported http_method `{method}` (expected one of {})",
                METHODS.join(", ")
            ));
        }
        let middleware_function_ids = match cfg.get("middleware_function_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i.as_str() {
                    Some(f) if !f.trim().is_empty() => Ok(f.to_string()),
                    _ => Err(format!(
                        "`middleware_function_ids` must list function ids (non-empty strings), found {i}"
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "`middleware_function_ids` must be a list of function ids, found {other}"
                ))
            }
        };
        let path = split_path(api_path).join("/");
        let segs = split_path(api_path)
            .into_iter()
            .map(|s| match s.strip_prefix(':') {
                Some(name) if !name.is_empty() => Seg::Param(name.to_string()),
                _ => Seg::Lit(s.to_string()),
            })
            .collect();
        Ok(Route {
            method,
            path,
            segs,
            trigger_id: b.id.clone(),
            function_id: b.function_id.clone(),
            namespace: b.namespace.clone(),
            metadata: b.metadata.clone(),
            condition_function_id: cfg
                .get("condition_function_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            middleware_function_ids,
        })
    }

    /// Finds the route for a request; literal segments win over parameters.
    pub fn find(&self, method: &str, path: &str) -> Option<(Route, HashMap<String, String>)> {
        let parts = split_path(path);
        let routes = self.routes.read();
        routes
            .iter()
            .filter(|r| r.method == method)
            .filter_map(|r| r.matches(&parts).map(|p| (r, p)))
            .max_by_key(|(r, _)| r.literal_count())
            .map(|(r, p)| (r.clone(), p))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.read().len()
    }

    /// No route is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BuiltinTriggerType for HttpRoutes {
    fn register(&self, b: &Binding) -> Result<(), String> {
        let route = Self::route_from(b)?;
        let mut routes = self.routes.write();
        if let Some(c) = routes
            .iter()
            .find(|r| r.trigger_id != route.trigger_id && r.same_shape(&route))
        {
            return Err(format!(
                "Route '{} {}' conflicts with already-registered route '{} {}'",
                route.method, route.path, c.method, c.path
            ));
        }
        // A route belongs to its trigger: only the same trigger id re-registering replaces it
        // (another binding of the same method and path is a conflict, not a takeover).
        routes.retain(|r| r.trigger_id != route.trigger_id);
        tracing::info!(method = %route.method, path = %route.path, function_id = %route.function_id, "[REGISTERED] HTTP route");
        routes.push(route);
        Ok(())
    }

    fn unregister(&self, b: &Binding) {
        self.routes.write().retain(|r| r.trigger_id != b.id);
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn envelope(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .expect("valid response")
}

/// Request bodies go into the `request_body` channel in chunks of this size.
const BODY_CHUNK: usize = 64 * 1024;

/// The most a declared `content-length` reserves before the bytes arrive.
const PREALLOCATE_AT_MOST: usize = 1 << 20;

/// Removes a request's data channels from the registry when dropped. A side already opened by a
/// worker keeps working: its socket holds the channel itself.
struct RegisteredChannels<'a> {
    channels: &'a iii_core::channels::Channels,
    ids: [String; 2],
}

impl Drop for RegisteredChannels<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.channels.remove(id);
        }
    }
}

/// The body as raw JSON if a worker's JSON parser can read it: valid, and every number within
/// the range of an `f64` (`1e400` is valid JSON that serde_json, and so the Rust SDK, refuses;
/// upstream turns such a body into `null`). Checked without building a tree.
fn readable_json(raw: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice::<JsonCheck>(raw).ok()?;
    serde_json::from_slice(raw).ok()
}

/// Walks a JSON document, keeping nothing; numbers are read as numbers, so out-of-range ones fail.
struct JsonCheck;

impl<'de> serde::Deserialize<'de> for JsonCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonCheck)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(JsonCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(JsonCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(JsonCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(JsonCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(JsonCheck)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(JsonCheck)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, JsonCheck>()?
            .is_some()
        {}
        Ok(JsonCheck)
    }
}

fn encode(request: &CallRequest<'_>) -> String {
    // Maps of strings, strings and already-valid JSON: serialising cannot fail.
    serde_json::to_string(request).expect("an HTTP call request serialises")
}

/// The refusal of a call whose `invokefunction` message would exceed what a worker accepts.
fn oversized(function_id: &str, data: &str, metadata: Option<&str>) -> Option<Response<Body>> {
    let size = data.len() + function_id.len() + metadata.map_or(0, str::len) + FRAME_OVERHEAD;
    if size > MAX_WORKER_MESSAGE {
        return Some(envelope(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            &format!(
                "the request makes a {size}-byte message for the handler's worker; workers accept at most {MAX_WORKER_MESSAGE} bytes"
            ),
        ));
    }
    None
}

/// An error answered before the request body was read to its end: the connection cannot carry
/// another request, so it is closed.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = envelope(status, code, message);
    r.headers_mut().insert(
        "connection",
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

/// The HttpRequest object of PROTOCOL.md §4.6.1, serialised straight from the request's parts:
/// a JSON body is spliced in as the bytes that arrived (validated, never parsed into a tree).
#[derive(Serialize)]
struct CallRequest<'a> {
    query_params: &'a HashMap<String, String>,
    path_params: &'a HashMap<String, String>,
    headers: &'a serde_json::Map<String, Value>,
    path: &'a str,
    method: &'a str,
    body: Option<&'a RawValue>,
    trigger: TriggerInfo<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
}

#[derive(Serialize)]
struct TriggerInfo<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    path: &'a str,
    method: &'a str,
}

/// The parts of a request known before its body is read, shared by middleware, condition and
/// handler calls.
struct RequestView<'a> {
    path_params: &'a HashMap<String, String>,
    query_params: &'a HashMap<String, String>,
    headers: &'a serde_json::Map<String, Value>,
    method: &'a str,
    /// The route's binding metadata as JSON text, the metadata of every call the request makes.
    metadata: Option<&'a str>,
}

/// A middleware's input (PROTOCOL.md §4.6.1).
#[derive(Serialize)]
struct MiddlewareInput<'a> {
    phase: &'static str,
    request: MiddlewareRequest<'a>,
    context: serde_json::Map<String, Value>,
}

#[derive(Serialize)]
struct MiddlewareRequest<'a> {
    path_params: &'a HashMap<String, String>,
    query_params: &'a HashMap<String, String>,
    headers: &'a serde_json::Map<String, Value>,
    method: &'a str,
}

/// What a middleware's return value asks for: `Some` for `{"action":"respond"}` (the response,
/// encoded like a handler's), `None` to go on (`{"action":"continue"}` and anything else).
fn middleware_answer(function_id: &str, out: Option<&RawValue>) -> Option<Response<Body>> {
    let v: Value = serde_json::from_str(out?.get()).ok()?;
    if v.get("action").and_then(Value::as_str) != Some("respond") {
        return None;
    }
    Some(match v.get("response") {
        None | Some(Value::Null) => build_response(&json!({})),
        Some(r @ Value::Object(_)) => build_response(r),
        Some(other) => envelope(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL_ERROR,
            &format!(
                "middleware {function_id} answered `respond` with a response that is not an object: {other}"
            ),
        ),
    })
}

fn shutting_down() -> Response<Body> {
    envelope(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::INTERNAL_ERROR,
        "server is shutting down",
    )
}

/// The server's settings, swapped whole by a live configuration change; each request reads
/// them once at its start.
pub type LiveSettings = Arc<parking_lot::RwLock<Arc<HttpConfig>>>;

struct Server {
    engine: Core,
    routes: Arc<HttpRoutes>,
    settings: LiveSettings,
    limit: Semaphore,
}

/// Serves requests until `stop` is cancelled.
pub async fn serve(
    engine: Core,
    routes: Arc<HttpRoutes>,
    listener: TcpListener,
    settings: LiveSettings,
    stop: CancellationToken,
) {
    let limit = settings.read().concurrency_request_limit;
    let server = Arc::new(Server {
        engine,
        routes,
        limit: Semaphore::new(limit),
        settings,
    });
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let header_timeout = server.cfg().header_read_timeout;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // The header deadline also bounds how long an idle keep-alive connection stays.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, svc)
                .await;
        });
    }
}

impl Server {
    /// The settings now.
    fn cfg(&self) -> Arc<HttpConfig> {
        self.settings.read().clone()
    }

    fn cors_origin(&self, req_origin: Option<&str>) -> Option<String> {
        match &self.cfg().cors {
            None => Some("*".into()),
            Some(c) => {
                if c.allowed_origins.iter().any(|o| o == "*") {
                    Some("*".into())
                } else {
                    req_origin
                        .filter(|o| c.allowed_origins.iter().any(|a| a == o))
                        .map(str::to_string)
                }
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let origin = req
            .headers()
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut resp = self.handle_inner(req).await;
        // Counted only while observability is on (its tap installed), like invocations.
        if self.engine.observer().is_some() {
            self.engine.metrics().count(
                "iii_http_responses_total",
                &[("status", resp.status().as_str())],
            );
        }
        if let Some(o) = self.cors_origin(origin.as_deref()) {
            if let Ok(v) = o.parse() {
                resp.headers_mut().insert("access-control-allow-origin", v);
            }
        }
        resp
    }

    async fn handle_inner(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().as_str().to_ascii_uppercase();
        let path = req.uri().path().to_string();
        let found = self.routes.find(&method, &path);
        let Some((route, path_params)) = found else {
            if method == "OPTIONS" {
                return self.preflight(&req);
            }
            return envelope(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                &format!("No route for {method} {path}"),
            );
        };
        let (parts, body) = req.into_parts();
        let query_params = iii_core::url::parse_query(parts.uri.query().unwrap_or(""));
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            headers.insert(
                k.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
        }
        let metadata = route.metadata.as_ref().map(Value::to_string);
        let view = RequestView {
            path_params: &path_params,
            query_params: &query_params,
            headers: &headers,
            method: &method,
            metadata: metadata.as_deref(),
        };
        let cfg = self.cfg();
        if !cfg.middleware.is_empty() {
            // Middleware calls are engine work like a handler's, so they hold a permit too; it is
            // given back while the body is read (a slow client must not hold one).
            let Ok(permit) = self.limit.acquire().await else {
                return shutting_down();
            };
            let global = cfg.middleware.iter().map(|m| m.function_id.as_str());
            let answered = self.middleware(DEFAULT_NS, global, &view).await;
            drop(permit);
            if let Some(mut resp) = answered {
                // The body was never read: keep the connection only if there is none to skip.
                if !body.is_end_stream() {
                    resp.headers_mut().insert(
                        "connection",
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                return resp;
            }
        }
        // The body is read before a permit is taken, so a client that trickles its body holds
        // its own connection and nothing else; the read has its own deadline.
        let raw_body = match self.read_body(&parts, body).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        let Ok(_permit) = self.limit.acquire().await else {
            return shutting_down();
        };
        self.dispatch(&route, &view, &parts, raw_body).await
    }

    /// Calls each middleware in turn with the request (without its body). `Some` ends the
    /// request: a `respond` answer, a failed call (500) or one that took longer than
    /// `middleware_timeout_ms` (504 `MIDDLEWARE_TIMEOUT`); `None` lets it go on.
    async fn middleware<'m>(
        &self,
        namespace: &str,
        function_ids: impl Iterator<Item = &'m str>,
        view: &RequestView<'_>,
    ) -> Option<Response<Body>> {
        let mut input = None;
        for fid in function_ids {
            // Built on first use: most routes have no middleware.
            let input = input.get_or_insert_with(|| {
                serde_json::to_string(&MiddlewareInput {
                    phase: super::PHASE_PRE_HANDLER,
                    request: MiddlewareRequest {
                        path_params: view.path_params,
                        query_params: view.query_params,
                        headers: view.headers,
                        method: view.method,
                    },
                    context: serde_json::Map::new(),
                })
                .expect("a middleware input serialises")
            });
            let call = self.engine.call(namespace, fid, input, view.metadata, None);
            let out = match tokio::time::timeout(self.cfg().middleware_timeout, call).await {
                Err(_) => {
                    return Some(envelope(
                        StatusCode::GATEWAY_TIMEOUT,
                        codes::MIDDLEWARE_TIMEOUT,
                        &format!(
                            "middleware {fid} did not answer within {} ms (http config `middleware_timeout_ms`)",
                            self.cfg().middleware_timeout.as_millis()
                        ),
                    ))
                }
                Ok(Err(e)) => {
                    return Some(envelope(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &e.code,
                        &e.message,
                    ))
                }
                Ok(Ok(out)) => out,
            };
            if let Some(resp) = middleware_answer(fid, out.as_deref()) {
                return Some(resp);
            }
        }
        None
    }

    /// Reads the whole body within `body_read_timeout`, refusing one over `body_limit_bytes`
    /// (by its declared length before reading anything, else as soon as it grows past it).
    async fn read_body(
        &self,
        parts: &hyper::http::request::Parts,
        mut body: Incoming,
    ) -> Result<Bytes, Response<Body>> {
        let limit = self.cfg().body_limit_bytes;
        let too_large = || {
            refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is larger than the limit of {limit} bytes (http config `body_limit_bytes`)"
                ),
            )
        };
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        // Preallocate what the client declared, but not more than a little: a declaration alone
        // must not reserve the whole limit per connection.
        let initial = declared.map_or(0, |n| n.min(PREALLOCATE_AT_MOST as u64) as usize);
        let read = async {
            let mut buf = BytesMut::with_capacity(initial);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    refusal(
                        StatusCode::BAD_REQUEST,
                        codes::INVALID_ARGUMENTS,
                        &format!("could not read the request body: {e}"),
                    )
                })?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(too_large());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(buf.freeze())
        };
        match tokio::time::timeout(self.cfg().body_read_timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(refusal(
                StatusCode::REQUEST_TIMEOUT,
                codes::TIMEOUT,
                &format!(
                    "the request body did not arrive within {} ms (http config `body_read_timeout_ms`)",
                    self.cfg().body_read_timeout.as_millis()
                ),
            )),
        }
    }

    async fn dispatch(
        &self,
        route: &Route,
        view: &RequestView<'_>,
        parts: &hyper::http::request::Parts,
        raw_body: Bytes,
    ) -> Response<Body> {
        let method = view.method;
        let is_json = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("application/json"));
        // Invalid JSON is `null`, as upstream; valid JSON is forwarded as the bytes that came.
        let body: Option<&RawValue> = if is_json {
            readable_json(&raw_body)
        } else {
            None
        };
        let metadata = view.metadata;

        // Both channels leave the registry with the request, however it ends (answered, timed
        // out, client gone): a side nobody connected is not left to the unused-channel sweep.
        let channels = self.engine.channels();
        let req_ch = channels.create(iii_core::channels::DEFAULT_BUFFER);
        let resp_ch = channels.create(iii_core::channels::DEFAULT_BUFFER);
        let _registered = RegisteredChannels {
            channels,
            ids: [req_ch.id.clone(), resp_ch.id.clone()],
        };
        let mut request = CallRequest {
            query_params: view.query_params,
            path_params: view.path_params,
            headers: view.headers,
            path: &route.path,
            method,
            body,
            trigger: TriggerInfo {
                kind: "http",
                path: &route.path,
                method,
            },
            request_body: None,
            response: None,
        };

        if let Some(cond) = &route.condition_function_id {
            let data = encode(&request);
            if let Some(refused) = oversized(cond, &data, metadata) {
                return refused;
            }
            match self
                .engine
                .condition(&route.namespace, cond, &data, metadata)
                .await
            {
                Ok(false) => {
                    let body = json!({"error": {"code": "CONDITION_NOT_MET", "message": "Request condition not met"}, "skipped": true});
                    return Response::builder()
                        .status(StatusCode::UNPROCESSABLE_ENTITY)
                        .header("content-type", "application/json")
                        .body(full(body.to_string()))
                        .expect("valid response");
                }
                Ok(true) => {}
                Err(e) => return envelope(StatusCode::INTERNAL_SERVER_ERROR, &e.code, &e.message),
            }
        }
        let route_mw = route.middleware_function_ids.iter().map(String::as_str);
        if let Some(answered) = self.middleware(&route.namespace, route_mw, view).await {
            return answered;
        }

        request.request_body = Some(req_ch.reference(Direction::Read));
        request.response = Some(resp_ch.reference(Direction::Write));
        let data = encode(&request);
        drop(request);
        if let Some(refused) = oversized(&route.function_id, &data, metadata) {
            return refused;
        }
        if let Some(tx) = channels.take_writer(&req_ch) {
            tokio::spawn(async move {
                let mut at = 0;
                while at < raw_body.len() {
                    let end = (at + BODY_CHUNK).min(raw_body.len());
                    if tx
                        .send(ChanItem::Binary(raw_body.slice(at..end)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    at = end;
                }
            });
            channels.side_finished(&req_ch);
        }
        let rx = channels.take_reader(&resp_ch);
        channels.side_finished(&resp_ch);

        let work = self.run(route, data, metadata, rx);
        match tokio::time::timeout(self.cfg().default_timeout, work).await {
            Ok(r) => r,
            Err(_) => Response::builder()
                .status(StatusCode::GATEWAY_TIMEOUT)
                .body(full(Bytes::new()))
                .expect("valid response"),
        }
    }

    /// Waits for whichever comes first: a non-null return value (the full response) or the first
    /// body chunk on the response channel (a streamed response).
    async fn run(
        &self,
        route: &Route,
        data: String,
        metadata: Option<&str>,
        rx: Option<mpsc::Receiver<ChanItem>>,
    ) -> Response<Body> {
        let call = self
            .engine
            .call(&route.namespace, &route.function_id, &data, metadata, None);
        tokio::pin!(call);
        let mut rx = rx;
        let mut status = 200u16;
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut returned_null = false;
        loop {
            tokio::select! {
                res = &mut call, if !returned_null => match res {
                    Err(e) => return envelope(StatusCode::INTERNAL_SERVER_ERROR, &e.code, &e.message),
                    Ok(Some(v)) => {
                        let v: Value = serde_json::from_str(v.get()).unwrap_or(Value::Null);
                        if !v.is_null() {
                            return build_response(&v);
                        }
                        returned_null = true;
                        if rx.is_none() { return stream_response(status, &headers, None, None); }
                    }
                    Ok(None) => {
                        returned_null = true;
                        if rx.is_none() { return stream_response(status, &headers, None, None); }
                    }
                },
                item = async { match rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => match item {
                    Some(ChanItem::Text(t)) => apply_control(&t, &mut status, &mut headers),
                    Some(ChanItem::Binary(b)) => return stream_response(status, &headers, Some(b), rx.take()),
                    None => {
                        // Writer closed without a body chunk.
                        rx = None;
                        if returned_null { return stream_response(status, &headers, None, None); }
                    }
                },
            }
        }
    }

    fn preflight(&self, req: &Request<Incoming>) -> Response<Body> {
        let methods = match &self.cfg().cors {
            Some(c) if !c.allowed_methods.is_empty() => c.allowed_methods.join(", "),
            _ => METHODS.join(", "),
        };
        let allow_headers = req
            .headers()
            .get("access-control-request-headers")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("*")
            .to_string();
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("access-control-allow-methods", methods)
            .header("access-control-allow-headers", allow_headers)
            .body(full(Bytes::new()))
            .expect("valid response")
    }
}

fn apply_control(text: &str, status: &mut u16, headers: &mut Vec<(String, String)>) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("set_status") => {
            if let Some(s) = v.get("status_code").and_then(Value::as_u64) {
                *status = s as u16;
            }
        }
        Some("set_headers") => {
            if let Some(h) = v.get("headers").and_then(Value::as_object) {
                for (k, val) in h {
                    let val = val
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| val.to_string());
                    headers.push((k.clone(), val));
                }
            }
        }
        _ => {}
    }
}

fn stream_response(
    status: u16,
    headers: &[(String, String)],
    first: Option<Bytes>,
    rx: Option<mpsc::Receiver<ChanItem>>,
) -> Response<Body> {
    let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let (tx, body_rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        if let Some(f) = first {
            if tx.send(Ok(Frame::data(f))).await.is_err() {
                return;
            }
        }
        if let Some(mut rx) = rx {
            while let Some(item) = rx.recv().await {
                if let ChanItem::Binary(b) = item {
                    if tx.send(Ok(Frame::data(b))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream_from(body_rx);
    b.body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| {
            envelope(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL_ERROR,
                "invalid response headers",
            )
        })
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Maps a handler's `{status_code, headers, body}` to a response (PROTOCOL.md §4.6.1 body rules).
pub fn build_response(v: &Value) -> Response<Body> {
    let status = v.get("status_code").and_then(Value::as_u64).unwrap_or(200);
    let mut headers: Vec<(String, String)> = Vec::new();
    match v.get("headers") {
        Some(Value::Object(m)) => {
            for (k, val) in m {
                headers.push((
                    k.clone(),
                    val.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| val.to_string()),
                ));
            }
        }
        Some(Value::Array(items)) => {
            for it in items.iter().filter_map(Value::as_str) {
                if let Some((k, val)) = it.split_once(':') {
                    headers.push((k.trim().to_string(), val.trim().to_string()));
                }
            }
        }
        _ => {}
    }
    let has_ct = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    let body = match v.get("body") {
        None => Bytes::from_static(b"{}"),
        Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if has_ct => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    if !has_ct && !body.is_empty() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, val) in &headers {
        b = b.header(k.as_str(), val.as_str());
    }
    b.body(full(body)).unwrap_or_else(|e| {
        envelope(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL_ERROR,
            &format!("handler returned an invalid response: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(id: &str, path: &str, method: &str) -> Binding {
        Binding {
            id: id.into(),
            trigger_type: "http".into(),
            function_id: format!("fn::{id}"),
            config: json!({"api_path": path, "http_method": method}),
            metadata: None,
            owner: None,
            namespace: "default".into(),
            trigger_namespace: None,
            home_namespace: "default".into(),
            provider: None,
        }
    }

    #[test]
    fn a_json_body_is_forwarded_verbatim_only_if_workers_can_read_it() {
        let ok = br#" {"a": [1, 2.5, -3, "x\u00e9", null, true], "b": {}} "#;
        assert_eq!(
            readable_json(ok).map(RawValue::get),
            Some(r#"{"a": [1, 2.5, -3, "x\u00e9", null, true], "b": {}}"#)
        );
        assert!(readable_json(b"1e400").is_none());
        assert!(readable_json(br#"{"n": [123456789e999]}"#).is_none());
        assert!(readable_json(b"{\"a\": 1").is_none());
        assert!(readable_json(b"not json").is_none());
        assert!(readable_json(&[b'['; 1000]).is_none(), "nesting is bounded");
    }

    #[test]
    fn routes_match_conflict_and_replace() {
        let r = HttpRoutes::default();
        r.register(&binding("a", "/users/:id", "get")).unwrap();
        r.register(&binding("b", "users/me", "GET")).unwrap();
        let (route, params) = r.find("GET", "/users/42").unwrap();
        assert_eq!(route.trigger_id, "a");
        assert_eq!(params["id"], "42");
        assert_eq!(r.find("GET", "/users/me").unwrap().0.trigger_id, "b");
        assert!(r.find("POST", "/users/42").is_none());
        let e = r
            .register(&binding("c", "users/:userId", "GET"))
            .unwrap_err();
        assert_eq!(
            e,
            "Route 'GET users/:userId' conflicts with already-registered route 'GET users/:id'"
        );
        // The same method and path from another trigger is a conflict, not a takeover.
        let e = r.register(&binding("d", "users/:id", "GET")).unwrap_err();
        assert!(
            e.contains("conflicts with already-registered route 'GET users/:id'"),
            "{e}"
        );
        assert_eq!(r.find("GET", "/users/1").unwrap().0.trigger_id, "a");
        // The owning trigger re-registering moves its route.
        r.register(&binding("a", "users/:id/x", "GET")).unwrap();
        assert!(r.find("GET", "/users/1").is_none());
        assert_eq!(r.find("GET", "/users/1/x").unwrap().0.trigger_id, "a");
        // Unregistering a trigger that does not hold the route leaves it alone.
        r.unregister(&binding("d", "users/:id/x", "GET"));
        assert!(r.find("GET", "/users/1/x").is_some());
        assert!(HttpRoutes::route_from(&binding("x", "", "GET")).is_err());
        assert!(HttpRoutes::route_from(&binding("x", "/a", "FETCH")).is_err());
    }

    #[test]
    fn route_middleware_ids_are_read_and_checked() {
        let mut b = binding("m", "/a", "GET");
        assert!(HttpRoutes::route_from(&b)
            .unwrap()
            .middleware_function_ids
            .is_empty());
        b.config["middleware_function_ids"] = json!(["x::one", "x::two"]);
        assert_eq!(
            HttpRoutes::route_from(&b).unwrap().middleware_function_ids,
            ["x::one", "x::two"]
        );
        for bad in [
            json!("x::one"),
            json!(["ok", 3]),
            json!([""]),
            json!({"a": 1}),
        ] {
            b.config["middleware_function_ids"] = bad.clone();
            let e = HttpRoutes::route_from(&b).unwrap_err();
            assert!(e.contains("`middleware_function_ids` must"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_middleware_answer_is_respond_or_else_continue() {
        let raw = |t: &str| RawValue::from_string(t.to_string()).unwrap();
        for go_on in [
            r#"{"action":"continue"}"#,
            r#"{"action":"Respond","response":{"status_code":401}}"#,
            r#"{"response":{"status_code":401}}"#,
            r#""respond""#,
            "null",
            "[1]",
        ] {
            assert!(
                middleware_answer("m", Some(&raw(go_on))).is_none(),
                "{go_on}"
            );
        }
        assert!(middleware_answer("m", None).is_none());
        let r = middleware_answer(
            "m",
            Some(&raw(
                r#"{"action":"respond","response":{"status_code":401,"headers":{"x-why":"no"},"body":"nope"}}"#,
            )),
        )
        .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-why"], "no");
        let r = middleware_answer("m", Some(&raw(r#"{"action":"respond"}"#))).unwrap();
        assert_eq!(r.status(), 200);
        let r = middleware_answer("m", Some(&raw(r#"{"action":"respond","response":7}"#))).unwrap();
        assert_eq!(r.status(), 500);
    }
}
