//! Wire-level behaviour of the worker socket, driven by a raw WebSocket client.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

fn is_uuid(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok() && s.len() == 36)
}

#[tokio::test]
async fn session_starts_with_workerregistered() {
    let e = EngineProc::start("");
    let w = RawWorker::connect(&e.url()).await;
    assert!(is_uuid(&json!(w.worker_id)));
    assert!(is_uuid(&json!(w.reattach_token)));
    assert_ne!(w.worker_id, w.reattach_token);
}

#[tokio::test]
async fn call_is_routed_with_same_id_caller_id_and_side_channels() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "math", None).await;
    a.register_function("math::add", json!({"description": "Add two numbers"}))
        .await;
    a.sync().await;
    let mut b = RawWorker::connect_named(&e.url(), "caller", None).await;
    let id = uuid::Uuid::new_v4().to_string();
    b.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "math::add", "data": {"a": 2, "b": 3},
        "metadata": {"m": 1}, "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "baggage": "k=v"}))
        .await;
    let inv = a.recv_where(|v| v["type"] == "invokefunction").await;
    assert_eq!(
        inv["invocation_id"],
        id.as_str(),
        "the caller's invocation id is reused end to end"
    );
    assert_eq!(inv["function_id"], "math::add");
    assert_eq!(inv["data"]["a"], 2);
    assert_eq!(inv["data"]["_caller_worker_id"], b.worker_id.as_str());
    assert_eq!(inv["metadata"], json!({"m": 1}));
    assert_eq!(
        inv["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(inv["baggage"], "k=v");
    a.send(json!({"type": "invocationresult", "invocation_id": id, "function_id": "math::add", "result": {"c": 5}})).await;
    let r = b.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["function_id"], "math::add");
    assert_eq!(r["result"], json!({"c": 5}));
    assert_eq!(
        r["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(r.get("error").is_none());
}

#[tokio::test]
async fn non_object_payloads_are_not_modified_and_missing_data_is_null() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "echo", None).await;
    a.register_function("echo::it", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect(&e.url()).await;
    for data in [json!([1, "two"]), json!("text"), json!(42), json!(null)] {
        let d = data.clone();
        let call = tokio::spawn(async move {
            let r = b.call("echo::it", d).await;
            (b, r)
        });
        let inv = a.serve_one(|d| d.clone()).await;
        assert_eq!(inv["data"], data);
        let (nb, r) = call.await.unwrap();
        b = nb;
        assert_eq!(r["result"], data);
    }
    // `data` omitted entirely (Python SDK drops None): delivered as null, not lost.
    let id = uuid::Uuid::new_v4().to_string();
    b.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "echo::it"}))
        .await;
    let inv = a.serve_one(|_| json!("ok")).await;
    assert!(inv["data"].is_null());
    let r = b.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(r["result"], "ok");
}

#[tokio::test]
async fn handler_error_is_passed_through() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "bad", None).await;
    a.register_function("bad::fn", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect(&e.url()).await;
    let id = uuid::Uuid::new_v4().to_string();
    b.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "bad::fn", "data": {}})).await;
    let inv = a.recv_where(|v| v["type"] == "invokefunction").await;
    a.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "bad::fn",
        "error": {"code": "invocation_failed", "message": "boom", "stacktrace": "at line 1"}}))
        .await;
    let r = b.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(
        r["error"],
        json!({"code": "invocation_failed", "message": "boom", "stacktrace": "at line 1"})
    );
    assert!(r.get("result").is_none());
}

#[tokio::test]
async fn unknown_function_and_blank_namespace() {
    let e = EngineProc::start("");
    let mut b = RawWorker::connect(&e.url()).await;
    let t = Instant::now();
    let r = b.call("nope::x", json!({})).await;
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(r["error"]["code"], "function_not_found");
    assert_eq!(
        r["error"]["message"],
        "Function nope::x not found in namespace default."
    );
    let r = b
        .call_with("nope::x", json!({}), json!({"namespace": "  "}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_NAMESPACE");
}

#[tokio::test]
async fn unregister_removes_only_own_function() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "a", None).await;
    a.register_function("svc::f", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect_named(&e.url(), "b", None).await;
    // Not the owner: ignored.
    b.send(json!({"type": "unregisterfunction", "id": "svc::f"}))
        .await;
    b.sync().await;
    let list = b.call("engine::functions::list", json!({})).await;
    assert!(list["result"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["function_id"] == "svc::f"));
    a.send(json!({"type": "unregisterfunction", "id": "svc::f"}))
        .await;
    a.sync().await;
    let r = b.call("svc::f", json!({})).await;
    assert_eq!(r["error"]["code"], "function_not_found");
}

#[tokio::test]
async fn fire_and_forget_reaches_handler_without_reply() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "sink", None).await;
    a.register_function("audit::log", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect(&e.url()).await;
    b.send(json!({"type": "invokefunction", "function_id": "audit::log", "data": {"event": "login"}, "action": {"type": "void"}})).await;
    let inv = a.recv_where(|v| v["type"] == "invokefunction").await;
    assert!(
        is_uuid(&inv["invocation_id"]),
        "the target always gets an invocation id"
    );
    assert_eq!(inv["data"]["event"], "login");
    a.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "audit::log", "result": 1})).await;
    // Also without action but without id.
    b.send(json!({"type": "invokefunction", "function_id": "audit::log", "data": {"event": "2"}}))
        .await;
    let inv = a.recv_where(|v| v["type"] == "invokefunction").await;
    assert_eq!(inv["data"]["event"], "2");
    b.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invocationresult"
    })
    .await;
}

