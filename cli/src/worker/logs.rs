//! `iii worker logs <W> [-f]` (workers-and-sandboxes spec, section 1.11): local files only. The engine
//! appends a managed worker's output to `$III_HOME/logs/<name>/{stdout,stderr}.log`; this prints
//! the last 100 lines of `stderr.log` to stderr, then of `stdout.log` to stdout, and with `-f`
//! follows both (every 250 ms, complete lines only, from the start again after a truncation or
//! rotation) until Ctrl-C.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::error::WorkerError;
use super::lifecycle::{kind_of, project};
use super::names;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The worker's name
    pub worker: String,
    /// Keep printing new lines as they are written (Ctrl-C ends)
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Engine host address. Accepted for compatibility with upstream scripts: the logs are read
    /// from $III_HOME/logs on this machine, so no engine is asked
    #[arg(long, default_value = "localhost")]
    pub address: String,
    /// Engine WebSocket port. Accepted for compatibility, as --address
    #[arg(long, default_value_t = 49134)]
    pub port: u16,
}

/// Lines printed from each file before following.
const TAIL: usize = 100;
const POLL: Duration = Duration::from_millis(250);

/// The last `n` lines of `bytes` (a final line without newline counts).
fn last_lines(bytes: &[u8], n: usize) -> &[u8] {
    let mut end = bytes.len();
    if end > 0 && bytes[end - 1] == b'\n' {
        end -= 1;
    }
    let mut seen = 0;
    for i in (0..end).rev() {
        if bytes[i] == b'\n' {
            seen += 1;
            if seen == n {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

/// One followed file: where its printed part ends, and which file that was.
struct Followed {
    path: PathBuf,
    offset: u64,
    inode: u64,
    /// A line still being written (no newline yet).
    partial: Vec<u8>,
    to_stderr: bool,
}

impl Followed {
    fn emit(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.to_stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(bytes);
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(bytes);
            let _ = o.flush();
        }
    }

    /// Prints what was appended since the last look; a shorter or replaced file starts over.
    fn poll(&mut self) {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return;
        };
        if meta.ino() != self.inode || meta.len() < self.offset {
            self.offset = 0;
            self.inode = meta.ino();
            self.partial.clear();
        }
        if meta.len() == self.offset {
            return;
        }
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(meta.len() - self.offset).read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        if let Some(cut) = self.partial.iter().rposition(|b| *b == b'\n') {
            let rest = self.partial.split_off(cut + 1);
            let done = std::mem::replace(&mut self.partial, rest);
            self.emit(&done);
        }
    }
}

/// Prints the tail of `path` (if any) and returns where following continues.
fn print_tail(path: &Path, to_stderr: bool) -> Followed {
    let (bytes, inode) = match (std::fs::read(path), std::fs::metadata(path)) {
        (Ok(b), Ok(m)) => (b, m.ino()),
        _ => (Vec::new(), 0),
    };
    let f = Followed {
        path: path.to_path_buf(),
        offset: bytes.len() as u64,
        inode,
        partial: Vec::new(),
        to_stderr,
    };
    let mut tail = last_lines(&bytes, TAIL).to_vec();
    if !tail.is_empty() && !tail.ends_with(b"\n") {
        tail.push(b'\n');
    }
    f.emit(&tail);
    f
}

fn non_empty(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
}

/// Runs `iii worker logs`.
pub async fn run(a: LogsArgs) -> Result<(), WorkerError> {
    names::validate(&a.worker)?;
    let name = &a.worker;
    let (text, _) = project(None)?;
    let known = kind_of(&text, name).is_some();
    let dir = iii_worker_state::logs_dir(name).map_err(|e| WorkerError::Internal(e.to_string()))?;
    let (err_log, out_log) = (dir.join("stderr.log"), dir.join("stdout.log"));
    let any = non_empty(&err_log) || non_empty(&out_log);
    if !any && !known {
        return Err(WorkerError::NotFound(format!(
            "worker '{name}' is not in the config file ({}) and has no logs in {}",
            super::config_file::config_path().display(),
            dir.display()
        )));
    }
    if !any && !a.follow {
        eprintln!("No logs available for {name} yet");
        return Ok(());
    }
    let mut files = [print_tail(&err_log, true), print_tail(&out_log, false)];
    if !a.follow {
        return Ok(());
    }
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {
                for f in &mut files {
                    f.poll();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_counts_from_the_end() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"", 3), b"");
    }

    #[test]
    fn follow_prints_complete_lines_and_restarts_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stdout.log");
        std::fs::write(&p, "old\n").unwrap();
        let mut f = Followed {
            path: p.clone(),
            offset: 4,
            inode: std::fs::metadata(&p).unwrap().ino(),
            partial: Vec::new(),
            to_stderr: true,
        };
        std::fs::write(&p, "old\nnew part").unwrap();
        f.poll();
        assert_eq!((f.offset, f.partial.as_slice()), (12, &b"new part"[..]));
        std::fs::write(&p, "old\nnew part\n").unwrap();
        f.poll();
        assert!(f.partial.is_empty());
        assert_eq!(f.offset, 13);
        // Truncated (an engine restart): from the start again.
        std::fs::write(&p, "x\n").unwrap();
        f.poll();
        assert_eq!(f.offset, 2);
    }
}
