//! `sandbox::run`: create → write sibling files → write the code → exec → stop, in one call.
//! A failed step names itself (`RunStepFailed`) and, unless `keep_sandbox`, the sandbox is
//! stopped either way.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::daemon::{CreateRequest, Daemon, ExecInput, StopRequest};
use crate::error::SandboxError;
use crate::request::EnvInput;

/// One extra file of a run.
#[derive(Debug, Deserialize)]
pub struct RunFile {
    /// Absolute path in the sandbox.
    pub path: String,
    /// UTF-8 contents.
    pub content: String,
}

/// `sandbox::run`.
#[derive(Debug, Deserialize)]
pub struct RunRequest {
    /// Catalog name.
    pub image: String,
    /// The program text.
    pub code: String,
    /// Interpreter; defaults from the preset image (python → python, node → node).
    #[serde(default)]
    pub lang: Option<String>,
    /// Files written before the code.
    #[serde(default)]
    pub files: Vec<RunFile>,
    /// Environment (of the sandbox and the exec).
    #[serde(default)]
    pub env: EnvInput,
    /// Base64 stdin.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Exec timeout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Keep the sandbox (its id is returned).
    #[serde(default)]
    pub keep_sandbox: bool,
}

/// Interpreter argv prefix and file extension for a language name.
pub fn interpreter(lang: &str) -> (Vec<String>, &'static str) {
    match lang {
        "node" | "js" | "javascript" => (vec!["node".into()], "js"),
        "python" | "py" => (vec!["python3".into()], "py"),
        "shell" | "sh" | "bash" => (vec!["/bin/sh".into()], "sh"),
        other => (vec![other.to_string()], "txt"),
    }
}

impl Daemon {
    /// `sandbox::run`.
    pub async fn run(&self, r: RunRequest) -> Result<Value, SandboxError> {
        let lang = match r.lang.as_deref() {
            Some(l) if !l.is_empty() => l.to_string(),
            // Only the presets imply a language; anything else must say.
            _ => match r.image.as_str() {
                "python" | "node" => r.image.clone(),
                _ => {
                    return Err(SandboxError::InvalidRequest(format!(
                        "`lang` is required for image '{}' (e.g. \"python\", \"node\", \"sh\")",
                        r.image
                    )))
                }
            },
        };
        let (mut argv, ext) = interpreter(&lang);
        let step = |step: &'static str, id: &str| {
            let id = id.to_string();
            move |e: SandboxError| SandboxError::RunStepFailed {
                step,
                sandbox_id: id,
                inner: Box::new(e),
            }
        };
        let created = self
            .create(CreateRequest {
                image: r.image.clone(),
                cpus: None,
                memory_mb: None,
                name: None,
                network: None,
                idle_timeout_secs: None,
                env: r.env.clone(),
            })
            .await
            .map_err(step("create", ""))?;
        let id = created["sandbox_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let result = self.run_steps(&id, &r, &mut argv, ext).await;
        if !r.keep_sandbox {
            if let Err(e) = self
                .stop(StopRequest {
                    sandbox_id: id.clone(),
                    wait: Some(true),
                })
                .await
            {
                tracing::warn!(sandbox_id = %id, "sandbox::run could not stop its sandbox: {e}");
            }
        }
        let mut out = result?;
        if r.keep_sandbox {
            out["sandbox_id"] = Value::String(id);
        }
        Ok(out)
    }

    async fn run_steps(
        &self,
        id: &str,
        r: &RunRequest,
        argv: &mut Vec<String>,
        ext: &str,
    ) -> Result<Value, SandboxError> {
        let wrap = |step: &'static str| {
            let id = id.to_string();
            move |e: SandboxError| SandboxError::RunStepFailed {
                step,
                sandbox_id: id,
                inner: Box::new(e),
            }
        };
        for f in &r.files {
            self.write_text(id, &f.path, &f.content)
                .await
                .map_err(wrap("fs::write (sibling file)"))?;
        }
        let code_path = format!("/tmp/run.{ext}");
        self.write_text(id, &code_path, &r.code)
            .await
            .map_err(wrap("fs::write (code)"))?;
        argv.push(code_path);
        self.exec(ExecInput {
            sandbox_id: id.to_string(),
            argv: argv.clone(),
            stdin: r.stdin.clone(),
            env: r.env.clone(),
            timeout_ms: r.timeout_ms,
            ..Default::default()
        })
        .await
        .map_err(wrap("exec"))
    }

    async fn write_text(&self, id: &str, path: &str, text: &str) -> Result<Value, SandboxError> {
        let req = serde_json::from_value(json!({
            "sandbox_id": id, "path": path, "mode": "0644", "parents": true, "content": text,
        }))
        .map_err(|e| SandboxError::InvalidRequest(e.to_string()))?;
        self.fs_write(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters() {
        assert_eq!(interpreter("js"), (vec!["node".to_string()], "js"));
        assert_eq!(interpreter("py"), (vec!["python3".to_string()], "py"));
        assert_eq!(interpreter("bash"), (vec!["/bin/sh".to_string()], "sh"));
        assert_eq!(interpreter("ruby"), (vec!["ruby".to_string()], "txt"));
    }
}