#[tokio::test]
async fn callee_disconnect_stops_the_call() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "slow", None).await;
    a.register_function("slow::fn", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect(&e.url()).await;
    let id = uuid::Uuid::new_v4().to_string();
    b.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "slow::fn", "data": {}})).await;
    a.recv_where(|v| v["type"] == "invokefunction").await;
    let t = Instant::now();
    drop(a); // socket dropped without a Close handshake
    let r = b.recv_where(|v| v["type"] == "invocationresult").await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(
        r["error"],
        json!({"code": "invocation_stopped", "message": "Invocation stopped"})
    );
    let r = b.call("slow::fn", json!({})).await;
    assert_eq!(
        r["error"]["code"], "function_not_found",
        "functions leave with their worker"
    );
}

#[tokio::test]
async fn callee_can_call_back_into_caller() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "a", None).await;
    a.register_function("a::inner", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect_named(&e.url(), "b", None).await;
    b.register_function("b::outer", json!({})).await;
    b.sync().await;
    let id = uuid::Uuid::new_v4().to_string();
    a.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "b::outer", "data": {"x": 1}})).await;
    let outer = b.recv_where(|v| v["type"] == "invokefunction").await;
    // b's handler calls back into a before answering.
    let inner_id = uuid::Uuid::new_v4().to_string();
    b.send(json!({"type": "invokefunction", "invocation_id": inner_id, "function_id": "a::inner", "data": {"y": 2}})).await;
    a.serve_one(|d| json!(d["y"].as_i64().unwrap() * 10)).await;
    let inner = b.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(inner["result"], 20);
    b.send(json!({"type": "invocationresult", "invocation_id": outer["invocation_id"], "function_id": "b::outer", "result": {"inner": 20}})).await;
    let r = a
        .recv_where(|v| v["type"] == "invocationresult" && v["invocation_id"] == id.as_str())
        .await;
    assert_eq!(r["result"]["inner"], 20);
}

#[tokio::test]
async fn malformed_frames_never_kill_the_connection() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    for bad in [
        "{not json",
        "{\"type\":\"invokefunction\",\"invocation_id\":\"9f3c3b2e-9d4e-4b1a-8a1f-2f0b5c7d1e11\",\"function_id\":\"x\",\"data\":{\"a\":",
        "{\"no_type\":1}",
        "{\"type\":\"teleport\"}",
        "{\"type\":\"registerfunction\"}",
        "{\"type\":\"invocationresult\",\"invocation_id\":\"not-a-uuid\"}",
        "[1,2,3]",
        "   ",
        "",
    ] {
        w.send_text(bad).await;
    }
    // Binary telemetry frames are consumed silently; binary JSON is accepted.
    w.ws.send(Message::binary(b"OTLP\x00\x01garbage".to_vec()))
        .await
        .unwrap();
    w.ws.send(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await
        .unwrap();
    let v = w.recv().await;
    assert_eq!(v, json!({"type": "pong"}));
    // A call whose id is usable but that misses a required field gets a structured error.
    let id = uuid::Uuid::new_v4().to_string();
    w.send(json!({"type": "invokefunction", "invocation_id": id}))
        .await;
    let r = w.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["error"]["code"], "deserialization_error");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("function_id"));
    // Still fully usable.
    let r = w.call("engine::functions::list", json!({})).await;
    assert!(r["result"]["functions"].is_array());
    assert!(
        e.log().contains("malformed frame dropped"),
        "malformed frames are logged"
    );
}

