//! Worker identity, ownership, namespaces, disconnects and reconnects with the official Rust SDK
//! (`iii-sdk` 0.25.0).

use std::time::{Duration, Instant};

use iii_sdk::runtime::IIIConnectionState;
use iii_sdk::{Error, RegisterFunction};
use iii_sdk_rust_tests::*;
use iii_tests::EngineProc;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_listed_with_sdk_name_and_metadata() {
    let e = EngineProc::start("");
    let name = unique_name("lister");
    let w = connect(&e.url(), &name);
    w.register_function(
        "list::one",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!(1)) }),
    );
    w.register_function(
        "list::two",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!(2)) }),
    );
    w.wait_until_registered(WAIT).await.expect("registered");
    wait_for_function(&w, "list::two").await;

    let entry = wait_for_worker(&w, &name).await;
    assert_eq!(entry["runtime"], "rust", "{entry}");
    assert_eq!(entry["namespace"], "default", "{entry}");
    assert_eq!(entry["status"], "connected", "{entry}");
    assert_eq!(entry["function_count"], 2, "{entry}");
    assert_eq!(
        entry["description"],
        format!("iii-sdk-rust-tests worker {name}"),
        "{entry}"
    );
    assert!(
        entry["id"].as_str().is_some_and(|id| id.len() == 36),
        "worker id must be a UUID: {entry}"
    );
    assert_eq!(
        entry["version"], "0.25.0",
        "the SDK reports its version: {entry}"
    );

    // engine::workers::info shows the declared pid and the worker's functions.
    let info = call(&w, "engine::workers::info", json!({"name": name}))
        .await
        .expect("workers::info");
    assert_eq!(info["worker"]["pid"], std::process::id(), "{info}");
    let mut fids: Vec<&str> = info["functions"]
        .as_array()
        .unwrap_or_else(|| panic!("functions array: {info}"))
        .iter()
        .map(|f| f["function_id"].as_str().or(f.as_str()).unwrap_or(""))
        .collect();
    fids.sort();
    assert_eq!(fids, ["list::one", "list::two"], "{info}");

    // The functions are attributed to the SDK worker's declared name.
    let fl = call(&w, "engine::functions::list", json!({}))
        .await
        .expect("functions::list");
    let ours: Vec<&Value> = fl["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["function_id"]
                .as_str()
                .unwrap_or("")
                .starts_with("list::")
        })
        .collect();
    assert_eq!(ours.len(), 2, "{fl}");
    for f in ours {
        assert_eq!(f["worker_name"], name.as_str(), "{f}");
    }

    // After shutdown the worker disappears from the list.
    stop(&w);
    let observer = connect_ready(&e.url(), &unique_name("observer")).await;
    let deadline = Instant::now() + WAIT;
    while worker_entry(&observer, &name).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "worker {name} still listed 10 s after its SDK client shut down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, _) = remote_error(call(&observer, "list::one", json!({})).await);
    assert_eq!(code, "function_not_found");
    stop(&observer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_worker_name_is_fatal_registration_rejected() {
    let e = EngineProc::start("");
    let name = unique_name("dup");
    let first = connect_ready(&e.url(), &name).await;
    wait_for_worker(&first, &name).await;

    let second = connect(&e.url(), &name);
    let deadline = Instant::now() + WAIT;
    let err = loop {
        if let Some(err) = second.fatal_error() {
            break err;
        }
        assert!(
            Instant::now() < deadline,
            "second worker with the same name was not rejected within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match err {
        Error::RegistrationRejected {
            code,
            namespace,
            worker_name,
            owner_worker_id,
            ..
        } => {
            assert_eq!(code, "WORKER_NAMESPACE_CONFLICT");
            assert_eq!(namespace, "default");
            assert_eq!(worker_name.as_deref(), Some(name.as_str()));
            let owner = worker_entry(&first, &name)
                .await
                .expect("first still listed");
            assert_eq!(owner_worker_id, owner["id"].as_str().unwrap());
        }
        other => panic!("expected RegistrationRejected, got {other:?}"),
    }

    // The first worker is unaffected.
    let r = call(&first, "engine::workers::list", json!({})).await;
    assert!(r.is_ok(), "{r:?}");

    stop(&second);
    stop(&first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_owner_of_a_function_is_refused_and_first_keeps_serving() {
    let e = EngineProc::start("");
    let first = connect(&e.url(), &unique_name("owner"));
    first.register_function(
        "shared::fn",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!("first")) }),
    );
    first.wait_until_registered(WAIT).await.expect("first");
    wait_for_function(&first, "shared::fn").await;

    let second = connect(&e.url(), &unique_name("intruder"));
    second.register_function(
        "shared::fn",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!("second")) }),
    );
    second.register_function(
        "second::own",
        RegisterFunction::new_async(|_: Value| async move { Ok(json!("own")) }),
    );
    second.wait_until_registered(WAIT).await.expect("second");
    wait_for_function(&first, "second::own").await;

    // FUNCTION_NAMESPACE_CONFLICT is not fatal: the second worker stays up and serves its other
    // function, and the first owner keeps `shared::fn`.
    assert!(second.fatal_error().is_none(), "{:?}", second.fatal_error());
    assert_eq!(
        call(&first, "second::own", json!({})).await.unwrap(),
        json!("own")
    );
    for _ in 0..5 {
        assert_eq!(
            call(&second, "shared::fn", json!({})).await.unwrap(),
            json!("first")
        );
    }

    stop(&first);
    stop(&second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_worker_functions_resolve_only_in_their_namespace() {
    let e = EngineProc::start("");
    let w = connect_with(&e.url(), &unique_name("orders-w"), Some("orders"));
    w.register_function(
        "orders::create",
        RegisterFunction::new_async(
            |input: Value| async move { Ok(json!({"created": input["sku"]})) },
        ),
    );
    w.wait_until_registered(WAIT).await.expect("registered");
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function_in(&caller, "orders::create", "orders").await;

    // Resolution is strict in the request's namespace (default when absent), with a hint.
    let (code, message, _) = remote_error(call(&caller, "orders::create", json!({})).await);
    assert_eq!(code, "function_not_found");
    assert!(
        message.contains("orders"),
        "hint should name the namespace: {message}"
    );

    let req = iii_sdk::protocol::TriggerRequest {
        function_id: "orders::create".into(),
        payload: json!({"sku": "A-1"}),
        action: None,
        timeout_ms: Some(10_000),
    };
    let r = caller
        .trigger(req.namespace("orders"))
        .await
        .expect("call in namespace orders");
    assert_eq!(r, json!({"created": "A-1"}));

    // The namespaced worker's own calls default to its namespace.
    let r = call(&w, "orders::create", json!({"sku": "B-2"}))
        .await
        .expect("own-namespace call");
    assert_eq!(r, json!({"created": "B-2"}));

    stop(&w);
    stop(&caller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_shutdown_mid_call_gives_invocation_stopped_within_5s() {
    let e = EngineProc::start("");
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let callee = connect(&e.url(), &unique_name("slow"));
    callee.register_function(
        "slow::forever",
        RegisterFunction::new_async(move |_: Value| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok(json!("too late"))
            }
        }),
    );
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function(&caller, "slow::forever").await;

    let c2 = caller.clone();
    let pending =
        tokio::spawn(async move { call_timeout(&c2, "slow::forever", json!({}), 30_000).await });
    tokio::time::timeout(WAIT, started_rx.recv())
        .await
        .expect("call never reached the callee");

    // The callee goes away (closes its socket) while serving the call.
    stop(&callee);
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("caller not answered within 5 s of the callee closing")
        .expect("task");
    let (code, _, _) = remote_error(r);
    assert_eq!(code, "invocation_stopped", "after {:?}", t0.elapsed());

    stop(&caller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reconnects_after_engine_restart_and_functions_work_again() {
    let mut e = EngineProc::start("");
    let callee_name = unique_name("survivor");
    let callee = connect(&e.url(), &callee_name);
    callee.register_function(
        "restart::ping",
        RegisterFunction::new_async(|input: Value| async move { Ok(json!({"pong": input["n"]})) }),
    );
    callee.wait_until_registered(WAIT).await.expect("callee");
    let caller = connect_ready(&e.url(), &unique_name("caller")).await;
    wait_for_function(&caller, "restart::ping").await;
    assert_eq!(
        call(&caller, "restart::ping", json!({"n": 1}))
            .await
            .unwrap(),
        json!({"pong": 1})
    );
    let old_id = wait_for_worker(&caller, &callee_name).await["id"].clone();

    // Kill the engine; both SDK clients notice the drop.
    restart_engine_after(&mut e, &callee).await;

    // Both clients reconnect (SDK retry delay 2 s), replay their registrations and declare
    // themselves again; calls work again without any action from the test.
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match call_timeout(&caller, "restart::ping", json!({"n": 2}), 2_000).await {
            Ok(v) => break v,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "restart::ping not callable 20 s after the engine restart: {err:?}\n{}",
                    e.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(r, json!({"pong": 2}));
    assert_eq!(callee.get_connection_state(), IIIConnectionState::Connected);
    assert_eq!(caller.get_connection_state(), IIIConnectionState::Connected);

    // The new engine knows the worker under its name again, with a new id.
    let entry = wait_for_worker(&caller, &callee_name).await;
    assert_ne!(entry["id"], old_id, "a new engine assigns a new worker id");
    assert_eq!(entry["function_count"], 1, "{entry}");

    stop(&callee);
    stop(&caller);
}

/// Restarts the engine and waits until `client` has noticed the disconnect at least once (so
/// the test really exercises the reconnect path).
async fn restart_engine_after(e: &mut EngineProc, client: &iii_sdk::IIIClient) {
    let _ = e.child.kill();
    let _ = e.child.wait();
    let deadline = Instant::now() + WAIT;
    while client.get_connection_state() == IIIConnectionState::Connected {
        assert!(
            Instant::now() < deadline,
            "SDK did not notice the engine going away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    e.kill9_and_restart();
}
