//! `iii worker start|stop|restart <W>` (workers-and-sandboxes spec, section 1.6 to 1.8): the engine
//! supervises managed workers (`image:` and `worker_path:` entries), so these ask it through
//! `worker::start|stop|restart`. A stop sticks until a start, a changed entry or an engine
//! restart. Builtins run inside the engine and cannot be stopped or started on their own.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::add::builtin;
use super::error::WorkerError;
use super::{config_file, engine, names};
use crate::trigger::{CallError, Client};

#[derive(Args, Debug)]
pub struct StartArgs {
    /// The worker's name in the config file
    pub worker: String,
    /// Do not wait for the worker to connect
    #[arg(long)]
    pub no_wait: bool,
    /// The engine's worker socket port [default: 49134, or the config file's iii-worker-manager port]
    #[arg(long)]
    pub port: Option<u16>,
    /// Accepted for compatibility; image and local workers take their settings from the config file
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// The worker's name in the config file
    pub worker: String,
    /// Accepted for compatibility (stop never prompts)
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// The engine's worker socket port (default: as for start)
    #[arg(long)]
    pub port: Option<u16>,
}

/// What a name is in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Runs inside the engine.
    Builtin,
    /// An `image:` entry.
    Image(String),
    /// A `worker_path:` entry.
    Local(String),
}

/// A worker named on the command line, resolved against the config file.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: Kind,
    pub port: u16,
}

/// The config file's text (empty when there is none) and the engine port to use.
pub fn project(port: Option<u16>) -> Result<(String, u16), WorkerError> {
    let path = config_file::config_path();
    let text = config_file::read(&path)?.unwrap_or_default();
    let port = port.unwrap_or_else(|| config_file::manager_port(&text));
    Ok((text, port))
}

/// What `name` is in `text`: `None` when it is not there (and is no always-on builtin).
pub fn kind_of(text: &str, name: &str) -> Option<Kind> {
    if let Some(p) = config_file::entry_value(text, name, "worker_path") {
        return Some(Kind::Local(p));
    }
    if let Some(i) = config_file::entry_value(text, name, "image") {
        return Some(Kind::Image(i));
    }
    match builtin(name) {
        Some(super::add::Builtin::Mandatory) => Some(Kind::Builtin),
        Some(_) if config_file::has_entry(text, name) => Some(Kind::Builtin),
        _ => None,
    }
}

fn not_managed(name: &str) -> WorkerError {
    WorkerError::NotFound(format!(
        "worker '{name}' is not a managed worker in the config file ({}); add it with `iii worker add`",
        config_file::config_path().display()
    ))
}

/// Resolves `name` to a managed worker (a builtin or unknown name is an error).
pub async fn managed(name: &str, port: Option<u16>, verb: &str) -> Result<Target, WorkerError> {
    names::validate(name)?;
    let (text, port) = project(port)?;
    match kind_of(&text, name) {
        Some(Kind::Builtin) => Err(WorkerError::BadRequest(format!(
            "cannot {verb} '{name}': it runs inside the engine, which starts and stops it (stop or restart `iii` instead)"
        ))),
        // Checked before anything is printed, so the error is the whole output.
        Some(_) if !engine::reachable(port).await => Err(engine_down(port)),
        Some(kind) => Ok(Target {
            name: name.to_string(),
            kind,
            port,
        }),
        None => Err(not_managed(name)),
    }
}

/// The error for an engine that does not answer on `port`.
pub fn engine_down(port: u16) -> WorkerError {
    WorkerError::NotRunning(format!(
        "the engine is not running on port {port}; start it with `iii` (in the project directory) and retry"
    ))
}

/// An engine error object as a [`WorkerError`] (its W-code kept where `iii worker` has it).
pub fn remote(e: CallError, port: u16) -> WorkerError {
    match e {
        CallError::Remote(v) => {
            let code = v.get("code").and_then(Value::as_str).unwrap_or_default();
            let message = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match code {
                "W110" => WorkerError::NotFound(message),
                "W162" => WorkerError::StopTimeout(message),
                "function_not_found" => WorkerError::Internal(format!(
                    "the engine on port {port} has no worker::* functions (an older engine?): {message}"
                )),
                _ => WorkerError::Internal(format!("{code}: {message}")),
            }
        }
        CallError::Connect { .. } => engine_down(port),
        other => WorkerError::Internal(other.to_string()),
    }
}

/// One call to the engine on `port`; an engine that is not there is [`engine_down`].
pub async fn call(
    port: u16,
    function: &str,
    data: Value,
    timeout: Duration,
) -> Result<Value, WorkerError> {
    if !engine::reachable(port).await {
        return Err(engine_down(port));
    }
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}"))
        .await
        .map_err(|e| remote(e, port))?;
    let r = c.call(function, &data, None, timeout).await;
    c.close().await;
    r.map(|v| v.unwrap_or(Value::Null))
        .map_err(|e| remote(e, port))
}

/// Stop waits for the worker host to end (its sandbox included): the engine's own budget is 10 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const START_TIMEOUT: Duration = Duration::from_secs(10);

fn ready_budget() -> Duration {
    std::env::var("III_WORKER_READY_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(engine::READY_TIMEOUT)
}

fn warn_config(config: &Option<PathBuf>, t: &Target) {
    if let Some(p) = config {
        let what = match t.kind {
            Kind::Local(_) => "local",
            _ => "image",
        };
        eprintln!(
            "⚠ --config {} is ignored: {what} workers take their settings from the config file's `config:` block",
            p.display()
        );
    }
}

/// Runs `iii worker start`.
pub async fn start(a: StartArgs) -> Result<(), WorkerError> {
    let t = managed(&a.worker, a.port, "start").await?;
    warn_config(&a.config, &t);
    eprintln!("Starting {}...", t.name);
    let r = call(
        t.port,
        "worker::start",
        json!({"name": t.name}),
        START_TIMEOUT,
    )
    .await?;
    if r["started"] == true {
        eprintln!("✓ {} started", t.name);
    } else {
        eprintln!("✓ {} is already running", t.name);
    }
    if !a.no_wait {
        engine::wait_ready(&t.name, t.port, ready_budget()).await;
    }
    Ok(())
}

/// Runs `iii worker stop`.
pub async fn stop(a: StopArgs) -> Result<(), WorkerError> {
    let _ = a.yes;
    let t = managed(&a.worker, a.port, "stop").await?;
    eprintln!("Stopping {}...", t.name);
    let r = call(
        t.port,
        "worker::stop",
        json!({"name": t.name}),
        STOP_TIMEOUT,
    )
    .await?;
    if r["was_running"] == true {
        eprintln!("✓ {} stopped", t.name);
    } else {
        eprintln!("✓ {} already stopped", t.name);
    }
    Ok(())
}

/// Runs `iii worker restart`.
pub async fn restart(a: StartArgs) -> Result<(), WorkerError> {
    let t = managed(&a.worker, a.port, "restart").await?;
    warn_config(&a.config, &t);
    eprintln!("Restarting {}...", t.name);
    call(
        t.port,
        "worker::restart",
        json!({"name": t.name}),
        STOP_TIMEOUT,
    )
    .await?;
    eprintln!("✓ {} restarted", t.name);
    if !a.no_wait {
        engine::wait_ready(&t.name, t.port, ready_budget()).await;
    }
    Ok(())
}
