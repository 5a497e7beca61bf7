//! The stream socket (PROTOCOL.md §4.6.4): a raw WebSocket client joins groups and items, gets
//! `sync` and then every event `stream::*` emits over the worker socket; `stream:join` handlers
//! can deny, `stream:leave` handlers run on close, the `auth_function` fails closed, and
//! malformed frames or slow clients harm neither the engine nor anyone else.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use iii_tests::{EngineProc, RawWorker, Ws, WAIT};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

/// A stream socket on a free port, the worker socket and `stream` on the in-memory kv.
fn engine(socket: &str) -> EngineProc {
    EngineProc::start(&format!(
        "  - name: stream\n    config: {{port: 0, {socket} adapter: {{name: kv, config: {{store_method: in_memory}}}}}}\n"
    ))
}

/// A stream-socket client that keeps frames it was not waiting for.
struct Subscriber {
    ws: Ws,
    backlog: Vec<Value>,
}

impl Subscriber {
    async fn connect(url: &str) -> Subscriber {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("stream socket upgrade");
        Subscriber {
            ws,
            backlog: Vec::new(),
        }
    }

    async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::text(t.to_string()))
            .await
            .expect("send");
    }

    async fn join(&mut self, sid: &str, group: &str, item: Option<&str>) {
        let mut data = json!({"subscriptionId": sid, "streamName": "chat", "groupId": group});
        if let Some(i) = item {
            data["id"] = json!(i);
        }
        self.send(json!({"type": "join", "data": data})).await;
    }

    /// Next JSON frame within `limit`; `None` when the socket ended or nothing came.
    async fn next(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).expect("JSON")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next(left).await.unwrap_or_else(|| {
                panic!("no {what} frame within {WAIT:?}; got {:?}", self.backlog)
            });
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// The next event frame of subscription `sid`.
    async fn event(&mut self, sid: &str) -> Value {
        let s = sid.to_string();
        self.recv_where(&format!("event for {sid}"), move |v| {
            v["type"] == "stream" && v["subscriptionId"] == s.as_str()
        })
        .await
    }

    /// Asserts that subscription `sid` gets nothing more within `limit`.
    async fn quiet(&mut self, sid: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next(left).await {
                Some(v) => self.backlog.push(v),
                None => break,
            }
        }
        let extra: Vec<&Value> = self
            .backlog
            .iter()
            .filter(|v| v["subscriptionId"] == sid)
            .collect();
        assert!(extra.is_empty(), "{sid} got unexpected frames: {extra:?}");
    }
}

async fn ok(w: &mut RawWorker, f: &str, data: Value) -> Value {
    let r = w.call(f, data).await;
    assert!(r.get("error").is_none(), "{f} failed: {r}");
    r.get("result").cloned().unwrap_or(Value::Null)
}

fn item(group: &str, id: &str, data: Value) -> Value {
    json!({"stream_name": "chat", "group_id": group, "item_id": id, "data": data})
}

