//! The namespace runtime on this host, for real: root, cgroups, loop-mounted
//! erofs lower, `iii-init --namespace` (found through `$III_INIT` or next to
//! the test binary: `cargo build -p iii-guest-init` first). The root image is
//! busybox-static (`apt-get install busybox-static`).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use iii_sandbox_runtime::cgroup::Cgroups;
use iii_sandbox_runtime::namespace::NamespaceRuntime;
use iii_sandbox_runtime::{
    LowerFormat, Mount, Rootfs, Runtime, RuntimeError, RuntimeOptions, SandboxHandle, SandboxSpec,
};
use iii_vm_agent_proto::client::{self, ExecOutput};
use iii_vm_agent_proto::ExecRequest;

struct Fixture {
    lower: PathBuf,
    root: PathBuf,
}

/// A busybox-static root (every applet linked in /bin) as an erofs lower, once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Fixtures of earlier runs whose process is gone.
        for e in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("iii-sbrt-test-").unwrap_or("");
            if !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let base = std::env::temp_dir().join(format!("iii-sbrt-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tree = base.join("tree");
        for d in [
            "bin",
            "etc",
            "root",
            "tmp",
            "proc",
            "sys",
            "dev",
            "run",
            "workspace",
        ] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        let bb = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("busybox-static is not installed (apt-get install busybox-static)");
        std::fs::copy(bb, tree.join("bin/busybox")).unwrap();
        let list = std::process::Command::new(bb)
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') {
                let _ = std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet));
            }
        }
        std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let lower = base.join("lower.erofs");
        iii_oci_rootfs::image::build_lower(&tree, &lower, iii_oci_rootfs::image::Format::Erofs)
            .unwrap();
        // One state root for every run: sandboxes a failed earlier run left
        // behind (its process is gone) are cleaned like any daemon's orphans.
        let root = std::env::temp_dir().join("iii-sbrt-state");
        Fixture { lower, root }
    })
}

fn runtime() -> NamespaceRuntime {
    NamespaceRuntime::new(RuntimeOptions {
        state_root: Some(fixture().root.clone()),
        ..Default::default()
    })
    .expect("namespace runtime")
}

/// The runtime, after removing what dead earlier runs left (once per test binary).
async fn runtime_clean() -> NamespaceRuntime {
    static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let rt = runtime();
    CLEANED
        .get_or_init(|| async {
            let gone = rt.cleanup_orphans().await;
            if !gone.is_empty() {
                eprintln!("removed sandboxes of earlier runs: {gone:?}");
            }
        })
        .await;
    rt
}

fn spec(id: &str, engine_port: u16) -> SandboxSpec {
    SandboxSpec {
        id: format!("{id}-{}", std::process::id()),
        rootfs: Rootfs {
            lower: fixture().lower.clone(),
            format: LowerFormat::Erofs,
            env: vec![("PATH".into(), "/bin".into())],
            key: "busybox".into(),
        },
        cpus: 1,
        memory_mb: 128,
        pids_max: 0,
        network: false,
        env: vec![("SANDBOX_VAR".into(), "set".into())],
        engine_port,
        mounts: Vec::new(),
    }
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let r = unsafe { libc::geteuid() } == 0;
    if !r {
        eprintln!("namespace runtime tests need root; skipped");
    }
    r
}

/// Runs `sh -c script` in the sandbox.
async fn sh(sb: &dyn SandboxHandle, script: &str, timeout_ms: Option<u64>) -> ExecOutput {
    let s = sb.connect_agent().expect("agent");
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        timeout_ms,
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || client::exec(&s, &req, &[]))
        .await
        .unwrap()
        .expect("exec")
}

fn out(o: &ExecOutput) -> String {
    format!(
        "exit {} stdout {:?} stderr {:?}",
        o.code,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A TCP listener on 127.0.0.1 that answers every connection with `reply` and closes.
fn replier(reply: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(reply);
        }
    });
    port
}

