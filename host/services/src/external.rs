//! Daemons that run out of process as workers, supervised by the engine (upstream's
//! "known external" entries): `iii-sandbox` today. The entry's `config:` block is written to a
//! private temporary YAML file and handed to the daemon with `--config`; the daemon connects
//! back over the worker socket like any worker.
//!
//! Image workers (`- name: <own name>` with `image:`, [`ImageWorkers`]) run the same way, one
//! `iii-worker-host` process per entry, which runs the image in a sandbox.
//!
//! Supervision: the daemon's configuration is checked (`--check`) before anything serves, so a
//! bad block fails start-up (or a reload) with the daemon's own message; the process is
//! restarted with back-off when it dies; its stdout/stderr lines go to the engine's log; it
//! stops with the engine (SIGTERM, then SIGKILL after a grace period). Its stdin is the
//! lifeline: the engine holds the write end, so the daemon sees EOF (and cleans up) however
//! the engine ends, and `PR_SET_PDEATHSIG` covers a daemon blocked elsewhere.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use iii_core::config::ConfigError;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

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

/// How to start one supervised process, again after each exit.
struct Launch {
    /// Who it is in the engine's log (`daemon = …`).
    label: Arc<str>,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    /// How long it may take to stop after SIGTERM before it is killed.
    grace: Duration,
    /// Removed once the process is stopped for good.
    config: PathBuf,
}

