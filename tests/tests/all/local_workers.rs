//! Local-path workers (`iii worker add ./dir`, workers-and-sandboxes spec section 6): a real Python
//! project (requirements.txt with `iii-sdk`) and a real Node project (package.json with npm
//! `iii-sdk`) added by path, run by the engine through `iii-worker-host --path` on the
//! namespace runtime with the `python`/`node` presets, installing from PyPI/npm through the
//! sandbox's network; their functions are called through the engine, and the second start
//! skips the install. Also: bad manifests and `iii worker verify`.
//!
//! The end-to-end tests need root, mmdebstrap (the presets; built once into the shared image
//! cache), slirp4netns and network access to PyPI and npm.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use iii_tests::{iii_bin, EngineProc, RawWorker};
use serde_json::{json, Value};

use crate::image_fixture::{built, config};

fn temp_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().to_string()[..8]
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `iii worker <args>` in `dir` with `III_HOME` = `home`; returns (exit code, stderr).
fn worker(dir: &Path, home: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(iii_bin())
        .arg("worker")
        .args(args)
        .current_dir(dir)
        .env_remove("III_CONFIG_PATH")
        .env("III_HOME", home)
        .env("III_WORKER_READY_TIMEOUT_SECS", "240")
        .stdin(Stdio::null())
        .output()
        .expect("run iii worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (p, text) in files {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// Clutter every project has that must never reach the workspace.
const EXCLUDED_CLUTTER: &[(&str, &str)] = &[
    ("node_modules/left-over/index.js", "host junk"),
    (".git/HEAD", "ref: refs/heads/main\n"),
    ("__pycache__/main.cpython-311.pyc", "junk"),
    ("sub/.venv/marker", "junk"),
    ("sub/kept.txt", "copied"),
];

/// An engine (config watched) whose local workers keep their state under `home`; returns it,
/// its worker port and the sandbox state root.
fn engine(home: &Path) -> (EngineProc, u16, PathBuf) {
    let b = built();
    let ws = iii_tests::free_port();
    let root = std::env::temp_dir().join(format!("iil{}", &uuid::Uuid::new_v4().to_string()[..6]));
    std::fs::create_dir_all(&root).unwrap();
    let host = b.target.join("iii-worker-host");
    let init = b.target.join("iii-init");
    let e = EngineProc::start_with_env(
        move |_, _| config(ws, ""),
        &[
            ("III_SANDBOX_ROOT", root.to_str().unwrap()),
            ("III_HOME", home.to_str().unwrap()),
            ("III_WORKER_HOST_BIN", host.to_str().unwrap()),
            ("III_INIT", init.to_str().unwrap()),
            ("III_WATCH_CONFIG", "1"),
        ],
    );
    e.wait_for_log(&["watching the configuration file"]);
    (e, ws, root)
}

/// Stops the workers the way a user does (entries removed, the reload stops them), so no
/// sandbox outlives the test, then the engine.
fn shutdown(e: EngineProc, ws: u16, root: &Path) {
    crate::image_fixture::write_config(&e, &config(ws, ""));
    crate::image_fixture::eventually(
        Duration::from_secs(60),
        "the local workers' sandboxes were not stopped",
        &e,
        || crate::image_fixture::sandboxes(root).is_empty(),
    );
    drop(e);
    let _ = std::fs::remove_dir_all(root);
}

/// Calls `function` until it answers (the worker may be restarting); returns the result.
async fn call_until(ws: u16, function: &str, data: Value, e: &EngineProc) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let mut w = RawWorker::connect(&format!("ws://127.0.0.1:{ws}")).await;
        let r = w.call(function, data.clone()).await;
        if r["error"].is_null() && r["result"].is_object() {
            return r["result"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{function} never answered: {r}\n{}",
            e.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn count_lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Appends a `config:` block to entry `name` (the last entry) and waits for the reload.
fn add_config_block(e: &EngineProc, name: &str, block: &str) {
    let path = e.dir.join("config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let last = text.rfind("  - name: ").unwrap();
    assert!(
        text[last..].starts_with(&format!("  - name: {name}\n")),
        "{text}"
    );
    let new = format!("{}\n    config:\n{block}", text.trim_end());
    crate::image_fixture::write_config(e, &new);
}

#[tokio::test]
async fn a_local_python_project_added_by_path_serves_and_installs_once() {
    let home = temp_dir("iii-home");
    let project = temp_dir("pyproj");
    write(
        &project,
        &[
            ("requirements.txt", "iii-sdk==0.25.0\n"),
            (
                "main.py",
                r#"import os
import threading

from iii import InitOptions, register_worker

worker = register_worker(os.environ["III_URL"], InitOptions(worker_name=os.environ["III_WORKER_NAME"]))


def add(data):
    return {
        "sum": data["a"] + data["b"],
        "greeting": os.environ.get("GREETING"),
        "mode": os.environ.get("MODE"),
        "url": os.environ.get("III_URL"),
        "cwd": os.getcwd(),
        "kept": os.path.exists("sub/kept.txt"),
    }


worker.register_function("pylocal::add", add)
print("pylocal registered", flush=True)
threading.Event().wait()
"#,
            ),
            (
                "iii.worker.yaml",
                "name: pylocal\nscripts:\n  install: \"python3 -m venv .venv && .venv/bin/pip install --no-cache-dir -q -r requirements.txt && echo run >> .venv/install-count\"\n  start: .venv/bin/python main.py\nenv:\n  GREETING: hello\n  III_URL: ws://not-the-engine:1\n",
            ),
        ],
    );
    write(&project, EXCLUDED_CLUTTER);
    let (e, ws, root) = engine(&home);
    // The add waits until the worker connects (setup+install included).
    let (rc, err) = worker(&e.dir, &home, &["add", project.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}\n{}", e.log());
    assert!(err.contains("✓ pylocal added to config.yaml"), "{err}");
    assert!(err.contains("`env.III_URL` is ignored"), "{err}");
    assert!(err.contains("✓ ready in"), "{err}\n{}", e.log());
    let canonical = std::fs::canonicalize(&project).unwrap();
    let text = std::fs::read_to_string(e.dir.join("config.yaml")).unwrap();
    assert!(
        text.ends_with(&format!(
            "  - name: pylocal\n    worker_path: {}\n",
            canonical.display()
        )),
        "{text}"
    );
    let r = call_until(ws, "pylocal::add", json!({"a": 2, "b": 3}), &e).await;
    assert_eq!(r["sum"], 5);
    assert_eq!(r["greeting"], "hello");
    assert_eq!(
        r["url"],
        format!("ws://127.0.0.1:{ws}"),
        "III_URL is reserved"
    );
    assert_eq!(r["cwd"], "/workspace");
    assert_eq!(r["kept"], true);
    assert!(e.log().contains("setup+install: running"));

    let managed = home.join("managed/pylocal");
    let wsdir = managed.join("workspace");
    assert!(wsdir.join("main.py").is_file() && wsdir.join("sub/kept.txt").is_file());
    for x in [
        "node_modules/left-over",
        ".git",
        "__pycache__/main.cpython-311.pyc",
        "sub/.venv",
    ] {
        assert!(!wsdir.join(x).exists(), "{x} was copied into the workspace");
    }
    assert!(managed.join(".iii-prepared").is_file());
    assert_eq!(count_lines(&wsdir.join(".venv/install-count")), 1);
    // The project on the host is never written.
    assert!(!project.join(".venv").exists());

    // A config: block changes the entry: the engine restarts the worker, which now skips
    // setup+install and sees the setting.
    let before = e.log().matches("setup+install: cached").count();
    add_config_block(&e, "pylocal", "      mode: fast\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = call_until(ws, "pylocal::add", json!({"a": 1, "b": 1}), &e).await;
        if r["mode"] == "fast" {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "config never reached the worker\n{}",
            e.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(r["sum"], 2);
    assert_eq!(
        e.log().matches("setup+install: cached").count(),
        before + 1,
        "{}",
        e.log()
    );
    assert_eq!(
        count_lines(&wsdir.join(".venv/install-count")),
        1,
        "install ran again"
    );

    // Already present: refused with the options, file untouched.
    let text = std::fs::read_to_string(e.dir.join("config.yaml")).unwrap();
    let (rc, err) = worker(
        &e.dir,
        &home,
        &["add", project.to_str().unwrap(), "--no-wait"],
    );
    assert_eq!(rc, 1);
    assert!(
        err.contains("[W111]") && err.contains("--force") && err.contains("--reset-config"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(e.dir.join("config.yaml")).unwrap(),
        text
    );
    let _ = std::fs::remove_dir_all(&project);
    shutdown(e, ws, &root);
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn a_local_node_project_is_detected_from_package_json_and_installs_once() {
    let home = temp_dir("iii-home");
    let project = temp_dir("nodelocal");
    let name = project.file_name().unwrap().to_string_lossy().into_owned();
    write(
        &project,
        &[
            (
                "package.json",
                r#"{
  "name": "nodelocal",
  "private": true,
  "type": "module",
  "scripts": {
    "dev": "node main.mjs",
    "postinstall": "echo run >> node_modules/.install-count"
  },
  "dependencies": { "iii-sdk": "0.22.1" }
}
"#,
            ),
            (
                "main.mjs",
                r#"import { registerWorker } from 'iii-sdk'

const sdk = registerWorker(process.env.III_URL, { workerName: process.env.III_WORKER_NAME })
sdk.registerFunction('nodelocal::hello', async (data) => ({
  hi: data.name,
  mode: process.env.MODE ?? null,
  worker: process.env.III_WORKER_NAME,
}))
setInterval(() => {}, 1 << 30)
"#,
            ),
        ],
    );
    write(&project, EXCLUDED_CLUTTER);
    let (e, ws, root) = engine(&home);
    let (rc, err) = worker(&e.dir, &home, &["add", project.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}\n{}", e.log());
    assert!(
        err.contains("local typescript project") && err.contains("from package.json"),
        "{err}"
    );
    assert!(err.contains("✓ ready in"), "{err}\n{}", e.log());
    let r = call_until(ws, "nodelocal::hello", json!({"name": "n"}), &e).await;
    assert_eq!(
        (r["hi"].as_str(), r["worker"].as_str()),
        (Some("n"), Some(name.as_str()))
    );
    let wsdir = home.join("managed").join(&name).join("workspace");
    assert_eq!(count_lines(&wsdir.join("node_modules/.install-count")), 1);
    assert!(wsdir.join("node_modules/iii-sdk").is_dir());
    assert!(!wsdir.join("node_modules/left-over").exists() && !wsdir.join(".git").exists());

    add_config_block(&e, &name, "      mode: slow\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = call_until(ws, "nodelocal::hello", json!({"name": "m"}), &e).await;
        if r["mode"] == "slow" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "config never reached the worker\n{}",
            e.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(e.log().contains("setup+install: cached"), "{}", e.log());
    assert_eq!(
        count_lines(&wsdir.join("node_modules/.install-count")),
        1,
        "install ran again"
    );
    let _ = std::fs::remove_dir_all(&project);
    shutdown(e, ws, &root);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn bad_manifests_are_refused_with_the_key_and_line_and_leave_config_untouched() {
    let home = temp_dir("iii-home");
    let proj = temp_dir("iii-wk");
    let original = "# mine\nworkers:\n  - name: http   # keep\n";
    std::fs::write(proj.join("config.yaml"), original).unwrap();
    let w = proj.join("w");
    std::fs::create_dir_all(&w).unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "name: w\nscripts:\n  start: go\nenv:\n  PORT: 8080\n",
            &["`env.PORT`", "line 5", "\"8080\""],
        ),
        (
            "name: w\nscripts:\n  strat: go\nbogus: 1\n",
            &[
                "unknown key",
                "`scripts.strat` (line 3)",
                "`bogus` (line 4)",
            ],
        ),
        (
            "name: w\nscripts: go\n",
            &["line 2", "`scripts` must be a mapping"],
        ),
        ("scripts:\n  start: go\n", &["`name` is required"]),
        ("name: w\nname: v\n", &["duplicate", "line"]),
        (
            "name: a/b\nscripts:\n  start: go\n",
            &["[W101]", "invalid characters", "`name` in"],
        ),
        (
            "name: w\nscripts:\n  start: go\ndependencies:\n  x: \"not a range\"\n",
            &["`dependencies.x`", "line 5"],
        ),
        (
            "name: w\nresources:\n  cpus: many\n",
            &["`resources.cpus`", "non-negative integer", "line 3"],
        ),
        ("name: w\n", &["no way to start the worker"]),
        ("name: http\nscripts:\n  start: go\n", &["builtin"]),
    ];
    for (manifest, needles) in cases {
        std::fs::write(w.join("iii.worker.yaml"), manifest).unwrap();
        let (rc, err) = worker(&proj, &home, &["add", "./w", "--no-wait"]);
        assert_eq!(rc, 1, "{manifest}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{manifest}: missing {n:?} in {err}");
        }
        assert_eq!(
            std::fs::read_to_string(proj.join("config.yaml")).unwrap(),
            original
        );
    }
    std::fs::remove_file(w.join("iii.worker.yaml")).unwrap();
    let (rc, err) = worker(&proj, &home, &["add", "./w", "--no-wait"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("No project manifest detected") && err.contains("package.json"),
        "{err}"
    );
    let (rc, err) = worker(&proj, &home, &["add", "./missing", "--no-wait"]);
    assert_eq!(rc, 1);
    assert!(err.contains("Cannot resolve path './missing'"), "{err}");
    std::fs::write(w.join("iii.worker.yaml"), "x".repeat(70 * 1024)).unwrap();
    let (rc, err) = worker(&proj, &home, &["add", "./w", "--no-wait"]);
    assert_eq!(rc, 1);
    assert!(err.contains("at most 65536"), "{err}");
    assert_eq!(
        std::fs::read_to_string(proj.join("config.yaml")).unwrap(),
        original
    );
    // A good one: written with the canonical path, the rest of the file kept byte for byte.
    std::fs::write(
        w.join("iii.worker.yaml"),
        "name: w\nscripts:\n  install: \"\"\n  start: go\n",
    )
    .unwrap();
    let (rc, err) = worker(&proj, &home, &["add", "./w/../w", "--no-wait"]);
    assert_eq!(rc, 0, "{err}");
    let canonical = std::fs::canonicalize(&w).unwrap();
    assert_eq!(
        std::fs::read_to_string(proj.join("config.yaml")).unwrap(),
        format!(
            "{original}  - name: w\n    worker_path: {}\n",
            canonical.display()
        )
    );
    let _ = std::fs::remove_dir_all(&proj);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn verify_checks_the_lock_and_strictly_the_local_dependencies() {
    let home = temp_dir("iii-home");
    let proj = temp_dir("iii-wk");
    let (rc, err) = worker(&proj, &home, &["verify"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("[W150]") && err.contains("iii.lock not found"),
        "{err}"
    );
    let (rc, err) = worker(&proj, &home, &["add", "http"]);
    assert_eq!(rc, 0, "{err}");
    let w = proj.join("w");
    std::fs::create_dir_all(&w).unwrap();
    let manifest = |range: &str| {
        format!(
            "name: w\nscripts:\n  install: \"\"\n  start: go\ndependencies:\n  http: \"{range}\"\n"
        )
    };
    std::fs::write(w.join("iii.worker.yaml"), manifest("^9")).unwrap();
    let (rc, err) = worker(&proj, &home, &["add", "./w", "--no-wait"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("depends on http ^9") && err.contains("outside ^9"),
        "{err}"
    );
    let (rc, err) = worker(&proj, &home, &["verify"]);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("✓ config.yaml matches iii.lock"), "{err}");
    assert!(!err.contains("freshness"), "{err}");
    let (rc, err) = worker(&proj, &home, &["verify", "--strict"]);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("[W150]") && err.contains("w (") && err.contains("depends on http ^9"),
        "{err}"
    );
    std::fs::write(w.join("iii.worker.yaml"), manifest(">=0.1")).unwrap();
    let (rc, err) = worker(&proj, &home, &["verify", "--strict"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("✓ declaration freshness checks passed"),
        "{err}"
    );
    // A registry-type entry without a lock entry fails even without --strict.
    let mut text = std::fs::read_to_string(proj.join("config.yaml")).unwrap();
    text.push_str("  - name: pdfkit\n");
    std::fs::write(proj.join("config.yaml"), text).unwrap();
    let (rc, err) = worker(&proj, &home, &["verify"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("iii.lock is missing worker(s): pdfkit"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&proj);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn worker_path_entries_are_validated_and_a_broken_project_is_reported_by_the_host() {
    let b = built();
    for (extra, needle) in [
        (
            "  - name: w\n    worker_path: relative/dir\n".to_string(),
            "is not an absolute path; write the project directory's full path",
        ),
        (
            "  - name: w\n    worker_path: /tmp\n    image: x/y:1\n".to_string(),
            "not both",
        ),
    ] {
        let dir = temp_dir("iii-wp");
        let file = dir.join("config.yaml");
        std::fs::write(&file, config(iii_tests::free_port(), &extra)).unwrap();
        let out = Command::new(iii_bin())
            .arg("-c")
            .arg(&file)
            .env("III_WATCH_CONFIG", "0")
            .env("III_WORKER_HOST_BIN", b.target.join("iii-worker-host"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{extra}: started anyway: {err}");
        assert!(err.contains(needle), "{extra}: no {needle:?} in: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    // The project breaks after it was added: the worker host names the manifest's problem
    // (the engine keeps retrying with back-off) and nothing is run.
    let home = temp_dir("iii-home");
    let project = temp_dir("broken");
    write(
        &project,
        &[(
            "iii.worker.yaml",
            "name: broken\nscripts:\n  start: go\n  oops: 1\n",
        )],
    );
    let (e, ws, root) = engine(&home);
    let text = std::fs::read_to_string(e.dir.join("config.yaml")).unwrap();
    crate::image_fixture::write_config(
        &e,
        &format!(
            "{text}  - name: broken\n    worker_path: {}\n",
            project.display()
        ),
    );
    let log = e.wait_for_log(&["unknown key(s) `scripts.oops` (line 4)"]);
    assert!(!log.contains("sandbox ready"), "{log}");
    shutdown(e, ws, &root);
    let _ = std::fs::remove_dir_all(&project);
    let _ = std::fs::remove_dir_all(&home);
}
