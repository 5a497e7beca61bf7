//! Image workers (`- name: <own name>` with `image:`): the engine runs each through
//! `iii-worker-host` in a namespace sandbox. The image is a real OCI layout holding a real
//! worker (the `hello-worker` example of `vmm/worker-host`, on the official Rust SDK) and a
//! busybox-static root. Checked as a user sees it: the function answers through the engine with
//! the entry's `config:` in its environment; a killed workload comes back; a reload that
//! removes the entry stops it and leaves no sandbox; a reload that adds it starts it; an engine
//! SIGKILL takes the worker host and its sandbox with it.
//!
//! Needs root (namespaces, mounts, cgroups), busybox-static and cargo (the test builds the
//! worker host, the example worker and `iii-init` so they match this checkout).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use iii_oci_rootfs::layout::{layer_tar, write_layout, Entry};
use iii_tests::{free_port, EngineProc, RawWorker};
use serde_json::{json, Value};

struct Built {
    target: PathBuf,
    layout: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the binaries and the image once per test binary.
fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(workspace())
            .args([
                "build",
                "-p",
                "iii-worker-host",
                "--bins",
                "--example",
                "hello-worker",
                "-p",
                "iii-guest-init",
            ])
            .status()
            .expect("run cargo");
        assert!(st.success(), "building the worker host and example failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace().join("target"))
            .join("debug");
        let layout = std::env::temp_dir().join(format!("iii-imgw-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&layout);
        make_layout(&target.join("examples/hello-worker"), &layout);
        Built { target, layout }
    })
}

/// The shared libraries `bin` loads (absolute paths, as `ldd` resolves them).
fn libraries(bin: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(bin).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(p.to_string());
        }
    }
    libs
}

/// An OCI layout: busybox-static in /bin, the worker at /hello-worker with its libraries at
/// the paths it loads them from; entrypoint the worker, workdir /tmp.
fn make_layout(worker: &Path, dir: &Path) {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox-static is not installed (apt-get install busybox-static)");
    let busybox = std::fs::read(bb).unwrap();
    let worker_bytes = std::fs::read(worker).unwrap();
    let libs: Vec<(String, Vec<u8>)> = libraries(worker)
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p.trim_start_matches('/').to_string(), data)
        })
        .collect();
    let mut dirs: Vec<String> = [
        "bin",
        "etc",
        "root",
        "tmp",
        "proc",
        "sys",
        "dev",
        "run",
        "workspace",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (p, _) in &libs {
        let mut acc = String::new();
        for part in Path::new(p).parent().unwrap().iter() {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(&part.to_string_lossy());
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
            }
        }
    }
    let mut entries: Vec<Entry<'_>> = dirs
        .iter()
        .map(|d| Entry::Dir {
            path: d,
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::File {
        path: "bin/busybox",
        mode: 0o755,
        data: &busybox,
    });
    entries.push(Entry::Symlink {
        path: "bin/sh",
        target: "busybox",
    });
    entries.push(Entry::File {
        path: "etc/passwd",
        mode: 0o644,
        data: b"root:x:0:0:root:/root:/bin/sh\n",
    });
    entries.push(Entry::File {
        path: "hello-worker",
        mode: 0o755,
        data: &worker_bytes,
    });
    for (p, data) in &libs {
        entries.push(Entry::File {
            path: p,
            mode: 0o755,
            data,
        });
    }
    let layer = layer_tar(&entries).unwrap();
    write_layout(
        dir,
        &[layer],
        json!({
            "Entrypoint": ["/hello-worker"],
            "Env": ["PATH=/bin", "GREETING_WORD=image-default"],
            "WorkingDir": "/tmp",
        }),
    )
    .unwrap();
}

struct Setup {
    engine: EngineProc,
    root: tempfile::TempDir,
    _cache: tempfile::TempDir,
    ws: u16,
}

fn entry(name: &str) -> String {
    format!(
        "  - name: {name}\n    image: {}\n    config:\n      greeting: {{word: howdy}}\n",
        built().layout.display()
    )
}

fn config(ws: u16, extra: &str) -> String {
    format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n{extra}")
}

