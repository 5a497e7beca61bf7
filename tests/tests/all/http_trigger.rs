//! The `http` trigger type and the REST trigger server, end to end.

use iii_tests::{header, http, EngineProc, RawWorker};
use serde_json::{json, Value};

async fn get(
    port: u16,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static [u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    tokio::task::spawn_blocking(move || http(port, method, path, &headers, body))
        .await
        .unwrap()
}

async fn worker_with_route(e: &EngineProc, fid: &str, path: &str, method: &str) -> RawWorker {
    let mut w = RawWorker::connect_named(&e.url(), &format!("w-{fid}"), None).await;
    w.register_function(fid, json!({})).await;
    w.send(json!({"type": "registertrigger", "id": format!("t-{fid}"), "trigger_type": "http", "function_id": fid, "config": {"api_path": path, "http_method": method}, "metadata": {"route": path}})).await;
    w.sync().await;
    w
}

#[tokio::test]
async fn request_mapping_and_response_mapping() {
    let e = EngineProc::start("");
    let mut w = worker_with_route(&e, "users::get", "users/:id", "post").await;
    let req = get(
        e.http_port,
        "POST",
        "/users/42?q=x&q=y&lang=en",
        vec![("Content-Type", "application/json"), ("X-Custom", "abc")],
        br#"{"name":"ann"}"#,
    );
    let req = tokio::spawn(req);
    let inv = w
        .serve_one(
            |_| json!({"status_code": 201, "headers": {"x-reply": "yes"}, "body": {"ok": true}}),
        )
        .await;
    let d = &inv["data"];
    assert_eq!(d["path_params"], json!({"id": "42"}));
    assert_eq!(d["query_params"], json!({"q": "y", "lang": "en"}));
    assert_eq!(d["headers"]["x-custom"], "abc");
    assert_eq!(d["path"], "users/:id");
    assert_eq!(d["method"], "POST");
    assert_eq!(d["body"], json!({"name": "ann"}));
    assert_eq!(
        d["trigger"],
        json!({"type": "http", "path": "users/:id", "method": "POST"})
    );
    assert_eq!(d["request_body"]["direction"], "read");
    assert_eq!(d["response"]["direction"], "write");
    assert!(
        d.get("_caller_worker_id").is_none(),
        "engine-originated calls carry no caller id"
    );
    assert_eq!(inv["metadata"], json!({"route": "users/:id"}));
    let (status, headers, body) = req.await.unwrap();
    assert_eq!(status, 201);
    assert_eq!(header(&headers, "x-reply"), Some("yes"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"ok": true})
    );
}

#[tokio::test]
async fn body_encoding_rules() {
    let e = EngineProc::start("");
    let mut w = worker_with_route(&e, "page::get", "page", "GET").await;
    let cases = [
        (
            json!({"headers": {"content-type": "text/html"}, "body": "<b>hi</b>"}),
            200,
            Some("text/html"),
            b"<b>hi</b>".to_vec(),
        ),
        (
            json!({"headers": ["Content-Type: text/plain"], "body": {"a": 1}}),
            200,
            Some("text/plain"),
            br#"{"a":1}"#.to_vec(),
        ),
        (
            json!({"status_code": 204, "body": null}),
            204,
            None,
            Vec::new(),
        ),
        (
            json!({"body": "plain string"}),
            200,
            Some("application/json"),
            br#""plain string""#.to_vec(),
        ),
        (json!({}), 200, Some("application/json"), b"{}".to_vec()),
    ];
    for (result, status, ct, body) in cases {
        let req = tokio::spawn(get(e.http_port, "GET", "/page", vec![], b""));
        w.serve_one(move |_| result.clone()).await;
        let (s, h, b) = req.await.unwrap();
        assert_eq!(s, status);
        assert_eq!(header(&h, "content-type"), ct);
        assert_eq!(b, body);
    }
}

