//! Engine metrics: per-function invocation counters and latency histograms kept in atomics
//! (the call path takes a shared read lock to find its function's cell, and writes nothing else
//! that is shared), read by `engine::metrics::list` and encoded for Prometheus by
//! `prometheus-client`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde_json::{json, Value};

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// One function's cells.
#[derive(Default)]
pub struct FnStats {
    ok: AtomicU64,
    err: AtomicU64,
    /// Non-cumulative counts per bucket; the last one is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl FnStats {
    fn record(&self, ok: bool, d: Duration) {
        if ok { &self.ok } else { &self.err }.fetch_add(1, Ordering::Relaxed);
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, cumulative buckets).
    fn histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            out.push((BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), acc));
        }
        (
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            acc,
            out,
        )
    }
}

/// Gauges computed at read time (worker counts, queue depths) by the service.
pub type GaugeSource = Box<dyn Fn() -> Vec<Gauge> + Send + Sync>;

/// A gauge reading: name, labels, value.
pub type Gauge = (String, Vec<(String, String)>, f64);

type Labelled = (Vec<(String, String)>, f64);

/// What other services reported through the core's metrics registry, read once per request.
#[derive(Default)]
pub struct Reported {
    /// Counters: name (ending in `_total`), labels, value.
    pub counters: Vec<iii_core::tap::CounterReading>,
    /// Sampled gauges.
    pub gauges: Vec<Gauge>,
}

impl Reported {
    /// Reads `core`'s registry (each gauge sampler bounded to one second).
    pub async fn read(core: Option<iii_core::Core>) -> Reported {
        let Some(core) = core else {
            return Reported::default();
        };
        Reported {
            counters: core.metrics().counters(),
            gauges: core.metrics().sample(Duration::from_secs(1)).await,
        }
    }
}

fn labels_json(labels: &[(String, String)]) -> serde_json::Map<String, Value> {
    labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// Counters of one name: (labels, value) each.
type CounterFamily<'a> = (&'a str, Vec<(&'a [(String, String)], u64)>);

/// Groups counters by name, keeping first-seen order.
fn group_by_name(items: &[iii_core::tap::CounterReading]) -> Vec<CounterFamily<'_>> {
    let mut out: Vec<CounterFamily<'_>> = Vec::new();
    for (name, labels, v) in items {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, vs)) => vs.push((labels, *v)),
            None => out.push((name, vec![(labels, *v)])),
        }
    }
    out
}

/// All engine metrics.
#[derive(Default)]
pub struct Metrics {
    functions: RwLock<HashMap<String, Arc<FnStats>>>,
    errors: Mutex<HashMap<(String, String), u64>>,
    /// Latest gauge values the SDKs reported: (service, metric) → value.
    pub reported: Mutex<HashMap<(String, String), f64>>,
    pub telemetry_frames: AtomicU64,
    pub telemetry_rejected: AtomicU64,
    gauges: RwLock<Option<GaugeSource>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn set_gauges(&self, g: GaugeSource) {
        *self.gauges.write() = Some(g);
    }

    /// One finished invocation.
    pub fn record(&self, function_id: &str, error_code: Option<&str>, d: Duration) {
        let cell = self.functions.read().get(function_id).cloned();
        let cell = match cell {
            Some(c) => c,
            None => self
                .functions
                .write()
                .entry(function_id.to_string())
                .or_default()
                .clone(),
        };
        cell.record(error_code.is_none(), d);
        if let Some(code) = error_code {
            *self
                .errors
                .lock()
                .entry((function_id.to_string(), code.to_string()))
                .or_default() += 1;
        }
    }

    fn snapshot(&self) -> Vec<(String, Arc<FnStats>)> {
        let mut v: Vec<_> = self
            .functions
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn gauges(&self) -> Vec<Gauge> {
        let mut g = self.gauges.read().as_ref().map(|f| f()).unwrap_or_default();
        let mut reported: Vec<_> = self
            .reported
            .lock()
            .iter()
            .map(|((svc, name), v)| {
                (
                    prom_name(name),
                    vec![("service_name".to_string(), svc.clone())],
                    *v,
                )
            })
            .collect();
        reported.sort_by(|a, b| a.0.cmp(&b.0));
        g.extend(reported);
        g
    }

    /// `engine::metrics::list`.
    pub fn list(&self, ext: &Reported) -> Value {
        let mut out = Vec::new();
        let fns = self.snapshot();
        for (fid, s) in &fns {
            for (status, v) in [("ok", &s.ok), ("error", &s.err)] {
                out.push(json!({"name": "iii_invocations_total", "kind": "counter",
                    "labels": {"function_id": fid, "status": status}, "value": v.load(Ordering::Relaxed)}));
            }
        }
        for (fid, s) in &fns {
            let (sum, count, buckets) = s.histogram();
            let buckets: Vec<Value> = buckets
                .iter()
                .map(|(le, c)| json!({"le": if le.is_finite() { json!(le) } else { json!("+Inf") }, "count": c}))
                .collect();
            out.push(
                json!({"name": "iii_invocation_duration_seconds", "kind": "histogram",
                "labels": {"function_id": fid}, "count": count, "sum": sum, "buckets": buckets}),
            );
        }
        let mut errors: Vec<_> = self
            .errors
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        errors.sort();
        for ((fid, code), v) in errors {
            out.push(
                json!({"name": "iii_invocation_errors_total", "kind": "counter",
                "labels": {"function_id": fid, "error_code": code}, "value": v}),
            );
        }
        out.push(
            json!({"name": "iii_telemetry_frames_total", "kind": "counter", "labels": {},
            "value": self.telemetry_frames.load(Ordering::Relaxed)}),
        );
        for (name, labels, v) in &ext.counters {
            out.push(
                json!({"name": name, "kind": "counter", "labels": labels_json(labels), "value": v}),
            );
        }
        for (name, labels, v) in self.gauges().iter().chain(&ext.gauges) {
            out.push(
                json!({"name": name, "kind": "gauge", "labels": labels_json(labels), "value": v}),
            );
        }
        json!({ "metrics": out })
    }

    /// The Prometheus text exposition of everything.
    pub fn prometheus_text(self: &Arc<Self>, ext: Reported) -> Result<String, std::fmt::Error> {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(Collector(self.clone(), ext)));
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &reg)?;
        Ok(s)
    }
}

