//! The in-memory telemetry rings: logs (bounded by count and by bytes) and spans (bounded by
//! count). Oldest records leave first. Queries scan the ring; it is small by construction.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Log levels by rank, lowest first.
pub const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// The level of an OTEL severity number (1-4 trace, 5-8 debug, 9-12 info, 13-16 warn, 17+ error).
pub fn level_of_severity(n: i32) -> &'static str {
    match n {
        i32::MIN..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        _ => "error",
    }
}

/// The OTEL severity number of a level.
pub fn severity_of_level(level: &str) -> i32 {
    match level {
        "trace" => 1,
        "debug" => 5,
        "warn" => 13,
        "error" => 17,
        _ => 9,
    }
}

fn rank(level: &str) -> usize {
    LEVELS.iter().position(|l| *l == level).unwrap_or(2)
}

/// One stored log record.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub timestamp_unix_nano: u64,
    pub observed_unix_nano: u64,
    pub level: &'static str,
    pub severity_text: String,
    pub message: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub service_name: Option<String>,
    pub worker: Option<String>,
    pub function_id: Option<String>,
    pub data: Option<Value>,
    pub attributes: Map<String, Value>,
    pub scope_name: Option<String>,
    pub scope_version: Option<String>,
}

impl LogRecord {
    /// What the record costs the store: its text plus a fixed overhead per record.
    fn cost(&self) -> usize {
        let data = self.data.as_ref().map_or(0, |d| d.to_string().len());
        let attrs: usize = self
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum();
        256 + self.message.len()
            + self.severity_text.len()
            + data
            + attrs
            + self.service_name.as_ref().map_or(0, String::len)
            + self.worker.as_ref().map_or(0, String::len)
            + self.function_id.as_ref().map_or(0, String::len)
    }

    /// The record as `engine::logs::list` and the `log` trigger give it: the console's fields
    /// and the OTEL log record fields of spec section 4.6.8.
    pub fn to_json(&self) -> Value {
        let mut o = json!({
            "timestamp_ms": self.timestamp_unix_nano / 1_000_000,
            "timestamp_unix_nano": self.timestamp_unix_nano,
            "observed_timestamp_unix_nano": self.observed_unix_nano,
            "level": self.level,
            "severity_number": severity_of_level(self.level),
            "severity_text": self.severity_text,
            "message": self.message,
            "body": self.message,
            "attributes": self.attributes,
        });
        let m = o.as_object_mut().expect("an object");
        for (k, v) in [
            ("trace_id", &self.trace_id),
            ("span_id", &self.span_id),
            ("service_name", &self.service_name),
            ("worker", &self.worker),
            ("function_id", &self.function_id),
            ("instrumentation_scope_name", &self.scope_name),
            ("instrumentation_scope_version", &self.scope_version),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        }
        if let Some(d) = &self.data {
            m.insert("data".into(), d.clone());
        }
        if let Some(s) = &self.service_name {
            m.insert("resource".into(), json!({"service.name": s}));
        }
        o
    }
}

/// `engine::logs::list` input.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct LogQuery {
    /// Minimum level.
    pub level: Option<String>,
    pub worker: Option<String>,
    pub function_id: Option<String>,
    pub trace_id: Option<String>,
    pub service_name: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

struct LogRing {
    records: VecDeque<(LogRecord, usize)>,
    bytes: usize,
}

/// The log ring.
pub struct LogStore {
    ring: Mutex<LogRing>,
    max_count: usize,
    max_bytes: usize,
}

impl LogStore {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        LogStore {
            ring: Mutex::new(LogRing {
                records: VecDeque::new(),
                bytes: 0,
            }),
            max_count: max_count.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Stores a record, evicting the oldest ones past either cap.
    pub fn push(&self, r: LogRecord) {
        let cost = r.cost();
        let mut ring = self.ring.lock();
        ring.records.push_back((r, cost));
        ring.bytes += cost;
        while ring.records.len() > self.max_count || ring.bytes > self.max_bytes {
            match ring.records.pop_front() {
                Some((_, c)) => ring.bytes -= c,
                None => break,
            }
        }
    }

    /// (records held, bytes they cost).
    pub fn usage(&self) -> (usize, usize) {
        let ring = self.ring.lock();
        (ring.records.len(), ring.bytes)
    }

