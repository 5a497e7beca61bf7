//! HTTP route middleware (PROTOCOL.md §4.6.1): the `http` entry's global `middleware:` list and a
//! route's `middleware_function_ids`, end to end through the real `iii` and a raw worker.

use std::io::{Read, Write};
use std::time::Duration;

use iii_tests::{header, http, EngineProc, RawWorker};
use serde_json::{json, Value};

/// An engine whose `http` entry gets `extra` appended inside its flow mapping
/// (`, middleware: [...]`).
fn engine(extra: &str) -> EngineProc {
    let extra = extra.to_string();
    EngineProc::start_with(move |ws, http| {
        format!(
            "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}, handshake_timeout_ms: 2000}}\n  - name: http\n    config: {{host: 127.0.0.1, port: {http}, default_timeout: 5000{extra}}}\n"
        )
    })
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> tokio::task::JoinHandle<Reply> {
    let (method, path, body) = (method.to_string(), path.to_string(), body.to_vec());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        http(port, &method, &path, &h, &body)
    })
}

/// A worker (in `namespace`, if any) with `functions` registered and an `http` route to
/// `handler` (resolved in that namespace) with `extra` merged into the trigger config and
/// `{"route": path}` as metadata.
async fn worker(
    e: &EngineProc,
    name: &str,
    namespace: Option<&str>,
    functions: &[&str],
    route: Option<(&str, &str, &str, Value)>,
) -> RawWorker {
    let mut w = RawWorker::connect_named(&e.url(), name, namespace).await;
    for f in functions {
        w.register_function(f, json!({})).await;
    }
    if let Some((handler, path, method, extra)) = route {
        let mut config = json!({"api_path": path, "http_method": method});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                config[k] = v;
            }
        }
        let mut t = json!({"type": "registertrigger", "id": format!("t-{handler}"), "trigger_type": "http", "function_id": handler, "config": config, "metadata": {"route": path}});
        if let Some(ns) = namespace {
            // Where the handler (and so the route and its condition and middleware) resolves.
            t["namespace"] = json!(ns);
        }
        w.send(t).await;
    }
    w.sync().await;
    w
}

/// Waits for the call of `function_id`, answers it with `result` and returns the call frame.
async fn answer(w: &mut RawWorker, function_id: &str, result: Value) -> Value {
    let inv = w
        .recv_where(|v| v["type"] == "invokefunction" && v["function_id"] == function_id)
        .await;
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": function_id, "result": result})).await;
    inv
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

fn go_on() -> Value {
    json!({"action": "continue"})
}

#[tokio::test]
async fn continue_passes_the_request_view_and_the_handler_still_runs() {
    let e = engine(", middleware: [{function_id: mw::global}]");
    let mut w = worker(
        &e,
        "mw",
        None,
        &["mw::global", "mw::route", "users::get"],
        Some((
            "users::get",
            "users/:id",
            "GET",
            json!({"middleware_function_ids": ["mw::route"]}),
        )),
    )
    .await;
    let req = request(
        e.http_port,
        "GET",
        "/users/42?q=x&lang=en",
        &[("X-Custom", "abc")],
        b"",
    );
    let g = answer(&mut w, "mw::global", go_on()).await;
    let d = &g["data"];
    assert_eq!(d["phase"], "preHandler");
    assert_eq!(d["context"], json!({}));
    assert_eq!(d["request"]["path_params"], json!({"id": "42"}));
    assert_eq!(
        d["request"]["query_params"],
        json!({"q": "x", "lang": "en"})
    );
    assert_eq!(d["request"]["headers"]["x-custom"], "abc");
    assert_eq!(d["request"]["method"], "GET");
    let mut keys: Vec<&String> = d.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["context", "phase", "request"], "{d}");
    assert_eq!(
        d["request"].as_object().unwrap().len(),
        4,
        "only path_params, query_params, headers, method: {d}"
    );
    assert_eq!(g["metadata"], json!({"route": "users/:id"}));
    // Anything that is not `respond` continues.
    let r = answer(&mut w, "mw::route", json!({"action": "skip", "note": 1})).await;
    assert_eq!(r["data"], g["data"], "route middleware gets the same view");
    assert_eq!(r["metadata"], json!({"route": "users/:id"}));
    let h = answer(
        &mut w,
        "users::get",
        json!({"status_code": 200, "body": {"ok": true}}),
    )
    .await;
    assert_eq!(h["data"]["path_params"], json!({"id": "42"}));
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(json_of(&b), json!({"ok": true}));

    // A route middleware answering null continues as well.
    let req = request(e.http_port, "GET", "/users/7", &[], b"");
    answer(&mut w, "mw::global", go_on()).await;
    answer(&mut w, "mw::route", Value::Null).await;
    answer(&mut w, "users::get", json!({"body": "fine"})).await;
    assert_eq!(req.await.unwrap().0, 200);

    // An unknown route calls no middleware: a 404 stays a 404.
    let (s, _, b) = request(e.http_port, "GET", "/nothing/here", &[], b"")
        .await
        .unwrap();
    assert_eq!(s, 404);
    assert_eq!(json_of(&b)["error"]["code"], "NOT_FOUND");
    w.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}

