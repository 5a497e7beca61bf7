//! Observability (config entry `iii-observability`, always on): logs, traces and metrics.
//!
//! - Worker logs (`engine::log::*`, and the SDK loggers' LOGS frames on `/otel`) go into a ring
//!   bounded by count and bytes, queried by `engine::logs::*` and pushed to `log` triggers.
//! - The SDKs' spans (OTLP frames on `/otel`) and the engine's own `call <fn>` spans for
//!   builtin calls that arrive with a `traceparent` go into a span ring, queried by
//!   `engine::traces::*`, pushed to `trace` triggers when a root span ends, and forwarded to an
//!   OTLP collector when `exporter` is `otlp` or `both`.
//! - Per-function invocation counts, errors and latency, worker counts and the SDKs' gauges
//!   are served by `engine::metrics::list` and as Prometheus text on `prometheus_address`.
//!
//! The core reports invocations and `/otel` frames through its tap ([`iii_core::tap`]); with
//! `enabled: false` no tap is installed and the call path takes no time stamps.

mod export;
mod metrics;
mod otlp;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use iii_core::config::ConfigError;
use iii_core::tap::{InvocationEvent, Observer};
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, FunctionSpec, NoInput, PrepareCx, Prepared,
    Registrar, Service, ServiceInfo, StartError, TriggerTypeSpec, WeakCore,
};
use iii_protocol::ErrorBody;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use metrics::{Metrics, Reported};
use store::{LogQuery, LogRecord, LogStore, SpanRecord, SpanStore, TraceQuery, LEVELS};

const WORKER: &str = "iii-observability";
/// The Prometheus endpoint when none is configured.
pub const DEFAULT_PROMETHEUS: &str = "127.0.0.1:9464";

/// The observability service.
pub struct Observability;

/// Where spans go besides memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Exporter {
    /// Kept in memory only.
    #[default]
    Memory,
    /// Forwarded to the OTLP collector only.
    Otlp,
    /// Both.
    Both,
}

/// What the `iii-observability` entry configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservabilityConfig {
    /// The engine log level, if the entry sets one.
    pub level: Option<String>,
    /// The engine log format: `default` or `json` (JSON lines on stderr).
    pub format: Option<String>,
    /// False turns the tap off: nothing is recorded and the call path pays nothing.
    pub enabled: bool,
    /// `service.name` of the engine's own spans.
    pub service_name: String,
    /// Where spans and logs go besides memory.
    pub exporter: Exporter,
    /// The OTLP/HTTP collector base URL (`/v1/traces` and `/v1/logs` are appended).
    pub endpoint: String,
    /// Store worker logs.
    pub logs_enabled: bool,
    /// Log records kept in memory.
    pub logs_max_count: usize,
    /// Bytes of log records kept in memory.
    pub logs_max_bytes: usize,
    /// Spans kept in memory.
    pub memory_max_spans: usize,
    /// Count invocations.
    pub metrics_enabled: bool,
    /// `host:port` of the Prometheus endpoint; `None` turns it off.
    pub prometheus_address: Option<String>,
    /// Was the address configured (a bind failure then fails start-up) or the default?
    pub prometheus_explicit: bool,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            level: None,
            format: None,
            enabled: true,
            service_name: "iii".into(),
            exporter: Exporter::Memory,
            endpoint: "http://localhost:4318".into(),
            logs_enabled: true,
            logs_max_count: 10_000,
            logs_max_bytes: 16 << 20,
            memory_max_spans: 10_000,
            metrics_enabled: true,
            prometheus_address: Some(DEFAULT_PROMETHEUS.into()),
            prometheus_explicit: false,
        }
    }
}