    pub fn clear(&self) -> usize {
        let mut ring = self.ring.lock();
        let n = ring.records.len();
        ring.records.clear();
        ring.bytes = 0;
        n
    }

    /// Matching records newest first, paged, and how many match.
    pub fn query(&self, q: &LogQuery) -> (Vec<Value>, usize) {
        let min = q.level.as_deref().map_or(0, rank);
        let ring = self.ring.lock();
        let mut total = 0;
        let mut out = Vec::new();
        let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(100));
        for (r, _) in ring.records.iter().rev() {
            let ms = r.timestamp_unix_nano / 1_000_000;
            let keep = rank(r.level) >= min
                && q.worker
                    .as_ref()
                    .is_none_or(|w| r.worker.as_ref() == Some(w))
                && q.function_id
                    .as_ref()
                    .is_none_or(|f| r.function_id.as_ref() == Some(f))
                && q.trace_id.as_ref().is_none_or(|t| {
                    r.trace_id
                        .as_ref()
                        .is_some_and(|x| x.eq_ignore_ascii_case(t))
                })
                && q.service_name
                    .as_ref()
                    .is_none_or(|s| r.service_name.as_ref() == Some(s))
                && q.since_ms.is_none_or(|s| ms >= s)
                && q.until_ms.is_none_or(|u| ms <= u);
            if keep {
                if total >= offset && out.len() < limit {
                    out.push(r.to_json());
                }
                total += 1;
            }
        }
        (out, total)
    }
}

/// One stored span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: i32,
    pub service_name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// `ok`, `error` or `unset`.
    pub status: &'static str,
    pub status_message: Option<String>,
    pub attributes: Map<String, Value>,
    pub events: Vec<Value>,
}

impl SpanRecord {
    pub fn to_json(&self) -> Value {
        let mut o = json!({
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "name": self.name,
            "kind": self.kind,
            "service_name": self.service_name,
            "start_time_unix_nano": self.start_unix_nano,
            "end_time_unix_nano": self.end_unix_nano,
            "status": self.status,
            "attributes": self.attributes,
            "events": self.events,
        });
        if let Some(p) = &self.parent_span_id {
            o["parent_span_id"] = Value::String(p.clone());
        }
        if let Some(m) = &self.status_message {
            o["status_message"] = Value::String(m.clone());
        }
        o
    }

    /// Does this span concern `function_id` (its name or its `iii.function.id` attribute)?
    fn mentions(&self, function_id: &str) -> bool {
        self.attributes
            .get("iii.function.id")
            .and_then(Value::as_str)
            .is_some_and(|f| f == function_id)
            || self
                .name
                .rsplit(' ')
                .next()
                .is_some_and(|n| n == function_id)
    }
}

/// `engine::traces::list` input.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct TraceQuery {
    pub function_id: Option<String>,
    pub service_name: Option<String>,
    pub status: Option<String>,
    pub since_ms: Option<u64>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

/// The span ring.
pub struct SpanStore {
    spans: Mutex<VecDeque<SpanRecord>>,
    max_spans: usize,
}

impl SpanStore {
    pub fn new(max_spans: usize) -> Self {
        SpanStore {
            spans: Mutex::new(VecDeque::new()),
            max_spans: max_spans.max(1),
        }
    }

    pub fn push(&self, s: SpanRecord) {
        let mut spans = self.spans.lock();
        spans.push_back(s);
        while spans.len() > self.max_spans {
            spans.pop_front();
        }
    }

    pub fn clear(&self) -> usize {
        let mut spans = self.spans.lock();
        let n = spans.len();
        spans.clear();
        n
    }

    pub fn len(&self) -> usize {
        self.spans.lock().len()
    }

    /// The spans of one trace, earliest first.
    pub fn trace(&self, trace_id: &str) -> Vec<SpanRecord> {
        let mut v: Vec<SpanRecord> = self
            .spans
            .lock()
            .iter()
            .filter(|s| s.trace_id.eq_ignore_ascii_case(trace_id))
            .cloned()
            .collect();
        v.sort_by_key(|s| s.start_unix_nano);
        v
    }

