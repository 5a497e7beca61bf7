//! Decoding the SDKs' `/otel` frames (4-byte kind + OTLP/JSON, spec section 11) into stored
//! records, with the standard OTLP types of `opentelemetry-proto`.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::{Map, Value};

use super::store::{level_of_severity, LogRecord, SpanRecord};

/// A decoding failure.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("telemetry frame shorter than its 4-byte kind")]
    Short,
    #[error("unknown telemetry frame kind {0:?} (expected OTLP, LOGS or MTRC)")]
    Kind(String),
    #[error("invalid OTLP/JSON in a {kind} frame: {source}")]
    Json {
        kind: &'static str,
        source: serde_json::Error,
    },
}

/// One decoded frame.
pub enum Frame {
    Spans(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

pub fn decode(frame: &[u8]) -> Result<Frame, OtlpError> {
    if frame.len() < 4 {
        return Err(OtlpError::Short);
    }
    let (kind, body) = frame.split_at(4);
    let json = |kind| move |source| OtlpError::Json { kind, source };
    match kind {
        b"OTLP" => serde_json::from_slice(body)
            .map(Frame::Spans)
            .map_err(json("OTLP")),
        b"LOGS" => serde_json::from_slice(body)
            .map(Frame::Logs)
            .map_err(json("LOGS")),
        b"MTRC" => serde_json::from_slice(body)
            .map(Frame::Metrics)
            .map_err(json("MTRC")),
        k => Err(OtlpError::Kind(String::from_utf8_lossy(k).into_owned())),
    }
}

/// An OTLP value as JSON.
pub fn any_to_json(v: &AnyValue) -> Value {
    use any_value::Value as V;
    match &v.value {
        None => Value::Null,
        Some(V::StringValue(s)) => Value::String(s.clone()),
        Some(V::BoolValue(b)) => Value::Bool(*b),
        Some(V::IntValue(i)) => Value::from(*i),
        Some(V::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        Some(V::BytesValue(b)) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        Some(V::ArrayValue(a)) => Value::Array(a.values.iter().map(any_to_json).collect()),
        Some(V::KvlistValue(kv)) => Value::Object(attrs_to_json(&kv.values)),
        #[allow(unreachable_patterns, reason = "newer proto versions add variants")]
        Some(_) => Value::Null,
    }
}

pub fn attrs_to_json(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map_or(Value::Null, any_to_json),
            )
        })
        .collect()
}

fn hex(b: &[u8]) -> Option<String> {
    (!b.is_empty() && b.iter().any(|x| *x != 0))
        .then(|| b.iter().map(|x| format!("{x:02x}")).collect())
}

fn str_attr(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `log.data` as the SDKs send it: an object, or JSON text of one.
fn data_of(v: Option<&Value>) -> Option<Value> {
    match v? {
        Value::String(s) => {
            Some(serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())))
        }
        Value::Null => None,
        other => Some(other.clone()),
    }
}

/// The log records of a LOGS frame; `peer` names the sending connection when the record does
/// not name its service.
pub fn logs(req: ExportLogsServiceRequest, now_ns: u64) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for rl in req.resource_logs {
        let resource = rl
            .resource
            .map(|r| attrs_to_json(&r.attributes))
            .unwrap_or_default();
        let resource_service = str_attr(&resource, "service.name");
        for sl in rl.scope_logs {
            let (scope_name, scope_version) = sl
                .scope
                .map(|s| {
                    (
                        Some(s.name).filter(|n| !n.is_empty()),
                        Some(s.version).filter(|v| !v.is_empty()),
                    )
                })
                .unwrap_or_default();
            for r in sl.log_records {
                let attributes = attrs_to_json(&r.attributes);
                let message = match r.body.as_ref().map(any_to_json) {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                let ts = if r.time_unix_nano > 0 {
                    r.time_unix_nano
                } else if r.observed_time_unix_nano > 0 {
                    r.observed_time_unix_nano
                } else {
                    now_ns
                };
                out.push(LogRecord {
                    timestamp_unix_nano: ts,
                    observed_unix_nano: if r.observed_time_unix_nano > 0 {
                        r.observed_time_unix_nano
                    } else {
                        now_ns
                    },
                    level: level_of_severity(r.severity_number),
                    severity_text: r.severity_text,
                    message,
                    trace_id: hex(&r.trace_id),
                    span_id: hex(&r.span_id),
                    service_name: str_attr(&attributes, "service.name")
                        .or_else(|| resource_service.clone()),
                    worker: str_attr(&attributes, "iii.worker.name")
                        .or_else(|| str_attr(&resource, "iii.worker.name"))
                        .or_else(|| resource_service.clone()),
                    function_id: str_attr(&attributes, "iii.function.id")
                        .or_else(|| str_attr(&attributes, "function_id")),
                    data: data_of(attributes.get("log.data")),
                    attributes,
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                });
            }
        }
    }
    out
}

