//! HTTP-invoked functions (PROTOCOL.md §3.10) against the real engine: a raw worker registers
//! functions with an `invocation` object, another calls them, and a local HTTP server this
//! test starts answers (and checks what the engine sent: headers, body, each auth kind).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};

const TOKEN: &str = "tok-3f9a";
const API_KEY: &str = "key-77c1";
const SECRET: &str = "hmac-secret-01";

/// One request the upstream server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A local HTTP server standing in for a Lambda / Cloudflare Worker: each path answers its
/// own way, and every request is recorded.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn last(&self, path: &str) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("the upstream never received {path}"))
    }

    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }
}

fn hmac_hex(secret: &[u8], msg: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(secret).unwrap();
    mac.update(msg);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let h = |k: &str| headers.get(k).map(String::as_str).unwrap_or("");
    let unauthorized = || {
        (
            401,
            json!({"error": {"code": "unauthorized", "message": "credentials do not match"}})
                .to_string(),
        )
    };
    let (status, text): (u16, String) = match path.as_str() {
        "/echo" => (
            200,
            json!({"received": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)})
                .to_string(),
        ),
        "/empty" => (204, String::new()),
        "/text" => (200, "hello, not json".into()),
        "/envelope" => (
            422,
            json!({"error": {"code": "bad_input", "message": "field a is required"}}).to_string(),
        ),
        "/plain500" => (500, "<h1>oops</h1>".into()),
        "/plain404" => (404, String::new()),
        "/redirect" => (302, json!({"moved": true}).to_string()),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (200, "{}".into())
        }
        "/bearer" if h("authorization") == format!("Bearer {TOKEN}") => {
            (200, json!({"auth": "bearer"}).to_string())
        }
        "/apikey" if h("x-api-key") == API_KEY => (200, json!({"auth": "api_key"}).to_string()),
        "/hmac" => {
            let ts = h("x-iii-timestamp");
            let want = format!(
                "sha256={}",
                hmac_hex(
                    SECRET.as_bytes(),
                    format!(
                        "{ts}:{}",
                        base64::engine::general_purpose::STANDARD.encode(&body)
                    )
                    .as_bytes()
                )
            );
            if !ts.is_empty() && h("x-iii-signature") == want {
                (200, json!({"auth": "hmac"}).to_string())
            } else {
                unauthorized()
            }
        }
        "/bearer" | "/apikey" => unauthorized(),
        _ => (404, String::new()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    if status == 302 {
        resp.headers_mut()
            .insert("location", "http://127.0.0.1:1/elsewhere".parse().unwrap());
    }
    Ok(resp)
}

/// An engine whose HTTP-functions policy admits the local server (plain http, loopback), with
/// the auth secrets in its environment.
fn engine() -> EngineProc {
    EngineProc::start_with_env(
        |ws, http| {
            format!(
                "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}}}\n  - name: iii-http-functions\n    config:\n      security: {{url_allowlist: ['127.0.0.1'], block_private_ips: false, require_https: false}}\n"
            )
        },
        &[
            ("HTTPFN_TEST_TOKEN", TOKEN),
            ("HTTPFN_TEST_KEY", API_KEY),
            ("HTTPFN_TEST_SECRET", SECRET),
            ("HTTPFN_TEST_EMPTY", ""),
        ],
    )
}

async fn register_http(w: &mut RawWorker, id: &str, invocation: Value) {
    w.register_function(
        id,
        json!({"invocation": invocation, "description": "remote"}),
    )
    .await;
}

/// The `registrationrejected` this worker got for `id`.
async fn rejection(w: &mut RawWorker, id: &str) -> Value {
    let id = id.to_string();
    w.recv_where(move |v| v["type"] == "registrationrejected" && v["function_id"] == id.as_str())
        .await
}

fn listed<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list["result"]["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["function_id"] == id))
}

