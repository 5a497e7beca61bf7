//! The namespace runtime: `iii-init --namespace spec.json` in new mount, pid,
//! net, uts and ipc namespaces, inside per-sandbox cgroups, over
//! overlay(lower, `<dir>/upper`). Native speed; the host kernel is shared.
//!
//! Per sandbox, `<state root>/<id>/` (0700) holds `owner`, `spec.json`,
//! `upper/ work/ merged/`, `agent.sock` (bound by init), `fwd-<port>.sock`
//! (bound here: init's `127.0.0.1:<port>` inside connects to it and this
//! side splices to the host's `127.0.0.1:<engine_port>`), `init.pid`,
//! `init.log`, and `net-activity`.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::cgroup::{Cgroups, Layout, Limits};
use crate::net::{self, Slirp};
use crate::state::{self, Owner};
use crate::{
    check_id, exit_code, find_binary, log_tail, RuntimeError, RuntimeOptions, SandboxHandle,
    SandboxSpec,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_PIDS_MAX: u32 = 256;

/// Linux namespaces + cgroups.
pub struct NamespaceRuntime {
    root: PathBuf,
    init: PathBuf,
    layout: Layout,
    ready_timeout: Duration,
}

/// `iii-init --namespace`'s spec file (sandbox contract, section B).
#[derive(Serialize)]
struct InitSpec<'a> {
    dir: &'a Path,
    lower: &'a Path,
    lower_format: &'static str,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
    agent_socket: PathBuf,
    forwards: Vec<Forward>,
    cgroup_procs: Vec<PathBuf>,
    hostname: &'static str,
    env: Vec<(String, String)>,
    workdir: &'static str,
    pid_file: PathBuf,
    resolv_conf: Option<&'static str>,
    mounts: Vec<InitMount>,
}

#[derive(Serialize)]
struct InitMount {
    source: PathBuf,
    target: String,
    readonly: bool,
}

#[derive(Serialize)]
struct Forward {
    port: u16,
    socket: PathBuf,
}

impl NamespaceRuntime {
    /// Checks that this process may create namespaces and cgroups (root),
    /// finds `iii-init` and the cgroup layout, and creates the state root.
    pub fn new(opts: RuntimeOptions) -> Result<Self, RuntimeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(RuntimeError::Host(
                "the namespace runtime needs root (it creates mount/pid/net namespaces, loop \
                 devices and cgroups); run the sandbox daemon as root"
                    .into(),
            ));
        }
        let init = find_binary(opts.init.as_deref(), "iii-init", "III_INIT")?;
        let layout = Layout::detect()?;
        let root = crate::state_root(&opts);
        crate::check_root_len(&root)?;
        state::mkdir_private(&root)?;
        Ok(Self {
            root,
            init,
            layout,
            ready_timeout: opts.ready_timeout,
        })
    }

    /// The cgroup layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The sandbox environment: the image's, then the spec's (later wins), with
