//! The exec / file agent: serves the framed protocol on a stream.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iii_vm_agent_proto::*;

use crate::{fsops, reaper, sys};

type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// What every session starts from, set once by init before the agent serves.
/// Whether init's own `oom_score_adj` is -1000 (set by the namespace mode when the host allows).
pub static INIT_OOM_PROTECTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The VM's init leaves the defaults (no env, cwd `/`); the namespace mode
/// sets the sandbox's env and workdir, and asks children to give up init's
/// OOM protection.
#[derive(Debug, Default)]
pub struct SessionDefaults {
    /// Environment under each request's own `env`.
    pub env: Vec<(String, String)>,
    /// Working directory when a request names none.
    pub cwd: Option<String>,
    /// Set the child's `oom_score_adj` back to 0 when init runs at -1000, else to +1000 (so
    /// the OOM killer picks a session before init either way).
    pub reset_oom_score: bool,
    /// Drop every capability not in [`SESSION_CAPS`] from the child's
    /// bounding set (the namespace runtime: sessions run as the host's
    /// root, so what root may do must be cut down).
    pub restrict_caps: bool,
}

/// The capabilities a namespace session keeps (what container runtimes
/// grant by default, without `CAP_MKNOD`, since no device cgroup fences
/// the nodes it could make): chown, dac_override, fowner, fsetid, kill,
/// setgid, setuid, setpcap, net_bind_service, net_raw, sys_chroot,
/// audit_write, setfcap. Everything else (sys_admin, sys_module,
/// sys_rawio, dac_read_search, sys_ptrace, sys_boot, …) is dropped.
pub const SESSION_CAPS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31];

/// Highest capability number the drop loop tries; the kernel's last one
/// (`cap_last_cap`) is lower, and EINVAL past it ends the loop.
const CAP_SCAN_MAX: u32 = 63;

static DEFAULTS: std::sync::OnceLock<SessionDefaults> = std::sync::OnceLock::new();

/// Sets the session defaults; only the first call counts.
pub fn set_defaults(d: SessionDefaults) {
    let _ = DEFAULTS.set(d);
}

fn defaults() -> &'static SessionDefaults {
    DEFAULTS.get_or_init(SessionDefaults::default)
}

enum Input {
    Stdin(Vec<u8>),
    Signal(i32),
    Resize(u16, u16),
    /// The client went away (why): kill the session if it still runs.
    Hangup(String),
}

fn send(w: &SharedWriter, f: &Frame) -> bool {
    let mut g = w.lock().unwrap_or_else(|e| e.into_inner());
    write_frame(&mut *g, f).is_ok()
}

/// How a stream ended.
pub enum End {
    /// The peer closed the stream.
    Closed,
    /// The peer asked for power off.
    Poweroff,
}

