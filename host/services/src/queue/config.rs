//! The `queue` entry (`iii-queue` is the deprecated name): the adapter, subscriber defaults and
//! named queues (PROTOCOL.md §7.4), and the `queue_config` block of a `durable:subscriber`
//! binding (§4.6.6).

use std::collections::BTreeMap;

use iii_adapter_api::{AdapterSource, AdapterSpec};
use iii_core::config::{ConfigError, EntryReader};
use iii_core::Entry;
use serde_json::{json, Value};

use crate::common::adapter_spec;

/// The default lease of a delivery: long, because a lapsed lease redelivers a job that may
/// still be running (upstream tied it to the SDK's 30 s invocation timeout and redelivered
/// long jobs while they ran). A crash does not wait for it: a restarted adapter voids leases.
pub(crate) const DEFAULT_LEASE_MS: u64 = 15 * 60 * 1000;
/// How often an idle consumer asks the adapter for due messages. Local publishes wake the
/// consumer at once, so this only bounds how late a message enqueued elsewhere (another
/// engine on a shared adapter) is seen.
pub(crate) const DEFAULT_POLL_MS: u64 = 1000;
/// Backoffs stop doubling here.
const MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;

/// How retries are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backoff {
    /// `backoff_ms * 2^(attempt-1)`, capped at an hour.
    Exponential,
    /// `backoff_ms` every time.
    Fixed,
}

/// How one internal queue is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub backoff: Backoff,
    pub concurrency: u32,
    pub fifo: bool,
    pub lease_ms: u64,
    pub poll_ms: u64,
    /// Delay before a message's first delivery.
    pub delay_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_attempts: 3,
            backoff_ms: 1000,
            backoff: Backoff::Exponential,
            concurrency: 10,
            fifo: false,
            lease_ms: DEFAULT_LEASE_MS,
            poll_ms: DEFAULT_POLL_MS,
            delay_ms: 0,
        }
    }
}

impl Settings {
    /// The delay before the retry that follows failed attempt `attempt` (from 1).
    pub(crate) fn retry_after(&self, attempt: u32) -> u64 {
        match self.backoff {
            Backoff::Fixed => self.backoff_ms,
            Backoff::Exponential => {
                let shift = attempt.saturating_sub(1).min(32);
                self.backoff_ms
                    .saturating_mul(1u64 << shift)
                    .min(MAX_BACKOFF_MS.max(self.backoff_ms))
            }
        }
    }

    /// What `topic_stats` reports as `config`.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "type": if self.fifo { "fifo" } else { "standard" },
            "max_attempts": self.max_attempts,
            "backoff_ms": self.backoff_ms,
            "backoff_type": match self.backoff { Backoff::Exponential => "exponential", Backoff::Fixed => "fixed" },
            "concurrency": self.concurrency,
            "lease_ms": self.lease_ms,
            "poll_interval_ms": self.poll_ms,
        })
    }
}

/// A queue of `queue_configs`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NamedQueue {
    pub settings: Settings,
    /// FIFO queues: the `data` field whose value is the message group.
    pub group_field: Option<String>,
}

/// What the `queue` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    pub(crate) adapter: AdapterSpec,
    /// Subscriber defaults, from the builtin adapter's config.
    pub(crate) defaults: Settings,
    pub(crate) named: BTreeMap<String, NamedQueue>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let defaults = Settings::default();
        QueueConfig {
            adapter: AdapterSpec::named(super::BUILTIN_COMPONENT),
            named: BTreeMap::from([(
                "default".to_string(),
                NamedQueue {
                    settings: defaults.clone(),
                    group_field: None,
                },
            )]),
            defaults,
        }
    }
}

