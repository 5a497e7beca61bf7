//! Invocation router (PROTOCOL.md §3.1, §3.3, §3.6): recording before forwarding, the sender check
//! on results, not-found hints, disconnect cleanup, duplicate ids, in-process functions.

use serde_json::{json, Value};

use super::support::{invocation_id, TestConn};
use crate::service::{FunctionSpec, Registrar};
use crate::{Core, CoreSettings, DEFAULT_NS};

fn core() -> Core {
    Core::new(CoreSettings::default())
}

fn function_frame(id: &str) -> Value {
    json!({"type": "registerfunction", "id": id})
}

fn call_frame(invocation_id: &str, function_id: &str, data: Value) -> Value {
    json!({
        "type": "invokefunction",
        "invocation_id": invocation_id,
        "function_id": function_id,
        "data": data,
    })
}

fn result_frame(invocation_id: &str, function_id: &str, result: Value) -> Value {
    json!({
        "type": "invocationresult",
        "invocation_id": invocation_id,
        "function_id": function_id,
        "result": result,
    })
}

/// A caller and a callee that serves `svc::echo`, both in `default`.
async fn caller_and_callee(core: &Core) -> (TestConn, TestConn) {
    let caller = TestConn::connect(core, DEFAULT_NS);
    let callee = TestConn::connect(core, DEFAULT_NS);
    callee.register(core, function_frame("svc::echo")).await;
    (caller, callee)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_sent_the_instant_the_call_arrives_reaches_the_caller() {
    const CALLS: usize = 300;
    let core = core();
    let (mut caller, mut callee) = caller_and_callee(&core).await;

    // The callee answers from another thread as soon as it reads the frame, which can be
    // before the engine's `send` to it has returned.
    let answering = {
        let core = core.clone();
        tokio::spawn(async move {
            for _ in 0..CALLS {
                let f = callee.expect("invokefunction").await;
                let id = f["invocation_id"].as_str().expect("id");
                callee
                    .answer(&core, result_frame(id, "svc::echo", f["data"]["n"].clone()))
                    .await;
            }
            callee
        })
    };

    for n in 0..CALLS {
        let id = invocation_id();
        caller
            .invoke(&core, call_frame(&id, "svc::echo", json!({"n": n})))
            .await;
        let r = caller.expect("invocationresult").await;
        assert_eq!(r["invocation_id"], id.as_str());
        assert_eq!(r["function_id"], "svc::echo");
        assert_eq!(r["result"], json!(n), "{r}");
    }
    let mut callee = answering.await.expect("answering task");
    callee.assert_silent();
    caller.assert_silent();
    assert_eq!(core.pending_len(), 0);
}

#[tokio::test]
async fn the_callee_gets_the_callers_id_and_data_with_the_caller_worker_id() {
    let core = core();
    let (caller, mut callee) = caller_and_callee(&core).await;
    let id = invocation_id();
    caller
        .invoke(&core, call_frame(&id, "svc::echo", json!({"a": 1})))
        .await;
    let f = callee.expect("invokefunction").await;
    assert_eq!(f["invocation_id"], id.as_str(), "the same id end to end");
    assert_eq!(f["function_id"], "svc::echo");
    assert_eq!(
        f["data"],
        json!({"a": 1, "_caller_worker_id": caller.worker_id()})
    );
}

#[tokio::test]
async fn a_result_from_a_connection_not_serving_the_call_is_ignored() {
    let core = core();
    let (mut caller, mut callee) = caller_and_callee(&core).await;
    let mut stranger = TestConn::connect(&core, DEFAULT_NS);
    let id = invocation_id();
    caller
        .invoke(&core, call_frame(&id, "svc::echo", json!({})))
        .await;
    callee.expect("invokefunction").await;

    stranger
        .answer(&core, result_frame(&id, "svc::echo", json!("forged")))
        .await;
    // Nor may the caller answer its own call.
    caller
        .answer(&core, result_frame(&id, "svc::echo", json!("self-made")))
        .await;
    caller.assert_silent();
    stranger.assert_silent();
    assert_eq!(core.pending_len(), 1, "the call is still in flight");

    callee
        .answer(&core, result_frame(&id, "svc::echo", json!("real")))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["result"], "real");
    assert_eq!(core.pending_len(), 0);

    // A second answer to a finished call goes nowhere.
    callee
        .answer(&core, result_frame(&id, "svc::echo", json!("again")))
        .await;
    caller.assert_silent();
}