#[tokio::test]
async fn websocket_and_json_ping_are_answered() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    w.ws.send(Message::Ping(b"hello".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match w.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p.to_vec(),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("pong");
    assert_eq!(pong, b"hello");
    w.send(json!({"type": "ping"})).await;
    assert_eq!(w.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn fragmented_messages_up_to_64_mib_are_reassembled() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "big", None).await;
    a.register_function("big::len", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect(&e.url()).await;
    // A 20 MiB text message (larger than one 16 MiB frame) sent as 1 MiB fragments.
    let blob = "x".repeat(20 << 20);
    let id = uuid::Uuid::new_v4().to_string();
    let text = json!({"type": "invokefunction", "invocation_id": id, "function_id": "big::len", "data": {"blob": blob}}).to_string();
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(1 << 20).collect();
    for (i, c) in chunks.iter().enumerate() {
        let op = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        b.ws.send(Message::Frame(Frame::message(
            c.to_vec(),
            op,
            i + 1 == chunks.len(),
        )))
        .await
        .unwrap();
    }
    let inv = a.recv_where(|v| v["type"] == "invokefunction").await;
    assert_eq!(inv["data"]["blob"].as_str().unwrap().len(), 20 << 20);
    a.send(json!({"type": "invocationresult", "invocation_id": id, "function_id": "big::len", "result": 20971520})).await;
    let r = b.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(r["result"], 20971520);
}

#[tokio::test]
async fn large_and_unicode_payloads_round_trip_exactly() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "echo", None).await;
    a.register_function("echo::it", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect(&e.url()).await;
    for size in [1usize << 20, 4 << 20] {
        let payload =
            json!({"s": "é✓🚀\u{0}\"\\".repeat(size / 16), "nested": {"deep": [[[{"k": "v"}]]]}});
        let p = payload.clone();
        let caller = tokio::spawn(async move {
            let r = b.call("echo::it", p).await;
            (b, r)
        });
        let inv = a
            .serve_one(|d| {
                let mut d = d.clone();
                d.as_object_mut().unwrap().remove("_caller_worker_id");
                d
            })
            .await;
        assert_eq!(inv["data"]["s"], payload["s"]);
        let (nb, r) = caller.await.unwrap();
        b = nb;
        assert_eq!(r["result"], payload);
    }
}

#[tokio::test]
async fn function_ownership_conflict_and_takeover() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "a", None).await;
    a.register_function("svc::one", json!({})).await;
    a.sync().await;
    let mut b = RawWorker::connect_named(&e.url(), "b", None).await;
    b.register_function("svc::one", json!({})).await;
    b.register_function("svc::two", json!({})).await;
    let rej = b.recv_where(|v| v["type"] == "registrationrejected").await;
    assert_eq!(
        rej,
        json!({"type": "registrationrejected", "code": "FUNCTION_NAMESPACE_CONFLICT", "namespace": "default", "function_id": "svc::one", "owner_worker_id": a.worker_id})
    );
    b.sync().await;
    // The rest of its registrations proceed.
    let mut c = RawWorker::connect(&e.url()).await;
    let call = tokio::spawn(async move { c.call("svc::two", json!({})).await });
    b.serve_one(|_| json!("two")).await;
    assert_eq!(call.await.unwrap()["result"], "two");
    // Engine-owned ids cannot be shadowed.
    b.register_function("engine::functions::list", json!({}))
        .await;
    let rej = b.recv_where(|v| v["type"] == "registrationrejected").await;
    assert_eq!(rej["owner_worker_id"], "");
    // Once the owner is gone the id is free again.
    a.close_and_wait_gone(&mut b).await;
    b.register_function("svc::one", json!({})).await;
    b.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "registrationrejected"
    })
    .await;
}

#[tokio::test]
async fn worker_name_conflict_closes_the_newcomer() {
    let e = EngineProc::start("");
    let a = RawWorker::connect_named(&e.url(), "billing", Some("orders")).await;
    let mut b = RawWorker::connect(&e.url()).await;
    b.declare("billing", Some("orders")).await;
    let rej = b.recv_where(|v| v["type"] == "registrationrejected").await;
    assert_eq!(
        rej,
        json!({"type": "registrationrejected", "code": "WORKER_NAMESPACE_CONFLICT", "namespace": "orders", "worker_name": "billing", "owner_worker_id": a.worker_id})
    );
    assert!(
        b.recv_raw(Duration::from_secs(3)).await.is_none(),
        "the connection is closed"
    );
    // The same name in another namespace is fine.
    let mut c = RawWorker::connect(&e.url()).await;
    c.declare("billing", Some("payments")).await;
    c.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "registrationrejected"
    })
    .await;
    drop(a);
}

