//! `iii-worker-host --name <n> --image <ref> --engine ws://127.0.0.1:<port> [--config <yaml>]`
//!
//! Runs one image worker (see the library docs). The engine starts it and restarts it when it
//! exits; it exits with the workload's exit code, or 0 after a requested stop.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use iii_oci_rootfs::{ImageStore, Rootfs};
use iii_sandbox_runtime::{Runtime, RuntimeChoice, RuntimeOptions, SandboxHandle, SandboxSpec};
use iii_vm_agent_proto::{read_frame, write_frame, ExecRequest, Frame, Kind, ProtoError};
use iii_worker_host::shell::{self, SessionBase};
use iii_worker_host::{
    command_line, flatten_config, merge_env, output, sandbox_id, url_port, HostError,
};

#[derive(Parser)]
#[command(
    name = "iii-worker-host",
    about = "Runs one image worker of config.yaml in a sandbox"
)]
struct Args {
    /// The entry's name (the worker registers as it: `III_WORKER_NAME`).
    #[arg(long)]
    name: String,
    /// The image: a registry reference (pulled once, then taken from the cache), or the path of
    /// an OCI layout directory or tarball.
    #[arg(long)]
    image: String,
    /// The engine's worker socket, reachable from the sandbox at the same port on 127.0.0.1.
    #[arg(long)]
    engine: String,
    /// The entry's `config:` block as YAML; flattened into the workload's environment.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sandbox CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Sandbox memory, MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u32,
}

/// An image ready to run: its lower and how it says to run.
struct Resolved {
    rootfs: Rootfs,
    argv: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
}

fn resolve_image(store: &ImageStore, reference: &str) -> Result<Resolved, HostError> {
    let bad = |message: String| HostError::Image {
        reference: reference.to_string(),
        message,
    };
    let path = Path::new(reference);
    if !path.exists() {
        // A registry reference: the cached pull, else a pull now.
        let pulled = match store.lookup_pulled(reference) {
            Some(p) => p,
            None => store
                .pull(reference, &mut |line| {
                    tracing::info!("image {reference}: {line}")
                })
                .map_err(|e| bad(e.to_string()))?,
        };
        tracing::info!(digest = %pulled.digest, "image {reference}");
        let argv = command_line(&pulled.config.entrypoint, &pulled.config.cmd);
        if argv.is_empty() {
            return Err(HostError::NothingToRun(reference.to_string()));
        }
        return Ok(Resolved {
            rootfs: pulled.rootfs,
            argv,
            working_dir: pulled.config.working_dir.filter(|d| !d.is_empty()),
            user: None,
        });
    }
    let rootfs = store
        .import_custom(path, &mut |line| {
            tracing::info!("image {reference}: {line}")
        })
        .map_err(|e| bad(e.to_string()))?;
    let config = iii_oci_rootfs::oci::Image::open(path)
        .map_err(|e| bad(e.to_string()))?
        .config;
    let argv = command_line(
        config.entrypoint.as_deref().unwrap_or_default(),
        config.cmd.as_deref().unwrap_or_default(),
    );
    if argv.is_empty() {
        return Err(HostError::NothingToRun(reference.to_string()));
    }
    // The agent runs as a numeric uid[:gid]; a named user needs the image's passwd, which a
    // minimal root may not have: such images run as root, with a warning.
    let user = config.user.filter(|u| !u.is_empty()).and_then(|u| {
        if u.split(':').all(|p| p.parse::<u32>().is_ok()) {
            Some(u)
        } else {
            tracing::warn!(user = %u, "image User is not numeric; the workload runs as root");
            None
        }
    });
    Ok(Resolved {
        rootfs,
        argv,
        working_dir: config.working_dir.filter(|d| !d.is_empty()),
        user,
    })
}

fn read_config(path: &Path) -> Result<Vec<(String, String)>, HostError> {
    let fail = |message: String| HostError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    flatten_config(&v).map_err(fail)
}

/// `III_WORKER_RUNTIME` (auto | microvm | namespace); auto takes microVMs where this host
/// really runs them and namespaces elsewhere (the sandbox daemon's auto rule).
fn runtime() -> Result<Arc<dyn Runtime>> {
    let choice = match std::env::var("III_WORKER_RUNTIME") {
        Ok(v) if !v.is_empty() => v.parse::<RuntimeChoice>()?,
        _ => RuntimeChoice::Auto,
    };
    match choice {
        RuntimeChoice::Auto => {
            iii_sandbox_runtime::select(RuntimeChoice::MicroVm, RuntimeOptions::default())
                .or_else(|vm| {
                    tracing::debug!("no microVMs on this host ({vm}); using the namespace runtime");
                    iii_sandbox_runtime::select(RuntimeChoice::Namespace, RuntimeOptions::default())
                })
                .map_err(Into::into)
        }
        c => iii_sandbox_runtime::select(c, RuntimeOptions::default()).map_err(Into::into),
    }
}