/// Serves sessions until the stream closes. Frames are read only here, so
/// sequential sessions on one stream (a serial port) never steal each
/// other's input.
pub fn serve(mut r: impl Read, w: Box<dyn Write + Send>) -> End {
    let w: SharedWriter = Arc::new(Mutex::new(w));
    let mut active: Option<Sender<Input>> = None;
    // A streamed write in progress takes the Stdin frames until its empty end frame.
    let mut upload: Option<fsops::WriteStream> = None;
    loop {
        let f = match read_frame(&mut r) {
            Ok(f) => f,
            Err(e) => {
                if let Some(tx) = active.take() {
                    let _ = tx.send(Input::Hangup(e.to_string()));
                }
                return End::Closed;
            }
        };
        let to_session = |active: &Option<Sender<Input>>, i: Input| {
            if let Some(tx) = active {
                let _ = tx.send(i);
            }
        };
        match f.kind {
            Kind::Exec => match f.json::<ExecRequest>() {
                Ok(req) => active = Some(start_session(req, w.clone())),
                Err(e) => {
                    send(&w, &Frame::new(Kind::Error, e.to_string()));
                }
            },
            Kind::Stdin if upload.is_some() => {
                if f.payload.is_empty() {
                    let resp = upload.take().expect("checked").finish();
                    send_fs_result(&w, &resp, &[]);
                } else if let Some(u) = upload.as_mut() {
                    u.push(&f.payload);
                }
            }
            Kind::Stdin => to_session(&active, Input::Stdin(f.payload)),
            Kind::Signal => {
                if let Ok(sig) = f.i32_payload() {
                    to_session(&active, Input::Signal(sig))
                }
            }
            Kind::Resize if f.payload.len() == 4 => {
                let rows = u16::from_le_bytes([f.payload[0], f.payload[1]]);
                let cols = u16::from_le_bytes([f.payload[2], f.payload[3]]);
                to_session(&active, Input::Resize(rows, cols))
            }
            Kind::Fs => match decode_fs(&f.payload) {
                Ok((
                    FsRequest::Write {
                        path,
                        mode,
                        parents,
                        stream: true,
                    },
                    _,
                )) => upload = Some(fsops::WriteStream::begin(&path, mode, parents)),
                Ok((FsRequest::ReadStream { path }, _)) => {
                    let resp = fsops::read_stream(&path, |frame| send(&w, frame));
                    send_fs_result(&w, &resp, &[]);
                }
                Ok((req, data)) => {
                    let (resp, out) = fsops::run(&req, data);
                    send_fs_result(&w, &resp, &out);
                }
                Err(resp) => send_fs_result(&w, &resp, &[]),
            },
            Kind::Ping => {
                send(&w, &Frame::new(Kind::Pong, Vec::new()));
            }
            Kind::Poweroff => return End::Poweroff,
            k => {
                send(
                    &w,
                    &Frame::new(Kind::Error, format!("unexpected frame {k:?}")),
                );
            }
        }
    }
}

/// Decodes a `Fs` payload; an undecodable one becomes its S210/S219 answer.
fn decode_fs(payload: &[u8]) -> Result<(FsRequest, &[u8]), FsResponse> {
    let (header, data): (serde_json::Value, &[u8]) = unpack(payload)
        .map_err(|e| FsResponse::failed(codes::INVALID, format!("invalid request: {e}")))?;
    match serde_json::from_value::<FsRequest>(header.clone()) {
        Ok(req) => Ok((req, data)),
        Err(e) => Err(fsops::undecodable(&header, &e)),
    }
}

fn send_fs_result(w: &SharedWriter, resp: &FsResponse, data: &[u8]) {
    let frame = match pack(resp, data) {
        Ok(p) if p.len() < MAX_FRAME => Frame::new(Kind::FsResult, p),
        // An answer no frame can hold (a huge listing): say so instead of
        // leaving the client waiting for a frame that was never sent.
        Ok(p) => {
            let too_big = FsResponse::failed(
                codes::IO,
                format!(
                    "fs i/o error: the result is {} bytes, over the frame limit",
                    p.len()
                ),
            );
            Frame::new(Kind::FsResult, pack(&too_big, &[]).expect("small header"))
        }
        Err(e) => Frame::new(Kind::Error, e.to_string()),
    };
    send(w, &frame);
}

fn parse_user(u: &str) -> Option<(u32, u32)> {
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let id = u.parse().ok()?;
            (id, id)
        }
    };
    Some((uid, gid))
}

