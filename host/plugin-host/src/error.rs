//! Errors of loading and calling adapter plugins.

use std::path::PathBuf;

use iii_adapter_api::{AdapterError, AdapterErrorKind};

use crate::containment::Contained;

/// Everything that can go wrong loading or calling an adapter. Each variant
/// names the adapter (its `name:` or `path:` as configured) so a message in
/// a log points at the config entry to fix.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// `name:` is not one of the embedded plugins.
    #[error("unknown adapter `{name}`: builtin adapters are {known}; to load your own, give `path: ./adapter.wasm` instead of `name:`")]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The embedded names, comma-separated.
        known: String,
    },

    /// `path:` names no file.
    #[error("adapter file {} does not exist (fix the `path:` of the adapter entry)", path.display())]
    MissingFile {
        /// The path after resolving it against the host's base dir.
        path: PathBuf,
    },

    /// Reading a component, or preparing a data directory, failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Another adapter (in this or another process) holds the data directory.
    #[error("data directory {} of adapter `{adapter}` is in use by another adapter or engine (give each adapter its own `grants.data_dir`)", path.display())]
    DataDirInUse {
        /// The adapter that asked for it.
        adapter: String,
        /// The directory.
        path: PathBuf,
    },

    /// The `adapter:` entry is malformed or asks for more than the host allows.
    #[error("invalid adapter spec: {0}")]
    InvalidSpec(String),

    /// The bytes are not a component this engine can compile.
    #[error("adapter `{adapter}` is not a valid WebAssembly component: {reason}")]
    NotAComponent {
        /// The adapter's label.
        adapter: String,
        /// wasmtime's reason.
        reason: String,
    },

    /// The component lacks an export of the world it was loaded as, or has it with other
    /// signatures.
    #[error("adapter `{adapter}` does not implement world `{world}`: missing export `{export}`")]
    MissingExport {
        /// The adapter's label.
        adapter: String,
        /// The world it was loaded as.
        world: String,
        /// The export, `package/interface@version`.
        export: String,
    },

    /// The component imports something the host does not link.
    #[error("adapter `{adapter}` needs imports this host does not provide: {reason}")]
    UnsatisfiedImport {
        /// The adapter's label.
        adapter: String,
        /// wasmtime's description of the missing import.
        reason: String,
    },

    /// `lifecycle.init` returned an error.
    #[error("adapter `{adapter}` failed to initialise: {message}")]
    Init {
        /// The adapter's label.
        adapter: String,
        /// The adapter's error.
        message: String,
    },

    /// The host stopped a call (deadline, memory, fuel, trap) or refused a capability.
    #[error("adapter `{adapter}` {cause}")]
    Contained {
        /// The adapter's label.
        adapter: String,
        /// Why.
        cause: Contained,
    },

    /// The adapter returned its world's `error`.
    #[error("adapter `{adapter}` reported {kind}: {message}")]
    Adapter {
        /// The adapter's label.
        adapter: String,
        /// The adapter's classification.
        kind: AdapterErrorKind,
        /// The adapter's message.
        message: String,
    },

    /// A JSON text the adapter returned does not parse.
    #[error("adapter `{adapter}` returned invalid JSON: {message}")]
    InvalidJson {
        /// The adapter's label.
        adapter: String,
        /// The parse error.
        message: String,
    },

    /// The supervisor spent its restart budget; every call fails with this from now on.
    #[error("adapter `{adapter}` was restarted {restarts} times within {window_s} s and has been given up; last failure: {last}")]
    GaveUp {
        /// The adapter's label.
        adapter: String,
        /// Restarts within the window.
        restarts: usize,
        /// The window (`HostConfig::restart_window`).
        window_s: u64,
        /// The failure that spent the budget.
        last: String,
    },

    /// A loader asked for a world no module of this host binds.
    #[error("the plugin host provides no adapter world `{world}`; it provides {known}")]
    UnknownWorld {
        /// The world asked for.
        world: String,
        /// The registered worlds.
        known: String,
    },

    /// wasmtime failed outside a plugin call (engine set-up, linking, export loading).
    #[error("wasmtime: {0}")]
    Engine(String),

    /// Loading or calling a policy failed.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
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
        if let PluginError::Policy(p) = e {
            return p.into();
        }
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
