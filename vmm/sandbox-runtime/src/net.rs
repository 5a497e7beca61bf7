//! Outbound networking for namespace sandboxes (slirp4netns) and the
//! net-activity file.
//!
//! slirp4netns runs with `--disable-host-loopback`: the sandbox reaches the
//! internet through the NAT, but `10.0.2.2` does not lead to the host's
//! 127.0.0.1, so no host loopback service is exposed; the engine stays
//! reachable through the forwarded `127.0.0.1:<engine_port>` inside, which
//! does not use the network at all.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::RuntimeError;

/// `/etc/resolv.conf` for a slirp4netns sandbox: slirp's built-in DNS forwarder.
pub const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

/// A running slirp4netns. It also exits by itself when this process dies
/// (its `--exit-fd` pipe closes).
pub struct Slirp {
    child: Child,
    _exit_w: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(RuntimeError::Network(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Slirp {
    /// Attaches slirp4netns to the network namespace of `pid` (the sandbox's
    /// PID 1) as `tap0` and waits until it has configured the interface.
    pub fn start(pid: i32, log: &Path, timeout: Duration) -> Result<Self, RuntimeError> {
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let log_f = std::fs::File::create(log).map_err(|e| RuntimeError::io("creating", log, e))?;
        let (rw, er) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
        let mut cmd = Command::new("slirp4netns");
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--ready-fd=3",
            "--exit-fd=4",
        ])
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(
            log_f
                .try_clone()
                .map_err(|e| RuntimeError::io("opening", log, e))?,
        )
        .stderr(log_f);
        // SAFETY: only async-signal-safe dup2 calls between fork and exec.
        // dup2 clears FD_CLOEXEC on the copies, so exactly fds 3 and 4 pass.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(rw, 3) < 0 || libc::dup2(er, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RuntimeError::Network(
                    "slirp4netns is not installed (apt-get install slirp4netns); it gives \
                     `network: true` sandboxes their user-mode NAT"
                        .into(),
                )
            } else {
                RuntimeError::Spawn {
                    what: "slirp4netns".into(),
                    source: e,
                }
            }
        })?;
        drop(ready_w);
        drop(exit_r);
        // slirp4netns writes "1" to the ready fd once tap0 is configured.
        let mut ready = std::fs::File::from(ready_r);
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1];
        let ok = loop {
            let mut pfd = libc::pollfd {
                fd: ready.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n > 0 {
                break std::io::Read::read(&mut ready, &mut buf).is_ok_and(|n| n == 1);
            }
            if Instant::now() >= deadline {
                break false;
            }
        };
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RuntimeError::Network(format!(
                "slirp4netns did not come up: {}",
                crate::log_tail(log, 10)
            )));
        }
        Ok(Self {
            child,
            _exit_w: exit_w,
        })
    }

    /// Kills and reaps it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes received + sent on every interface of the network namespace of
/// `pid` (`/proc/<pid>/net/dev`, which shows that process's namespace).
pub fn ns_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut total = 0u64;
    for line in s.lines().skip(2) {
        let (_, counters) = line.split_once(':')?;
        let f: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // rx_bytes is field 0, tx_bytes field 8.
        total = total.saturating_add(*f.first()?).saturating_add(*f.get(8)?);
    }
    Some(total)
}

/// Sets `path`'s mtime to now, creating it if needed.
pub fn touch(path: &PathBuf) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(f) = f {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slirp_configures_tap0_in_the_target_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let mut holder = Command::new("unshare")
            .args(["--net", "sleep", "30"])
            .spawn()
            .unwrap();
        let pid = i32::try_from(holder.id()).unwrap();
        // Wait until unshare has exec'd sleep in the new namespace.
        let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() == Some(host_ns.clone()) {
            assert!(Instant::now() < deadline, "unshare --net did not switch");
            std::thread::sleep(Duration::from_millis(10));
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("slirp.log");
        match Slirp::start(pid, &log, Duration::from_secs(10)) {
            Ok(s) => {
                let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
                assert!(dev.contains("tap0:"), "{dev}");
                assert!(ns_bytes(pid).is_some());
                s.stop();
            }
            Err(e) => {
                let installed = Command::new("slirp4netns")
                    .arg("--version")
                    .output()
                    .is_ok();
                let m = e.to_string();
                assert!(
                    !installed && m.contains("apt-get install slirp4netns"),
                    "{m}"
                );
            }
        }
        let _ = holder.kill();
        let _ = holder.wait();
    }

    #[test]
    fn touch_moves_the_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("act");
        touch(&p);
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        touch(&p);
        assert!(p.metadata().unwrap().modified().unwrap() > old + Duration::from_secs(60));
    }
}