impl Launch {
    fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

/// Restart back-off: the first wait, its ceiling, and the uptime after which it resets.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// Runs `launch` until `stop`: restarted with back-off (1 s, doubling to 30 s, reset after a
/// minute up) whenever it exits; on `stop`, SIGTERM then SIGKILL after its grace.
async fn supervise(launch: Launch, stop: CancellationToken) {
    let label = launch.label.clone();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let mut child = match launch.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    daemon = %label,
                    "cannot start {}: {e}; retrying in {backoff:?}",
                    launch.program.display()
                );
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!(daemon = %label, pid = child.id(), "{label} started");
        if let Some(o) = child.stdout.take() {
            forward_lines(label.clone(), o);
        }
        if let Some(e) = child.stderr.take() {
            forward_lines(label.clone(), e);
        }
        // Held, never written: EOF on the child's stdin means the engine is gone.
        let lifeline = child.stdin.take();
        let started = Instant::now();
        tokio::select! {
            _ = stop.cancelled() => {
                terminate(&mut child, launch.grace).await;
                drop(lifeline);
                break;
            }
            status = child.wait() => {
                drop(lifeline);
                // A process that ran a while gets a fresh back-off.
                if started.elapsed() > BACKOFF_RESET_AFTER {
                    backoff = BACKOFF_FIRST;
                }
                tracing::warn!(daemon = %label, "{label} exited ({}); restarting in {backoff:?}",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    let _ = std::fs::remove_file(&launch.config);
}

/// Sends each line of `r` to the engine's log under the process's name.
fn forward_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(name: Arc<str>, r: R) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Keep the process's own level when its line starts with one.
            let trimmed = line.trim_start();
            let (level, rest) = trimmed.split_once(' ').unwrap_or(("", trimmed));
            let rest = rest.trim_start();
            let name = &*name;
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
        Some(Box::pin(supervise(launch, stop)))
    }
}

// ---------------------------------------------------------------------------------------------
// Image workers.

/// The service name image worker entries are handed to (never listed in a file by this name).
pub const IMAGE_WORKERS: &str = "iii-image-workers";

/// Every `- name: <own name>` entry with `image:`: one `iii-worker-host` each
/// (`$III_WORKER_HOST_BIN`, beside the engine, or on `PATH`), supervised like a daemon. Each
/// entry reaches [`Service::configure`] whole (`name`, `image`, `config`).
pub struct ImageWorkers;

/// One image worker entry, validated.
#[derive(Debug, Clone, PartialEq)]
struct ImageEntry {
    name: String,
    /// `--image <ref>` or `--path <dir>` (a local-path worker's `worker_path:`).
    source: (&'static str, String),
    /// The `config:` block as YAML (`{}` when absent).
    yaml: String,
}

/// The configured image workers.
pub struct ImageWorkersConfig {
    entries: Vec<ImageEntry>,
}

impl Service for ImageWorkers {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: IMAGE_WORKERS,
            worker: IMAGE_WORKERS,
            deprecated_names: &[],
            repeatable: true,
            always_on: false,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut out: Vec<ImageEntry> = Vec::new();
        for e in entries {
            let m = match e.config {
                serde_yaml::Value::Mapping(m) => m,
                other => return Err(e.reader.invalid(&e.at, "a worker entry", other)),
            };
            e.reader
                .check_keys(m, &e.at, &["name", "image", "worker_path", "config"])?;
            let name = match m.get("name") {
                Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
                other => {
                    return Err(e.reader.invalid(
                        &e.key("name"),
                        "a non-empty string",
                        other.unwrap_or(&serde_yaml::Value::Null),
                    ))
                }
            };
            let path = m.get("worker_path").filter(|v| !v.is_null());
            let image = m.get("image").filter(|v| !v.is_null());
            let source = match (image, path) {
                (Some(_), Some(_)) => {
                    return Err(e.reader.error(format!(
                        "`{}`: give `image:` or `worker_path:`, not both",
                        e.at
                    )))
                }
                (None, Some(serde_yaml::Value::String(s)))
                    if std::path::Path::new(s.trim()).is_absolute() =>
                {
                    ("--path", s.trim().to_string())
                }
                (None, Some(other)) => {
                    return Err(e.reader.invalid(
                        &e.key("worker_path"),
                        "the absolute path of the worker's project directory",
                        other,
                    ))
                }
                (Some(serde_yaml::Value::String(s)), None) if !s.trim().is_empty() => {
                    ("--image", s.trim().to_string())
                }
                (other, _) => {
                    return Err(e.reader.invalid(
                        &e.key("image"),
                        "an image reference or the path of an OCI image",
                        other.unwrap_or(&serde_yaml::Value::Null),
                    ))
                }
            };
            let yaml = match m.get("config") {
                None | Some(serde_yaml::Value::Null) => "{}\n".to_string(),
                Some(c @ serde_yaml::Value::Mapping(_)) => serde_yaml::to_string(c)
                    .map_err(|x| e.reader.error(format!("`{}`: {x}", e.key("config"))))?,
                Some(other) => {
                    return Err(e
                        .reader
                        .invalid(&e.key("config"), "a mapping of settings", other))
                }
            };
            if out.iter().any(|x| x.name == name) {
                return Err(e
                    .reader
                    .error(format!("`{name}` is listed twice; keep one entry")));
            }
            out.push(ImageEntry { name, source, yaml });
        }
        Ok(Box::new(ImageWorkersConfig { entries: out }))
    }

