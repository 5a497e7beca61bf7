//! The isolation runtimes behind iii sandboxes (issue #12), one trait, two kinds:
//!
//! * [`namespace`]: Linux namespaces (mount, pid, net, uts, ipc) + cgroups around
//!   `iii-init --namespace`, over an erofs/ext4 lower and a per-sandbox overlay
//!   upper. Native speed; shares the host kernel.
//! * [`microvm`]: one `iii-vmm` process (one VM) per sandbox, with its own
//!   guest kernel, the lower as a read-only disk and a fresh ext4 upper.
//!
//! [`select`] picks one for a `runtime:` setting. Both hand out a
//! [`SandboxHandle`] whose [`SandboxHandle::connect_agent`] gives a fresh
//! stream speaking the agent protocol (`iii-vm-agent-proto`).

#![deny(clippy::cast_possible_truncation)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod cgroup;
pub mod microvm;
pub mod namespace;
mod net;
pub mod state;

pub use iii_oci_rootfs::{LowerFormat, Rootfs};

/// Which runtime a configuration asks for (`runtime: auto | microvm | namespace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// The microVM runtime when this host really runs microVMs, else an error
    /// that names `runtime: namespace` and what it gives up.
    Auto,
    /// One microVM per sandbox (its own kernel).
    MicroVm,
    /// Linux namespaces + cgroups (shares the host kernel).
    Namespace,
}

impl std::str::FromStr for RuntimeChoice {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "microvm" => Ok(Self::MicroVm),
            "namespace" => Ok(Self::Namespace),
            other => Err(RuntimeError::InvalidSpec(format!(
                "unknown runtime {other:?}: expected auto, microvm or namespace"
            ))),
        }
    }
}

/// Where binaries and state live. Every field has a default (see each).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Sandbox directories: `$III_SANDBOX_ROOT`, else `/tmp/iii-sandbox`.
    pub state_root: Option<PathBuf>,
    /// `iii-init`: `$III_INIT`, else next to the current executable, else on `PATH`.
    pub init: Option<PathBuf>,
    /// `iii-vmm` (microVM only): `$III_VMM`, else next to the current executable, else on `PATH`.
    pub vmm: Option<PathBuf>,
    /// Guest kernel (microVM only): `$III_KERNEL`, else the `vmlinux` in the kernel
    /// cache that `vmm/kernel/build.sh` fills (`${XDG_CACHE_HOME:-~/.cache}/iii/kernel/*/`).
    pub kernel: Option<PathBuf>,
    /// How long a sandbox may take to answer its first ping (default 30 s).
    pub ready_timeout: Duration,
    /// Size of each microVM's sparse ext4 upper, MiB (default 2048).
    pub upper_mib: u64,
    /// A pre-made empty ext4 image copied as each microVM's upper instead of
    /// running `mke2fs` (for hosts without e2fsprogs, such as the nested L1).
    pub upper_template: Option<PathBuf>,
    /// Pass `--allow-pvm` to the VMM and skip the PVM refusal (measurement only:
    /// guests do not boot on PVM).
    pub allow_pvm: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            state_root: None,
            init: None,
            vmm: None,
            kernel: None,
            ready_timeout: Duration::from_secs(30),
            upper_mib: 2048,
            upper_template: None,
            allow_pvm: false,
        }
    }
}

/// What one sandbox gets.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Unique id: `[A-Za-z0-9_-]{1,64}` (it names the directory and cgroups).
    pub id: String,
    /// The read-only lower (never written; each sandbox has its own upper).
    pub rootfs: Rootfs,
    /// CPU quota (namespace) or vCPUs (microVM); at least 1.
    pub cpus: u32,
    /// Memory limit, MiB (swap off); at least 16.
    pub memory_mb: u32,
    /// Most tasks (processes and threads) at once (namespace); 0 → 256.
    pub pids_max: u32,
    /// Outbound network through a user-mode NAT (namespace only).
    pub network: bool,
    /// Environment every session starts from (after the image's own).
    pub env: Vec<(String, String)>,
    /// The engine port: the sandbox's `127.0.0.1:<port>` reaches the host's.
    pub engine_port: u16,
    /// Host directories bind-mounted into the sandbox (namespace only; the microVM runtime
    /// refuses them).
    pub mounts: Vec<Mount>,
}

/// A host directory seen inside a sandbox: writes through it reach the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// An existing host directory (absolute).
    pub source: PathBuf,
    /// Where it appears inside the sandbox (absolute, no `..`).
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
}