#[tokio::test]
async fn errors_not_found_and_removal() {
    let e = EngineProc::start("");
    let mut w = worker_with_route(&e, "boom::it", "boom", "GET").await;
    let req = tokio::spawn(get(e.http_port, "GET", "/boom", vec![], b""));
    let inv = w.recv_where(|v| v["type"] == "invokefunction").await;
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "boom::it", "error": {"code": "invocation_failed", "message": "kaput"}})).await;
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 500);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap(),
        json!({"error": {"code": "invocation_failed", "message": "kaput"}})
    );

    let (s, _, b) = get(e.http_port, "GET", "/nothing/here", vec![], b"").await;
    assert_eq!(s, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["error"]["code"],
        "NOT_FOUND"
    );

    // Conflicting shape → structured registration error to the registering worker.
    let mut other = RawWorker::connect_named(&e.url(), "other", None).await;
    other.register_function("x::y", json!({})).await;
    other.send(json!({"type": "registertrigger", "id": "c1", "trigger_type": "http", "function_id": "x::y", "config": {"api_path": "boom/:a"}})).await;
    other.send(json!({"type": "registertrigger", "id": "c2", "trigger_type": "http", "function_id": "x::y", "config": {"api_path": "boom/:b"}})).await;
    let r = other
        .recv_where(|v| v["type"] == "triggerregistrationresult")
        .await;
    assert_eq!(r["id"], "c2");
    assert_eq!(r["error"]["code"], "trigger_registration_failed");
    assert_eq!(
        r["error"]["message"],
        "Route 'GET boom/:b' conflicts with already-registered route 'GET boom/:a'"
    );
    other.send(json!({"type": "registertrigger", "id": "c3", "trigger_type": "http", "function_id": "x::y", "config": {"http_method": "GET"}})).await;
    let r = other
        .recv_where(|v| v["type"] == "triggerregistrationresult")
        .await;
    assert!(r["error"]["message"].as_str().unwrap().contains("api_path"));

    // Worker gone → its routes are gone.
    w.close_and_wait_gone(&mut other).await;
    let (s, _, _) = get(e.http_port, "GET", "/boom", vec![], b"").await;
    assert_eq!(s, 404);
    // Unregistering a trigger removes its route.
    other
        .send(json!({"type": "unregistertrigger", "id": "c1"}))
        .await;
    other.sync().await;
    let (s, _, _) = get(e.http_port, "GET", "/boom/1", vec![], b"").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn timeout_gives_504_and_preflight_is_answered() {
    let e = EngineProc::start_with(|ws, http| {
        format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}, default_timeout: 300}}\n")
    });
    let mut w = worker_with_route(&e, "slow::it", "slow", "GET").await;
    let req = tokio::spawn(get(e.http_port, "GET", "/slow", vec![], b""));
    w.recv_where(|v| v["type"] == "invokefunction").await; // never answered
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 504);
    assert!(b.is_empty());
    let (s, h, _) = get(
        e.http_port,
        "OPTIONS",
        "/slow",
        vec![
            ("Origin", "http://x"),
            ("Access-Control-Request-Method", "GET"),
        ],
        b"",
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    assert!(header(&h, "access-control-allow-methods")
        .unwrap()
        .contains("GET"));
}

#[tokio::test]
async fn streamed_response_through_the_response_channel() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let e = EngineProc::start("");
    let mut w = worker_with_route(&e, "stream::it", "stream", "GET").await;
    let req = tokio::spawn(get(e.http_port, "GET", "/stream", vec![], b""));
    let inv = w.recv_where(|v| v["type"] == "invokefunction").await;
    let r = &inv["data"]["response"];
    let url = format!(
        "{}/ws/channels/{}?key={}&dir=write",
        e.url(),
        r["channel_id"].as_str().unwrap(),
        r["access_key"].as_str().unwrap()
    );
    let (mut ch, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ch.send(Message::text(r#"{"type":"set_status","status_code":202}"#))
        .await
        .unwrap();
    ch.send(Message::text(
        r#"{"type":"set_headers","headers":{"content-type":"text/plain"}}"#,
    ))
    .await
    .unwrap();
    ch.send(Message::binary(b"hello ".to_vec())).await.unwrap();
    ch.send(Message::binary(b"world".to_vec())).await.unwrap();
    ch.close(None).await.unwrap();
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "stream::it", "result": null})).await;
    let (s, h, b) = req.await.unwrap();
    assert_eq!(s, 202);
    assert_eq!(header(&h, "content-type"), Some("text/plain"));
    assert_eq!(b, b"hello world");
}

/// Upstream 0.22+ names: `- name: http` and `- name: state` start the REST server and the state
/// service (they used to be accepted and start nothing), and each logs no deprecation.
#[tokio::test]
async fn new_service_names_serve_rest_triggers_and_state() {
    let e = EngineProc::start_with(|ws, http| {
        format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: http\n    config: {{host: 127.0.0.1, port: {http}, default_timeout: 5000}}\n  - name: state\n")
    });
    assert_ne!(
        e.http_port,
        0,
        "the REST server did not start:\n{}",
        e.log()
    );
    let mut w = worker_with_route(&e, "hello::get", "hello", "get").await;
    let req = tokio::spawn(get(e.http_port, "GET", "/hello", vec![], b""));
    w.serve_one(|_| json!({"status_code": 200, "body": {"hi": true}}))
        .await;
    let (status, _, body) = req.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"hi": true})
    );
    let r = w
        .call("state::set", json!({"scope": "s", "key": "k", "value": 7}))
        .await;
    assert_eq!(r["result"]["new_value"], 7, "{r}");
    let r = w
        .call("state::get", json!({"scope": "s", "key": "k"}))
        .await;
    assert_eq!(r["result"], 7, "{r}");
    assert!(!e.log().contains("deprecated"), "{}", e.log());
}

/// The old names still work, with one deprecation warning naming the new name.
#[tokio::test]
async fn old_service_names_work_with_a_deprecation_warning() {
    let e = EngineProc::start("");
    e.wait_for_log(&["`iii-http` is deprecated; write `http`"]);
}

/// A near miss of a builtin fails start-up with a suggestion instead of being taken for an
/// external worker (an `rbac:` block on it would otherwise be silently dropped).
#[test]
fn a_misspelled_builtin_fails_start_up_with_a_suggestion() {
    let d = std::env::temp_dir().join(format!("iii-typo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("config.yaml"),
        "workers:\n  - name: iii_worker_manager\n    config: {port: 0, rbac: {auth_function_id: a::b}}\n",
    )
    .unwrap();
    let (code, _, err) = iii_tests::run_iii(&[], Some(&d));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did you mean `iii-worker-manager`"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