/// The spans of an OTLP frame.
pub fn spans(req: ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs_to_json(&r.attributes))
            .unwrap_or_default();
        let service = str_attr(&resource, "service.name").unwrap_or_else(|| "unknown".into());
        for ss in rs.scope_spans {
            for s in ss.spans {
                let Some(trace_id) = hex(&s.trace_id) else {
                    continue;
                };
                let Some(span_id) = hex(&s.span_id) else {
                    continue;
                };
                let (status, status_message) = match s.status {
                    Some(st) if st.code == StatusCode::Error as i32 => {
                        ("error", Some(st.message).filter(|m| !m.is_empty()))
                    }
                    Some(st) if st.code == StatusCode::Ok as i32 => ("ok", None),
                    _ => ("unset", None),
                };
                let events = s
                    .events
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "name": e.name,
                            "time_unix_nano": e.time_unix_nano,
                            "attributes": attrs_to_json(&e.attributes),
                        })
                    })
                    .collect();
                out.push(SpanRecord {
                    trace_id,
                    span_id,
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    service_name: service.clone(),
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano.max(s.start_time_unix_nano),
                    status,
                    status_message,
                    attributes: attrs_to_json(&s.attributes),
                    events,
                });
            }
        }
    }
    out
}

/// Gauge and sum points of an MTRC frame as (service, metric name, value), latest value each.
pub fn metric_points(req: ExportMetricsServiceRequest) -> Vec<(String, String, f64)> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource = rm
            .resource
            .map(|r| attrs_to_json(&r.attributes))
            .unwrap_or_default();
        let service = str_attr(&resource, "service.name").unwrap_or_else(|| "unknown".into());
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let points = match &m.data {
                    Some(Data::Gauge(g)) => &g.data_points,
                    Some(Data::Sum(s)) => &s.data_points,
                    _ => continue,
                };
                if let Some(p) = points.iter().max_by_key(|p| p.time_unix_nano) {
                    let v = match p.value {
                        Some(N::AsDouble(d)) => d,
                        Some(N::AsInt(i)) => i as f64,
                        None => continue,
                    };
                    out.push((service.clone(), m.name.clone(), v));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_sdk_json_shapes() {
        let body = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
          "scopeLogs":[{"scope":{"name":"iii.logger","version":""},"logRecords":[{"timeUnixNano":"1700000000000000000",
          "observedTimeUnixNano":"1700000000000000001","severityNumber":13,"severityText":"WARN","body":{"stringValue":"hello"},
          "attributes":[{"key":"log.data","value":{"kvlistValue":{"values":[{"key":"n","value":{"intValue":"3"}}]}}}],
          "traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331"}]}]}]}"#;
        let mut f = b"LOGS".to_vec();
        f.extend_from_slice(body.as_bytes());
        let Frame::Logs(req) = decode(&f).expect("decodes") else {
            panic!("kind")
        };
        let l = logs(req, 5);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].level, "warn");
        assert_eq!(l[0].message, "hello");
        assert_eq!(
            l[0].trace_id.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(l[0].service_name.as_deref(), Some("svc"));
        assert_eq!(l[0].data, Some(serde_json::json!({"n": 3})));

        let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
          "scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331",
          "parentSpanId":"","name":"execute a","kind":1,"startTimeUnixNano":"10","endTimeUnixNano":"30",
          "attributes":[],"status":{"code":2,"message":"boom"}}]}]}]}"#;
        let mut f = b"OTLP".to_vec();
        f.extend_from_slice(body.as_bytes());
        let Frame::Spans(req) = decode(&f).expect("decodes") else {
            panic!("kind")
        };
        let s = spans(req);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].status, s[0].parent_span_id.as_deref()),
            ("error", None)
        );
        assert!(matches!(decode(b"XXXX{}"), Err(OtlpError::Kind(_))));
        assert!(matches!(decode(b"OTLP{"), Err(OtlpError::Json { .. })));
    }
}
