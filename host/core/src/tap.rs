//! The observability tap: one optional [`Observer`] a service installs to see finished
//! invocations and the telemetry frames workers send on `/otel`. Without an observer the
//! hot path pays one atomic load per call and takes no time stamp.

use std::sync::Arc;
use std::time::Duration;

/// A finished invocation, as the router saw it.
pub struct InvocationEvent<'a> {
    /// The function called.
    pub function_id: &'a str,
    /// The error code, when the call failed.
    pub error_code: Option<&'a str>,
    /// The error message, when the call failed.
    pub error_message: Option<&'a str>,
    /// From the router taking the call to the result arriving.
    pub duration: Duration,
    /// The caller's W3C `traceparent`, when it sent one.
    pub traceparent: Option<&'a str>,
    /// The caller's W3C `baggage`, when it sent one.
    pub baggage: Option<&'a str>,
    /// The worker that made the call, when one did (its connection id).
    pub caller: Option<&'a str>,
    /// Whether an in-process builtin served the call (else a worker did).
    pub builtin: bool,
}

/// What the observability service installs into the core.
pub trait Observer: Send + Sync {
    /// An invocation finished (successfully or not).
    fn invocation(&self, ev: &InvocationEvent<'_>);
    /// A binary frame a worker sent on its `/otel` socket (4-byte kind + OTLP/JSON), with the
    /// connection's remote address.
    fn telemetry_frame(&self, frame: &[u8], peer: &str);
}

pub(crate) type Slot = std::sync::OnceLock<Arc<dyn Observer>>;

/// Metric labels: (key, value) pairs.
pub type Labels = Vec<(String, String)>;

/// One metric reading a service reports: name, labels, value.
pub type Reading = (String, Labels, f64);

/// One counter: name, labels, value.
pub type CounterReading = (String, Labels, u64);

/// A service's gauges, sampled when metrics are read (not on every change).
pub type GaugeSampler = Arc<dyn Fn() -> crate::BoxFut<Vec<Reading>> + Send + Sync>;

/// Counters and gauge samplers services report into, read by whichever service serves
/// metrics (services never import each other; they all reach the core).
#[derive(Default)]
pub struct MetricsRegistry {
    counters: parking_lot::Mutex<std::collections::BTreeMap<(String, Labels), u64>>,
    samplers: parking_lot::RwLock<Vec<GaugeSampler>>,
}

impl MetricsRegistry {
    /// Adds one to counter `name` (Prometheus style, ending in `_total`) with `labels`.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self
            .counters
            .lock()
            .entry((name.to_string(), labels))
            .or_default() += 1;
    }

    /// Registers a gauge sampler; it runs each time metrics are read.
    pub fn add_sampler(&self, s: GaugeSampler) {
        self.samplers.write().push(s);
    }

    /// The counters, sorted by name then labels.
    pub fn counters(&self) -> Vec<CounterReading> {
        self.counters
            .lock()
            .iter()
            .map(|((n, l), v)| (n.clone(), l.clone(), *v))
            .collect()
    }

    /// Runs every sampler (each bounded by `timeout`, so a slow adapter stalls no reader).
    pub async fn sample(&self, timeout: Duration) -> Vec<Reading> {
        let samplers: Vec<GaugeSampler> = self.samplers.read().clone();
        let mut out = Vec::new();
        for s in samplers {
            if let Ok(r) = tokio::time::timeout(timeout, s()).await {
                out.extend(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_samples() {
        let m = MetricsRegistry::default();
        m.count("x_total", &[("status", "200")]);
        m.count("x_total", &[("status", "200")]);
        m.count("x_total", &[("status", "404")]);
        let c = m.counters();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].2, 2);
        assert_eq!(c[1].1, vec![("status".to_string(), "404".to_string())]);
        m.add_sampler(Arc::new(|| {
            Box::pin(async { vec![("g".to_string(), Vec::new(), 3.0)] })
        }));
        // A sampler that never answers is cut off and the others still count.
        m.add_sampler(Arc::new(|| Box::pin(std::future::pending())));
        let g = m.sample(Duration::from_millis(20)).await;
        assert_eq!(g, vec![("g".to_string(), Vec::new(), 3.0)]);
    }
}
