//! Worker RBAC and listener middleware as a user configures them (issue 11, PROTOCOL.md §9):
//! one engine with a trusted listener, an RBAC listener (auth function, `expose_functions` by
//! match, metadata and namespace, the three registration hooks) and a middleware listener.
//! The auth function, hooks and middleware are served by a worker on the trusted listener.

use std::time::Duration;

use futures_util::StreamExt;
use iii_tests::{free_port, EngineProc, RawWorker};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

struct Ports {
    rbac: u16,
    mw: u16,
}

fn engine() -> (EngineProc, Ports) {
    let ports = Ports {
        rbac: free_port(),
        mw: free_port(),
    };
    let (r, m) = (ports.rbac, ports.mw);
    let e = EngineProc::start_with(move |ws, _| {
        format!(
            r#"workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {ws}, handshake_timeout_ms: 2000}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {r}
      handshake_timeout_ms: 1500
      rbac:
        auth_function_id: auth::check
        expose_functions:
          - match("link::*")
          - metadata: {{ public: true }}
          - metadata: {{ tier: match("pro*") }}
          - {{ match: "svc::*", namespace: orders }}
          - match("engine::functions::*")
          - match("engine::register_trigger")
        on_function_registration_function_id: auth::on_fn
        on_trigger_registration_function_id: auth::on_trigger
        on_trigger_type_registration_function_id: auth::on_type
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {m}, middleware_function_id: auth::mw}}
"#
        )
    });
    (e, ports)
}

/// What the auth function grants for each `?token=`.
fn auth(input: &Value) -> Result<Value, (&'static str, &'static str)> {
    if input["headers"]["authorization"] == "Bearer from-header" {
        return Ok(json!({"context": {"via": "header"}}));
    }
    let token = input["query_params"]["token"][0].as_str().unwrap_or("");
    match token {
        "full" => Ok(json!({
            "namespaces": {"default": [], "tenant": ["t::*"]},
            "allowed_functions": ["extra::one"],
            "forbidden_functions": ["pub::secret", "engine::log::info"],
            "context": {"user": "u1"},
        })),
        "prefix" => Ok(json!({"function_registration_prefix": "p1", "context": {"tenant": "p1"}})),
        "types" => Ok(
            json!({"allow_trigger_type_registration": true, "allowed_trigger_types": ["engine::functions-available", "mine"]}),
        ),
        "null" => Ok(Value::Null),
        "slow" => Err(("SLOW", "")),
        _ => Err(("DENIED", "unknown token")),
    }
}

/// The trusted worker: functions with metadata for the exposure rules, plus the auth function,
/// the hooks and the middleware. Records every call it serves as (function_id, data).
async fn provider(url: &str) -> tokio::sync::mpsc::UnboundedReceiver<(String, Value)> {
    let mut w = RawWorker::connect_named(url, "provider", None).await;
    for (id, md) in [
        ("link::create", json!({})),
        ("pub::a", json!({"public": true})),
        ("pub::secret", json!({"public": true})),
        ("pro::b", json!({"tier": "pro-2"})),
        ("priv::c", json!({"public": false})),
        ("extra::one", json!({})),
        ("auth::check", json!({})),
        ("auth::on_fn", json!({})),
        ("auth::on_trigger", json!({})),
        ("auth::on_type", json!({})),
        ("auth::mw", json!({})),
    ] {
        w.register_function(id, json!({"metadata": md})).await;
    }
    w.sync().await;
    let mut t = RawWorker::connect_named(url, "tenant-provider", Some("tenant")).await;
    t.register_function("t::x", json!({})).await;
    t.sync().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for mut w in [w, t] {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let Some(v) = w.recv_raw(Duration::from_secs(3600)).await else {
                    return;
                };
                if v["type"] != "invokefunction" {
                    continue;
                }
                let fid = v["function_id"].as_str().unwrap_or("").to_string();
                let data = v["data"].clone();
                let _ = tx.send((fid.clone(), data.clone()));
                let answer: Result<Value, (&str, &str)> = match fid.as_str() {
                    "auth::check" => auth(&data),
                    "auth::on_fn" => {
                        let id = data["function_id"].as_str().unwrap_or("");
                        if id.starts_with("drop::") {
                            Ok(Value::Null)
                        } else if let Some(rest) = id.strip_prefix("rename::") {
                            Ok(
                                json!({"function_id": format!("renamed::{rest}"), "description": "set by hook"}),
                            )
                        } else {
                            Ok(json!({}))
                        }
                    }
                    "auth::on_trigger" => {
                        if data["trigger_id"] == "drop-me" {
                            Ok(Value::Null)
                        } else {
                            Ok(json!({}))
                        }
                    }
                    "auth::on_type" => {
                        if data["trigger_type_id"] == "bad" {
                            Err(("NO", "no such type"))
                        } else {
                            Ok(json!({"description": "checked by hook"}))
                        }
                    }
                    "auth::mw" => {
                        if data["function_id"] == "link::create"
                            && data["payload"]["reject"] == true
                        {
                            Err(("REJECTED", "middleware said no"))
                        } else {
                            Ok(json!({"via_middleware": data}))
                        }
                    }
                    _ => Ok(json!({"served": fid, "data": data})),
                };
                if matches!(&answer, Err(("SLOW", _))) {
                    continue;
                }
                let frame = match answer {
                    Ok(r) => {
                        json!({"type": "invocationresult", "invocation_id": v["invocation_id"], "function_id": fid, "result": r})
                    }
                    Err((code, msg)) => {
                        json!({"type": "invocationresult", "invocation_id": v["invocation_id"], "function_id": fid, "error": {"code": code, "message": msg}})
                    }
                };
                w.send(frame).await;
            }
        });
    }
    rx
}

