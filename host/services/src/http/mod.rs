//! The REST trigger server and the `http` trigger type (config entry `http`; `iii-http` is
//! the deprecated name). Workers bind functions to routes; requests become calls.

mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iii_core::config::ConfigError;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError, TriggerTypeSpec,
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
}

/// Default of `body_limit_bytes`: 32 MiB. A JSON body travels inside one `invokefunction`
/// message, which workers cap at 64 MiB; half of that leaves room for headers and escaping,
/// and a laptop holds a few hundred such requests at once.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 32 << 20;
/// Default of `header_read_timeout_ms`: 10 s, ample for any real client's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default of `body_read_timeout_ms`: 30 s, the default request timeout: 32 MiB at about 1 MB/s.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;

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
        match mw {
            serde_yaml::Value::Null => {}
            serde_yaml::Value::Sequence(items) if items.is_empty() => {}
            _ => {
                return Err(r.error(format!(
                    "`{at}.middleware` is not supported by this engine yet; remove it"
                )))
            }
        }
    }
    Ok(h)
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
    cfg: HttpConfig,
    routes: Arc<HttpRoutes>,
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
            cfg: *self,
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
            core, b.routes, b.listener, b.cfg, stop,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_core::config::EntryReader;

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
}