fn start(name: &str, watch: bool) -> Setup {
    let b = built();
    // Short: sandbox socket paths live below it.
    let root = tempfile::Builder::new()
        .prefix("iw")
        .tempdir_in("/tmp")
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let ws = free_port();
    let host = b.target.join("iii-worker-host");
    let init = b.target.join("iii-init");
    let extra = entry(name);
    let engine = EngineProc::start_with_env(
        move |_, _| config(ws, &extra),
        &[
            ("III_SANDBOX_ROOT", root.path().to_str().unwrap()),
            ("XDG_CACHE_HOME", cache.path().to_str().unwrap()),
            ("III_WORKER_RUNTIME", "namespace"),
            ("III_WORKER_HOST_BIN", host.to_str().unwrap()),
            ("III_INIT", init.to_str().unwrap()),
            ("III_WATCH_CONFIG", if watch { "1" } else { "0" }),
        ],
    );
    if watch {
        engine.wait_for_log(&["watching the configuration file"]);
    }
    Setup {
        engine,
        root,
        _cache: cache,
        ws,
    }
}

fn write_config(e: &EngineProc, text: &str) {
    let tmp = e.dir.join(".config.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, e.dir.join("config.yaml")).unwrap();
}

/// Sandbox directories under the state root.
fn sandboxes(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("w-"))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Live processes whose NUL-separated `file` (cmdline or environ) contains every needle.
fn procs_with(file: &str, needles: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let text = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
        let text = String::from_utf8_lossy(&text).replace('\0', " ");
        if needles.iter().all(|n| text.contains(n.as_str())) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// The worker host processes of the engine on port `ws`.
fn hosts(ws: u16) -> Vec<u32> {
    procs_with(
        "cmdline",
        &[
            "iii-worker-host".into(),
            format!("--engine ws://127.0.0.1:{ws}"),
        ],
    )
}

/// The workload processes (seen from the host) of the engine on port `ws`.
fn workloads(ws: u16) -> Vec<u32> {
    procs_with(
        "environ",
        &[
            format!("III_URL=ws://127.0.0.1:{ws}"),
            "III_WORKER_NAME=".into(),
        ],
    )
    .into_iter()
    .filter(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| c.starts_with(b"/hello-worker"))
            .unwrap_or(false)
    })
    .collect()
}

async fn greet(w: &mut RawWorker) -> Value {
    w.call("hello::greet", json!({"name": "tester"})).await
}

