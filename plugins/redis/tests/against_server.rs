//! The store semantics against a real `redis-server` (spawned on a free loopback port).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iii_redis::{Redis, Settings};
use iii_update_ops::Op;
use serde_json::json;

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server missing: run tests/setup.sh");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child, port)
}

fn redis(s: &Server) -> Redis {
    Redis::new(Settings::from_url(&format!("redis://127.0.0.1:{}", s.1)).unwrap())
}

#[test]
fn state_and_stream_and_lock_and_pubsub() {
    let s = start();
    let mut r = redis(&s);
    assert_eq!(r.state_set("sc", "k", "1").unwrap(), None);
    assert_eq!(r.state_set("sc", "k", "2").unwrap().as_deref(), Some("1"));
    assert_eq!(r.state_get("sc", "k").unwrap().as_deref(), Some("2"));
    let u = r
        .state_update(
            "sc",
            "n",
            &[Op::Increment {
                path: "c".into(),
                by: 5,
            }],
        )
        .unwrap();
    assert_eq!(u.old, None);
    assert_eq!(u.new, json!({"c": 5}).to_string());
    let u = r
        .state_update(
            "sc",
            "n",
            &[Op::Increment {
                path: "c".into(),
                by: 1,
            }],
        )
        .unwrap();
    assert_eq!(u.new, json!({"c": 6}).to_string());
    assert_eq!(r.state_groups().unwrap(), vec!["sc".to_string()]);
    assert_eq!(r.state_delete("sc", "k").unwrap().as_deref(), Some("2"));
    assert_eq!(r.state_delete("sc", "k").unwrap(), None);

    r.stream_set("s1", "g1", "i", "{}").unwrap();
    r.stream_set("s1", "g2", "i", "{}").unwrap();
    r.stream_set("s*", "g", "i", "{}").unwrap();
    assert_eq!(r.stream_groups("s1").unwrap(), vec!["g1", "g2"]);
    assert_eq!(r.stream_groups("s*").unwrap(), vec!["g"]);
    assert_eq!(r.stream_all().unwrap().len(), 2);

    assert!(r.try_acquire("cron:a", "one", 10_000).unwrap());
    assert!(!r.try_acquire("cron:a", "two", 10_000).unwrap());
    assert!(
        r.try_acquire("cron:a", "one", 10_000).unwrap(),
        "owner renews"
    );
    assert!(!r.release("cron:a", "two").unwrap());
    assert!(r.release("cron:a", "one").unwrap());
    assert!(r.try_acquire("cron:a", "two", 10_000).unwrap());

    let mut sub = redis(&s);
    sub.subscribe("t").unwrap();
    let t = Instant::now();
    assert!(sub.poll(10, 100).unwrap().is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(90),
        "poll honours wait-ms"
    );
    r.publish("t", "{\"a\":1}").unwrap();
    r.publish("other", "1").unwrap();
    let got = sub.poll(10, 1000).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic, "t");
    assert_eq!(got[0].data, "{\"a\":1}");
}

#[test]
fn down_server_fails_fast_and_recovers() {
    let s = start();
    let port = s.1;
    let mut r = redis(&s);
    r.state_set("a", "b", "1").unwrap();
    drop(s);
    let e = r.state_get("a", "b").unwrap_err().to_string();
    assert!(
        e.contains("unavailable") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    let t = Instant::now();
    let e = r.state_get("a", "b").unwrap_err().to_string();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "inside the backoff a call fails at once"
    );
    assert!(e.contains("unavailable"), "{e}");
    // Same port again: the adapter reconnects by itself.
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _s = Server(child, port);
    let t = Instant::now();
    loop {
        match r.state_set("a", "b", "2") {
            Ok(_) => break,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(10), "no recovery: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