/// a standard `PATH` and `HOME` when neither sets them.
pub(crate) fn merge_env(
    image: &[(String, String)],
    spec: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in image.iter().chain(spec) {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    for (k, v) in [("PATH", DEFAULT_PATH), ("HOME", "/root")] {
        if !env.iter().any(|(ek, _)| ek == k) {
            env.push((k.into(), v.into()));
        }
    }
    env
}

/// What a namespace sandbox holds on the host, for stop and for undoing a failed create.
struct Parts {
    id: String,
    dir: PathBuf,
    cgroups: Option<Cgroups>,
    bootstrap: Option<i32>,
    exit: Option<watch::Receiver<Option<i32>>>,
    pid1: Option<(i32, u64)>,
    slirp: Option<Slirp>,
    tasks: Vec<AbortHandle>,
}

impl Parts {
    /// Kills everything, removes the cgroups and the directory, then checks
    /// that no process, mount, cgroup or directory is left.
    async fn teardown(mut self) -> Result<(), RuntimeError> {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(s) = self.slirp.take() {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
        if let Some((pid, start)) = self.pid1 {
            if state::start_time(pid) == Some(start) {
                // SAFETY: kill(2) has no memory effects; pid is this sandbox's
                // PID 1 (same start time), and killing it ends its pid namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let (Some(pid), Some(exit)) = (self.bootstrap, self.exit.as_mut()) {
            if exit.borrow().is_none() {
                // SAFETY: as above; pid is our own unreaped child (the waiter
                // task has not seen it exit), so it cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let waited =
                tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|c| c.is_some()))
                    .await
                    .is_ok();
            if !waited {
                return Err(RuntimeError::Leftover {
                    id: self.id.clone(),
                    what: format!("its init (pid {pid}), which did not exit after SIGKILL"),
                });
            }
        }
        if let Some(g) = self.cgroups.clone() {
            tokio::task::spawn_blocking(move || g.remove(Duration::from_secs(10)))
                .await
                .map_err(|e| RuntimeError::Cgroup(e.to_string()))??;
        }
        if let Some((pid, start)) = self.pid1 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while state::start_time(pid) == Some(start) {
                if Instant::now() >= deadline {
                    return Err(RuntimeError::Leftover {
                        id: self.id.clone(),
                        what: format!("its PID 1 (host pid {pid})"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // The sandbox's mounts live in its own mount namespace; one here would
        // mean a leak, and deleting through it would delete its contents.
        let mounts = state::mounts_under(&self.dir);
        if !mounts.is_empty() {
            return Err(RuntimeError::Leftover {
                id: self.id.clone(),
                what: format!(
                    "mounts {}",
                    mounts
                        .iter()
                        .map(|m| m.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let dir = self.dir.clone();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io("removing", &dir, e)),
        }
        if let Some(g) = &self.cgroups {
            if let Some(d) = g.dirs().iter().find(|d| d.exists()) {
                return Err(RuntimeError::Leftover {
                    id: self.id.clone(),
                    what: format!("cgroup {}", d.display()),
                });
            }
        }
        if dir.exists() {
            return Err(RuntimeError::Leftover {
                id: self.id,
                what: format!("directory {}", dir.display()),
            });
        }
        Ok(())
    }
}

/// Accepts the sandbox's connections on `fwd-<port>.sock` and splices each
/// to the host's `127.0.0.1:<port>`. Aborting the task drops the JoinSet,
/// which ends every spliced connection with it.
async fn forward_loop(listener: UnixListener, port: u16, activity: PathBuf) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let Ok((mut inner, _)) = acc else { continue };
                net::touch(&activity);
                conns.spawn(async move {
                    match TcpStream::connect(("127.0.0.1", port)).await {
                        Ok(mut outer) => {
                            let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
                        }
                        Err(e) => tracing::debug!(port, "sandbox forward: {e}"),
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Touches `activity` whenever the sandbox's network namespace (lo, where
/// forwarded connections arrive, and tap0 with `network: true`) moved bytes.
async fn activity_loop(pid1: i32, activity: PathBuf) {
    let mut last = net::ns_bytes(pid1);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = net::ns_bytes(pid1);
        if now.is_none() {
            return;
        }
        if now != last {
            net::touch(&activity);
            last = now;
        }
    }
}

fn ping(sock: &Path) -> Result<(), iii_vm_agent_proto::ProtoError> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    iii_vm_agent_proto::client::ping(&mut s)
}

#[async_trait::async_trait]
impl crate::Runtime for NamespaceRuntime {
    fn name(&self) -> &'static str {
        "namespace"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn SandboxHandle>, RuntimeError> {
        check_id(&spec.id)?;
        if spec.cpus == 0 || spec.memory_mb < 16 {
            return Err(RuntimeError::InvalidSpec(format!(
                "cpus must be at least 1 and memory_mb at least 16 (got {} and {})",
                spec.cpus, spec.memory_mb
            )));
        }
        for m in &spec.mounts {
            m.check()?;
        }
        if !spec.rootfs.lower.is_file() {
            return Err(RuntimeError::InvalidSpec(format!(
                "lower image {} does not exist",
                spec.rootfs.lower.display()
            )));
        }
        // The root again: a tmp cleaner may have removed it since `new`.
        state::mkdir_private(&self.root)?;
        let dir = self.root.join(&spec.id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists(spec.id))
            }
            Err(e) => return Err(RuntimeError::io("creating", &dir, e)),
        }
        let mut parts = Parts {
            id: spec.id.clone(),
            dir: dir.clone(),
            cgroups: None,
            bootstrap: None,
            exit: None,
            pid1: None,
            slirp: None,
            tasks: Vec::new(),
        };
        match self.start(&spec, &dir, &mut parts).await {
            Ok(sb) => Ok(Box::new(sb)),
            Err(e) => {
                if let Err(t) = parts.teardown().await {
                    tracing::warn!(id = %spec.id, "undoing a failed create: {t}");
                }
                Err(e)
            }
        }
    }

    async fn cleanup_orphans(&self) -> Vec<String> {
        let mut cleaned = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return cleaned;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if check_id(&id).is_err() || !e.path().is_dir() {
                continue;
            }
            let dir = e.path();
            let orphan = match Owner::read(&dir) {
                Some(o) => !o.alive(),
                // A create that died before writing `owner`: only once it is old.
                None => dir
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(60)),
            };
            // Never touch another runtime's sandboxes (a microVM dir has no spec.json).
            if !orphan || !dir.join("spec.json").exists() && dir.join("vmm.pid").exists() {
                continue;
            }
            let parts = Parts {
                id: id.clone(),
                dir,
                cgroups: Some(Cgroups::of(&self.layout, &id)),
                bootstrap: None,
                exit: None,
                pid1: None,
                slirp: None,
                tasks: Vec::new(),
            };
            match parts.teardown().await {
                Ok(()) => cleaned.push(id),
                Err(e) => tracing::warn!(%id, "orphan sandbox not cleaned: {e}"),
            }
        }
        // Sandboxes whose directory was deleted under them (a tmp cleaner, an
        // `rm -rf`): found by their cgroup, whose init names a spec in this root.
        for id in self.lost_sandboxes() {
            let parts = Parts {
                id: id.clone(),
                dir: self.root.join(&id),
                cgroups: Some(Cgroups::of(&self.layout, &id)),
                bootstrap: None,
                exit: None,
                pid1: None,
                slirp: None,
                tasks: Vec::new(),
            };
            match parts.teardown().await {
                Ok(()) => cleaned.push(id),
                Err(e) => tracing::warn!(%id, "lost sandbox not cleaned: {e}"),
            }
        }
        cleaned
    }
}

impl NamespaceRuntime {
    /// Ids with a cgroup but no directory in this root, whose tasks run
    /// `iii-init --namespace <root>/<id>/spec.json`. Groups of other state
    /// roots (other daemons' tests) name other specs and are left alone.
    fn lost_sandboxes(&self) -> Vec<String> {
        let Some(parent) = self
            .layout
            .dirs("x")
            .first()
            .and_then(|d| d.parent().map(Path::to_path_buf))
        else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if check_id(&id).is_err() || !e.path().is_dir() || self.root.join(&id).exists() {
                continue;
            }
            let spec = self.root.join(&id).join("spec.json");
            let ours = Cgroups::of(&self.layout, &id)
                .pids()
                .into_iter()
                .any(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                        args.get(1) == Some(&&b"--namespace"[..])
                            && args.get(2) == Some(&spec.as_os_str().as_encoded_bytes())
                    })
                });
            if ours {
                lost.push(id);
            }
        }
        lost
    }

    async fn start(
        &self,
        spec: &SandboxSpec,
        dir: &Path,
        parts: &mut Parts,
    ) -> Result<NsSandbox, RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RuntimeError::io("chmod", dir, e))?;
        Owner::current().write(dir)?;
        for sub in ["upper", "work", "merged"] {
            let p = dir.join(sub);
            std::fs::create_dir(&p).map_err(|e| RuntimeError::io("creating", &p, e))?;
        }
        let pids_max = if spec.pids_max == 0 {
            DEFAULT_PIDS_MAX
        } else {
            spec.pids_max
        };
        let cgroups = self.layout.create(
            &spec.id,
            Limits {
                memory_bytes: u64::from(spec.memory_mb) << 20,
                cpus: spec.cpus,
                pids_max,
            },
        )?;
        parts.cgroups = Some(cgroups.clone());

        let activity = dir.join("net-activity");
        net::touch(&activity);
        // The host side of the engine forward exists before init starts, so
        // the first connection from inside already finds it.
        let fwd_sock = dir.join(format!("fwd-{}.sock", spec.engine_port));
        let listener = std::os::unix::net::UnixListener::bind(&fwd_sock)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(UnixListener::from_std)
            .map_err(|e| RuntimeError::io("binding", &fwd_sock, e))?;
        parts.tasks.push(
            tokio::spawn(forward_loop(listener, spec.engine_port, activity.clone())).abort_handle(),
        );

        let agent_socket = dir.join("agent.sock");
        let pid_file = dir.join("init.pid");
        let init_spec = InitSpec {
            dir,
            lower: &spec.rootfs.lower,
            lower_format: spec.rootfs.format.fstype(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
            agent_socket: agent_socket.clone(),
            forwards: vec![Forward {
                port: spec.engine_port,
                socket: fwd_sock,
            }],
            cgroup_procs: cgroups.procs_files(),
            hostname: "sandbox",
            env: merge_env(&spec.rootfs.env, &spec.env),
            workdir: "/workspace",
            pid_file: pid_file.clone(),
            resolv_conf: spec.network.then_some(net::RESOLV_CONF),
            mounts: spec
                .mounts
                .iter()
                .map(|m| InitMount {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    readonly: m.readonly,
                })
                .collect(),
        };
        let spec_path = dir.join("spec.json");
        let json = serde_json::to_vec_pretty(&init_spec)
            .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        std::fs::write(&spec_path, json).map_err(|e| RuntimeError::io("writing", &spec_path, e))?;

        let log = dir.join("init.log");
        let log_f =
            std::fs::File::create(&log).map_err(|e| RuntimeError::io("creating", &log, e))?;
        let log_f2 = log_f
            .try_clone()
            .map_err(|e| RuntimeError::io("opening", &log, e))?;
        let mut cmd = tokio::process::Command::new(&self.init);
        cmd.arg("--namespace")
            .arg(&spec_path)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(log_f)
            .stderr(log_f2);
        // The bootstrap (and PID 1, which it forks) must never be the OOM
        // killer's victim: PID 1's death ends the sandbox. Sessions get 0 back.
        // SAFETY: only open/write/close on a static path between fork and exec
        // (async-signal-safe); a failure leaves the default score.
        unsafe {
            cmd.pre_exec(|| {
                let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    libc::write(fd, b"-1000".as_ptr().cast(), 5);
                    libc::close(fd);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| RuntimeError::Spawn {
            what: self.init.display().to_string(),
            source: e,
        })?;
        let bootstrap = child.id().and_then(|p| i32::try_from(p).ok());
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(st) => exit_code(st),
                Err(_) => -1,
            };
            let _ = tx.send(Some(code));
        });
        parts.bootstrap = bootstrap;
        parts.exit = Some(rx.clone());

        // Ready once the agent answers a ping.
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(code) = *rx.borrow() {
                return Err(RuntimeError::DiedStarting {
                    id: spec.id.clone(),
                    code,
                    log: log_tail(&log, 20),
                });
            }
            if agent_socket.exists() {
                let s = agent_socket.clone();
                if let Ok(Ok(())) = tokio::task::spawn_blocking(move || ping(&s)).await {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::ReadyTimeout {
                    id: spec.id.clone(),
                    timeout: self.ready_timeout,
                    log: log_tail(&log, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // PID 1 can answer before the bootstrap (its parent, in the host pid namespace) has
        // written the pid file: give it a moment.
        let pid_deadline = Instant::now() + Duration::from_secs(2);
        let pid1: i32 = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            if Instant::now() >= pid_deadline {
                return Err(RuntimeError::InvalidSpec(format!(
                    "iii-init answered but wrote no pid to {}",
                    pid_file.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let pid1_start = state::start_time(pid1).unwrap_or(0);
        parts.pid1 = Some((pid1, pid1_start));

        if spec.network {
            let slog = dir.join("slirp.log");
            let slirp = tokio::task::spawn_blocking(move || {
                Slirp::start(pid1, &slog, Duration::from_secs(10))
            })
            .await
            .map_err(|e| RuntimeError::Network(e.to_string()))??;
            parts.slirp = Some(slirp);
        }
        parts
            .tasks
            .push(tokio::spawn(activity_loop(pid1, activity.clone())).abort_handle());

        Ok(NsSandbox {
            id: spec.id.clone(),
            agent_socket,
            activity,
            exit: rx,
            stopped: AtomicBool::new(false),
            parts: tokio::sync::Mutex::new(Some(Parts {
                id: spec.id.clone(),
                dir: dir.to_path_buf(),
                cgroups: parts.cgroups.take(),
                bootstrap: parts.bootstrap.take(),
                exit: parts.exit.take(),
                pid1: parts.pid1.take(),
                slirp: parts.slirp.take(),
                tasks: std::mem::take(&mut parts.tasks),
            })),
        })
    }
}

/// A running namespace sandbox.
struct NsSandbox {
    id: String,
    agent_socket: PathBuf,
    activity: PathBuf,
    exit: watch::Receiver<Option<i32>>,
    stopped: AtomicBool,
    /// Held across a teardown, so a second `stop` waits for the first.
    parts: tokio::sync::Mutex<Option<Parts>>,
}

#[async_trait::async_trait]
impl SandboxHandle for NsSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn connect_agent(&self) -> Result<UnixStream, RuntimeError> {
        UnixStream::connect(&self.agent_socket).map_err(|e| RuntimeError::Agent {
            id: self.id.clone(),
            source: iii_vm_agent_proto::ProtoError::Connect(format!(
                "{}: {e}",
                self.agent_socket.display()
            )),
        })
    }

    fn net_activity_file(&self) -> Option<PathBuf> {
        Some(self.activity.clone())
    }

    async fn stop(&self) -> Result<(), RuntimeError> {
        self.stopped.store(true, Ordering::SeqCst);
        let mut guard = self.parts.lock().await;
        match guard.take() {
            Some(p) => p.teardown().await,
            None => Ok(()),
        }
    }

    fn exited(&self) -> Option<i32> {
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        *self.exit.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_image_then_spec_with_defaults() {
        let s = |k: &str, v: &str| (k.to_string(), v.to_string());
        let env = merge_env(
            &[s("PATH", "/img"), s("A", "1")],
            &[s("A", "2"), s("B", "3")],
        );
        assert_eq!(
            env,
            vec![
                s("PATH", "/img"),
                s("A", "2"),
                s("B", "3"),
                s("HOME", "/root")
            ]
        );
        assert!(merge_env(&[], &[])
            .iter()
            .any(|(k, v)| k == "PATH" && v == DEFAULT_PATH));
    }
}