/// Runs the workload as one exec session: stdin closed at once, output copied to ours as it
/// arrives. Returns its exit code.
fn run_session(stream: UnixStream, req: &ExecRequest) -> Result<i32, ProtoError> {
    let mut w = stream.try_clone()?;
    write_frame(&mut w, &Frame::with_json(Kind::Exec, req))?;
    write_frame(&mut w, &Frame::new(Kind::Stdin, Vec::new()))?;
    let mut r = stream;
    loop {
        let f = read_frame(&mut r)?;
        match f.kind {
            // A closed stdout (the engine gone) must not stop the workload: the lifeline
            // ends it properly.
            Kind::Stdout => output::stdout(&f.payload),
            Kind::Stderr => output::stderr(&f.payload),
            Kind::Exit => return Ok(f.exit_payload()?.0),
            Kind::Error => {
                return Err(ProtoError::Agent(
                    String::from_utf8_lossy(&f.payload).into(),
                ))
            }
            k => return Err(ProtoError::Unexpected(k)),
        }
    }
}

/// The stop requests: SIGTERM/SIGINT/SIGHUP, or EOF on stdin when the engine holds its other
/// end. Made before anything else, so a stop that arrives while the sandbox starts is kept
/// (the default action would kill us and leave the sandbox behind).
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    lifeline: Option<tokio::task::JoinHandle<()>>,
}