    /// Trace summaries newest first, paged, and how many match.
    pub fn list(&self, q: &TraceQuery) -> (Vec<Value>, usize) {
        let mut groups: HashMap<String, Vec<SpanRecord>> = HashMap::new();
        for s in self.spans.lock().iter() {
            groups
                .entry(s.trace_id.clone())
                .or_default()
                .push(s.clone());
        }
        let mut summaries: Vec<(u64, Value)> = groups
            .into_iter()
            .filter_map(|(id, spans)| summarize(&id, &spans, q))
            .collect();
        summaries.sort_by_key(|s| std::cmp::Reverse(s.0));
        let total = summaries.len();
        let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(50));
        let page = summaries
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, v)| v)
            .collect();
        (page, total)
    }
}

/// The root of a trace: a span without a parent, else one whose parent is not stored, else the
/// earliest.
pub fn root_of(spans: &[SpanRecord]) -> Option<&SpanRecord> {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
        .min_by_key(|s| (s.parent_span_id.is_some(), s.start_unix_nano))
        .or_else(|| spans.iter().min_by_key(|s| s.start_unix_nano))
}

fn summarize(id: &str, spans: &[SpanRecord], q: &TraceQuery) -> Option<(u64, Value)> {
    let root = root_of(spans)?;
    let start = spans.iter().map(|s| s.start_unix_nano).min()?;
    let end = spans.iter().map(|s| s.end_unix_nano).max()?;
    let status = if spans.iter().any(|s| s.status == "error") {
        "error"
    } else {
        "ok"
    };
    let keep = q
        .function_id
        .as_ref()
        .is_none_or(|f| spans.iter().any(|s| s.mentions(f)))
        && q.service_name
            .as_ref()
            .is_none_or(|n| spans.iter().any(|s| &s.service_name == n))
        && q.status.as_ref().is_none_or(|s| s == status)
        && q.since_ms.is_none_or(|s| start / 1_000_000 >= s);
    keep.then(|| {
        (
            start,
            json!({
                "trace_id": id,
                "root_name": root.name,
                "service_name": root.service_name,
                "start_ms": start / 1_000_000,
                "duration_ms": (end.saturating_sub(start)) as f64 / 1e6,
                "span_count": spans.len(),
                "status": status,
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(i: usize, level: &'static str) -> LogRecord {
        LogRecord {
            timestamp_unix_nano: i as u64 * 1_000_000,
            observed_unix_nano: 0,
            level,
            severity_text: level.to_uppercase(),
            message: format!("m{i}"),
            trace_id: i.is_multiple_of(2).then(|| "ab".repeat(16)),
            span_id: None,
            service_name: None,
            worker: None,
            function_id: None,
            data: None,
            attributes: Map::new(),
            scope_name: None,
            scope_version: None,
        }
    }

    #[test]
    fn caps_hold_and_newest_come_first() {
        let s = LogStore::new(10, 1 << 20);
        for i in 0..25 {
            s.push(log(i, "info"));
        }
        let (page, total) = s.query(&LogQuery::default());
        assert_eq!(total, 10);
        assert_eq!(page[0]["message"], "m24");
        assert_eq!(page[9]["message"], "m15");
        let small = LogStore::new(1000, 3000);
        for i in 0..100 {
            small.push(log(i, "info"));
        }
        assert!(small.usage().1 <= 3000);
        assert!(small.usage().0 < 100);
    }

    #[test]
    fn filters_by_level_trace_and_time() {
        let s = LogStore::new(100, 1 << 20);
        for i in 0..10 {
            s.push(log(i, if i < 5 { "debug" } else { "error" }));
        }
        let q = |q: LogQuery| s.query(&q).1;
        assert_eq!(
            q(LogQuery {
                level: Some("warn".into()),
                ..Default::default()
            }),
            5
        );
        assert_eq!(
            q(LogQuery {
                trace_id: Some("AB".repeat(16)),
                ..Default::default()
            }),
            5
        );
        assert_eq!(
            q(LogQuery {
                since_ms: Some(3),
                until_ms: Some(6),
                ..Default::default()
            }),
            4
        );
        let (page, total) = s.query(&LogQuery {
            offset: Some(8),
            ..Default::default()
        });
        assert_eq!((page.len(), total), (2, 10));
    }
}
