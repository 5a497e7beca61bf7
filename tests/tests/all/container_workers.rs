//! The user's "Managing Container Workers" walkthrough (seed 003), end to end, with a local
//! registry in place of ghcr.io:
//! 6. build an image of the Python worker of step 6 (official PyPI `iii-sdk` over a locally
//!    built Python base: this machine's `python` preset) and push it to a registry on loopback;
//! 1. `iii worker add localhost:PORT/my-worker:latest` pulls it, writes the config.yaml entry
//!    with the image's ENV under `config:` (every other byte of the file kept) and waits for the
//!    worker, which the running engine starts from its file watcher;
//!    the function answers through `iii trigger`;
//! 4. `iii worker list` shows it; the worker comes back after a crash; it is stopped (and stays
//!    stopped), started again, and its logs hold its output;
//! 5. `iii worker exec` runs a command in it;
//! 3. `iii worker remove` takes it away and the engine stops it; the cached image stays.
//!
//! Seed 003's Python snippet imports `Logger` from `iii`; iii-sdk 0.25 exports it from
//! `iii_helpers.observability`, so the image's worker.py says that (otherwise as the seed).
//!
//! Needs root (namespaces), docker-registry, mkfs.erofs, busybox-static, the python preset (or
//! mmdebstrap to build it), pip with PyPI, and cargo.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iii_oci_rootfs::layout::write_layout_from_tars;
use iii_oci_rootfs::registry::push_layout;
use iii_oci_rootfs::{ImageStore, LowerFormat};
use iii_tests::oci_registry::{enabled, Registry};
use iii_tests::{iii_bin, EngineProc};
use serde_json::json;

use super::image_fixture::{built, procs_with};

/// The iii-sdk the image's worker uses (the version the Python SDK suite pins).
const SDK: &str = "iii-sdk==0.25.0";

const WORKER_PY: &str = r#"import os
from iii import register_worker
from iii_helpers.observability import Logger

iii = register_worker(os.environ.get("III_URL", "ws://localhost:49134"))

def hello(data):
    logger = Logger()
    logger.info("Hello from my OCI worker!", {"input": data})
    return {"message": "Hello!", "foo": os.environ.get("FOO")}

