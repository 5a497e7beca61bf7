//! `iii-init --namespace <spec.json>`: the same agent, in Linux namespaces
//! instead of a VM (the sandbox runtime's `namespace` isolation).
//!
//! The bootstrap process joins the sandbox's cgroups, unshares the pid
//! namespace and forks; the child unshares the mount, net, UTS and IPC
//! namespaces. The bootstrap stays in every host namespace: it records the
//! child's pid, forwards SIGTERM/SIGINT and exits with the child's status.
//! The child is PID 1 of the new pid namespace: it
//! dies with the bootstrap (`PR_SET_PDEATHSIG`), builds the root (read-only
//! lower on an autoclear loop device + overlay upper), a minimal `/dev`,
//! `/proc`, read-only `/sys`, `/tmp`, `/run`, brings up `lo`, pivots into
//! the root and serves the agent on a Unix socket whose listener was bound
//! on the host path before the pivot. Everything it mounted lives only in
//! its mount namespace, so it vanishes with the last process.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{abi, agent, reaper, sys};

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("cannot read the spec {path}: {source}")]
    ReadSpec { path: String, source: io::Error },
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("loop device for {path}: {detail}")]
    Loop { path: String, detail: String },
}

fn io_err(what: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> NsError {
    let path = path.as_ref().display().to_string();
    move |source| NsError::Io { what, path, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LowerFormat {
    Erofs,
    Ext4,
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Forward {
    /// Port of the sandbox's 127.0.0.1 to listen on.
    pub port: u16,
    /// Host Unix socket each connection is carried to; must sit directly in `dir`.
    pub socket: String,
}

/// Written by the runtime; see the sandbox contract, section B.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Spec {
    pub dir: String,
    pub lower: String,
    pub lower_format: LowerFormat,
    pub upper: String,
    pub work: String,
    pub merged: String,
    pub agent_socket: String,
    #[serde(default)]
    pub forwards: Vec<Forward>,
    #[serde(default)]
    pub cgroup_procs: Vec<String>,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default = "default_workdir")]
    pub workdir: String,
    #[serde(default)]
    pub pid_file: Option<String>,
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// Host directories bind-mounted into the root before the pivot.
    #[serde(default)]
    pub mounts: Vec<BindMount>,
}

/// A host directory seen at `target` inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BindMount {
    /// Absolute host path of an existing directory.
    pub source: String,
    /// Absolute path inside the sandbox (created when missing).
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
}

fn default_hostname() -> String {
    "sandbox".into()
}

fn default_workdir() -> String {
    "/".into()
}

