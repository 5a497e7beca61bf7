//! Daemons that run out of process as workers, supervised by the engine (upstream's
//! "known external" entries): `iii-sandbox` today. The entry's `config:` block is written to a
//! private temporary YAML file and handed to the daemon with `--config`; the daemon connects
//! back over the worker socket like any worker.
//!
//! Managed workers (`- name: <own name>` with `image:` or `worker_path:`, [`ManagedWorkers`])
//! run the same way, one `iii-worker-host` process per entry, which runs the image or the
//! project in a sandbox; they can be stopped, started and restarted while the engine runs
//! (`worker::*`), and their output also goes to per-worker log files.
//!
//! Supervision: the daemon's configuration is checked (`--check`) before anything serves, so a
//! bad block fails start-up (or a reload) with the daemon's own message; the process is
//! restarted with back-off when it dies ([`supervise`]); its stdout/stderr lines go to the
//! engine's log; it
//! stops with the engine (SIGTERM, then SIGKILL after a grace period). Its stdin is the
//! lifeline: the engine holds the write end, so the daemon sees EOF (and cleans up) however
//! the engine ends, and `PR_SET_PDEATHSIG` covers a daemon blocked elsewhere.

mod logs;
mod managed;
mod supervise;

pub use managed::{ManagedWorkers, IMAGE_WORKERS};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use iii_core::config::ConfigError;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError,
};
use tokio::process::Command;

use supervise::{supervise, Control, Launch};

use crate::common::WorkerEndpoints;

/// A supervised daemon entry.
pub struct ExternalWorker {
    /// The entry name (and the worker name the daemon registers as).
    pub name: &'static str,
    /// The program, looked up next to the engine binary, then on `PATH`.
    pub program: &'static str,
    /// An environment variable that overrides the program's path.
    pub program_env: &'static str,
}

struct Configured_ {
    name: &'static str,
    program: &'static str,
    program_env: &'static str,
    yaml: String,
}

impl Service for ExternalWorker {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: self.name,
            worker: self.name,
            deprecated_names: &[],
            repeatable: false,
            always_on: false,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let e = &entries[0];
        let yaml = match e.config {
            serde_yaml::Value::Null => String::new(),
            serde_yaml::Value::Mapping(_) => serde_yaml::to_string(e.config)
                .map_err(|x| e.reader.error(format!("`{}`: {x}", e.key("config"))))?,
            other => {
                return Err(e
                    .reader
                    .invalid(&e.key("config"), "a mapping of settings", other))
            }
        };
        Ok(Box::new(Configured_ {
            name: self.name,
            program: self.program,
            program_env: self.program_env,
            yaml,
        }))
    }
}

/// The daemon's program: `$<program_env>`, else beside the running engine, else `PATH`.
fn locate(program: &str, program_env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(program_env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(program);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Writes the daemon's config file, readable by the engine's user only.
fn write_config(path: &Path, yaml: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(yaml.as_bytes())
}

struct Ready {
    name: &'static str,
    program: PathBuf,
    config: PathBuf,
    engine_url: String,
}

#[async_trait::async_trait]
impl Configured for Configured_ {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let fail = |message: String| StartError::Service {
            service: self.name,
            message,
        };
        let program = locate(self.program, self.program_env).ok_or_else(|| {
            fail(format!(
                "its program `{}` was not found next to the engine binary or on PATH (set {} to its path)",
                self.program, self.program_env
            ))
        })?;
        let engine_url = engine_url(cx, self.name)?;
        let config = std::env::temp_dir().join(format!(
            "iii-{}-{}-config.yaml",
            self.name,
            std::process::id()
        ));
        let yaml = if self.yaml.is_empty() {
            "{}\n".to_string()
        } else {
            self.yaml.clone()
        };
        write_config(&config, &yaml).map_err(|source| StartError::Io {
            path: config.display().to_string(),
            source,
        })?;
        // Fail closed before anything serves: the daemon judges its own configuration and
        // whether its runtime can work on this host.
        let out = Command::new(&program)
            .arg("--config")
            .arg(&config)
            .arg("--engine")
            .arg(&engine_url)
            .arg("--check")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = msg.trim();
            return Err(fail(if msg.is_empty() {
                format!("{} --check exited with {}", program.display(), out.status)
            } else {
                msg.trim_start_matches(&format!("{}: ", self.program))
                    .to_string()
            }));
        }
        Ok(Box::new(Ready {
            name: self.name,
            program,
            config,
            engine_url,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The worker socket a daemon connects back to, as a `ws://` URL.
fn engine_url(cx: &PrepareCx<'_>, service: &'static str) -> Result<String, StartError> {
    let endpoints: WorkerEndpoints = cx.get(service)?;
    let addr = endpoints.for_daemons().ok_or_else(|| StartError::Service {
        service,
        message: "no worker socket listener is open for it to connect to".into(),
    })?;
    Ok(format!("ws://{addr}"))
}

impl Prepared for Ready {
    fn install(&mut self, _reg: &mut Registrar<'_>) {}

    fn run(self: Box<Self>, _core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let launch = Launch {
            label: Arc::from(self.name),
            args: vec![
                "--config".into(),
                self.config.clone().into(),
                "--engine".into(),
                self.engine_url.clone().into(),
            ],
            env: vec![
                ("III_ENGINE_URL".into(), self.engine_url.clone()),
                ("III_URL".into(), self.engine_url.clone()),
            ],
            program: self.program,
            grace: Duration::from_secs(15),
            config: self.config,
        };
        Some(Box::pin(supervise(launch, Control::new(None, None), stop)))
    }
}
