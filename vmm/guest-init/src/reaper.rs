//! PID 1 reaps every child. Processes we started ourselves are registered
//! so their exit status reaches whoever waits for them; everything else
//! (orphans re-parented to init) is reaped and forgotten.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

static WAITERS: Mutex<Option<HashMap<i32, SyncSender<i32>>>> = Mutex::new(None);
/// Bumped (under `WAITERS`) by every spawn; the reaper sleeps on `SPAWNED` while it has no
/// child, so an exec's exit is collected at once instead of after a polling interval.
static SPAWNS: AtomicU64 = AtomicU64::new(0);
static SPAWNED: Condvar = Condvar::new();

/// Spawns `cmd`; the receiver yields its exit code (shell convention).
/// Never call `Child::wait` on the result: the reaper owns the status.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, Receiver<i32>)> {
    // Holding the lock across spawn means the reaper cannot see the pid
    // before it is registered, however fast the child exits.
    let mut guard = WAITERS.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let (tx, rx) = sync_channel(1);
    guard
        .get_or_insert_with(HashMap::new)
        .insert(child.id() as i32, tx);
    SPAWNS.fetch_add(1, Ordering::SeqCst);
    SPAWNED.notify_all();
    Ok((child, rx))
}

/// Reaps children forever (run on the main thread of PID 1).
///
/// A child is only reaped while holding the registration lock, and it is first observed with
/// `WNOWAIT`. [`spawn`] holds that lock across `Command::spawn`, and when `exec` fails std reaps
/// the failed child itself inside `spawn` (and panics if it is already gone). Peeking first and
/// reaping under the lock means the reaper can never take that child from under std.
pub fn reap_forever() -> ! {
    loop {
        let seen = SPAWNS.load(Ordering::SeqCst);
        // SAFETY: an all-zero siginfo_t is a valid out-buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid out-pointer; WNOWAIT leaves the child waitable.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r < 0 {
            // ECHILD: nothing to reap until the next spawn. A spawn between waitid and this
            // lock bumped the counter, so it is not missed; the timeout is only a backstop.
            let guard = WAITERS.lock().unwrap_or_else(|e| e.into_inner());
            if SPAWNS.load(Ordering::SeqCst) == seen {
                let _ = SPAWNED.wait_timeout(guard, Duration::from_secs(1));
            }
            continue;
        }
        // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
        let pid = unsafe { info.si_pid() };
        let mut guard = WAITERS.lock().unwrap_or_else(|e| e.into_inner());
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got != pid {
            // Reaped meanwhile by its own spawner (a failed exec): nothing to report.
            continue;
        }
        let code = crate::sys::exit_code(status);
        let waiter = guard.as_mut().and_then(|m| m.remove(&pid));
        drop(guard);
        if let Some(tx) = waiter {
            let _ = tx.send(code);
        }
    }
}
