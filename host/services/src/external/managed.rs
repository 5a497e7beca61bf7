//! Managed workers: every `- name: <own name>` entry with `image:` (an OCI image) or
//! `worker_path:` (a project directory on this host) runs as one `iii-worker-host` process
//! (`$III_WORKER_HOST_BIN`, beside the engine, or on `PATH`), supervised like a daemon.
//!
//! The service is always on, so `worker::status`, `worker::stop`, `worker::start` and
//! `worker::restart` exist whenever the engine runs (with no entries they answer W110 for any
//! name). A stop sticks: the worker is not restarted until `worker::start`/`worker::restart`,
//! a reload that changes its entry, or an engine restart. Each worker's output is also
//! appended to `$III_HOME/logs/<name>/{stdout,stderr}.log`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use iii_core::config::ConfigError;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, FunctionSpec, PrepareCx, Prepared,
    Registrar, Service, ServiceInfo, StartError,
};
use iii_protocol::{codes, ErrorBody};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::logs::LogFile;
use super::supervise::{supervise, Control, Launch, Probe};
use super::{engine_url, locate, write_config};

/// The service name managed worker entries are handed to (never listed in a file by this name).
pub const IMAGE_WORKERS: &str = "iii-image-workers";

/// The managed workers service (see the module docs). Each entry reaches
/// [`Service::configure`] whole (`name`, `image` or `worker_path`, `config`).
pub struct ManagedWorkers;

/// What a managed worker runs.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// An image reference or the path of an OCI image.
    Image(String),
    /// A project directory (absolute, existing when the entry was read).
    Local(PathBuf),
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Image(_) => "image",
            Source::Local(_) => "local",
        }
    }
    fn text(&self) -> String {
        match self {
            Source::Image(r) => r.clone(),
            Source::Local(p) => p.display().to_string(),
        }
    }
}

/// One managed worker entry, validated.
#[derive(Debug, Clone, PartialEq)]
struct ManagedEntry {
    name: String,
    source: Source,
    /// The `config:` block as YAML (`{}` when absent).
    yaml: String,
}

/// The configured managed workers.
pub struct ManagedWorkersConfig {
    entries: Vec<ManagedEntry>,
}

fn string_key<'a>(
    e: &Entry<'_>,
    m: &'a serde_yaml::Mapping,
    key: &str,
    what: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match m.get(key) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim())),
        Some(other) => Err(e.reader.invalid(&e.key(key), what, other)),
    }
}

/// `worker_path:` must name an existing directory by its absolute path (the engine's working
/// directory is no anchor a user can rely on).
fn local_dir(e: &Entry<'_>, p: &str) -> Result<PathBuf, ConfigError> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(e.reader.error(format!(
            "`{}`: {p:?} is not an absolute path; write the project directory's full path",
            e.key("worker_path")
        )));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(path.to_path_buf()),
        Ok(_) => Err(e.reader.error(format!(
            "`{}`: {p} is not a directory",
            e.key("worker_path")
        ))),
        Err(err) => Err(e
            .reader
            .error(format!("`{}`: {p}: {err}", e.key("worker_path")))),
    }
}

impl Service for ManagedWorkers {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: IMAGE_WORKERS,
            worker: IMAGE_WORKERS,
            deprecated_names: &[],
            repeatable: true,
            always_on: true,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut out: Vec<ManagedEntry> = Vec::new();
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
            // Logs and state live in a directory named after the worker.
            if let Err(err @ iii_worker_state::StateError::BadName(_)) =
                iii_worker_state::logs_dir(&name)
            {
                return Err(e.reader.error(format!("`{}`: {err}", e.key("name"))));
            }
            let image = string_key(
                e,
                m,
                "image",
                "an image reference or the path of an OCI image",
            )?;
            let path = string_key(e, m, "worker_path", "the absolute path of a directory")?;
            let source = match (image, path) {
                (Some(_), Some(_)) => {
                    return Err(e.reader.error(format!(
                        "`{}`: give either `image` or `worker_path`, not both",
                        e.at
                    )))
                }
                (Some(i), None) => Source::Image(i.to_string()),
                (None, Some(p)) => Source::Local(local_dir(e, p)?),
                (None, None) => {
                    return Err(e.reader.error(format!(
                        "`{}`: a managed worker needs `image` or `worker_path`",
                        e.at
                    )))
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
            out.push(ManagedEntry { name, source, yaml });
        }
        Ok(Box::new(ManagedWorkersConfig { entries: out }))
    }

