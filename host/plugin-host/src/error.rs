//! Errors of loading and calling adapter plugins.

use std::path::PathBuf;

use iii_adapter_api::{AdapterError, AdapterErrorKind};

use crate::containment::Contained;

/// Everything that can go wrong loading or calling an adapter. Each variant
/// names the adapter (its `name:` or `path:` as configured) so a message in
/// a log points at the config entry to fix.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("unknown adapter `{name}`: builtin adapters are {known}; to load your own, give `path: ./adapter.wasm` instead of `name:`")]
    UnknownAdapter { name: String, known: String },

    #[error("adapter file {} does not exist (fix the `path:` of the adapter entry)", path.display())]
    MissingFile { path: PathBuf },

    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("data directory {} of adapter `{adapter}` is in use by another adapter or engine (give each adapter its own `grants.data_dir`)", path.display())]
    DataDirInUse { adapter: String, path: PathBuf },

    #[error("invalid adapter spec: {0}")]
    InvalidSpec(String),

    #[error("adapter `{adapter}` is not a valid WebAssembly component: {reason}")]
    NotAComponent { adapter: String, reason: String },

    #[error("adapter `{adapter}` does not implement world `{world}`: missing export `{export}`")]
    MissingExport {
        adapter: String,
        world: String,
        export: String,
    },

    #[error("adapter `{adapter}` needs imports this host does not provide: {reason}")]
    UnsatisfiedImport { adapter: String, reason: String },

    #[error("adapter `{adapter}` failed to initialise: {message}")]
    Init { adapter: String, message: String },

    #[error("adapter `{adapter}` {cause}")]
    Contained { adapter: String, cause: Contained },

    #[error("adapter `{adapter}` reported {kind}: {message}")]
    Adapter {
        adapter: String,
        kind: AdapterErrorKind,
        message: String,
    },

    #[error("adapter `{adapter}` returned invalid JSON: {message}")]
    InvalidJson { adapter: String, message: String },

    #[error("adapter `{adapter}` was restarted {restarts} times within {window_s} s and has been given up; last failure: {last}")]
    GaveUp {
        adapter: String,
        restarts: usize,
        window_s: u64,
        last: String,
    },

    #[error("the plugin host provides no adapter world `{world}`; it provides {known}")]
    UnknownWorld { world: String, known: String },

    #[error("wasmtime: {0}")]
    Engine(String),
}

impl From<iii_adapter_api::SpecError> for PluginError {
    fn from(e: iii_adapter_api::SpecError) -> Self {
        PluginError::InvalidSpec(e.0)
    }
}

impl PluginError {
    /// True when the adapter instance was lost (trap, deadline, memory cap)
    /// and the supervisor restarted it.
    pub fn is_instance_failure(&self) -> bool {
        matches!(self, PluginError::Contained { cause, .. } if cause.loses_the_instance())
    }
}

/// What services see: the kind a service maps to a wire code, and this error's text (which
/// names the adapter and the knob to change) as the message.
impl From<PluginError> for AdapterError {
    fn from(e: PluginError) -> Self {
        let kind = match &e {
            PluginError::Contained { cause, .. } if cause.loses_the_instance() => {
                AdapterErrorKind::Unavailable
            }
            PluginError::GaveUp { .. } => AdapterErrorKind::Unavailable,
            PluginError::Adapter { kind, .. } => *kind,
            _ => AdapterErrorKind::Other,
        };
        AdapterError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_get_the_kind_and_the_full_message() {
        let e: AdapterError = PluginError::Contained {
            adapter: "kv".into(),
            cause: Contained::DeadlineExceeded {
                deadline_ms: 50,
                knob: "grants.deadline_ms",
            },
        }
        .into();
        assert_eq!(e.kind, AdapterErrorKind::Unavailable);
        assert!(
            e.message.contains("`kv`") && e.message.contains("grants.deadline_ms"),
            "{e}"
        );
        let e: AdapterError = PluginError::Adapter {
            adapter: "kv".into(),
            kind: AdapterErrorKind::InvalidInput,
            message: "key too long".into(),
        }
        .into();
        assert_eq!(e.kind, AdapterErrorKind::InvalidInput);
        assert_eq!(
            e.message,
            "adapter `kv` reported invalid input: key too long"
        );
        let e: AdapterError = PluginError::GaveUp {
            adapter: "kv".into(),
            restarts: 3,
            window_s: 60,
            last: "trapped".into(),
        }
        .into();
        assert!(e.is_instance_failure());
        let e: AdapterError = PluginError::Contained {
            adapter: "kv".into(),
            cause: Contained::CapabilityDenied {
                capability: "network tcp connect to 10.0.0.1:80".into(),
            },
        }
        .into();
        assert_eq!(
            e.kind,
            AdapterErrorKind::Other,
            "a denial does not lose the instance"
        );
        let e: AdapterError = PluginError::MissingFile {
            path: "/x.wasm".into(),
        }
        .into();
        assert_eq!(e.kind, AdapterErrorKind::Other);
    }
}