#[tokio::test]
async fn namespaces_scope_functions_and_buffer_registrations() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect(&e.url()).await;
    // Registrations arrive before the namespace declaration, as the SDKs send them.
    a.register_function("orders::create", json!({})).await;
    a.declare("orders-svc", Some("orders")).await;
    a.sync().await;
    let mut b = RawWorker::connect(&e.url()).await;
    let r = b.call("orders::create", json!({})).await;
    assert_eq!(r["error"]["code"], "function_not_found");
    assert_eq!(r["error"]["message"], "Function orders::create not found in namespace default. It is registered in namespace(s): orders.");
    let call = tokio::spawn(async move {
        b.call_with(
            "orders::create",
            json!({"n": 1}),
            json!({"namespace": "orders"}),
        )
        .await
    });
    a.serve_one(|d| d["n"].clone()).await;
    assert_eq!(call.await.unwrap()["result"], 1);
    // engine::* ids are reserved to default.
    a.register_function("engine::mine", json!({})).await;
    let rej = a.recv_where(|v| v["type"] == "registrationrejected").await;
    assert_eq!(rej["namespace"], "orders");
    assert_eq!(rej["owner_worker_id"], "");
}

#[tokio::test]
async fn registrations_apply_after_grace_without_declaration() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect(&e.url()).await;
    a.register_function("late::fn", json!({})).await;
    let mut b = RawWorker::connect(&e.url()).await;
    let r = b.call("late::fn", json!({})).await;
    assert_eq!(
        r["error"]["code"], "function_not_found",
        "buffered until the namespace is known"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await; // III_NAMESPACE_GRACE_MS=1000 in tests
    let call = tokio::spawn(async move { b.call("late::fn", json!({})).await });
    a.serve_one(|_| json!("late")).await;
    assert_eq!(call.await.unwrap()["result"], "late");
}

#[tokio::test]
async fn reattach_evicts_the_previous_connection() {
    let e = EngineProc::start("");
    let mut old = RawWorker::connect_named(&e.url(), "svc", None).await;
    old.register_function("svc::f", json!({})).await;
    old.sync().await;
    // Wrong token: ignored, so the replayed registration conflicts.
    let mut bad = RawWorker::connect(&e.url()).await;
    bad.send(json!({"type": "reattach", "previous_worker_id": old.worker_id, "reattach_token": uuid::Uuid::new_v4().to_string()})).await;
    bad.declare("other", None).await;
    bad.register_function("svc::f", json!({})).await;
    let rej = bad
        .recv_where(|v| v["type"] == "registrationrejected")
        .await;
    assert_eq!(rej["owner_worker_id"], old.worker_id.as_str());
    // Right token: the old connection is retired first and the replay succeeds.
    let mut new = RawWorker::connect(&e.url()).await;
    new.send(json!({"type": "reattach", "previous_worker_id": old.worker_id, "reattach_token": old.reattach_token})).await;
    new.register_function("svc::f", json!({})).await;
    new.declare("svc", None).await;
    new.expect_none(Duration::from_millis(500), |v| {
        v["type"] == "registrationrejected"
    })
    .await;
    assert!(
        old.recv_raw(Duration::from_secs(3)).await.is_none(),
        "the previous connection is closed"
    );
    let mut c = RawWorker::connect(&e.url()).await;
    let call = tokio::spawn(async move { c.call("svc::f", json!({})).await });
    new.serve_one(|_| json!("new")).await;
    assert_eq!(call.await.unwrap()["result"], "new");
}