#[tokio::test]
async fn a_missing_function_is_function_not_found_with_the_namespaces_that_have_it() {
    let core = core();
    let mut caller = TestConn::connect(&core, DEFAULT_NS);
    let mut orders = TestConn::connect(&core, "orders");
    orders.register(&core, function_frame("orders::get")).await;
    let billing = TestConn::connect(&core, "billing");
    billing.register(&core, function_frame("orders::get")).await;

    // The caller's call resolves in `default` only, never in a namespace that has the id.
    let id = invocation_id();
    caller
        .invoke(&core, call_frame(&id, "orders::get", json!({})))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["error"]["code"], "function_not_found");
    assert_eq!(
        r["error"]["message"],
        "Function orders::get not found in namespace default. \
         It is registered in namespace(s): billing, orders."
    );
    orders.assert_silent();

    // An id registered nowhere gets no hint.
    caller
        .invoke(&core, call_frame(&invocation_id(), "nope::x", json!({})))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["error"]["code"], "function_not_found");
    assert_eq!(
        r["error"]["message"],
        "Function nope::x not found in namespace default."
    );

    // Named explicitly, the namespace resolves.
    let mut call = call_frame(&invocation_id(), "orders::get", json!({}));
    call["namespace"] = json!("orders");
    caller.invoke(&core, call).await;
    orders.expect("invokefunction").await;
}

#[tokio::test]
async fn a_callee_leaving_mid_call_stops_the_call_and_takes_its_functions() {
    let core = core();
    let (mut caller, mut callee) = caller_and_callee(&core).await;
    let id = invocation_id();
    caller
        .invoke(&core, call_frame(&id, "svc::echo", json!({})))
        .await;
    callee.expect("invokefunction").await;
    // An in-process caller waiting on the same callee is stopped too.
    let internal = {
        let core = core.clone();
        tokio::spawn(async move { core.call(DEFAULT_NS, "svc::echo", "{}", None, None).await })
    };
    callee.expect("invokefunction").await;
    assert_eq!(core.active_invocations(callee.conn.id), 2);

    callee.leave(&core).await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["function_id"], "svc::echo");
    assert_eq!(
        r["error"],
        json!({"code": "invocation_stopped", "message": "Invocation stopped"})
    );
    let e = internal
        .await
        .expect("call task")
        .expect_err("the call was stopped");
    assert_eq!(e.code, "invocation_stopped");
    assert_eq!(core.pending_len(), 0);
    assert!(core.lookup(DEFAULT_NS, "svc::echo").is_none());
    assert!(core.conn(callee.conn.id).is_none());

    // Its late answer is ignored, and the function is gone for the next call.
    callee
        .answer(&core, result_frame(&id, "svc::echo", json!("late")))
        .await;
    caller.assert_silent();
    caller
        .invoke(&core, call_frame(&invocation_id(), "svc::echo", json!({})))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["error"]["code"], "function_not_found");
}

#[tokio::test]
async fn a_caller_leaving_drops_the_calls_it_made() {
    let core = core();
    let (mut caller, mut callee) = caller_and_callee(&core).await;
    let ids: Vec<String> = (0..3).map(|_| invocation_id()).collect();
    for id in &ids {
        caller
            .invoke(&core, call_frame(id, "svc::echo", json!({})))
            .await;
        callee.expect("invokefunction").await;
    }
    assert_eq!(core.pending_len(), 3);

    caller.leave(&core).await;
    assert_eq!(core.pending_len(), 0);
    assert_eq!(core.active_invocations(callee.conn.id), 0);
    // No cancel message exists: the callee hears nothing, and the departed caller is sent
    // nothing either.
    callee.assert_silent();
    caller.assert_silent();
    // The callee's functions stay.
    assert!(core.lookup(DEFAULT_NS, "svc::echo").is_some());

    for id in &ids {
        callee
            .answer(&core, result_frame(id, "svc::echo", json!("late")))
            .await;
    }
    caller.assert_silent();
    callee.assert_silent();
}

