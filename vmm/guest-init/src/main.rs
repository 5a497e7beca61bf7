//! iii-init: PID 1 of an iii microVM.
//!
//! 1. mounts /proc, /sys, /dev;
//! 2. assembles the root: read-only lower (erofs/ext4) + writable upper
//!    (ext4 disk or tmpfs) under overlayfs, then switches into it;
//! 3. brings up loopback and forwards guest 127.0.0.1:<port> to the host over vsock;
//! 4. serves the exec/file agent on vsock (and on a virtio-serial port named
//!    `iii.agent` when present, which is how qemu-based tests reach it);
//! 5. runs the workload, if any, forwards signals to it, reaps all children,
//!    and powers off when the workload exits or the host asks.
//!
//! `iii-init --namespace <spec.json>` runs the same agent in Linux
//! namespaces on the host instead (see [`namespace`]).

#![deny(clippy::cast_possible_truncation)]

mod abi;
mod agent;
mod cmdline;
mod fsops;
mod namespace;
mod reaper;
mod sys;
mod vsock;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use iii_vm_agent_proto::AGENT_PORT;

use cmdline::BootConfig;

/// Workload pid, for signal forwarding (0: none).
static WORKLOAD: AtomicI32 = AtomicI32::new(0);

fn log(msg: &str) {
    // The console is the kernel's; stderr goes there for PID 1.
    eprintln!("iii-init: {msg}");
}

fn fatal(msg: &str) -> ! {
    log(&format!("fatal: {msg}"));
    sys::power_off()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--namespace") {
        let Some(spec) = args.get(2) else {
            eprintln!("usage: iii-init --namespace <spec.json>");
            std::process::exit(2);
        };
        namespace::main(spec);
    }
    if std::process::id() != 1 {
        eprintln!("iii-init must run as PID 1 inside an iii microVM");
        std::process::exit(2);
    }
    block_forwarded_signals();
    if let Err(e) = early_mounts() {
        fatal(&e.to_string());
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cfg = match cmdline::parse(&cmdline) {
        Ok(c) => c,
        Err(e) => fatal(&e.to_string()),
    };
    if let Err(e) = assemble_root(&cfg) {
        fatal(&e.to_string());
    }
    if let Err(e) = sys::loopback_up() {
        log(&format!("loopback: {e}"));
    }
    for &port in &cfg.forward_ports {
        if let Err(e) = forward_port(port) {
            fatal(&format!("forwarding 127.0.0.1:{port}: {e}"));
        }
    }
    start_agents();
    std::thread::spawn(forward_signals);
    if let Some(run) = cfg.run.clone() {
        std::thread::spawn(move || run_workload(run));
    }
    log("ready");
    reaper::reap_forever();
}

fn early_mounts() -> Result<(), sys::SysError> {
    for d in ["/proc", "/sys", "/dev", "/tmp"] {
        let _ = std::fs::create_dir_all(d);
    }
    sys::mount("proc", "/proc", "proc", 0, None)?;
    sys::mount("sysfs", "/sys", "sysfs", 0, None)?;
    // The kernel may have mounted devtmpfs already (DEVTMPFS_MOUNT with a disk root).
    if let Err(e) = sys::mount("devtmpfs", "/dev", "devtmpfs", 0, None) {
        if !Path::new("/dev/null").exists() {
            return Err(e);
        }
    }
    let _ = std::fs::create_dir_all("/dev/pts");
    let _ = sys::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        0,
        Some("newinstance,ptmxmode=0666"),
    );
    Ok(())
}