fn u32_at_least_1(
    r: &EntryReader<'_>,
    v: &serde_yaml::Value,
    key: &str,
) -> Result<u32, ConfigError> {
    let n = r.u64(v, key)?;
    if n == 0 {
        return Err(r.invalid(key, "an integer of at least 1", v));
    }
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn mode(r: &EntryReader<'_>, v: &serde_yaml::Value, key: &str) -> Result<bool, ConfigError> {
    match v.as_str() {
        Some("standard" | "concurrent") => Ok(false),
        Some("fifo") => Ok(true),
        _ => Err(r.invalid(key, "\"standard\" or \"fifo\"", v)),
    }
}

/// Keys of the builtin adapter's `config` that are subscriber defaults, not storage options.
const DEFAULT_KEYS: &[&str] = &[
    "max_attempts",
    "backoff_ms",
    "concurrency",
    "poll_interval_ms",
    "mode",
    "lease_ms",
];

pub(crate) fn configure(e: &Entry<'_>) -> Result<QueueConfig, ConfigError> {
    let mut qc = QueueConfig::default();
    let at = e.key("config");
    let r = &e.reader;
    let Some(m) = r.mapping(e.config, &at)? else {
        return Ok(qc);
    };
    r.check_keys(m, &at, &["adapter", "queue_configs"])?;
    if m.get("adapter").is_some_and(|a| !a.is_null()) {
        let mut spec = adapter_spec(e, m)?;
        if matches!(&spec.source, AdapterSource::Name(n) if n == "builtin") {
            spec.source = AdapterSource::Name(super::BUILTIN_COMPONENT.into());
        }
        // The redis component has no queue store: upstream's Redis queue adapter only
        // publishes (no leases, retries or dead letters), which would lose this service's
        // delivery guarantees, so it is refused rather than half-supported.
        if matches!(&spec.source, AdapterSource::Name(n) if n == "redis") {
            return Err(r.error(format!(
                "`{at}.adapter`: `name: redis` is not a queue adapter here (upstream's Redis queue only publishes, without leases, retries or dead letters); use `name: builtin` for one engine, or a broker adapter for several"
            )));
        }
        let cat = format!("{at}.adapter.config");
        for k in DEFAULT_KEYS {
            let Some(v) = spec.config.remove(*k) else {
                continue;
            };
            let y: serde_yaml::Value =
                serde_yaml::to_value(&v).map_err(|x| r.error(format!("`{cat}.{k}`: {x}")))?;
            let key = format!("{cat}.{k}");
            let d = &mut qc.defaults;
            match *k {
                "max_attempts" => d.max_attempts = u32_at_least_1(r, &y, &key)?,
                "backoff_ms" => d.backoff_ms = r.u64(&y, &key)?,
                "concurrency" => d.concurrency = u32_at_least_1(r, &y, &key)?,
                "poll_interval_ms" => d.poll_ms = r.u64(&y, &key)?.max(10),
                "mode" => d.fifo = mode(r, &y, &key)?,
                _ => d.lease_ms = r.u64(&y, &key)?.max(1),
            }
        }
        qc.adapter = spec;
    }
    if let Some(d) = qc.named.get_mut("default") {
        d.settings = qc.defaults.clone();
    }
    let qat = format!("{at}.queue_configs");
    if let Some(qs) = m
        .get("queue_configs")
        .map(|q| r.mapping(q, &qat))
        .transpose()?
        .flatten()
    {
        for (name, v) in qs {
            let name = r.string(name, &qat)?;
            let key = format!("{qat}.{name}");
            let mut nq = NamedQueue {
                settings: qc.defaults.clone(),
                group_field: None,
            };
            if let Some(c) = r.mapping(v, &key)? {
                r.check_keys(
                    c,
                    &key,
                    &[
                        "max_retries",
                        "concurrency",
                        "type",
                        "message_group_field",
                        "backoff_ms",
                        "poll_interval_ms",
                        "max_priority",
                        "priority_field",
                        "lease_ms",
                    ],
                )?;
                let s = &mut nq.settings;
                // Upstream counts a named queue's `max_retries` as attempts (3 = 3 attempts).
                if let Some(x) = c.get("max_retries") {
                    s.max_attempts = u32_at_least_1(r, x, &format!("{key}.max_retries"))?;
                }
                if let Some(x) = c.get("concurrency") {
                    s.concurrency = u32_at_least_1(r, x, &format!("{key}.concurrency"))?;
                }
                if let Some(x) = c.get("type") {
                    s.fifo = mode(r, x, &format!("{key}.type"))?;
                }
                if let Some(x) = c.get("backoff_ms") {
                    s.backoff_ms = r.u64(x, &format!("{key}.backoff_ms"))?;
                }
                if let Some(x) = c.get("poll_interval_ms") {
                    s.poll_ms = r.u64(x, &format!("{key}.poll_interval_ms"))?.max(10);
                }
                if let Some(x) = c.get("lease_ms") {
                    s.lease_ms = r.u64(x, &format!("{key}.lease_ms"))?.max(1);
                }
                if let Some(x) = c.get("max_priority") {
                    let p = r.u64(x, &format!("{key}.max_priority"))?;
                    if !(1..=255).contains(&p) {
                        return Err(r.invalid(
                            &format!("{key}.max_priority"),
                            "between 1 and 255",
                            x,
                        ));
                    }
                }
                if let Some(x) = c.get("message_group_field").filter(|x| !x.is_null()) {
                    nq.group_field = Some(r.string(x, &format!("{key}.message_group_field"))?);
                }
            }
            if nq.settings.fifo && nq.group_field.is_none() {
                return Err(r.error(format!(
                    "`{key}`: a fifo queue needs `message_group_field` (the field of each message's data that names its group)"
                )));
            }
            qc.named.insert(name, nq);
        }
    }
    Ok(qc)
}

/// The settings of a `durable:subscriber` binding: its `queue_config` over the defaults.
/// Errors are registration errors (the binding is refused).
pub(crate) fn subscriber_settings(
    defaults: &Settings,
    binding_config: &Value,
) -> Result<Settings, String> {
    let mut s = defaults.clone();
    let Some(qc) = binding_config.get("queue_config").filter(|v| !v.is_null()) else {
        return Ok(s);
    };
    let Some(qc) = qc.as_object() else {
        return Err("`queue_config` must be an object".into());
    };
    let num = |k: &str| -> Result<Option<u64>, String> {
        match qc.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("`queue_config.{k}` must be a non-negative integer")),
        }
    };
    if let Some(t) = qc.get("type").filter(|v| !v.is_null()) {
        s.fifo = match t.as_str() {
            Some("standard") => false,
            Some("fifo") => true,
            _ => return Err("`queue_config.type` must be \"standard\" or \"fifo\"".into()),
        };
    }
    if let Some(n) = num("maxRetries")? {
        s.max_attempts = u32::try_from(n.saturating_add(1)).unwrap_or(u32::MAX);
    }
    if let Some(n) = num("concurrency")? {
        if n == 0 {
            return Err("`queue_config.concurrency` must be at least 1".into());
        }
        s.concurrency = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = num("backoffDelayMs")? {
        s.backoff_ms = n;
    }
    if let Some(n) = num("visibilityTimeout")?.or(num("leaseMs")?) {
        s.lease_ms = n.max(1);
    }
    if let Some(n) = num("delaySeconds")? {
        s.delay_ms = n.saturating_mul(1000);
    }
    if let Some(t) = qc.get("backoffType").filter(|v| !v.is_null()) {
        s.backoff = match t.as_str() {
            Some("exponential") => Backoff::Exponential,
            Some("fixed") => Backoff::Fixed,
            _ => {
                return Err(
                    "`queue_config.backoffType` must be \"exponential\" or \"fixed\"".into(),
                )
            }
        };
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_and_saturates() {
        let s = Settings::default();
        assert_eq!(s.retry_after(1), 1000);
        assert_eq!(s.retry_after(2), 2000);
        assert_eq!(s.retry_after(3), 4000);
        assert_eq!(s.retry_after(60), MAX_BACKOFF_MS);
    }

    #[test]
    fn subscriber_queue_config_uses_upstream_keys() {
        let s = subscriber_settings(
            &Settings::default(),
            &json!({"topic": "t", "queue_config": {"type": "fifo", "maxRetries": 2,
                "concurrency": 4, "backoffDelayMs": 10, "visibilityTimeout": 5000}}),
        )
        .unwrap();
        assert!(s.fifo);
        assert_eq!(
            s.max_attempts, 3,
            "maxRetries counts retries after the first attempt"
        );
        assert_eq!((s.concurrency, s.backoff_ms, s.lease_ms), (4, 10, 5000));
        let e = subscriber_settings(
            &Settings::default(),
            &json!({"queue_config": {"type": "lifo"}}),
        );
        assert!(e.unwrap_err().contains("queue_config.type"));
    }
}
