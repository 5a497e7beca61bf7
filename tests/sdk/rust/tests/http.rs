//! `http` triggers registered through the official Rust SDK (`iii-sdk` 0.25.0) and called with
//! plain HTTP requests against the engine's REST listener (PROTOCOL.md §4.6.1).
//!
//! `IIIClient::register_trigger` is deprecated in 0.25 in favour of `observe`, which needs the
//! engine's observe extension (not advertised by a 0.23-compatible engine), so the deprecated
//! call is the one SDK users have for HTTP routes here.
#![allow(
    deprecated,
    reason = "register_trigger is the SDK's only call for HTTP routes against a 0.23-compatible engine; see above"
)]

use std::time::{Duration, Instant};

use iii_sdk::builtin_triggers::{HttpMethod, HttpTriggerConfig};
use iii_sdk::trigger::IIITrigger;
use iii_sdk::{Error, IIIClient, RegisterFunction};
use iii_sdk_rust_tests::*;
use iii_tests::{header, EngineProc};
use serde_json::{json, Value};

/// Polls `METHOD path` until the status is not 404 (the route is live) and returns the response.
async fn request_when_live(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = http(port, method, path, headers, body).await;
        if r.0 != 404 {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "route {method} {path} never became live (still 404)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json_body(b: &[u8]) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

fn register_http(w: &IIIClient, function_id: &str, path: &str, method: HttpMethod) {
    w.register_trigger(
        IIITrigger::Http(HttpTriggerConfig::new(path).method(method)).for_function(function_id),
    )
    .expect("register http trigger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_trigger_maps_request_and_response() {
    let e = EngineProc::start("");
    let w = connect(&e.url(), &unique_name("http-w"));
    w.register_function(
        "items::update",
        RegisterFunction::new_async(|req: Value| async move {
            Ok(json!({
                "status_code": 201,
                "headers": {"x-handled-by": "rust-sdk"},
                "body": {
                    "id": req["path_params"]["id"],
                    "q": req["query_params"]["q"],
                    "got": req["body"],
                    "method": req["method"],
                    "path": req["path"],
                    "ct": req["headers"]["content-type"],
                    "has_caller_id": req.get("_caller_worker_id").is_some(),
                }
            }))
        }),
    );
    let mut input = IIITrigger::Http(HttpTriggerConfig::new("/items/:id").method(HttpMethod::Post))
        .for_function("items::update");
    input.metadata = Some(json!({"route": "items"}));
    w.register_trigger(input).expect("register_trigger");
    w.wait_until_registered(WAIT).await.expect("registered");

    let (status, headers, body) = request_when_live(
        e.http_port,
        "POST",
        "/items/42?q=hello",
        &[("Content-Type", "application/json")],
        br#"{"name":"widget","tags":["a","b"],"price":9.5}"#,
    )
    .await;
    assert_eq!(status, 201, "body: {}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "x-handled-by"), Some("rust-sdk"));
    assert!(
        header(&headers, "content-type").is_some_and(|c| c.contains("application/json")),
        "{headers:?}"
    );
    let b = json_body(&body);
    assert_eq!(b["id"], "42");
    assert_eq!(b["q"], "hello");
    assert_eq!(
        b["got"],
        json!({"name": "widget", "tags": ["a", "b"], "price": 9.5})
    );
    assert_eq!(b["method"], "POST");
    assert_eq!(b["path"], "items/:id", "path is the registered path: {b}");
    assert_eq!(b["ct"], "application/json");
    assert_eq!(
        b["has_caller_id"], false,
        "engine-originated calls carry no _caller_worker_id"
    );

    // Wrong method on the same path, and an unknown path: 404 NOT_FOUND envelope.
    let (status, _, body) = http(e.http_port, "GET", "/items/42", &[], b"").await;
    assert_eq!(status, 404);
    assert_eq!(json_body(&body)["error"]["code"], "NOT_FOUND");
    let (status, _, body) = http(e.http_port, "POST", "/nothing/here", &[], b"{}").await;
    assert_eq!(status, 404);
    assert_eq!(json_body(&body)["error"]["code"], "NOT_FOUND");

    stop(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_trigger_metadata_and_defaults() {
    let e = EngineProc::start("");
    let w = connect(&e.url(), &unique_name("http-meta"));
    w.register_function(
        "meta::route",
        RegisterFunction::new_async(|_req: Value, metadata: Option<Value>| async move {
            // No status_code: defaults to 200.
            Ok(json!({"body": {"metadata": metadata}}))
        }),
    );
    let mut input =
        IIITrigger::Http(HttpTriggerConfig::new("meta/check")).for_function("meta::route");
    input.metadata = Some(json!({"route": "meta", "level": 2}));
    w.register_trigger(input).expect("register_trigger");
    w.wait_until_registered(WAIT).await.expect("registered");

    // http_method defaults to GET; the binding's metadata is the handler's metadata argument.
    let (status, _, body) = request_when_live(e.http_port, "GET", "/meta/check", &[], b"").await;
    assert_eq!(status, 200, "body: {}", String::from_utf8_lossy(&body));
    assert_eq!(
        json_body(&body)["metadata"],
        json!({"route": "meta", "level": 2})
    );

    stop(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_handler_error_is_500_envelope() {
    let e = EngineProc::start("");
    let w = connect(&e.url(), &unique_name("http-err"));
    w.register_function(
        "http::fails",
        RegisterFunction::new_async(|_: Value| async move {
            Err::<Value, Error>(Error::Handler("database unavailable".into()))
        }),
    );
    w.register_function(
        "http::fails_coded",
        RegisterFunction::new_async(|_: Value| async move {
            Err::<Value, Error>(Error::Remote {
                code: "teapot_failure".into(),
                message: "no tea today".into(),
                stacktrace: None,
            })
        }),
    );
    register_http(&w, "http::fails", "/fails", HttpMethod::Post);
    register_http(&w, "http::fails_coded", "/fails/coded", HttpMethod::Get);
    w.wait_until_registered(WAIT).await.expect("registered");

    let (status, _, body) = request_when_live(
        e.http_port,
        "POST",
        "/fails",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(status, 500, "body: {}", String::from_utf8_lossy(&body));
    let b = json_body(&body);
    assert_eq!(b["error"]["code"], "invocation_failed", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("database unavailable")),
        "{b}"
    );

    let (status, _, body) = request_when_live(e.http_port, "GET", "/fails/coded", &[], b"").await;
    assert_eq!(status, 500, "body: {}", String::from_utf8_lossy(&body));
    let b = json_body(&body);
    assert_eq!(b["error"]["code"], "teapot_failure", "{b}");
    assert_eq!(b["error"]["message"], "no tea today", "{b}");

    stop(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_removed_when_trigger_unregistered_or_worker_leaves() {
    let e = EngineProc::start("");
    let w = connect(&e.url(), &unique_name("http-gone"));
    w.register_function(
        "gone::a",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!({"body": "a"})) }),
    );
    w.register_function(
        "gone::b",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!({"body": "b"})) }),
    );
    let ta = w
        .register_trigger(
            IIITrigger::Http(HttpTriggerConfig::new("/gone/a")).for_function("gone::a"),
        )
        .expect("trigger a");
    register_http(&w, "gone::b", "/gone/b", HttpMethod::Get);
    w.wait_until_registered(WAIT).await.expect("registered");

    let (status, _, body) = request_when_live(e.http_port, "GET", "/gone/a", &[], b"").await;
    assert_eq!((status, json_body(&body)), (200, json!("a")));
    let (status, _, _) = request_when_live(e.http_port, "GET", "/gone/b", &[], b"").await;
    assert_eq!(status, 200);

    // Trigger::unregister removes just that route.
    ta.unregister();
    wait_for_status(e.http_port, "/gone/a", 404).await;
    let (status, _, _) = http(e.http_port, "GET", "/gone/b", &[], b"").await;
    assert_eq!(status, 200);

    // The worker leaving removes its remaining routes.
    stop(&w);
    wait_for_status(e.http_port, "/gone/b", 404).await;
}

async fn wait_for_status(port: u16, path: &str, want: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _, _) = http(port, "GET", path, &[], b"").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still {status} after 10 s, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