impl Spec {
    pub fn parse(json: &[u8]) -> Result<Self, NsError> {
        let s: Spec = serde_json::from_slice(json).map_err(|e| NsError::Spec(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), NsError> {
        let bad = |m: String| Err(NsError::Spec(m));
        let paths = [
            ("dir", &self.dir),
            ("lower", &self.lower),
            ("upper", &self.upper),
            ("work", &self.work),
            ("merged", &self.merged),
            ("agent_socket", &self.agent_socket),
            ("workdir", &self.workdir),
        ];
        for (name, p) in paths {
            if !p.starts_with('/') {
                return bad(format!("{name} must be an absolute path, got {p:?}"));
            }
            if p.contains('\0') {
                return bad(format!("{name} contains a NUL byte"));
            }
        }
        // overlayfs splits its options on `,` and lowerdir on `:`.
        for (name, p) in [
            ("lower", &self.lower),
            ("upper", &self.upper),
            ("work", &self.work),
        ] {
            if p.contains(',') || p.contains(':') {
                return bad(format!("{name} must not contain ',' or ':': {p:?}"));
            }
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 || self.hostname.contains('\0') {
            return bad(format!(
                "hostname must be 1..=64 bytes, got {:?}",
                self.hostname
            ));
        }
        for f in &self.forwards {
            if Path::new(&f.socket).parent() != Some(Path::new(&self.dir)) {
                return bad(format!(
                    "forward socket {} must be directly in dir {}",
                    f.socket, self.dir
                ));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return bad(format!("bad env entry {k:?}"));
            }
        }
        for m in &self.mounts {
            for (what, p) in [("mount source", &m.source), ("mount target", &m.target)] {
                if !p.starts_with('/') || p.contains('\0') {
                    return bad(format!("{what} must be an absolute path, got {p:?}"));
                }
                // The target is joined under the new root: `..` would climb out of it.
                if Path::new(p)
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                {
                    return bad(format!("{what} must not contain `..`: {p:?}"));
                }
            }
            if m.target == "/" {
                return bad("a mount cannot replace the root".into());
            }
        }
        for p in self.cgroup_procs.iter().chain(&self.pid_file) {
            if p.contains('\0') {
                return bad("a path contains a NUL byte".into());
            }
        }
        Ok(())
    }
}

fn log(msg: &str) {
    eprintln!("iii-init[namespace]: {msg}");
}

/// Entry point for `iii-init --namespace <spec>`; never returns.
pub fn main(spec_path: &str) -> ! {
    // The sandbox can read PID 1's initial environment (/proc/1/environ),
    // which is the runtime's (the daemon's secrets included): start over
    // with an empty one. Sessions get the spec's env, never this one.
    if std::env::vars_os().next().is_some() {
        reexec_without_env();
    }
    // SAFETY: plain syscall; files the agent creates get predictable modes.
    unsafe { libc::umask(0o022) };
    let spec = match fs::read(spec_path)
        .map_err(|source| NsError::ReadSpec {
            path: spec_path.into(),
            source,
        })
        .and_then(|b| Spec::parse(&b))
    {
        Ok(s) => s,
        Err(e) => {
            log(&e.to_string());
            std::process::exit(2)
        }
    };
    match bootstrap(&spec) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log(&e.to_string());
            std::process::exit(1)
        }
    }
}

fn reexec_without_env() {
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of valid strings
    // that outlive the call; execve only returns on failure.
    unsafe { libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    log(&format!(
        "cannot re-exec with an empty environment: {}",
        io::Error::last_os_error()
    ));
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn sigset(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// The bootstrap: cgroups, unshare, fork, then supervise the child.
fn bootstrap(spec: &Spec) -> Result<i32, NsError> {
    let me = std::process::id().to_string();
    for procs in &spec.cgroup_procs {
        fs::write(procs, &me).map_err(io_err("joining cgroup", procs))?;
    }
    // Blocked before the fork: a SIGTERM arriving before the parent's wait
    // loop stays pending instead of killing it with the child still running.
    let set = sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    // SAFETY: valid set; no threads exist yet.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // Only the pid namespace is unshared here (it applies to the children
    // only); the child unshares the others itself. Were the bootstrap in the
    // sandbox's mount namespace, the child's pivot_root would move the
    // bootstrap's root into the sandbox too (pivot_root re-roots every
    // process of the namespace), and it could no longer reach the host paths
    // it writes, like the pid file.
    sys::unshare(libc::CLONE_NEWPID)?;
    // The child watches the read end: EOF means the bootstrap is gone,
    // covering a death between fork and PR_SET_PDEATHSIG.
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io_err("pipe", "bootstrap")(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    let (alive_r, alive_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io_err("fork", "bootstrap")(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(alive_w);
        pid1(spec, alive_r);
    }
    drop(alive_r);
    if let Some(pf) = &spec.pid_file {
        write_atomic(Path::new(pf), format!("{pid}\n").as_bytes())
            .map_err(io_err("writing pid file", pf))?;
    }
    loop {
        let mut info: libc::siginfo_t =
            // SAFETY: an all-zero siginfo_t is a valid out-buffer.
            unsafe { std::mem::zeroed() };
        // SAFETY: valid set and out-pointer.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if sig == libc::SIGCHLD {
            let mut status = 0;
            // SAFETY: valid out-pointer.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                drop(alive_w);
                return Ok(sys::exit_code(status));
            }
        } else {
            sys::kill(pid, sig);
        }
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)
}

/// PID 1 of the sandbox; never returns.
fn pid1(spec: &Spec, alive: OwnedFd) -> ! {
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if bootstrap_gone(alive.as_raw_fd()) {
        std::process::exit(1);
    }
    // unshare(CLONE_NEWNS) needs an unshared fs_struct: this process is
    // single-threaded (forked from a single-threaded bootstrap).
    if let Err(e) = sys::unshare(
        libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
    ) {
        log(&format!("setup failed: {e}"));
        std::process::exit(1);
    }
    match setup(spec) {
        Ok(listener) => serve(spec, listener),
        Err(e) => {
            log(&format!("setup failed: {e}"));
            std::process::exit(1)
        }
    }
}

fn bootstrap_gone(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLIN) != 0
}

/// A directory init creates for the lower's mount point, inside `dir`.
fn lower_mountpoint(spec: &Spec) -> PathBuf {
    Path::new(&spec.dir).join("lower.mnt")
}

/// Everything up to and including the pivot; returns the agent listener.
fn setup(spec: &Spec) -> Result<(UnixListener, OwnedFd), NsError> {
    sys::mount("none", "/", "", libc::MS_REC | libc::MS_PRIVATE, None)?;
    for d in [&spec.upper, &spec.work, &spec.merged] {
        fs::create_dir_all(d).map_err(io_err("creating", d))?;
    }
    let lowerdir = match spec.lower_format {
        LowerFormat::Dir => spec.lower.clone(),
        fmt => {
            let mp = lower_mountpoint(spec);
            fs::create_dir_all(&mp).map_err(io_err("creating", &mp))?;
            let fstype = if fmt == LowerFormat::Erofs {
                "erofs"
            } else {
                "ext4"
            };
            let mp = mp.to_string_lossy().into_owned();
            let dev = attach_loop(&spec.lower)?;
            sys::mount(&dev.path, &mp, fstype, libc::MS_RDONLY, None)?;
            // The mount holds the device now; with autoclear it detaches
            // when that mount goes (with this namespace).
            drop(dev);
            mp
        }
    };
    sys::mount(
        "overlay",
        &spec.merged,
        "overlay",
        0,
        Some(&format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            spec.upper, spec.work
        )),
    )?;
    // The listener is bound on the host path before the root changes: the
    // runtime connects there, and the fd keeps serving after the pivot.
    let _ = fs::remove_file(&spec.agent_socket);
    let listener =
        UnixListener::bind(&spec.agent_socket).map_err(io_err("binding", &spec.agent_socket))?;
    fs::set_permissions(&spec.agent_socket, fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", &spec.agent_socket))?;
    let dir_fd = open_path(&spec.dir)?;
    let m = &spec.merged;
    mount_dev(m)?;
    mkdir(&format!("{m}/proc"))?;
    sys::mount(
        "proc",
        &format!("{m}/proc"),
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    harden_proc(m)?;
    mkdir(&format!("{m}/sys"))?;
    sys::mount(
        "sysfs",
        &format!("{m}/sys"),
        "sysfs",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    mkdir(&format!("{m}/tmp"))?;
    sys::mount(
        "tmpfs",
        &format!("{m}/tmp"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;
    mkdir(&format!("{m}/run"))?;
    sys::mount(
        "tmpfs",
        &format!("{m}/run"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    for b in &spec.mounts {
        let target = format!("{m}/{}", b.target.trim_start_matches('/'));
        fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
        sys::mount(&b.source, &target, "", libc::MS_BIND | libc::MS_REC, None)?;
        if b.readonly {
            sys::mount(
                "none",
                &target,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                None,
            )?;
        }
    }
    let workdir = format!("{m}/{}", spec.workdir.trim_start_matches('/'));
    fs::create_dir_all(&workdir).map_err(io_err("creating", &workdir))?;
    sys::sethostname(&spec.hostname)?;
    sys::loopback_up()?;
    std::env::set_current_dir(m).map_err(io_err("chdir", m))?;
    sys::pivot_into_cwd()?;
    std::env::set_current_dir("/").map_err(io_err("chdir", "/"))?;
    if let Some(conf) = &spec.resolv_conf {
        fs::create_dir_all("/etc").map_err(io_err("creating", "/etc"))?;
        fs::write("/etc/resolv.conf", conf).map_err(io_err("writing", "/etc/resolv.conf"))?;
    }
    // The sandbox's OOM kills should pick the workload, never init (which
    // would take the whole sandbox down); children get 0 back in pre_exec.
    // Lowering it needs CAP_SYS_RESOURCE, which some hosts withhold even
    // from root: then init stays killable, which is a weaker sandbox, not
    // a broken one.
    // Without it, sessions get the highest score instead (raising needs no capability), so the
    // OOM killer still takes the workload before init.
    match fs::write("/proc/self/oom_score_adj", "-1000") {
        Ok(()) => crate::agent::INIT_OOM_PROTECTED.store(true, std::sync::atomic::Ordering::Relaxed),
        Err(e) => log(&format!(
            "cannot protect init from the OOM killer (oom_score_adj -1000): {e}; sessions run at +1000 instead"
        )),
    }
    std::env::set_current_dir(&spec.workdir).map_err(io_err("chdir", &spec.workdir))?;
    Ok((listener, dir_fd))
}

/// `/proc` entries that reach past the namespaces: host-wide sysctls and
/// triggers become read-only, kernel memory and key listings are hidden
/// under `/dev/null` (as container runtimes do). Sessions cannot undo it:
/// they run without `CAP_SYS_ADMIN`.
fn harden_proc(root: &str) -> Result<(), NsError> {
    for ro in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let p = format!("{root}/proc/{ro}");
        if !Path::new(&p).exists() {
            continue;
        }
        sys::mount(&p, &p, "", libc::MS_BIND | libc::MS_REC, None)?;
        sys::mount(
            &p,
            &p,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )?;
    }
    let null = format!("{root}/dev/null");
    for masked in ["kcore", "keys", "timer_list", "sched_debug", "kallsyms"] {
        let p = format!("{root}/proc/{masked}");
        if Path::new(&p).exists() {
            sys::mount(&null, &p, "", libc::MS_BIND, None)?;
        }
    }
    Ok(())
}

fn mkdir(p: &str) -> Result<(), NsError> {
    fs::create_dir_all(p).map_err(io_err("creating", p))
}

fn open_path(dir: &str) -> Result<OwnedFd, NsError> {
    let c = CString::new(dir).map_err(|_| NsError::Spec("NUL in dir".into()))?;
    // SAFETY: valid string; O_PATH opens no file contents.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io_err("opening", dir)(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/dev` as a tmpfs with only the harmless nodes: never devtmpfs, which
/// is the host's devices.
fn mount_dev(root: &str) -> Result<(), NsError> {
    let dev = format!("{root}/dev");
    mkdir(&dev)?;
    sys::mount(
        "tmpfs",
        &dev,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        sys::mknod_char(&format!("{dev}/{name}"), major, minor)?;
    }
    mkdir(&format!("{dev}/pts"))?;
    sys::mount(
        "devpts",
        &format!("{dev}/pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mkdir(&format!("{dev}/shm"))?;
    sys::mount(
        "tmpfs",
        &format!("{dev}/shm"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let l = format!("{dev}/{link}");
        std::os::unix::fs::symlink(target, &l).map_err(io_err("symlink", &l))?;
    }
    Ok(())
}

/// An attached loop device; the fd is closed on drop (autoclear then
/// detaches the device once nothing else holds it).
struct LoopDev {
    path: String,
    _fd: OwnedFd,
}

fn open_rw(path: &str) -> io::Result<OwnedFd> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
}

/// Attaches `file` read-only with autoclear to a free loop device.
fn attach_loop(file: &str) -> Result<LoopDev, NsError> {
    let err = |detail: String| NsError::Loop {
        path: file.into(),
        detail,
    };
    let backing = fs::File::open(file).map_err(|e| err(format!("open: {e}")))?;
    let ctl = open_rw("/dev/loop-control").map_err(|e| err(format!("/dev/loop-control: {e}")))?;
    // Another process may take the free device between GET_FREE and the
    // attach (EBUSY): ask again.
    for _ in 0..32 {
        // SAFETY: plain ioctl on our fd.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), abi::LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(err(format!(
                "LOOP_CTL_GET_FREE: {}",
                io::Error::last_os_error()
            )));
        }
        let path = format!("/dev/loop{n}");
        let dev = match open_rw(&path) {
            Ok(d) => d,
            // udev-less hosts: the node may not exist yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let minor = u32::try_from(n).map_err(|_| err(format!("loop number {n}")))?;
                let c = CString::new(path.clone()).expect("no NUL");
                // SAFETY: valid string; makedev is pure arithmetic.
                unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o660, libc::makedev(7, minor)) };
                open_rw(&path).map_err(|e| err(format!("{path}: {e}")))?
            }
            Err(e) => return Err(err(format!("{path}: {e}"))),
        };
        match configure_loop(&dev, &backing, file) {
            Ok(()) => return Ok(LoopDev { path, _fd: dev }),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(err(format!("{path}: {e}"))),
        }
    }
    Err(err("no free loop device after 32 attempts".into()))
}

fn configure_loop(dev: &OwnedFd, backing: &fs::File, name: &str) -> io::Result<()> {
    // SAFETY: all-zero is a valid loop_info64.
    let mut info: abi::LoopInfo64 = unsafe { std::mem::zeroed() };
    info.lo_flags = abi::LO_FLAGS_READ_ONLY | abi::LO_FLAGS_AUTOCLEAR;
    for (d, s) in info
        .lo_file_name
        .iter_mut()
        .zip(Path::new(name).as_os_str().as_bytes().iter().take(63))
    {
        *d = *s;
    }
    let fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let cfg = abi::LoopConfig {
        fd,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: cfg is a valid loop_config for the duration of the ioctl.
    if unsafe { libc::ioctl(dev.as_raw_fd(), abi::LOOP_CONFIGURE, &cfg) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(e);
    }
    // Kernels before 5.8: attach, then set the flags.
    // SAFETY: plain ioctls on our fds; info is valid for the call.
    unsafe {
        if libc::ioctl(dev.as_raw_fd(), abi::LOOP_SET_FD, backing.as_raw_fd()) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(dev.as_raw_fd(), abi::LOOP_SET_STATUS64, &info) < 0 {
            let e = io::Error::last_os_error();
            libc::ioctl(dev.as_raw_fd(), abi::LOOP_CLR_FD, 0);
            return Err(e);
        }
    }
    Ok(())
}

extern "C" fn ignore(_: libc::c_int) {}

/// After the pivot: signals, forwards, the agent, then reap forever.
fn serve(spec: &Spec, (listener, dir_fd): (UnixListener, OwnedFd)) -> ! {
    agent::set_defaults(agent::SessionDefaults {
        env: spec.env.clone(),
        cwd: Some(spec.workdir.clone()),
        reset_oom_score: true,
        restrict_caps: true,
    });
    // PID 1 of a pid namespace only gets the signals it handles; the stop
    // signals are taken by sigwait, SIGCHLD stays blocked (waitid does not
    // need it). A handler keeps them deliverable from the host.
    let stop = sigset(&STOP_SIGNALS);
    for s in STOP_SIGNALS {
        // SAFETY: installing a handler that does nothing.
        unsafe { libc::signal(s, ignore as *const () as libc::sighandler_t) };
    }
    // SAFETY: valid set; inherited by every thread started below.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &stop, std::ptr::null_mut()) };
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: valid set and out-pointer.
        if unsafe { libc::sigwait(&stop, &mut sig) } == 0 {
            shutdown(0);
        }
    });
    let dir_fd = dir_fd.as_raw_fd();
    for f in &spec.forwards {
        let name = Path::new(&f.socket)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // No host path is visible any more: reach the socket through the
        // directory fd kept from before the pivot.
        let target = format!("/proc/self/fd/{dir_fd}/{name}");
        if let Err(e) = forward(f.port, target) {
            log(&format!("forwarding 127.0.0.1:{}: {e}", f.port));
            std::process::exit(1);
        }
    }
    std::thread::spawn(move || loop {
        match listener.accept() {
            Ok((s, _)) => {
                std::thread::spawn(move || {
                    let Ok(w) = s.try_clone() else { return };
                    if let agent::End::Poweroff = agent::serve(s, Box::new(w)) {
                        shutdown(0);
                    }
                });
            }
            Err(e) => {
                log(&format!("agent accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let _ = io::stderr().flush();
    log("ready");
    reaper::reap_forever()
}

/// Stops every process of the sandbox (TERM, up to 2 s, then KILL) and
/// exits; the kernel kills anything left when PID 1 exits.
fn shutdown(code: i32) -> ! {
    sys::kill(-1, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    // kill(-1, 0) fails with ESRCH once no process but init is left.
    // SAFETY: a signal-0 probe.
    while Instant::now() < deadline && unsafe { libc::kill(-1, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    sys::kill(-1, libc::SIGKILL);
    std::process::exit(code)
}

fn forward(port: u16, target: String) -> io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let target = target.clone();
            std::thread::spawn(move || match UnixStream::connect(&target) {
                Ok(u) => splice(conn, u),
                Err(e) => log(&format!("forward {port} to the host socket: {e}")),
            });
        }
    });
    Ok(())
}

fn splice(tcp: TcpStream, unix: UnixStream) {
    let (Ok(mut tcp_r), Ok(mut unix_r)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let (mut tcp_w, mut unix_w) = (tcp, unix);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
      "dir": "/tmp/iii-sandbox/x",
      "lower": "/c/lower.erofs", "lower_format": "erofs",
      "upper": "/tmp/iii-sandbox/x/upper", "work": "/tmp/iii-sandbox/x/work",
      "merged": "/tmp/iii-sandbox/x/merged",
      "agent_socket": "/tmp/iii-sandbox/x/agent.sock",
      "forwards": [{"port": 49134, "socket": "/tmp/iii-sandbox/x/fwd-49134.sock"}],
      "cgroup_procs": ["/sys/fs/cgroup/pids/iii-sandbox/x/cgroup.procs"],
      "hostname": "sandbox",
      "env": [["PATH", "/usr/bin:/bin"], ["HOME", "/root"]],
      "workdir": "/workspace",
      "pid_file": "/tmp/iii-sandbox/x/init.pid",
      "resolv_conf": null
    }"#;

    #[test]
    fn parses_the_contract_example() {
        let s = Spec::parse(SPEC.as_bytes()).unwrap();
        assert_eq!(s.lower_format, LowerFormat::Erofs);
        assert_eq!(s.forwards[0].port, 49134);
        assert_eq!(s.env[1], ("HOME".into(), "/root".into()));
        assert_eq!(s.workdir, "/workspace");
        assert_eq!(s.resolv_conf, None);
        let minimal = r#"{"dir":"/d","lower":"/l","lower_format":"dir","upper":"/d/u",
            "work":"/d/w","merged":"/d/m","agent_socket":"/d/a.sock"}"#;
        let s = Spec::parse(minimal.as_bytes()).unwrap();
        assert_eq!((s.hostname.as_str(), s.workdir.as_str()), ("sandbox", "/"));
    }

    #[test]
    fn refuses_bad_specs() {
        let with = |from: &str, to: &str| Spec::parse(SPEC.replace(from, to).as_bytes());
        assert!(matches!(
            with("\"erofs\"", "\"squashfs\""),
            Err(NsError::Spec(_))
        ));
        assert!(matches!(
            with("/c/lower.erofs", "rel/lower"),
            Err(NsError::Spec(_))
        ));
        assert!(matches!(
            with("/c/lower.erofs", "/c/a,b"),
            Err(NsError::Spec(_))
        ));
        assert!(matches!(
            with("/tmp/iii-sandbox/x/fwd-49134.sock", "/elsewhere/fwd.sock"),
            Err(NsError::Spec(_))
        ));
        assert!(matches!(with("\"sandbox\"", "\"\""), Err(NsError::Spec(_))));
        assert!(matches!(with("\"HOME\"", "\"A=B\""), Err(NsError::Spec(_))));
        assert!(matches!(Spec::parse(b"{}"), Err(NsError::Spec(_))));
        let mount = |src: &str, dst: &str| {
            SPEC.replace(
                "\"resolv_conf\": null",
                &format!("\"resolv_conf\": null, \"mounts\": [{{\"source\": \"{src}\", \"target\": \"{dst}\"}}]"),
            )
        };
        let ok = Spec::parse(mount("/home/p", "/workspace").as_bytes()).unwrap();
        assert_eq!(ok.mounts[0].target, "/workspace");
        assert!(!ok.mounts[0].readonly);
        for (src, dst) in [
            ("rel", "/w"),
            ("/h", "w"),
            ("/h", "/w/../../etc"),
            ("/h", "/"),
        ] {
            assert!(
                matches!(
                    Spec::parse(mount(src, dst).as_bytes()),
                    Err(NsError::Spec(_))
                ),
                "{src} -> {dst}"
            );
        }
    }
}