#[tokio::test]
async fn calls_carry_the_data_and_the_iii_headers_and_return_the_json_answer() {
    let up = Upstream::start().await;
    let e = engine();
    let mut owner = RawWorker::connect_named(&e.url(), "lambda-owner", None).await;
    let mut caller = RawWorker::connect_named(&e.url(), "caller", None).await;
    register_http(
        &mut owner,
        "remote::echo",
        json!({"url": up.url("/echo"), "method": "PUT", "headers": {"X-Team": "billing"}}),
    )
    .await;
    owner.sync().await;

    let r = caller
        .call(
            "remote::echo",
            json!({"a": 1, "nested": {"b": [true, null]}}),
        )
        .await;
    assert_eq!(
        r["result"],
        json!({"received": {"a": 1, "nested": {"b": [true, null]}}}),
        "{r}"
    );
    let s = up.last("/echo");
    assert_eq!(s.method, "PUT");
    assert_eq!(
        serde_json::from_slice::<Value>(&s.body).unwrap(),
        json!({"a": 1, "nested": {"b": [true, null]}}),
        "the body is exactly the data, with no `_caller_worker_id`"
    );
    assert_eq!(s.headers["content-type"], "application/json");
    assert_eq!(s.headers["x-iii-function-path"], "remote::echo");
    assert!(
        uuid::Uuid::parse_str(&s.headers["x-iii-invocation-id"]).is_ok(),
        "{:?}",
        s.headers
    );
    let ts: u64 = s.headers["x-iii-timestamp"].parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.abs_diff(now) < 120, "timestamp {ts} vs now {now}");
    assert_eq!(s.headers["x-team"], "billing");
    assert!(!s.headers.contains_key("authorization"));

    // Each call gets its own invocation id.
    caller.call("remote::echo", json!(2)).await;
    assert_ne!(
        up.last("/echo").headers["x-iii-invocation-id"],
        s.headers["x-iii-invocation-id"]
    );

    // Listed under the registering worker's name, with its description.
    let list = caller.call("engine::functions::list", json!({})).await;
    let f = listed(&list, "remote::echo").expect("listed");
    assert_eq!(f["worker_name"], "lambda-owner", "{f}");
    assert_eq!(f["description"], "remote");
    let workers = caller.call("engine::workers::list", json!({})).await;
    let me = workers["result"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "lambda-owner")
        .cloned()
        .unwrap();
    assert_eq!(me["function_count"], 1, "{me}");

    // The owner itself can call it too; its worker is never sent an invokefunction.
    let r = owner.call("remote::echo", json!({"self": true})).await;
    assert_eq!(r["result"]["received"]["self"], true, "{r}");
}

#[tokio::test]
async fn each_auth_kind_sends_what_the_server_checks() {
    let up = Upstream::start().await;
    let e = engine();
    let mut w = RawWorker::connect_named(&e.url(), "auth-owner", None).await;
    register_http(
        &mut w,
        "auth::bearer",
        json!({"url": up.url("/bearer"), "auth": {"type": "bearer", "token_key": "HTTPFN_TEST_TOKEN"}}),
    )
    .await;
    register_http(
        &mut w,
        "auth::apikey",
        json!({"url": up.url("/apikey"), "auth": {"type": "api_key", "header": "X-Api-Key", "value_key": "HTTPFN_TEST_KEY"}}),
    )
    .await;
    register_http(
        &mut w,
        "auth::hmac",
        json!({"url": up.url("/hmac"), "auth": {"type": "hmac", "secret_key": "HTTPFN_TEST_SECRET"}}),
    )
    .await;
    // Without auth the same endpoints refuse: the server's check is real.
    register_http(&mut w, "auth::none", json!({"url": up.url("/bearer")})).await;
    w.sync().await;

    for (id, kind) in [
        ("auth::bearer", "bearer"),
        ("auth::apikey", "api_key"),
        ("auth::hmac", "hmac"),
    ] {
        let r = w.call(id, json!({"order": 7, "text": "é ✓"})).await;
        assert_eq!(r["result"], json!({"auth": kind}), "{id}: {r}");
    }
    assert!(up.last("/hmac").headers["x-iii-signature"].starts_with("sha256="));
    let r = w.call("auth::none", json!({})).await;
    assert_eq!(
        r["error"],
        json!({"code": "unauthorized", "message": "credentials do not match"}),
        "{r}"
    );

    // Auth variables are resolved at registration: unset or empty ones refuse it.
    register_http(
        &mut w,
        "auth::unset",
        json!({"url": up.url("/bearer"), "auth": {"type": "bearer", "token_key": "HTTPFN_TEST_NOT_SET"}}),
    )
    .await;
    let rej = rejection(&mut w, "auth::unset").await;
    assert_eq!(rej["error"]["code"], "missing_env_var", "{rej}");
    assert!(
        rej["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTPFN_TEST_NOT_SET"),
        "{rej}"
    );
    register_http(
        &mut w,
        "auth::empty",
        json!({"url": up.url("/hmac"), "auth": {"type": "hmac", "secret_key": "HTTPFN_TEST_EMPTY"}}),
    )
    .await;
    let rej = rejection(&mut w, "auth::empty").await;
    assert_eq!(rej["error"]["code"], "secret_not_found", "{rej}");
    let list = w.call("engine::functions::list", json!({})).await;
    assert!(listed(&list, "auth::unset").is_none() && listed(&list, "auth::empty").is_none());
    assert!(e
        .log()
        .contains("HTTP-invoked function registration refused"));
}

