//! `iii worker exec <W> [-e K=V]... [-w DIR] [-t|--no-tty] [--timeout DUR] -- CMD [ARGS]`:
//! runs a command inside a running managed worker's sandbox (workers-and-sandboxes spec section 1.12).
//!
//! The worker host serves `managed/<name>/shell.sock` and relays each connection to the
//! sandbox's agent, so this is an agent-protocol client: `Exec`, then `Stdin` / `Signal` /
//! `Resize` frames out, `Stdout` / `Stderr` / `Exit` / `Error` frames back. The relay puts the
//! workload's own environment and working directory beneath the request, so `-e` entries add
//! to (or override) what the worker sees.
//!
//! Threads: the main thread reads the session's frames and writes our output; one thread
//! feeds stdin; one waits for signals (SIGINT, SIGWINCH, SIGTERM, SIGHUP, blocked everywhere
//! else); one waits for the timeout. Anything that ends the session early records the exit
//! code and shuts the socket, which ends the main thread's read, so the terminal is restored
//! on every path.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Args;
use iii_vm_agent_proto::{read_frame, write_frame, ExecRequest, Frame, Kind};
use iii_worker_state::HostState;

use super::config_file;
use super::error::WorkerError;

/// Stdin chunk size (spec section 1.12).
const STDIN_CHUNK: usize = 8 * 1024;
/// A second Ctrl-C within this long kills the command.
const DOUBLE_INTERRUPT: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The managed worker (an `image:` or `worker_path:` entry) to run the command in
    worker: String,
    /// Environment entries K=V for the command, on top of the worker's own (repeatable)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the worker (default: the worker's own)
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Run on a terminal (default when stdin and stdout are terminals)
    #[arg(short = 't', long = "tty", conflicts_with = "no_tty")]
    tty: bool,
    /// Never run on a terminal
    #[arg(long = "no-tty")]
    no_tty: bool,
    /// Kill the command after this long (30s, 5m, 1500ms) and exit 124
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// The command and its arguments, after `--`
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Why an exec could not run (printed as `error: …`, with a W-code when it is a worker error).
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error("{0}")]
    Worker(#[from] WorkerError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Session(String),
}

impl ExecError {
    fn print(&self) {
        match self {
            ExecError::Worker(w) => w.print(),
            other => eprintln!("error: {other}"),
        }
    }
}

/// Runs `iii worker exec`.
pub fn main(args: ExecArgs) -> ExitCode {
    match run(args) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            e.print();
            ExitCode::FAILURE
        }
    }
}

fn isatty(fd: i32) -> bool {
    // SAFETY: isatty(3) only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Parses `--timeout` (humantime: `30s`, `5m`, `1500ms`); zero is refused.
fn parse_timeout(text: &str) -> Result<Duration, ExecError> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ExecError::Usage(format!(
            "invalid --timeout '{text}': must be more than zero"
        ))),
        Err(e) => Err(ExecError::Usage(format!(
            "invalid --timeout '{text}': {e} (examples: 30s, 5m, 1500ms)"
        ))),
    }
}

/// `-e` entries as pairs; entries without `=` are skipped (as the guest does upstream).
fn env_pairs(entries: &[String]) -> Vec<(String, String)> {
    entries
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Checks the socket before trusting it: a socket, ours, no group or other access bits.
fn socket_is_private(path: &Path) -> Result<(u64, u64), String> {
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !m.file_type().is_socket() {
        return Err(format!("{} is not a socket", path.display()));
    }
    if m.uid() != euid {
        return Err(format!("{} belongs to uid {}", path.display(), m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is open to other users (mode {:o})",
            path.display(),
            m.mode() & 0o777
        ));
    }
    Ok((m.dev(), m.ino()))
}

/// A worker with no running host: unknown to the config file (W110), or not running (W113).
fn not_running(name: &str) -> ExecError {
    let path = config_file::config_path();
    match config_file::read(&path) {
        Ok(Some(text)) if !config_file::has_entry(&text, name) => WorkerError::NotFound(format!(
            "worker '{name}' is not a managed worker in the config file ({})",
            path.display()
        ))
        .into(),
        Ok(Some(text))
            if config_file::entry_value(&text, name, "image").is_none()
                && config_file::entry_value(&text, name, "worker_path").is_none() =>
        {
            WorkerError::NotFound(format!(
                "worker '{name}' is not a managed worker in the config file (only image: and \
                 worker_path: entries run in a sandbox)"
            ))
            .into()
        }
        _ => WorkerError::NotRunning(format!("worker '{name}' is not running")).into(),
    }
}

/// Finds the worker's exec socket and connects to it.
fn connect(name: &str) -> Result<(UnixStream, HostState), ExecError> {
    super::names::validate(name).map_err(WorkerError::from)?;
    let internal = |e: iii_worker_state::StateError| WorkerError::Internal(e.to_string());
    let state = match HostState::read(name).map_err(internal)? {
        Some(s) if s.is_live() => s,
        _ => return Err(not_running(name)),
    };
    let path = iii_worker_state::shell_socket_path(name).map_err(internal)?;
    if !path.exists() {
        return Err(not_running(name));
    }
    let before = socket_is_private(&path).map_err(ExecError::Session)?;
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            return Err(not_running(name))
        }
        Err(e) => {
            return Err(ExecError::Session(format!(
                "cannot connect to {}: {e}",
                path.display()
            )))
        }
    };
    // The same socket we checked, not one swapped in between.
    if socket_is_private(&path).map_err(ExecError::Session)? != before {
        return Err(ExecError::Session(format!(
            "{} changed while connecting",
            path.display()
        )));
    }
    Ok((stream, state))
}