#[tokio::test]
async fn worker_provided_trigger_types_park_replay_and_unregister() {
    let e = EngineProc::start("");
    let mut app = RawWorker::connect_named(&e.url(), "app", None).await;
    app.register_function("app::on_hook", json!({})).await;
    // Binding before the type exists: parked silently.
    app.send(json!({"type": "registertrigger", "id": "t1", "trigger_type": "webhook", "function_id": "app::on_hook", "config": {"path": "/x"}, "metadata": {"team": "a"}})).await;
    app.sync().await;
    app.expect_none(Duration::from_millis(200), |v| {
        v["type"] == "triggerregistrationresult"
    })
    .await;
    let mut prov = RawWorker::connect_named(&e.url(), "hooks", None).await;
    prov.send(json!({"type": "registertriggertype", "id": "webhook", "description": "Webhooks", "trigger_request_format": {"type": "object"}})).await;
    let reg = prov.recv_where(|v| v["type"] == "registertrigger").await;
    assert_eq!(
        reg,
        json!({"type": "registertrigger", "id": "t1", "trigger_type": "webhook", "function_id": "app::on_hook", "config": {"path": "/x"}, "metadata": {"team": "a"}})
    );
    prov.send(json!({"type": "triggerregistrationresult", "id": "t1", "trigger_type": "webhook", "function_id": "app::on_hook"})).await;
    // The provider fires it itself.
    let id = uuid::Uuid::new_v4().to_string();
    prov.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "app::on_hook", "data": {"event": 1}, "metadata": {"team": "a"}})).await;
    let inv = app.serve_one(|_| json!("handled")).await;
    assert_eq!(inv["metadata"]["team"], "a");
    assert_eq!(
        prov.recv_where(|v| v["type"] == "invocationresult").await["result"],
        "handled"
    );
    // A provider rejection is forwarded to the originator.
    app.send(json!({"type": "registertrigger", "id": "t2", "trigger_type": "webhook", "function_id": "app::on_hook", "config": {"bad": true}})).await;
    prov.recv_where(|v| v["type"] == "registertrigger" && v["id"] == "t2")
        .await;
    prov.send(json!({"type": "triggerregistrationresult", "id": "t2", "trigger_type": "webhook", "function_id": "app::on_hook", "error": {"code": "trigger_registration_failed", "message": "bad config"}})).await;
    let fwd = app
        .recv_where(|v| v["type"] == "triggerregistrationresult")
        .await;
    assert_eq!(fwd["id"], "t2");
    assert_eq!(fwd["error"]["message"], "bad config");
    // Unregister → the provider is told.
    app.send(json!({"type": "unregistertrigger", "id": "t1", "trigger_type": "webhook"}))
        .await;
    let un = prov.recv_where(|v| v["type"] == "unregistertrigger").await;
    assert_eq!(
        un,
        json!({"type": "unregistertrigger", "id": "t1", "trigger_type": "webhook"})
    );
    // Provider restart: bindings are parked, then replayed to the new provider.
    app.send(json!({"type": "registertrigger", "id": "t3", "trigger_type": "webhook", "function_id": "app::on_hook", "config": {}})).await;
    prov.recv_where(|v| v["type"] == "registertrigger" && v["id"] == "t3")
        .await;
    prov.close_and_wait_gone(&mut app).await;
    let mut prov2 = RawWorker::connect_named(&e.url(), "hooks", None).await;
    prov2
        .send(json!({"type": "registertriggertype", "id": "webhook", "description": "Webhooks"}))
        .await;
    // Both the live binding and the one parked after its rejection are replayed.
    let r1 = prov2.recv_where(|v| v["type"] == "registertrigger").await;
    let r2 = prov2.recv_where(|v| v["type"] == "registertrigger").await;
    let mut ids = [
        r1["id"].as_str().unwrap().to_string(),
        r2["id"].as_str().unwrap().to_string(),
    ];
    ids.sort();
    assert_eq!(ids, ["t2", "t3"]);
    let types = prov2.call("engine::triggers::list", json!({})).await;
    assert!(types["result"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == "webhook" && t["worker_name"] == "hooks"));
    // Owner disconnect → provider is told to disarm both.
    drop(app);
    let u1 = prov2.recv_where(|v| v["type"] == "unregistertrigger").await;
    let u2 = prov2.recv_where(|v| v["type"] == "unregistertrigger").await;
    let mut ids = [
        u1["id"].as_str().unwrap().to_string(),
        u2["id"].as_str().unwrap().to_string(),
    ];
    ids.sort();
    assert_eq!(ids, ["t2", "t3"]);
    // unregistertriggertype removes the provider.
    prov2
        .send(json!({"type": "unregistertriggertype", "id": "webhook"}))
        .await;
    prov2.sync().await;
    let types = prov2.call("engine::triggers::list", json!({})).await;
    assert!(!types["result"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == "webhook"));
}

/// The official Python SDK drops a `registertrigger` that races its own handler
/// registration (it sends `registertriggertype` before it stores the handler), and
/// answers nothing. The engine sends an unanswered one again until it is answered.
#[tokio::test]
async fn unanswered_registertrigger_is_sent_again_until_acknowledged() {
    let e = EngineProc::start("");
    let mut prov = RawWorker::connect_named(&e.url(), "hooks", None).await;
    prov.send(json!({"type": "registertriggertype", "id": "hook2", "description": "Hooks"}))
        .await;
    prov.sync().await;
    let mut app = RawWorker::connect_named(&e.url(), "app", None).await;
    app.register_function("app::on_hook", json!({})).await;
    app.send(json!({"type": "registertrigger", "id": "u1", "trigger_type": "hook2", "function_id": "app::on_hook", "config": {"k": 1}})).await;
    let first = prov.recv_where(|v| v["type"] == "registertrigger").await;
    assert_eq!(
        first,
        json!({"type": "registertrigger", "id": "u1", "trigger_type": "hook2", "function_id": "app::on_hook", "config": {"k": 1}})
    );
    // Dropped, as the racing SDK does: the same frame comes again.
    let again = prov.recv_where(|v| v["type"] == "registertrigger").await;
    assert_eq!(again, first);
    prov.send(json!({"type": "triggerregistrationresult", "id": "u1", "trigger_type": "hook2", "function_id": "app::on_hook"})).await;
    prov.sync().await;
    // Answered: no more resends (the next one would be due 3 s after the last).
    prov.expect_none(Duration::from_secs(4), |v| v["type"] == "registertrigger")
        .await;
    assert!(e
        .log()
        .contains("provider has not answered registertrigger; sending it again"));
}