#[tokio::test]
async fn a_second_call_with_an_invocation_id_in_flight_is_refused() {
    let core = core();
    let (mut caller, mut callee) = caller_and_callee(&core).await;
    let mut other = TestConn::connect(&core, DEFAULT_NS);
    let id = invocation_id();
    caller
        .invoke(&core, call_frame(&id, "svc::echo", json!({"first": true})))
        .await;
    callee.expect("invokefunction").await;

    caller
        .invoke(&core, call_frame(&id, "svc::echo", json!({"second": true})))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["error"]["code"], "invocation_error");
    // Ids are global: another connection cannot reuse it either.
    other
        .invoke(&core, call_frame(&id, "svc::echo", json!({"third": true})))
        .await;
    assert_eq!(
        other.expect("invocationresult").await["error"]["code"],
        "invocation_error"
    );
    callee.assert_silent();
    assert_eq!(core.pending_len(), 1);

    // The first call is untouched and answers normally; then the id is free again.
    callee
        .answer(&core, result_frame(&id, "svc::echo", json!(1)))
        .await;
    assert_eq!(caller.expect("invocationresult").await["result"], 1);
    caller
        .invoke(&core, call_frame(&id, "svc::echo", json!({})))
        .await;
    callee.expect("invokefunction").await;
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Doubled {
    n: i64,
}

fn register_builtins(core: &Core) {
    let mut reg = Registrar::new(core, "test-service");
    reg.function(FunctionSpec::typed(
        "math::double",
        "doubles n",
        |_core, _ctx, i: Doubled| async move { Ok(json!(i.n * 2)) },
    ));
    reg.function(FunctionSpec::raw(
        "math::raw",
        "returns its input",
        |_core, _ctx, v| async move { Ok(v) },
    ));
}

#[tokio::test]
async fn an_in_process_function_called_with_data_it_cannot_read_is_deserialization_error() {
    let core = core();
    register_builtins(&core);
    let mut caller = TestConn::connect(&core, DEFAULT_NS);

    let id = invocation_id();
    caller
        .invoke(&core, call_frame(&id, "math::double", json!({"n": 21})))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["result"], 42);

    // Valid JSON of the wrong shape for the function's input.
    let id = invocation_id();
    caller
        .invoke(&core, call_frame(&id, "math::double", json!({"n": "many"})))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["function_id"], "math::double");
    assert_eq!(r["error"]["code"], "deserialization_error");
    let message = r["error"]["message"].as_str().expect("message");
    assert!(message.contains("math::double"), "{message}");

    // A payload the frame carries but that is no JSON value the engine can hold.
    let id = invocation_id();
    let text = format!(
        r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"math::raw","data":{{"x":1e400}}}}"#
    );
    caller.invoke_text(&core, &text).await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert_eq!(r["function_id"], "math::raw");
    assert_eq!(r["error"]["code"], "deserialization_error", "{r}");
    caller.assert_silent();
}

#[tokio::test]
async fn an_in_process_call_given_up_by_its_caller_leaves_the_pending_table() {
    let core = core();
    let mut callee = TestConn::connect(&core, DEFAULT_NS);
    callee.register(&core, function_frame("svc::silent")).await;

    // A caller with a deadline (the REST server's 504) drops the call future when it passes.
    let timed_out = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        core.call(DEFAULT_NS, "svc::silent", "{}", None, None),
    )
    .await;
    assert!(timed_out.is_err(), "the callee never answers");
    callee.expect("invokefunction").await;
    assert_eq!(core.pending_len(), 0, "the abandoned call is not pending");

    // A caller task that is cancelled (an HTTP client that went away) does the same.
    let task = {
        let core = core.clone();
        tokio::spawn(async move { core.call(DEFAULT_NS, "svc::silent", "{}", None, None).await })
    };
    let f = callee.expect("invokefunction").await;
    assert_eq!(core.pending_len(), 1, "the call is in flight");
    task.abort();
    let _ = task.await;
    assert_eq!(core.pending_len(), 0, "the cancelled call is not pending");

    // A late answer to the abandoned call is ignored, not misrouted.
    let id = f["invocation_id"].as_str().expect("id").to_string();
    callee
        .answer(&core, result_frame(&id, "svc::silent", json!(1)))
        .await;
    assert_eq!(core.pending_len(), 0);
}