/// Waits until `hello::greet` answers through the engine; returns its result.
async fn until_greets(w: &mut RawWorker, e: &EngineProc) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = greet(w).await;
        if r["error"].is_null() && r["result"].is_object() {
            return r["result"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "hello::greet never answered: {r}\n{}",
            e.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn eventually(limit: Duration, what: &str, e: &EngineProc, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}\n{}", e.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn an_image_worker_serves_comes_back_and_follows_reloads() {
    let s = start("hello", true);
    let mut w = RawWorker::connect(&s.engine.url()).await;
    let r = until_greets(&mut w, &s.engine).await;
    // The entry's config (flattened) overrides the image's ENV; the image's WorkingDir holds.
    assert_eq!(r["greeting"], "howdy, tester", "{r}");
    assert_eq!(r["worker"], "hello", "{r}");
    assert_eq!(r["cwd"], "/tmp", "{r}");
    let first = sandboxes(s.root.path());
    assert_eq!(first.len(), 1, "one sandbox: {first:?}");
    // Its output reaches the engine's log under its name.
    s.engine
        .wait_for_log(&["hello-worker hello connecting to ws://127.0.0.1:"]);

    // The workload dies: the worker host stops the sandbox and exits; the engine restarts it.
    let pids = workloads(s.ws);
    assert_eq!(pids.len(), 1, "one workload: {pids:?}");
    Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    s.engine.wait_for_log(&["hello exited", "restarting in 1s"]);
    let r = until_greets(&mut w, &s.engine).await;
    assert_eq!(r["greeting"], "howdy, tester", "{r}");
    eventually(
        Duration::from_secs(30),
        "the first sandbox stayed",
        &s.engine,
        || {
            let now = sandboxes(s.root.path());
            now.len() == 1 && now != first
        },
    );

    assert_eq!(hosts(s.ws).len(), 1);

    // A reload that removes the entry stops it: no worker host, no sandbox, no function.
    write_config(&s.engine, &config(s.ws, ""));
    eventually(
        Duration::from_secs(30),
        "the removed worker's sandbox or host stayed",
        &s.engine,
        || sandboxes(s.root.path()).is_empty() && hosts(s.ws).is_empty(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = greet(&mut w).await;
        if !r["error"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "hello::greet still answers: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Added back: it starts again.
    write_config(&s.engine, &config(s.ws, &entry("hello")));
    let r = until_greets(&mut w, &s.engine).await;
    assert_eq!(r["worker"], "hello", "{r}");
    let host = hosts(s.ws);
    assert_eq!(host.len(), 1, "{host:?}");

    // A reload that adds a second worker keeps the first one's host running.
    write_config(
        &s.engine,
        &config(s.ws, &format!("{}{}", entry("hello"), entry("hello-two"))),
    );
    eventually(
        Duration::from_secs(60),
        "the second worker did not start",
        &s.engine,
        || sandboxes(s.root.path()).len() == 2,
    );
    assert!(alive(host[0]), "an unchanged worker was restarted");

    // A changed entry restarts (new host process), the other keeps its host.
    let two: Vec<u32> = hosts(s.ws).into_iter().filter(|p| *p != host[0]).collect();
    assert_eq!(two.len(), 1, "{two:?}");
    write_config(
        &s.engine,
        &config(
            s.ws,
            &format!(
                "{}{}",
                entry("hello"),
                entry("hello-two").replace("howdy", "hi")
            ),
        ),
    );
    eventually(
        Duration::from_secs(60),
        "the changed worker did not restart",
        &s.engine,
        || {
            let now = hosts(s.ws);
            !alive(two[0]) && now.len() == 2 && now.contains(&host[0])
        },
    );
    eventually(
        Duration::from_secs(60),
        "the changed worker left a sandbox or did not start one",
        &s.engine,
        || sandboxes(s.root.path()).len() == 2 && workloads(s.ws).len() == 2,
    );

    // The engine stops the way a service manager stops it: every worker and sandbox goes.
    let mut s = s;
    Command::new("kill")
        .args(["-TERM", &s.engine.child.id().to_string()])
        .status()
        .unwrap();
    let status = s.engine.child.wait().unwrap();
    assert!(
        status.success(),
        "engine exit {status}:\n{}",
        s.engine.log()
    );
    assert!(hosts(s.ws).is_empty(), "worker hosts outlived the engine");
    assert!(
        sandboxes(s.root.path()).is_empty(),
        "sandboxes outlived the engine: {:?}\n{}",
        sandboxes(s.root.path()),
        s.engine.log()
    );
}

#[tokio::test]
async fn an_engine_sigkill_takes_the_worker_host_and_its_sandbox() {
    let mut s = start("hello-k", false);
    let mut w = RawWorker::connect(&s.engine.url()).await;
    until_greets(&mut w, &s.engine).await;
    let host = hosts(s.ws);
    assert_eq!(host.len(), 1, "{host:?}");
    assert_eq!(sandboxes(s.root.path()).len(), 1);
    let _ = s.engine.child.kill();
    let _ = s.engine.child.wait();
    eventually(
        Duration::from_secs(30),
        "the worker host outlived the engine",
        &s.engine,
        || !alive(host[0]),
    );
    // The worker host stops its sandbox on the way out. When it cannot (a known weak spot: a
    // panic on the engine's closed stderr can end it first), the sandbox is an orphan, and the
    // next worker host cleans it up when the engine starts again. Either way nothing stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(sandboxes(s.root.path()).is_empty() && workloads(s.ws).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = sandboxes(s.root.path());
    if !left.is_empty() {
        s.engine.kill9_and_restart();
        eventually(
            Duration::from_secs(60),
            "the orphaned sandbox was not cleaned up by the next start",
            &s.engine,
            || {
                let now = sandboxes(s.root.path());
                left.iter().all(|l| !now.contains(l))
            },
        );
    }
}

#[test]
fn image_entries_are_validated_before_anything_starts() {
    let b = built();
    for (extra, needle) in [
        (
            "  - name: w\n    image: \"\"\n".to_string(),
            "image reference",
        ),
        (
            format!(
                "  - name: w\n    image: {}\n    config: [1]\n",
                b.layout.display()
            ),
            "a mapping of settings",
        ),
        (
            format!(
                "  - name: w\n    image: {}\n    extra: 1\n",
                b.layout.display()
            ),
            "extra",
        ),
        (
            format!(
                "  - name: w\n    image: {0}\n  - name: w\n    image: {0}\n",
                b.layout.display()
            ),
            "listed twice",
        ),
        ("  - name: iii-image-workers\n".to_string(), "reserved"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, config(free_port(), &extra)).unwrap();
        let mut child = Command::new(iii_tests::iii_bin())
            .arg("-c")
            .arg(&file)
            .env("III_WATCH_CONFIG", "0")
            .env("III_WORKER_HOST_BIN", b.target.join("iii-worker-host"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A file that wrongly validates would serve forever: give it a bound.
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{extra}: started anyway: {err}");
        assert!(err.contains(needle), "{extra}: no {needle:?} in: {err}");
    }
}
