//! Where managed workers (the `image:` and `worker_path:` entries of config.yaml) keep their
//! state on the host. One place, so the engine (which writes the logs), the worker host (which
//! writes its state file and serves the exec socket) and `iii worker` (which reads them) agree.
//!
//! ```text
//! $III_HOME (default ~/.iii)
//! ├── logs/<name>/stdout.log, stderr.log   the worker's output, appended by the engine
//! └── managed/<name>/                      0700, owned by the worker host while it runs
//!     ├── host.json                        [HostState]
//!     ├── shell.sock                       exec relay to the sandbox's agent (agent protocol)
//!     └── ...                              per-kind state (a local worker's workspace, markers)
//! ```

#![deny(missing_docs)]

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No `III_HOME` and no `HOME`.
    #[error("cannot find the iii home: set III_HOME (or HOME)")]
    NoHome,
    /// A worker name that cannot name a directory.
    #[error(
        "invalid worker name {0:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    BadName(String),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `host.json` is not what a worker host writes.
    #[error("{} is not a worker host state file: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// `$III_HOME`, else `$HOME/.iii`.
pub fn home() -> Result<PathBuf, StateError> {
    if let Some(h) = std::env::var_os("III_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".iii"))
        .ok_or(StateError::NoHome)
}

/// A worker name is safe as one path component (config.yaml names are validated more
/// strictly by `iii worker`; this only keeps the paths below the home).
fn checked(name: &str) -> Result<&str, StateError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(StateError::BadName(name.to_string()))
    }
}

/// `$III_HOME/logs/<name>`: `stdout.log` and `stderr.log`.
pub fn logs_dir(name: &str) -> Result<PathBuf, StateError> {
    Ok(home()?.join("logs").join(checked(name)?))
}

/// `$III_HOME/managed/<name>`.
pub fn managed_dir(name: &str) -> Result<PathBuf, StateError> {
    Ok(home()?.join("managed").join(checked(name)?))
}

/// The state file of a running worker host.
pub fn host_state_path(name: &str) -> Result<PathBuf, StateError> {
    Ok(managed_dir(name)?.join("host.json"))
}

/// The exec relay socket of a running worker host.
pub fn shell_socket_path(name: &str) -> Result<PathBuf, StateError> {
    Ok(managed_dir(name)?.join("shell.sock"))
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Io {
            what: "cannot create",
            path: dir.to_path_buf(),
            source,
        })
}

/// What a running worker host says about itself (`managed/<name>/host.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// The worker's name.
    pub name: String,
    /// The worker host's pid.
    pub pid: u32,
    /// `image` or `local`.
    pub kind: String,
    /// The image reference, or the project directory of a local worker.
    pub source: String,
    /// The sandbox id.
    pub sandbox_id: String,
    /// `namespace` or `microvm`.
    pub runtime: String,
    /// The workload's working directory inside the sandbox (`iii worker exec`'s default).
    pub workdir: String,
    /// When the workload started, Unix ms.
    pub started_at_ms: u64,
}

impl HostState {
    /// Writes it atomically (temp file, then rename), mode 0600, creating the managed dir.
    pub fn write(&self) -> Result<PathBuf, StateError> {
        let path = host_state_path(&self.name)?;
        let dir = path.parent().expect("host.json has a parent");
        create_private_dir(dir)?;
        let tmp = dir.join(format!(".host.json.{}", std::process::id()));
        let io = |what, source| StateError::Io {
            what,
            path: tmp.clone(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create", e))?;
        let text = serde_json::to_vec_pretty(self).expect("HostState serializes");
        f.write_all(&text).map_err(|e| io("cannot write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("cannot rename", e))?;
        Ok(path)
    }

    /// Reads worker `name`'s state file: `None` when there is none.
    pub fn read(name: &str) -> Result<Option<HostState>, StateError> {
        let path = host_state_path(name)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    what: "cannot read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    /// Whether the process that wrote it is still alive (a stale file outlives a SIGKILLed host).
    pub fn is_live(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // State is the field after the parenthesised command name; Z is a zombie.
        !stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.starts_with('Z'))
            .unwrap_or(true)
    }

    /// Removes worker `name`'s state file and exec socket (missing files are fine).
    pub fn remove(name: &str) -> Result<(), StateError> {
        for p in [host_state_path(name)?, shell_socket_path(name)?] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        what: "cannot remove",
                        path: p,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: III_HOME is process-wide.
    #[test]
    fn paths_state_round_trip_and_names() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("III_HOME", dir.path());
        assert_eq!(home().unwrap(), dir.path());
        assert_eq!(logs_dir("w1").unwrap(), dir.path().join("logs/w1"));
        for bad in ["", "..", ".x", "a/b", "a b"] {
            assert!(
                matches!(managed_dir(bad), Err(StateError::BadName(_))),
                "{bad}"
            );
        }
        assert_eq!(HostState::read("w1").unwrap(), None);
        let s = HostState {
            name: "w1".into(),
            pid: std::process::id(),
            kind: "image".into(),
            source: "localhost:5000/w1:latest".into(),
            sandbox_id: "w-w1".into(),
            runtime: "namespace".into(),
            workdir: "/".into(),
            started_at_ms: 1,
        };
        let p = s.write().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let back = HostState::read("w1").unwrap().unwrap();
        assert_eq!(back, s);
        assert!(back.is_live());
        std::fs::write(&p, b"{not json").unwrap();
        assert!(matches!(
            HostState::read("w1"),
            Err(StateError::Corrupt { .. })
        ));
        HostState::remove("w1").unwrap();
        HostState::remove("w1").unwrap();
        assert_eq!(HostState::read("w1").unwrap(), None);
    }
}