impl Service for Observability {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: WORKER,
            worker: WORKER,
            deprecated_names: &[],
            repeatable: false,
            always_on: true,
        }
    }

    fn config_schema(&self) -> Option<Value> {
        use crate::config_schema::*;
        // Upstream's sampling, storage and alert keys are accepted and not read.
        Some(block(
            "iii-observability",
            vec![
                (
                    "level",
                    field(RESTART, "engine log level (info)", json!({"enum": LEVELS})),
                ),
                (
                    "format",
                    field(
                        RESTART,
                        "engine log format: default, or json (JSON lines on stderr)",
                        json!({"enum": ["default", "json"]}),
                    ),
                ),
                (
                    "enabled",
                    field(
                        RESTART,
                        "record logs, spans and metrics (true)",
                        json!({"type": "boolean"}),
                    ),
                ),
                (
                    "service_name",
                    field(
                        RESTART,
                        "service.name of the engine's own spans (iii)",
                        json!({"type": "string"}),
                    ),
                ),
                (
                    "exporter",
                    field(
                        RESTART,
                        "memory, otlp or both (memory)",
                        json!({"enum": ["memory", "otlp", "both"]}),
                    ),
                ),
                (
                    "endpoint",
                    field(
                        RESTART,
                        "OTLP/HTTP collector base URL (http://localhost:4318)",
                        json!({"type": "string"}),
                    ),
                ),
                (
                    "logs_enabled",
                    field(
                        RESTART,
                        "store worker logs (true)",
                        json!({"type": "boolean"}),
                    ),
                ),
                (
                    "logs_max_count",
                    field(RESTART, "log records kept in memory (10000)", uint(1, None)),
                ),
                (
                    "logs_max_bytes",
                    field(
                        RESTART,
                        "bytes of log records kept in memory (16 MiB)",
                        uint(1024, None),
                    ),
                ),
                (
                    "memory_max_spans",
                    field(RESTART, "spans kept in memory (10000)", uint(1, None)),
                ),
                (
                    "metrics_enabled",
                    field(
                        RESTART,
                        "count invocations (true)",
                        json!({"type": "boolean"}),
                    ),
                ),
                (
                    "prometheus_address",
                    field(
                        RESTART,
                        "host:port of the Prometheus endpoint (127.0.0.1:9464); empty turns it off",
                        json!({"type": ["string", "null"]}),
                    ),
                ),
            ],
            true,
        ))
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut cfg = ObservabilityConfig::default();
        for e in entries {
            let Some(m) = e.reader.mapping(e.config, &e.key("config"))? else {
                continue;
            };
            let get = |k: &str| m.get(k).filter(|v| !v.is_null());
            let one_of = |k: &str,
                          allowed: &[&str],
                          expected: &'static str|
             -> Result<Option<String>, ConfigError> {
                let Some(v) = get(k) else { return Ok(None) };
                let key = e.key(&format!("config.{k}"));
                let s = e.reader.string(v, &key)?;
                if !allowed.contains(&s.as_str()) {
                    return Err(e
                        .reader
                        .invalid(&key, expected, &serde_yaml::Value::String(s)));
                }
                Ok(Some(s))
            };
            let boolean = |k: &str, d: bool| match get(k) {
                Some(v) => e.reader.bool(v, &e.key(&format!("config.{k}"))),
                None => Ok(d),
            };
            let count = |k: &str, d: usize, min: u64| -> Result<usize, ConfigError> {
                let Some(v) = get(k) else { return Ok(d) };
                let key = e.key(&format!("config.{k}"));
                let n = e.reader.u64(v, &key)?;
                if n < min {
                    return Err(e.reader.invalid(&key, "a larger number", v));
                }
                Ok(n as usize)
            };
            cfg.level =
                one_of("level", &LEVELS, "one of trace, debug, info, warn, error")?.or(cfg.level);
            cfg.format = one_of("format", &["default", "json"], "default or json")?.or(cfg.format);
            cfg.enabled = boolean("enabled", cfg.enabled)?;
            cfg.logs_enabled = boolean("logs_enabled", cfg.logs_enabled)?;
            cfg.metrics_enabled = boolean("metrics_enabled", cfg.metrics_enabled)?;
            cfg.logs_max_count = count("logs_max_count", cfg.logs_max_count, 1)?;
            cfg.logs_max_bytes = count("logs_max_bytes", cfg.logs_max_bytes, 1024)?;
            cfg.memory_max_spans = count("memory_max_spans", cfg.memory_max_spans, 1)?;
            if let Some(x) = one_of(
                "exporter",
                &["memory", "otlp", "both"],
                "memory, otlp or both",
            )? {
                cfg.exporter = match x.as_str() {
                    "otlp" => Exporter::Otlp,
                    "both" => Exporter::Both,
                    _ => Exporter::Memory,
                };
            }
            if let Some(v) = get("service_name") {
                cfg.service_name = e.reader.string(v, &e.key("config.service_name"))?;
            }
            if let Some(v) = get("endpoint") {
                let key = e.key("config.endpoint");
                let s = e.reader.string(v, &key)?;
                if url::Url::parse(&s).map(|u| u.scheme().starts_with("http")) != Ok(true) {
                    return Err(e.reader.invalid(&key, "an http(s) URL", v));
                }
                cfg.endpoint = s;
            }
            if let Some(v) = m.get("prometheus_address") {
                let key = e.key("config.prometheus_address");
                if v.is_null() {
                    cfg.prometheus_address = None;
                } else {
                    let s = e.reader.string(v, &key)?;
                    if s.trim().is_empty() {
                        cfg.prometheus_address = None;
                    } else {
                        if s.rsplit_once(':')
                            .and_then(|(_, p)| p.parse::<u16>().ok())
                            .is_none()
                        {
                            return Err(e.reader.invalid(&key, "host:port", v));
                        }
                        cfg.prometheus_address = Some(s);
                    }
                }
                cfg.prometheus_explicit = true;
            }
        }
        Ok(Box::new(cfg))
    }
}

