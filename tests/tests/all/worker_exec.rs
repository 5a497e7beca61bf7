//! `iii worker exec` against a real image worker (the `hello-worker` image of
//! `image_fixture.rs`; busybox with only `sh` linked, so applets run as `busybox <applet>`):
//! exit codes, stdin, `-e`, `-w`, the worker's own env and working directory, `--timeout`,
//! Ctrl-C once and twice, a terminal session (echo, window size and its changes, the host
//! terminal restored), the worker host's `host.json` and `shell.sock` (modes, removed on stop)
//! and, after an engine SIGKILL, a clean stop with no panic. The error cases (unknown, not
//! running, usage) need no engine.
//!
//! Needs root (namespaces), busybox-static and cargo, like `image_workers`.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iii_tests::{free_port, iii_bin, EngineProc};

use super::image_fixture::{alive, built, config, entry, sandboxes};

struct Worker {
    engine: EngineProc,
    home: tempfile::TempDir,
    root: tempfile::TempDir,
    _cache: tempfile::TempDir,
    name: String,
    host_pid: u32,
}

/// An engine running image worker `name`, with `III_HOME` in a temp dir; waits until the
/// worker host has published its state and exec socket.
fn worker(name: &str) -> Worker {
    let b = built();
    let root = tempfile::Builder::new()
        .prefix("ix")
        .tempdir_in("/tmp")
        .unwrap();
    let home = tempfile::Builder::new()
        .prefix("ih")
        .tempdir_in("/tmp")
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let ws = free_port();
    let extra = entry(name);
    let engine = EngineProc::start_with_env(
        move |_, _| config(ws, &extra),
        &[
            ("III_SANDBOX_ROOT", root.path().to_str().unwrap()),
            ("III_HOME", home.path().to_str().unwrap()),
            ("XDG_CACHE_HOME", cache.path().to_str().unwrap()),
            ("III_WORKER_RUNTIME", "namespace"),
            (
                "III_WORKER_HOST_BIN",
                b.target.join("iii-worker-host").to_str().unwrap(),
            ),
            ("III_INIT", b.target.join("iii-init").to_str().unwrap()),
        ],
    );
    let state = home.path().join("managed").join(name).join("host.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    let host_pid = loop {
        if let Ok(text) = std::fs::read_to_string(&state) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let pid = u32::try_from(v["pid"].as_u64().unwrap()).unwrap();
            if alive(pid) {
                break pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no host.json from the worker host\n{}",
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    Worker {
        engine,
        home,
        root,
        _cache: cache,
        name: name.to_string(),
        host_pid,
    }
}

impl Worker {
    fn managed(&self) -> PathBuf {
        self.home.path().join("managed").join(&self.name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        exec_cmd(self.home.path(), &self.engine.dir, &self.name, args)
    }

    /// Runs `iii worker exec <name> <args>` with `stdin` piped in.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut input, &data);
        });
        let out = wait_output(child, Duration::from_secs(60));
        feeder.join().unwrap();
        out
    }
}

fn exec_cmd(home: &Path, cwd: &Path, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(iii_bin());
    c.current_dir(cwd)
        .env("III_HOME", home)
        .env_remove("III_CONFIG_PATH")
        .args(["worker", "exec", name])
        .args(args);
    c
}

/// Waits for `child` (at most `limit`, then kills it and fails).
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("iii worker exec did not finish within {limit:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Live processes whose argv is exactly `argv` (the guest's, seen from the host).
fn guest_procs(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok().as_ref() == Some(&want))
        .filter(|pid| alive(*pid))
        .collect()
}

fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child this test spawned.
    unsafe {
        libc::kill(i32::try_from(pid).unwrap(), sig);
    }
}