    /// A reload keeps the unchanged workers running: the new instance adopts them before the
    /// old one stops (see [`RUNNING`]).
    fn may_overlap(&self) -> bool {
        true
    }
}

/// One running image worker supervisor.
struct RunningWorker {
    entry: ImageEntry,
    /// The service instance that stops it when it stops.
    owner: u64,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The image workers running in this process, by (engine URL, name). A reload recreates the
/// service; the new instance takes over (adopts) the workers whose entry did not change, so
/// only added, changed and removed entries start or stop.
static RUNNING: LazyLock<parking_lot::Mutex<HashMap<(String, String), RunningWorker>>> =
    LazyLock::new(Default::default);
static GENERATION: AtomicU64 = AtomicU64::new(1);

struct ImageReady {
    generation: u64,
    program: PathBuf,
    engine_url: String,
    /// Entries to start (those not adopted from the previous instance).
    start: Vec<ImageEntry>,
}

#[async_trait::async_trait]
impl Configured for ImageWorkersConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let program = locate("iii-worker-host", "III_WORKER_HOST_BIN").ok_or_else(|| {
            StartError::Service {
                service: IMAGE_WORKERS,
                message: "image workers need `iii-worker-host`, which was not found next to the engine binary or on PATH (set III_WORKER_HOST_BIN to its path)".into(),
            }
        })?;
        let engine_url = engine_url(cx, IMAGE_WORKERS)?;
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let mut start = Vec::new();
        let mut running = RUNNING.lock();
        for e in self.entries {
            match running.get_mut(&(engine_url.clone(), e.name.clone())) {
                Some(r) if r.entry == e && !r.stop.is_cancelled() => r.owner = generation,
                _ => start.push(e),
            }
        }
        Ok(Box::new(ImageReady {
            generation,
            program,
            engine_url,
            start,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A safe file-name fragment of a worker name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl ImageReady {
    fn launch(&self, e: &ImageEntry) -> std::io::Result<Launch> {
        let config = std::env::temp_dir().join(format!(
            "iii-image-worker-{}-{}-{}.yaml",
            std::process::id(),
            self.generation,
            file_safe(&e.name)
        ));
        write_config(&config, &e.yaml)?;
        Ok(Launch {
            label: Arc::from(e.name.as_str()),
            program: self.program.clone(),
            args: vec![
                "--name".into(),
                e.name.clone().into(),
                e.source.0.into(),
                e.source.1.clone().into(),
                "--engine".into(),
                self.engine_url.clone().into(),
                "--config".into(),
                config.clone().into(),
            ],
            env: vec![
                ("III_ENGINE_URL".into(), self.engine_url.clone()),
                ("III_URL".into(), self.engine_url.clone()),
            ],
            // Inside the engine's own 5 s per-service shutdown budget.
            grace: Duration::from_secs(4),
            config,
        })
    }
}

/// Stops the given supervisors together and waits for them.
async fn stop_all(workers: Vec<RunningWorker>) {
    for w in &workers {
        w.stop.cancel();
    }
    for w in workers {
        let _ = w.task.await;
    }
}

impl Prepared for ImageReady {
    fn install(&mut self, _reg: &mut Registrar<'_>) {}

    fn run(self: Box<Self>, _core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        Some(Box::pin(async move {
            for e in &self.start {
                let k = (self.engine_url.clone(), e.name.clone());
                // A changed entry: the previous instance's process goes first.
                let old = RUNNING.lock().remove(&k);
                if let Some(old) = old {
                    tracing::info!(worker = %e.name, "image worker changed; restarting it");
                    stop_all(vec![old]).await;
                }
                let launch = match self.launch(e) {
                    Ok(l) => l,
                    Err(err) => {
                        tracing::error!(worker = %e.name, "cannot write its config file: {err}");
                        continue;
                    }
                };
                tracing::info!(worker = %e.name, source = %e.source.1, "starting image worker");
                let token = CancellationToken::new();
                let task = tokio::spawn(supervise(launch, token.clone()));
                RUNNING.lock().insert(
                    k,
                    RunningWorker {
                        entry: e.clone(),
                        owner: self.generation,
                        stop: token,
                        task,
                    },
                );
            }
            stop.cancelled().await;
            let mine: Vec<RunningWorker> = {
                let mut running = RUNNING.lock();
                let keys: Vec<_> = running
                    .iter()
                    .filter(|(k, r)| k.0 == self.engine_url && r.owner == self.generation)
                    .map(|(k, _)| k.clone())
                    .collect();
                keys.into_iter()
                    .filter_map(|k| running.remove(&k))
                    .collect()
            };
            for w in &mine {
                tracing::info!(worker = %w.entry.name, "stopping image worker");
            }
            stop_all(mine).await;
        }))
    }
}
