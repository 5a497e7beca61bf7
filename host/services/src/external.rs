//! Daemons that run out of process as workers, supervised by the engine (upstream's
//! "known external" entries): `iii-sandbox` today. The entry's `config:` block is written to a
//! private temporary YAML file and handed to the daemon with `--config`; the daemon connects
//! back over the worker socket like any worker.
//!
//! Supervision: the daemon's configuration is checked (`--check`) before anything serves, so a
//! bad block fails start-up (or a reload) with the daemon's own message; the process is
//! restarted with back-off when it dies; its stdout/stderr lines go to the engine's log; it
//! stops with the engine (SIGTERM, then SIGKILL after a grace period). Its stdin is the
//! lifeline: the engine holds the write end, so the daemon sees EOF (and cleans up) however
//! the engine ends, and `PR_SET_PDEATHSIG` covers a daemon blocked elsewhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use iii_core::config::ConfigError;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
        let endpoints: WorkerEndpoints = cx.get(self.name)?;
        let addr = endpoints
            .for_daemons()
            .ok_or_else(|| fail("no worker socket listener is open for it to connect to".into()))?;
        let engine_url = format!("ws://{addr}");
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

impl Ready {
    fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--engine")
            .arg(&self.engine_url)
            .env("III_ENGINE_URL", &self.engine_url)
            .env("III_URL", &self.engine_url)
            .env("III_ENGINE_PID", std::process::id().to_string())
            .env("III_LIFELINE", "stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only the child's
        // own process attributes; nothing else runs between fork and exec here.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.spawn()
    }
}

/// Sends each line of `r` to the engine's log under the daemon's name.
fn forward_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(name: &'static str, r: R) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Keep the daemon's own level when its line starts with one.
            let trimmed = line.trim_start();
            let (level, rest) = trimmed.split_once(' ').unwrap_or(("", trimmed));
            let rest = rest.trim_start();
            match level {
                "ERROR" => tracing::error!(target: "iii::daemon", daemon = name, "{rest}"),
                "WARN" => tracing::warn!(target: "iii::daemon", daemon = name, "{rest}"),
                "INFO" => tracing::info!(target: "iii::daemon", daemon = name, "{rest}"),
                "DEBUG" => tracing::debug!(target: "iii::daemon", daemon = name, "{rest}"),
                "TRACE" => tracing::trace!(target: "iii::daemon", daemon = name, "{rest}"),
                _ => tracing::info!(target: "iii::daemon", daemon = name, "{line}"),
            }
        }
    });
}

/// Stops a child: SIGTERM (it stops its sandboxes), then SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet (we hold it).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

impl Prepared for Ready {
    fn install(&mut self, _reg: &mut Registrar<'_>) {}

    fn run(self: Box<Self>, _core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        Some(Box::pin(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let mut child = match self.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(
                            daemon = self.name,
                            "cannot start {}: {e}; retrying in {backoff:?}",
                            self.program.display()
                        );
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                };
                tracing::info!(
                    daemon = self.name,
                    pid = child.id(),
                    "{} started",
                    self.name
                );
                if let Some(o) = child.stdout.take() {
                    forward_lines(self.name, o);
                }
                if let Some(e) = child.stderr.take() {
                    forward_lines(self.name, e);
                }
                // Held, never written: EOF on the daemon's stdin means the engine is gone.
                let lifeline = child.stdin.take();
                let started = std::time::Instant::now();
                tokio::select! {
                    _ = stop.cancelled() => {
                        terminate(&mut child, Duration::from_secs(15)).await;
                        drop(lifeline);
                        break;
                    }
                    status = child.wait() => {
                        drop(lifeline);
                        // A daemon that ran a while gets a fresh back-off.
                        if started.elapsed() > Duration::from_secs(60) {
                            backoff = Duration::from_millis(500);
                        }
                        tracing::warn!(daemon = self.name, "{} exited ({}); restarting in {backoff:?}", self.name,
                            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            let _ = std::fs::remove_file(&self.config);
        }))
    }
}