/// Asserts that stopped sandbox `id` left nothing: directory, cgroups, PID 1, mounts.
fn assert_gone(rt: &NamespaceRuntime, id: &str, pid1: i32) {
    let dir = rt.root().join(id);
    assert!(!dir.exists(), "{} still exists", dir.display());
    for d in Cgroups::of(rt.layout(), id).dirs() {
        assert!(!d.exists(), "cgroup {} still exists", d.display());
    }
    assert!(
        !Path::new(&format!("/proc/{pid1}")).exists()
            || iii_sandbox_runtime::state::start_time(pid1).is_none(),
        "PID 1 ({pid1}) still runs"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "a mount under {} is left",
        dir.display()
    );
}

fn pid1_of(rt: &NamespaceRuntime, id: &str) -> i32 {
    std::fs::read_to_string(rt.root().join(id).join("init.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_stop_leaves_nothing() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let sp = spec("basic", replier(b"x"));
    let id = sp.id.clone();
    let sb = rt.create(sp).await.unwrap();
    assert_eq!(sb.id(), id);
    assert_eq!(sb.exited(), None);
    let dir = rt.root().join(&id);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(dir.metadata().unwrap().permissions().mode() & 0o777, 0o700);
    let o = sh(&*sb, "echo hello; hostname; echo $SANDBOX_VAR", None).await;
    assert_eq!(
        (o.code, o.stdout.as_slice()),
        (0, &b"hello\nsandbox\nset\n"[..]),
        "{}",
        out(&o)
    );
    // Writes land in this sandbox's upper, never in the lower.
    let o = sh(&*sb, "echo data > /root/f && cat /root/f", None).await;
    assert_eq!(o.stdout, b"data\n", "{}", out(&o));
    assert_eq!(std::fs::read(dir.join("upper/root/f")).unwrap(), b"data\n");
    let o = sh(&*sb, "exit 7", None).await;
    assert_eq!(o.code, 7);
    // The limits as written: 128 MiB with swap off, one CPU, the default pids.max.
    let read = |name: &str| {
        Cgroups::of(rt.layout(), &id)
            .dirs()
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(name)).ok())
            .map(|s| s.trim().to_string())
    };
    if let Some(mem) = read("memory.limit_in_bytes") {
        assert_eq!(mem, (128u64 << 20).to_string());
        if let Some(memsw) = read("memory.memsw.limit_in_bytes") {
            assert_eq!(memsw, mem);
        }
        assert_eq!(read("cpu.cfs_quota_us").as_deref(), Some("100000"));
    } else {
        assert_eq!(read("memory.max"), Some((128u64 << 20).to_string()));
    }
    assert_eq!(read("pids.max").as_deref(), Some("256"));
    let pid1 = pid1_of(&rt, &id);
    // Two stops at once: the second waits for the first, both succeed.
    let (a, b) = tokio::join!(sb.stop(), sb.stop());
    a.unwrap();
    b.unwrap();
    assert_gone(&rt, &id, pid1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_with_137_and_the_sandbox_stays_usable() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let mut sp = spec("memhog", replier(b"x"));
    sp.memory_mb = 48;
    let id = sp.id.clone();
    let sb = rt.create(sp).await.unwrap();
    // `tail` buffers a line that never ends: it grows until the cgroup's OOM killer ends it.
    let o = sh(&*sb, "exec tail /dev/zero", Some(60_000)).await;
    assert_eq!(o.code, 137, "{}", out(&o));
    let o = sh(&*sb, "echo still-here", None).await;
    assert_eq!(
        (o.code, o.stdout.as_slice()),
        (0, &b"still-here\n"[..]),
        "{}",
        out(&o)
    );
    assert_eq!(sb.exited(), None);
    let pid1 = pid1_of(&rt, &id);
    sb.stop().await.unwrap();
    assert_gone(&rt, &id, pid1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_held_by_pids_max_and_another_sandbox_still_execs() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let port = replier(b"x");
    let mut sp = spec("forkbomb", port);
    sp.pids_max = 48;
    let id = sp.id.clone();
    let a = rt.create(sp).await.unwrap();
    let groups = Cgroups::of(rt.layout(), &id);
    let bomb_stream = a.connect_agent().unwrap();
    let bomb = tokio::task::spawn_blocking(move || {
        let req = ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                // A bomb that also parks a sleeper per fork, so the group
                // stays full even though ash exits on a failed fork.
                "b() { sleep 30 & b & b & }; b 2>/dev/null; sleep 30".into(),
            ],
            env: vec![("PATH".into(), "/bin".into())],
            timeout_ms: Some(6_000),
            ..Default::default()
        };
        client::exec(&bomb_stream, &req, &[])
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(groups.pids_current().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak <= 48, "pids.current reached {peak} over pids.max 48");
    assert!(peak >= 10, "the bomb is not running (pids.current {peak})");
    // The kernel's own high-water mark, where it has one (Linux 6.1+).
    let high = groups
        .dirs()
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.peak")).ok());
    if let Some(high) = high {
        let high: u64 = high.trim().parse().unwrap();
        assert!((40..=48).contains(&high), "pids.peak {high}, pids.max 48");
    }
    let events = groups
        .dirs()
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.events")).ok())
        .unwrap_or_default();
    let refused: u64 = events
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "no fork was refused: pids.events {events:?}");
    // Meanwhile a second sandbox works normally.
    let b = rt.create(spec("forkbomb-b", port)).await.unwrap();
    let o = sh(&*b, "echo fine", None).await;
    assert_eq!(
        (o.code, o.stdout.as_slice()),
        (0, &b"fine\n"[..]),
        "{}",
        out(&o)
    );
    let _ = bomb.await;
    let (pa, pb) = (pid1_of(&rt, &id), pid1_of(&rt, b.id()));
    let bid = b.id().to_string();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_gone(&rt, &id, pa);
    assert_gone(&rt, &bid, pb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sandboxes_cannot_see_each_others_files_processes_or_sockets() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let port = replier(b"x");
    let a = rt.create(spec("iso-a", port)).await.unwrap();
    let b = rt.create(spec("iso-b", port)).await.unwrap();
    let o = sh(
        &*a,
        "echo a > /root/a-file && echo a > /tmp/a-tmp && (sleep 300 >/dev/null 2>&1 &) && \
         syslogd -O /tmp/log && sleep 0.3 && test -S /dev/log && grep -q /dev/log /proc/net/unix \
         && ps | grep -q 'sleep 300' && echo ok",
        None,
    )
    .await;
    assert_eq!(o.stdout, b"ok\n", "{}", out(&o));
    let o = sh(
        &*b,
        "test -e /root/a-file && echo sees-file; test -e /tmp/a-tmp && echo sees-tmp; \
         ps | grep -v grep | grep -q 'sleep 300' && echo sees-process; \
         test -e /dev/log && echo sees-socket-file; grep -q /dev/log /proc/net/unix && echo sees-socket; \
         test -e /work -o -e /etc/hostname.host && echo sees-host; \
         ls /proc | grep -c '^[0-9]' ; echo done",
        None,
    )
    .await;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.ends_with("done\n"), "{}", out(&o));
    for leak in [
        "sees-file",
        "sees-tmp",
        "sees-process",
        "sees-socket",
        "sees-host",
    ] {
        assert!(!text.contains(leak), "{leak}: {}", out(&o));
    }
    // Only a handful of processes are visible: init, the agent's session, sh, ls, grep.
    let procs: usize = text
        .lines()
        .rev()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(999);
    assert!(procs < 10, "B sees {procs} processes: {}", out(&o));
    let (pa, pb, ida, idb) = (
        pid1_of(&rt, a.id()),
        pid1_of(&rt, b.id()),
        a.id().to_string(),
        b.id().to_string(),
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_gone(&rt, &ida, pa);
    assert_gone(&rt, &idb, pb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_forwarded_engine_port_of_host_loopback_answers() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let engine = replier(b"engine\n");
    let other = replier(b"secret\n");
    let sb = rt.create(spec("fwd", engine)).await.unwrap();
    let act = sb.net_activity_file().unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&act)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let o = sh(
        &*sb,
        &format!(
            "nc 127.0.0.1 {engine} </dev/null; nc -w 2 127.0.0.1 {other} </dev/null || echo refused"
        ),
        Some(20_000),
    )
    .await;
    assert_eq!(o.stdout, b"engine\nrefused\n", "{}", out(&o));
    let m = act.metadata().unwrap().modified().unwrap();
    assert!(
        m > old + Duration::from_secs(60),
        "net-activity not touched"
    );
    let (pid1, id) = (pid1_of(&rt, sb.id()), sb.id().to_string());
    sb.stop().await.unwrap();
    assert_gone(&rt, &id, pid1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_network_the_nat_does_not_reach_host_loopback() {
    if !root() {
        return;
    }
    if std::process::Command::new("slirp4netns")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("slirp4netns is not installed (apt-get install slirp4netns)");
    }
    let rt = runtime_clean().await;
    let engine = replier(b"engine\n");
    let other = replier(b"secret\n");
    let mut sp = spec("net", engine);
    sp.network = true;
    let sb = rt.create(sp).await.unwrap();
    let o = sh(
        &*sb,
        &format!(
            "ip -4 addr show tap0 | grep -o '10.0.2.100'; cat /etc/resolv.conf; \
             nc 127.0.0.1 {engine} </dev/null; \
             nc -w 2 10.0.2.2 {other} </dev/null || echo refused"
        ),
        Some(20_000),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "10.0.2.100\nnameserver 10.0.2.3\nengine\nrefused\n",
        "{}",
        out(&o)
    );
    let (pid1, id) = (pid1_of(&rt, sb.id()), sb.id().to_string());
    sb.stop().await.unwrap();
    assert_gone(&rt, &id, pid1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_that_dies_starting_is_reported_with_its_log_and_undone() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let bad = fixture().root.parent().unwrap().join("not-an-image.erofs");
    std::fs::write(&bad, vec![0x5a; 1 << 20]).unwrap();
    let mut sp = spec("dies", replier(b"x"));
    sp.rootfs.lower = bad;
    let id = sp.id.clone();
    let e = rt
        .create(sp)
        .await
        .err()
        .expect("a garbage lower must fail");
    assert!(matches!(e, RuntimeError::DiedStarting { .. }), "{e}");
    assert!(e.to_string().contains("last log lines"), "{e}");
    assert!(!rt.root().join(&id).exists());
    for d in Cgroups::of(rt.layout(), &id).dirs() {
        assert!(!d.exists(), "{}", d.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_dead_daemon_are_cleaned_and_live_ones_kept() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let port = replier(b"x");
    let orphan = rt.create(spec("orphan", port)).await.unwrap();
    let kept = rt.create(spec("kept", port)).await.unwrap();
    let oid = orphan.id().to_string();
    let pid1 = pid1_of(&rt, &oid);
    // A daemon that has exited: its pid is gone (or reused with another start time).
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(
        rt.root().join(&oid).join("owner"),
        format!("{{\"pid\":{dead_pid},\"start_time\":1}}"),
    )
    .unwrap();
    // And one whose directory a tmp cleaner deleted under it.
    let lost = rt.create(spec("lost", port)).await.unwrap();
    let lid = lost.id().to_string();
    let lpid1 = pid1_of(&rt, &lid);
    std::fs::remove_dir_all(rt.root().join(&lid)).unwrap();
    let cleaned = rt.cleanup_orphans().await;
    assert!(cleaned.contains(&oid), "{cleaned:?}");
    assert!(cleaned.contains(&lid), "{cleaned:?}");
    assert_gone(&rt, &lid, lpid1);
    assert!(!cleaned.iter().any(|c| c == kept.id()), "{cleaned:?}");
    assert_gone(&rt, &oid, pid1);
    let o = sh(&*kept, "echo alive", None).await;
    assert_eq!(o.stdout, b"alive\n", "{}", out(&o));
    let (kpid, kid) = (pid1_of(&rt, kept.id()), kept.id().to_string());
    kept.stop().await.unwrap();
    assert_gone(&rt, &kid, kpid);
    // The orphan's own handle finds nothing left to stop.
    orphan.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_dies_on_its_own_reports_it_and_stop_still_cleans() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let sb = rt.create(spec("crash", replier(b"x"))).await.unwrap();
    let id = sb.id().to_string();
    let pid1 = pid1_of(&rt, &id);
    // SAFETY: kill(2) has no memory effects; pid1 is this test's sandbox's PID 1.
    unsafe { libc::kill(pid1, libc::SIGKILL) };
    let mut code = None;
    for _ in 0..200 {
        code = sb.exited();
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(code.is_some_and(|c| c != 0), "exited() = {code:?}");
    assert!(sb.connect_agent().is_err() || sh_fails(&*sb).await);
    sb.stop().await.unwrap();
    assert_gone(&rt, &id, pid1);
}

/// True when an exec session on a dead sandbox fails.
async fn sh_fails(sb: &dyn SandboxHandle) -> bool {
    let Ok(s) = sb.connect_agent() else {
        return true;
    };
    let req = ExecRequest {
        argv: vec!["true".into()],
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || client::exec(&s, &req, &[]))
        .await
        .unwrap()
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_preset_runs_in_a_namespace_sandbox() {
    if !root() {
        return;
    }
    // The cached preset; building it downloads from the Debian mirror, so that
    // happens only with III_IMAGE_TESTS=1 (as in iii-oci-rootfs's own test).
    let store = iii_oci_rootfs::ImageStore::open(None).unwrap();
    let rootfs = match store.lookup_preset("python") {
        Some(r) => r,
        None if std::env::var("III_IMAGE_TESTS").as_deref() == Ok("1") => {
            let store = iii_oci_rootfs::ImageStore::open(None).unwrap();
            tokio::task::spawn_blocking(move || store.build_preset("python", &mut |_| {}))
                .await
                .unwrap()
                .unwrap()
        }
        None => {
            eprintln!("no cached python preset (III_IMAGE_TESTS=1 builds it); skipped");
            return;
        }
    };
    let rt = runtime_clean().await;
    let mut sp = spec("python", replier(b"x"));
    sp.rootfs = rootfs;
    sp.env = vec![];
    let sb = rt.create(sp).await.unwrap();
    let s = sb.connect_agent().unwrap();
    // No env in the request: the image's PATH and LANG come from the sandbox.
    let req = ExecRequest {
        argv: vec![
            "python3".into(),
            "-c".into(),
            "import os, sys; print(sys.version_info[0], os.environ['LANG'], os.getcwd())".into(),
        ],
        ..Default::default()
    };
    let o = tokio::task::spawn_blocking(move || client::exec(&s, &req, &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (o.code, String::from_utf8_lossy(&o.stdout).into_owned()),
        (0, "3 C.UTF-8 /workspace\n".to_string()),
        "{}",
        out(&o)
    );
    let (pid1, id) = (pid1_of(&rt, sb.id()), sb.id().to_string());
    sb.stop().await.unwrap();
    assert_gone(&rt, &id, pid1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mounts_show_host_directories_read_write_or_read_only() {
    if !root() {
        return;
    }
    let rt = runtime_clean().await;
    let host = tempfile::tempdir().unwrap();
    let (rw, ro) = (host.path().join("rw"), host.path().join("ro"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("given"), "from the host").unwrap();
    let mut s = spec("mounts", 1);
    s.mounts = vec![
        Mount {
            source: rw.clone(),
            target: "/workspace".into(),
            readonly: false,
        },
        Mount {
            source: ro.clone(),
            target: "/opt/given".into(),
            readonly: true,
        },
    ];
    let id = s.id.clone();
    let sb = rt.create(s).await.expect("create");
    let o = sh(
        sb.as_ref(),
        "echo made > /workspace/out && cat /opt/given/given && (echo x > /opt/given/nope 2>/dev/null && echo WROTE || echo refused)",
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from the hostrefused\n",
        "{}",
        out(&o)
    );
    assert_eq!(std::fs::read_to_string(rw.join("out")).unwrap(), "made\n");
    assert!(!ro.join("nope").exists());
    let pid1 = pid1_of(&rt, &id);
    sb.stop().await.expect("stop");
    assert_gone(&rt, &id, pid1);
    // The host directories are untouched by the teardown.
    assert!(rw.join("out").is_file() && ro.join("given").is_file());

    // Bad mounts are refused before anything is made.
    for (source, target) in [
        (host.path().join("missing"), "/w"),
        (rw.clone(), "relative"),
        (rw.clone(), "/a/../../etc"),
        (rw.clone(), "/"),
    ] {
        let mut s = spec("badmount", 1);
        s.mounts = vec![Mount {
            source,
            target: target.into(),
            readonly: false,
        }];
        let id = s.id.clone();
        match rt.create(s).await {
            Err(RuntimeError::InvalidSpec(m)) => assert!(m.contains("mount"), "{m}"),
            Err(e) => panic!("{target}: {e}"),
            Ok(_) => panic!("{target}: created"),
        }
        assert!(!rt.root().join(&id).exists());
    }
}