#[tokio::test]
async fn respond_answers_with_the_middleware_response_and_skips_the_rest() {
    let e = engine(", middleware: [{function_id: mw::gate}]");
    let mut w = worker(
        &e,
        "mw",
        None,
        &["mw::gate", "mw::route", "page::get"],
        Some((
            "page::get",
            "page",
            "GET",
            json!({"middleware_function_ids": ["mw::route"]}),
        )),
    )
    .await;

    // A global middleware: status, headers and raw body as sent; nothing after it runs.
    let req = request(e.http_port, "GET", "/page", &[], b"");
    answer(&mut w, "mw::gate", json!({"action": "respond", "response": {"status_code": 401, "headers": {"x-reason": "no token", "content-type": "text/plain"}, "body": "go away"}})).await;
    let (s, h, b) = req.await.unwrap();
    assert_eq!(s, 401);
    assert_eq!(header(&h, "x-reason"), Some("no token"));
    assert_eq!(header(&h, "content-type"), Some("text/plain"));
    assert_eq!(b, b"go away");
    w.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;

    // A route middleware: encoded like a handler's answer (JSON body, header list).
    let req = request(e.http_port, "GET", "/page", &[], b"");
    answer(&mut w, "mw::gate", go_on()).await;
    answer(&mut w, "mw::route", json!({"action": "respond", "response": {"status_code": 429, "headers": ["Retry-After: 3"], "body": {"slow": "down"}}})).await;
    let (s, h, b) = req.await.unwrap();
    assert_eq!(s, 429);
    assert_eq!(header(&h, "retry-after"), Some("3"));
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    assert_eq!(json_of(&b), json!({"slow": "down"}));
    w.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}

#[tokio::test]
async fn global_middleware_runs_before_the_body_is_read() {
    let e = engine(", body_read_timeout_ms: 3000, middleware: [{function_id: mw::gate}]");
    let mut w = worker(
        &e,
        "mw",
        None,
        &["mw::gate", "up::post"],
        Some(("up::post", "up", "POST", json!({}))),
    )
    .await;

    // Headers and half a body: the middleware is asked anyway and its refusal ends the request
    // without waiting for the rest (which never comes).
    let port = e.http_port;
    let client = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
            .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    });
    let g = answer(
        &mut w,
        "mw::gate",
        json!({"action": "respond", "response": {"status_code": 403, "body": {"denied": true}}}),
    )
    .await;
    assert!(g["data"]["request"].get("body").is_none());
    let raw = client.await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "an unread body closes the connection: {raw}"
    );
    assert!(raw.ends_with(r#"{"denied":true}"#), "{raw}");

    // Continue: the body is read afterwards and reaches the handler.
    let req = request(
        e.http_port,
        "POST",
        "/up",
        &[("Content-Type", "application/json")],
        br#"{"a":1}"#,
    );
    answer(&mut w, "mw::gate", go_on()).await;
    let h = answer(&mut w, "up::post", json!({"status_code": 201})).await;
    assert_eq!(h["data"]["body"], json!({"a": 1}));
    assert_eq!(req.await.unwrap().0, 201);
}

#[tokio::test]
async fn middleware_errors_are_500_envelopes() {
    let e = engine(", middleware: [{function_id: mw::auth}]");
    let mut w = worker(
        &e,
        "mw",
        None,
        &["mw::auth", "a::get", "b::get"],
        Some(("a::get", "a", "GET", json!({}))),
    )
    .await;
    w.send(json!({"type": "registertrigger", "id": "t-b", "trigger_type": "http", "function_id": "b::get", "config": {"api_path": "b", "middleware_function_ids": ["nope::missing"]}})).await;
    w.sync().await;

    // The middleware's own error.
    let req = request(e.http_port, "GET", "/a", &[], b"");
    let inv = w
        .recv_where(|v| v["type"] == "invokefunction" && v["function_id"] == "mw::auth")
        .await;
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "mw::auth", "error": {"code": "auth_failed", "message": "bad token"}})).await;
    let (s, h, b) = req.await.unwrap();
    assert_eq!(s, 500);
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    assert_eq!(
        json_of(&b),
        json!({"error": {"code": "auth_failed", "message": "bad token"}})
    );

    // A route middleware that does not exist.
    let req = request(e.http_port, "GET", "/b", &[], b"");
    answer(&mut w, "mw::auth", go_on()).await;
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 500);
    assert_eq!(
        json_of(&b),
        json!({"error": {"code": "function_not_found", "message": "Function nope::missing not found in namespace default"}})
    );
    // A respond whose response is not an object is the middleware's mistake, not a 200.
    let req = request(e.http_port, "GET", "/a", &[], b"");
    answer(
        &mut w,
        "mw::auth",
        json!({"action": "respond", "response": "denied"}),
    )
    .await;
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 500);
    assert_eq!(json_of(&b)["error"]["code"], "INTERNAL_ERROR");
    w.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}