#[test]
fn exec_runs_commands_in_a_running_image_worker() {
    let w = worker("exec-w");

    // The state file and the socket: private, naming this host.
    let managed = w.managed();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&managed), 0o700);
    assert_eq!(mode(&managed.join("host.json")), 0o600);
    assert_eq!(mode(&managed.join("shell.sock")), 0o600);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(managed.join("host.json")).unwrap()).unwrap();
    assert_eq!(state["kind"], "image", "{state}");
    assert_eq!(state["workdir"], "/tmp", "{state}");
    assert_eq!(state["runtime"], "namespace", "{state}");

    // Exit codes pass through.
    let out = w.run(&["--", "sh", "-c", "exit 7"], b"");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = w.run(&["--", "sh", "-c", "kill -TERM $$"], b"");
    assert_eq!(out.status.code(), Some(128 + 15), "{out:?}");

    // stdin streams through (more than one 8 KiB chunk), stdout and stderr stay apart.
    let big: Vec<u8> = (0..50_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = w.run(&["--", "busybox", "cat"], &big);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, big);
    let out = w.run(&["--", "sh", "-c", "echo out; echo err >&2"], b"");
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );

    // The worker's own env and workdir are the base; -e and -w go on top.
    let out = w.run(
        &[
            "-e",
            "EXTRA=1",
            "-e",
            "GREETING_WORD=mine",
            "-e",
            "NOEQUALS",
            "--",
            "busybox",
            "env",
        ],
        b"",
    );
    let env = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for line in [
        "EXTRA=1",
        "GREETING_WORD=mine",
        "III_WORKER_NAME=exec-w",
        "PATH=/bin",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing in:\n{env}");
    }
    assert!(!env.contains("NOEQUALS"), "{env}");
    let out = w.run(&["--", "sh", "-c", "pwd"], b"");
    assert_eq!(text(&out.stdout), "/tmp\n", "{out:?}");
    let out = w.run(&["-w", "/etc", "--", "sh", "-c", "pwd"], b"");
    assert_eq!(text(&out.stdout), "/etc\n", "{out:?}");

    // A missing program is the agent's error, exit 1.
    let out = w.run(&["--", "no-such-program"], b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).starts_with("error: "), "{out:?}");

    // --timeout kills it and exits 124.
    let t = Instant::now();
    let out = w.run(&["--timeout", "1s", "--", "busybox", "sleep", "30"], b"");
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(
        text(&out.stderr).contains("error: timed out after 1s"),
        "{out:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    until(
        Duration::from_secs(10),
        "sleep 30 outlived its timeout",
        || guest_procs(&["busybox", "sleep", "30"]).is_empty(),
    );

    // One Ctrl-C reaches the command (sleep dies of SIGINT: 130).
    let mut c = w.cmd(&["--", "busybox", "sleep", "31"]);
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until(Duration::from_secs(20), "sleep 31 never started", || {
        !guest_procs(&["busybox", "sleep", "31"]).is_empty()
    });
    signal(child.id(), libc::SIGINT);
    let out = wait_output(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");

    // A command that ignores SIGINT: the second Ctrl-C within a second kills it, exit 130.
    let mut c = w.cmd(&[
        "--",
        "sh",
        "-c",
        "trap '' INT; busybox sleep 32; echo survived",
    ]);
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until(Duration::from_secs(20), "sleep 32 never started", || {
        !guest_procs(&["busybox", "sleep", "32"]).is_empty()
    });
    let t = Instant::now();
    signal(child.id(), libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !guest_procs(&["busybox", "sleep", "32"]).is_empty(),
        "one Ctrl-C must not kill it"
    );
    signal(child.id(), libc::SIGINT);
    let out = wait_output(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!text(&out.stdout).contains("survived"), "{out:?}");
    until(
        Duration::from_secs(10),
        "sleep 32 outlived the double Ctrl-C",
        || guest_procs(&["busybox", "sleep", "32"]).is_empty(),
    );

    pty_session(&w);
    client_limit(&w);
    other_users_are_refused(&w);

    // The engine stops the worker: host.json and shell.sock go with it.
    drop_engine_gracefully(&w.engine);
    until(
        Duration::from_secs(30),
        "the worker host did not stop",
        || !alive(w.host_pid),
    );
    assert!(!managed.join("host.json").exists());
    assert!(!managed.join("shell.sock").exists());
    let out = w.run(&["--", "true"], b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("error: [W113] worker 'exec-w' is not running"),
        "{out:?}"
    );
    assert!(sandboxes(w.root.path()).is_empty());
}

/// SIGTERM, the way a service manager stops it; waits for its exit.
fn drop_engine_gracefully(e: &EngineProc) {
    signal(e.child.id(), libc::SIGTERM);
    until(Duration::from_secs(30), "the engine did not exit", || {
        !alive(e.child.id())
    });
}

