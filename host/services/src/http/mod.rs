//! The REST trigger server and the `http` trigger type (config entry `http`; `iii-http` is
//! the deprecated name). Workers bind functions to routes; requests become calls.
//!
//! Middleware (PROTOCOL.md §4.6.1): the entry's `middleware:` list runs for every request that
//! matched a route, in ascending `priority`, before the body is read; a route's own
//! `middleware_function_ids` run after its condition, right before its handler. A request that
//! matches no route (a 404, or a CORS preflight answered by the server) calls nothing: global
//! middleware guards the routes, it is not a filter in front of the whole server.

mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iii_core::config::{ConfigError, EntryReader};
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, LiveConfig, PrepareCx, Prepared, Registrar,
    Service, ServiceInfo, StartError, TriggerTypeSpec,
};
use serde_json::json;
use tokio::net::TcpListener;

pub use server::{build_response, HttpRoutes, Route};

/// The http service.
pub struct Http;

/// CORS settings of the REST server.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsConfig {
    /// Origins allowed (`*` for any).
    pub allowed_origins: Vec<String>,
    /// Methods announced in preflight answers (empty = the route's).
    pub allowed_methods: Vec<String>,
}

/// What the `http` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// The address to bind.
    pub host: String,
    /// The port to bind (0 picks a free one; the log line says which).
    pub port: u16,
    /// How long a request waits for its function before a 504.
    pub default_timeout: Duration,
    /// CORS; `None` allows any origin.
    pub cors: Option<CorsConfig>,
    /// Requests served at once; more wait. A request takes its place once its body is read.
    pub concurrency_request_limit: usize,
    /// The largest request body accepted; a larger one is answered 413.
    pub body_limit_bytes: usize,
    /// How long a client may take to send a request's headers (and how long an idle
    /// keep-alive connection stays open) before the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body before it is answered 408.
    pub body_read_timeout: Duration,
    /// The global middleware, in the order it runs (ascending priority, ties in config order).
    pub middleware: Vec<Middleware>,
    /// How long one middleware call may take before the request is answered 504.
    pub middleware_timeout: Duration,
}

/// One entry of the global `middleware:` list. Its only phase is `preHandler`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Middleware {
    /// The function called; it resolves in namespace `default`.
    pub function_id: String,
    /// Lower runs first.
    pub priority: i64,
}

/// Default of `body_limit_bytes`: 32 MiB. A JSON body travels inside one `invokefunction`
/// message, which workers cap at 64 MiB; half of that leaves room for headers and escaping,
/// and a laptop holds a few hundred such requests at once.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 32 << 20;
/// Default of `header_read_timeout_ms`: 10 s, ample for any real client's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default of `body_read_timeout_ms`: 30 s, the default request timeout: 32 MiB at about 1 MB/s.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Default of `middleware_timeout_ms`: 5 s. A middleware is a quick policy check (auth, rate
/// limit); one that takes longer is more likely stuck than thorough.
pub const DEFAULT_MIDDLEWARE_TIMEOUT_MS: u64 = 5_000;
/// The one middleware phase the server runs.
pub const PHASE_PRE_HANDLER: &str = "preHandler";

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            host: "127.0.0.1".into(),
            port: 3111,
            default_timeout: Duration::from_millis(30_000),
            cors: None,
            concurrency_request_limit: 1024,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            body_read_timeout: Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS),
            middleware: Vec::new(),
            middleware_timeout: Duration::from_millis(DEFAULT_MIDDLEWARE_TIMEOUT_MS),
        }
    }
}