#[async_trait::async_trait]
impl Configured for ObservabilityConfig {
    async fn prepare(
        self: Box<Self>,
        _cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let cfg = *self;
        let mut prometheus = None;
        if let (true, Some(addr)) = (cfg.enabled && cfg.metrics_enabled, &cfg.prometheus_address) {
            match tokio::net::TcpListener::bind(addr.as_str()).await {
                Ok(l) => prometheus = Some(l),
                Err(source) if cfg.prometheus_explicit => {
                    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
                    return Err(StartError::Bind {
                        what: "Prometheus endpoint (iii-observability)".into(),
                        host: host.into(),
                        port: port.parse().unwrap_or(0),
                        source,
                    });
                }
                // The default port is normally taken when several engines share a machine (the
                // first one serves it): not a fault, so info, not a warning; this engine then
                // serves metrics through `engine::metrics::list` only.
                Err(e) => {
                    // The OS error is left out on purpose: start-up failures print theirs once.
                    let _ = e;
                    tracing::info!(address = %addr, "Prometheus endpoint not started: the default address is taken (another engine on this machine serves it); set `prometheus_address` to give this engine its own")
                }
            }
        }
        let prometheus_addr = prometheus.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(a) = prometheus_addr {
            tracing::info!("Prometheus metrics on http://{a}/metrics");
        }
        let export = matches!(cfg.exporter, Exporter::Otlp | Exporter::Both)
            .then(|| export::Exporter::new(&cfg.endpoint));
        let state = Arc::new(State {
            logs: LogStore::new(cfg.logs_max_count, cfg.logs_max_bytes),
            spans: SpanStore::new(cfg.memory_max_spans),
            metrics: Arc::new(Metrics::default()),
            core: std::sync::OnceLock::new(),
            export,
            cfg,
        });
        Ok(Box::new(Ready {
            state,
            prometheus,
            prometheus_addr,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Everything the service holds, shared by its functions, the tap and its tasks.
struct State {
    cfg: ObservabilityConfig,
    logs: LogStore,
    spans: SpanStore,
    metrics: Arc<Metrics>,
    core: std::sync::OnceLock<WeakCore>,
    export: Option<export::Exporter>,
}

impl State {
    fn core(&self) -> Option<Core> {
        self.core.get().and_then(WeakCore::upgrade)
    }

    fn keep_spans(&self) -> bool {
        self.cfg.exporter != Exporter::Otlp
    }

    fn add_log(&self, r: LogRecord) {
        if !self.cfg.logs_enabled {
            return;
        }
        if let Some(core) = self.core() {
            let rank = LEVELS.iter().position(|l| *l == r.level).unwrap_or(2);
            core.fire("log", r.to_json(), move |config| {
                match config.get("level").and_then(Value::as_str) {
                    None | Some("all") => true,
                    Some(min) => LEVELS
                        .iter()
                        .position(|l| *l == min)
                        .is_none_or(|m| rank >= m),
                }
            });
        }
        if let Some(x) = &self.export {
            x.log(&r);
        }
        self.logs.push(r);
    }

    fn add_spans(&self, spans: Vec<SpanRecord>) {
        let core = self.core();
        for s in spans {
            if let Some(x) = &self.export {
                x.span(&s);
            }
            let ends_trace = s.parent_span_id.is_none();
            let (trace_id, service, status) =
                (s.trace_id.clone(), s.service_name.clone(), s.status);
            if self.keep_spans() {
                self.spans.push(s);
            }
            if let (true, Some(core)) = (ends_trace, &core) {
                let stored = self.spans.trace(&trace_id);
                // The trace's status: an error anywhere in it, else its root's.
                let status = if stored.iter().any(|s| s.status == "error") {
                    "error"
                } else {
                    status
                };
                let spans: Vec<Value> = stored.iter().map(SpanRecord::to_json).collect();
                let payload =
                    json!({"trace_id": trace_id, "trace_ids": [trace_id], "spans": spans});
                core.fire("trace", payload, move |config| {
                    config
                        .get("service_name")
                        .and_then(Value::as_str)
                        .is_none_or(|n| n == service)
                        && config
                            .get("status")
                            .and_then(Value::as_str)
                            .is_none_or(|st| st == status)
                });
            }
        }
    }
}

/// The core's tap, installed at `install`.
struct Tap(Arc<State>);

/// (trace id, parent span id) of a W3C `traceparent`.
fn parse_traceparent(tp: &str) -> Option<(&str, &str)> {
    let mut it = tp.split('-');
    let (_v, t, p) = (it.next()?, it.next()?, it.next()?);
    let hex = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(t, 32) && hex(p, 16) && t.bytes().any(|b| b != b'0')).then_some((t, p))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Observer for Tap {
    fn invocation(&self, ev: &InvocationEvent<'_>) {
        let st = &self.0;
        if st.cfg.metrics_enabled {
            st.metrics
                .record(ev.function_id, ev.error_code, ev.duration);
        }
        // The engine's own span for a builtin call made in a trace (spec section 11: worker
        // routed calls are covered by the worker's `execute` span).
        let Some((trace_id, parent)) = ev
            .builtin
            .then_some(ev.traceparent)
            .flatten()
            .and_then(parse_traceparent)
        else {
            return;
        };
        let end = now_ns();
        let mut attributes = Map::new();
        attributes.insert("iii.function.id".into(), json!(ev.function_id));
        if let Some(c) = ev.caller {
            attributes.insert("iii.caller.worker_id".into(), json!(c));
        }
        if let Some(code) = ev.error_code {
            attributes.insert("error.type".into(), json!(code));
            attributes.insert(
                "error.message".into(),
                json!(ev.error_message.unwrap_or_default()),
            );
        }
        let span_id = format!("{:016x}", (uuid::Uuid::new_v4().as_u128() as u64) | 1);
        st.add_spans(vec![SpanRecord {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id,
            parent_span_id: Some(parent.to_ascii_lowercase()),
            name: format!("call {}", ev.function_id),
            kind: 2,
            service_name: st.cfg.service_name.clone(),
            start_unix_nano: end.saturating_sub(ev.duration.as_nanos() as u64),
            end_unix_nano: end,
            status: if ev.error_code.is_some() {
                "error"
            } else {
                "ok"
            },
            status_message: ev.error_message.map(str::to_string),
            attributes,
            events: Vec::new(),
        }]);
    }

    fn telemetry_frame(&self, frame: &[u8], peer: &str) {
        let st = &self.0;
        st.metrics.telemetry_frames.fetch_add(1, Ordering::Relaxed);
        match otlp::decode(frame) {
            Ok(otlp::Frame::Logs(req)) => {
                for r in otlp::logs(req, now_ns()) {
                    st.add_log(r);
                }
            }
            Ok(otlp::Frame::Spans(req)) => st.add_spans(otlp::spans(req)),
            Ok(otlp::Frame::Metrics(req)) => {
                let mut reported = st.metrics.reported.lock();
                for (svc, name, v) in otlp::metric_points(req) {
                    reported.insert((svc, name), v);
                }
            }
            Err(e) => {
                st.metrics
                    .telemetry_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer, error = %e, "telemetry frame dropped");
            }
        }
    }
}

/// The prepared service.
struct Ready {
    state: Arc<State>,
    prometheus: Option<tokio::net::TcpListener>,
    prometheus_addr: Option<SocketAddr>,
}

#[derive(Deserialize, JsonSchema)]
struct LogIn {
    message: String,
    trace_id: Option<String>,
    span_id: Option<String>,
    data: Option<Value>,
    service_name: Option<String>,
    function_id: Option<String>,
    /// The SDKs' name for the calling function.
    function_name: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct TreeIn {
    trace_id: String,
}

#[derive(Deserialize, JsonSchema)]
#[allow(
    dead_code,
    reason = "the key is validated; baggage is not stored in the engine"
)]
struct BaggageGetIn {
    key: String,
}

#[derive(Deserialize, JsonSchema)]
#[allow(
    dead_code,
    reason = "the fields are validated; baggage is not stored in the engine"
)]
struct BaggageSetIn {
    key: String,
    value: String,
}

/// `log` and `trace` bindings need nothing armed: records are matched against their config
/// as they arrive.
struct Matched(&'static [&'static str]);