#[tokio::test]
async fn responses_map_to_results_and_structured_errors() {
    let up = Upstream::start().await;
    let e = engine();
    let mut w = RawWorker::connect_named(&e.url(), "errs", None).await;
    for (id, path) in [
        ("m::empty", "/empty"),
        ("m::text", "/text"),
        ("m::envelope", "/envelope"),
        ("m::plain500", "/plain500"),
        ("m::plain404", "/plain404"),
        ("m::redirect", "/redirect"),
    ] {
        register_http(&mut w, id, json!({"url": up.url(path)})).await;
    }
    // Nothing listens on port 1: a transport failure.
    register_http(&mut w, "m::refused", json!({"url": "http://127.0.0.1:1/x"})).await;
    w.sync().await;

    let r = w.call("m::empty", json!({})).await;
    assert!(r.get("error").is_none() && r["result"].is_null(), "{r}");
    let r = w.call("m::text", json!({})).await;
    assert_eq!(r["error"]["code"], "invalid_response", "{r}");
    let r = w.call("m::envelope", json!({})).await;
    assert_eq!(
        r["error"],
        json!({"code": "bad_input", "message": "field a is required"}),
        "{r}"
    );
    let r = w.call("m::plain500", json!({})).await;
    assert_eq!(
        r["error"],
        json!({"code": "http_error", "message": "HTTP 500 Internal Server Error"}),
        "{r}"
    );
    let r = w.call("m::plain404", json!({})).await;
    assert_eq!(
        r["error"],
        json!({"code": "http_error", "message": "HTTP 404 Not Found"}),
        "{r}"
    );
    // 3xx is a success with its body, and the redirect is not followed.
    let r = w.call("m::redirect", json!({})).await;
    assert_eq!(r["result"], json!({"moved": true}), "{r}");
    let r = w.call("m::refused", json!({})).await;
    assert_eq!(r["error"]["code"], "http_request_failed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{r}"
    );
}

#[tokio::test]
async fn a_slow_endpoint_times_out_with_a_clear_code_and_others_keep_serving() {
    let up = Upstream::start().await;
    let e = engine();
    let mut w = RawWorker::connect_named(&e.url(), "slow", None).await;
    register_http(
        &mut w,
        "t::slow",
        json!({"url": up.url("/slow"), "timeout_ms": 300}),
    )
    .await;
    register_http(&mut w, "t::fast", json!({"url": up.url("/echo")})).await;
    w.sync().await;
    let slow_id = uuid::Uuid::new_v4().to_string();
    w.send(json!({"type": "invokefunction", "invocation_id": slow_id, "function_id": "t::slow", "data": {}}))
        .await;
    // The slow call does not hold up another one.
    let r = w.call("t::fast", json!({"n": 1})).await;
    assert_eq!(r["result"]["received"]["n"], 1, "{r}");
    let sid = slow_id.clone();
    let r = w
        .recv_where(move |v| v["type"] == "invocationresult" && v["invocation_id"] == sid.as_str())
        .await;
    assert_eq!(r["error"]["code"], "http_request_timeout", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("300 ms"),
        "{r}"
    );
}