fn configure(e: &Entry<'_>) -> Result<HttpConfig, ConfigError> {
    let mut h = HttpConfig::default();
    let at = e.key("config");
    let r = &e.reader;
    let Some(m) = r.mapping(e.config, &at)? else {
        return Ok(h);
    };
    r.check_keys(
        m,
        &at,
        &[
            "port",
            "host",
            "default_timeout",
            "cors",
            "concurrency_request_limit",
            "body_limit_bytes",
            "header_read_timeout_ms",
            "body_read_timeout_ms",
            "middleware",
            "middleware_timeout_ms",
        ],
    )?;
    let positive = |key: &str, what: &'static str| -> Result<Option<u64>, ConfigError> {
        let Some(v) = m.get(key) else { return Ok(None) };
        let at = format!("{at}.{key}");
        match r.u64(v, &at)? {
            0 => Err(r.invalid(&at, what, v)),
            n => Ok(Some(n)),
        }
    };
    if let Some(n) = positive("body_limit_bytes", "a positive number of bytes")? {
        h.body_limit_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(ms) = positive(
        "header_read_timeout_ms",
        "a positive number of milliseconds",
    )? {
        h.header_read_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = positive("body_read_timeout_ms", "a positive number of milliseconds")? {
        h.body_read_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = positive("middleware_timeout_ms", "a positive number of milliseconds")? {
        h.middleware_timeout = Duration::from_millis(ms);
    }
    if let Some(p) = m.get("port") {
        h.port = r.port(p, &format!("{at}.port"))?;
    }
    if let Some(x) = m.get("host") {
        h.host = r.host(x, &format!("{at}.host"))?;
    }
    if let Some(t) = m.get("default_timeout") {
        let ms = r.u64(t, &format!("{at}.default_timeout"))?;
        if ms == 0 {
            return Err(r.invalid(
                &format!("{at}.default_timeout"),
                "a positive number of milliseconds",
                t,
            ));
        }
        h.default_timeout = Duration::from_millis(ms);
    }
    if let Some(c) = m.get("concurrency_request_limit") {
        let n = r.u64(c, &format!("{at}.concurrency_request_limit"))?;
        if n == 0 {
            return Err(r.invalid(
                &format!("{at}.concurrency_request_limit"),
                "an integer of at least 1",
                c,
            ));
        }
        h.concurrency_request_limit = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(c) = m.get("cors") {
        if let Some(cm) = r.mapping(c, &format!("{at}.cors"))? {
            r.check_keys(
                cm,
                &format!("{at}.cors"),
                &["allowed_origins", "allowed_methods"],
            )?;
            let origins = match cm.get("allowed_origins") {
                Some(o) => r.string_list(o, &format!("{at}.cors.allowed_origins"))?,
                None => vec!["*".into()],
            };
            let methods = match cm.get("allowed_methods") {
                Some(o) => r.string_list(o, &format!("{at}.cors.allowed_methods"))?,
                None => Vec::new(),
            };
            h.cors = Some(CorsConfig {
                allowed_origins: origins,
                allowed_methods: methods,
            });
        }
    }
    if let Some(mw) = m.get("middleware") {
        h.middleware = middleware_list(r, mw, &format!("{at}.middleware"))?;
    }
    Ok(h)
}

/// Reads the global `middleware:` list and sorts it by priority (stable: equal priorities keep
/// their config order).
fn middleware_list(
    r: &EntryReader<'_>,
    v: &serde_yaml::Value,
    at: &str,
) -> Result<Vec<Middleware>, ConfigError> {
    let items = match v {
        serde_yaml::Value::Null => return Ok(Vec::new()),
        serde_yaml::Value::Sequence(items) => items,
        other => {
            return Err(r.invalid(
                at,
                "a list of {function_id, phase, priority} entries",
                other,
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let Some(m) = r.mapping(item, &at)? else {
            return Err(r.invalid(&at, "a mapping {function_id, phase, priority}", item));
        };
        r.check_keys(m, &at, &["function_id", "phase", "priority"])?;
        let key = format!("{at}.function_id");
        let function_id = match m.get("function_id") {
            Some(f) => r.string(f, &key)?,
            None => return Err(r.error(format!("`{key}` is required"))),
        };
        if function_id.trim().is_empty() {
            return Err(r.invalid(&key, "a function id", &m["function_id"]));
        }
        if let Some(p) = m.get("phase") {
            let key = format!("{at}.phase");
            if r.string(p, &key)? != PHASE_PRE_HANDLER {
                return Err(r.invalid(&key, "\"preHandler\" (the only phase)", p));
            }
        }
        let priority = match m.get("priority") {
            None => 0,
            Some(p) => {
                integer(p).ok_or_else(|| r.invalid(&format!("{at}.priority"), "an integer", p))?
            }
        };
        out.push(Middleware {
            function_id,
            priority,
        });
    }
    // `sort_by_key` is stable.
    out.sort_by_key(|m| m.priority);
    Ok(out)
}

/// A signed integer, also from a string (as `${VAR:5}` can give).
fn integer(v: &serde_yaml::Value) -> Option<i64> {
    match v {
        serde_yaml::Value::Number(n) => n.as_i64(),
        serde_yaml::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Service for Http {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "http",
            worker: "iii-http",
            deprecated_names: &["iii-http"],
            repeatable: false,
            always_on: false,
        }
    }

    fn config_schema(&self) -> Option<serde_json::Value> {
        use crate::config_schema::*;
        let ms = |d: &str| field(LIVE, d, uint(1, None));
        Some(block(
            "iii-http",
            vec![
                ("port", field(REBIND, "REST listener port (3111)", port())),
                (
                    "host",
                    field(REBIND, "REST listener address (127.0.0.1)", host()),
                ),
                ("default_timeout", ms("handler timeout in ms (30000)")),
                (
                    "cors",
                    field(
                        LIVE,
                        "CORS origins and methods",
                        serde_json::json!({"type": ["object", "null"], "additionalProperties": false,
                            "properties": {
                                "allowed_origins": {"type": "array", "items": {"type": "string"}},
                                "allowed_methods": {"type": "array", "items": {"type": "string"}}}}),
                    ),
                ),
                (
                    "concurrency_request_limit",
                    field(REBIND, "requests served at once (1024)", uint(1, None)),
                ),
                (
                    "body_limit_bytes",
                    field(REBIND, "largest request body", uint(1, None)),
                ),
                ("header_read_timeout_ms", ms("time to read request headers")),
                ("body_read_timeout_ms", ms("time to read a request body")),
                (
                    "middleware",
                    field(
                        LIVE,
                        "global preHandler middleware, by priority",
                        serde_json::json!({"type": ["array", "null"], "items": {
                            "type": "object", "additionalProperties": false,
                            "required": ["function_id"],
                            "properties": {
                                "function_id": function_id(),
                                "phase": {"const": PHASE_PRE_HANDLER},
                                "priority": {"anyOf": [{"type": "integer"},
                                    {"type": "string", "pattern": "^\\s*[-+]?[0-9]+\\s*$"}]}}}}),
                    ),
                ),
                (
                    "middleware_timeout_ms",
                    ms("time a middleware may take (5000)"),
                ),
            ],
            false,
        ))
    }

    /// Its only exclusive resource is its port.
    fn may_overlap(&self) -> bool {
        true
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let cfg = match entries.first() {
            Some(e) => configure(e)?,
            None => HttpConfig::default(),
        };
        Ok(Box::new(cfg))
    }
}

struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    settings: server::LiveSettings,
    routes: Arc<HttpRoutes>,
}

/// Applies live-tier changes (CORS, timeouts, body limit, middleware) to the running server;
/// the next request sees them.
struct LiveHttp(server::LiveSettings);

impl LiveConfig for LiveHttp {
    fn apply_live(&self, next: &dyn Configured) -> Result<(), String> {
        let Some(next) = next.as_any().downcast_ref::<HttpConfig>() else {
            return Err("not an http configuration".into());
        };
        let mut cur = self.0.write();
        if (
            next.host.as_str(),
            next.port,
            next.concurrency_request_limit,
        ) != (cur.host.as_str(), cur.port, cur.concurrency_request_limit)
        {
            return Err("host, port and concurrency_request_limit need a rebind".into());
        }
        *cur = Arc::new(next.clone());
        Ok(())
    }
}

#[async_trait::async_trait]
impl Configured for HttpConfig {
    async fn prepare(
        self: Box<Self>,
        _cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let bind_err = |source| StartError::Bind {
            what: "http".into(),
            host: self.host.clone(),
            port: self.port,
            source,
        };
        let listener = TcpListener::bind((self.host.as_str(), self.port))
            .await
            .map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        tracing::info!("REST trigger server listening on http://{addr}");
        Ok(Box::new(Bound {
            listener,
            addr,
            settings: Arc::new(parking_lot::RwLock::new(Arc::new(*self))),
            routes: Arc::new(HttpRoutes::default()),
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Prepared for Bound {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        reg.trigger_type(TriggerTypeSpec {
            id: "http".into(),
            description: "HTTP routes on the REST trigger server".into(),
            config_schema: Some(json!({"type": "object", "required": ["api_path"], "properties": {
                "api_path": {"type": "string"},
                "http_method": {"type": "string", "enum": ["GET","POST","PUT","DELETE","PATCH","HEAD","OPTIONS"]},
                "condition_function_id": {"type": "string"},
                "middleware_function_ids": {"type": "array", "items": {"type": "string"}}}})),
            request_schema: Some(json!({"type": "object", "properties": {
                "query_params": {"type": "object"}, "path_params": {"type": "object"},
                "headers": {"type": "object"}, "path": {"type": "string"},
                "method": {"type": "string"}, "body": {}}})),
            response_schema: Some(json!({"type": "object", "properties": {
                "status_code": {"type": "integer"}, "headers": {}, "body": {}}})),
            provider: self.routes.clone(),
        });
    }

    fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        vec![("REST trigger server", self.addr)]
    }

    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let b = *self;
        Some(Box::pin(server::serve(
            core, b.routes, b.listener, b.settings, stop,
        )))
    }

    fn live(&self) -> Option<Arc<dyn LiveConfig>> {
        Some(Arc::new(LiveHttp(self.settings.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<HttpConfig, String> {
        let config: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        let e = Entry {
            at: "workers[0](http)".into(),
            name: "http",
            config: &config,
            reader: EntryReader { path: "test.yaml" },
        };
        configure(&e).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_default_and_are_read_and_checked() {
        let d = read("{}").unwrap();
        assert_eq!(d.body_limit_bytes, DEFAULT_BODY_LIMIT_BYTES);
        assert_eq!(
            d.header_read_timeout,
            Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS)
        );
        assert_eq!(
            d.body_read_timeout,
            Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS)
        );
        let c =
            read("{body_limit_bytes: 1024, header_read_timeout_ms: 50, body_read_timeout_ms: 70}")
                .unwrap();
        assert_eq!(c.body_limit_bytes, 1024);
        assert_eq!(c.header_read_timeout, Duration::from_millis(50));
        assert_eq!(c.body_read_timeout, Duration::from_millis(70));
        for key in [
            "body_limit_bytes",
            "header_read_timeout_ms",
            "body_read_timeout_ms",
        ] {
            let e = read(&format!("{{{key}: 0}}")).unwrap_err();
            assert!(e.contains(&format!("workers[0](http).config.{key}")), "{e}");
            let e = read(&format!("{{{key}: lots}}")).unwrap_err();
            assert!(e.contains(&format!("workers[0](http).config.{key}")), "{e}");
        }
    }

    fn ids(c: &HttpConfig) -> Vec<(&str, i64)> {
        c.middleware
            .iter()
            .map(|m| (m.function_id.as_str(), m.priority))
            .collect()
    }

    #[test]
    fn middleware_is_sorted_by_priority_keeping_config_order_on_ties() {
        let d = read("{}").unwrap();
        assert!(d.middleware.is_empty());
        assert_eq!(
            d.middleware_timeout,
            Duration::from_millis(DEFAULT_MIDDLEWARE_TIMEOUT_MS)
        );
        assert!(read("{middleware: null}").unwrap().middleware.is_empty());
        assert!(read("{middleware: []}").unwrap().middleware.is_empty());
        let c = read(
            "{middleware_timeout_ms: 7, middleware: [
                {function_id: late, priority: 10},
                {function_id: first, phase: preHandler, priority: -5},
                {function_id: zero_a},
                {function_id: mid, priority: '3'},
                {function_id: zero_b, priority: 0}]}",
        )
        .unwrap();
        assert_eq!(
            ids(&c),
            [
                ("first", -5),
                ("zero_a", 0),
                ("zero_b", 0),
                ("mid", 3),
                ("late", 10)
            ]
        );
        assert_eq!(c.middleware_timeout, Duration::from_millis(7));
    }

    #[test]
    fn bad_middleware_entries_are_errors_naming_the_key() {
        let at = "workers[0](http).config";
        let cases = [
            // A phase other than preHandler.
            (
                "{middleware: [{function_id: a}, {function_id: b, phase: onRequest}]}",
                format!("`{at}.middleware[1].phase` must be \"preHandler\""),
            ),
            (
                "{middleware: [{function_id: a, phase: 3}]}",
                format!("`{at}.middleware[0].phase` must be a string"),
            ),
            // An unknown key in an entry.
            (
                "{middleware: [{function_id: a, order: 1}]}",
                format!("unknown key `{at}.middleware[0].order`"),
            ),
            // A priority that is no integer.
            (
                "{middleware: [{function_id: a, priority: high}]}",
                format!("`{at}.middleware[0].priority` must be an integer, found \"high\""),
            ),
            (
                "{middleware: [{function_id: a, priority: 1.5}]}",
                format!("`{at}.middleware[0].priority` must be an integer"),
            ),
            (
                "{middleware: [{priority: 1}]}",
                format!("`{at}.middleware[0].function_id` is required"),
            ),
            (
                "{middleware: [{function_id: ' '}]}",
                format!("`{at}.middleware[0].function_id` must be a function id"),
            ),
            (
                "{middleware: [auth]}",
                format!("`{at}.middleware[0]` must be a mapping"),
            ),
            (
                "{middleware: {function_id: a}}",
                format!("`{at}.middleware` must be a list"),
            ),
            (
                "{middleware_timeout_ms: 0}",
                format!("`{at}.middleware_timeout_ms` must be a positive number"),
            ),
        ];
        for (yaml, want) in cases {
            let e = read(yaml).unwrap_err();
            assert!(e.contains(&want), "{yaml}: {e}");
        }
    }
}