impl BuiltinTriggerType for Matched {
    fn register(&self, b: &Binding) -> Result<(), String> {
        if let Some(level) = b.config.get("level").filter(|v| !v.is_null()) {
            match level.as_str() {
                Some(l) if self.0.contains(&l) => {}
                _ => return Err(format!("`level` must be one of {}", self.0.join(", "))),
            }
        }
        if let Some(s) = b.config.get("status").filter(|v| !v.is_null()) {
            if !matches!(s.as_str(), Some("ok" | "error" | "unset")) {
                return Err("`status` must be ok, error or unset".into());
            }
        }
        Ok(())
    }
    fn unregister(&self, _b: &Binding) {}
}

fn bad_input(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(iii_protocol::codes::INVALID_ARGUMENTS, e.to_string())
}

impl Prepared for Ready {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        let st = self.state.clone();
        let _ = st.core.set(reg.core().downgrade());
        if st.cfg.enabled && !reg.core().set_observer(Arc::new(Tap(st.clone()))) {
            tracing::debug!("an observability tap was already installed; it stays");
        }
        let workers_core = reg.core().downgrade();
        st.metrics.set_gauges(Box::new(move || {
            let Some(core) = workers_core.upgrade() else {
                return Vec::new();
            };
            vec![
                ("iii_workers".into(), Vec::new(), core.conns().len() as f64),
                (
                    "iii_in_process_workers".into(),
                    Vec::new(),
                    core.in_process_workers().len() as f64,
                ),
                (
                    "iii_functions".into(),
                    Vec::new(),
                    core.all_functions().len() as f64,
                ),
                (
                    "iii_pending_invocations".into(),
                    Vec::new(),
                    core.pending_len() as f64,
                ),
            ]
        }));

