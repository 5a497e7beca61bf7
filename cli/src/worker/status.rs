//! `iii worker status <W> [--no-watch]` (workers-and-sandboxes spec, section 1.10): the worker's phase
//! from the config file, the engine's `worker::status` and `engine::workers::list` (a worker
//! connected under its name is ready). On a terminal it redraws in place every 200 ms until a
//! final phase; otherwise (or with `--no-watch`) it prints one snapshot.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::error::WorkerError;
use super::lifecycle::{engine_down, kind_of, project, remote, Kind};
use super::{engine, names};
use crate::trigger::Client;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The worker's name in the config file
    pub worker: String,
    /// Print one snapshot instead of following the worker until it is ready
    #[arg(long)]
    pub no_watch: bool,
    /// The engine's worker socket port (default: the config file's iii-worker-manager port, else 49134)
    #[arg(long)]
    pub port: Option<u16>,
}

/// Where the worker is, as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    NotInConfig,
    EngineDown,
    /// The engine has spawned the worker host; the workload is not up yet.
    Starting,
    /// The workload runs but has not connected to the engine yet.
    Booting,
    Ready,
    /// It crashed; the engine restarts it after a back-off.
    Restarting,
    /// Stopped with `iii worker stop`.
    Stopped,
    Failed,
}

impl Phase {
    fn headline(self) -> &'static str {
        match self {
            Phase::NotInConfig => "not in the config file",
            Phase::EngineDown => "engine not running",
            Phase::Starting => "starting",
            Phase::Booting => "booting (running, not connected yet)",
            Phase::Ready => "ready",
            Phase::Restarting => "crashed; restarting after a back-off",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }

    /// Does a watch end here?
    fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Ready | Phase::NotInConfig | Phase::Failed | Phase::EngineDown | Phase::Stopped
        )
    }

    /// The exit code (spec section 1.10): 1 for not in config, failed, engine down; else 0.
    pub fn exit_ok(self) -> bool {
        !matches!(self, Phase::NotInConfig | Phase::Failed | Phase::EngineDown)
    }
}

/// One look at the worker.
struct Snapshot {
    phase: Phase,
    lines: Vec<String>,
}

