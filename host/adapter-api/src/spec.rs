//! The `adapter:` entry of config.yaml.
//!
//! ```yaml
//! adapter:
//!   name: kv                 # a builtin plugin embedded in the binary …
//!   # path: ./my-adapter.wasm  … or a component file (relative to the project)
//!   config: { compact_min_bytes: 1048576 }
//!   grants:
//!     network: ["redis.internal:6379"]
//!     data_dir: ./data/state
//!     memory_mb: 64
//!     deadline_ms: 5000
//!     fuel: 100000000        # optional, needs HostConfig::fuel
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A malformed `adapter:` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid adapter spec: {0}")]
pub struct SpecError(pub String);

/// Default memory cap of an adapter instance.
pub const DEFAULT_MEMORY_MB: u64 = 128;
/// Default per-call deadline.
pub const DEFAULT_DEADLINE_MS: u64 = 10_000;

/// Where an adapter's component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdapterSource {
    /// A first-party plugin embedded in the binary (`kv`).
    #[serde(rename = "name")]
    Name(String),
    /// A `.wasm` component file.
    #[serde(rename = "path")]
    Path(PathBuf),
}

/// Capabilities granted to an adapter. Everything absent is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `host:port` entries the plugin may connect to (TCP). Host names are
    /// resolved again at every connect and the resolved address must match.
    #[serde(default)]
    pub network: Vec<String>,
    /// Host directory preopened read-write at `/data` in the guest.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Memory cap of one instance, in MiB (default [`DEFAULT_MEMORY_MB`]).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Per-call deadline in milliseconds (default [`DEFAULT_DEADLINE_MS`]).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Fuel units per call (deterministic instruction budget).
    #[serde(default)]
    pub fuel: Option<u64>,
}

impl Grants {
    /// The memory cap in MiB, default applied.
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb.unwrap_or(DEFAULT_MEMORY_MB)
    }

    /// The per-call deadline in milliseconds, default applied.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS)
    }
}

/// One `adapter:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// Where the component comes from.
    pub source: AdapterSource,
    /// The `config:` map, handed to the plugin through `iii:adapter/config`.
    pub config: Map<String, Value>,
    /// What the component may touch.
    pub grants: Grants,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    path: Option<PathBuf>,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    grants: Grants,
}

impl AdapterSpec {
    /// An embedded plugin by name with no config and default grants.
    pub fn named(name: impl Into<String>) -> AdapterSpec {
        AdapterSpec {
            source: AdapterSource::Name(name.into()),
            config: Map::new(),
            grants: Grants::default(),
        }
    }

    /// A component file with no config and default grants.
    pub fn path(path: impl Into<PathBuf>) -> AdapterSpec {
        AdapterSpec {
            source: AdapterSource::Path(path.into()),
            config: Map::new(),
            grants: Grants::default(),
        }
    }

    /// Replaces the `config:` map.
    pub fn with_config(mut self, config: Map<String, Value>) -> Self {
        self.config = config;
        self
    }

    /// Replaces the grants.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// Parses the JSON form of an `adapter:` entry (what serde_yaml gives for
    /// the YAML form). Exactly one of `name` / `path` must be present.
    pub fn from_value(v: &Value) -> Result<AdapterSpec, SpecError> {
        let raw: RawSpec = serde_json::from_value(v.clone())
            .map_err(|e| SpecError(format!("adapter entry: {e}")))?;
        let source = match (raw.name, raw.path) {
            (Some(n), None) => AdapterSource::Name(n),
            (None, Some(p)) => AdapterSource::Path(p),
            (Some(_), Some(_)) => {
                return Err(SpecError(
                    "adapter entry has both `name` and `path`; keep one".into(),
                ))
            }
            (None, None) => {
                return Err(SpecError(
                    "adapter entry needs `name: kv` or `path: ./adapter.wasm`".into(),
                ))
            }
        };
        let config = match raw.config {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(SpecError(format!(
                    "adapter `config` must be a map, got {other}"
                )))
            }
        };
        if raw.grants.memory_mb == Some(0) {
            return Err(SpecError("grants.memory_mb must be at least 1".into()));
        }
        if raw.grants.deadline_ms == Some(0) {
            return Err(SpecError("grants.deadline_ms must be at least 1".into()));
        }
        Ok(AdapterSpec {
            source,
            config,
            grants: raw.grants,
        })
    }

    /// The label used in errors and logs: the name, or the file name.
    pub fn label(&self) -> String {
        match &self.source {
            AdapterSource::Name(n) => n.clone(),
            AdapterSource::Path(p) => p.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_config_yaml_shape() {
        let s = AdapterSpec::from_value(&json!({
            "path": "./x.wasm",
            "config": {"a": 1},
            "grants": {"network": ["localhost:6379"], "data_dir": "/tmp/d", "memory_mb": 8, "deadline_ms": 50, "fuel": 10}
        }))
        .unwrap();
        assert_eq!(s.source, AdapterSource::Path("./x.wasm".into()));
        assert_eq!(s.config["a"], json!(1));
        assert_eq!(s.grants.network, vec!["localhost:6379".to_string()]);
        assert_eq!(s.grants.memory_mb(), 8);
        assert_eq!(s.grants.fuel, Some(10));
    }

    #[test]
    fn rejects_ambiguous_and_unknown_fields() {
        assert!(AdapterSpec::from_value(&json!({"name": "kv", "path": "x"})).is_err());
        assert!(AdapterSpec::from_value(&json!({})).is_err());
        let e =
            AdapterSpec::from_value(&json!({"name": "kv", "grants": {"disk": "/"}})).unwrap_err();
        assert!(e.to_string().contains("disk"), "{e}");
    }
}
