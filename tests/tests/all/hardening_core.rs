//! The engine core against hostile and stalled peers (issue 9, items 3-7, 11-13): each test
//! starts the real binary with small limits and checks the structured refusal or disconnect.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// An engine whose worker socket runs with the given extra `config:` keys (YAML flow pairs).
fn engine_with(limits: &'static str) -> EngineProc {
    EngineProc::start_with(move |ws, http| {
        format!(
            "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}, handshake_timeout_ms: 2000, {limits}}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}, default_timeout: 5000}}\n"
        )
    })
}

fn invoke(function_id: &str, data: Value) -> (String, Value) {
    let id = uuid::Uuid::new_v4().to_string();
    let f = json!({"type": "invokefunction", "invocation_id": id, "function_id": function_id, "data": data});
    (id, f)
}

/// The close code the engine ends the socket with, if it sends a Close frame within 10 s.
async fn close_code(w: &mut RawWorker) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, w.ws.next())
            .await
            .ok()??
        {
            Ok(Message::Close(Some(c))) => return Some(c.code.into()),
            Ok(Message::Close(None)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// A callee that answers `{"pad": x}` with `x` and `{"n": n}` with `n` bytes, on its own task.
async fn spawn_echo(url: &str, id: &str) -> tokio::task::JoinHandle<()> {
    let mut w = RawWorker::connect_named(url, "echo", None).await;
    w.register_function(id, json!({})).await;
    w.sync().await;
    tokio::spawn(async move {
        while let Some(inv) = w.recv_raw(Duration::from_secs(60)).await {
            if inv["type"] != "invokefunction" {
                continue;
            }
            let result = match inv["data"]["n"].as_u64() {
                Some(n) => json!("p".repeat(n as usize)),
                None => inv["data"]["pad"].clone(),
            };
            let reply = json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": inv["function_id"], "result": result});
            if w.ws.send(Message::text(reply.to_string())).await.is_err() {
                return;
            }
        }
    })
}

// Items 3 and 5: a caller that stops reading its results is disconnected as a slow consumer
// once its queue passes the byte bound; the shared callee and a healthy caller never wait.
#[tokio::test]
async fn slow_caller_is_disconnected_and_shared_callee_keeps_serving() {
    // The callee's own queue (1500 small calls) stays well under the bound.
    let e = engine_with("max_outbound_bytes: 1048576");
    let _echo = spawn_echo(&e.url(), "echo::pad").await;
    let mut slow = RawWorker::connect(&e.url()).await;
    // Small calls, 24 MiB of results: far past the bound and the kernel's socket buffers.
    for _ in 0..1500 {
        let (_, f) = invoke("echo::pad", json!({"n": 16 << 10}));
        if slow.ws.feed(Message::text(f.to_string())).await.is_err() {
            break;
        }
    }
    let _ = slow.ws.flush().await;
    let mut healthy = RawWorker::connect(&e.url()).await;
    for _ in 0..5 {
        let r = healthy.call("echo::pad", json!({"pad": "ok"})).await;
        assert_eq!(r["result"], "ok", "{r}");
    }
    e.wait_for_log(&["slow consumer"]);
    let r = healthy.call("echo::pad", json!({"pad": "still"})).await;
    assert_eq!(r["result"], "still", "{r}");
}

// Items 4 and 3: calls to a callee that stopped reading never hold up the caller's other
// frames, and when the callee is cut off as a slow consumer its calls end invocation_stopped.
#[tokio::test]
async fn stalled_callee_does_not_block_its_caller() {
    let e = engine_with("max_outbound_bytes: 262144");
    let mut stuck = RawWorker::connect_named(&e.url(), "stuck", None).await;
    stuck.register_function("stuck::f", json!({})).await;
    stuck.sync().await;
    // `stuck` never reads again.
    let mut caller = RawWorker::connect(&e.url()).await;
    let pad = "p".repeat(16 << 10);
    let (first, f) = invoke("stuck::f", json!({"pad": pad}));
    caller.send(f).await;
    for _ in 0..1500 {
        let (_, f) = invoke("stuck::f", json!({"pad": pad}));
        caller.ws.feed(Message::text(f.to_string())).await.unwrap();
    }
    caller.ws.flush().await.unwrap();
    caller.send(json!({"type": "ping"})).await;
    caller.recv_where(|v| v["type"] == "pong").await;
    caller.sync().await;
    let r = caller
        .recv_where(move |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == first.as_str()
        })
        .await;
    assert_eq!(r["error"]["code"], "invocation_stopped", "{r}");
    e.wait_for_log(&["slow consumer"]);
    drop(stuck);
}

// Item 5: a channel whose reader never comes is reclaimed: the writer is closed, the reader's
// URL is gone.
#[tokio::test]
async fn unclaimed_channel_is_reclaimed() {
    let e = engine_with("channel_unclaimed_timeout_ms: 1000");
    let mut w = RawWorker::connect(&e.url()).await;
    let r = w.call("engine::channels::create", json!({})).await;
    let writer = &r["result"]["writer"];
    let reader = &r["result"]["reader"];
    let url = |side: &Value, dir: &str| {
        format!(
            "{}/ws/channels/{}?key={}&dir={dir}",
            e.url(),
            side["channel_id"].as_str().unwrap(),
            side["access_key"].as_str().unwrap()
        )
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url(writer, "write"))
        .await
        .expect("writer connects");
    ws.send(Message::binary(vec![7u8; 1 << 20])).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break true,
            Ok(Some(Ok(_))) => {}
        }
    };
    assert!(ended, "the writer of an unclaimed channel was not closed");
    assert!(
        tokio_tungstenite::connect_async(url(reader, "read"))
            .await
            .is_err(),
        "the reclaimed channel still accepts its reader"
    );
    e.wait_for_log(&["data channel reclaimed"]);
}