#[tokio::test]
async fn subscribers_get_sync_then_every_event_of_their_group_or_item() {
    let e = engine("");
    assert!(e
        .log()
        .contains("stream socket listening on ws://127.0.0.1:"));
    let mut w = RawWorker::connect(&e.url()).await;
    ok(
        &mut w,
        "stream::set",
        item("room", "m1", json!({"text": "first"})),
    )
    .await;
    ok(
        &mut w,
        "stream::set",
        item("room", "m0", json!({"text": "zero"})),
    )
    .await;

    let mut c = Subscriber::connect(&e.stream_url()).await;
    c.join("g", "room", None).await;
    let sync = c.event("g").await;
    assert_eq!(sync["event"]["type"], "sync");
    assert_eq!(sync["streamName"], "chat");
    assert_eq!(sync["groupId"], "room");
    let mut items: Vec<String> = sync["event"]["data"]
        .as_array()
        .expect("group sync is an array")
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect();
    items.sort();
    assert_eq!(items, ["first", "zero"]);
    c.join("i", "room", Some("m1")).await;
    let sync = c.event("i").await;
    assert_eq!(
        sync["event"],
        json!({"type": "sync", "data": {"text": "first"}})
    );
    assert_eq!(sync["id"], "m1");
    c.join("absent", "room", Some("nope")).await;
    assert_eq!(
        c.event("absent").await["event"],
        json!({"type": "sync", "data": null})
    );

    // Writes over the worker socket reach the subscribers.
    ok(
        &mut w,
        "stream::set",
        item("room", "m2", json!({"text": "new"})),
    )
    .await;
    let ev = c.event("g").await;
    assert_eq!(
        ev["event"],
        json!({"type": "create", "data": {"text": "new"}})
    );
    assert_eq!(ev["id"], "m2");
    assert!(ev["timestamp"].as_u64().is_some(), "{ev}");
    ok(
        &mut w,
        "stream::set",
        item("room", "m1", json!({"text": "edited"})),
    )
    .await;
    for sid in ["g", "i"] {
        let ev = c.event(sid).await;
        assert_eq!(
            ev["event"],
            json!({"type": "update", "data": {"text": "edited"}}),
            "{sid}"
        );
    }
    ok(
        &mut w,
        "stream::update",
        json!({"stream_name": "chat", "group_id": "room", "item_id": "m1",
               "ops": [{"type": "set", "path": "text", "value": "patched"}]}),
    )
    .await;
    for sid in ["g", "i"] {
        let ev = c.event(sid).await;
        assert_eq!(ev["event"]["type"], "update", "{sid}: {ev}");
        assert_eq!(ev["event"]["data"]["text"], "patched", "{sid}: {ev}");
    }
    ok(
        &mut w,
        "stream::send",
        json!({"stream_name": "chat", "group_id": "room", "type": "typing", "data": {"who": "ann"}}),
    )
    .await;
    let ev = c.event("g").await;
    assert_eq!(
        ev["event"],
        json!({"type": "event", "event": {"type": "typing", "data": {"who": "ann"}}})
    );
    ok(
        &mut w,
        "stream::delete",
        json!({"stream_name": "chat", "group_id": "room", "item_id": "m1"}),
    )
    .await;
    for sid in ["g", "i"] {
        let ev = c.event(sid).await;
        assert_eq!(
            ev["event"],
            json!({"type": "delete", "data": {"text": "patched"}}),
            "{sid}"
        );
    }
    // Another group of the stream reaches nobody here.
    ok(&mut w, "stream::set", item("elsewhere", "m1", json!(1))).await;
    c.quiet("g", Duration::from_millis(300)).await;
    c.quiet("i", Duration::from_millis(10)).await;

    // Leaving stops the events; leaving twice, or an unknown id, is harmless.
    c.send(json!({"type": "leave", "data": {"subscriptionId": "g"}}))
        .await;
    c.send(json!({"type": "leave", "data": {"subscriptionId": "g"}}))
        .await;
    c.send(json!({"type": "leave", "data": {"subscriptionId": "never-joined"}}))
        .await;
    // One connection's frames are handled in order: the answer to this bad join proves the
    // leaves were handled, and that they answered nothing.
    c.send(json!({"type": "join", "data": {"subscriptionId": "probe", "streamName": "chat", "groupId": ""}}))
        .await;
    let probe = c.recv_where("error", |v| v["type"] == "error").await;
    assert_eq!(
        probe["subscriptionId"], "probe",
        "leave of an unknown subscription answers nothing: {probe}"
    );
    ok(&mut w, "stream::set", item("room", "m3", json!(3))).await;
    c.quiet("g", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_keeps_working() {
    let e = engine("");
    let mut w = RawWorker::connect(&e.url()).await;
    let mut c = Subscriber::connect(&e.stream_url()).await;
    let bad: [&str; 5] = [
        "not json",
        r#"{"type":"shout","data":{}}"#,
        r#"{"type":"join","data":{"streamName":"chat"}}"#,
        r#"{"type":"join","data":{"subscriptionId":"","streamName":"chat","groupId":"g"}}"#,
        "[1,2,3]",
    ];
    for b in bad {
        c.send_text(b).await;
        let err = c.recv_where("error", |v| v["type"] == "error").await;
        assert_eq!(err["error"]["code"], "invalid_stream_frame", "{b}: {err}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    c.ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    let err = c.recv_where("error", |v| v["type"] == "error").await;
    assert_eq!(err["error"]["code"], "invalid_stream_frame");
    c.join("s", "room", None).await;
    assert_eq!(c.event("s").await["event"]["type"], "sync");
    c.join("s", "room", None).await;
    let err = c.recv_where("error", |v| v["type"] == "error").await;
    assert_eq!(err["error"]["code"], "subscription_exists");
    assert_eq!(err["subscriptionId"], "s");
    ok(&mut w, "stream::set", item("room", "x", json!(1))).await;
    assert_eq!(c.event("s").await["event"]["type"], "create");
    // A plain HTTP request is told to upgrade.
    let port = e.stream_port;
    let (status, _, body) =
        tokio::task::spawn_blocking(move || iii_tests::http(port, "GET", "/", &[], b""))
            .await
            .unwrap();
    assert_eq!(status, 426);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "websocket_upgrade_required");
}

/// Starts a client connection on a task: its upgrade waits for the auth function, which the
/// test serves on the worker socket meanwhile.
fn connect_later(url: String) -> tokio::task::JoinHandle<Result<Ws, tungstenite::Error>> {
    tokio::spawn(async move {
        tokio_tungstenite::connect_async(url)
            .await
            .map(|(ws, _)| ws)
    })
}

#[tokio::test]
async fn auth_context_reaches_join_and_leave_handlers_and_a_join_handler_can_deny() {
    let e = engine("auth_function: test::auth,");
    let mut w = RawWorker::connect_named(&e.url(), "stream-handlers", None).await;
    for f in [
        "test::auth",
        "test::on_join",
        "test::on_leave",
        "test::other_join",
    ] {
        w.register_function(f, json!({})).await;
    }
    w.send(json!({"type": "registertrigger", "id": "j1", "trigger_type": "stream:join", "function_id": "test::on_join", "config": {"stream_name": "chat"}})).await;
    w.send(json!({"type": "registertrigger", "id": "j2", "trigger_type": "stream:join", "function_id": "test::other_join", "config": {"stream_name": "other"}})).await;
    w.send(json!({"type": "registertrigger", "id": "l1", "trigger_type": "stream:leave", "function_id": "test::on_leave", "config": {}})).await;
    w.sync().await;

    let url = format!("{}?token=t-ann&tag=a&tag=b", e.stream_url());
    let pending = connect_later(url);
    let auth = w
        .serve_one(|d| json!({"context": {"user": d["query_params"]["token"][0]}}))
        .await;
    assert_eq!(auth["function_id"], "test::auth");
    let input = &auth["data"];
    assert_eq!(input["path"], "/");
    assert_eq!(input["query_params"]["tag"], json!(["a", "b"]));
    assert!(input["headers"]["sec-websocket-key"].is_string(), "{input}");
    assert!(
        input["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{input}"
    );
    let ws = pending.await.unwrap().expect("upgrade after auth");
    let mut c = Subscriber {
        ws,
        backlog: Vec::new(),
    };

    // Admitted: the handler sees the auth context; the binding for another stream is not asked.
    c.join("ok", "lobby", Some("m1")).await;
    let join = w.serve_one(|_| json!({"unauthorized": false})).await;
    assert_eq!(join["function_id"], "test::on_join");
    assert_eq!(
        join["data"],
        json!({"subscription_id": "ok", "stream_name": "chat", "group_id": "lobby", "id": "m1", "context": {"user": "t-ann"}})
    );
    assert_eq!(c.event("ok").await["event"]["type"], "sync");

    // Denied: `unauthorized` and no subscription.
    c.join("no", "secret", None).await;
    let join = w.serve_one(|_| json!({"unauthorized": true})).await;
    assert_eq!(join["data"]["group_id"], "secret");
    let denied = c.event("no").await;
    assert_eq!(denied["event"], json!({"type": "unauthorized"}));
    assert_eq!(denied["groupId"], "secret");
    ok(&mut w, "stream::set", item("secret", "x", json!(1))).await;
    c.quiet("no", Duration::from_millis(300)).await;

    // A join handler that fails denies too (fail closed).
    c.join("err", "lobby", None).await;
    let inv = w.recv_where(|v| v["type"] == "invokefunction").await;
    assert_eq!(inv["function_id"], "test::on_join");
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "test::on_join", "error": {"code": "invocation_failed", "message": "db down"}})).await;
    assert_eq!(c.event("err").await["event"]["type"], "unauthorized");

    // Closing the socket runs the leave handler for the one open subscription.
    c.ws.close(None).await.unwrap();
    drop(c);
    let leave = w.recv_where(|v| v["type"] == "invokefunction").await;
    assert_eq!(leave["function_id"], "test::on_leave");
    assert_eq!(
        leave["data"],
        json!({"subscription_id": "ok", "stream_name": "chat", "group_id": "lobby", "id": "m1", "context": {"user": "t-ann"}})
    );
    w.send(json!({"type": "invocationresult", "invocation_id": leave["invocation_id"], "function_id": "test::on_leave", "result": null})).await;
    w.expect_none(Duration::from_millis(500), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}

/// The refused upgrade's status and JSON body.
fn refusal(r: Result<Ws, tungstenite::Error>) -> (u16, Value) {
    match r {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let v = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {body:?}"));
            (resp.status().as_u16(), v)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn the_auth_function_fails_closed() {
    let e = engine("auth_function: test::auth,");
    // Not registered yet: 503.
    let (status, body) = refusal(connect_later(e.stream_url()).await.unwrap());
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "stream_auth_unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("test::auth"));

    let mut w = RawWorker::connect_named(&e.url(), "auth", None).await;
    w.register_function("test::auth", json!({})).await;
    w.sync().await;
    // An error: 401 with the reason.
    let pending = connect_later(e.stream_url());
    let inv = w.recv_where(|v| v["type"] == "invokefunction").await;
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "test::auth", "error": {"code": "bad_token", "message": "expired"}})).await;
    let (status, body) = refusal(pending.await.unwrap());
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "stream_auth_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    // Results without a `context` key: 401.
    for answer in [json!(null), json!({"user": "x"}), json!("yes")] {
        let pending = connect_later(e.stream_url());
        let a = answer.clone();
        w.serve_one(move |_| a.clone()).await;
        let (status, body) = refusal(pending.await.unwrap());
        assert_eq!(status, 401, "{answer}");
        assert_eq!(body["error"]["code"], "stream_auth_failed");
    }
    // `{"context": null}` is an explicit yes without context.
    let pending = connect_later(e.stream_url());
    w.serve_one(|_| json!({"context": null})).await;
    let ws = pending.await.unwrap().expect("accepted");
    let mut c = Subscriber {
        ws,
        backlog: Vec::new(),
    };
    c.join("s", "room", None).await;
    assert_eq!(c.event("s").await["event"]["type"], "sync");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_writers_never_wait() {
    let e = engine("max_outbound_bytes: 65536,");
    let mut w = RawWorker::connect(&e.url()).await;
    let mut slow = Subscriber::connect(&e.stream_url()).await;
    let mut fast = Subscriber::connect(&e.stream_url()).await;
    slow.join("s", "room", None).await;
    assert_eq!(slow.event("s").await["event"]["type"], "sync");
    fast.join("f", "room", Some("last")).await;
    assert_eq!(fast.event("f").await["event"]["type"], "sync");
    // `slow` reads nothing from here on; 64 × 256 KiB outgrow the socket buffers (a socket
    // that is not read does not grow its receive window) and the 64 KiB outbox, and every
    // write still returns.
    let blob = "x".repeat(256 << 10);
    for i in 0..64 {
        ok(
            &mut w,
            "stream::set",
            item("room", &format!("big{i}"), json!(blob)),
        )
        .await;
    }
    ok(&mut w, "stream::set", item("room", "last", json!("done"))).await;
    assert_eq!(fast.event("f").await["event"]["data"], "done");
    e.wait_for_log(&["slow consumer"]);
    // The slow client's socket ends after whatever was already in flight.
    let mut frames = 0;
    while slow.next(WAIT).await.is_some() {
        frames += 1;
    }
    assert!(
        frames < 65,
        "the slow client was not dropped ({frames} frames)"
    );
    println!("the stalled subscriber got {frames} of 65 frames before it was dropped");
}

#[tokio::test]
async fn connections_past_max_connections_get_503_and_closed_ones_free_their_slot() {
    let e = engine("max_connections: 2,");
    let mut first = Subscriber::connect(&e.stream_url()).await;
    let second = Subscriber::connect(&e.stream_url()).await;
    let (status, body) = refusal(connect_later(e.stream_url()).await.unwrap());
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "stream_connection_limit");
    // The upgraded sockets hold their slots: the first still works.
    first.join("s", "room", None).await;
    assert_eq!(first.event("s").await["event"]["type"], "sync");
    drop(second);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect_later(e.stream_url()).await.unwrap() {
            Ok(_) => break,
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed socket never gave its slot back: {err}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