impl Mount {
    /// Checks the paths the way the sandbox's init will, before anything is created.
    pub fn check(&self) -> Result<(), RuntimeError> {
        let bad = |m: String| Err(RuntimeError::InvalidSpec(m));
        if !self.source.is_absolute() || !self.source.is_dir() {
            return bad(format!(
                "mount source {} must be an existing directory given by an absolute path",
                self.source.display()
            ));
        }
        let t = Path::new(&self.target);
        if !t.is_absolute()
            || t.components().any(|c| c == std::path::Component::ParentDir)
            || self.target == "/"
        {
            return bad(format!(
                "mount target {:?} must be an absolute path below / without `..`",
                self.target
            ));
        }
        Ok(())
    }
}

/// An isolation runtime.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// `"namespace"` or `"microvm"`.
    fn name(&self) -> &'static str;
    /// Starts a sandbox and returns once its agent answers.
    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn SandboxHandle>, RuntimeError>;
    /// Removes sandboxes left by daemons that have died; returns their ids.
    async fn cleanup_orphans(&self) -> Vec<String>;
}

/// A running sandbox. Dropping a handle does not stop it: call
/// [`SandboxHandle::stop`] (a daemon that dies leaves it to
/// [`Runtime::cleanup_orphans`] of the next one).
#[async_trait::async_trait]
pub trait SandboxHandle: Send + Sync {
    /// The spec's id.
    fn id(&self) -> &str;
    /// A fresh agent session stream (one session per stream).
    fn connect_agent(&self) -> Result<UnixStream, RuntimeError>;
    /// A file whose mtime moves when the sandbox's network carries traffic.
    fn net_activity_file(&self) -> Option<PathBuf>;
    /// Stops it and verifies that no mount, cgroup, process or directory is left.
    async fn stop(&self) -> Result<(), RuntimeError>;
    /// `Some(code)` once the sandbox died on its own (128 + signal for a signal).
    fn exited(&self) -> Option<i32>;
}

/// Why a runtime could not be chosen or a sandbox could not be made, run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec or a setting is unusable.
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// A sandbox with this id is already running (or its directory was left behind).
    #[error(
        "sandbox {0} already exists (stop it first, or run cleanup_orphans if its daemon died)"
    )]
    Exists(String),
    /// A file operation on the host failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// cgroups cannot be used as needed.
    #[error("cgroups: {0}")]
    Cgroup(String),
    /// A helper binary is not where it was looked for.
    #[error("{name} not found ({looked}); set {env} to its path")]
    BinaryNotFound {
        /// The binary's name.
        name: &'static str,
        /// Where it was looked for.
        looked: String,
        /// The environment variable that overrides the search.
        env: &'static str,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was started.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The sandbox's init (or VMM) exited before its agent answered.
    #[error("sandbox {id} died while starting (exit {code}); last log lines:\n{log}")]
    DiedStarting {
        /// The sandbox id.
        id: String,
        /// Its exit code (128 + signal).
        code: i32,
        /// The tail of its log.
        log: String,
    },
    /// The agent did not answer in time.
    #[error("sandbox {id} did not answer a ping within {} s; last log lines:\n{log}", timeout.as_secs())]
    ReadyTimeout {
        /// The sandbox id.
        id: String,
        /// The limit that passed.
        timeout: Duration,
        /// The tail of its log.
        log: String,
    },
    /// Talking to the agent failed.
    #[error("sandbox {id} agent: {source}")]
    Agent {
        /// The sandbox id.
        id: String,
        /// The protocol error.
        source: iii_vm_agent_proto::ProtoError,
    },
    /// Networking is not available as asked.
    #[error("network: {0}")]
    Network(String),
    /// This host cannot run the asked runtime.
    #[error("{0}")]
    Host(String),
    /// The sandbox was stopped but something was left behind.
    #[error("sandbox {id} left {what} behind after stop")]
    Leftover {
        /// The sandbox id.
        id: String,
        /// What is still there.
        what: String,
    },
}

impl RuntimeError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Picks the runtime for `choice`. `Auto` takes the microVM runtime only when
/// this host really runs microVMs (`/dev/kvm` usable, not PVM, guest kernel
/// present); otherwise it refuses, naming `runtime: namespace` and what that
/// gives up, so nobody silently gets weaker isolation than they asked for.
pub fn select(
    choice: RuntimeChoice,
    opts: RuntimeOptions,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    match choice {
        RuntimeChoice::Namespace => Ok(Arc::new(namespace::NamespaceRuntime::new(opts)?)),
        RuntimeChoice::MicroVm => Ok(Arc::new(microvm::MicroVmRuntime::new(opts)?)),
        RuntimeChoice::Auto => match microvm::MicroVmRuntime::new(opts) {
            Ok(rt) => Ok(Arc::new(rt)),
            Err(e) => Err(RuntimeError::Host(format!(
                "runtime auto: this host cannot run microVM sandboxes ({e}). Set `runtime: namespace` \
                 to run sandboxes in Linux namespaces + cgroups instead; that gives up a separate \
                 guest kernel (sandboxed code then shares the host kernel, so a kernel exploit \
                 escapes the sandbox)"
            ))),
        },
    }
}

