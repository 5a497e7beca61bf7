//! Shared fixtures for the tests that run image workers: a real OCI layout holding the
//! `hello-worker` example of `vmm/worker-host` (official Rust SDK) over busybox-static, an
//! engine configured to run it on the namespace runtime, and process probes.
//!
//! Needs root (namespaces, mounts, cgroups), busybox-static and cargo (the binaries are built
//! so they match this checkout).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use iii_oci_rootfs::layout::{busybox_binary_layer, write_layout};
use iii_tests::{free_port, EngineProc, RawWorker};
use serde_json::{json, Value};

pub(crate) struct Built {
    pub(crate) target: PathBuf,
    pub(crate) layout: PathBuf,
}

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the binaries and the image once per test binary.
pub(crate) fn built() -> &'static Built {
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

/// An OCI layout: busybox-static in /bin, the worker at /hello-worker with its libraries at
/// the paths it loads them from; entrypoint the worker, workdir /tmp.
pub(crate) fn make_layout(worker: &Path, dir: &Path) {
    let layer = busybox_binary_layer(
        worker,
        "hello-worker",
        &["root", "tmp", "proc", "sys", "dev", "run", "workspace"],
    )
    .unwrap();
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

pub(crate) struct Setup {
    pub(crate) engine: EngineProc,
    pub(crate) root: tempfile::TempDir,
    pub(crate) _cache: tempfile::TempDir,
    /// `III_HOME`: the workers' logs and state.
    pub(crate) home: tempfile::TempDir,
    pub(crate) ws: u16,
}

pub(crate) fn entry(name: &str) -> String {
    format!(
        "  - name: {name}\n    image: {}\n    config:\n      greeting: {{word: howdy}}\n",
        built().layout.display()
    )
}

pub(crate) fn config(ws: u16, extra: &str) -> String {
    format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n{extra}")
}

pub(crate) fn start(name: &str, watch: bool) -> Setup {
    let b = built();
    // Short: sandbox socket paths live below it.
    let root = tempfile::Builder::new()
        .prefix("iw")
        .tempdir_in("/tmp")
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
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
            ("III_HOME", home.path().to_str().unwrap()),
        ],
    );
    if watch {
        engine.wait_for_log(&["watching the configuration file"]);
    }
    Setup {
        engine,
        root,
        _cache: cache,
        home,
        ws,
    }
}

pub(crate) fn write_config(e: &EngineProc, text: &str) {
    let tmp = e.dir.join(".config.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, e.dir.join("config.yaml")).unwrap();
}

/// Sandbox directories under the state root.
pub(crate) fn sandboxes(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("w-"))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Live processes whose NUL-separated `file` (cmdline or environ) contains every needle.
pub(crate) fn procs_with(file: &str, needles: &[String]) -> Vec<u32> {
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
pub(crate) fn hosts(ws: u16) -> Vec<u32> {
    procs_with(
        "cmdline",
        &[
            "iii-worker-host".into(),
            format!("--engine ws://127.0.0.1:{ws}"),
        ],
    )
}

/// The workload processes (seen from the host) of the engine on port `ws`.
pub(crate) fn workloads(ws: u16) -> Vec<u32> {
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

pub(crate) async fn greet(w: &mut RawWorker) -> Value {
    w.call("hello::greet", json!({"name": "tester"})).await
}

/// Waits until `hello::greet` answers through the engine; returns its result.
pub(crate) async fn until_greets(w: &mut RawWorker, e: &EngineProc) -> Value {
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

pub(crate) fn eventually(limit: Duration, what: &str, e: &EngineProc, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}\n{}", e.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the engine on a config whose `workers:` end with `extra` and expects it to refuse to
/// start: returns its output (stderr, then stdout). A config that wrongly validates would serve
/// forever, so the run is bounded (30 s, then killed and reported as started).
pub(crate) fn refused_at_start(extra: &str) -> String {
    let b = built();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config(free_port(), extra)).unwrap();
    let mut child = Command::new(iii_tests::iii_bin())
        .arg("-c")
        .arg(&file)
        .env("III_WATCH_CONFIG", "0")
        .env("III_HOME", dir.path())
        .env("III_WORKER_HOST_BIN", b.target.join("iii-worker-host"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{extra}: started anyway: {err}");
    err
}
