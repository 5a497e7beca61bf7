//! The `sandbox::*` error catalogue: S-codes, their categories, and the JSON envelope every
//! handler returns on failure (workers-and-sandboxes §4.5). The envelope travels as the message
//! of an `invocation_failed` error, prefixed `handler error: `, as upstream's daemon sends it.

use serde_json::{json, Value};

/// Where each code's documentation lives; the anchor is the code itself.
pub const DOCS_BASE: &str =
    "https://github.com/iii-hq/iii/blob/main/crates/iii-worker/src/sandbox_daemon/README.md#";

/// Every way a `sandbox::*` call fails.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SandboxError {
    /// S001.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// S002.
    #[error("sandbox not found: {0}")]
    NotFound(String),
    /// S003.
    #[error("sandbox {0} is at its exec concurrency cap (max_concurrent_exec_per_sandbox)")]
    ConcurrentExec(String),
    /// S004.
    #[error("sandbox already stopped: {0}")]
    AlreadyStopped(String),
    /// S100.
    #[error("image '{0}' not in catalog; valid presets are 'python' and 'node', or add a custom image via worker config (see S100 docs)")]
    ImageNotInCatalog(String),
    /// S101.
    #[error(
        "rootfs missing on disk for image '{0}'. Run: iii worker add <image-ref> (see S101 docs)"
    )]
    RootfsMissing(String),
    /// S102.
    #[error("auto-install failed for image '{image}': {reason}")]
    AutoInstallFailed {
        /// The requested image name.
        image: String,
        /// Why the build or import failed.
        reason: String,
    },
    /// S200.
    #[error("exec timed out after {0} ms")]
    ExecTimedOut(u64),
    /// S210–S219: a file operation failed; `code` is the S-code the guest (or the daemon) chose.
    #[error("{message}")]
    Fs {
        /// S210 … S219.
        code: &'static str,
        /// The guest's message (`file not found: /x`, …).
        message: String,
    },
    /// S300.
    #[error("VM boot failed: {0}")]
    BootFailed(String),
    /// S400.
    #[error("resource limit exceeded: {0}")]
    ResourceLimit(String),
    /// A `sandbox::run` sub-step failed: the inner error, with the step and the sandbox.
    #[error("during sandbox::run step `{step}` (sandbox_id={sandbox_id}): {inner}")]
    RunStepFailed {
        /// `create`, `fs::write (sibling file)`, `fs::write (code)`, `exec`.
        step: &'static str,
        /// The sandbox's id, or empty when create failed.
        sandbox_id: String,
        /// What failed.
        inner: Box<SandboxError>,
    },
}

/// The file-operation codes a guest may send, with their default messages' meaning.
const FS_CODES: &[&str] = &[
    "S210", "S211", "S212", "S213", "S214", "S215", "S216", "S217", "S218", "S219",
];

impl SandboxError {
    /// A file-operation error from a guest code; an unknown code becomes S216 (I/O).
    pub fn fs(code: &str, message: impl Into<String>) -> Self {
        let code = FS_CODES
            .iter()
            .find(|c| **c == code)
            .copied()
            .unwrap_or("S216");
        SandboxError::Fs {
            code,
            message: message.into(),
        }
    }