iii.register_function("my-worker::hello", hello)
print("my-worker: registered my-worker::hello", flush=True)
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python base as an uncompressed layer tar (the `python` preset's tree), made once per
/// preset build and kept under target/tmp.
fn base_layer(work: &Path) -> (PathBuf, String) {
    let store = ImageStore::open(None).expect("open the image store");
    let rootfs = match store.lookup_preset("python") {
        Some(r) => r,
        None => store
            .build_preset("python", &mut |l| eprintln!("python preset: {l}"))
            .expect("build the python preset"),
    };
    let cache = workspace().join("target/tmp/seed003");
    std::fs::create_dir_all(&cache).unwrap();
    let tar = cache.join(format!("base-{}.tar", &rootfs.key[..16]));
    let tree = work.join("base-tree");
    std::fs::create_dir_all(&tree).unwrap();
    let fstype = match rootfs.format {
        LowerFormat::Erofs => "erofs",
        LowerFormat::Ext4 => "ext4",
    };
    sh(Command::new("mount")
        .args(["-t", fstype, "-o", "ro,loop"])
        .arg(&rootfs.lower)
        .arg(&tree));
    let src = tree.clone();
    // The base's Python version: the worker's compiled dependencies must match it.
    let py = std::fs::read_dir(src.join("usr/lib"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("python3.") && n[8..].chars().all(|c| c.is_ascii_digit()))
        .max()
        .expect("the python preset has /usr/lib/python3.N");
    if !tar.is_file() {
        let part = tar.with_extension("part");
        sh(Command::new("tar")
            .arg("-C")
            .arg(&src)
            .args(["--numeric-owner", "-cf"])
            .arg(&part)
            .arg("."));
        std::fs::rename(&part, &tar).unwrap();
    }
    sh(Command::new("umount").arg(&tree));
    (tar, py)
}

/// The app layer: worker.py in /app and iii-sdk (from PyPI, for the base's Python) in
/// /usr/local/lib/<python>/dist-packages.
fn app_layer(work: &Path, python: &str) -> PathBuf {
    let tree = work.join("app-tree");
    let deps = tree.join(format!("usr/local/lib/{python}/dist-packages"));
    std::fs::create_dir_all(&deps).unwrap();
    let version = &python["python".len()..];
    sh(Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(["--python-version", version, "--only-binary=:all:"])
        .args([
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
        ])
        .arg("--target")
        .arg(&deps)
        .arg(SDK));
    std::fs::create_dir_all(tree.join("app")).unwrap();
    std::fs::write(tree.join("app/worker.py"), WORKER_PY).unwrap();
    std::fs::write(tree.join("app/requirements.txt"), format!("{SDK}\n")).unwrap();
    let tar = work.join("app.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .args(["app", "usr"]));
    tar
}

/// Builds the image of seed 003 step 6 and pushes it as `reference`.
fn build_and_push(work: &Path, reference: &str) {
    let (base, python) = base_layer(work);
    let app = app_layer(work, &python);
    // The layout moves its layers in: hand it a copy of the cached base.
    let base_copy = work.join("base.tar");
    std::fs::copy(&base, &base_copy).unwrap();
    let layout = work.join("layout");
    write_layout_from_tars(
        &layout,
        &[base_copy, app],
        json!({
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "FOO=bar"],
            "Entrypoint": ["python3", "worker.py"],
            "WorkingDir": "/app",
        }),
    )
    .unwrap();
    push_layout(&layout, reference, &mut |l| eprintln!("push: {l}")).unwrap();
}

/// `iii <args>` in the project with the walkthrough's environment: (code, stdout, stderr).
fn iii(dir: &Path, env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(iii_bin())
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run iii");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The workload (python3 worker.py) processes of worker `name` on the engine at `ws`.
fn workloads(ws: u16, name: &str) -> Vec<u32> {
    procs_with(
        "environ",
        &[
            format!("III_URL=ws://127.0.0.1:{ws}"),
            format!("III_WORKER_NAME={name}"),
        ],
    )
    .into_iter()
    .filter(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| c.starts_with(b"python3\0worker.py"))
            .unwrap_or(false)
    })
    .collect()
}

/// Calls my-worker::hello with `iii trigger` until it answers (or `limit` passes).
fn until_hello(dir: &Path, env: &[(String, String)], ws: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let port = ws.to_string();
    loop {
        let (code, out, err) = iii(
            dir,
            env,
            &[
                "trigger",
                "my-worker::hello",
                "--port",
                &port,
                "--timeout-ms",
                "5000",
            ],
        );
        if code == 0 && out.contains("Hello!") {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "my-worker::hello never answered: {code} {out} {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn seed_003_container_workers_walkthrough() {
    if !enabled() {
        return;
    }
    let b = built();
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/my-worker:latest", reg.addr);
    build_and_push(work.path(), &reference);

    // Short: sandbox socket paths live below it.
    let sandboxes = tempfile::Builder::new()
        .prefix("iw")
        .tempdir_in("/tmp")
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("III_SANDBOX_ROOT", sandboxes.path().to_str().unwrap()),
        ("III_HOME", home.path().to_str().unwrap()),
        ("XDG_CACHE_HOME", cache.path().to_str().unwrap()),
        ("III_WORKER_RUNTIME", "namespace"),
        (
            "III_WORKER_HOST_BIN",
            b.target.join("iii-worker-host").to_str().unwrap(),
        ),
        ("III_INIT", b.target.join("iii-init").to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut engine_env: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    engine_env.push(("III_WATCH_CONFIG", "1"));
    let e = EngineProc::start_with_env(
        |ws, _| {
            format!(
                "# The walkthrough's project.\nworkers:\n  # the engine's socket\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}   # keep\n"
            )
        },
        &engine_env,
    );
    e.wait_for_log(&["watching the configuration file"]);
    let dir = e.dir.clone();
    let ws = e.ws_port;
    let before = std::fs::read_to_string(dir.join("config.yaml")).unwrap();

    // Step 1: add pulls (with progress), writes the entry and waits for the worker.
    let (code, _, err) = iii(&dir, &env, &["worker", "add", &reference]);
    assert_eq!(code, 0, "{err}\n{}", e.log());
    assert!(err.contains(&format!("Pulling {reference}")), "{err}");
    assert!(err.contains("✓ ready in"), "{err}\n{}", e.log());
    let after = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    assert_eq!(
        after,
        format!(
            "{before}  - name: my-worker\n    image: {reference}\n    config:\n      FOO: bar\n"
        ),
        "only the entry is appended"
    );

    // The function answers through the engine, with the image's ENV (via config:) set.
    let out = until_hello(&dir, &env, ws, Duration::from_secs(60));
    assert!(
        out.contains("\"foo\": \"bar\"") || out.contains("\"foo\":\"bar\""),
        "{out}"
    );

    // Step 4: list shows it running.
    let (code, _, err) = iii(&dir, &env, &["worker", "list"]);
    assert_eq!(code, 0, "{err}");
    let row = err
        .lines()
        .find(|l| l.trim_start().starts_with("my-worker"))
        .unwrap_or_else(|| panic!("no my-worker row: {err}"));
    assert!(row.contains("running"), "{row}");

    // A crash: the engine brings it back.
    let pids = workloads(ws, "my-worker");
    assert_eq!(pids.len(), 1, "one workload: {pids:?}");
    sh(Command::new("kill").args(["-9", &pids[0].to_string()]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = workloads(ws, "my-worker");
        if now.len() == 1 && now[0] != pids[0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted: {now:?}\n{}",
            e.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    until_hello(&dir, &env, ws, Duration::from_secs(60));

    // Step 4: stop keeps it stopped (no restart), start brings it back.
    let (code, _, err) = iii(&dir, &env, &["worker", "stop", "my-worker"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ my-worker stopped"), "{err}");
    assert!(
        workloads(ws, "my-worker").is_empty(),
        "stopped, yet running"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        workloads(ws, "my-worker").is_empty(),
        "restarted after a stop"
    );
    let port = ws.to_string();
    let (code, out, _) = iii(
        &dir,
        &env,
        &[
            "trigger",
            "my-worker::hello",
            "--port",
            &port,
            "--timeout-ms",
            "2000",
        ],
    );
    assert_ne!(code, 0, "a stopped worker answered: {out}");
    let (code, _, err) = iii(&dir, &env, &["worker", "start", "my-worker"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ ready in"), "{err}");
    until_hello(&dir, &env, ws, Duration::from_secs(60));

    // Its logs hold the worker's own output.
    let (code, out, err) = iii(&dir, &env, &["worker", "logs", "my-worker"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("my-worker: registered my-worker::hello"),
        "stdout: {out}\nstderr: {err}"
    );

    // Step 5: exec runs a command inside it, in its working directory, exit code passed through.
    let (code, out, err) = iii(
        &dir,
        &env,
        &["worker", "exec", "my-worker", "-e", "LOG_LEVEL=debug", "--", "sh", "-c",
          "pwd; echo $LOG_LEVEL $FOO; python3 -c 'import iii; print(iii.register_worker.__name__)'; exit 3"],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(out, "/app\ndebug bar\nregister_worker\n", "{err}");
    let (code, _, err) = iii(
        &dir,
        &env,
        &[
            "worker",
            "exec",
            "my-worker",
            "--timeout",
            "1s",
            "--",
            "sleep",
            "30",
        ],
    );
    assert_eq!(code, 124, "{err}");

    // Step 3: remove takes the entry away; the engine stops the worker; the image stays.
    let (code, _, err) = iii(&dir, &env, &["worker", "remove", "-y", "my-worker"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("config.yaml")).unwrap(),
        before
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workloads(ws, "my-worker").is_empty() {
        assert!(
            Instant::now() < deadline,
            "still running after remove\n{}",
            e.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let store = ImageStore::open(Some(cache.path().join("iii/images"))).unwrap();
    assert!(
        store.lookup_pulled(&reference).is_some(),
        "the cached image remains after remove"
    );
}