/// Lower + upper under overlay at /mnt/root, then switch root into it.
/// `pivot_root` is not possible out of the initramfs (rootfs cannot be
/// unmounted), so this moves the new root over `/` and chroots, as
/// switch_root does.
fn assemble_root(cfg: &BootConfig) -> Result<(), sys::SysError> {
    let Some(root) = &cfg.root else {
        return Ok(()); // agent-only VM: stay in the initramfs
    };
    for d in ["/mnt/lower", "/mnt/upper", "/mnt/root"] {
        let _ = std::fs::create_dir_all(d);
    }
    sys::mount(root, "/mnt/lower", &cfg.root_fstype, libc::MS_RDONLY, None)?;
    match &cfg.upper {
        Some(dev) => sys::mount(dev, "/mnt/upper", "ext4", 0, None)?,
        None => sys::mount("tmpfs", "/mnt/upper", "tmpfs", 0, Some("mode=0755"))?,
    }
    for d in ["/mnt/upper/data", "/mnt/upper/work"] {
        let _ = std::fs::create_dir_all(d);
    }
    sys::mount(
        "overlay",
        "/mnt/root",
        "overlay",
        0,
        Some("lowerdir=/mnt/lower,upperdir=/mnt/upper/data,workdir=/mnt/upper/work"),
    )?;
    for d in ["proc", "sys", "dev", "tmp"] {
        let _ = std::fs::create_dir_all(format!("/mnt/root/{d}"));
    }
    sys::move_mount("/proc", "/mnt/root/proc")?;
    sys::move_mount("/sys", "/mnt/root/sys")?;
    sys::move_mount("/dev", "/mnt/root/dev")?;
    std::env::set_current_dir("/mnt/root").map_err(|e| sys::SysError::Call {
        what: "chdir",
        target: "/mnt/root".into(),
        source: e,
    })?;
    sys::move_mount(".", "/")?;
    sys::chroot(".")?;
    std::env::set_current_dir("/").map_err(|e| sys::SysError::Call {
        what: "chdir",
        target: "/".into(),
        source: e,
    })
}

/// Guest-side listener on 127.0.0.1:port; each connection is carried over
/// vsock to the host, where the VMM maps the port to the host service.
fn forward_port(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                match vsock::VsockStream::connect(vsock::HOST_CID, u32::from(port)) {
                    Ok(v) => splice(conn, v),
                    Err(e) => log(&format!("vsock connect to host port {port}: {e}")),
                }
            });
        }
    });
    Ok(())
}

fn splice(tcp: TcpStream, vs: vsock::VsockStream) {
    let (Ok(mut tcp_r), Ok(mut vs_r)) = (tcp.try_clone(), vs.try_clone()) else {
        return;
    };
    let (mut tcp_w, mut vs_w) = (tcp, vs);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut vs_w);
        vs_w.shutdown_write();
    });
    let _ = std::io::copy(&mut vs_r, &mut tcp_w);
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

fn start_agents() {
    match vsock::VsockListener::bind(AGENT_PORT) {
        Ok(l) => {
            std::thread::spawn(move || loop {
                match l.accept() {
                    Ok(s) => {
                        std::thread::spawn(move || {
                            let Ok(w) = s.try_clone() else { return };
                            if let agent::End::Poweroff = agent::serve(s, Box::new(w)) {
                                sys::power_off();
                            }
                        });
                    }
                    Err(e) => {
                        log(&format!("vsock accept: {e}"));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        }
        // No vsock device: the serial agent (if any) is the only channel.
        Err(e) => log(&format!("no vsock agent: {e}")),
    }
    if let Some(port) = find_serial_port("iii.agent") {
        std::thread::spawn(move || serve_serial(&port));
    }
}

fn find_serial_port(name: &str) -> Option<String> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(format!("/dev/{}", e.file_name().to_string_lossy()));
        }
    }
    None
}

/// Serves the agent on a virtio-serial port. The port is opened once and
/// stays open: closing and reopening it while polling for a host (a read
/// returns EOF until one connects) let qemu drop host bytes that arrived
/// while the port was closed, and a dropped request hangs its client.
fn serve_serial(path: &str) {
    let port = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            log(&format!("{path}: {e}"));
            return;
        }
    };
    loop {
        let (Ok(r), Ok(w)) = (port.try_clone(), port.try_clone()) else {
            log(&format!("{path}: cannot duplicate the port"));
            return;
        };
        let r = SerialReader {
            port: r,
            grace: SERIAL_HANGUP_GRACE,
        };
        match agent::serve(r, Box::new(w)) {
            agent::End::Poweroff => sys::power_off(),
            // The host stayed away for the whole grace: serve the next one.
            agent::End::Closed => {}
        }
    }
}