/// The terminal's mode before raw mode, restored on drop.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> Result<Self, ExecError> {
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on fd 0 with a zeroed termios they fill in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Err(ExecError::Session(format!(
                    "cannot read the terminal mode: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return Err(ExecError::Session(format!(
                    "cannot set the terminal to raw mode: {}",
                    std::io::Error::last_os_error()
                )));
            }
            Ok(Self { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the mode read in `enter` on the same fd.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// The terminal's size (rows, cols) from stdout, else stdin.
fn window_size() -> Option<(u16, u16)> {
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ fills the winsize it is given.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 {
                return Some((ws.ws_row, ws.ws_col));
            }
        }
    }
    None
}

/// The socket, written from several threads a frame at a time.
type Writer = Arc<Mutex<UnixStream>>;

fn send(w: &Writer, f: &Frame) -> bool {
    let mut g = w.lock().unwrap_or_else(|e| e.into_inner());
    write_frame(&mut *g, f).is_ok()
}

/// How the session ended early: the exit code and what to say.
type Forced = Arc<OnceLock<(i32, Option<String>)>>;

/// Ends the session from another thread: records why, then unblocks the frame reader.
fn force_end(forced: &Forced, w: &Writer, code: i32, message: Option<String>) {
    if forced.set((code, message)).is_ok() {
        let g = w.lock().unwrap_or_else(|e| e.into_inner());
        let _ = g.shutdown(Shutdown::Both);
    }
}

fn run(args: ExecArgs) -> Result<i32, ExecError> {
    if args.command.is_empty() {
        return Err(ExecError::Usage(
            "no command specified; pass the program after `--` (iii worker exec <worker> -- <cmd> [args...])"
                .into(),
        ));
    }
    let timeout = args.timeout.as_deref().map(parse_timeout).transpose()?;
    let tty = if args.tty {
        if !isatty(0) {
            return Err(ExecError::Usage(
                "-t needs a terminal on stdin; use --no-tty to pipe input".into(),
            ));
        }
        true
    } else {
        !args.no_tty && isatty(0) && isatty(1)
    };
    let (stream, state) = connect(&args.worker)?;
    let mut env = env_pairs(&args.env);
    if tty && !env.iter().any(|(k, _)| k == "TERM") {
        if let Ok(term) = std::env::var("TERM") {
            env.push(("TERM".into(), term));
        }
    }
    let req = ExecRequest {
        argv: args.command.clone(),
        env,
        cwd: Some(args.workdir.clone().unwrap_or(state.workdir.clone())),
        user: None,
        tty,
        timeout_ms: None,
    };
    // Blocked before any thread starts, so only the signal thread takes them.
    let sigs = signal_set();
    // SAFETY: pthread_sigmask on this thread with a set built by signal_set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &sigs, std::ptr::null_mut());
    }
    let writer: Writer = Arc::new(Mutex::new(
        stream
            .try_clone()
            .map_err(|e| ExecError::Session(format!("exec socket: {e}")))?,
    ));
    if !send(&writer, &Frame::with_json(Kind::Exec, &req)) {
        return Err(ExecError::Session(
            "the worker host closed the exec socket".into(),
        ));
    }
    let raw = if tty {
        if let Some((rows, cols)) = window_size() {
            send(&writer, &Frame::resize(rows, cols));
        }
        Some(RawMode::enter()?)
    } else {
        None
    };
    let forced: Forced = Arc::default();
    spawn_stdin(writer.clone(), tty);
    spawn_signals(sigs, writer.clone(), forced.clone(), tty);
    if let Some(limit) = timeout {
        let (w, f, text) = (writer.clone(), forced.clone(), args.timeout.clone());
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            send(&w, &Frame::signal(libc::SIGKILL));
            let text = text.unwrap_or_default();
            force_end(&f, &w, 124, Some(format!("timed out after {text}")));
        });
    }
    let outcome = pump_output(stream);
    drop(raw);
    if let Some((code, message)) = forced.get() {
        if let Some(m) = message {
            eprintln!("error: {m}");
        }
        return Ok(*code);
    }
    outcome
}