/// A terminal session: the CLI's stdin/stdout/stderr are a pty this test holds the master of.
fn pty_session(w: &Worker) {
    let (master, slave) = openpty(40, 100);
    // SAFETY: tcgetattr fills the termios it is given.
    let before = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        t
    };
    let mut c = w.cmd(&[
        "--",
        "sh",
        "-c",
        "busybox tty; busybox stty size; read x; busybox stty size; echo got:$x",
    ]);
    let child = c
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    // The command keeps its copies of the slave open: only the child may hold it.
    drop(c);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        let mut m = std::fs::File::from(master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let shown = || text(&seen.lock().unwrap());
    until(Duration::from_secs(20), "no tty / size output", || {
        shown().contains("40 100")
    });
    assert!(shown().contains("/dev/pts/"), "{}", shown());
    // A new window size follows SIGWINCH.
    set_winsize(master.as_raw_fd(), 50, 120);
    signal(child.id(), libc::SIGWINCH);
    std::thread::sleep(Duration::from_millis(500));
    let mut m = std::fs::File::from(master.try_clone().unwrap());
    std::io::Write::write_all(&mut m, b"hello\r").unwrap();
    let out = wait_output(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", shown());
    until(
        Duration::from_secs(5),
        "no answer to the typed line",
        || shown().contains("got:hello"),
    );
    let all = shown();
    // Typed input echoes (the guest terminal), before the answer.
    let echo = all.find("hello").unwrap();
    assert!(echo < all.find("got:hello").unwrap(), "{all}");
    assert!(all.contains("50 120"), "{all}");
    // The CLI put our terminal back as it found it.
    // SAFETY: tcgetattr fills the termios it is given.
    let after = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        t
    };
    assert_eq!(
        (after.c_lflag, after.c_iflag, after.c_oflag),
        (before.c_lflag, before.c_iflag, before.c_oflag)
    );
    // The reader ends with EIO once the slave is closed everywhere; not waited for, so a
    // stray holder cannot hang the test.
    drop((slave, master, m, reader));
}

/// Sixteen sessions at once; the seventeenth client is told so; a closed client's session
/// is killed. Raw agent protocol on `shell.sock`.
fn client_limit(w: &Worker) {
    use iii_vm_agent_proto::{read_frame, write_frame, ExecRequest, Frame, Kind};
    let sock = w.managed().join("shell.sock");
    let exec = |argv: &[&str]| {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let req = ExecRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        // A refused client may find the socket closed already (EPIPE): its answer still waits.
        let _ = write_frame(&mut s, &Frame::with_json(Kind::Exec, &req));
        s
    };
    let held: Vec<_> = (0..16).map(|_| exec(&["busybox", "sleep", "41"])).collect();
    until(Duration::from_secs(20), "16 sessions did not start", || {
        guest_procs(&["busybox", "sleep", "41"]).len() == 16
    });
    let mut extra = exec(&["busybox", "true"]);
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let f = read_frame(&mut extra).unwrap();
    assert_eq!(f.kind, Kind::Error);
    assert!(
        String::from_utf8_lossy(&f.payload).contains("too many exec sessions"),
        "{f:?}"
    );
    drop(held);
    until(
        Duration::from_secs(10),
        "closed clients' sessions still run",
        || guest_procs(&["busybox", "sleep", "41"]).is_empty(),
    );
    // The slots are free again (a relay lets its slot go just after its session's end).
    let deadline = Instant::now() + Duration::from_secs(10);
    'retry: loop {
        let mut again = exec(&["sh", "-c", "exit 3"]);
        loop {
            let f = read_frame(&mut again).unwrap();
            match f.kind {
                Kind::Exit => {
                    assert_eq!(f.exit_payload().unwrap().0, 3);
                    break 'retry;
                }
                Kind::Error if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue 'retry;
                }
                Kind::Error => panic!("{f:?}"),
                _ => {}
            }
        }
    }
}

