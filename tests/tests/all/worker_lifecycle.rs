//! Managed workers' lifecycle as a user drives it: `iii worker status|stop|start|restart|logs`
//! against a real engine running the real `hello-worker` image (see `image_fixture`), and the
//! engine's `worker::*` functions underneath. Also the errors: an unknown worker, a builtin,
//! an engine that is not running, bad `worker_path:` entries.
//!
//! Needs what `image_workers` needs (root, busybox-static, cargo).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iii_tests::{free_port, iii_bin, EngineProc, RawWorker};
use serde_json::{json, Value};

use super::image_fixture::*;

type Life = Setup;

/// An engine running image worker `name` (the fixture sets `III_HOME` to a temp dir).
fn start_life(name: &str) -> Life {
    start(name, false)
}

fn cli(dir: &Path, home: &Path) -> Command {
    let mut c = Command::new(iii_bin());
    c.arg("worker")
        .current_dir(dir)
        .env_remove("III_CONFIG_PATH")
        .env("III_HOME", home)
        .env("III_WORKER_READY_TIMEOUT_SECS", "90")
        .stdin(Stdio::null());
    c
}

/// `iii worker <args>` in the engine's directory: (exit code, stdout, stderr).
fn worker(l: &Life, args: &[&str]) -> (i32, String, String) {
    run(cli(&l.engine.dir, l.home.path()).args(args))
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run iii worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status_row(w: &mut RawWorker, name: &str) -> Value {
    let r = w.call("worker::status", json!({ "name": name })).await;
    assert!(r["error"].is_null(), "{r}");
    r["result"]["workers"][0].clone()
}

async fn connected(w: &mut RawWorker, name: &str) -> bool {
    let r = w.call("engine::workers::list", json!({})).await;
    r["result"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == name && x["status"] != "disconnected")
}

/// The first line of `status --no-watch`.
fn headline(l: &Life, name: &str) -> (i32, String) {
    let (code, out, err) = worker(l, &["status", name, "--no-watch"]);
    assert_eq!(out, "", "status writes to stderr");
    (code, err.lines().next().unwrap_or_default().to_string())
}

/// Reads `child`'s stderr lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test]
async fn status_stop_start_restart_crash_and_logs() {
    let l = start_life("hello");
    // Right after start-up the worker is on its way: status says so and exits 0.
    let (code, first) = headline(&l, "hello");
    assert_eq!(code, 0, "{first}");
    assert!(
        first.contains("starting") || first.contains("booting"),
        "status right after start: {first}"
    );
    let mut w = RawWorker::connect(&l.engine.url()).await;
    until_greets(&mut w, &l.engine).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, h) = headline(&l, "hello");
        if h == "hello: ready" {
            assert_eq!(code, 0);
            break;
        }
        assert!(Instant::now() < deadline, "status never said ready: {h}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let row = status_row(&mut w, "hello").await;
    assert_eq!(
        (
            row["state"].as_str(),
            row["kind"].as_str(),
            row["restarts"].as_u64()
        ),
        (Some("running"), Some("image"), Some(0)),
        "{row}"
    );
    assert_eq!(
        row["logs_dir"],
        l.home.path().join("logs/hello").display().to_string()
    );

    // Its output is in its log files; `logs` prints them.
    let (code, out, err) = worker(&l, &["logs", "hello"]);
    assert_eq!(code, 0, "{err}");
    let both = format!("{out}{err}");
    assert!(
        both.contains("hello connecting to ws://127.0.0.1:"),
        "logs: {both}"
    );
    use std::os::unix::fs::PermissionsExt;
    let log = l.home.path().join("logs/hello/stderr.log");
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // `logs -f` follows: the workload is killed, and the worker host's report of it shows up.
    let mut follow = cli(&l.engine.dir, l.home.path())
        .args(["logs", "hello", "-f"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut follow);
    assert!(
        wait_line(&rx, "sandbox ready", Duration::from_secs(10)),
        "logs -f printed no tail"
    );
    let pids = workloads(l.ws);
    assert_eq!(pids.len(), 1, "{pids:?}");
    Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    let followed = wait_line(&rx, "the workload exited", Duration::from_secs(20));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(followed, "logs -f did not show the new lines");

    // The crash is restarted with back-off and counted.
    until_greets(&mut w, &l.engine).await;
    let row = status_row(&mut w, "hello").await;
    assert!(row["restarts"].as_u64() >= Some(1), "{row}");
    assert!(row["last_exit"].is_string(), "{row}");

    // Stop: gone from the engine, no host, no sandbox, and not brought back.
    let (code, _, err) = worker(&l, &["stop", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ hello stopped"), "{err}");
    assert!(hosts(l.ws).is_empty(), "the worker host outlived the stop");
    eventually(
        Duration::from_secs(10),
        "the stopped worker's sandbox stayed",
        &l.engine,
        || sandboxes(l.root.path()).is_empty(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected(&mut w, "hello").await {
        assert!(Instant::now() < deadline, "hello is still connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(hosts(l.ws).is_empty(), "a stopped worker was restarted");
    assert!(sandboxes(l.root.path()).is_empty());
    assert!(!connected(&mut w, "hello").await);
    assert_eq!(status_row(&mut w, "hello").await["state"], "stopped");
    assert_eq!(headline(&l, "hello"), (0, "hello: stopped".to_string()));
    let (code, _, err) = worker(&l, &["stop", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already stopped"), "{err}");

    // Start: back, and callable; start waits for it to connect.
    let (code, _, err) = worker(&l, &["start", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("✓ hello started") && err.contains("ready in"),
        "{err}"
    );
    let r = until_greets(&mut w, &l.engine).await;
    assert_eq!(r["worker"], "hello", "{r}");
    let (_, _, err) = worker(&l, &["start", "hello", "--no-wait"]);
    assert!(err.contains("already running"), "{err}");

    // Restart: a new worker host, callable again.
    let before = hosts(l.ws);
    assert_eq!(before.len(), 1, "{before:?}");
    let (code, _, err) = worker(&l, &["restart", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ hello restarted"), "{err}");
    assert!(!alive(before[0]), "restart kept the old worker host");
    let after = hosts(l.ws);
    assert_eq!(after.len(), 1, "{after:?}");
    until_greets(&mut w, &l.engine).await;
    assert_eq!(status_row(&mut w, "hello").await["state"], "running");

    // Unknown names and builtins get clear errors, on the CLI and from the engine.
    for args in [
        &["stop", "nope"][..],
        &["start", "nope"],
        &["restart", "nope"],
        &["logs", "nope"],
    ] {
        let (code, _, err) = worker(&l, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with("error: [W110] "), "{args:?}: {err}");
    }
    let (code, h) = headline(&l, "nope");
    assert_eq!(code, 1, "{h}");
    assert!(h.contains("not in the config file"), "{h}");
    let (code, _, err) = worker(&l, &["stop", "iii-worker-manager"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("runs inside the engine"), "{err}");
    for f in ["worker::stop", "worker::start", "worker::status"] {
        let r = w.call(f, json!({"name": "nope"})).await;
        assert_eq!(r["error"]["code"], "W110", "{f}: {r}");
        assert_eq!(
            r["error"]["message"],
            "worker 'nope' is not a managed worker in the config file"
        );
    }
}

#[test]
fn a_stopped_engine_and_a_worker_without_logs() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("config.yaml"),
        config(port, "  - name: hello\n    image: localhost/hello:1\n"),
    )
    .unwrap();
    let w = |args: &[&str]| run(cli(dir.path(), home.path()).args(args));
    for args in [
        &["stop", "hello"][..],
        &["start", "hello", "--no-wait"],
        &["restart", "hello"],
    ] {
        let (code, _, err) = w(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("not running on port {port}"))
                && err.contains("start it with `iii`"),
            "{args:?}: {err}"
        );
        assert!(err.starts_with("error: [W"), "{err}");
    }
    let (code, _, err) = w(&["status", "hello", "--no-watch"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("engine not running"), "{err}");
    // --port overrides the file's port.
    let other = free_port();
    let (_, _, err) = w(&["stop", "hello", "--port", &other.to_string()]);
    assert!(err.contains(&format!("port {other}")), "{err}");
    // A known worker with no logs yet is no error; an unknown one is.
    let (code, out, err) = w(&["logs", "hello"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("No logs available for hello yet"), "{err}");
    let (code, _, err) = w(&["logs", "other"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn worker_path_entries_are_validated_at_start_up() {
    let b = built();
    let project = tempfile::tempdir().unwrap();
    let file_not_dir = project.path().join("f");
    std::fs::write(&file_not_dir, "x").unwrap();
    for (extra, needle) in [
        (
            "  - name: w\n    worker_path: relative/dir\n".to_string(),
            "not an absolute path",
        ),
        (
            "  - name: w\n    worker_path: /nonexistent/iii-project\n".to_string(),
            "No such file",
        ),
        (
            format!("  - name: w\n    worker_path: {}\n", file_not_dir.display()),
            "is not a directory",
        ),
        (
            format!(
                "  - name: w\n    worker_path: {}\n    image: {}\n",
                project.path().display(),
                b.layout.display()
            ),
            "not both",
        ),
        (
            "  - name: http\n    worker_path: /tmp\n".to_string(),
            "not allowed for the builtin",
        ),
    ] {
        let err = refused_at_start(&extra);
        assert!(err.contains(needle), "{extra}: no {needle:?} in: {err}");
    }
}

#[tokio::test]
async fn a_local_entry_is_listed_and_a_bad_image_is_reported_failed() {
    let b = built();
    let project = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = project.path().display().to_string();
    let host = b.target.join("iii-worker-host");
    let e = EngineProc::start_with_env(
        move |ws, _| {
            config(
                ws,
                &format!("  - name: loc\n    worker_path: {dir}\n  - name: bad\n    image: /nonexistent/oci-layout\n"),
            )
        },
        &[
            ("III_WORKER_HOST_BIN", host.to_str().unwrap()),
            ("III_HOME", home.path().to_str().unwrap()),
            ("III_WORKER_RUNTIME", "namespace"),
        ],
    );
    let mut w = RawWorker::connect(&e.url()).await;
    let r = w.call("worker::status", json!({})).await;
    let rows = r["result"]["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rows.len(), 2, "{r}");
    let loc = rows.iter().find(|x| x["name"] == "loc").unwrap();
    assert_eq!(loc["kind"], "local", "{loc}");
    assert_eq!(loc["source"], project.path().display().to_string());
    // The bad image never comes up: failed, with the worker host's reason, and exit 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row = status_row(&mut w, "bad").await;
        if row["state"] == "failed" {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "never failed: {row}\n{}",
            e.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        row["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{row}"
    );
    let (code, _, err) = run(cli(&e.dir, home.path()).args(["status", "bad", "--no-watch"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("bad: failed"), "{err}");
    assert!(err.contains("  error:"), "{err}");
}
