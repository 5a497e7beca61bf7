//! The `iii` binary as a user runs it: engine start-up and config errors, and `iii trigger`.

use std::time::Duration;

use iii_tests::{run_iii, EngineProc, RawWorker};
use serde_json::{json, Value};

fn trigger(e: &EngineProc, args: &[&str]) -> (i32, String, String) {
    let port = e.ws_port.to_string();
    let mut all = vec!["trigger"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--address", "127.0.0.1", "--port", &port]);
    run_iii(&all, None)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn trigger_round_trips_payload_rules_and_exit_codes() {
    let e = std::sync::Arc::new(EngineProc::start(""));
    let mut w = RawWorker::connect_named(&e.url(), "math", None).await;
    w.register_function("math::add", json!({"description": "Add two numbers",
        "request_format": {"type": "object", "properties": {"a": {"type": "number", "description": "first"}, "b": {"type": "number"}}, "required": ["a"]}})).await;
    w.sync().await;

    let e2 = e.clone();
    let run = tokio::spawn(blocking(move || {
        trigger(
            &e2,
            &["math::add", "a=1", "b=2", "name=alice", "tag=\"007\""],
        )
    }));
    let inv = w
        .serve_one(|d| json!({"c": d["a"].as_i64().unwrap() + d["b"].as_i64().unwrap()}))
        .await;
    assert_eq!(inv["data"]["name"], "alice");
    assert_eq!(inv["data"]["tag"], "007");
    let (code, out, err) = run.await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "{\n  \"c\": 3\n}\n");

    // --json merged with kv; null result prints nothing.
    let e2 = e.clone();
    let run = tokio::spawn(blocking(move || {
        trigger(&e2, &["math::add", "--json", "{\"a\":5,\"b\":1}", "b=7"])
    }));
    let inv = w.serve_one(|_| Value::Null).await;
    assert_eq!(inv["data"]["a"], 5);
    assert_eq!(inv["data"]["b"], 7);
    let (code, out, _) = run.await.unwrap();
    assert_eq!((code, out.as_str()), (0, ""));

    // Remote error → exit 1, pretty JSON on stderr.
    let e2 = e.clone();
    let run = tokio::spawn(blocking(move || trigger(&e2, &["math::add", "a=1"])));
    let inv = w.recv_where(|v| v["type"] == "invokefunction").await;
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "math::add", "error": {"code": "invocation_failed", "message": "boom"}})).await;
    let (code, _, err) = run.await.unwrap();
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: {"), "{err}");
    assert!(err.contains("\"code\": \"invocation_failed\""), "{err}");

    // Unknown function.
    let e2 = e.clone();
    let (code, _, err) = blocking(move || trigger(&e2, &["nope::x"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("function_not_found"), "{err}");

    // Timeout: the function never answers.
    let e2 = e.clone();
    let run = tokio::spawn(blocking(move || {
        trigger(&e2, &["math::add", "--timeout-ms", "300"])
    }));
    w.recv_where(|v| v["type"] == "invokefunction").await;
    let (code, _, err) = run.await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("Timed out waiting for the engine"), "{err}");

    // Bad payload tokens and JSON.
    let e2 = e.clone();
    let (code, _, err) = blocking(move || trigger(&e2, &["math::add", "novalue"])).await;
    assert_eq!(
        (code, err.trim()),
        (1, "Error: iii trigger: expected key=value, got `novalue`")
    );
    let e2 = e.clone();
    let (code, _, err) = blocking(move || trigger(&e2, &["math::add", "--json", "{bad"])).await;
    assert_eq!(
        (code, err.trim()),
        (1, "Error: iii trigger: --json: invalid JSON `{bad`")
    );
    let e2 = e.clone();
    let (code, _, err) = blocking(move || trigger(&e2, &[])).await;
    assert_eq!(code, 1);
    assert!(err.contains("missing FUNCTION_PATH"), "{err}");

    // --help with a function asks the engine.
    let e2 = e.clone();
    let (code, out, _) = blocking(move || trigger(&e2, &["math::add", "--help"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("Add two numbers"), "{out}");
    assert!(out.contains("| a | number | yes | first |"), "{out}");
    let e2 = e.clone();
    let (code, _, err) = blocking(move || trigger(&e2, &["nope::x", "--help"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("engine::functions::list"), "{err}");
    let (code, out, _) = blocking(|| run_iii(&["trigger", "--help"], None)).await;
    assert_eq!(code, 0);
    assert!(out.contains("--timeout-ms"), "{out}");
}

#[tokio::test]
async fn trigger_without_an_engine_fails_clearly() {
    let port = iii_tests::free_port().to_string();
    let (code, _, err) = blocking(move || {
        run_iii(
            &[
                "trigger",
                "x::y",
                "--port",
                &port,
                "--address",
                "127.0.0.1",
                "--timeout-ms",
                "2000",
            ],
            None,
        )
    })
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("Is the engine running"), "{err}");
}

#[test]
fn version_and_help() {
    let (code, out, _) = run_iii(&["--version"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("iii "), "{out}");
    let (code, out, _) = run_iii(&["--help"], None);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--use-default-config",
        "--no-update-check",
        "trigger",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("iii-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn config_errors_name_the_file_and_key() {
    let d = temp_dir();
    std::fs::write(
        d.join("config.yaml"),
        "workers:\n  - name: iii-http\n    config:\n      port: lots\n",
    )
    .unwrap();
    let (code, _, err) = run_iii(&[], Some(&d));
    assert_eq!(code, 1);
    assert!(
        err.contains("config.yaml")
            && err.contains("workers[0](iii-http).config.port")
            && err.contains("non-negative integer"),
        "{err}"
    );
    std::fs::write(d.join("config.yaml"), "workers: []\nextra: 1\n").unwrap();
    let (code, _, err) = run_iii(&[], Some(&d));
    assert_eq!(code, 1);
    assert!(err.contains("unknown key `extra`"), "{err}");
    std::fs::write(d.join("config.yaml"), "workers:\n  - name: iii-worker-manager\n    config: {port: ${III_TEST_SURELY_UNSET_VAR}}\n").unwrap();
    let (code, _, err) = run_iii(&[], Some(&d));
    assert_eq!(code, 1);
    assert!(
        err.contains("III_TEST_SURELY_UNSET_VAR") && err.contains(":3:"),
        "{err}"
    );
    let (code, _, err) = run_iii(&["--config", "missing.yaml"], Some(&d));
    assert_eq!(code, 1);
    assert!(
        err.contains("missing.yaml") && err.contains("does not exist"),
        "{err}"
    );
    let (code, _, err) = run_iii(&["--config", "x.yaml", "--use-default-config"], Some(&d));
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn upstream_config_runs_with_clear_warnings_and_env_interpolation() {
    let e = EngineProc::start_with(|ws, http| {
        format!(
            "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: ${{III_TEST_WS_PORT_UNSET:{ws}}}}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}}}\n  - name: iii-state\n    config: {{adapter: {{name: kv}}}}\n  - name: iii-stream\n    config: {{port: 0}}\n  - name: iii-cron\n    config: {{adapter: {{name: kv, config: {{lock_ttl_ms: 30000, lock_index: cron_locks}}}}}}\n  - name: iii-pubsub\n    config: {{adapter: {{name: local}}}}\n  - name: iii-observability\n    config: {{level: info, exporter: memory}}\n  - name: iii-engine-functions\n  - name: configuration\n  - name: pdfkit\n"
        )
    });
    e.wait_for_log(&[
        "config entry name `iii-cron` is deprecated",
        "cron service ready",
        "pubsub service ready",
        "config entry `pdfkit` starts nothing",
        "state service ready",
        "stream service ready",
    ]);
}

#[test]
fn embedded_defaults_run_without_a_config_file() {
    // Uses the real default ports, as the README quickstart test does: one at a time.
    let _ports = iii_tests::default_ports_lock();
    let d = temp_dir();
    if std::net::TcpListener::bind("127.0.0.1:49134").is_err()
        || std::net::TcpListener::bind("127.0.0.1:3111").is_err()
    {
        panic!("ports 49134/3111 are in use on this machine; stop the process holding them to run this test");
    }
    let mut child = std::process::Command::new(iii_tests::iii_bin())
        .current_dir(&d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..500 {
        if std::net::TcpStream::connect("127.0.0.1:49134").is_ok()
            && std::net::TcpStream::connect("127.0.0.1:3111").is_ok()
        {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, out, _) = run_iii(&["trigger", "engine::health::check"], None);
    // State runs on the builtin kv component, durably, in the project directory.
    let (set_code, _, set_err) = run_iii(
        &[
            "trigger",
            "state::set",
            "scope=cfg",
            "key=k",
            "value={\"v\":1}",
        ],
        None,
    );
    let (get_code, got, _) = run_iii(&["trigger", "state::get", "scope=cfg", "key=k"], None);
    terminate(&mut child);
    assert_eq!(set_code, 0, "{set_err}");
    assert_eq!(get_code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&got).unwrap(),
        json!({"v": 1})
    );
    assert!(d.join(".iii/data/state").is_dir());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "SIGTERM is a clean shutdown (exit 0), got {:?}",
        output.status
    );
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        up,
        "engine with embedded defaults did not listen on 49134 and 3111:\n{log}"
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"status\": \"healthy\""), "{out}");
    assert!(
        log.contains("embedded defaults"),
        "the engine says it runs the embedded defaults:\n{log}"
    );
    assert!(!d.join("config.yaml").exists(), "no config file is written");
    let _ = std::fs::remove_dir_all(&d);
}

fn terminate(child: &mut std::process::Child) {
    // SIGTERM, so the engine shuts down the way a user stops it.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the engine did not exit within 2 s of SIGTERM");
}