/// A client of another uid is closed without a session, even when the file modes would let it
/// in (the peer-credential check behind the 0700 dir).
fn other_users_are_refused(w: &Worker) {
    use iii_vm_agent_proto::{write_frame, ExecRequest, Frame, Kind};
    let dir = w.managed();
    let sock = dir.join("shell.sock");
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // Every directory on the way must let the other user through.
    let ways = [
        w.home.path().to_path_buf(),
        dir.parent().unwrap().to_path_buf(),
        dir.clone(),
    ];
    for d in &ways {
        chmod(d, 0o755);
    }
    chmod(&sock, 0o666);
    let mut frame = Vec::new();
    let req = ExecRequest {
        argv: vec!["busybox".into(), "true".into()],
        ..Default::default()
    };
    write_frame(&mut frame, &Frame::with_json(Kind::Exec, &req)).unwrap();
    // SAFETY: the address is built before fork; the child makes only async-signal-safe calls
    // (setgid, setuid, socket, connect, write, read, _exit) on memory it does not allocate.
    let code = unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(sock.to_str().unwrap().bytes()) {
            *d = s as libc::c_char;
        }
        let mut buf = [0u8; 64];
        let pid = libc::fork();
        if pid == 0 {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(4);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                libc::_exit(2);
            }
            libc::write(fd, frame.as_ptr().cast(), frame.len());
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            // Closed unread: EOF, or ECONNRESET because our frame was never read.
            let reset = n < 0 && *libc::__errno_location() == libc::ECONNRESET;
            libc::_exit(if n == 0 || reset { 0 } else { 1 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        libc::WEXITSTATUS(status)
    };
    chmod(&sock, 0o600);
    for d in &ways {
        chmod(d, 0o700);
    }
    assert_eq!(
        code, 0,
        "2: could not connect; 1: got a session; 4: no setuid"
    );
    w.engine
        .wait_for_log(&["refused an exec client of another user"]);
}

fn openpty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty fills the two fds; the winsize outlives the call. The fds are owned
    // from here on.
    unsafe {
        assert_eq!(
            libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws),
            0
        );
        (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    }
}

fn set_winsize(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize it is given.
    unsafe {
        assert_eq!(libc::ioctl(fd, libc::TIOCSWINSZ, &ws), 0);
    }
}

#[test]
fn an_engine_sigkill_stops_the_sandbox_without_a_panic() {
    let name = "exec-kill";
    let panic_file = std::env::temp_dir().join(format!("iii-worker-host-{name}.log"));
    let _ = std::fs::remove_file(&panic_file);
    let mut w = worker(name);
    assert_eq!(sandboxes(w.root.path()).len(), 1);
    let _ = w.engine.child.kill();
    let _ = w.engine.child.wait();
    let t = Instant::now();
    until(
        Duration::from_secs(10),
        "the worker host or its sandbox outlived the engine by 10 s",
        || !alive(w.host_pid) && sandboxes(w.root.path()).is_empty(),
    );
    let took = t.elapsed();
    let after = w
        .home
        .path()
        .join("logs")
        .join(name)
        .join("host-after-engine.log");
    let log = std::fs::read_to_string(&after).unwrap_or_default();
    assert!(log.contains("reason=engine-gone"), "{took:?} {log}");
    assert!(log.contains("sandbox stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !panic_file.exists(),
        "{}",
        std::fs::read_to_string(&panic_file).unwrap()
    );
    assert!(!w.managed().join("host.json").exists());
    assert!(!w.managed().join("shell.sock").exists());
}

#[test]
fn unknown_not_running_and_bad_usage_fail_clearly() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        "workers:\n  - name: http\n  - name: img\n    image: ghcr.io/x/img:1\n",
    )
    .unwrap();
    let run = |name: &str, args: &[&str]| {
        let out = exec_cmd(home.path(), dir.path(), name, args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = run("nope", &["--", "true"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: [W110] worker 'nope' is not a managed worker in the config file"),
        "{err}"
    );
    let (code, err) = run("http", &["--", "true"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("error: [W110] worker 'http' is not a managed worker"),
        "{err}"
    );
    let (code, err) = run("img", &["--", "true"]);
    assert_eq!(
        (code, err.trim()),
        (Some(1), "error: [W113] worker 'img' is not running")
    );
    // A state file left by a dead host is not a running worker.
    let managed = home.path().join("managed/img");
    std::fs::create_dir_all(&managed).unwrap();
    std::fs::write(
        managed.join("host.json"),
        r#"{"name":"img","pid":999999999,"kind":"image","source":"x","sandbox_id":"w-img-1","runtime":"namespace","workdir":"/","started_at_ms":1}"#,
    )
    .unwrap();
    let (code, err) = run("img", &["--", "true"]);
    assert_eq!(
        (code, err.trim()),
        (Some(1), "error: [W113] worker 'img' is not running")
    );
    let (code, err) = run("../x", &["--", "true"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: [W100]"), "{err}");
    let (code, err) = run("img", &[]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: no command specified"), "{err}");
    let (code, err) = run("img", &["--timeout", "soon", "--", "true"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: invalid --timeout 'soon'"), "{err}");
    let (code, err) = run("img", &["-t", "--", "true"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("error: -t needs a terminal on stdin"),
        "{err}"
    );
    let (code, _) = run("img", &["-t", "--no-tty", "--", "true"]);
    assert_eq!(code, Some(2), "clap refuses the conflict");
}