// Item 6: the connection limit answers 503 with the reason instead of exhausting fds; a slot
// comes back when a connection leaves.
#[tokio::test]
async fn connection_limit_refuses_clearly() {
    let e = engine_with("max_connections: 4");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(RawWorker::connect(&e.url()).await);
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", e.ws_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("connection limit"), "{reply}");
    e.wait_for_log(&["connection refused: connection limit reached"]);
    let gone = held.pop().unwrap();
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = format!("{}/", e.url());
        if tokio_tungstenite::connect_async(&url).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Items 6 and 13: an unfinished fragmented message cannot grow past the message limit; the
// engine closes with 1009. A text frame that is not UTF-8 closes with 1007.
#[tokio::test]
async fn protocol_errors_close_with_their_status_codes() {
    let e = engine_with("max_message_bytes: 1048576, max_frame_bytes: 524288");
    let mut w = RawWorker::connect(&e.url()).await;
    for i in 0..3 {
        let op = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        if w.ws
            .send(Message::Frame(Frame::message(
                vec![b' '; 400 << 10],
                op,
                false,
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut w).await, Some(1009));

    let mut w = RawWorker::connect(&e.url()).await;
    w.ws.send(Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(close_code(&mut w).await, Some(1007));
}

// Item 6: registrations buffered before `engine::workers::register` are bounded, and so are a
// connection's live registrations; each refusal is a structured frame.
#[tokio::test]
async fn registration_limits_refuse_clearly() {
    let e = engine_with("max_buffered_registrations: 3, max_registrations: 5");
    let mut early = RawWorker::connect(&e.url()).await;
    for i in 0..4 {
        early
            .register_function(&format!("early::f{i}"), json!({}))
            .await;
    }
    let r = early
        .recv_where(|v| v["type"] == "registrationrejected")
        .await;
    assert_eq!(r["code"], "registration_limit_exceeded", "{r}");
    assert_eq!(r["id"], "early::f3", "{r}");

    let mut w = RawWorker::connect_named(&e.url(), "many", None).await;
    for i in 0..6 {
        w.register_function(&format!("many::f{i}"), json!({})).await;
    }
    let r = w.recv_where(|v| v["type"] == "registrationrejected").await;
    assert_eq!(r["code"], "registration_limit_exceeded", "{r}");
    assert_eq!(r["id"], "many::f5", "{r}");
    // An unregister frees its slot.
    w.send(json!({"type": "unregisterfunction", "id": "many::f0"}))
        .await;
    w.register_function("many::again", json!({})).await;
    let r = w.call("engine::functions::list", json!({})).await;
    let listed = r["result"]["functions"].to_string();
    assert!(listed.contains("many::again"), "{r}");
    assert!(!listed.contains("many::f5"), "{r}");
}

// Item 7: calls in flight per connection are bounded with a structured refusal.
#[tokio::test]
async fn pending_calls_per_connection_are_bounded() {
    let e = engine_with("max_pending_calls: 5");
    let mut callee = RawWorker::connect_named(&e.url(), "silent", None).await;
    callee.register_function("silent::f", json!({})).await;
    callee.sync().await;
    let mut caller = RawWorker::connect(&e.url()).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (id, f) = invoke("silent::f", json!({}));
        caller.send(f).await;
        ids.push(id);
    }
    let last = ids[5].clone();
    let r = caller
        .recv_where(move |v| v["type"] == "invocationresult" && v["invocation_id"] == last.as_str())
        .await;
    assert_eq!(r["error"]["code"], "too_many_pending_calls", "{r}");
    // Answering one frees a slot: the next call is forwarded again.
    callee.serve_one(|_| json!(1)).await;
    // The slot is free once the engine has handled the answer, which the caller sees as its
    // result; sending before that races the callee's socket against the caller's.
    caller
        .recv_where(|v| v["type"] == "invocationresult" && v["result"] == json!(1))
        .await;
    let (id, f) = invoke("silent::f", json!({"again": true}));
    caller.send(f).await;
    let inv = callee
        .recv_where(move |v| v["type"] == "invokefunction" && v["invocation_id"] == id.as_str())
        .await;
    assert_eq!(inv["data"]["again"], true, "{inv}");
}

// Item 7: the engine never sends a frame larger than the receiver's message limit; the
// sender gets a structured error and stays connected.
#[tokio::test]
async fn frames_over_the_message_limit_are_answered_not_sent() {
    let e = engine_with("max_message_bytes: 1048576, max_frame_bytes: 1048576");
    let mut callee = RawWorker::connect_named(&e.url(), "big", None).await;
    callee.register_function("big::f", json!({})).await;
    callee.sync().await;
    let mut caller = RawWorker::connect(&e.url()).await;
    // Just under the limit inbound; the caller id the engine adds takes it over outbound.
    let (id, mut f) = invoke("big::f", json!({"pad": ""}));
    let room = 1048576 - f.to_string().len() - 8;
    f["data"]["pad"] = json!("x".repeat(room));
    caller.send(f).await;
    let r = caller
        .recv_where(move |v| v["type"] == "invocationresult" && v["invocation_id"] == id.as_str())
        .await;
    assert_eq!(r["error"]["code"], "frame_too_large", "{r}");
    callee
        .expect_none(Duration::from_millis(300), |v| {
            v["type"] == "invokefunction"
        })
        .await;
    caller.sync().await;
}

// Item 11: malformed-frame warnings are rate-limited per connection, with a count summary.
#[tokio::test]
async fn malformed_frame_warnings_are_rate_limited() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    for _ in 0..200 {
        w.send_text("x").await;
    }
    w.sync().await;
    let _ = w.ws.close(None).await;
    let log = e.wait_for_log(&["without a log line"]);
    let lines = log.matches("malformed frame dropped").count();
    assert!(lines <= 10, "{lines} malformed-frame lines logged");
    assert!(log.contains("count=190"), "{log}");
}

// Item 12: a call with a usable invocation id but a non-string function id is answered.
#[tokio::test]
async fn non_string_function_id_gets_deserialization_error() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    let id = uuid::Uuid::new_v4().to_string();
    w.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": 42, "data": {}}))
        .await;
    let r = w
        .recv_where(move |v| v["type"] == "invocationresult" && v["invocation_id"] == id.as_str())
        .await;
    assert_eq!(r["error"]["code"], "deserialization_error", "{r}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// Item 15, a measurement rather than a check: 1 GiB queued to a callee that does not read,
// then the callee leaves; prints the engine's RSS before, at the peak and after release.
// Run with `-- --ignored --nocapture`, on a release binary (III_BIN).
#[tokio::test]
#[ignore = "measurement; prints RSS figures"]
async fn memory_comes_back_after_a_burst() {
    let e = engine_with("max_outbound_bytes: 2147483648");
    let pid = e.child.id();
    let mut callee = RawWorker::connect_named(&e.url(), "sink", None).await;
    callee.register_function("sink::f", json!({})).await;
    callee.sync().await;
    let mut caller = RawWorker::connect(&e.url()).await;
    let idle = rss_kib(pid);
    let pad = "p".repeat(1 << 20);
    for _ in 0..1024 {
        let (_, f) = invoke("sink::f", json!({"pad": pad}));
        caller.ws.feed(Message::text(f.to_string())).await.unwrap();
    }
    caller.ws.flush().await.unwrap();
    caller.sync().await;
    let peak = rss_kib(pid);
    drop(callee);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stopped = 0;
    while stopped < 1024 && Instant::now() < deadline {
        match caller.recv_raw(Duration::from_secs(10)).await {
            Some(v) if v["error"]["code"] == "invocation_stopped" => stopped += 1,
            Some(_) => {}
            None => break,
        }
    }
    // Past the engine's 5 s writer-flush grace, so only the allocator can still hold memory.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = rss_kib(pid);
    println!("| engine RSS | MiB |\n| --- | --- |");
    println!("| idle | {} |", idle / 1024);
    println!("| 1 GiB queued to a non-reading callee | {} |", peak / 1024);
    println!("| 8 s after the callee left | {} |", after / 1024);
    assert_eq!(stopped, 1024, "every queued call ends invocation_stopped");
}

/// The `function_id`s of an `engine::functions::list` answer, in order.
fn listed_ids(r: &Value) -> Vec<String> {
    r["result"]["functions"]
        .as_array()
        .unwrap_or_else(|| panic!("no functions array: {r}"))
        .iter()
        .map(|f| f["function_id"].as_str().expect("function_id").to_string())
        .collect()
}

// Item 14: the unfiltered listing is served from text serialised once per change; every
// change must still show in the next answer, and the answer keeps upstream's shape.
#[tokio::test]
async fn the_cached_unfiltered_listing_is_rebuilt_on_every_change() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect_named(&e.url(), "cached", None).await;
    w.register_function("cached::one", json!({"description": "the first"}))
        .await;
    w.sync().await;

    let first = w.call("engine::functions::list", json!({})).await;
    assert_eq!(
        first["result"].as_object().map(|o| o.len()),
        Some(1),
        "only `functions`: {first}"
    );
    let one = first["result"]["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["function_id"] == "cached::one"))
        .unwrap_or_else(|| panic!("cached::one not listed: {first}"));
    assert_eq!(
        one,
        &json!({"function_id": "cached::one", "namespace": "default",
            "worker_name": "cached", "description": "the first"})
    );
    // The cached text and a filtered build of the same functions agree exactly; `prefix: ""`
    // filters nothing out but takes the building path.
    let built = w
        .call("engine::functions::list", json!({"prefix": ""}))
        .await;
    assert_eq!(first["result"], built["result"]);

    // The two unfiltered variants are cached apart: asking for internals first does not leak
    // them into the public answer, nor the reverse.
    let all = w
        .call("engine::functions::list", json!({"include_internal": true}))
        .await;
    assert!(
        listed_ids(&all).contains(&"engine::functions::list".to_string()),
        "{all}"
    );
    let public = w.call("engine::functions::list", json!({})).await;
    assert_eq!(public["result"], first["result"]);
    assert!(!listed_ids(&public)
        .iter()
        .any(|id| id.starts_with("engine::")));

    // A registration shows in the next unfiltered answer, in id order.
    w.register_function("cached::two", json!({})).await;
    w.sync().await;
    let ids = listed_ids(&w.call("engine::functions::list", json!({})).await);
    assert!(ids.contains(&"cached::one".to_string()), "{ids:?}");
    assert!(ids.contains(&"cached::two".to_string()), "{ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let all_ids = listed_ids(
        &w.call("engine::functions::list", json!({"include_internal": true}))
            .await,
    );
    assert!(all_ids.contains(&"cached::two".to_string()), "{all_ids:?}");

    // An unregistration is gone from both variants.
    w.send(json!({"type": "unregisterfunction", "id": "cached::one"}))
        .await;
    w.sync().await;
    let ids = listed_ids(&w.call("engine::functions::list", json!({})).await);
    assert!(!ids.contains(&"cached::one".to_string()), "{ids:?}");
    assert!(ids.contains(&"cached::two".to_string()), "{ids:?}");
    let all_ids = listed_ids(
        &w.call("engine::functions::list", json!({"include_internal": true}))
            .await,
    );
    assert!(!all_ids.contains(&"cached::one".to_string()), "{all_ids:?}");

    // A worker leaving takes its functions out of the cached answer.
    let mut observer = RawWorker::connect_named(&e.url(), "observer", None).await;
    w.close_and_wait_gone(&mut observer).await;
    let ids = listed_ids(&observer.call("engine::functions::list", json!({})).await);
    assert!(!ids.iter().any(|id| id.starts_with("cached::")), "{ids:?}");
}