impl Stop {
    fn new(lifeline_stdin: bool) -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let lifeline = lifeline_stdin.then(|| {
            tokio::task::spawn_blocking(|| {
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin();
                loop {
                    match std::io::Read::read(&mut stdin, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
        });
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            lifeline,
        })
    }

    /// Why we stop; `true` when the engine is gone (lifeline EOF, which can come before the
    /// kernel reparents us, or a signal once it has).
    async fn requested(&mut self) -> (&'static str, bool) {
        let lifeline = async {
            match self.lifeline.as_mut() {
                Some(h) => {
                    let _ = h.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => ("SIGTERM", engine_gone()),
            _ = self.int.recv() => ("SIGINT", engine_gone()),
            _ = self.hup.recv() => ("SIGHUP", engine_gone()),
            () = lifeline => ("the engine is gone (lifeline closed)", true),
        }
    }
}

/// Has the engine that started us (`III_ENGINE_PID`) gone? (PR_SET_PDEATHSIG and the
/// lifeline both say so with a stop; this tells them from a plain SIGTERM.)
fn engine_gone() -> bool {
    // SAFETY: getppid(2) has no preconditions.
    let parent = unsafe { libc::getppid() };
    // Reparented (to init or a subreaper) means the engine is gone, even while it is a
    // zombie that still has a /proc entry.
    std::env::var("III_ENGINE_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|pid| pid != parent || !Path::new(&format!("/proc/{pid}")).exists())
}

/// `host.json` and `shell.sock` for `iii worker exec`; a failure costs exec, not the worker.
fn publish(
    args: &Args,
    id: &str,
    runtime: &str,
    env: &[(String, String)],
    workdir: String,
    handle: &Arc<dyn SandboxHandle>,
) -> Option<shell::Published> {
    let state = iii_worker_state::HostState {
        name: args.name.clone(),
        pid: std::process::id(),
        kind: "image".into(),
        source: args.image.clone(),
        sandbox_id: id.to_string(),
        runtime: runtime.to_string(),
        workdir: workdir.clone(),
        started_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let base = SessionBase {
        env: env.to_vec(),
        workdir,
    };
    shell::publish(&state, base, handle.clone())
        .inspect_err(|e| tracing::warn!("`iii worker exec` is unavailable for this worker: {e}"))
        .ok()
}

async fn run(args: Args) -> Result<i32> {
    let lifeline = std::env::var("III_LIFELINE").as_deref() == Ok("stdin");
    // Handlers first: a stop that arrives while the sandbox starts is kept for later.
    let mut stop = Stop::new(lifeline).context("installing signal handlers")?;
    let port = url_port(&args.engine).ok_or_else(|| HostError::EngineUrl(args.engine.clone()))?;
    let config_env = match &args.config {
        Some(p) => read_config(p)?,
        None => Vec::new(),
    };
    let runtime = runtime()?;
    let cleaned = runtime.cleanup_orphans().await;
    if !cleaned.is_empty() {
        tracing::warn!(ids = ?cleaned, "cleaned up sandboxes whose host process died");
    }
    let store = ImageStore::open(None).context("image cache unusable")?;
    let image = {
        let reference = args.image.clone();
        tokio::task::spawn_blocking(move || resolve_image(&store, &reference)).await??
    };
    let engine_url = format!("ws://127.0.0.1:{port}");
    let own = vec![
        ("III_URL".to_string(), engine_url.clone()),
        ("III_ENGINE_URL".to_string(), engine_url),
        ("III_WORKER_NAME".to_string(), args.name.clone()),
    ];
    let env = merge_env(&[&image.rootfs.env, &config_env, &own]);
    let id = sandbox_id(&args.name, std::process::id());
    let spec = SandboxSpec {
        id: id.clone(),
        rootfs: image.rootfs,
        cpus: args.cpus,
        memory_mb: args.memory_mb,
        pids_max: 0,
        network: false,
        env: Vec::new(),
        engine_port: port,
    };
    // A stop that came while the image was prepared: no sandbox to make.
    tokio::select! {
        biased;
        (reason, gone) = stop.requested() => {
            if gone {
                output::engine_gone(reason);
            }
            tracing::info!("stopping before the sandbox started ({reason})");
            return Ok(0);
        }
        () = std::future::ready(()) => {}
    }
    let started = std::time::Instant::now();
    let handle: Arc<dyn SandboxHandle> = Arc::from(
        runtime
            .create(spec)
            .await
            .map_err(|e| anyhow!("cannot create the sandbox: {e}"))?,
    );
    tracing::info!(
        sandbox_id = %id,
        runtime = runtime.name(),
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        argv = ?image.argv,
        "sandbox ready; starting the workload"
    );
    let workdir = image.working_dir.clone().unwrap_or_else(|| "/".into());
    let published = publish(&args, &id, runtime.name(), &env, workdir, &handle);
    let req = ExecRequest {
        argv: image.argv,
        env,
        cwd: image.working_dir,
        user: image.user,
        tty: false,
        timeout_ms: None,
    };
    let h = handle.clone();
    let session = tokio::task::spawn_blocking(move || {
        let stream = h
            .connect_agent()
            .map_err(|e| ProtoError::Agent(e.to_string()))?;
        run_session(stream, &req)
    });
    let code = tokio::select! {
        (reason, gone) = stop.requested() => {
            // Before anything is said: the engine's pipes are gone.
            if gone {
                output::engine_gone(reason);
            }
            tracing::info!(sandbox_id = %id, "stopping ({reason})");
            0
        }
        ended = session => match ended {
            Ok(Ok(code)) => {
                tracing::warn!(sandbox_id = %id, code, "the workload exited");
                code
            }
            Ok(Err(e)) => {
                tracing::error!(sandbox_id = %id, "the workload's session failed: {e}");
                1
            }
            Err(e) => {
                tracing::error!(sandbox_id = %id, "the session task failed: {e}");
                1
            }
        }
    };
    if let Some(p) = published {
        p.withdraw();
    }
    if let Err(e) = handle.stop().await {
        tracing::error!(sandbox_id = %id, "stopping the sandbox: {e}");
        return Ok(if code == 0 { 1 } else { code });
    }
    tracing::info!(sandbox_id = %id, "sandbox stopped");
    Ok(code)
}

fn main() {
    // Under the engine, lines go to its log, which has its own time stamps and colours.
    let supervised = std::env::var("III_LIFELINE").is_ok();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("III_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Never eprintln! on a failed write (it panics once the engine's pipe is gone).
        .with_writer(|| output::Stderr)
        .log_internal_errors(false)
        .with_ansi(!supervised);
    if supervised {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
    let args = Args::parse();
    output::init(&args.name);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iii-worker-host: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let name = args.name.clone();
    // A panic must not unwind through the runtime's drop, which would wait for the
    // blocking session thread forever: record it and exit.
    let log_name = name.clone();
    std::panic::set_hook(Box::new(move |info| {
        output::stderr(format!("ERROR iii-worker-host {log_name}: {info}\n").as_bytes());
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(args))))
        .unwrap_or_else(|_| Ok(101));
    let code = match result {
        Ok(code) => code.clamp(0, 255),
        Err(e) => {
            // Not eprintln!: it panics when the engine (our stderr) is gone.
            output::stderr(format!("ERROR iii-worker-host {name}: {e:#}\n").as_bytes());
            2
        }
    };
    // Blocking threads (the lifeline reader, a session whose sandbox failed to stop) may
    // never return: exit without waiting for them.
    rt.shutdown_background();
    std::process::exit(code)
}