/// What `name` looks like now; `client` is kept open across a watch's ticks.
async fn snapshot(
    name: &str,
    port_arg: Option<u16>,
    client: &mut Option<Client>,
) -> Result<Snapshot, WorkerError> {
    let (text, port) = project(port_arg)?;
    let mut lines = Vec::new();
    let Some(kind) = kind_of(&text, name) else {
        lines.push(format!(
            "{name}: not in the config file ({}); add it with `iii worker add`",
            super::config_file::config_path().display()
        ));
        return Ok(Snapshot {
            phase: Phase::NotInConfig,
            lines,
        });
    };
    let config_row = match &kind {
        Kind::Builtin => "builtin (runs inside the engine)".to_string(),
        Kind::Image(i) => format!("image {i}"),
        Kind::Local(p) => format!("local {p}"),
    };
    let down = |mut lines: Vec<String>| {
        lines.push(format!("{name}: {}", Phase::EngineDown.headline()));
        lines.push(format!("  engine:   {}", engine_down(port)));
        lines.push(format!("  config:   {config_row}"));
        Ok(Snapshot {
            phase: Phase::EngineDown,
            lines,
        })
    };
    if client.is_none() {
        if !engine::reachable(port).await {
            return down(lines);
        }
        *client = Client::connect(&format!("ws://127.0.0.1:{port}"))
            .await
            .ok();
    }
    let Some(c) = client.as_mut() else {
        return down(lines);
    };
    let listed = c
        .call(
            "engine::workers::list",
            &json!({}),
            None,
            Duration::from_secs(3),
        )
        .await;
    let connected = match &listed {
        Ok(Some(v)) => v["workers"].as_array().is_some_and(|ws| {
            ws.iter()
                .any(|w| w["status"] != "disconnected" && (w["name"] == name || w["id"] == name))
        }),
        _ => false,
    };
    if let Err(e) = listed {
        // The engine went away mid-watch: reconnect next time, or report it down.
        *client = None;
        if !engine::reachable(port).await {
            return down(lines);
        }
        return Err(remote(e, port));
    }
    if kind == Kind::Builtin {
        lines.push(format!("{name}: ready (runs inside the engine)"));
        lines.push(format!("  engine:   running on port {port}"));
        lines.push(format!("  config:   {config_row}"));
        return Ok(Snapshot {
            phase: Phase::Ready,
            lines,
        });
    }
    let Some(c) = client.as_mut() else {
        return down(lines);
    };
    let row = c
        .call(
            "worker::status",
            &json!({"name": name}),
            None,
            Duration::from_secs(3),
        )
        .await
        .map_err(|e| remote(e, port))?
        .and_then(|v| v["workers"].get(0).cloned())
        .unwrap_or(Value::Null);
    let state = row["state"].as_str().unwrap_or("");
    let phase = match state {
        "running" if connected => Phase::Ready,
        _ if connected => Phase::Ready,
        "running" => Phase::Booting,
        "backoff" => Phase::Restarting,
        "stopped" => Phase::Stopped,
        "failed" => Phase::Failed,
        _ => Phase::Starting,
    };
    lines.push(format!("{name}: {}", phase.headline()));
    lines.push(format!("  engine:   running on port {port}"));
    lines.push(format!("  config:   {config_row}"));
    let process = match row["pid"].as_u64() {
        Some(pid) => format!("worker host pid {pid} ({state})"),
        None => format!("no process ({state})"),
    };
    lines.push(format!("  process:  {process}"));
    lines.push(format!(
        "  engine registration: {}",
        if connected {
            "connected"
        } else {
            "not registered"
        }
    ));
    let restarts = row["restarts"].as_u64().unwrap_or(0);
    let mut r = format!("  restarts: {restarts}");
    if let Some(x) = row["last_exit"].as_str() {
        r.push_str(&format!(" (last exit: {x})"));
    }
    lines.push(r);
    if let Some(e) = row["error"].as_str() {
        lines.push(format!("  error:    {e}"));
    }
    if let Some(d) = row["logs_dir"].as_str() {
        lines.push(format!("  logs:     {d}"));
    }
    if let Some(tail) = row["stderr_tail"].as_array() {
        let n = tail.len();
        for l in tail.iter().skip(n.saturating_sub(5)) {
            lines.push(format!("    | {}", l.as_str().unwrap_or("")));
        }
    }
    Ok(Snapshot { phase, lines })
}

/// The terminal's width (stderr), if it is one.
fn width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass; fd 2 may be anything, the
    // call only fails then.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some(usize::from(ws.ws_col))
    }
}

fn fit(line: &str, width: Option<usize>) -> String {
    match width {
        Some(w) if line.chars().count() > w => line.chars().take(w.saturating_sub(1)).collect(),
        _ => line.to_string(),
    }
}

/// Runs `iii worker status`; exit 0 for ready or in progress.
pub async fn run(a: StatusArgs) -> Result<bool, WorkerError> {
    names::validate(&a.worker)?;
    let watch = !a.no_watch && std::io::stderr().is_terminal();
    let mut client = None;
    if !watch {
        let s = snapshot(&a.worker, a.port, &mut client).await?;
        for l in &s.lines {
            eprintln!("{l}");
        }
        if let Some(c) = client {
            c.close().await;
        }
        return Ok(s.phase.exit_ok());
    }
    let mut drawn = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let s = snapshot(&a.worker, a.port, &mut client).await?;
        let w = width();
        let mut out = String::new();
        if drawn > 0 {
            // Back to the first line drawn, and clear to the end of the screen.
            out.push_str(&format!("\x1b[{drawn}F\x1b[J"));
        }
        for l in &s.lines {
            out.push_str(&fit(l, w));
            out.push('\n');
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
        drawn = s.lines.len();
        if s.phase.is_final() {
            if let Some(c) = client {
                c.close().await;
            }
            return Ok(s.phase.exit_ok());
        }
    }
}