    /// The S-code.
    pub fn code(&self) -> &'static str {
        match self {
            SandboxError::InvalidRequest(_) => "S001",
            SandboxError::NotFound(_) => "S002",
            SandboxError::ConcurrentExec(_) => "S003",
            SandboxError::AlreadyStopped(_) => "S004",
            SandboxError::ImageNotInCatalog(_) => "S100",
            SandboxError::RootfsMissing(_) => "S101",
            SandboxError::AutoInstallFailed { .. } => "S102",
            SandboxError::ExecTimedOut(_) => "S200",
            SandboxError::Fs { code, .. } => code,
            SandboxError::BootFailed(_) => "S300",
            SandboxError::ResourceLimit(_) => "S400",
            SandboxError::RunStepFailed { inner, .. } => inner.code(),
        }
    }

    /// The category (`type` on the wire).
    pub fn category(&self) -> &'static str {
        match self.code() {
            "S001" | "S002" | "S003" | "S004" => "validation",
            "S100" | "S400" => "config",
            "S101" => "internal",
            "S102" | "S218" => "transient",
            "S200" => "execution",
            "S300" => "platform",
            _ => "filesystem",
        }
    }

    /// Whether the same request may succeed if simply retried.
    pub fn retryable(&self) -> bool {
        matches!(self.code(), "S102" | "S218")
    }

    /// Is this the parent-missing flavour of S211 (recoverable with `parents: true`)?
    fn parent_missing(&self) -> bool {
        matches!(self, SandboxError::Fs { code: "S211", message }
            if message.contains("parent not found") || message.contains("parent directory not found"))
    }

    /// A payload to merge into the original request and resubmit, when recovery is unambiguous.
    pub fn fix(&self) -> Value {
        match self {
            SandboxError::RunStepFailed {
                step,
                sandbox_id,
                inner,
            } => json!({
                "context": format!("during sandbox::run step `{step}`"),
                "sandbox_id": sandbox_id,
                "inner_code": inner.code(),
            }),
            e if e.parent_missing() => json!({"parents": true}),
            _ => Value::Null,
        }
    }

    /// What to do about it, for agents and people.
    pub fn fix_note(&self) -> Value {
        let note = match self {
            SandboxError::RunStepFailed { inner, .. } => return inner.fix_note(),
            e if e.parent_missing() => {
                "merge `fix` into the original request and resubmit: `parents: true` auto-creates missing intermediate directories"
            }
            SandboxError::InvalidRequest(_) => "see message: examples are inline",
            SandboxError::NotFound(_) | SandboxError::AlreadyStopped(_) => {
                "the sandbox is gone; call sandbox::create first"
            }
            SandboxError::ConcurrentExec(_) => {
                "execs per sandbox are capped (max_concurrent_exec_per_sandbox, default 4): wait for one to finish, run long-lived servers detached (`nohup … &`) so their exec returns, or stop this sandbox and create another"
            }
            SandboxError::ImageNotInCatalog(_) => {
                "set `image` to a value listed in the message or add a custom_images entry in iii.config.yaml"
            }
            SandboxError::RootfsMissing(_) => {
                "operator action required: run `iii worker add <image-ref>` on the host"
            }
            SandboxError::AutoInstallFailed { .. } => "transient: retry after a short delay",
            SandboxError::ExecTimedOut(_) => {
                "raise `timeout_ms` on the exec call or split the work into smaller steps"
            }
            SandboxError::BootFailed(_) | SandboxError::ResourceLimit(_) => {
                "platform-level failure; not auto-recoverable"
            }
            SandboxError::Fs { .. } => return Value::Null,
        };
        Value::String(note.into())
    }

    /// The JSON envelope (§4.5).
    pub fn envelope(&self) -> Value {
        json!({
            "type": self.category(),
            "code": self.code(),
            "message": self.to_string(),
            "docs_url": format!("{DOCS_BASE}{}", self.code()),
            "retryable": self.retryable(),
            "fix": self.fix(),
            "fix_note": self.fix_note(),
        })
    }

    /// The SDK error a handler returns: `invocation_failed` with `handler error: <envelope>`.
    pub fn into_sdk(self) -> iii_sdk::Error {
        iii_sdk::Error::Remote {
            code: "invocation_failed".into(),
            message: format!("handler error: {}", self.envelope()),
            stacktrace: None,
        }
    }
}

/// Shorthand for S001.
pub fn invalid(msg: impl Into<String>) -> SandboxError {
    SandboxError::InvalidRequest(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_every_field() {
        let e = SandboxError::fs("S211", "parent directory not found: /workspace/a/b");
        let v = e.envelope();
        assert_eq!(v["type"], "filesystem");
        assert_eq!(v["code"], "S211");
        assert_eq!(v["message"], "parent directory not found: /workspace/a/b");
        assert_eq!(v["docs_url"], format!("{DOCS_BASE}S211"));
        assert_eq!(v["retryable"], false);
        assert_eq!(v["fix"], json!({"parents": true}));
        assert!(v["fix_note"].as_str().unwrap().contains("parents: true"));
        let plain = SandboxError::fs("S211", "file not found: /x").envelope();
        assert_eq!(plain["fix"], Value::Null);
        assert_eq!(plain["fix_note"], Value::Null);
    }

    #[test]
    fn categories_and_retry() {
        assert_eq!(SandboxError::NotFound("x".into()).category(), "validation");
        assert_eq!(
            SandboxError::ImageNotInCatalog("x".into()).category(),
            "config"
        );
        assert_eq!(
            SandboxError::RootfsMissing("x".into()).category(),
            "internal"
        );
        let t = SandboxError::AutoInstallFailed {
            image: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(t.category(), "transient");
        assert!(t.retryable());
        assert_eq!(SandboxError::ExecTimedOut(5).category(), "execution");
        assert_eq!(SandboxError::BootFailed("x".into()).category(), "platform");
        assert_eq!(SandboxError::fs("S299", "odd").code(), "S216");
        assert!(SandboxError::fs("S218", "aborted").retryable());
    }

    #[test]
    fn run_step_wraps_the_inner_code() {
        let e = SandboxError::RunStepFailed {
            step: "exec",
            sandbox_id: "abc".into(),
            inner: Box::new(SandboxError::ExecTimedOut(100)),
        };
        let v = e.envelope();
        assert_eq!(v["code"], "S200");
        assert_eq!(v["type"], "execution");
        assert_eq!(
            v["message"],
            "during sandbox::run step `exec` (sandbox_id=abc): exec timed out after 100 ms"
        );
        assert_eq!(
            v["fix"],
            json!({"context": "during sandbox::run step `exec`", "sandbox_id": "abc", "inner_code": "S200"})
        );
        assert_eq!(v["fix_note"], SandboxError::ExecTimedOut(1).fix_note());
    }

    #[test]
    fn sdk_error_carries_the_envelope() {
        match SandboxError::NotFound("id".into()).into_sdk() {
            iii_sdk::Error::Remote { code, message, .. } => {
                assert_eq!(code, "invocation_failed");
                let json: Value =
                    serde_json::from_str(message.strip_prefix("handler error: ").unwrap()).unwrap();
                assert_eq!(json["code"], "S002");
            }
            other => panic!("{other:?}"),
        }
    }
}
