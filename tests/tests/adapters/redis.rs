//! Redis faults: a restart under load, errors while the server is down, recovery without an
//! engine restart, and a network grant that does not cover the URL.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iii_tests::redis::Server;
use iii_tests::{free_port, EngineProc, RawWorker};
use serde_json::{json, Value};

use crate::engine_config;

fn state_engine(s: &Server) -> EngineProc {
    let extra = format!(
        "  - name: iii-state\n    config: {{adapter: {{name: redis, config: {{redis_url: '{}', timeout_ms: 1000}}}}}}\n",
        s.url()
    );
    EngineProc::start_with(|ws, _| engine_config(ws, &extra))
}

#[tokio::test]
async fn a_grant_that_does_not_cover_the_url_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = engine_config(
        free_port(),
        "  - name: iii-state\n    config: {adapter: {name: redis, config: {redis_url: 'redis://127.0.0.1:6390'}, grants: {network: ['127.0.0.1:6391']}}}\n",
    );
    std::fs::write(dir.path().join("config.yaml"), cfg).unwrap();
    let mut child = Command::new(iii_tests::iii_bin())
        .current_dir(dir.path())
        .env("III_WATCH_CONFIG", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started anyway: {text}");
    assert!(
        text.contains("grants.network")
            && text.contains("127.0.0.1:6391")
            && text.contains("127.0.0.1:6390"),
        "{text}"
    );
}

#[tokio::test]
async fn a_redis_restart_under_load_loses_no_acknowledged_write_and_recovers_by_itself() {
    let mut s = Server::start();
    let e = state_engine(&s);
    let mut w = RawWorker::connect(&e.url()).await;
    let mut acked: Vec<u32> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut restarted = false;
    let mut acked_after = 0;
    let mut i = 0u32;
    let start = Instant::now();
    // Write until well after the restart; each acknowledged write must be readable after.
    while acked.len() < 200 || acked_after < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no recovery: {errors:?}"
        );
        if i == 100 && !restarted {
            s.stop();
            // Calls while the server is down fail with a clear, quick error.
            let t = Instant::now();
            let r = w
                .call(
                    "state::set",
                    json!({"scope": "load", "key": "down", "value": 1}),
                )
                .await;
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "a call on a dead server took {:?}",
                t.elapsed()
            );
            let msg = r["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                msg.contains("unavailable") && msg.contains(&s.addr()),
                "{r}"
            );
            s.restart();
            restarted = true;
        }
        let r = w
            .call(
                "state::set",
                json!({"scope": "load", "key": format!("k{i}"), "value": i}),
            )
            .await;
        if r.get("error").is_none() {
            acked.push(i);
            if restarted {
                acked_after += 1;
            }
        } else {
            errors.push(
                r["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        i += 1;
    }
    for e in &errors {
        assert!(e.contains("unavailable"), "only outage errors: {e}");
    }
    // Restart once more (kill -9): the AOF with appendfsync always keeps every acked write.
    s.restart();
    let t = Instant::now();
    let list = loop {
        let r = w.call("state::list", json!({"scope": "load"})).await;
        if r.get("error").is_none() {
            break r["result"].clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no recovery after the second restart: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let have: std::collections::BTreeSet<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    for a in &acked {
        assert!(
            have.contains(&u64::from(*a)),
            "acknowledged write k{a} lost"
        );
    }
}
