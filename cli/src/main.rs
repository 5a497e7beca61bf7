//! `iii`: with no subcommand it runs the engine; `iii trigger` calls a function on a running one;
//! `iii worker …` manages workers; `iii project` scaffolds projects; `iii console` serves the web console; `iii update` replaces the binaries from a
//! release manifest; `iii cloud …` runs the external `iii-cloud`.

mod cloud;
mod console;
mod project;
mod trigger;
mod update;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iii_engine::{ConfigSource, EngineConfig};

/// Gives freed heap memory back to the OS every few seconds. glibc's malloc keeps what a burst
/// freed (837 of 1043 MiB still resident 8 s after a 1 GiB burst was released; mimalloc with its
/// defaults kept all of it), so the engine trims explicitly; trimming an idle heap costs
/// microseconds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn_heap_trimmer() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    let _ = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(2));
            // SAFETY: glibc's malloc_trim takes the allocator's own locks and may be called from
            // any thread at any time; it only releases free memory.
            unsafe {
                malloc_trim(0);
            }
        });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn spawn_heap_trimmer() {}

#[derive(Parser)]
#[command(
    name = "iii",
    about = "Process communication engine",
    long_about = "Process communication engine.\n\nWith no subcommand, `iii` starts the engine: workers connect over WebSocket \
(default ws://127.0.0.1:49134), register functions and triggers, and call each other. Without a config file it runs \
the embedded defaults: the worker socket on 127.0.0.1:49134 and the REST trigger server on 127.0.0.1:3111.",
    disable_version_flag = true
)]
struct Cli {
    /// Path to the config file [default: config.yaml; if it does not exist, the embedded defaults run]
    #[arg(
        short,
        long,
        value_name = "CONFIG",
        conflicts_with = "use_default_config"
    )]
    config: Option<PathBuf>,
    /// Print version and exit
    #[arg(short = 'v', long = "version")]
    version: bool,
    /// Run with built-in defaults instead of a config file. Cannot be combined with --config
    #[arg(long)]
    use_default_config: bool,
    /// Disable background update and security advisory checks (this engine makes none; accepted for compatibility)
    #[arg(long)]
    no_update_check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Invoke a function on a running iii engine
    #[command(visible_alias = "t", disable_help_flag = true)]
    Trigger(trigger::TriggerArgs),
    /// Manage workers: add, reinstall, remove, list, clear, sync, update, init, sandbox
    #[command(long_about = worker::LONG_ABOUT)]
    Worker(worker::WorkerArgs),
    /// Update iii and managed binaries to their latest versions (from the manifest at $III_RELEASES_URL)
    Update(update::UpdateArgs),
    /// Manage iii Cloud deployments. Dispatches to the external iii-cloud binary; run iii cloud --help for its surface
    #[command(disable_help_flag = true)]
    Cloud(cloud::CloudArgs),
    /// Manage iii projects (init, generate-docker)
    Project(project::ProjectArgs),
    /// Launch the iii web console
    Console(console::ConsoleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!(
            "iii {} (compatible with the upstream iii {} protocol)",
            env!("CARGO_PKG_VERSION"),
            iii_protocol::UPSTREAM_PROTOCOL_VERSION
        );
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Some(Command::Trigger(args)) => return trigger::main(args),
        Some(Command::Worker(args)) => return worker::main(args),
        Some(Command::Update(args)) => return update::main(args),
        Some(Command::Cloud(args)) => return cloud::main(args),
        Some(Command::Project(args)) => return project::main(args),
        Some(Command::Console(args)) => return console::main(args),
        None => run_engine(cli.config, cli.use_default_config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, "a: b: c", skipping a cause whose text the message already holds:
/// many errors print their source themselves ("… in use (os error 98)"), and anyhow's `{:#}`
/// would repeat it.
fn render_error(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if s.contains(&t) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&t);
    }
    s
}

fn load_config(
    path: Option<PathBuf>,
    use_default: bool,
) -> anyhow::Result<(EngineConfig, Option<String>)> {
    if use_default {
        return Ok((
            EngineConfig::embedded(),
            Some("running with the embedded defaults (--use-default-config)".into()),
        ));
    }
    match path {
        Some(p) => {
            if !p.exists() {
                anyhow::bail!(
                    "config file {} does not exist (omit --config to run the embedded defaults)",
                    p.display()
                );
            }
            Ok((EngineConfig::load(&p)?, None))
        }
        None => {
            let p = PathBuf::from("config.yaml");
            if p.exists() {
                Ok((EngineConfig::load(&p)?, None))
            } else {
                Ok((
                    EngineConfig::embedded(),
                    Some("no config.yaml found in the current directory: running with the embedded defaults".into()),
                ))
            }
        }
    }
}

fn run_engine(config: Option<PathBuf>, use_default: bool) -> anyhow::Result<()> {
    let (cfg, note) = load_config(config, use_default)?;
    spawn_heap_trimmer();
    let level = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| cfg.log_level())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cfg.log_format().as_deref() == Some("json") {
        // `format: json`: one JSON object per line on stderr, for log shippers.
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
    }
    if let Some(n) = note {
        tracing::info!("{n}");
    }
    if let ConfigSource::File(p) = &cfg.source {
        // Spawned workers find the engine's config through this (PROTOCOL.md §7.1).
        std::env::set_var("III_CONFIG_PATH", p);
        tracing::info!(config = %p.display(), "configuration loaded");
    }
    keep_freed_heap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let running = iii_engine::start(cfg).await?;
        tracing::info!("iii engine {} ready", env!("CARGO_PKG_VERSION"));
        shutdown_signal().await;
        tracing::info!("shutting down");
        running.shutdown(std::time::Duration::from_secs(5)).await;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

/// Under load with large messages (64 KiB and up), glibc's defaults hand freed heap back to the
/// kernel as soon as the top of a heap is free, then fault the same pages in again for the next
/// message: `iii-bench calls --payload 65536` measured 22 page faults per call at c=16, the
/// largest part of the engine's system time there. Raising the trim and mmap thresholds keeps
/// that memory for reuse; peak memory is still bounded by the listeners' limits. A user who sets
/// glibc's own knobs (`MALLOC_*_` or `GLIBC_TUNABLES`) keeps them.
fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_tuned = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with('_'))
        });
        if !user_tuned {
            // SAFETY: mallopt only sets allocator parameters; nothing else is allocating
            // concurrently yet (the runtime's threads start after this).
            unsafe {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