#[tokio::test]
async fn the_allowlist_refuses_other_hosts_and_bad_invocations_are_refused() {
    let up = Upstream::start().await;
    let e = engine();
    let mut w = RawWorker::connect_named(&e.url(), "policy", None).await;
    // `localhost` is the same server, but only `127.0.0.1` is listed.
    register_http(
        &mut w,
        "p::named",
        json!({"url": format!("http://localhost:{}/echo", up.port)}),
    )
    .await;
    let rej = rejection(&mut w, "p::named").await;
    assert_eq!(rej["code"], "FUNCTION_NAMESPACE_CONFLICT", "{rej}");
    assert_eq!(rej["owner_worker_id"], "", "{rej}");
    assert_eq!(rej["error"]["code"], "url_validation_failed", "{rej}");
    assert!(
        rej["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host `localhost` is not in `security.url_allowlist` (127.0.0.1)"),
        "{rej}"
    );
    register_http(
        &mut w,
        "p::method",
        json!({"url": up.url("/echo"), "method": "TRACE"}),
    )
    .await;
    let rej = rejection(&mut w, "p::method").await;
    assert_eq!(rej["error"]["code"], "invalid_invocation", "{rej}");
    register_http(&mut w, "p::nourl", json!({"method": "POST"})).await;
    let rej = rejection(&mut w, "p::nourl").await;
    assert_eq!(rej["error"]["code"], "invalid_invocation", "{rej}");
    assert!(up.count("/echo") == 0, "nothing refused was ever called");

    // The connection stays up and serves the rest.
    register_http(&mut w, "p::ok", json!({"url": up.url("/echo")})).await;
    let r = w.call("p::ok", json!({"fine": true})).await;
    assert_eq!(r["result"]["received"]["fine"], true, "{r}");
    let r = w.call("p::named", json!({})).await;
    assert_eq!(r["error"]["code"], "function_not_found", "{r}");
}

#[tokio::test]
async fn loopback_and_plain_http_are_refused_by_default() {
    let up = Upstream::start().await;
    let e = EngineProc::start("  - name: iii-http-functions\n");
    let mut w = RawWorker::connect_named(&e.url(), "strict", None).await;
    register_http(&mut w, "s::http", json!({"url": up.url("/echo")})).await;
    let rej = rejection(&mut w, "s::http").await;
    assert_eq!(rej["error"]["code"], "url_validation_failed", "{rej}");
    assert!(
        rej["error"]["message"]
            .as_str()
            .unwrap()
            .contains("https is required"),
        "{rej}"
    );
    for (id, url) in [
        ("s::v4", format!("https://127.0.0.1:{}/echo", up.port)),
        (
            "s::mapped",
            format!("https://[::ffff:127.0.0.1]:{}/echo", up.port),
        ),
        ("s::v6", format!("https://[::1]:{}/echo", up.port)),
        // A name is refused once it resolves to loopback.
        ("s::named", format!("https://localhost:{}/echo", up.port)),
    ] {
        register_http(&mut w, id, json!({"url": url})).await;
        let rej = rejection(&mut w, id).await;
        assert_eq!(rej["error"]["code"], "url_validation_failed", "{id}: {rej}");
        let msg = rej["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("loopback") && msg.contains("block_private_ips"),
            "{id}: {msg}"
        );
    }
    let list = w.call("engine::functions::list", json!({})).await;
    for id in ["s::http", "s::v4", "s::mapped", "s::v6", "s::named"] {
        assert!(listed(&list, id).is_none(), "{id} must not be registered");
    }
    assert_eq!(
        up.count("/echo"),
        0,
        "the engine never called a blocked URL"
    );
}