/// A metric name from an OTEL one (`iii.worker.rss.bytes` → `iii_worker_rss_bytes`).
fn prom_name(n: &str) -> String {
    n.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

struct Collector(Arc<Metrics>, Reported);

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collector")
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fns = self.0.snapshot();
        {
            let mut m = enc.encode_descriptor(
                "iii_invocations",
                "Invocations finished, by function and status",
                None,
                MetricType::Counter,
            )?;
            for (fid, s) in &fns {
                for (status, v) in [("ok", &s.ok), ("error", &s.err)] {
                    let labels = [("function_id", fid.as_str()), ("status", status)];
                    ConstCounter::new(v.load(Ordering::Relaxed))
                        .encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "iii_invocation_duration_seconds",
                "Invocation latency, by function",
                None,
                MetricType::Histogram,
            )?;
            for (fid, s) in &fns {
                let (sum, count, _) = s.histogram();
                // The encoder sums the buckets itself and writes `+Inf` for `f64::MAX`.
                let buckets: Vec<(f64, u64)> = s
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        (
                            BUCKETS.get(i).copied().unwrap_or(f64::MAX),
                            b.load(Ordering::Relaxed),
                        )
                    })
                    .collect();
                let labels = [("function_id", fid.as_str())];
                m.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        {
            let mut errors: Vec<_> = self
                .0
                .errors
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            errors.sort();
            let mut m = enc.encode_descriptor(
                "iii_invocation_errors",
                "Failed invocations, by function and error code",
                None,
                MetricType::Counter,
            )?;
            for ((fid, code), v) in &errors {
                let labels = [("function_id", fid.as_str()), ("error_code", code.as_str())];
                ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let m = enc.encode_descriptor(
                "iii_telemetry_frames",
                "Telemetry frames received on /otel",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(self.0.telemetry_frames.load(Ordering::Relaxed)).encode(m)?;
        }
        for (name, values) in group_by_name(&self.1.counters) {
            // The encoder appends `_total` to a counter's name itself.
            let base = name.strip_suffix("_total").unwrap_or(name);
            let mut m = enc.encode_descriptor(base, "Engine counter", None, MetricType::Counter)?;
            for (labels, v) in values {
                ConstCounter::new(v).encode(m.encode_family(&labels.to_vec())?)?;
            }
        }
        let mut by_name: Vec<(String, Vec<Labelled>)> = Vec::new();
        for (name, labels, v) in self
            .0
            .gauges()
            .into_iter()
            .chain(self.1.gauges.iter().cloned())
        {
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, vs)) => vs.push((labels, v)),
                None => by_name.push((name, vec![(labels, v)])),
            }
        }
        for (name, values) in by_name {
            let mut m = enc.encode_descriptor(&name, "Engine gauge", None, MetricType::Gauge)?;
            for (labels, v) in values {
                if labels.is_empty() {
                    ConstGauge::new(v).encode(m.encode_family(&Vec::<(String, String)>::new())?)?;
                } else {
                    ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_encodes() {
        let m = Arc::new(Metrics::default());
        m.record("a::b", None, Duration::from_micros(300));
        m.record("a::b", Some("boom"), Duration::from_millis(20));
        let ext = Reported {
            counters: vec![(
                "iii_http_responses_total".into(),
                vec![("status".into(), "404".into())],
                3,
            )],
            gauges: vec![(
                "iii_queue_depth".into(),
                vec![("queue".into(), "q1".into())],
                5.0,
            )],
        };
        let l = m.list(&ext);
        let items = l["metrics"].as_array().expect("a list");
        let ok = items
            .iter()
            .find(|i| i["name"] == "iii_invocations_total" && i["labels"]["status"] == "ok")
            .expect("ok counter");
        assert_eq!(ok["value"], 1);
        let h = items
            .iter()
            .find(|i| i["name"] == "iii_invocation_duration_seconds")
            .expect("histogram");
        assert_eq!(h["count"], 2);
        assert!(items.iter().any(|i| i["name"] == "iii_http_responses_total"
            && i["kind"] == "counter"
            && i["labels"]["status"] == "404"
            && i["value"] == 3));
        assert!(items.iter().any(|i| i["name"] == "iii_queue_depth"
            && i["kind"] == "gauge"
            && i["labels"]["queue"] == "q1"
            && i["value"] == 5.0));
        let text = m.prometheus_text(ext).expect("encodes");
        assert!(
            text.contains("iii_http_responses_total{status=\"404\"} 3"),
            "{text}"
        );
        assert!(text.contains("iii_queue_depth{queue=\"q1\"} 5"), "{text}");
        assert!(
            text.contains("iii_invocations_total{function_id=\"a::b\",status=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("iii_invocation_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(
                "iii_invocation_duration_seconds_bucket{le=\"+Inf\",function_id=\"a::b\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "iii_invocation_duration_seconds_bucket{le=\"0.0005\",function_id=\"a::b\"} 1"
        ));
        assert!(text.ends_with("# EOF\n"));
    }
}