/// Builds the command for a request. With a TTY the child gets a new
/// session with the PTY as controlling terminal; otherwise its own process
/// group, so signals and timeouts reach its whole tree.
pub fn command(req: &ExecRequest, tty_slave: Option<&OwnedFd>) -> Result<Command, String> {
    let (prog, args) = req.argv.split_first().ok_or("empty argv")?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    cmd.env_clear();
    let base = defaults();
    if !req.env.iter().chain(&base.env).any(|(k, _)| k == "PATH") {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    // The request's entries come last, so they override the base.
    cmd.envs(base.env.iter().chain(&req.env).map(|(k, v)| (k, v)));
    cmd.current_dir(req.cwd.as_deref().or(base.cwd.as_deref()).unwrap_or("/"));
    if base.restrict_caps {
        // SAFETY: prctl is async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                for cap in 0..=CAP_SCAN_MAX {
                    if SESSION_CAPS.contains(&cap) {
                        continue;
                    }
                    if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) < 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::EINVAL) {
                            break; // past the kernel's last capability
                        }
                        return Err(e);
                    }
                }
                Ok(())
            });
        }
    }
    if base.reset_oom_score {
        let score: &'static [u8] = if INIT_OOM_PROTECTED.load(std::sync::atomic::Ordering::Relaxed)
        {
            b"0"
        } else {
            b"1000"
        };
        // SAFETY: open, write and close are async-signal-safe; the path and
        // value are static, nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    libc::write(fd, score.as_ptr().cast(), score.len());
                    libc::close(fd);
                }
                Ok(())
            });
        }
    }
    if let Some(u) = &req.user {
        let (uid, gid) = parse_user(u).ok_or_else(|| format!("bad user {u:?}, want uid[:gid]"))?;
        cmd.uid(uid).gid(gid);
    }
    match tty_slave {
        Some(slave) => {
            let f = || {
                slave
                    .try_clone()
                    .map(Stdio::from)
                    .map_err(|e| e.to_string())
            };
            cmd.stdin(f()?).stdout(f()?).stderr(f()?);
            // SAFETY: setsid and ioctl are async-signal-safe; the closure
            // touches no memory shared with the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.process_group(0);
        }
    }
    // PID 1 blocks the signals it forwards (so only its sigwait thread sees
    // them) and a blocked mask survives exec: give children a clean one, or
    // SIGTERM/SIGINT from the host or from init would never reach them.
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe and only
    // touch a local set and the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

fn pump(mut src: impl Read + Send + 'static, kind: Kind, w: SharedWriter, done: Sender<()>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match src.read(&mut buf) {
                // EIO: the PTY slave side closed.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(&w, &Frame::new(kind, buf[..n].to_vec())) {
                        break;
                    }
                }
            }
        }
        let _ = done.send(());
    });
}

fn start_session(req: ExecRequest, w: SharedWriter) -> Sender<Input> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (code, timed_out) = match run_session(&req, &w, rx) {
            Ok(x) => x,
            Err(e) => {
                send(&w, &Frame::new(Kind::Error, e));
                return;
            }
        };
        let flags = if timed_out { EXIT_FLAG_TIMED_OUT } else { 0 };
        send(&w, &Frame::exit_with(code, flags));
    });
    tx
}

