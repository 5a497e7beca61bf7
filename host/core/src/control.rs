//! Run-time control of the running services: the seam between whatever changes configuration
//! while the engine runs (the `configuration` service, the `config.yaml` watcher) and the
//! composition root that owns the services.
//!
//! The composition root implements [`ServiceControl`] and provides it to the services'
//! prepare phase as an `Arc<dyn ServiceControl>` handle. A service that changes configuration
//! asks it for the configurable services ([`ServiceControl::settings`]) and hands it new values
//! ([`ServiceControl::apply`]); it never reaches another service directly.
//!
//! A value is validated by the owning service's pure `configure` phase before anything changes;
//! how it then takes effect is declared per top-level field of the service's config schema with
//! `x-apply` ([`ApplyTier`]).

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::config::ConfigError;
use crate::service::StartError;

/// How a change to a config field takes effect, declared in the service's schema as
/// `"x-apply": "live" | "rebind" | "restart"` on each top-level property (absent = `rebind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyTier {
    /// Applied to the running service in place (e.g. HTTP CORS, timeouts).
    Live,
    /// The service is recreated: a new instance starts, then the old one drains.
    Rebind,
    /// Takes effect at the next start of the engine (e.g. an adapter change).
    Restart,
}

impl ApplyTier {
    /// The tier a schema declares for its top-level property `field`.
    pub fn of_field(schema: &Value, field: &str) -> ApplyTier {
        match schema
            .get("properties")
            .and_then(|p| p.get(field))
            .and_then(|p| p.get("x-apply"))
            .and_then(Value::as_str)
        {
            Some("live") => ApplyTier::Live,
            Some("restart") => ApplyTier::Restart,
            _ => ApplyTier::Rebind,
        }
    }

    /// The tier a change from `old` to `new` needs: the highest tier among the top-level fields
    /// that differ (`None` when nothing differs).
    pub fn of_change(schema: &Value, old: &Value, new: &Value) -> Option<ApplyTier> {
        if !old.is_object() || !new.is_object() {
            return (old != new).then_some(ApplyTier::Rebind);
        }
        changed_fields(old, new)
            .iter()
            .map(|k| ApplyTier::of_field(schema, k))
            .max()
    }
}

/// The top-level keys whose values differ between two objects, each once, in the order they
/// first appear (`old`'s keys, then keys only `new` has). Non-objects have no fields.
pub fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    let mut out: Vec<String> = Vec::new();
    for k in o.keys().chain(n.keys()) {
        if o.get(k) != n.get(k) && !out.contains(k) {
            out.push(k.clone());
        }
    }
    out
}

/// One configurable service as the configuration layer sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSetting {
    /// The configuration id: the service's worker name (`iii-http`, `iii-state`, …).
    pub id: String,
    /// Its `config.yaml` entry name (`http`).
    pub name: String,
    /// One line.
    pub description: String,
    /// JSON Schema of its `config:` block, with `x-apply` per top-level field.
    pub schema: Value,
    /// The value it runs with now (its `config:` block as JSON; `{}` when absent).
    pub value: Value,
}

/// What [`ServiceControl::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The highest tier the change needed (`None`: nothing changed).
    pub tier: Option<ApplyTier>,
    /// For the caller to show: e.g. "applies at next start: adapter".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why a value could not be applied. The running service is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No running service has this configuration id.
    #[error("no configurable service has the id `{0}`")]
    Unknown(String),
    /// The owning service's configure phase refused the value.
    #[error("invalid configuration for `{id}`: {source}")]
    Invalid {
        /// The configuration id.
        id: String,
        /// The service's own message, naming the key.
        source: ConfigError,
    },
    /// The new instance could not start (e.g. its port is taken); the old one keeps serving.
    #[error("cannot apply the configuration of `{id}`: {source}")]
    Start {
        /// The configuration id.
        id: String,
        /// Why.
        source: StartError,
    },
}

/// The composition root's handle on its running services.
#[async_trait]
pub trait ServiceControl: Send + Sync {
    /// Every configurable service (one that declares a config schema), in start order.
    fn settings(&self) -> Vec<ServiceSetting>;

    /// Validates `value` as the whole `config:` block of service `id`, then applies it by the
    /// tier of the fields that changed. Called before that service has started (from an
    /// earlier service's prepare phase), the value replaces its `config.yaml` block for this
    /// start.
    async fn apply(&self, id: &str, value: Value) -> Result<Applied, ControlError>;

    /// Ticks whenever the running settings change by any means (an `apply`, a `config.yaml`
    /// reload), so a holder of stored values can follow. The default never ticks.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_change_needs_the_highest_tier_of_its_changed_fields() {
        let schema = json!({"properties": {
            "cors": {"x-apply": "live"},
            "port": {"x-apply": "rebind"},
            "adapter": {"x-apply": "restart"},
            "other": {}
        }});
        let tier = |o, n| ApplyTier::of_change(&schema, &o, &n);
        assert_eq!(tier(json!({"cors": 1}), json!({"cors": 1})), None);
        assert_eq!(
            tier(json!({"cors": 1}), json!({"cors": 2})),
            Some(ApplyTier::Live)
        );
        assert_eq!(
            tier(json!({"cors": 1}), json!({"cors": 2, "port": 3})),
            Some(ApplyTier::Rebind)
        );
        assert_eq!(
            tier(json!({"adapter": 1, "cors": 1}), json!({"cors": 2})),
            Some(ApplyTier::Restart)
        );
        // Undeclared fields rebind.
        assert_eq!(
            tier(json!({}), json!({"other": 1})),
            Some(ApplyTier::Rebind)
        );
    }
}
