//! The engine supervises the sandbox daemon (`- name: iii-sandbox`): it checks the entry's
//! configuration before anything serves, starts the daemon, restarts it when it dies, and
//! takes it down when the engine goes.

use std::process::Command;
use std::time::{Duration, Instant};

use iii_tests::{iii_bin, EngineProc, RawWorker};
use serde_json::json;

fn sandbox_entry(config: &str) -> String {
    format!("  - name: iii-sandbox\n    config:\n{config}")
}

/// Pids of daemons started by the engine with pid `engine` (its config file names that pid).
fn daemon_pids(engine: u32) -> Vec<u32> {
    let needle = format!("iii-iii-sandbox-{engine}-config.yaml");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(&needle) && !cmd.contains("--check") {
            pids.push(pid);
        }
    }
    pids
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent has not collected it yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Waits until `sandbox::list` answers (the daemon connected and registered).
async fn wait_daemon(w: &mut RawWorker) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = w.call("sandbox::list", json!({})).await;
        if r["error"].is_null() {
            assert!(r["result"]["sandboxes"].is_array(), "{r}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox::list never answered: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_engine_starts_restarts_and_stops_the_daemon() {
    let root = tempfile::tempdir().unwrap();
    let engine = EngineProc::start_with_env(
        |ws, _| {
            format!(
                "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n{}",
                sandbox_entry("      runtime: namespace\n      image_allowlist: [python]\n")
            )
        },
        &[("III_SANDBOX_ROOT", root.path().to_str().unwrap())],
    );
    let mut w = RawWorker::connect(&engine.url()).await;
    wait_daemon(&mut w).await;
    let r = w.call("sandbox::catalog::list", json!({})).await;
    assert_eq!(r["result"]["images"][0]["name"], "python", "{r}");
    let workers = w.call("engine::workers::list", json!({})).await;
    assert!(
        workers.to_string().contains("iii-sandbox"),
        "the daemon is listed as a worker: {workers}"
    );

    let pids = daemon_pids(engine.child.id());
    assert_eq!(pids.len(), 1, "one daemon runs: {pids:?}");
    let first = pids[0];
    Command::new("kill")
        .arg("-KILL")
        .arg(first.to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = daemon_pids(engine.child.id());
        if now.iter().any(|p| *p != first && alive(*p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new daemon after a crash:\n{}",
            engine.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_daemon(&mut w).await;
    engine.wait_for_log(&["iii-sandbox exited", "restarting in"]);
    let second = daemon_pids(engine.child.id());

    // SIGTERM: the engine stops its services in order; the daemon goes with it.
    Command::new("kill")
        .arg("-TERM")
        .arg(engine.child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "the daemon outlived the engine");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_sandbox_config_fails_start_up_with_the_daemons_reason() {
    let mut cases = vec![
        (
            "      sandbox:\n        auto_install: true\n",
            "legacy wrapped shape",
        ),
        (
            "      max_concurrent_sandboxs: 3\n",
            "max_concurrent_sandboxs",
        ),
        ("      runtime: docker\n", "runtime"),
    ];
    // Where /dev/kvm cannot boot a stock guest (missing, or PVM as on this project's machines),
    // `auto` refuses and names the way out instead of silently isolating less.
    if !std::path::Path::new("/dev/kvm").exists()
        || std::path::Path::new("/sys/module/kvm_pvm").exists()
    {
        cases.push(("      image_allowlist: [python]\n", "runtime: namespace"));
    }
    for (config, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            format!(
                "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: 0}}\n{}",
                sandbox_entry(config)
            ),
        )
        .unwrap();
        let out = Command::new(iii_bin())
            .arg("-c")
            .arg(&file)
            .env("III_WATCH_CONFIG", "0")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{config}: started anyway:\n{text}");
        assert!(text.contains("iii-sandbox"), "{config}: {text}");
        assert!(
            text.contains(needle),
            "{config}: wanted {needle:?} in:\n{text}"
        );
    }
}