        for level in LEVELS {
            let id = format!("engine::log::{level}");
            let st = st.clone();
            reg.function(
                FunctionSpec::typed(id, "Write a log record", move |_e: Core, ctx, i: LogIn| {
                    let st = st.clone();
                    async move {
                        let svc = i.service_name.clone().unwrap_or_default();
                        let data = i.data.as_ref().map(|d| d.to_string()).unwrap_or_default();
                        match level {
                            "error" => tracing::error!(target: "worker", service = %svc, data = %data, "{}", i.message),
                            "warn" => tracing::warn!(target: "worker", service = %svc, data = %data, "{}", i.message),
                            "debug" => tracing::debug!(target: "worker", service = %svc, data = %data, "{}", i.message),
                            "trace" => tracing::trace!(target: "worker", service = %svc, data = %data, "{}", i.message),
                            _ => tracing::info!(target: "worker", service = %svc, data = %data, "{}", i.message),
                        }
                        let now = now_ns();
                        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
                        st.add_log(LogRecord {
                            timestamp_unix_nano: now,
                            observed_unix_nano: now,
                            level,
                            severity_text: level.to_uppercase(),
                            message: i.message,
                            trace_id: nonempty(i.trace_id).map(|t| t.to_ascii_lowercase()),
                            span_id: nonempty(i.span_id).map(|t| t.to_ascii_lowercase()),
                            service_name: nonempty(i.service_name),
                            worker: ctx.caller.as_ref().and_then(|c| c.name()),
                            function_id: nonempty(i.function_id).or(nonempty(i.function_name)),
                            data: i.data,
                            attributes: Map::new(),
                            scope_name: None,
                            scope_version: None,
                        });
                        Ok(Value::Null)
                    }
                })
                .returns(json!({"type": "null"})),
            );
        }
        let s = st.clone();
        reg.function(
            FunctionSpec::typed("engine::logs::list", "Stored log records, newest first", move |_e: Core, _ctx, q: LogQuery| {
                let s = s.clone();
                async move {
                    if let Some(l) = &q.level {
                        if !LEVELS.contains(&l.as_str()) {
                            return Err(bad_input("`level` must be one of trace, debug, info, warn, error"));
                        }
                    }
                    let (logs, total) = s.logs.query(&q);
                    Ok(json!({"logs": logs, "total": total}))
                }
            })
            .returns(json!({"type": "object", "properties": {"logs": {"type": "array"}, "total": {"type": "integer"}}})),
        );
        let s = st.clone();
        reg.function(
            FunctionSpec::typed(
                "engine::logs::clear",
                "Drop the stored log records",
                move |_e: Core, _ctx, _i: NoInput| {
                    let s = s.clone();
                    async move { Ok(json!({"cleared": s.logs.clear()})) }
                },
            )
            .returns(json!({"type": "object", "properties": {"cleared": {"type": "integer"}}})),
        );
        let s = st.clone();
        reg.function(
            FunctionSpec::typed("engine::traces::list", "Stored traces, newest first", move |_e: Core, _ctx, q: TraceQuery| {
                let s = s.clone();
                async move {
                    let (traces, total) = s.spans.list(&q);
                    Ok(json!({"traces": traces, "total": total}))
                }
            })
            .returns(json!({"type": "object", "properties": {"traces": {"type": "array"}, "total": {"type": "integer"}}})),
        );
        let s = st.clone();
        reg.function(
            FunctionSpec::typed("engine::traces::tree", "The spans of one trace", move |_e: Core, _ctx, i: TreeIn| {
                let s = s.clone();
                async move {
                    let spans = s.spans.trace(&i.trace_id);
                    if spans.is_empty() {
                        return Err(ErrorBody::new(iii_protocol::codes::NOT_FOUND, format!("no stored spans for trace {}", i.trace_id)));
                    }
                    let spans: Vec<Value> = spans.iter().map(SpanRecord::to_json).collect();
                    Ok(json!({"trace_id": i.trace_id.to_ascii_lowercase(), "spans": spans}))
                }
            })
            .returns(json!({"type": "object", "properties": {"trace_id": {"type": "string"}, "spans": {"type": "array"}}})),
        );
        let s = st.clone();
        reg.function(
            FunctionSpec::typed(
                "engine::traces::clear",
                "Drop the stored spans",
                move |_e: Core, _ctx, _i: NoInput| {
                    let s = s.clone();
                    async move { Ok(json!({"cleared": s.spans.clear()})) }
                },
            )
            .returns(json!({"type": "object", "properties": {"cleared": {"type": "integer"}}})),
        );
        let s = st.clone();
        reg.function(
            FunctionSpec::typed("engine::metrics::list", "Engine metrics", move |e: Core, _ctx, _i: NoInput| {
                let s = s.clone();
                async move {
                    let mut v = s.metrics.list(&Reported::read(Some(e)).await);
                    let (n, bytes) = s.logs.usage();
                    if let Some(items) = v["metrics"].as_array_mut() {
                        items.push(json!({"name": "iii_log_records", "kind": "gauge", "labels": {}, "value": n}));
                        items.push(json!({"name": "iii_log_bytes", "kind": "gauge", "labels": {}, "value": bytes}));
                        items.push(json!({"name": "iii_spans", "kind": "gauge", "labels": {}, "value": s.spans.len()}));
                    }
                    Ok(v)
                }
            })
            .returns(json!({"type": "object", "properties": {"metrics": {"type": "array"}}})),
        );
        reg.trigger_type(TriggerTypeSpec {
            id: "log".into(),
            description: "Each stored log record at or above a level".into(),
            config_schema: Some(json!({"type": "object", "properties": {
                "level": {"enum": ["all", "trace", "debug", "info", "warn", "error"]}}})),
            request_schema: Some(json!({"type": "object", "properties": {
                "timestamp_ms": {"type": "integer"}, "level": {"type": "string"}, "message": {"type": "string"},
                "trace_id": {"type": "string"}, "span_id": {"type": "string"}, "service_name": {"type": "string"}}})),
            response_schema: None,
            provider: Arc::new(Matched(&["all", "trace", "debug", "info", "warn", "error"])),
        });
        reg.trigger_type(TriggerTypeSpec {
            id: "trace".into(),
            description: "A trace whose root span ended".into(),
            config_schema: Some(json!({"type": "object", "properties": {
                "service_name": {"type": "string"}, "status": {"enum": ["ok", "error", "unset"]}}})),
            request_schema: Some(json!({"type": "object", "properties": {
                "trace_id": {"type": "string"}, "trace_ids": {"type": "array"}, "spans": {"type": "array"}}})),
            response_schema: None,
            provider: Arc::new(Matched(&[])),
        });
        install_diagnostics(reg);
    }

    fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        self.prometheus_addr
            .map(|a| vec![("Prometheus endpoint", a)])
            .unwrap_or_default()
    }

    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let Ready {
            state, prometheus, ..
        } = *self;
        let exporter = state.export.as_ref().map(|x| x.run(stop.clone()));
        Some(Box::pin(async move {
            let serve = async {
                if let Some(l) = prometheus {
                    export::serve_prometheus(
                        l,
                        state.metrics.clone(),
                        core.downgrade(),
                        stop.clone(),
                    )
                    .await;
                }
            };
            match exporter {
                Some(x) => {
                    let _ = tokio::join!(serve, x);
                }
                None => serve.await,
            }
        }))
    }
}