/// The sandbox state root: `opts.state_root`, `$III_SANDBOX_ROOT`, or `/tmp/iii-sandbox`.
pub(crate) fn state_root(opts: &RuntimeOptions) -> PathBuf {
    opts.state_root
        .clone()
        .or_else(|| std::env::var_os("III_SANDBOX_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/tmp/iii-sandbox"))
}

/// Longest socket path a sandbox makes below the root: `/<64-char id>/fwd-65535.sock`.
const LONGEST_SOCKET_SUFFIX: usize = 1 + 64 + "/fwd-65535.sock".len();

/// Refuses a state root so long that the sandboxes' Unix sockets could not be bound (a
/// `sun_path` holds 107 bytes), at start-up rather than at the first create.
pub(crate) fn check_root_len(root: &Path) -> Result<(), RuntimeError> {
    let len = root.as_os_str().len();
    if len + LONGEST_SOCKET_SUFFIX > 107 {
        return Err(RuntimeError::Host(format!(
            "sandbox state root {} is {len} bytes long: sandbox sockets below it would exceed the              107-byte Unix socket path limit; set III_SANDBOX_ROOT to a directory of at most {} bytes",
            root.display(),
            107 - LONGEST_SOCKET_SUFFIX
        )));
    }
    Ok(())
}

/// Finds helper binary `name`: the explicit path, `$env`, next to the current
/// executable (and its parent, for `target/debug/deps` test binaries), or `PATH`.
pub(crate) fn find_binary(
    explicit: Option<&Path>,
    name: &'static str,
    env: &'static str,
) -> Result<PathBuf, RuntimeError> {
    let mut looked = Vec::new();
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        looked.push(p.display().to_string());
    }
    if let Some(p) = std::env::var_os(env).map(PathBuf::from) {
        if p.is_file() {
            return Ok(p);
        }
        looked.push(format!("${env}={}", p.display()));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
            looked.push(dir.display().to_string());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        looked.push("PATH".into());
    }
    Err(RuntimeError::BinaryNotFound {
        name,
        looked: looked.join(", "),
        env,
    })
}

/// Checks a sandbox id: it becomes a directory and cgroup name.
pub(crate) fn check_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "id {id:?} must be 1 to 64 of A-Z a-z 0-9 - _"
        )))
    }
}

/// The last `lines` lines of a log file (for start-up errors).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return format!("(no log at {})", path.display());
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        "(log empty)".into()
    } else {
        tail
    }
}

/// Exit code of a wait status: the code, or 128 + signal.
pub(crate) fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_too_long_for_socket_paths_is_refused() {
        assert!(check_root_len(Path::new("/tmp/iii-sandbox")).is_ok());
        let long = format!("/tmp/{}", "x".repeat(40));
        let e = check_root_len(Path::new(&long)).unwrap_err();
        assert!(e.to_string().contains("III_SANDBOX_ROOT"), "{e}");
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("abc-DEF_09").is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            let e = check_id(bad).unwrap_err();
            assert!(e.to_string().contains("must be"), "{e}");
        }
    }

    #[test]
    fn runtime_choice_parses() {
        assert_eq!(
            "namespace".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Namespace
        );
        assert_eq!(
            "auto".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Auto
        );
        assert!("vm"
            .parse::<RuntimeChoice>()
            .unwrap_err()
            .to_string()
            .contains("microvm"));
    }

    #[test]
    fn auto_refuses_a_host_without_microvms_and_names_namespace() {
        // On this project's machines /dev/kvm is PVM (or absent): Auto must refuse.
        if iii_vmm::host::check_kvm(Path::new("/dev/kvm"), false).is_ok() {
            return;
        }
        let e = select(RuntimeChoice::Auto, RuntimeOptions::default())
            .err()
            .expect("auto must refuse here");
        let m = e.to_string();
        assert!(m.contains("runtime: namespace"), "{m}");
        assert!(m.contains("kernel"), "{m}");
    }
}
