//! Per-sandbox state on the host: the directory, its `owner` record, and the
//! checks `stop` and `cleanup_orphans` rely on (processes, mounts).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// Who made a sandbox: the daemon's pid and its start time (clock ticks since
/// boot, field 22 of `/proc/<pid>/stat`), so a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The daemon's pid.
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Self {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        Self {
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    /// True while the recorded process still runs (same pid, same start time).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// Reads `dir/owner`.
    pub fn read(dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(dir.join("owner")).ok()?).ok()
    }

    /// Writes `dir/owner`.
    pub fn write(&self, dir: &Path) -> Result<(), RuntimeError> {
        let p = dir.join("owner");
        std::fs::write(&p, serde_json::to_vec(self).unwrap_or_default())
            .map_err(|e| RuntimeError::io("writing", &p, e))
    }
}

/// Start time of `pid` (field 22 of `/proc/<pid>/stat`), `None` if it is gone
/// or a zombie (a zombie no longer runs anything).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parens: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Mount points at or under `dir` in this process's mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..=i + 3].iter().all(u8::is_ascii_digit) {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates `path` with mode 0700 (and its parents, 0700 too for the state root).
pub fn mkdir_private(path: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| RuntimeError::io("creating", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Owner::current();
        assert!(me.start_time > 0);
        assert!(me.alive());
        let other = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(!Owner {
            pid: i32::MAX - 1,
            start_time: 1
        }
        .alive());
    }

    #[test]
    fn owner_round_trips_and_mounts_are_found() {
        let d = tempfile::tempdir().unwrap();
        let me = Owner::current();
        me.write(d.path()).unwrap();
        assert_eq!(Owner::read(d.path()), Some(me));
        assert!(mounts_under(d.path()).is_empty());
        assert!(!mounts_under(Path::new("/proc")).is_empty());
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
    }
}