#[tokio::test]
async fn introspection_lists_workers_functions_and_triggers() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "math", None).await;
    a.register_function("math::add", json!({"description": "Add two numbers", "request_format": {"type": "object", "properties": {"a": {"type": "number"}}}, "metadata": {"owner": "team"}})).await;
    a.register_function("math::hidden", json!({"metadata": {"internal": true}}))
        .await;
    a.send(json!({"type": "registertrigger", "id": "r1", "trigger_type": "http", "function_id": "math::add", "config": {"api_path": "/math/add", "http_method": "POST"}})).await;
    a.sync().await;
    let listed = a.call("engine::functions::list", json!({})).await["result"]["functions"].clone();
    // The always-on services' functions are listed, as upstream's are: configuration::* and
    // the managed workers' worker::*.
    let (always_on, fl): (Vec<Value>, Vec<Value>) =
        listed.as_array().unwrap().iter().cloned().partition(|f| {
            let id = f["function_id"].as_str().unwrap();
            id.starts_with("configuration::") || id.starts_with("worker::")
        });
    let count = |p: &str| {
        always_on
            .iter()
            .filter(|f| f["function_id"].as_str().unwrap().starts_with(p))
            .count()
    };
    assert_eq!(count("configuration::"), 5, "{listed}");
    assert_eq!(count("worker::"), 4, "{listed}");
    let ids: Vec<&str> = fl
        .iter()
        .map(|f| f["function_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["math::add"],
        "engine::* and internal functions are hidden by default"
    );
    assert_eq!(fl[0]["worker_name"], "math");
    assert_eq!(fl[0]["metadata"]["owner"], "team");
    let all = a
        .call("engine::functions::list", json!({"include_internal": true}))
        .await;
    assert!(all["result"]["functions"].as_array().unwrap().len() > 5);
    let info = a
        .call(
            "engine::functions::info",
            json!({"function_id": "math::add"}),
        )
        .await["result"]
        .clone();
    assert_eq!(info["description"], "Add two numbers");
    assert_eq!(info["request_schema"]["properties"]["a"]["type"], "number");
    assert_eq!(info["registered_triggers"][0]["trigger_type"], "http");
    let batch = a
        .call(
            "engine::functions::info",
            json!({"function_ids": ["math::add", "nope"]}),
        )
        .await["result"]
        .clone();
    assert_eq!(
        batch["functions"][1],
        json!({"function_id": "nope", "error": "not_found"})
    );
    let missing = a
        .call("engine::functions::info", json!({"function_id": "nope"}))
        .await;
    assert_eq!(missing["error"]["code"], "NOT_FOUND");
    let bad = a
        .call("engine::functions::info", json!({"function_id": 5}))
        .await;
    assert_eq!(bad["error"]["code"], "deserialization_error");
    let workers = a.call("engine::workers::list", json!({})).await["result"]["workers"].clone();
    let me = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == a.worker_id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(me["name"], "math");
    assert_eq!(me["function_count"], 2);
    assert_eq!(me["status"], "connected");
    assert!(workers
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["runtime"] == "engine" && w["name"] == "iii-http"));
    let rt = a.call("engine::registered-triggers::list", json!({})).await["result"]
        ["registered_triggers"]
        .clone();
    assert_eq!(rt[0]["id"], "r1");
    assert_eq!(rt[0]["worker_name"], "math");
    let ti = a
        .call("engine::triggers::info", json!({"id": "http"}))
        .await["result"]
        .clone();
    assert_eq!(ti["instance_count"], 1);
    assert!(ti["configuration_schema"]["properties"]["api_path"].is_object());
    let search = a
        .call("engine::functions::list", json!({"search": "add"}))
        .await;
    assert_eq!(search["result"]["functions"][0]["function_id"], "math::add");
}

