//! Function registration and invocation through the engine with the official Rust SDK
//! (`iii-sdk` 0.25.0): two SDK workers, one serving, one calling.

use std::sync::Arc;
use std::time::Duration;

use iii_sdk::protocol::TriggerRequest;
use iii_sdk::{Error, RegisterFunction, TriggerAction};
use iii_sdk_rust_tests::*;
use iii_tests::EngineProc;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_register_and_call_from_second_worker() {
    let e = EngineProc::start("");
    let callee_name = unique_name("callee");
    let callee = connect(&e.url(), &callee_name);
    callee.register_function(
        "math::add",
        RegisterFunction::new_async(|input: Value| async move {
            let a = input["a"].as_i64().ok_or("a missing")?;
            let b = input["b"].as_i64().ok_or("b missing")?;
            Ok(json!({ "c": a + b }))
        })
        .description("Add two numbers"),
    );
    callee
        .wait_until_registered(WAIT)
        .await
        .expect("callee registered");

    let caller_name = unique_name("caller");
    let caller = connect_ready(&e.url(), &caller_name).await;
    wait_for_function(&caller, "math::add").await;

    let r = call(&caller, "math::add", json!({"a": 2, "b": 3}))
        .await
        .expect("math::add");
    assert_eq!(r, json!({"c": 5}));

    // Discovery reflects the SDK registration: owner name and description.
    let info = call(
        &caller,
        "engine::functions::info",
        json!({"function_id": "math::add"}),
    )
    .await
    .expect("functions::info");
    assert_eq!(info["function_id"], "math::add");
    assert_eq!(info["namespace"], "default");
    assert_eq!(info["worker_name"], callee_name.as_str(), "{info}");
    assert_eq!(info["description"], "Add two numbers", "{info}");

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_sees_caller_worker_id_in_object_payload() {
    let e = EngineProc::start("");
    let callee = connect(&e.url(), &unique_name("callee"));
    callee.register_function(
        "echo::raw",
        RegisterFunction::new_async(|input: Value| async move { Ok(input) }),
    );
    let caller_name = unique_name("caller");
    let caller = connect_ready(&e.url(), &caller_name).await;
    wait_for_function(&caller, "echo::raw").await;

    let mut r = call(&caller, "echo::raw", json!({"x": 1}))
        .await
        .expect("echo");
    let injected = take_caller_id(&mut r).expect("_caller_worker_id injected into object data");
    assert_eq!(r, json!({"x": 1}));
    let me = wait_for_worker(&caller, &caller_name).await;
    assert_eq!(
        injected,
        me["id"].as_str().unwrap(),
        "_caller_worker_id must be the caller's worker id"
    );

    // Non-object payloads are passed through untouched.
    let r = call(&caller, "echo::raw", json!([1, "two", null]))
        .await
        .expect("echo array");
    assert_eq!(r, json!([1, "two", null]));
    let r = call(&caller, "echo::raw", json!("just a string"))
        .await
        .expect("echo string");
    assert_eq!(r, json!("just a string"));

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_reaches_caller_as_invocation_failed() {
    let e = EngineProc::start("");
    let callee = connect(&e.url(), &unique_name("callee"));
    callee.register_function(
        "fail::plain",
        RegisterFunction::new_async(|_input: Value| async move {
            Err::<Value, Error>(Error::Handler("boom: disk on fire".into()))
        }),
    );
    callee.register_function(
        "fail::coded",
        RegisterFunction::new_async(|_input: Value| async move {
            Err::<Value, Error>(Error::Remote {
                code: "order_rejected".into(),
                message: "credit limit exceeded".into(),
                stacktrace: Some("at checkout.rs:42".into()),
            })
        }),
    );
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function(&caller, "fail::plain").await;
    wait_for_function(&caller, "fail::coded").await;

    // The SDK maps a handler `Err` to `{"code":"invocation_failed","message":"handler error: …",
    // "stacktrace":…}` (PROTOCOL.md §2.1 ErrorBody); the engine forwards it unchanged.
    let (code, message, stacktrace) = remote_error(call(&caller, "fail::plain", json!({})).await);
    assert_eq!(code, "invocation_failed");
    assert!(message.contains("boom: disk on fire"), "message: {message}");
    assert!(
        stacktrace.as_deref().is_some_and(|s| !s.is_empty()),
        "stacktrace must be forwarded: {stacktrace:?}"
    );

    // A structured error keeps its own code, message and stacktrace end to end.
    let (code, message, stacktrace) = remote_error(call(&caller, "fail::coded", json!({})).await);
    assert_eq!(code, "order_rejected");
    assert_eq!(message, "credit limit exceeded");
    assert_eq!(stacktrace.as_deref(), Some("at checkout.rs:42"));

    // A failing call does not break the connection: the next call still works.
    let (code, _, _) = remote_error(call(&caller, "fail::plain", json!({})).await);
    assert_eq!(code, "invocation_failed");

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_is_function_not_found_fast() {
    let e = EngineProc::start("");
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;

    // The engine answers at once (PROTOCOL.md §2.5/§3.1); a 3 s client timeout would surface as
    // `Error::Timeout` instead of the remote error.
    let r = call_timeout(&caller, "nope::missing", json!({"a": 1}), 3_000).await;
    let (code, message, _) = remote_error(r);
    assert_eq!(code, "function_not_found");
    assert!(
        message.contains("nope::missing"),
        "message should name the function: {message}"
    );

    stop(&caller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_function_becomes_function_not_found() {
    let e = EngineProc::start("");
    let callee = connect(&e.url(), &unique_name("callee"));
    let f = callee.register_function(
        "temp::fn",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!("here")) }),
    );
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function(&caller, "temp::fn").await;
    assert_eq!(
        call(&caller, "temp::fn", json!({})).await.unwrap(),
        json!("here")
    );

    f.unregister();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match call_timeout(&caller, "temp::fn", json!({}), 3_000).await {
            Err(Error::Remote { code, .. }) if code == "function_not_found" => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("expected function_not_found after unregister, got {other:?}"),
        }
    }

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_reaches_handler_with_metadata() {
    let e = EngineProc::start("");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Value, Option<Value>)>();
    let callee = connect(&e.url(), &unique_name("callee"));
    callee.register_function(
        "audit::log",
        RegisterFunction::new_async(move |input: Value, metadata: Option<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((input, metadata));
                Ok(json!({"logged": true}))
            }
        }),
    );
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function(&caller, "audit::log").await;

    let mut req = TriggerRequest::new("audit::log", json!({"event": "login", "n": 1}));
    req.action = Some(TriggerAction::Void);
    let r = caller.trigger(req).await.expect("void trigger");
    assert_eq!(r, Value::Null, "fire-and-forget returns nothing");

    let (mut data, metadata) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("void call never reached the handler")
        .expect("channel");
    take_caller_id(&mut data);
    assert_eq!(data, json!({"event": "login", "n": 1}));
    assert_eq!(metadata, None, "no metadata was sent");

    // Fire-and-forget with the per-invocation metadata side channel (PROTOCOL.md §3.7).
    let mut req = TriggerRequest::new("audit::log", json!({"event": "logout"}));
    req.action = Some(TriggerAction::Void);
    caller
        .trigger(req.metadata(json!({"tenant": "acme", "trace": [1, 2]})))
        .await
        .expect("void trigger with metadata");
    let (mut data, metadata) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("second void call never reached the handler")
        .expect("channel");
    take_caller_id(&mut data);
    assert_eq!(data, json!({"event": "logout"}));
    assert_eq!(metadata, Some(json!({"tenant": "acme", "trace": [1, 2]})));

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_side_channel_request_response() {
    let e = EngineProc::start("");
    let callee = connect(&e.url(), &unique_name("callee"));
    callee.register_function(
        "meta::echo",
        RegisterFunction::new_async(|input: Value, metadata: Option<Value>| async move {
            Ok(json!({"data": input, "metadata": metadata}))
        }),
    );
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function(&caller, "meta::echo").await;

    let mut req = TriggerRequest::new("meta::echo", json!({"k": "v"}));
    req.timeout_ms = Some(10_000);
    let mut r = caller
        .trigger(req.metadata(json!({"tenant": "acme", "priority": 3})))
        .await
        .expect("call with metadata");
    take_caller_id(&mut r["data"]);
    assert_eq!(
        r["data"],
        json!({"k": "v"}),
        "metadata must not be merged into data"
    );
    assert_eq!(r["metadata"], json!({"tenant": "acme", "priority": 3}));

    // Without metadata the handler gets none.
    let r = call(&caller, "meta::echo", json!({})).await.expect("call");
    assert_eq!(r["metadata"], Value::Null);

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_unicode_and_large_payloads_round_trip() {
    let e = EngineProc::start("");
    let callee = connect(&e.url(), &unique_name("callee"));
    callee.register_function(
        "echo::payload",
        RegisterFunction::new_async(|mut input: Value| async move {
            take_caller_id(&mut input);
            Ok(json!({"echo": input}))
        }),
    );
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function(&caller, "echo::payload").await;

    let nested = json!({
        "level1": {"level2": {"level3": {"level4": {"list": [1, 2.5, -3, true, false, null,
            {"deep": ["a", {"deeper": {"deepest": "ok"}}]}]}}}},
        "empty_obj": {}, "empty_arr": [], "big": 9007199254740991i64, "neg": -1.25e-7
    });
    let r = call(&caller, "echo::payload", nested.clone())
        .await
        .expect("nested");
    assert_eq!(r["echo"], nested);

    let unicode = json!({
        "text": "héllo wörld — 你好世界 — こんにちは — Привет — مرحبا — 🚀🎉👩‍👩‍👧",
        "escapes": "quote \" backslash \\ newline \n tab \t nul-ish \u{1} end",
        "ключ 🔑": "value"
    });
    let r = call(&caller, "echo::payload", unicode.clone())
        .await
        .expect("unicode");
    assert_eq!(r["echo"], unicode);

    // 1 MiB string payload (plus a multi-byte tail) in both directions.
    let big = "x".repeat(1 << 20) + "é🚀";
    let r = call_timeout(&caller, "echo::payload", json!({"blob": big}), 20_000)
        .await
        .expect("1 MiB payload");
    assert_eq!(r["echo"]["blob"].as_str().map(str::len), Some(big.len()));
    assert!(r["echo"]["blob"] == big.as_str(), "1 MiB payload corrupted");

    // 4 MiB of multi-byte text nested in an array.
    let big4 = "ü€".repeat((4 << 20) / 5);
    let r = call_timeout(
        &caller,
        "echo::payload",
        json!({"parts": [big4, 1]}),
        30_000,
    )
    .await
    .expect("4 MiB payload");
    assert!(
        r["echo"]["parts"][0] == big4.as_str(),
        "4 MiB payload corrupted"
    );
    assert_eq!(r["echo"]["parts"][1], 1);

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_calls_all_correct() {
    let e = EngineProc::start("");
    let callee = connect(&e.url(), &unique_name("callee"));
    callee.register_function(
        "math::square",
        RegisterFunction::new_async(|input: Value| async move {
            let n = input["n"].as_i64().ok_or("n missing")?;
            // Let the calls overlap inside the callee.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(json!({"n": n, "sq": n * n}))
        }),
    );
    let caller = Arc::new(connect_ready(&e.url(), &unique_name("caller")).await);
    wait_for_function(&caller, "math::square").await;

    let calls = (0..200i64).map(|n| {
        let caller = caller.clone();
        async move {
            (
                n,
                call_timeout(&caller, "math::square", json!({"n": n}), 20_000).await,
            )
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.len(), 200);
    for (n, r) in results {
        let r = r.unwrap_or_else(|err| panic!("call {n} failed: {err:?}"));
        assert_eq!(r, json!({"n": n, "sq": n * n}), "wrong result for {n}");
    }

    stop(&caller);
    stop(&callee);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_calls_back_into_caller() {
    let e = EngineProc::start("");
    // Worker A serves `a::greet`; worker B serves `b::outer`, which calls back into A.
    let a = connect(&e.url(), &unique_name("worker-a"));
    a.register_function(
        "a::greet",
        RegisterFunction::new_async(|input: Value| async move {
            Ok(json!(format!(
                "hello {}",
                input["who"].as_str().unwrap_or("?")
            )))
        }),
    );
    let b = connect(&e.url(), &unique_name("worker-b"));
    let b2 = b.clone();
    b.register_function(
        "b::outer",
        RegisterFunction::new_async(move |input: Value| {
            let b = b2.clone();
            async move {
                let inner = call(&b, "a::greet", json!({"who": input["who"]})).await?;
                Ok(json!({"outer": inner}))
            }
        }),
    );
    a.wait_until_registered(WAIT).await.expect("a registered");
    b.wait_until_registered(WAIT).await.expect("b registered");
    wait_for_function(&a, "b::outer").await;
    wait_for_function(&a, "a::greet").await;

    let r = call(&a, "b::outer", json!({"who": "iii"}))
        .await
        .expect("nested call");
    assert_eq!(r, json!({"outer": "hello iii"}));

    stop(&a);
    stop(&b);
}
