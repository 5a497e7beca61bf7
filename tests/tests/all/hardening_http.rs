//! Hardening of the REST trigger server (issue 9, items 7, 8, 9, 14): slow clients, body limits,
//! abandoned calls leaving the pending table, request channels freed with the request, and a
//! function listing that stays correct while it is cached. Each test reproduces the finding.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use iii_tests::{http, EngineProc, RawWorker};
use serde_json::{json, Value};

/// An engine whose `http` entry carries `extra` (a YAML flow-mapping body, e.g. `a: 1, b: 2`).
fn engine_with_http(extra: &'static str) -> EngineProc {
    EngineProc::start_with(move |ws, http| {
        format!(
            "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: http\n    config: {{host: 127.0.0.1, port: {http}, {extra}}}\n"
        )
    })
}

/// A named worker serving `fid`, bound to `method path`.
async fn worker_with_route(e: &EngineProc, fid: &str, path: &str, method: &str) -> RawWorker {
    let mut w = RawWorker::connect_named(&e.url(), &format!("w-{fid}"), None).await;
    w.register_function(fid, json!({})).await;
    w.send(json!({"type": "registertrigger", "id": format!("t-{fid}"), "trigger_type": "http", "function_id": fid, "config": {"api_path": path, "http_method": method}})).await;
    w.sync().await;
    w
}

/// Answers every call with `{"status_code": 200, "body": {"ok": true}}` until the socket ends.
fn serve_forever(mut w: RawWorker) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(v) = w.recv_raw(Duration::from_secs(3600)).await else {
                return;
            };
            if v["type"] == "invokefunction" {
                w.send(json!({"type": "invocationresult", "invocation_id": v["invocation_id"], "function_id": v["function_id"], "result": {"status_code": 200, "body": {"ok": true}}})).await;
            }
        }
    })
}

async fn request(
    port: u16,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    tokio::task::spawn_blocking(move || http(port, method, path, &headers, &body))
        .await
        .expect("http request")
}

fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

/// The worker's `active_invocations` (its calls in the pending table) as the engine lists it.
async fn active_invocations(observer: &mut RawWorker, worker_id: &str) -> u64 {
    let r = observer.call("engine::workers::list", json!({})).await;
    r["result"]["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["id"] == worker_id))
        .and_then(|w| w["active_invocations"].as_u64())
        .unwrap_or_else(|| panic!("worker {worker_id} not listed: {r}"))
}

/// Reads from `s` until the peer closes; returns what arrived.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("the server kept the connection open: {e}")
            }
            Err(_) => return out, // reset: closed
        }
    }
}

/// Writes `bytes` on a fresh connection and returns everything the server sends until it closes.
async fn exchange(port: u16, bytes: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(&bytes).expect("write");
        String::from_utf8_lossy(&read_to_close(&mut s)).into_owned()
    })
    .await
    .expect("exchange")
}

#[tokio::test]
async fn a_header_dripped_byte_by_byte_is_cut_off_at_the_header_deadline() {
    let e = engine_with_http("header_read_timeout_ms: 500");
    let port = e.http_port;
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .expect("write");
        let mut reader = s.try_clone().expect("clone");
        reader
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let started = Instant::now();
        let watcher = std::thread::spawn(move || {
            read_to_close(&mut reader);
            started.elapsed()
        });
        // One byte every 100 ms for 5 s: never a complete header.
        for _ in 0..50 {
            if s.write_all(b"a").is_err() || watcher.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        watcher.join().expect("watcher")
    })
    .await
    .expect("drip");
    assert!(
        closed_after < Duration::from_secs(4),
        "the connection stayed open {closed_after:?} while its header dripped (deadline 500 ms)"
    );
}

