//! Output that cannot fail. The worker host's stdout and stderr are pipes to the engine; when
//! the engine dies (SIGKILL) every later write gets EPIPE, and `eprintln!` (which the tracing
//! writer used for its own errors) panics on that, ending the host before it stops its
//! sandbox. So: every write here swallows errors, and the first EPIPE (or an explicit
//! [`engine_gone`]) re-points fds 1 and 2 at `logs_dir(name)/host-after-engine.log`, so what
//! the host says while it cleans up is still on record (workers-and-sandboxes spec section 7.4).

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The file fds 1/2 move to once the engine is gone (`None`: no usable home, /dev/null).
static AFTER_ENGINE: OnceLock<Option<PathBuf>> = OnceLock::new();
static REDIRECTED: AtomicBool = AtomicBool::new(false);

/// `logs_dir(name)/host-after-engine.log`.
pub fn after_engine_log(name: &str) -> Option<PathBuf> {
    iii_worker_state::logs_dir(name)
        .ok()
        .map(|d| d.join("host-after-engine.log"))
}

/// Records where output goes once the engine is gone; call first thing in `main`.
pub fn init(name: &str) {
    let _ = AFTER_ENGINE.set(after_engine_log(name));
}

/// The engine is gone: points fds 1 and 2 at the after-engine log (once), with a breadcrumb
/// line. Falls back to /dev/null, so writes succeed either way.
pub fn engine_gone(reason: &str) {
    if REDIRECTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let path = AFTER_ENGINE.get().cloned().flatten();
    let file = path
        .as_ref()
        .and_then(|p| {
            let dir = p.parent()?;
            iii_worker_state::create_private_dir(dir).ok()?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .ok()
        })
        .or_else(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok()
        });
    let Some(mut f) = file else { return };
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let engine = std::env::var("III_ENGINE_PID").unwrap_or_else(|_| "none".into());
    let _ = writeln!(
        f,
        "ts={ts} worker-host pid={} reason=engine-gone ({reason}) engine_pid={engine}",
        std::process::id()
    );
    // SAFETY: dup2 onto fds 1 and 2 of this process; `f` stays open for the calls, and the
    // duplicates keep the file open after it drops.
    unsafe {
        libc::dup2(f.as_raw_fd(), 1);
        libc::dup2(f.as_raw_fd(), 2);
    }
}

/// Has [`engine_gone`] run?
pub fn redirected() -> bool {
    REDIRECTED.load(Ordering::SeqCst)
}

/// Writes all of `buf` to fd 1 or 2; on EPIPE moves the fds (the engine is gone) and tries
/// once more; any other failure drops the bytes.
fn write_fd(stdout: bool, buf: &[u8]) {
    fn once(stdout: bool, buf: &[u8]) -> io::Result<()> {
        if stdout {
            let mut o = io::stdout().lock();
            o.write_all(buf)?;
            o.flush()
        } else {
            io::stderr().lock().write_all(buf)
        }
    }
    if let Err(e) = once(stdout, buf) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            engine_gone("a write to the engine's pipe failed");
            let _ = once(stdout, buf);
        }
    }
}

/// Bytes for our stdout (the workload's output), never failing.
pub fn stdout(buf: &[u8]) {
    write_fd(true, buf);
}

/// Bytes for our stderr, never failing.
pub fn stderr(buf: &[u8]) {
    write_fd(false, buf);
}

/// An [`io::Write`] on fd 2 that always succeeds: the tracing writer
/// (`.with_writer(output::Stderr::default)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_fd(false, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: it moves this process's fds 1 and 2 and sets III_HOME.
    #[test]
    fn a_closed_stderr_moves_output_to_the_after_engine_log() {
        let home = tempfile::tempdir().unwrap();
        std::env::set_var("III_HOME", home.path());
        init("w-epipe");
        // SAFETY: plain pipe(2)/dup/dup2/close on fds this test owns, restored below.
        let saved = unsafe {
            let mut p = [0; 2];
            assert_eq!(libc::pipe(p.as_mut_ptr()), 0);
            let saved = (libc::dup(1), libc::dup(2));
            libc::dup2(p[1], 1);
            libc::dup2(p[1], 2);
            libc::close(p[1]);
            // No reader any more: the next write gets EPIPE (SIGPIPE is ignored by Rust).
            libc::close(p[0]);
            saved
        };
        let mut w = Stderr;
        assert_eq!(w.write(b"after\n").unwrap(), 6);
        stdout(b"out-after\n");
        // SAFETY: restores the fds saved above.
        unsafe {
            libc::dup2(saved.0, 1);
            libc::dup2(saved.1, 2);
        }
        assert!(redirected());
        let log = std::fs::read_to_string(home.path().join("logs/w-epipe/host-after-engine.log"))
            .unwrap();
        assert!(log.contains("reason=engine-gone"), "{log}");
        assert!(log.contains("after\n"), "{log}");
        assert!(log.contains("out-after\n"), "{log}");
    }
}