fn install_diagnostics(reg: &mut Registrar<'_>) {
    reg.function(
        FunctionSpec::typed(
            "engine::baggage::get",
            "Read a baggage entry (diagnostic)",
            |_e: Core, _ctx, _i: BaggageGetIn| async move { Ok(json!({ "value": null })) },
        )
        .returns(json!({"type": "object", "properties": {"value": {}}})),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::baggage::set",
            "Set a baggage entry (not propagated)",
            |_e: Core, _ctx, _i: BaggageSetIn| async move {
                Ok(json!({ "success": true, "note": "baggage set through this function is not propagated; send it with the call instead" }))
            },
        )
        .returns(json!({"type": "object", "properties": {"success": {"type": "boolean"}, "note": {"type": "string"}}})),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::baggage::get_all",
            "All baggage entries (diagnostic)",
            |_e: Core, _ctx, _i: NoInput| async move { Ok(json!({ "baggage": {} })) },
        )
        .returns(json!({"type": "object", "properties": {"baggage": {"type": "object"}}})),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::health::check",
            "Engine health",
            |e: Core, _ctx, _i: NoInput| async move {
                Ok(json!({
                    "status": "healthy",
                    "workers": e.conns().len(),
                    "functions": e.all_functions().len(),
                    "pending_invocations": e.pending_len(),
                    "uptime_ms": iii_core::conn::now_ms().saturating_sub(e.started_ms()),
                    "version": env!("CARGO_PKG_VERSION"),
                }))
            },
        )
        .returns(json!({"type": "object", "properties": {
            "status": {"type": "string"}, "workers": {"type": "integer"},
            "functions": {"type": "integer"}, "pending_invocations": {"type": "integer"},
            "uptime_ms": {"type": "integer"}, "version": {"type": "string"}}})),
    );
}
