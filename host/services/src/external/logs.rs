//! A managed worker's log files: `logs_dir(name)/{stdout,stderr}.log` (dir 0700, files 0600),
//! every line its worker host prints. Truncated the first time this engine process opens them
//! (the log of this run), appended after that (restarts, reloads), rotated to `.1` past
//! [`ROTATE_AT`].

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::LazyLock;

/// A file grows to this size, then becomes `<file>.1` (replacing the previous one).
const ROTATE_AT: u64 = 8 * 1024 * 1024;

/// The files this process has opened already (and so truncated once).
static OPENED: LazyLock<parking_lot::Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// One log file being appended to. Write failures (disk full, removed dir) are reported to
/// the engine's log once and retried at the next rotation point; they never stop the worker.
pub(super) struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    warned: bool,
}

impl LogFile {
    /// `dir/<file>`: created with the dir if needed, truncated on its first open here.
    pub(super) fn open(dir: PathBuf, file: &str) -> LogFile {
        let path = dir.join(file);
        let mut f = LogFile {
            path,
            file: None,
            size: 0,
            warned: false,
        };
        let first = OPENED.lock().insert(f.path.clone());
        f.reopen(first);
        f
    }

    fn reopen(&mut self, truncate: bool) {
        let r = (|| {
            if let Some(dir) = self.path.parent() {
                iii_worker_state::create_private_dir(dir).map_err(std::io::Error::other)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(!truncate)
                .write(true)
                .truncate(truncate)
                .mode(0o600)
                .open(&self.path)?;
            // A file left by an older engine may have a wider mode.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            let size = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, size))
        })();
        match r {
            Ok((file, size)) => {
                self.file = Some(file);
                self.size = size;
            }
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        self.file = None;
        if !self.warned {
            self.warned = true;
            tracing::warn!(path = %self.path.display(), "cannot write the worker's log file: {e}");
        }
    }

    /// Appends `line` and a newline.
    pub(super) fn append(&mut self, line: &str) {
        if self.file.is_none() || self.size >= ROTATE_AT {
            if self.size >= ROTATE_AT {
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                let _ = std::fs::rename(&self.path, old);
            }
            self.reopen(self.size >= ROTATE_AT);
            if self.file.is_none() {
                // Still failing: counts as written so the next try waits for a rotation's worth.
                self.size = 0;
                return;
            }
        }
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match f.write_all(&buf) {
            Ok(()) => self.size += buf.len() as u64,
            Err(e) => self.fail(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_once_appends_then_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs/w");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("stdout.log"), "from a previous engine\n").unwrap();
        let mut f = LogFile::open(logs.clone(), "stdout.log");
        f.append("one");
        drop(f);
        // A second open in the same process (a restart of the worker) appends.
        let mut f = LogFile::open(logs.clone(), "stdout.log");
        f.append("two");
        let text = std::fs::read_to_string(logs.join("stdout.log")).unwrap();
        assert_eq!(text, "one\ntwo\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(logs.join("stdout.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Past the limit the file moves to .1 and a new one starts.
        f.size = ROTATE_AT;
        f.append("three");
        assert_eq!(
            std::fs::read_to_string(logs.join("stdout.log")).unwrap(),
            "three\n"
        );
        assert_eq!(
            std::fs::read_to_string(logs.join("stdout.log.1")).unwrap(),
            "one\ntwo\n"
        );
    }
}
