//! `iii-worker-host --name <n> (--image <ref> | --path <dir>) --engine ws://127.0.0.1:<port> [--config <yaml>]`
//!
//! Runs one image worker or one local-path worker (see the library docs). The engine starts it and restarts it when it
//! exits; it exits with the workload's exit code, or 0 after a requested stop.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use iii_oci_rootfs::{ImageStore, Rootfs};
use iii_sandbox_runtime::{
    Mount, Runtime, RuntimeChoice, RuntimeOptions, SandboxHandle, SandboxSpec,
};
use iii_vm_agent_proto::{read_frame, write_frame, ExecRequest, Frame, Kind, ProtoError};
use iii_worker_host::shell::{self, SessionBase};
use iii_worker_host::{
    command_line, flatten_config, local, manifest, merge_env, output, sandbox_id, url_port,
    HostError,
};

#[derive(Parser)]
#[command(
    name = "iii-worker-host",
    about = "Runs one image worker or local-path worker of config.yaml in a sandbox"
)]
struct Args {
    /// The entry's name (the worker registers as it: `III_WORKER_NAME`).
    #[arg(long)]
    name: String,
    /// The image: a registry reference (pulled once, then taken from the cache), or the path of
    /// an OCI layout directory or tarball.
    #[arg(long, required_unless_present = "path", conflicts_with = "path")]
    image: Option<String>,
    /// A local-path worker: the project directory (absolute), run from a persistent copy.
    #[arg(long)]
    path: Option<PathBuf>,
    /// The engine's worker socket, reachable from the sandbox at the same port on 127.0.0.1.
    #[arg(long)]
    engine: String,
    /// The entry's `config:` block as YAML; flattened into the workload's environment.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sandbox CPUs (a local worker's manifest `resources.cpus` wins; default 1, local 2).
    #[arg(long)]
    cpus: Option<u32>,
    /// Sandbox memory, MiB (a local worker's `resources.memory` wins; default 1024, local 2048).
    #[arg(long)]
    memory_mb: Option<u32>,
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

/// What runs in the sandbox.
struct Workload {
    rootfs: Rootfs,
    /// A local worker's setup+install, and the marker written once it succeeds.
    prepare: Option<(ExecRequest, PathBuf)>,
    start: ExecRequest,
    mounts: Vec<Mount>,
    network: bool,
    cpus: u32,
    memory_mb: u32,
}

/// A local-path worker: the workspace synced, its base image ready, setup+install unless the
/// marker says they ran.
fn local_workload(
    store: &ImageStore,
    name: &str,
    dir: &Path,
    config_env: &[(String, String)],
    own: &[(String, String)],
) -> Result<Workload> {
    let plan = local::plan(name, dir, config_env, own)?;
    tracing::info!(
        dir = %dir.display(),
        kind = plan.project.kind.as_str(),
        from = plan.project.detected_from,
        workspace = %plan.workspace.display(),
        "local worker"
    );
    if let Some(m) = &plan.project.manifest {
        for w in &m.warnings {
            tracing::warn!("{}: {w}", manifest::MANIFEST_FILE);
        }
    }
    let rootfs = local::base_image(store, &plan.project, &mut |line| {
        tracing::info!("base image: {line}")
    })?;
    let env = merge_env(&[&rootfs.env, &plan.env]);
    let session = |script: String| ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script],
        env: env.clone(),
        cwd: Some(local::WORKSPACE.into()),
        user: None,
        tty: false,
        timeout_ms: None,
    };
    let prepare = match plan.prepare {
        Some(script) => {
            tracing::info!("setup+install: running");
            Some((session(script), plan.marker.clone()))
        }
        None => {
            tracing::info!(
                "setup+install: cached (marker {} exists; `iii worker add --force` reinstalls)",
                plan.marker.display()
            );
            None
        }
    };
    let mut mounts = vec![
        Mount {
            source: plan.workspace.clone(),
            target: local::WORKSPACE.into(),
            readonly: false,
        },
        Mount {
            source: plan.usr_local.clone(),
            target: "/usr/local".into(),
            readonly: false,
        },
    ];
    if let Some(ca) = &plan.host_ca {
        mounts.push(Mount {
            source: ca.clone(),
            target: local::HOST_CA_DIR.into(),
            readonly: true,
        });
    }
    Ok(Workload {
        rootfs,
        prepare,
        start: session(plan.start),
        mounts,
        network: true,
        cpus: plan.project.cpus.filter(|c| *c > 0).unwrap_or(2),
        memory_mb: plan.project.memory_mb.filter(|m| *m >= 16).unwrap_or(2048),
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
fn runtime(local: bool) -> Result<Arc<dyn Runtime>> {
    let choice = match std::env::var("III_WORKER_RUNTIME") {
        Ok(v) if !v.is_empty() => v.parse::<RuntimeChoice>()?,
        _ => RuntimeChoice::Auto,
    };
    // A local worker needs the workspace mount and outbound network (installs), which only
    // namespaces have.
    let choice = match choice {
        RuntimeChoice::Auto if local => RuntimeChoice::Namespace,
        c => c,
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
        kind: if args.path.is_some() {
            "local"
        } else {
            "image"
        }
        .into(),
        source: match (&args.path, &args.image) {
            (Some(p), _) => p.display().to_string(),
            (None, i) => i.clone().unwrap_or_default(),
        },
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
    let runtime = runtime(args.path.is_some())?;
    let cleaned = runtime.cleanup_orphans().await;
    if !cleaned.is_empty() {
        tracing::warn!(ids = ?cleaned, "cleaned up sandboxes whose host process died");
    }
    let store = ImageStore::open(None).context("image cache unusable")?;
    let engine_url = format!("ws://127.0.0.1:{port}");
    let own = vec![
        ("III_URL".to_string(), engine_url.clone()),
        ("III_ENGINE_URL".to_string(), engine_url),
        ("III_WORKER_NAME".to_string(), args.name.clone()),
    ];
    let work = match (&args.path, &args.image) {
        (Some(dir), _) => {
            let (name, dir) = (args.name.clone(), dir.clone());
            tokio::task::spawn_blocking(move || {
                local_workload(&store, &name, &dir, &config_env, &own)
            })
            .await??
        }
        (None, Some(reference)) => {
            let reference = reference.clone();
            let image =
                tokio::task::spawn_blocking(move || resolve_image(&store, &reference)).await??;
            let env = merge_env(&[&image.rootfs.env, &config_env, &own]);
            Workload {
                rootfs: image.rootfs,
                prepare: None,
                start: ExecRequest {
                    argv: image.argv,
                    env,
                    cwd: image.working_dir,
                    user: image.user,
                    tty: false,
                    timeout_ms: None,
                },
                mounts: Vec::new(),
                network: false,
                cpus: 1,
                memory_mb: 1024,
            }
        }
        (None, None) => unreachable!("clap requires --image or --path"),
    };
    let id = sandbox_id(&args.name, std::process::id());
    let spec = SandboxSpec {
        id: id.clone(),
        rootfs: work.rootfs,
        cpus: args.cpus.unwrap_or(work.cpus),
        memory_mb: args.memory_mb.unwrap_or(work.memory_mb),
        pids_max: 0,
        network: work.network,
        env: Vec::new(),
        engine_port: port,
        mounts: work.mounts,
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
        argv = ?work.start.argv,
        "sandbox ready; starting the workload"
    );
    let workdir = work.start.cwd.clone().unwrap_or_else(|| "/".into());
    let published = publish(
        &args,
        &id,
        runtime.name(),
        &work.start.env,
        workdir,
        &handle,
    );
    let (prepare, req) = (work.prepare, work.start);
    let h = handle.clone();
    let session = tokio::task::spawn_blocking(move || {
        let connect = || {
            h.connect_agent()
                .map_err(|e| ProtoError::Agent(e.to_string()))
        };
        if let Some((prep, marker)) = prepare {
            let code = run_session(connect()?, &prep)?;
            if code != 0 {
                tracing::error!(code, "setup+install failed; the start script does not run (fix the project and restart; nothing is marked done)");
                return Ok(code);
            }
            std::fs::write(&marker, b"")?;
            tracing::info!(marker = %marker.display(), "setup+install: done");
        }
        run_session(connect()?, &req)
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