/// Runs one exec session; returns its exit code and whether the timeout killed it.
fn run_session(
    req: &ExecRequest,
    w: &SharedWriter,
    input: Receiver<Input>,
) -> Result<(i32, bool), String> {
    let pty = if req.tty {
        Some(sys::openpty().map_err(|e| format!("openpty: {e}"))?)
    } else {
        None
    };
    let mut cmd = command(req, pty.as_ref().map(|(_, s)| s))?;
    let (mut child, exit_rx) =
        // `spawn: <io error>` ends with `(os error N)`: the host maps ENOENT to 127, EACCES to 126.
        reaper::spawn(&mut cmd).map_err(|e| format!("spawn: {e}"))?;
    // The command holds our copies of the PTY slave: while they are open the
    // master never reads EOF, and every PTY session waited out the pumps'
    // 2 s grace after its process exited.
    drop(cmd);
    let pid = child.id() as i32;
    let (done_tx, done_rx) = channel();
    let mut pumps = 0;
    let stdin: Option<Box<dyn Write + Send>>;
    let mut master_fd: Option<RawFd> = None;
    match pty {
        Some((master, slave)) => {
            drop(slave); // the child holds its own copies
            master_fd = Some(master.as_raw_fd());
            let m = File::from(master);
            let reader = m.try_clone().map_err(|e| e.to_string())?;
            pump(reader, Kind::Stdout, w.clone(), done_tx.clone());
            pumps += 1;
            stdin = Some(Box::new(m));
        }
        None => {
            if let Some(out) = child.stdout.take() {
                pump(out, Kind::Stdout, w.clone(), done_tx.clone());
                pumps += 1;
            }
            if let Some(err) = child.stderr.take() {
                pump(err, Kind::Stderr, w.clone(), done_tx.clone());
                pumps += 1;
            }
            stdin = child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn Write + Send>);
        }
    }
    // The process group is the pid for both setsid and process_group(0).
    let group = -pid;
    // Once the child is reaped its pid (and group id) may be reused: signals
    // and hangups that come later must not reach whoever got it.
    let finished = Arc::new(AtomicBool::new(false));
    let running = {
        let f = finished.clone();
        move || !f.load(Ordering::SeqCst)
    };
    // Input runs on its own thread: a child that does not read its stdin
    // must not stall signal delivery.
    let tty = req.tty;
    std::thread::spawn(move || {
        let mut stdin = stdin;
        while let Ok(i) = input.recv() {
            match i {
                Input::Stdin(data) if data.is_empty() => {
                    if tty {
                        // EOF on a terminal is ^D, not a close.
                        if let Some(s) = stdin.as_mut() {
                            let _ = s.write_all(&[4]);
                        }
                    } else {
                        stdin = None;
                    }
                }
                Input::Stdin(data) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data).is_err() {
                            stdin = None;
                        }
                    }
                }
                Input::Signal(sig) if running() => sys::kill(group, sig),
                Input::Signal(_) => {}
                Input::Resize(rows, cols) => {
                    if let Some(fd) = master_fd {
                        sys::set_winsize(fd, rows, cols);
                    }
                }
                Input::Hangup(why) => {
                    if running() {
                        eprintln!(
                            "iii-init: agent stream ended ({why}); killing the running session"
                        );
                        sys::kill(group, libc::SIGKILL);
                    }
                    break;
                }
            }
        }
    });
    let (code, timed_out) = match req.timeout_ms {
        Some(ms) => match exit_rx.recv_timeout(Duration::from_millis(ms)) {
            Ok(code) => (code, false),
            Err(RecvTimeoutError::Timeout) => {
                sys::kill(group, libc::SIGKILL);
                let _ = exit_rx.recv();
                (EXIT_TIMEOUT, true)
            }
            Err(RecvTimeoutError::Disconnected) => (255, false),
        },
        None => (exit_rx.recv().unwrap_or(255), false),
    };
    finished.store(true, Ordering::SeqCst);
    // Deliver remaining output; background processes that keep the pipes
    // open do not hold the exit report back for long.
    for _ in 0..pumps {
        if done_rx.recv_timeout(Duration::from_secs(2)).is_err() {
            break;
        }
    }
    Ok((code, timed_out))
}

#[cfg(test)]
mod tests {
    //! The agent runs unprivileged here too: sessions over a socketpair.
    use super::*;
    use std::os::unix::net::UnixStream;