/// Reads the session's frames until it ends; our stdout/stderr get its output verbatim.
fn pump_output(mut stream: UnixStream) -> Result<i32, ExecError> {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        let f = match read_frame(&mut stream) {
            Ok(f) => f,
            Err(e) => {
                return Err(ExecError::Session(format!(
                    "the exec session ended without an exit status ({e})"
                )))
            }
        };
        match f.kind {
            // A closed stdout (`| head`) must not stall the command: the bytes are dropped.
            Kind::Stdout => {
                let _ = out.write_all(&f.payload).and_then(|()| out.flush());
            }
            Kind::Stderr => {
                let _ = err.write_all(&f.payload);
            }
            Kind::Exit => {
                return f
                    .exit_payload()
                    .map(|(code, _)| code)
                    .map_err(|e| ExecError::Session(e.to_string()))
            }
            Kind::Error => {
                return Err(ExecError::Session(
                    String::from_utf8_lossy(&f.payload).into_owned(),
                ))
            }
            other => {
                return Err(ExecError::Session(format!(
                    "unexpected {other:?} frame from the worker"
                )))
            }
        }
    }
}

/// Feeds stdin: pipe mode with a terminal on stdin closes it at once (never reads the
/// keyboard); otherwise 8 KiB chunks, then an empty chunk at EOF.
fn spawn_stdin(w: Writer, tty: bool) {
    std::thread::spawn(move || {
        if !tty && isatty(0) {
            send(&w, &Frame::new(Kind::Stdin, Vec::new()));
            return;
        }
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !send(&w, &Frame::new(Kind::Stdin, buf[..n].to_vec())) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        send(&w, &Frame::new(Kind::Stdin, Vec::new()));
    });
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGWINCH, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// SIGINT: forwarded to the command's process group; a second one within a second kills it
/// and exits 130. SIGWINCH: the new size for a terminal session. SIGTERM/SIGHUP: the command
/// is killed and we exit 128+sig.
fn spawn_signals(set: libc::sigset_t, w: Writer, forced: Forced, tty: bool) {
    std::thread::spawn(move || {
        let mut last_int: Option<Instant> = None;
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait on a set that every thread blocks.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            match sig {
                libc::SIGINT => {
                    if last_int.is_some_and(|t| t.elapsed() < DOUBLE_INTERRUPT) {
                        send(&w, &Frame::signal(libc::SIGKILL));
                        force_end(&forced, &w, 130, None);
                        return;
                    }
                    last_int = Some(Instant::now());
                    send(&w, &Frame::signal(libc::SIGINT));
                }
                libc::SIGWINCH if tty => {
                    if let Some((rows, cols)) = window_size() {
                        send(&w, &Frame::resize(rows, cols));
                    }
                }
                libc::SIGTERM | libc::SIGHUP => {
                    send(&w, &Frame::signal(libc::SIGKILL));
                    force_end(&forced, &w, 128 + sig, None);
                    return;
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn timeouts_parse_as_humantime() {
        assert_eq!(parse_timeout("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_timeout("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_timeout("5m").unwrap(), Duration::from_secs(300));
        for bad in ["", "soon", "0s", "-1s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_entries_without_equals_are_skipped() {
        let e = env_pairs(&[
            "A=1".into(),
            "B".into(),
            "C=x=y".into(),
            "=v".into(),
            "D=".into(),
        ]);
        let want: Vec<(String, String)> = [("A", "1"), ("C", "x=y"), ("D", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(e, want);
    }

    #[test]
    fn only_private_sockets_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        socket_is_private(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o660)).unwrap();
        assert!(socket_is_private(&p).unwrap_err().contains("other users"));
        let f = dir.path().join("file");
        std::fs::write(&f, b"").unwrap();
        assert!(socket_is_private(&f).unwrap_err().contains("not a socket"));
        assert!(socket_is_private(&dir.path().join("none")).is_err());
    }
}