/// Connects with `query` and optional headers; returns the first frame and the socket.
async fn connect_raw(
    port: u16,
    query: &str,
    headers: &[(&str, &str)],
) -> (
    Value,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    let mut req = format!("ws://127.0.0.1:{port}/{query}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => break serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break Value::Null,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("no first frame within 10 s"),
        }
    };
    (first, ws)
}

/// After an `AUTH_ERROR` frame the engine closes the socket.
async fn assert_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "socket still open after AUTH_ERROR");
}

fn function_ids(r: &Value) -> Vec<String> {
    r["result"]["functions"]
        .as_array()
        .unwrap_or_else(|| panic!("no listing: {r}"))
        .iter()
        .map(|f| f["function_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn auth_decides_who_connects_and_the_engine_keeps_serving() {
    let (e, p) = engine();
    let mut seen = provider(&e.url()).await;

    // Accepted: the auth function saw lowercase headers, raw query values and the address.
    let (first, _ok) = connect_raw(p.rbac, "?token=full&x=a%20b", &[("X-Custom", "v1")]).await;
    assert_eq!(first["type"], "workerregistered", "{first}");
    let (fid, input) = seen.recv().await.unwrap();
    assert_eq!(fid, "auth::check");
    assert_eq!(
        input["query_params"],
        json!({"token": ["full"], "x": ["a%20b"]})
    );
    assert_eq!(input["headers"]["x-custom"], "v1");
    assert_eq!(input["ip_address"], "127.0.0.1");

    let (first, _h) = connect_raw(p.rbac, "", &[("Authorization", "Bearer from-header")]).await;
    assert_eq!(first["type"], "workerregistered", "{first}");

    // Refused: an auth error, a null result, and an auth function that never answers.
    for (query, needle) in [
        ("?token=nope", "unknown token"),
        ("?token=null", "returned null"),
        ("?token=slow", "within 1500 ms"),
    ] {
        let (first, mut ws) = connect_raw(p.rbac, query, &[]).await;
        assert_eq!(first["type"], "error", "{query}: {first}");
        assert_eq!(first["error"]["code"], "AUTH_ERROR", "{first}");
        let msg = first["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{query}: {msg}");
        assert_closed(&mut ws).await;
    }

    // The trusted listener and the admitted sessions are unaffected.
    let mut trusted = RawWorker::connect(&e.url()).await;
    let r = trusted.call("pub::a", json!({"n": 1})).await;
    assert_eq!(r["result"]["served"], "pub::a", "{r}");
}

#[tokio::test]
async fn calls_follow_the_authorization_decision() {
    let (e, p) = engine();
    let _seen = provider(&e.url()).await;
    let url = format!("ws://127.0.0.1:{}/?token=full", p.rbac);
    let mut w = RawWorker::connect(&url).await;

    for (id, ns) in [
        ("link::create", "default"),
        ("pub::a", "default"),
        ("pro::b", "default"),
        ("extra::one", "default"),
        ("t::x", "tenant"),
    ] {
        let r = w.call_with(id, json!({}), json!({"namespace": ns})).await;
        assert_eq!(r["result"]["served"], id, "{id} in {ns}: {r}");
    }
    for (id, ns, hint) in [
        ("priv::c", "default", "add to rbac.expose_functions"),
        (
            "pub::secret",
            "default",
            "remove from rbac.forbidden_functions",
        ),
        (
            "engine::log::info",
            "default",
            "remove from rbac.forbidden_functions",
        ),
        ("missing::fn", "default", "add to rbac.expose_functions"),
        ("link::create", "tenant", "add to rbac.expose_functions"),
    ] {
        let r = w.call_with(id, json!({}), json!({"namespace": ns})).await;
        assert_eq!(r["error"]["code"], "FORBIDDEN", "{id} in {ns}: {r}");
        assert_eq!(
            r["error"]["message"],
            format!("function '{id}' not allowed ({hint})"),
            "{r}"
        );
    }
    // Infrastructure functions stay allowed.
    let r = w.call("engine::log::warn", json!({"message": "hi"})).await;
    assert!(r.get("error").is_none(), "{r}");

    // A void call that is denied still gets its FORBIDDEN answer.
    w.send(json!({"type": "invokefunction", "invocation_id": "6a7f5b8e-1c2d-4e3f-8a9b-0c1d2e3f4a5b", "function_id": "priv::c", "data": {}, "action": {"type": "void"}})).await;
    let r = w
        .recv_where(|v| v["type"] == "invocationresult" && v["function_id"] == "priv::c")
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");

    // Listings hide what the session may not call; info refuses it.
    let r = w.call("engine::functions::list", json!({})).await;
    let ids = function_ids(&r);
    assert!(
        ids.contains(&"pub::a".to_string()) && ids.contains(&"link::create".to_string()),
        "{ids:?}"
    );
    for hidden in ["priv::c", "pub::secret", "auth::check"] {
        assert!(
            !ids.contains(&hidden.to_string()),
            "{hidden} listed: {ids:?}"
        );
    }
    let r = w
        .call("engine::functions::info", json!({"function_id": "priv::c"}))
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");
    let r = w
        .call(
            "engine::functions::info",
            json!({"function_ids": ["pub::a", "priv::c", "nope::x"]}),
        )
        .await;
    let rows = r["result"]["functions"].as_array().unwrap();
    assert_eq!(rows[0]["function_id"], "pub::a");
    assert!(rows[0].get("error").is_none(), "{r}");
    assert_eq!(rows[1]["error"], "forbidden", "{r}");
    assert_eq!(
        rows[2]["error"], "forbidden",
        "a missing function is not exposed either: {r}"
    );

    // The namespace grants bound what the session may declare.
    let r = w
        .call(
            "engine::workers::register",
            json!({"name": "w", "namespace": "elsewhere"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");
    assert_eq!(
        r["error"]["message"],
        "namespace 'elsewhere' not allowed for this session (permitted: default, tenant)"
    );
    let r = w
        .call(
            "engine::workers::register",
            json!({"name": "w", "namespace": "tenant"}),
        )
        .await;
    assert_eq!(r["result"]["success"], true, "{r}");
}

#[tokio::test]
async fn registrations_buffered_for_a_refused_namespace_are_not_applied_in_default() {
    let (e, p) = engine();
    let _seen = provider(&e.url()).await;
    let mut trusted = RawWorker::connect(&e.url()).await;
    // Registrations before any namespace declaration are buffered (PROTOCOL.md §3.8).
    let mut w = RawWorker::connect(&format!("ws://127.0.0.1:{}/?token=full", p.rbac)).await;
    w.register_function("q::meant_for_elsewhere", json!({}))
        .await;
    let r = w
        .call(
            "engine::workers::register",
            json!({"name": "w", "namespace": "elsewhere"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");
    e.wait_for_log(&["registrations it sent before are dropped"]);
    let r = trusted
        .call("engine::functions::list", json!({"prefix": "q::"}))
        .await;
    assert!(function_ids(&r).is_empty(), "{r}");

    // A refused declaration followed by a permitted one applies the buffer there.
    let mut w2 = RawWorker::connect(&format!("ws://127.0.0.1:{}/?token=full", p.rbac)).await;
    w2.register_function("q::kept", json!({})).await;
    let r = w2
        .call(
            "engine::workers::register",
            json!({"name": "w2", "namespace": "elsewhere"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");
    let r = w2
        .call(
            "engine::workers::register",
            json!({"name": "w2", "namespace": "tenant"}),
        )
        .await;
    assert_eq!(r["result"]["success"], true, "{r}");
    let r = trusted
        .call("engine::functions::list", json!({"prefix": "q::"}))
        .await;
    assert!(
        r["result"].to_string().contains("q::kept"),
        "applied in the permitted namespace: {r}"
    );
}

#[tokio::test]
async fn registration_hooks_allow_rewrite_and_drop() {
    let (e, p) = engine();
    let mut seen = provider(&e.url()).await;
    let mut trusted = RawWorker::connect(&e.url()).await;
    let mut w = RawWorker::connect(&format!("ws://127.0.0.1:{}/?token=types", p.rbac)).await;
    w.declare("hooked", None).await;
    w.register_function("keep::me", json!({"description": "as sent"}))
        .await;
    w.register_function("rename::me", json!({})).await;
    w.register_function("drop::me", json!({})).await;
    w.send(json!({"type": "registertriggertype", "id": "bad", "description": "x"}))
        .await;
    w.send(json!({"type": "registertriggertype", "id": "mine", "description": "x"}))
        .await;
    w.send(json!({"type": "registertrigger", "id": "drop-me", "trigger_type": "engine::functions-available", "function_id": "link::create", "config": {}})).await;
    w.send(json!({"type": "registertrigger", "id": "kept", "trigger_type": "engine::functions-available", "function_id": "link::create", "config": {}})).await;
    w.send(json!({"type": "registertrigger", "id": "wrong-type", "trigger_type": "cron", "function_id": "link::create", "config": {"expression": "* * * * * *"}})).await;
    w.send(json!({"type": "registertrigger", "id": "denied-target", "trigger_type": "engine::functions-available", "function_id": "priv::c", "config": {}})).await;
    let r = w
        .recv_where(|v| v["type"] == "triggerregistrationresult" && v["id"] == "denied-target")
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");

    let r = trusted
        .call("engine::functions::list", json!({"prefix": ""}))
        .await;
    let ids = function_ids(&r);
    assert!(ids.contains(&"keep::me".to_string()), "{ids:?}");
    assert!(
        ids.contains(&"renamed::me".to_string()) && !ids.contains(&"rename::me".to_string()),
        "{ids:?}"
    );
    assert!(!ids.contains(&"drop::me".to_string()), "{ids:?}");
    let r = trusted
        .call(
            "engine::functions::info",
            json!({"function_id": "renamed::me"}),
        )
        .await;
    assert_eq!(r["result"]["description"], "set by hook", "{r}");

    let r = trusted.call("engine::triggers::list", json!({})).await;
    let types: Vec<&str> = r["result"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"mine") && !types.contains(&"bad"),
        "{types:?}"
    );
    let mine = trusted
        .call("engine::triggers::info", json!({"id": "mine"}))
        .await;
    assert_eq!(mine["result"]["description"], "checked by hook", "{mine}");

    let r = trusted
        .call(
            "engine::registered-triggers::list",
            json!({"include_internal": true}),
        )
        .await;
    let bound: Vec<&str> = r["result"]["registered_triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(bound.contains(&"kept"), "{bound:?}");
    for gone in ["drop-me", "wrong-type", "denied-target"] {
        assert!(!bound.contains(&gone), "{gone} bound: {bound:?}");
    }

    // The hooks saw the §9.6 inputs with the session's context.
    let mut hook_inputs = Vec::new();
    while let Ok(Some((fid, data))) =
        tokio::time::timeout(Duration::from_millis(200), seen.recv()).await
    {
        if fid.starts_with("auth::on_") {
            hook_inputs.push((fid, data));
        }
    }
    let fn_hook = hook_inputs
        .iter()
        .find(|(f, d)| f == "auth::on_fn" && d["function_id"] == "keep::me")
        .expect("function hook called");
    assert_eq!(fn_hook.1["description"], "as sent");
    assert_eq!(fn_hook.1["namespace"], "default");
    assert!(fn_hook.1.get("context").is_some(), "{:?}", fn_hook.1);
    assert!(hook_inputs.iter().any(|(f, d)| f == "auth::on_trigger"
        && d["trigger_id"] == "kept"
        && d["trigger_type"] == "engine::functions-available"));
    // The allowed_trigger_types check comes before the hook.
    assert!(!hook_inputs
        .iter()
        .any(|(f, d)| f == "auth::on_trigger" && d["trigger_id"] == "wrong-type"));

    // Without allow_trigger_type_registration (the default with an auth function) a type is dropped.
    let mut full = RawWorker::connect(&format!("ws://127.0.0.1:{}/?token=full", p.rbac)).await;
    full.declare("full", None).await;
    full.send(json!({"type": "registertriggertype", "id": "not-allowed", "description": "x"}))
        .await;
    full.sync().await;
    let r = trusted.call("engine::triggers::list", json!({})).await;
    assert!(!r.to_string().contains("not-allowed"), "{r}");
}

#[tokio::test]
async fn a_prefix_is_added_on_the_way_in_and_stripped_on_the_way_out() {
    let (e, p) = engine();
    let _seen = provider(&e.url()).await;
    let mut trusted = RawWorker::connect(&e.url()).await;
    let mut w = RawWorker::connect(&format!("ws://127.0.0.1:{}/?token=prefix", p.rbac)).await;
    w.declare("tenant-worker", None).await;
    w.register_function("add", json!({})).await;
    w.register_function("gone", json!({})).await;
    w.send(json!({"type": "unregisterfunction", "id": "gone"}))
        .await;
    let r = w
        .call("engine::register_trigger", json!({"trigger_type": "engine::functions-available", "function_id": "add", "config": {}}))
        .await;
    let trigger = r["result"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();

    let r = trusted
        .call("engine::functions::list", json!({"prefix": "p1::"}))
        .await;
    assert_eq!(function_ids(&r), vec!["p1::add".to_string()], "{r}");
    let b = trusted
        .call("engine::registered-triggers::info", json!({"id": trigger}))
        .await;
    assert_eq!(b["result"]["function_id"], "p1::add", "{b}");

    let call = tokio::spawn(async move { trusted.call("p1::add", json!({"a": 1})).await });
    let inv = w
        .serve_one(|d| json!({"sum": d["a"].as_i64().unwrap_or(0) + 1}))
        .await;
    assert_eq!(
        inv["function_id"], "add",
        "the worker sees its own id: {inv}"
    );
    let r = call.await.unwrap();
    assert_eq!(r["result"]["sum"], 2, "{r}");
}

#[tokio::test]
async fn listener_middleware_proxies_and_may_reject() {
    let (e, p) = engine();
    let mut seen = provider(&e.url()).await;
    let mut w = RawWorker::connect(&format!("ws://127.0.0.1:{}/", p.mw)).await;
    let r = w
        .call_with(
            "link::create",
            json!({"url": "x"}),
            json!({"metadata": {"trace": "m1"}}),
        )
        .await;
    let via = &r["result"]["via_middleware"];
    assert_eq!(via["function_id"], "link::create", "{r}");
    assert_eq!(via["payload"], json!({"url": "x"}));
    assert_eq!(via["action"], Value::Null);
    assert_eq!(via["namespace"], "default");
    assert_eq!(via["context"], json!({}));
    // Exactly the §9.5 keys: the engine calls the middleware, it does not name the caller in
    // the input (SDK middleware models take the object as it is).
    let keys: Vec<&str> = via
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["action", "context", "function_id", "namespace", "payload"],
        "{via}"
    );
    let r = w.call("link::create", json!({"reject": true})).await;
    assert_eq!(r["error"]["code"], "REJECTED", "{r}");
    assert_eq!(r["error"]["message"], "middleware said no");

    // A void call goes through the middleware too, and its answer is sent.
    w.send(json!({"type": "invokefunction", "invocation_id": "0a7f5b8e-1c2d-4e3f-8a9b-0c1d2e3f4a5b", "function_id": "pub::a", "data": {}, "action": {"type": "void"}})).await;
    let r = w
        .recv_where(|v| {
            v["type"] == "invocationresult"
                && v["invocation_id"] == "0a7f5b8e-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
        })
        .await;
    assert_eq!(
        r["result"]["via_middleware"]["action"],
        json!({"type": "void"}),
        "{r}"
    );

    // Engine-owned builtins are not sent to the middleware.
    while tokio::time::timeout(Duration::from_millis(100), seen.recv())
        .await
        .is_ok()
    {}
    let r = w.call("engine::functions::list", json!({})).await;
    assert!(r["result"]["functions"].is_array(), "{r}");
    let r = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await;
    assert!(r.is_err(), "the middleware saw an engine builtin: {r:?}");
}