#[tokio::test]
async fn a_middleware_timeout_is_504_middleware_timeout_apart_from_the_handler_timeout() {
    let e = engine(", middleware_timeout_ms: 300, middleware: [{function_id: mw::slow}]");
    let mut w = worker(
        &e,
        "mw",
        None,
        &["mw::slow", "h::get"],
        Some(("h::get", "h", "GET", json!({}))),
    )
    .await;

    let req = request(e.http_port, "GET", "/h", &[], b"");
    let stuck = w
        .recv_where(|v| v["type"] == "invokefunction" && v["function_id"] == "mw::slow")
        .await; // never answered in time
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 504);
    let env = json_of(&b);
    assert_eq!(env["error"]["code"], "MIDDLEWARE_TIMEOUT");
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mw::slow"),
        "{env}"
    );
    // The late answer changes nothing and the handler was never called.
    w.send(json!({"type": "invocationresult", "invocation_id": stuck["invocation_id"], "function_id": "mw::slow", "result": {"action": "continue"}})).await;
    w.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction" && v["function_id"] == "h::get"
    })
    .await;

    // The handler has its own, longer timeout: slower than the middleware's is still fine.
    let req = request(e.http_port, "GET", "/h", &[], b"");
    answer(&mut w, "mw::slow", go_on()).await;
    let inv = w
        .recv_where(|v| v["type"] == "invokefunction" && v["function_id"] == "h::get")
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "h::get", "result": {"body": "late but fine"}})).await;
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(json_of(&b), json!("late but fine"));
}

#[tokio::test]
async fn order_is_global_by_priority_then_condition_then_route_middleware_then_handler() {
    let e = engine(
        ", middleware: [{function_id: mw::late, priority: 20}, {function_id: mw::first, phase: preHandler, priority: -1}, {function_id: mw::mid, priority: 5}]",
    );
    // Global middleware resolves in `default`; the route and its middleware live in `team`.
    let mut g = worker(
        &e,
        "globals",
        None,
        &["mw::late", "mw::first", "mw::mid"],
        None,
    )
    .await;
    let mut t = worker(
        &e,
        "team",
        Some("team"),
        &["cond::check", "mw::r1", "mw::r2", "orders::get"],
        Some((
            "orders::get",
            "orders/:id",
            "GET",
            json!({"condition_function_id": "cond::check", "middleware_function_ids": ["mw::r2", "mw::r1"]}),
        )),
    )
    .await;

    let req = request(e.http_port, "GET", "/orders/9", &[], b"");
    let mut seen = Vec::new();
    for fid in ["mw::first", "mw::mid", "mw::late"] {
        let inv = g.recv_where(|v| v["type"] == "invokefunction").await;
        seen.push(inv["function_id"].as_str().unwrap().to_string());
        assert_eq!(inv["function_id"], fid, "global order so far: {seen:?}");
        g.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": fid, "result": {"action": "continue"}})).await;
    }
    for fid in ["cond::check", "mw::r2", "mw::r1", "orders::get"] {
        let inv = t.recv_where(|v| v["type"] == "invokefunction").await;
        seen.push(inv["function_id"].as_str().unwrap().to_string());
        assert_eq!(inv["function_id"], fid, "order so far: {seen:?}");
        let result = match fid {
            "cond::check" => json!(true),
            "orders::get" => json!({"body": {"order": 9}}),
            _ => json!({"action": "continue"}),
        };
        t.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": fid, "result": result})).await;
    }
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(json_of(&b), json!({"order": 9}));

    // Condition false: 422, and the route middleware is never called.
    let req = request(e.http_port, "GET", "/orders/10", &[], b"");
    for fid in ["mw::first", "mw::mid", "mw::late"] {
        answer(&mut g, fid, go_on()).await;
    }
    answer(&mut t, "cond::check", json!(false)).await;
    let (s, _, b) = req.await.unwrap();
    assert_eq!(s, 422);
    assert_eq!(json_of(&b)["error"]["code"], "CONDITION_NOT_MET");
    t.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "invokefunction"
    })
    .await;
}
