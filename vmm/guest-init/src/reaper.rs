//! PID 1 reaps every child. Processes we started ourselves are registered
//! so their exit status reaches whoever waits for them; everything else
//! (orphans re-parented to init) is reaped and forgotten.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::Duration;

static WAITERS: Mutex<Option<HashMap<i32, SyncSender<i32>>>> = Mutex::new(None);

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
    Ok((child, rx))
}

/// Reaps children forever (run on the main thread of PID 1).
pub fn reap_forever() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            // ECHILD: nothing to reap yet.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let code = crate::sys::exit_code(status);
        let waiter = WAITERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|m| m.remove(&pid));
        if let Some(tx) = waiter {
            let _ = tx.send(code);
        }
    }
}