    fn agent() -> UnixStream {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            std::thread::spawn(reaper_for_tests);
            let r = b.try_clone().unwrap();
            serve(r, Box::new(b));
        });
        a
    }

    /// Tests are not PID 1, but the registered children are ours, so
    /// waiting on them works the same way.
    fn reaper_for_tests() {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            std::thread::spawn(|| reaper::reap_forever());
        });
    }

    fn run(req: ExecRequest, stdin: &[u8]) -> client::ExecOutput {
        let s = agent();
        client::exec(&s, &req, stdin).unwrap()
    }

    fn sh(script: &str) -> ExecRequest {
        ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes_stdout_stderr_and_stdin() {
        let out = run(sh("cat; echo err >&2; exit 7"), b"hello stdin");
        assert_eq!(out.code, 7);
        assert_eq!(out.stdout, b"hello stdin");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn env_and_cwd() {
        let mut req = sh("echo $FOO; pwd");
        req.env = vec![("FOO".into(), "bar".into())];
        req.cwd = Some("/tmp".into());
        assert_eq!(run(req, b"").stdout, b"bar\n/tmp\n");
    }

    #[test]
    fn timeout_gives_124_and_kills_the_group() {
        let mut req = sh("sleep 30 & sleep 30");
        req.timeout_ms = Some(300);
        let t = std::time::Instant::now();
        let out = run(req, b"");
        assert_eq!(out.code, EXIT_TIMEOUT);
        assert!(out.timed_out, "the 8-byte exit carries the timeout flag");
        assert!(t.elapsed() < Duration::from_secs(10));
        // A process that exits 124 on its own is not a timeout.
        let out = run(sh("exit 124"), b"");
        assert_eq!((out.code, out.timed_out), (124, false));
    }

    #[test]
    fn capped_exec_drains_past_the_cap() {
        let s = agent();
        let out = client::exec_capped(&s, &sh("head -c 300000 /dev/zero; echo e >&2"), b"", 1000)
            .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout.len(), 1000);
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr, b"e\n");
        assert!(!out.stderr_truncated);
    }

    #[test]
    fn signals_reach_the_process() {
        let s = agent();
        let mut w = s.try_clone().unwrap();
        write_frame(
            &mut w,
            &Frame::with_json(Kind::Exec, &sh("echo started; sleep 30")),
        )
        .unwrap();
        let mut r = s.try_clone().unwrap();
        let f = read_frame(&mut r).unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (Kind::Stdout, &b"started\n"[..])
        );
        write_frame(
            &mut w,
            &Frame::new(Kind::Signal, 15i32.to_le_bytes().to_vec()),
        )
        .unwrap();
        let code = loop {
            let f = read_frame(&mut r).unwrap();
            if f.kind == Kind::Exit {
                break f.exit_payload().unwrap().0;
            }
        };
        assert_eq!(code, 128 + 15);
    }

    #[test]
    fn children_start_with_an_empty_signal_mask() {
        // Block SIGTERM in this thread as PID 1 does; the child must not inherit it.
        // SAFETY: plain signal-mask calls on this thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        // Through the reaper, like every child of the agent (a plain
        // `output()` could lose its status to the tests' reaper thread).
        reaper_for_tests();
        let mut cmd = command(&sh("grep SigBlk /proc/self/status"), None).unwrap();
        let (mut child, exit) = reaper::spawn(&mut cmd).unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(exit.recv().unwrap(), 0);
        assert_eq!(out.trim(), "SigBlk:\t0000000000000000");
    }

    #[test]
    fn pty_sessions_see_a_terminal() {
        let mut req = sh("test -t 0 && test -t 1 && echo tty");
        req.tty = true;
        let out = run(req, b"");
        assert_eq!(out.code, 0);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tty");
    }

    #[test]
    fn missing_program_is_an_error() {
        let s = agent();
        let req = ExecRequest {
            argv: vec!["/nonexistent".into()],
            ..Default::default()
        };
        match client::exec(&s, &req, b"") {
            Err(ProtoError::Agent(m)) => {
                assert!(m.starts_with("spawn: "), "{m}");
                assert!(m.ends_with("(os error 2)"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn streamed_files_both_ways_and_unknown_ops() {
        let mut s = agent();
        let dir = std::env::temp_dir().join(format!("iii-agent-stream-{}", std::process::id()));
        let f = dir.join("sub/big.bin").to_string_lossy().to_string();
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251).to_le_bytes()[0])
            .collect();
        let req = FsRequest::Write {
            path: f.clone(),
            mode: 0o600,
            parents: true,
            stream: true,
        };
        let chunks: Vec<Vec<u8>> = data.chunks(70_000).map(<[u8]>::to_vec).collect();
        let resp = client::fs_write_stream(&mut s, &req, chunks.into_iter()).unwrap();
        assert_eq!(resp.error, None);
        assert_eq!(
            resp.value,
            Some(serde_json::json!({"bytes_written": 300_000}))
        );
        let mut meta = None;
        let mut got = Vec::new();
        let resp = client::fs_read_stream(
            &mut s,
            &f,
            |m| meta = Some(m.clone()),
            |c| {
                got.extend_from_slice(c);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(resp.error, None);
        assert_eq!(meta.unwrap().size, 300_000);
        assert_eq!(got, data);
        // A failed streamed write still consumes its chunks: the stream stays in step.
        let bad = FsRequest::Write {
            path: dir.join("no/such/f").to_string_lossy().into(),
            mode: 0o600,
            parents: false,
            stream: true,
        };
        let resp = client::fs_write_stream(&mut s, &bad, vec![vec![1u8; 10]].into_iter()).unwrap();
        assert_eq!(resp.code.as_deref(), Some(codes::NOT_FOUND));
        // An op this agent does not know, then a header that is not a request.
        let payload = pack(&serde_json::json!({"op": "teleport", "path": "/"}), b"").unwrap();
        write_frame(&mut s, &Frame::new(Kind::Fs, payload)).unwrap();
        let f = read_frame(&mut s).unwrap();
        assert_eq!(f.kind, Kind::FsResult);
        let (resp, _): (FsResponse, _) = unpack(&f.payload).unwrap();
        assert_eq!(resp.code.as_deref(), Some(codes::UNSUPPORTED));
        write_frame(&mut s, &Frame::new(Kind::Fs, vec![1, 2])).unwrap();
        let f = read_frame(&mut s).unwrap();
        let (resp, _): (FsResponse, _) = unpack(&f.payload).unwrap();
        assert_eq!(resp.code.as_deref(), Some(codes::INVALID));
        client::ping(&mut s).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sequential_sessions_and_file_ops_on_one_stream() {
        let mut s = agent();
        let dir = std::env::temp_dir().join(format!("iii-agent-test-{}", std::process::id()));
        let d = dir.to_string_lossy().to_string();
        let (r, _) = client::fs(
            &mut s,
            &FsRequest::Mkdir {
                path: d.clone(),
                mode: 0o755,
                parents: true,
            },
            b"",
        )
        .unwrap();
        assert_eq!(r.error, None);
        let f = format!("{d}/a.txt");
        client::fs(
            &mut s,
            &FsRequest::Write {
                path: f.clone(),
                mode: 0o600,
                parents: false,
                stream: false,
            },
            b"content",
        )
        .unwrap();
        let (_, data) = client::fs(&mut s, &FsRequest::Read { path: f.clone() }, b"").unwrap();
        assert_eq!(data, b"content");
        let out = client::exec(&s, &sh(&format!("cat {f}")), b"").unwrap();
        assert_eq!(out.stdout, b"content");
        let (r, _) = client::fs(&mut s, &FsRequest::List { path: d.clone() }, b"").unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(
            (
                r.entries[0].name.as_str(),
                r.entries[0].size,
                r.entries[0].mode & 0o777
            ),
            ("a.txt", 7, 0o600)
        );
        let out = client::exec(&s, &sh("exit 3"), b"").unwrap();
        assert_eq!(out.code, 3);
        client::fs(
            &mut s,
            &FsRequest::Remove {
                path: d.clone(),
                recursive: true,
            },
            b"",
        )
        .unwrap();
        let (r, _) = client::fs(&mut s, &FsRequest::Stat { path: d }, b"").unwrap();
        assert!(r.error.is_some());
        client::ping(&mut s).unwrap();
    }
}