/// How long a virtio-serial port must read EOF before the host counts as gone.
const SERIAL_HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Reads a virtio-serial port, where EOF means "no host connected right
/// now", not "the stream ended". The kernel learns of host connects and
/// disconnects on the control queue, which is not ordered with the data
/// queue: a host's first bytes can arrive (and be read) before its connect,
/// and the next read then returns EOF with the host still there. So EOF is
/// retried until it has lasted `grace`; only then is it passed on (and a
/// running session hung up).
struct SerialReader<R> {
    port: R,
    grace: Duration,
}

impl<R: std::io::Read> std::io::Read for SerialReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let since = std::time::Instant::now();
        loop {
            let n = self.port.read(buf)?;
            if n > 0 || buf.is_empty() || since.elapsed() >= self.grace {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn run_workload(req: iii_vm_agent_proto::ExecRequest) {
    let mut cmd = match agent::command(&req, None) {
        Ok(c) => c,
        Err(e) => fatal(&e),
    };
    // The workload talks to the console directly.
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit());
    let (child, exit) = match reaper::spawn(&mut cmd) {
        Ok(x) => x,
        Err(e) => fatal(&format!("cannot start workload {:?}: {e}", req.argv)),
    };
    WORKLOAD.store(child.id() as i32, Ordering::SeqCst);
    let code = match req.timeout_ms {
        Some(ms) => match exit.recv_timeout(Duration::from_millis(ms)) {
            Ok(c) => c,
            Err(_) => {
                sys::kill(-(child.id() as i32), libc::SIGKILL);
                let _ = exit.recv();
                iii_vm_agent_proto::EXIT_TIMEOUT
            }
        },
        None => exit.recv().unwrap_or(255),
    };
    let _ = std::io::stdout().flush();
    log(&format!("exit={code}"));
    sys::power_off();
}

const FORWARDED: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocked before any thread starts so every thread inherits the mask and
/// only the forwarding thread receives them (children get a clean mask from
/// std's spawn).
fn block_forwarded_signals() {
    let set = signal_set();
    // SAFETY: valid set; old mask not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn forward_signals() {
    let set = signal_set();
    loop {
        let mut sig = 0;
        // SAFETY: valid set and out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        let pid = WORKLOAD.load(Ordering::SeqCst);
        if pid > 0 {
            sys::kill(-pid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io::Read;

    /// Plays back reads: `None` is an EOF, `Some(bytes)` data.
    struct Script(VecDeque<Option<&'static [u8]>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.pop_front() {
                Some(Some(d)) => {
                    buf[..d.len()].copy_from_slice(d);
                    Ok(d.len())
                }
                Some(None) | None => Ok(0),
            }
        }
    }

    #[test]
    fn serial_eof_shorter_than_the_grace_is_not_a_hangup() {
        // A frame's bytes, an EOF (the host's connect not yet seen), more bytes.
        let script = Script(VecDeque::from([
            Some(&b"ab"[..]),
            None,
            None,
            Some(&b"cd"[..]),
        ]));
        let mut r = SerialReader {
            port: script,
            grace: Duration::from_secs(5),
        };
        let mut got = [0u8; 4];
        r.read_exact(&mut got)
            .expect("EOFs within the grace are retried");
        assert_eq!(&got, b"abcd");
    }

    #[test]
    fn serial_eof_that_lasts_the_grace_ends_the_stream() {
        let mut r = SerialReader {
            port: Script(VecDeque::new()),
            grace: Duration::from_millis(60),
        };
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }
}
