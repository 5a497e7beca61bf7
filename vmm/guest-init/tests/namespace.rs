//! `iii-init --namespace` for real: a busybox root on an erofs lower (and on
//! a plain directory), an overlay upper, the agent over its Unix socket, a
//! forwarded port, and teardown leaving no mount, loop device or process.
//! Needs root (namespaces, mounts, loop devices); skipped otherwise.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iii_vm_agent_proto::{client, ExecRequest, FsRequest};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "hostname", "nc", "sleep", "mkdir", "test", "id", "grep", "wc",
    "mount",
];

fn is_root() -> bool {
    // SAFETY: plain id getter.
    unsafe { libc::geteuid() == 0 }
}

/// Lowering `oom_score_adj` needs CAP_SYS_RESOURCE (bit 24), which some
/// hosts drop even for root.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    eff & (1 << CAP_SYS_RESOURCE) != 0
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A root with a static busybox and its applets.
fn build_root(root: &Path) {
    let bb =
        std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install -y busybox-static)");
    for d in ["bin", "etc", "workspace"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("bin/busybox"), bb).unwrap();
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/lower-only"), "from the lower\n").unwrap();
}

fn mkfs_erofs(src: &Path, out: &Path) {
    let st = Command::new("mkfs.erofs")
        .arg(out)
        .arg(src)
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.erofs (apt-get install -y erofs-utils)");
    assert!(st.success(), "mkfs.erofs failed");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP echo server on the host and a Unix socket in front of it, as the
/// runtime serves each forward.
fn serve_forward(sock: &Path) -> u16 {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for u in l.incoming().flatten() {
            std::thread::spawn(move || {
                let t = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (mut ur, mut tw) = (u.try_clone().unwrap(), t.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut ur, &mut tw);
                    let _ = tw.shutdown(std::net::Shutdown::Write);
                });
                let (mut tr, mut uw) = (t, u);
                let _ = std::io::copy(&mut tr, &mut uw);
                let _ = uw.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    port
}

struct Sandbox {
    dir: PathBuf,
    child: Child,
    init_pid: i32,
}

fn start(dir: &Path, lower: &Path, format: &str, port: u16, cgroup_procs: &[String]) -> Sandbox {
    let d = dir.to_string_lossy();
    let spec = serde_json::json!({
        "dir": d,
        "lower": lower, "lower_format": format,
        "upper": format!("{d}/upper"), "work": format!("{d}/work"),
        "merged": format!("{d}/merged"),
        "agent_socket": format!("{d}/agent.sock"),
        "forwards": [{"port": port, "socket": format!("{d}/fwd-{port}.sock")}],
        "cgroup_procs": cgroup_procs,
        "hostname": "sbtest",
        "env": [["PATH", "/bin"], ["SANDBOX_VAR", "from-spec"]],
        "workdir": "/workspace",
        "pid_file": format!("{d}/init.pid"),
        "resolv_conf": "nameserver 10.0.2.3\n",
    });
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_iii-init"))
        .arg("--namespace")
        .arg(dir.join("spec.json"))
        .spawn()
        .unwrap();
    let mut s = client::connect_unix(&dir.join("agent.sock"), Duration::from_secs(20))
        .expect("agent socket");
    client::ping(&mut s).expect("agent answers Pong");
    // A figure for the report, not an assertion.
    eprintln!("{format} lower: spawn → agent Pong in {:?}", t0.elapsed());
    let pid: i32 = std::fs::read_to_string(dir.join("init.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Sandbox {
        dir: dir.into(),
        child,
        init_pid: pid,
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A failed assertion must not leave the sandbox running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sandbox {
    fn exec(&self, argv: &[&str]) -> client::ExecOutput {
        let s = client::connect_unix(&self.dir.join("agent.sock"), Duration::from_secs(5)).unwrap();
        let req = ExecRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout_ms: Some(20_000),
            ..Default::default()
        };
        client::exec(&s, &req, b"").unwrap()
    }

    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert_eq!(
            out.code,
            0,
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The pid namespace inode of `pid`.
fn pid_ns(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

fn processes_in_ns(ns: u64) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
            // Zombies waiting for their reaper are not running processes.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            if !zombie && pid_ns(pid) == Some(ns) {
                v.push(pid);
            }
        }
    }
    v
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(&d)))
        .map(String::from)
        .collect()
}

fn loops_backed_by(file: &Path) -> Vec<String> {
    let want = file.to_string_lossy().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let b = e.path().join("loop/backing_file");
        if let Ok(s) = std::fs::read_to_string(&b) {
            if s.trim() == want {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn contents(path: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// A pids cgroup (v1 or v2) for the sandbox, removed on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        // After a failed assertion the sandbox's processes are still dying:
        // the cgroup is busy until they are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && self.0.exists() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn make_cgroup(tag: &str) -> Option<Cgroup> {
    for base in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let p = Path::new(base).join(format!("iii-ns-test-{tag}-{}", std::process::id()));
        if Path::new(base).join("cgroup.procs").exists() && std::fs::create_dir(&p).is_ok() {
            return Some(Cgroup(p));
        }
    }
    eprintln!("no writable cgroup hierarchy: cgroup_procs not checked");
    None
}

#[test]
fn namespace_sandbox_end_to_end() {
    if !is_root() {
        eprintln!("skipping: iii-init --namespace needs root (namespaces, mounts, loop devices)");
        return;
    }
    // Orphans of the killed bootstrap (init) come back to this process, so
    // the test can tell when they are gone.
    // SAFETY: plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let base = Dir(std::env::temp_dir().join(format!("iii-ns-test-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&base.0);
    std::fs::create_dir_all(&base.0).unwrap();
    let root = base.0.join("rootfs");
    build_root(&root);
    let lower = base.0.join("lower.erofs");
    mkfs_erofs(&root, &lower);
    let lower_hash = contents(&lower);

    // --- erofs lower, stopped by killing the bootstrap ---
    let dir = base.0.join("sb1");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    serve_forward(&dir.join(format!("fwd-{port}.sock")));
    let cg = make_cgroup("a");
    let procs: Vec<String> = cg
        .iter()
        .map(|c| c.0.join("cgroup.procs").to_string_lossy().into_owned())
        .collect();
    let mut sb = start(&dir, &lower, "erofs", port, &procs);

    // The bootstrap stays in the host's namespaces and root; init does not.
    let ns_of = |pid: u32, ns: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
            .unwrap()
            .ino()
    };
    let me = std::process::id();
    let boot = sb.child.id();
    let init = u32::try_from(sb.init_pid).unwrap();
    for ns in ["mnt", "pid", "net", "uts", "ipc"] {
        assert_eq!(ns_of(boot, ns), ns_of(me, ns), "bootstrap {ns} namespace");
        assert_ne!(ns_of(init, ns), ns_of(me, ns), "init {ns} namespace");
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{boot}/root")).unwrap(),
        Path::new("/")
    );
    assert_eq!(sb.sh("echo hi"), "hi\n");
    assert_eq!(sb.sh("hostname"), "sbtest\n");
    let cmdline = sb.sh("cat /proc/1/cmdline");
    let args: Vec<&str> = cmdline.split('\0').collect();
    assert!(args[0].ends_with("iii-init"), "{cmdline:?}");
    assert_eq!(args[1], "--namespace");
    assert_eq!(sb.sh("ls /sys/class/net"), "lo\n");
    assert_eq!(sb.sh("echo $SANDBOX_VAR; pwd"), "from-spec\n/workspace\n");
    assert_eq!(sb.sh("cat /etc/resolv.conf"), "nameserver 10.0.2.3\n");
    if has_cap_sys_resource() {
        assert_eq!(sb.sh("cat /proc/self/oom_score_adj"), "0\n");
        assert_eq!(sb.sh("cat /proc/1/oom_score_adj"), "-1000\n");
    } else {
        // Init cannot lower its own score here, so sessions carry the highest one instead.
        assert_eq!(sb.sh("cat /proc/self/oom_score_adj"), "1000\n");
        eprintln!("no CAP_SYS_RESOURCE here: init's oom_score_adj -1000 not checked");
    }
    // Only the harmless device nodes; the host's disks are not there.
    let dev = sb.sh("ls /dev");
    for n in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
    ] {
        assert!(
            dev.split_whitespace().any(|d| d == n),
            "/dev lacks {n}: {dev}"
        );
    }
    assert!(
        !dev.contains("loop") && !dev.contains("sda") && !dev.contains("vda"),
        "{dev}"
    );
    // (busybox `test -w` is always true for root, so read the mount table.)
    let sys_opts = sb.sh("grep ' /sys ' /proc/mounts");
    assert!(
        sys_opts
            .split_whitespace()
            .nth(3)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "{sys_opts}"
    );
    // PID 1 shows no host environment; sessions run without the
    // capabilities that would undo the sandbox, and /proc/sys is read-only.
    // (Read from the host: sessions may not read init's /proc entries at all.)
    let environ = std::fs::read(format!("/proc/{}/environ", sb.init_pid)).unwrap();
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    assert!(
        std::env::vars_os().next().is_some(),
        "the test itself has an env, so the bootstrap had one to drop"
    );
    let caps = sb.sh("grep CapBnd /proc/self/status");
    assert_eq!(caps.trim(), "CapBnd:\t00000000a00425fb", "{caps}");
    let out = sb.exec(&["sh", "-c", "echo x > /proc/sys/kernel/hostname"]);
    assert_ne!(out.code, 0, "host-wide sysctls are read-only");
    let out = sb.exec(&["sh", "-c", "mount -t tmpfs none /mnt"]);
    assert_ne!(out.code, 0, "no CAP_SYS_ADMIN in sessions");
    let mountinfo = sb.sh("cat /proc/self/mountinfo");
    let mount_opts = |mp: &str| {
        mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mp))
            .map(|l| l.split(' ').nth(5).unwrap_or("").to_string())
    };
    assert!(
        mount_opts("/proc/sys").is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "{mountinfo}"
    );
    for masked in ["kcore", "keys", "timer_list", "sched_debug", "kallsyms"] {
        // Only what this kernel has can be masked.
        if Path::new("/proc").join(masked).exists() {
            assert!(
                mount_opts(&format!("/proc/{masked}")).is_some(),
                "/proc/{masked} masked: {mountinfo}"
            );
        }
    }
    assert!(mount_opts("/dev/pts").is_some() && mount_opts("/dev/shm").is_some());
    // No host path is visible.
    assert_eq!(
        sb.sh(&format!(
            "test -e {} && echo seen || echo hidden",
            base.0.display()
        )),
        "hidden\n"
    );
    // Writes land in the upper, never in the lower.
    sb.sh("echo data > /workspace/new.txt; echo changed > /etc/lower-only");
    assert_eq!(
        std::fs::read_to_string(dir.join("upper/workspace/new.txt")).unwrap(),
        "data\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("upper/etc/lower-only")).unwrap(),
        "changed\n"
    );
    let mut s = client::connect_unix(&dir.join("agent.sock"), Duration::from_secs(5)).unwrap();
    let resp = client::fs_write_stream(
        &mut s,
        &FsRequest::Write {
            path: "/workspace/deep/up.bin".into(),
            mode: 0o644,
            parents: true,
            stream: true,
        },
        vec![vec![7u8; 100_000]].into_iter(),
    )
    .unwrap();
    assert_eq!(resp.error, None);
    assert_eq!(
        std::fs::read(dir.join("upper/workspace/deep/up.bin"))
            .unwrap()
            .len(),
        100_000
    );
    // The forward: the sandbox's 127.0.0.1:<port> reaches the host's server.
    assert_eq!(
        sb.sh(&format!("echo through-the-forward | nc 127.0.0.1 {port}")),
        "through-the-forward\n"
    );
    // A PTY session (the sandbox's own devpts instance) and a timeout.
    let conn = client::connect_unix(&dir.join("agent.sock"), Duration::from_secs(5)).unwrap();
    let pty = ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "test -t 0 && test -t 1 && echo tty".into(),
        ],
        tty: true,
        ..Default::default()
    };
    let out = client::exec(&conn, &pty, b"").unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tty");
    let conn = client::connect_unix(&dir.join("agent.sock"), Duration::from_secs(5)).unwrap();
    let slow = ExecRequest {
        argv: vec!["sleep".into(), "30".into()],
        timeout_ms: Some(200),
        ..Default::default()
    };
    let out = client::exec(&conn, &slow, b"").unwrap();
    assert_eq!(
        (out.code, out.timed_out),
        (iii_vm_agent_proto::EXIT_TIMEOUT, true)
    );
    // Concurrent sessions, each on its own connection.
    let sessions: Vec<_> = (0..4)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let s =
                    client::connect_unix(&dir.join("agent.sock"), Duration::from_secs(5)).unwrap();
                let req = ExecRequest {
                    argv: vec!["sh".into(), "-c".into(), format!("sleep 0.3; echo {i}")],
                    ..Default::default()
                };
                client::exec(&s, &req, b"").unwrap().stdout
            })
        })
        .collect();
    for (i, h) in sessions.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), format!("{i}\n").into_bytes());
    }
    if let Some(cg) = &cg {
        let procs = std::fs::read_to_string(cg.0.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == sb.init_pid.to_string()),
            "init in its cgroup: {procs}"
        );
    }
    // A background process that would outlive a careless teardown.
    sb.sh("sleep 1000 >/dev/null 2>&1 &");
    let ns = pid_ns(sb.init_pid).expect("init's pid namespace");
    assert!(processes_in_ns(ns).len() >= 2, "init and the sleeper");

    // Kill the bootstrap outright: nothing may survive it.
    sb.child.kill().unwrap();
    sb.child.wait().unwrap();
    wait_until("every sandbox process gone", || {
        // Reap the orphans handed to this subreaper.
        // SAFETY: valid out-pointer; WNOHANG never blocks.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        processes_in_ns(ns).is_empty()
    });
    assert!(
        mounts_under(&base.0).is_empty(),
        "{:?}",
        mounts_under(&base.0)
    );
    wait_until("the loop device detached", || {
        loops_backed_by(&lower).is_empty()
    });
    assert_eq!(
        contents(&lower),
        lower_hash,
        "the lower image is never written"
    );
    // The upper keeps what was written (the runtime removes the directory).
    assert!(dir.join("upper/workspace/new.txt").exists());
    if let Some(cg) = cg {
        wait_until("the cgroup empty", || {
            std::fs::read_to_string(cg.0.join("cgroup.procs"))
                .unwrap()
                .trim()
                .is_empty()
        });
        std::fs::remove_dir(&cg.0).unwrap();
    }

    // --- directory lower, stopped by SIGTERM ---
    let dir2 = base.0.join("sb2");
    std::fs::create_dir_all(&dir2).unwrap();
    let port2 = free_port();
    serve_forward(&dir2.join(format!("fwd-{port2}.sock")));
    let mut sb2 = start(&dir2, &root, "dir", port2, &[]);
    assert_eq!(sb2.sh("cat /etc/lower-only"), "from the lower\n");
    sb2.sh("echo two > /workspace/f");
    assert_eq!(
        std::fs::read_to_string(dir2.join("upper/workspace/f")).unwrap(),
        "two\n"
    );
    assert!(
        !root.join("workspace/f").exists(),
        "the directory lower is untouched"
    );
    sb2.sh("sleep 1000 >/dev/null 2>&1 &");
    let ns2 = pid_ns(sb2.init_pid).unwrap();
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(sb2.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let st = sb2.child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "a requested stop is a clean exit");
    assert!(t.elapsed() < Duration::from_secs(10));
    wait_until("every sandbox process gone", || {
        // SAFETY: valid out-pointer; WNOHANG never blocks.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        processes_in_ns(ns2).is_empty()
    });
    assert!(mounts_under(&base.0).is_empty());
    let _ = std::io::stderr().flush();
}

#[test]
fn bad_spec_exits_2_with_a_message() {
    let dir = Dir(std::env::temp_dir().join(format!("iii-ns-bad-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let spec = dir.0.join("spec.json");
    std::fs::write(&spec, r#"{"dir":"relative"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iii-init"))
        .arg("--namespace")
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid spec"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_iii-init"))
        .arg("--namespace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