#[tokio::test]
async fn trickling_bodies_hold_no_concurrency_permit_and_get_408() {
    // Two permits, four clients trickling bodies: before, every route hung behind them.
    let e = engine_with_http(
        "concurrency_request_limit: 2, body_read_timeout_ms: 2500, default_timeout: 5000",
    );
    let w = worker_with_route(&e, "slow::echo", "echo", "POST").await;
    let server = serve_forever(w);
    let port = e.http_port;
    let mut tricklers = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            .expect("write");
        tricklers.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = request(
        port,
        "POST",
        "/echo",
        vec![("Content-Type", "application/json")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The normal request was served while every trickler was still waiting for its body.
    for s in &tricklers {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        let peek = (&*s).read(&mut b);
        assert!(
            matches!(&peek, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "a trickler was answered before the normal request finished: {peek:?}"
        );
        s.set_nonblocking(false).expect("blocking");
    }
    // Each trickler is answered 408 at the body deadline and its connection closed.
    let answers = tokio::task::spawn_blocking(move || {
        tricklers
            .into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                String::from_utf8_lossy(&read_to_close(&mut s)).into_owned()
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("tricklers");
    for a in answers {
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
        assert!(a.contains("body_read_timeout_ms"), "{a}");
    }
    server.abort();
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_never_reaches_the_handler() {
    let e = engine_with_http("body_limit_bytes: 65536");
    let mut w = worker_with_route(&e, "lim::echo", "echo", "POST").await;
    let port = e.http_port;

    // Declared too large: refused before the body is read (only the headers are sent, so the
    // server closes a drained socket and the client surely reads the answer).
    let declared = exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n".to_vec(),
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(declared.contains("payload_too_large"), "{declared}");

    // Chunked, no length declared: refused once it grows past the limit (80 KiB sent).
    let mut chunked = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
        chunked.extend_from_slice(&[b'1'; 16 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    let chunked = exchange(port, chunked).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    w.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;

    // At the limit it is served.
    let req = tokio::spawn(request(
        port,
        "POST",
        "/echo",
        vec![("Content-Type", "application/json")],
        [b"\"".to_vec(), vec![b'a'; 65534], b"\"".to_vec()].concat(),
    ));
    w.serve_one(|_| json!({"status_code": 200, "body": "ok"}))
        .await;
    assert_eq!(req.await.expect("request").0, 200);
}

#[tokio::test]
async fn a_json_body_that_would_make_a_message_over_64_mib_is_413_and_the_worker_stays() {
    // The body limit is raised above the workers' 64 MiB message limit: the message check holds.
    let e = engine_with_http("body_limit_bytes: 100000000");
    let mut w = worker_with_route(&e, "big::echo", "echo", "POST").await;
    let mut body = Vec::with_capacity(70_000_002);
    body.push(b'"');
    body.resize(70_000_001, b'a');
    body.push(b'"');
    let (status, _, answer) = request(
        e.http_port,
        "POST",
        "/echo",
        vec![("Content-Type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(error_code(&answer), "payload_too_large");
    // Before, the 70 MB message disconnected the worker; it is still there and serving.
    let req = tokio::spawn(request(
        e.http_port,
        "POST",
        "/echo",
        vec![("Content-Type", "application/json")],
        b"{}".to_vec(),
    ));
    let inv = w
        .serve_one(|_| json!({"status_code": 200, "body": "ok"}))
        .await;
    assert_eq!(inv["data"]["body"], json!({}));
    assert_eq!(req.await.expect("request").0, 200);

    // With the default limit (32 MiB) the same body is refused by its declared length alone.
    let d = EngineProc::start("");
    let _w = worker_with_route(&d, "big::default", "echo", "POST").await;
    let port = d.http_port;
    let answer = exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 70000002\r\n\r\n".to_vec(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_limit_bytes"), "{answer}");
}

#[tokio::test]
async fn a_504_leaves_no_pending_call_and_no_request_channel() {
    let e = engine_with_http("default_timeout: 300");
    let mut w = worker_with_route(&e, "never::answers", "never", "GET").await;
    let mut observer = RawWorker::connect_named(&e.url(), "observer", None).await;
    let mut last = Value::Null;
    for _ in 0..10 {
        let req = tokio::spawn(request(e.http_port, "GET", "/never", vec![], Vec::new()));
        last = w.recv_where(|v| v["type"] == "invokefunction").await;
        assert_eq!(req.await.expect("request").0, 504);
    }
    // Before, each 504 stayed pending for as long as the worker stayed connected.
    assert_eq!(active_invocations(&mut observer, &w.worker_id).await, 0);
    // The timed-out request's channels are gone, not left to a 5-minute sweep.
    for (side, dir) in [("response", "write"), ("request_body", "read")] {
        let r = &last["data"][side];
        let url = format!(
            "{}/ws/channels/{}?key={}&dir={dir}",
            e.url(),
            r["channel_id"].as_str().expect("channel id"),
            r["access_key"].as_str().expect("key")
        );
        assert!(
            tokio_tungstenite::connect_async(url.as_str())
                .await
                .is_err(),
            "the {side} channel of a finished request still accepts its {dir} side"
        );
    }
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_no_pending_call() {
    let e = engine_with_http("default_timeout: 20000");
    let mut w = worker_with_route(&e, "gone::client", "gone", "GET").await;
    let mut observer = RawWorker::connect_named(&e.url(), "observer", None).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", e.http_port)).expect("connect");
        s.write_all(b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("write");
        w.recv_where(|v| v["type"] == "invokefunction").await;
        clients.push(s);
    }
    assert_eq!(active_invocations(&mut observer, &w.worker_id).await, 5);
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = active_invocations(&mut observer, &w.worker_id).await;
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} calls of departed clients still pending after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_response_channel_is_freed_with_an_answered_request() {
    let e = EngineProc::start("");
    let mut w = worker_with_route(&e, "chan::answer", "answer", "GET").await;
    let req = tokio::spawn(request(e.http_port, "GET", "/answer", vec![], Vec::new()));
    let inv = w
        .serve_one(|_| json!({"status_code": 200, "body": "ok"}))
        .await;
    assert_eq!(req.await.expect("request").0, 200);
    let r = &inv["data"]["response"];
    let url = format!(
        "{}/ws/channels/{}?key={}&dir=write",
        e.url(),
        r["channel_id"].as_str().expect("channel id"),
        r["access_key"].as_str().expect("key")
    );
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err(),
        "the response channel of an answered request is still registered"
    );
}

/// The listed function ids, less the always-on configuration service's own.
fn ids_of(r: &Value) -> Vec<String> {
    r["result"]["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .map(|f| f["function_id"].as_str().expect("id").to_string())
        // Always-on services register their own (configuration::*, worker::*).
        .filter(|id| !id.starts_with("configuration::") && !id.starts_with("worker::"))
        .collect()
}

#[tokio::test]
async fn the_cached_function_listing_follows_every_change() {
    const N: usize = 3000;
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    w.declare("lister", None).await;
    for i in 0..N {
        w.register_function(
            &format!("many::f{i:05}"),
            json!({"description": format!("number {i}")}),
        )
        .await;
    }
    w.sync().await;
    let mut timings = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = w.call("engine::functions::list", json!({})).await;
        timings.push(t.elapsed());
        assert_eq!(ids_of(&r).len(), N);
    }
    println!("engine::functions::list with {N} functions (debug build, round trip):");
    println!("| call | ms |");
    for (i, t) in timings.iter().enumerate() {
        println!("| {} | {:.1} |", i + 1, t.as_secs_f64() * 1e3);
    }

    // A registration and an unregistration show at once.
    w.register_function("many::new", json!({})).await;
    w.send(json!({"type": "unregisterfunction", "id": "many::f00000"}))
        .await;
    w.sync().await;
    let ids = ids_of(&w.call("engine::functions::list", json!({})).await);
    assert!(ids.contains(&"many::new".to_string()));
    assert!(!ids.contains(&"many::f00000".to_string()));
    assert_eq!(ids.len(), N);

    // A worker naming itself after registering changes the listed worker name.
    let mut late = RawWorker::connect(&e.url()).await;
    late.register_function("late::fn", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the namespace grace
    let before = w
        .call("engine::functions::list", json!({"prefix": "late::"}))
        .await;
    assert_eq!(ids_of(&before), vec!["late::fn".to_string()]);
    late.declare("late-name", None).await;
    late.sync().await;
    let after = w
        .call("engine::functions::list", json!({"worker": "late-name"}))
        .await;
    assert_eq!(ids_of(&after), vec!["late::fn".to_string()], "{after}");

    // A worker leaving takes its functions out of the listing.
    let mut observer = RawWorker::connect_named(&e.url(), "observer", None).await;
    late.close_and_wait_gone(&mut observer).await;
    let gone = observer
        .call("engine::functions::list", json!({"prefix": "late::"}))
        .await;
    assert!(ids_of(&gone).is_empty(), "{gone}");
}

/// CPU time (user + system) the process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted from the state field (3).
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// Peak resident memory of the process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

/// Figures, not assertions: `cargo test -p iii-tests --test all -- --ignored --nocapture
/// listing_cost_table` (III_BIN picks the binary to measure).
#[tokio::test]
#[ignore = "a measurement: prints a table"]
async fn listing_cost_table() {
    const N: usize = 100_000;
    const CALLS: u32 = 10;
    // One connection holds all of them: lift the per-connection registration limit (10k).
    let e = EngineProc::start_with(|ws, http| {
        format!(
            "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}, max_registrations: {N}}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}}}\n"
        )
    });
    let mut w = RawWorker::connect_named(&e.url(), "lister", None).await;
    for i in 0..N {
        w.register_function(
            &format!("many::f{i:06}"),
            json!({"description": "a function"}),
        )
        .await;
        // A sync per batch keeps each round trip well inside the harness's wait.
        if i % 10_000 == 9_999 {
            w.sync().await;
        }
    }
    w.sync().await;
    // Past one tick of the 5 s functions-available watcher, whose one pass over the changed
    // set is not a cost of the calls measured here.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pid = e.child.id();
    let cpu0 = cpu_time(pid);
    let t = Instant::now();
    for _ in 0..CALLS {
        let r = w.call("engine::functions::list", json!({})).await;
        assert_eq!(ids_of(&r).len(), N);
    }
    let wall = t.elapsed() / CALLS;
    let cpu = (cpu_time(pid) - cpu0) / CALLS;
    println!("| functions | calls | engine CPU per call (ms) | round trip per call (ms) |");
    println!(
        "| {N} | {CALLS} | {:.0} | {:.0} |",
        cpu.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3
    );
}

/// Figures, not assertions: the engine's peak RSS around one large JSON body.
#[tokio::test]
#[ignore = "a measurement: prints a table"]
async fn large_body_rss_table() {
    const BODY: usize = 30_000_000;
    let e = EngineProc::start("");
    let w = worker_with_route(&e, "rss::echo", "echo", "POST").await;
    let server = serve_forever(w);
    let pid = e.child.id();
    let before = peak_rss_mib(pid);
    let mut body = Vec::with_capacity(BODY + 2);
    body.push(b'[');
    while body.len() < BODY {
        body.extend_from_slice(b"{\"k\":12345,\"v\":\"abcdefgh\"},");
    }
    body.pop();
    body.push(b']');
    let size = body.len();
    let (status, _, _) = request(
        e.http_port,
        "POST",
        "/echo",
        vec![("Content-Type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    let after = peak_rss_mib(pid);
    println!("| JSON body (MB) | peak RSS before (MiB) | peak RSS after (MiB) | growth / body |");
    println!(
        "| {:.0} | {before:.0} | {after:.0} | {:.1}x |",
        size as f64 / 1e6,
        (after - before) * 1048576.0 / size as f64
    );
    server.abort();
}
