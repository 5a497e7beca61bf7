//! Forwarding spans and logs to an OTLP collector (OTLP/HTTP, protobuf bodies built from the
//! `opentelemetry-proto` types), and the Prometheus endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use iii_core::{BoxFut, CancellationToken};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as PLog, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use parking_lot::Mutex;
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::store::{severity_of_level, LogRecord, SpanRecord};

/// Records waiting for the exporter; past this many, new ones are dropped (and counted) rather
/// than letting a slow collector grow the engine.
const QUEUE: usize = 8192;
const BATCH: usize = 512;

enum Item {
    Span(SpanRecord),
    Log(LogRecord),
}

/// The OTLP exporter: the tap queues records, [`Exporter::run`] batches and posts them.
pub struct Exporter {
    base: String,
    tx: mpsc::Sender<Item>,
    rx: Mutex<Option<mpsc::Receiver<Item>>>,
    pub dropped: AtomicU64,
    pub sent: Arc<AtomicU64>,
}

impl Exporter {
    pub fn new(endpoint: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Exporter {
            base: endpoint.trim_end_matches('/').to_string(),
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    fn queue(&self, i: Item) {
        if self.tx.try_send(i).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn span(&self, s: &SpanRecord) {
        self.queue(Item::Span(s.clone()));
    }

    pub fn log(&self, l: &LogRecord) {
        self.queue(Item::Log(l.clone()));
    }

    /// The posting task; it returns when `stop` is cancelled, after one last flush.
    pub fn run(&self, stop: CancellationToken) -> BoxFut<()> {
        let rx = self.rx.lock().take();
        let (base, sent) = (self.base.clone(), self.sent.clone());
        Box::pin(async move {
            let Some(mut rx) = rx else { return };
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default();
            loop {
                let mut batch = Vec::new();
                tokio::select! {
                    _ = stop.cancelled() => {
                        while let Ok(i) = rx.try_recv() { batch.push(i); }
                        post(&client, &base, batch, &sent).await;
                        return;
                    }
                    n = rx.recv_many(&mut batch, BATCH) => {
                        if n == 0 { return; }
                    }
                }
                post(&client, &base, batch, &sent).await;
            }
        })
    }
}

async fn post(client: &reqwest::Client, base: &str, batch: Vec<Item>, sent: &AtomicU64) {
    let (mut spans, mut logs) = (Vec::new(), Vec::new());
    for i in batch {
        match i {
            Item::Span(s) => spans.push(s),
            Item::Log(l) => logs.push(l),
        }
    }
    let mut bodies = Vec::new();
    if !spans.is_empty() {
        bodies.push((
            "/v1/traces",
            spans.len(),
            traces_request(spans).encode_to_vec(),
        ));
    }
    if !logs.is_empty() {
        bodies.push(("/v1/logs", logs.len(), logs_request(logs).encode_to_vec()));
    }
    for (path, n, body) in bodies {
        let res = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(r) => tracing::warn!(status = %r.status(), path, "OTLP collector refused a batch"),
            Err(e) => tracing::warn!(error = %e, path, "OTLP collector unreachable; batch dropped"),
        }
    }
}

fn json_to_any(v: &Value) -> AnyValue {
    use any_value::Value as V;
    let value = match v {
        Value::Null => None,
        Value::Bool(b) => Some(V::BoolValue(*b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => V::IntValue(i),
            None => V::DoubleValue(n.as_f64().unwrap_or_default()),
        }),
        Value::String(s) => Some(V::StringValue(s.clone())),
        Value::Array(a) => Some(V::ArrayValue(ArrayValue {
            values: a.iter().map(json_to_any).collect(),
        })),
        Value::Object(o) => Some(V::KvlistValue(KeyValueList { values: attrs(o) })),
    };
    AnyValue { value }
}

fn attrs(m: &serde_json::Map<String, Value>) -> Vec<KeyValue> {
    m.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(json_to_any(v)),
            ..Default::default()
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(json_to_any(&Value::String(service.into()))),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Spans grouped by service into one export request.
pub fn traces_request(spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
    let mut by_service: Vec<(String, Vec<Span>)> = Vec::new();
    for s in spans {
        let code = match s.status {
            "error" => status::StatusCode::Error,
            "ok" => status::StatusCode::Ok,
            _ => status::StatusCode::Unset,
        };
        let p = Span {
            trace_id: unhex(&s.trace_id),
            span_id: unhex(&s.span_id),
            parent_span_id: s.parent_span_id.as_deref().map(unhex).unwrap_or_default(),
            name: s.name,
            kind: if s.kind == 0 {
                span::SpanKind::Internal as i32
            } else {
                s.kind
            },
            start_time_unix_nano: s.start_unix_nano,
            end_time_unix_nano: s.end_unix_nano,
            attributes: attrs(&s.attributes),
            status: Some(Status {
                code: code as i32,
                message: s.status_message.unwrap_or_default(),
            }),
            ..Default::default()
        };
        match by_service.iter_mut().find(|(n, _)| *n == s.service_name) {
            Some((_, v)) => v.push(p),
            None => by_service.push((s.service_name, vec![p])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(svc, spans)| ResourceSpans {
                resource: resource(&svc),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn logs_request(logs: Vec<LogRecord>) -> ExportLogsServiceRequest {
    let mut by_service: Vec<(String, Vec<PLog>)> = Vec::new();
    for l in logs {
        let svc = l.service_name.clone().unwrap_or_else(|| "unknown".into());
        let p = PLog {
            time_unix_nano: l.timestamp_unix_nano,
            observed_time_unix_nano: l.observed_unix_nano,
            severity_number: severity_of_level(l.level),
            severity_text: l.severity_text,
            body: Some(json_to_any(&Value::String(l.message))),
            attributes: attrs(&l.attributes),
            trace_id: l.trace_id.as_deref().map(unhex).unwrap_or_default(),
            span_id: l.span_id.as_deref().map(unhex).unwrap_or_default(),
            ..Default::default()
        };
        match by_service.iter_mut().find(|(n, _)| *n == svc) {
            Some((_, v)) => v.push(p),
            None => by_service.push((svc, vec![p])),
        }
    }
    ExportLogsServiceRequest {
        resource_logs: by_service
            .into_iter()
            .map(|(svc, log_records)| ResourceLogs {
                resource: resource(&svc),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Serves `GET /metrics` (any path) in the Prometheus text format until `stop`.
pub async fn serve_prometheus(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    core: iii_core::WeakCore,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "Prometheus accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let core = core.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let core = core.clone();
                async move {
                    let resp = if req.method() != hyper::Method::GET {
                        Response::builder()
                            .status(StatusCode::METHOD_NOT_ALLOWED)
                            .body(Full::new(Bytes::from_static(b"GET only\n")))
                    } else {
                        let reported = super::metrics::Reported::read(core.upgrade()).await;
                        match metrics.prometheus_text(reported) {
                            Ok(text) => Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(text))),
                            Err(_) => Response::builder()
                                .status(StatusCode::INTERNAL_SERVER_ERROR)
                                .body(Full::new(Bytes::from_static(b"encoding failed\n"))),
                        }
                    };
                    Ok::<_, std::convert::Infallible>(resp.unwrap_or_default())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
