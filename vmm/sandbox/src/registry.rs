//! The live sandboxes of one daemon: admission (count, exec slots), activity stamps for the
//! reaper, and the runtime handle of each. The lock is never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use iii_sandbox_runtime::SandboxHandle;
use uuid::Uuid;

use crate::error::SandboxError;

/// One sandbox.
pub struct Entry {
    /// Its runtime handle (agent connections, stop).
    pub handle: Arc<dyn SandboxHandle>,
    /// The image name it was created from.
    pub image: String,
    /// The environment every exec starts from (image, then create's `env`).
    pub base_env: Vec<(String, String)>,
    /// The optional name given at create.
    pub name: Option<String>,
    /// When it was created.
    pub created: Instant,
    /// Last exec start/end or fs call.
    pub last_activity: Instant,
    /// Execs running now.
    pub exec_in_flight: u32,
    /// Stop has begun (or finished but the entry is kept for a retry).
    pub stopped: bool,
    /// Seconds of inactivity before the reaper stops it.
    pub idle_timeout_secs: u64,
}

/// The registry.
#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<Uuid, Entry>>>,
    /// Creates admitted but not yet registered (counted against the maximum).
    pending: Arc<Mutex<u32>>,
}

/// Releases an exec slot when dropped, whatever way the exec ended.
pub struct ExecSlot {
    registry: Registry,
    id: Uuid,
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        let mut map = self.registry.inner.lock().expect("registry lock");
        if let Some(e) = map.get_mut(&self.id) {
            e.exec_in_flight = e.exec_in_flight.saturating_sub(1);
            e.last_activity = Instant::now();
        }
    }
}

/// An admitted exec: where it runs, the env it starts from, and its slot.
pub struct Admitted {
    /// The sandbox.
    pub handle: Arc<dyn SandboxHandle>,
    /// Image env, then the sandbox's.
    pub base_env: Vec<(String, String)>,
    /// Freed when dropped.
    pub slot: ExecSlot,
}

/// Releases a create reservation when dropped.
pub struct CreateSlot {
    pending: Arc<Mutex<u32>>,
}

impl Drop for CreateSlot {
    fn drop(&mut self) {
        let mut p = self.pending.lock().expect("pending lock");
        *p = p.saturating_sub(1);
    }
}

/// A row of `sandbox::list`.
pub struct Listed {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: Option<String>,
    /// Its image.
    pub image: String,
    /// Seconds since create.
    pub age_secs: u64,
    /// Execs running.
    pub exec_in_flight: u32,
    /// Stopped (stop in progress).
    pub stopped: bool,
}

impl Registry {
    /// Reserves room for one more sandbox, or S400 when `max` are live or being created.
    pub fn reserve(&self, max: u32) -> Result<CreateSlot, SandboxError> {
        let live =
            u32::try_from(self.inner.lock().expect("registry lock").len()).unwrap_or(u32::MAX);
        let mut p = self.pending.lock().expect("pending lock");
        if live.saturating_add(*p) >= max {
            return Err(SandboxError::ResourceLimit(format!(
                "max_concurrent_sandboxes ({max}) reached"
            )));
        }
        *p += 1;
        Ok(CreateSlot {
            pending: self.pending.clone(),
        })
    }

    /// Registers a created sandbox (consuming its reservation).
    pub fn insert(&self, id: Uuid, entry: Entry, slot: CreateSlot) {
        self.inner.lock().expect("registry lock").insert(id, entry);
        drop(slot);
    }

    /// The handle of a live sandbox, bumping its activity (fs calls): S002 / S004.
    pub fn touch(&self, id: Uuid) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        let mut map = self.inner.lock().expect("registry lock");
        let e = map
            .get_mut(&id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        if e.stopped {
            return Err(SandboxError::AlreadyStopped(id.to_string()));
        }
        e.last_activity = Instant::now();
        Ok(e.handle.clone())
    }

    /// Admits one exec (S002, S004, S003 at the cap).
    pub fn begin_exec(&self, id: Uuid, cap: u32) -> Result<Admitted, SandboxError> {
        let mut map = self.inner.lock().expect("registry lock");
        let e = map
            .get_mut(&id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        if e.stopped {
            return Err(SandboxError::AlreadyStopped(id.to_string()));
        }
        if e.exec_in_flight >= cap {
            return Err(SandboxError::ConcurrentExec(id.to_string()));
        }
        e.exec_in_flight += 1;
        e.last_activity = Instant::now();
        Ok(Admitted {
            handle: e.handle.clone(),
            base_env: e.base_env.clone(),
            slot: ExecSlot {
                registry: self.clone(),
                id,
            },
        })
    }

    /// Marks a sandbox stopped and returns its handle; `Ok(None)` when it already was.
    pub fn mark_stopped(&self, id: Uuid) -> Result<Option<Arc<dyn SandboxHandle>>, SandboxError> {
        let mut map = self.inner.lock().expect("registry lock");
        let e = map
            .get_mut(&id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        if e.stopped {
            return Ok(None);
        }
        e.stopped = true;
        Ok(Some(e.handle.clone()))
    }

    /// Clears the stopped mark after a failed stop, so the stop can be retried.
    pub fn unmark_stopped(&self, id: Uuid) {
        if let Some(e) = self.inner.lock().expect("registry lock").get_mut(&id) {
            e.stopped = false;
        }
    }

    /// Forgets a sandbox (after its stop finished).
    pub fn remove(&self, id: Uuid) {
        self.inner.lock().expect("registry lock").remove(&id);
    }

    /// Every sandbox, oldest first.
    pub fn list(&self) -> Vec<Listed> {
        let map = self.inner.lock().expect("registry lock");
        let mut rows: Vec<Listed> = map
            .iter()
            .map(|(id, e)| Listed {
                id: *id,
                name: e.name.clone(),
                image: e.image.clone(),
                age_secs: e.created.elapsed().as_secs(),
                exec_in_flight: e.exec_in_flight,
                stopped: e.stopped,
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.age_secs));
        rows
    }

    /// Sandboxes the reaper should stop now, marked stopped under the lock (so no exec is
    /// admitted in between), each with whether it was busy.
    pub fn take_idle(
        &self,
        max_exec_timeout_ms: u64,
        now_wall: SystemTime,
    ) -> Vec<(Uuid, Arc<dyn SandboxHandle>, bool)> {
        let mut map = self.inner.lock().expect("registry lock");
        let mut out = Vec::new();
        for (id, e) in map.iter_mut() {
            if e.stopped {
                continue;
            }
            let mut idle = e.last_activity.elapsed();
            // Network traffic counts as activity: the runtime touches this file on traffic.
            if let Some(f) = e.handle.net_activity_file() {
                if let Ok(m) = std::fs::metadata(&f).and_then(|m| m.modified()) {
                    idle = idle.min(now_wall.duration_since(m).unwrap_or_default());
                }
            }
            let limit = std::time::Duration::from_secs(e.idle_timeout_secs);
            let busy_limit = limit
                + std::time::Duration::from_millis(max_exec_timeout_ms)
                + std::time::Duration::from_secs(60);
            let dead = e.handle.exited().is_some();
            if dead || (idle > limit && (e.exec_in_flight == 0 || idle > busy_limit)) {
                e.stopped = true;
                out.push((*id, e.handle.clone(), e.exec_in_flight > 0));
            }
        }
        out
    }

    /// Every handle, marking all stopped (daemon shutdown).
    pub fn drain(&self) -> Vec<(Uuid, Arc<dyn SandboxHandle>)> {
        let mut map = self.inner.lock().expect("registry lock");
        map.drain().map(|(id, e)| (id, e.handle)).collect()
    }
}
