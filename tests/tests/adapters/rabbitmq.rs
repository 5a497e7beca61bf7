//! RabbitMQ faults: a broker restart under load loses no acknowledged publish (clear errors
//! while it is down, recovery by itself), and a network grant that does not cover `amqp_url`
//! is refused at load.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iii_tests::rabbitmq::Broker;
use iii_tests::{iii_bin, EngineProc, RawWorker};
use serde_json::{json, Value};

use crate::conformance::queue::serve;

fn entry(url: &str, extra: &str) -> String {
    format!("  - name: queue\n    config:\n      adapter:\n        name: rabbitmq\n        config: {{amqp_url: \"{url}\"}}\n{extra}")
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_under_load_loses_no_acknowledged_publish() {
    let broker = tokio::task::spawn_blocking(Broker::start).await.unwrap();
    let e = EngineProc::start(&entry(&broker.url(), ""));
    let url = e.url();
    let topic = "restart-load";
    let mut rx = serve(
        &url,
        "restart-sub",
        topic,
        json!({"concurrency": 8}),
        |_| false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut p = RawWorker::connect(&url).await;
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    let mut broker = Some(broker);
    let mut rebooting: Option<std::thread::JoinHandle<Broker>> = None;
    let started = Instant::now();
    let mut i = 0u64;
    // Publish one at a time; at the 200th, SIGKILL the broker and boot it again in the
    // background while the publishing goes on.
    while acked.len() < 600 && started.elapsed() < Duration::from_secs(180) {
        if i == 200 {
            if let Some(mut b) = broker.take() {
                b.kill();
                rebooting = Some(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    b.start_again();
                    b
                }));
            }
        }
        if rebooting
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            broker = rebooting.take().map(|h| h.join().unwrap());
        }
        let r = p
            .call(
                "iii::durable::publish",
                json!({"topic": topic, "data": {"i": i}}),
            )
            .await;
        if r.get("error").is_none_or(Value::is_null) {
            acked.push(i);
        } else {
            errors.push(r["error"].clone());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i += 1;
    }
    if let Some(h) = rebooting.take() {
        broker = Some(h.join().unwrap());
    }
    assert!(
        !errors.is_empty(),
        "publishes while the broker was down must fail"
    );
    let text = errors[0].to_string();
    assert!(
        text.contains("rabbitmq"),
        "the error names the broker: {text}"
    );
    assert!(
        acked.len() >= 600,
        "publishing recovered by itself after the restart ({} acked)",
        acked.len()
    );

    let want: HashSet<u64> = acked.iter().copied().collect();
    let mut got: HashSet<u64> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !want.is_subset(&got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(v)) => {
                got.insert(v["i"].as_u64().unwrap());
            }
            _ => break,
        }
    }
    let lost: Vec<_> = want.difference(&got).copied().collect();
    assert!(
        lost.is_empty(),
        "acknowledged publishes lost: {} of {} (e.g. {:?})",
        lost.len(),
        want.len(),
        &lost[..lost.len().min(10)]
    );
    drop(broker);
}

#[test]
fn a_grant_not_covering_amqp_url_is_refused_at_load() {
    let dir = std::env::temp_dir().join(format!("iii-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = "workers:\n  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n  - name: queue\n    config:\n      adapter:\n        name: rabbitmq\n        config: {amqp_url: \"amqp://guest:guest@127.0.0.1:5999/\"}\n        grants: {network: [\"127.0.0.1:5672\"]}\n";
    std::fs::write(dir.join("config.yaml"), cfg).unwrap();
    let mut child = Command::new(iii_bin())
        .current_dir(&dir)
        .env("III_WATCH_CONFIG", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the engine started although the grant does not cover amqp_url");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("grants.network") && text.contains("127.0.0.1:5999"),
        "the error names the grant and the URL's server: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