#[tokio::test]
async fn workers_available_trigger_fires_on_connect_and_disconnect() {
    let e = EngineProc::start("");
    let mut watcher = RawWorker::connect_named(&e.url(), "watcher", None).await;
    watcher.register_function("watch::workers", json!({})).await;
    watcher.send(json!({"type": "registertrigger", "id": "w1", "trigger_type": "engine::workers-available", "function_id": "watch::workers", "config": null, "metadata": {"m": 1}})).await;
    watcher.sync().await;
    let other = RawWorker::connect(&e.url()).await;
    let other_id = other.worker_id.clone();
    let inv = watcher.serve_one(|_| Value::Null).await;
    assert_eq!(
        inv["data"],
        json!({"event": "worker_connected", "worker_id": other_id})
    );
    assert_eq!(inv["metadata"], json!({"m": 1}));
    drop(other);
    let inv = watcher.serve_one(|_| Value::Null).await;
    assert_eq!(
        inv["data"],
        json!({"event": "worker_disconnected", "worker_id": other_id})
    );
}

#[tokio::test]
async fn register_trigger_function_creates_ownerless_bindings() {
    let e = EngineProc::start("");
    let mut a = RawWorker::connect_named(&e.url(), "a", None).await;
    a.register_function("a::h", json!({})).await;
    a.sync().await;
    let mut admin = RawWorker::connect(&e.url()).await;
    let r = admin.call("engine::register_trigger", json!({"trigger_type": "http", "function_id": "a::h", "config": {"api_path": "owned/none"}})).await;
    let id = r["result"]["id"].as_str().expect("id").to_string();
    admin.close_and_wait_gone(&mut a).await; // the trigger survives its creator
    let port = e.http_port;
    let req =
        tokio::task::spawn_blocking(move || iii_tests::http(port, "GET", "/owned/none", &[], b""));
    a.serve_one(|_| json!({"status_code": 200, "body": "ok"}))
        .await;
    assert_eq!(req.await.unwrap().0, 200);
    let r = a
        .call("engine::unregister_trigger", json!({"id": id}))
        .await;
    assert_eq!(r["result"], json!({"removed": true}));
    let (status, _, _) =
        tokio::task::spawn_blocking(move || iii_tests::http(port, "GET", "/owned/none", &[], b""))
            .await
            .unwrap();
    assert_eq!(status, 404);
    let r = a
        .call(
            "engine::register_trigger",
            json!({"trigger_type": "http", "function_id": "a::h", "config": {}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "trigger_registration_failed");
}

#[tokio::test]
async fn data_channels_carry_text_and_binary_in_order() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    let r = w
        .call("engine::channels::create", json!({"buffer_size": 4}))
        .await["result"]
        .clone();
    let wref = &r["writer"];
    let rref = &r["reader"];
    assert_eq!(wref["direction"], "write");
    assert_eq!(rref["direction"], "read");
    assert_eq!(wref["channel_id"], rref["channel_id"]);
    let base = e.url();
    let wurl = format!(
        "{base}/ws/channels/{}?key={}&dir=write",
        wref["channel_id"].as_str().unwrap(),
        wref["access_key"].as_str().unwrap()
    );
    let rurl = format!(
        "{base}/ws/channels/{}?key={}&dir=read",
        rref["channel_id"].as_str().unwrap(),
        rref["access_key"].as_str().unwrap()
    );
    // Wrong key → 404, no upgrade.
    let bad = format!(
        "{base}/ws/channels/{}?key=wrong&dir=read",
        rref["channel_id"].as_str().unwrap()
    );
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    let (mut writer, _) = tokio_tungstenite::connect_async(wurl.clone())
        .await
        .unwrap();
    let (mut reader, _) = tokio_tungstenite::connect_async(rurl).await.unwrap();
    let sender = tokio::spawn(async move {
        writer
            .send(Message::text(
                "{\"type\":\"set_status\",\"status_code\":201}",
            ))
            .await
            .unwrap();
        for i in 0..50u8 {
            writer.send(Message::binary(vec![i; 1000])).await.unwrap();
        }
        writer.close(None).await.unwrap();
    });
    let mut got = Vec::new();
    while let Some(Ok(m)) = reader.next().await {
        match m {
            Message::Text(t) => got.push(format!("text:{}", t.as_str())),
            Message::Binary(b) => got.push(format!("bin:{}:{}", b[0], b.len())),
            Message::Close(_) => break,
            _ => {}
        }
    }
    sender.await.unwrap();
    assert_eq!(got.len(), 51);
    assert!(got[0].starts_with("text:"));
    for i in 0..50 {
        assert_eq!(got[i + 1], format!("bin:{i}:1000"));
    }
    // A side can be taken once: a second writer is upgraded and closed at once (or refused after removal).
    if let Ok((mut again, _)) = tokio_tungstenite::connect_async(wurl).await {
        let m = tokio::time::timeout(Duration::from_secs(3), again.next())
            .await
            .expect("closed promptly");
        assert!(matches!(
            m,
            None | Some(Ok(Message::Close(_))) | Some(Err(_))
        ));
    }
}

#[tokio::test]
async fn handshake_deadline_closes_silent_sockets_and_otel_is_accepted() {
    let e = EngineProc::start("");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", e.ws_port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let t = Instant::now();
    let n = tokio::time::timeout(
        Duration::from_secs(6),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("closed by the deadline")
    .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "handshake_timeout_ms is 2000 in tests"
    );
    let (mut otel, _) = tokio_tungstenite::connect_async(format!("{}/otel", e.url()))
        .await
        .expect("/otel upgrades");
    otel.send(Message::binary(b"OTLP{}".to_vec()))
        .await
        .unwrap();
    // It is not a worker: it never gets workerregistered.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), otel.next())
            .await
            .is_err()
    );
    match tokio_tungstenite::connect_async(format!("{}/nope", e.url())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn enqueue_without_a_queue_provider_is_a_clear_error() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect(&e.url()).await;
    let r = w
        .call_with(
            "payment::process",
            json!({"amount": 1}),
            json!({"action": {"type": "enqueue", "queue": "payment"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "enqueue_error");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine::queue::enqueue"),
        "{r}"
    );
    // With a provider registered, the call is handed to it and a receipt comes back.
    let mut q = RawWorker::connect_named(&e.url(), "queue", None).await;
    q.register_function("engine::queue::enqueue", json!({}))
        .await;
    q.sync().await;
    let call = tokio::spawn(async move {
        w.call_with(
            "payment::process",
            json!({"amount": 1}),
            json!({"action": {"type": "enqueue", "queue": "payment"}}),
        )
        .await
    });
    let inv = q.serve_one(|_| json!(null)).await;
    assert_eq!(inv["data"]["queue"], "payment");
    assert_eq!(inv["data"]["function_id"], "payment::process");
    assert_eq!(inv["data"]["data"], json!({"amount": 1}));
    let r = call.await.unwrap();
    assert_eq!(
        r["result"]["messageReceiptId"],
        inv["data"]["messageReceiptId"]
    );
}

#[tokio::test]
async fn register_trigger_function_waits_for_a_worker_providers_answer() {
    let e = EngineProc::start("");
    let mut prov = RawWorker::connect_named(&e.url(), "hooks", None).await;
    prov.send(json!({"type": "registertriggertype", "id": "webhook", "description": "Webhooks"}))
        .await;
    prov.sync().await;
    let mut admin = RawWorker::connect(&e.url()).await;
    let id = uuid::Uuid::new_v4().to_string();
    admin.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "engine::register_trigger",
        "data": {"trigger_type": "webhook", "function_id": "x::y", "config": {"bad": true}}})).await;
    let reg = prov.recv_where(|v| v["type"] == "registertrigger").await;
    prov.send(json!({"type": "triggerregistrationresult", "id": reg["id"], "trigger_type": "webhook", "function_id": "x::y",
        "error": {"code": "trigger_registration_failed", "message": "no such hook"}})).await;
    let r = admin.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(
        r["error"],
        json!({"code": "trigger_registration_failed", "message": "no such hook"})
    );
    // An accepted one returns its id once the provider acknowledges.
    let id = uuid::Uuid::new_v4().to_string();
    admin.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "engine::register_trigger",
        "data": {"trigger_type": "webhook", "function_id": "x::y", "config": {}}})).await;
    let reg = prov.recv_where(|v| v["type"] == "registertrigger").await;
    prov.send(json!({"type": "triggerregistrationresult", "id": reg["id"], "trigger_type": "webhook", "function_id": "x::y"})).await;
    let r = admin.recv_where(|v| v["type"] == "invocationresult").await;
    assert_eq!(r["result"]["id"], reg["id"]);
}

#[tokio::test]
async fn functions_available_trigger_fires_when_the_set_changes() {
    let e = EngineProc::start("");
    let mut watcher = RawWorker::connect_named(&e.url(), "watcher", None).await;
    watcher
        .register_function("watch::functions", json!({}))
        .await;
    watcher.send(json!({"type": "registertrigger", "id": "f1", "trigger_type": "engine::functions-available", "function_id": "watch::functions", "config": null})).await;
    watcher.sync().await;
    // The engine polls every 5 s; let one poll see the current set first.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let mut other = RawWorker::connect_named(&e.url(), "other", None).await;
    other
        .register_function("new::fn", json!({"description": "fresh"}))
        .await;
    other.sync().await;
    let inv = watcher.serve_one(|_| Value::Null).await;
    assert_eq!(inv["data"]["event"], "functions_changed");
    let fns = inv["data"]["functions"].as_array().unwrap();
    assert!(
        fns.iter()
            .any(|f| f["function_id"] == "new::fn" && f["worker_name"] == "other"),
        "{inv}"
    );
}