    /// A reload keeps the unchanged workers running: the new instance adopts them before the
    /// old one stops (see [`RUNNING`]).
    fn may_overlap(&self) -> bool {
        true
    }
}

/// One running managed worker supervisor.
struct RunningWorker {
    entry: ManagedEntry,
    /// The service instance that stops it when it stops.
    owner: u64,
    ctl: Arc<Control>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The managed workers running in this process, by (engine URL, name). A reload recreates the
/// service; the new instance takes over (adopts) the workers whose entry did not change, so
/// only added, changed and removed entries start or stop (a stopped one stays stopped).
static RUNNING: LazyLock<parking_lot::Mutex<HashMap<(String, String), RunningWorker>>> =
    LazyLock::new(Default::default);
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// What the prepared instance runs; `None` with no entries (nothing to find or connect).
struct Plan {
    program: PathBuf,
    engine_url: String,
    /// Entries to start (those not adopted from the previous instance), with the control
    /// their supervisor will take (the functions answer for them before it runs).
    start: Vec<(ManagedEntry, Arc<Control>)>,
}

struct ManagedReady {
    generation: u64,
    /// This instance's entry names: the ones the `worker::*` functions know.
    names: Arc<Vec<String>>,
    plan: Option<Plan>,
}

#[async_trait::async_trait]
impl Configured for ManagedWorkersConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let names = Arc::new(self.entries.iter().map(|e| e.name.clone()).collect());
        if self.entries.is_empty() {
            return Ok(Box::new(ManagedReady {
                generation,
                names,
                plan: None,
            }));
        }
        let program = locate("iii-worker-host", "III_WORKER_HOST_BIN").ok_or_else(|| {
            StartError::Service {
                service: IMAGE_WORKERS,
                message: "managed workers need `iii-worker-host`, which was not found next to the engine binary or on PATH (set III_WORKER_HOST_BIN to its path)".into(),
            }
        })?;
        let engine_url = engine_url(cx, IMAGE_WORKERS)?;
        let mut start = Vec::new();
        {
            let mut running = RUNNING.lock();
            for e in self.entries {
                match running.get_mut(&(engine_url.clone(), e.name.clone())) {
                    Some(r) if r.entry == e && !r.stop.is_cancelled() => r.owner = generation,
                    _ => start.push(e),
                }
            }
        }
        let start = start
            .into_iter()
            .map(|e| {
                let ctl = Control::new(
                    Some(probe(cx.core().clone(), e.name.clone())),
                    log_files(&e.name),
                );
                (e, ctl)
            })
            .collect();
        Ok(Box::new(ManagedReady {
            generation,
            names,
            plan: Some(Plan {
                program,
                engine_url,
                start,
            }),
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

impl Plan {
    fn launch(&self, generation: u64, e: &ManagedEntry) -> std::io::Result<Launch> {
        let config = std::env::temp_dir().join(format!(
            "iii-image-worker-{}-{generation}-{}.yaml",
            std::process::id(),
            file_safe(&e.name)
        ));
        write_config(&config, &e.yaml)?;
        let (flag, source) = match &e.source {
            Source::Image(r) => ("--image", r.clone().into()),
            Source::Local(p) => ("--path", p.clone().into_os_string()),
        };
        Ok(Launch {
            label: Arc::from(e.name.as_str()),
            program: self.program.clone(),
            args: vec![
                "--name".into(),
                e.name.clone().into(),
                flag.into(),
                source,
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

/// Up: the worker host says its workload runs (`host.json` with its pid), or a worker of
/// that name is connected.
fn probe(core: Core, name: String) -> Probe {
    Box::new(move |pid| {
        let by_state = matches!(
            iii_worker_state::HostState::read(&name),
            Ok(Some(s)) if s.pid == pid && s.is_live()
        );
        by_state
            || core
                .conns()
                .iter()
                .any(|c| c.state.lock().meta.name.as_deref() == Some(name.as_str()))
    })
}

fn log_files(name: &str) -> Option<(LogFile, LogFile)> {
    match iii_worker_state::logs_dir(name) {
        Ok(dir) => Some((
            LogFile::open(dir.clone(), "stdout.log"),
            LogFile::open(dir, "stderr.log"),
        )),
        Err(e) => {
            tracing::warn!(worker = %name, "no log files for it: {e}");
            None
        }
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

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StatusIn {
    /// One worker; all of them when absent.
    name: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NameIn {
    /// The worker's name in the config file.
    name: String,
}

/// The functions' view: this instance's entries, looked up among the ones it starts, then
/// among the running supervisors (adopted ones).
#[derive(Clone)]
struct Lookup {
    engine_url: Option<String>,
    names: Arc<Vec<String>>,
    starting: Arc<HashMap<String, (ManagedEntry, Arc<Control>)>>,
}

/// How long `worker::stop`/`restart` wait for the worker host to finish stopping.
const STOP_WAIT: Duration = Duration::from_secs(10);

impl Lookup {
    fn control(&self, name: &str) -> Result<(ManagedEntry, Arc<Control>), ErrorBody> {
        let unknown = || {
            ErrorBody::new(
                codes::NOT_MANAGED_W110,
                format!("worker '{name}' is not a managed worker in the config file"),
            )
        };
        if !self.names.iter().any(|n| n == name) {
            return Err(unknown());
        }
        if let Some((e, c)) = self.starting.get(name) {
            return Ok((e.clone(), c.clone()));
        }
        let url = self.engine_url.clone().ok_or_else(unknown)?;
        RUNNING
            .lock()
            .get(&(url, name.to_string()))
            .map(|r| (r.entry.clone(), r.ctl.clone()))
            .ok_or_else(unknown)
    }

    fn row(&self, name: &str) -> Result<Value, ErrorBody> {
        let (entry, ctl) = self.control(name)?;
        let st = ctl.state();
        let logs = iii_worker_state::logs_dir(name)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut row = json!({
            "name": name,
            "kind": entry.source.kind(),
            "source": entry.source.text(),
            "state": st.phase.as_str(),
            "restarts": st.restarts,
            "since_ms": st.since_ms,
            "logs_dir": logs,
            "stdout_tail": st.stdout_tail,
            "stderr_tail": st.stderr_tail,
        });
        if let Some(pid) = st.pid {
            row["pid"] = json!(pid);
        }
        if let Some(x) = st.last_exit {
            row["last_exit"] = json!(x);
        }
        if let Some(x) = st.error {
            row["error"] = json!(x);
        }
        Ok(row)
    }
}

async fn stop_and_wait(name: &str, ctl: &Control) -> Result<bool, ErrorBody> {
    let was = ctl.stop();
    if !ctl.wait_stopped(STOP_WAIT).await {
        return Err(ErrorBody::new(
            codes::STOP_TIMEOUT_W162,
            format!(
                "worker '{name}' did not stop within {}s; it is still stopping",
                STOP_WAIT.as_secs()
            ),
        ));
    }
    Ok(was)
}

fn object(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

/// `worker::status`'s answer.
fn status_schema() -> Value {
    let s = json!({"type": "string"});
    let n = json!({"type": "integer"});
    let lines = json!({"type": "array", "items": {"type": "string"}});
    let row = object(json!({
        "name": s, "kind": {"enum": ["image", "local"]}, "source": s,
        "state": {"enum": ["starting", "running", "backoff", "stopped", "failed"]},
        "pid": n, "restarts": n, "last_exit": s, "since_ms": n, "error": s, "logs_dir": s,
        "stdout_tail": lines, "stderr_tail": lines,
    }));
    object(json!({"workers": {"type": "array", "items": row}}))
}

fn register(reg: &mut Registrar<'_>, lookup: Lookup) {
    let l = lookup.clone();
    reg.function(
        FunctionSpec::typed(
            "worker::status",
            "State of the managed workers (image: and worker_path: entries), or of one",
            move |_core: Core, _ctx, i: StatusIn| {
                let l = l.clone();
                async move {
                    let rows = match i.name {
                        Some(n) => vec![l.row(&n)?],
                        None => l.names.iter().filter_map(|n| l.row(n).ok()).collect(),
                    };
                    Ok(json!({ "workers": rows }))
                }
            },
        )
        .returns(status_schema()),
    );
    let l = lookup.clone();
    reg.function(FunctionSpec::typed(
        "worker::stop",
        "Stop a managed worker; it stays stopped until worker::start, a changed entry or an engine restart",
        move |_core: Core, _ctx, i: NameIn| {
            let l = l.clone();
            async move {
                let (_, ctl) = l.control(&i.name)?;
                let was = stop_and_wait(&i.name, &ctl).await?;
                tracing::info!(worker = %i.name, "stopped on request");
                Ok(json!({"name": i.name, "stopped": true, "was_running": was}))
            }
        },
    )
    .returns(object(json!({"name": {"type": "string"}, "stopped": {"type": "boolean"}, "was_running": {"type": "boolean"}}))));
    let l = lookup.clone();
    reg.function(
        FunctionSpec::typed(
            "worker::start",
            "Start a stopped managed worker (or retry a crashed one now)",
            move |_core: Core, _ctx, i: NameIn| {
                let l = l.clone();
                async move {
                    let (_, ctl) = l.control(&i.name)?;
                    let started = ctl.start();
                    if started {
                        tracing::info!(worker = %i.name, "started on request");
                    }
                    Ok(json!({"name": i.name, "started": started}))
                }
            },
        )
        .returns(object(
            json!({"name": {"type": "string"}, "started": {"type": "boolean"}}),
        )),
    );
    let l = lookup;
    reg.function(
        FunctionSpec::typed(
            "worker::restart",
            "Stop and start a managed worker, with a fresh restart back-off",
            move |_core: Core, _ctx, i: NameIn| {
                let l = l.clone();
                async move {
                    let (_, ctl) = l.control(&i.name)?;
                    stop_and_wait(&i.name, &ctl).await?;
                    ctl.restart();
                    tracing::info!(worker = %i.name, "restarted on request");
                    Ok(json!({"name": i.name}))
                }
            },
        )
        .returns(object(json!({"name": {"type": "string"}}))),
    );
}

impl Prepared for ManagedReady {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        let starting = self
            .plan
            .iter()
            .flat_map(|p| &p.start)
            .map(|(e, c)| (e.name.clone(), (e.clone(), c.clone())))
            .collect();
        register(
            reg,
            Lookup {
                engine_url: self.plan.as_ref().map(|p| p.engine_url.clone()),
                names: self.names.clone(),
                starting: Arc::new(starting),
            },
        );
    }

    fn run(self: Box<Self>, _core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let plan = self.plan?;
        let generation = self.generation;
        Some(Box::pin(async move {
            for (e, ctl) in &plan.start {
                let k = (plan.engine_url.clone(), e.name.clone());
                // A changed entry: the previous instance's process goes first.
                let old = RUNNING.lock().remove(&k);
                if let Some(old) = old {
                    tracing::info!(worker = %e.name, "managed worker changed; restarting it");
                    stop_all(vec![old]).await;
                }
                let launch = match plan.launch(generation, e) {
                    Ok(l) => l,
                    Err(err) => {
                        tracing::error!(worker = %e.name, "cannot write its config file: {err}");
                        continue;
                    }
                };
                tracing::info!(worker = %e.name, kind = e.source.kind(), source = %e.source.text(), "starting managed worker");
                let ctl = ctl.clone();
                let token = CancellationToken::new();
                let task = tokio::spawn(supervise(launch, ctl.clone(), token.clone()));
                RUNNING.lock().insert(
                    k,
                    RunningWorker {
                        entry: e.clone(),
                        owner: generation,
                        ctl,
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
                    .filter(|(k, r)| k.0 == plan.engine_url && r.owner == generation)
                    .map(|(k, _)| k.clone())
                    .collect();
                keys.into_iter()
                    .filter_map(|k| running.remove(&k))
                    .collect()
            };
            for w in &mine {
                tracing::info!(worker = %w.entry.name, "stopping managed worker");
            }
            stop_all(mine).await;
        }))
    }
}