#[tokio::test]
async fn without_the_service_the_registration_is_refused_naming_the_entry() {
    let e = EngineProc::start("");
    let mut w = RawWorker::connect_named(&e.url(), "no-svc", None).await;
    register_http(&mut w, "n::fn", json!({"url": "https://example.com/fn"})).await;
    let rej = rejection(&mut w, "n::fn").await;
    assert_eq!(rej["code"], "FUNCTION_NAMESPACE_CONFLICT", "{rej}");
    assert_eq!(rej["error"]["code"], "http_functions_unavailable", "{rej}");
    assert!(
        rej["error"]["message"]
            .as_str()
            .unwrap()
            .contains("- name: iii-http-functions"),
        "{rej}"
    );
    let r = w.call("n::fn", json!({})).await;
    assert_eq!(r["error"]["code"], "function_not_found", "{r}");
    // The worker's ordinary functions are unaffected.
    w.register_function("n::plain", json!({})).await;
    w.sync().await;
    let list = w.call("engine::functions::list", json!({})).await;
    assert!(listed(&list, "n::plain").is_some());
}

#[tokio::test]
async fn unregister_and_disconnect_remove_it_and_ownership_rules_hold() {
    let up = Upstream::start().await;
    let e = engine();
    let mut a = RawWorker::connect_named(&e.url(), "owner-a", None).await;
    let mut b = RawWorker::connect_named(&e.url(), "caller-b", None).await;
    register_http(&mut a, "own::fn", json!({"url": up.url("/echo")})).await;
    a.sync().await;
    assert!(b.call("own::fn", json!(1)).await.get("error").is_none());

    // Another live worker cannot take the id, as either kind of function.
    register_http(&mut b, "own::fn", json!({"url": up.url("/echo")})).await;
    let rej = rejection(&mut b, "own::fn").await;
    assert_eq!(rej["owner_worker_id"], a.worker_id.as_str(), "{rej}");
    assert!(rej.get("error").is_none(), "a plain conflict: {rej}");
    b.register_function("own::fn", json!({})).await;
    let rej = rejection(&mut b, "own::fn").await;
    assert_eq!(rej["owner_worker_id"], a.worker_id.as_str(), "{rej}");
    // Nor shadow an engine function.
    register_http(
        &mut b,
        "engine::functions::list",
        json!({"url": up.url("/echo")}),
    )
    .await;
    let rej = rejection(&mut b, "engine::functions::list").await;
    assert_eq!(rej["owner_worker_id"], "", "{rej}");
    let list = b.call("engine::functions::list", json!({})).await;
    assert!(list["result"]["functions"].is_array(), "still the builtin");

    // Unregister removes it.
    a.send(json!({"type": "unregisterfunction", "id": "own::fn"}))
        .await;
    a.sync().await;
    let r = b.call("own::fn", json!(1)).await;
    assert_eq!(r["error"]["code"], "function_not_found", "{r}");

    // The owner may switch an id between served-by-itself and HTTP-invoked.
    a.register_function("own::fn", json!({})).await;
    register_http(&mut a, "own::fn", json!({"url": up.url("/echo")})).await;
    register_http(
        &mut a,
        "own::slow",
        json!({"url": up.url("/slow"), "timeout_ms": 10000}),
    )
    .await;
    a.sync().await;
    let r = b.call("own::fn", json!({"v": 2})).await;
    assert_eq!(r["result"]["received"]["v"], 2, "{r}");

    // Disconnect removes it, and a call in flight ends with invocation_stopped.
    let slow_id = uuid::Uuid::new_v4().to_string();
    b.send(json!({"type": "invokefunction", "invocation_id": slow_id, "function_id": "own::slow", "data": {}}))
        .await;
    // Wait until the request reached the upstream, so it is truly in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while up.count("/slow") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow call never left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.close_and_wait_gone(&mut b).await;
    let sid = slow_id.clone();
    let r = b
        .recv_where(move |v| v["type"] == "invocationresult" && v["invocation_id"] == sid.as_str())
        .await;
    assert_eq!(r["error"]["code"], "invocation_stopped", "{r}");
    let r = b.call("own::fn", json!(1)).await;
    assert_eq!(r["error"]["code"], "function_not_found", "{r}");
    let list = b.call("engine::functions::list", json!({})).await;
    assert!(listed(&list, "own::fn").is_none() && listed(&list, "own::slow").is_none());
}
