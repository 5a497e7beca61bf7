//! The invocation seam (PROTOCOL.md §3.10): `registerfunction.invocation` without a provider is
//! refused; with one, the built handler is registered as the worker's and follows its
//! ownership, unregister and disconnect; a failed I/O check withdraws it.

use std::sync::Arc;
use std::time::Duration;

use iii_protocol::ErrorBody;
use serde_json::{json, Value};

use super::support::TestConn;
use crate::invocation::{BuiltInvocation, InvocationProvider, InvocationTarget};
use crate::service::{FunctionSpec, Registrar};
use crate::{BoxFut, BuiltinFn, Core, CoreSettings, Reply, DEFAULT_NS};

/// Understands `{"answer": v}` (calls return `v`), `{"hang": true}` (calls never end),
/// `{"refuse": msg}` (refused by `build`) and `{"late_refuse": msg}` (refused by `verify`).
struct TestProvider;

impl InvocationProvider for TestProvider {
    fn build(
        &self,
        target: InvocationTarget<'_>,
        inv: &Value,
    ) -> Result<BuiltInvocation, ErrorBody> {
        if let Some(m) = inv.get("refuse").and_then(Value::as_str) {
            return Err(ErrorBody::new("url_validation_failed", m));
        }
        let answer = inv.get("answer").cloned().unwrap_or(Value::Null);
        let hang = inv.get("hang").is_some();
        let id = target.function_id.to_string();
        let handler: BuiltinFn = Arc::new(move |_core, ctx, data| {
            let (answer, id) = (answer.clone(), id.clone());
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                assert_eq!(ctx.function_id, id);
                Ok(Reply::Value(json!({"answer": answer, "data": data})))
            })
        });
        let verify = inv.get("late_refuse").and_then(Value::as_str).map(|m| {
            let m = m.to_string();
            let check: BoxFut<Result<(), ErrorBody>> =
                Box::pin(async move { Err(ErrorBody::new("url_validation_failed", m)) });
            check
        });
        Ok(BuiltInvocation { handler, verify })
    }
}

fn core_with_provider() -> Core {
    let core = Core::new(CoreSettings::default());
    Registrar::new(&core, "test-http-functions").invocation_provider(Arc::new(TestProvider));
    core
}

fn hosted(id: &str, invocation: Value) -> Value {
    json!({"type": "registerfunction", "id": id, "invocation": invocation})
}

async fn call(core: &Core, id: &str) -> Result<Value, ErrorBody> {
    core.call(DEFAULT_NS, id, r#"{"x":1}"#, None, None)
        .await
        .map(|r| r.map_or(Value::Null, |r| serde_json::from_str(r.get()).unwrap()))
}

#[tokio::test]
async fn without_a_provider_the_registration_is_refused_naming_the_entry() {
    let core = Core::new(CoreSettings::default());
    let mut w = TestConn::connect(&core, DEFAULT_NS);
    w.register(&core, hosted("h::f", json!({"answer": 1})))
        .await;
    let f = w.expect("registrationrejected").await;
    assert_eq!(f["code"], "FUNCTION_NAMESPACE_CONFLICT");
    assert_eq!(
        (&f["function_id"], &f["owner_worker_id"]),
        (&json!("h::f"), &json!(""))
    );
    assert_eq!(f["error"]["code"], "http_functions_unavailable");
    assert!(f["error"]["message"]
        .as_str()
        .unwrap()
        .contains("iii-http-functions"));
    assert!(core.lookup(DEFAULT_NS, "h::f").is_none());
}

#[tokio::test]
async fn a_built_handler_is_served_in_process_as_the_workers_function() {
    let core = core_with_provider();
    let mut w = TestConn::connect(&core, DEFAULT_NS);
    w.conn.state.lock().meta.name = Some("lambda-owner".into());
    w.register(&core, hosted("h::f", json!({"answer": 7})))
        .await;
    let e = core.lookup(DEFAULT_NS, "h::f").expect("registered");
    assert_eq!(e.owner_conn().map(|c| c.id), Some(w.conn.id));
    assert_eq!(e.worker_name(), "lambda-owner");
    assert_eq!(
        call(&core, "h::f").await.unwrap(),
        json!({"answer": 7, "data": {"x": 1}})
    );
    // The worker is never asked to serve it.
    w.assert_silent();

    // Refused by the provider: the worker is told why, nothing is registered.
    w.register(
        &core,
        hosted("h::bad", json!({"refuse": "host `x` is not allowed"})),
    )
    .await;
    let f = w.expect("registrationrejected").await;
    assert_eq!(
        f["error"],
        json!({"code": "url_validation_failed", "message": "host `x` is not allowed"})
    );
    assert!(core.lookup(DEFAULT_NS, "h::bad").is_none());

    // Its owner unregisters it.
    w.register(&core, json!({"type": "unregisterfunction", "id": "h::f"}))
        .await;
    assert!(core.lookup(DEFAULT_NS, "h::f").is_none());
}

#[tokio::test]
async fn ownership_rules_hold_for_hosted_functions() {
    let core = core_with_provider();
    Registrar::new(&core, "svc").function(FunctionSpec::raw(
        "svc::own",
        "builtin",
        |_, _, v| async move { Ok(v) },
    ));
    let mut a = TestConn::connect(&core, DEFAULT_NS);
    let mut b = TestConn::connect(&core, DEFAULT_NS);
    a.register(&core, hosted("h::f", json!({"answer": "a"})))
        .await;
    // Another live worker cannot take it, with either kind of registration.
    b.register(&core, hosted("h::f", json!({"answer": "b"})))
        .await;
    let f = b.expect("registrationrejected").await;
    assert_eq!(f["owner_worker_id"], a.worker_id());
    assert!(f.get("error").is_none());
    b.register(&core, json!({"type": "registerfunction", "id": "h::f"}))
        .await;
    assert_eq!(
        b.expect("registrationrejected").await["owner_worker_id"],
        a.worker_id()
    );
    // Nor shadow the engine's own functions.
    b.register(&core, hosted("svc::own", json!({}))).await;
    assert_eq!(
        b.expect("registrationrejected").await["owner_worker_id"],
        ""
    );
    assert_eq!(call(&core, "h::f").await.unwrap()["answer"], "a");
    // The owner itself may replace it, also by a function it serves.
    a.register(&core, hosted("h::f", json!({"answer": "a2"})))
        .await;
    assert_eq!(call(&core, "h::f").await.unwrap()["answer"], "a2");
    a.register(&core, json!({"type": "registerfunction", "id": "h::f"}))
        .await;
    assert!(core
        .lookup(DEFAULT_NS, "h::f")
        .unwrap()
        .owner_conn()
        .is_some());
    a.assert_silent();
}

#[tokio::test]
async fn a_disconnect_removes_it_and_stops_its_calls_in_flight() {
    let core = core_with_provider();
    let w = TestConn::connect(&core, DEFAULT_NS);
    w.register(&core, hosted("h::hang", json!({"hang": true})))
        .await;
    let c = core.clone();
    let pending = tokio::spawn(async move { call(&c, "h::hang").await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    w.leave(&core).await;
    let r = tokio::time::timeout(Duration::from_secs(1), pending)
        .await
        .expect("the call ended")
        .unwrap();
    assert_eq!(r.unwrap_err().code, "invocation_stopped");
    assert!(core.lookup(DEFAULT_NS, "h::hang").is_none());
}

#[tokio::test]
async fn a_failed_check_withdraws_the_registration_it_made_and_nothing_else() {
    let core = core_with_provider();
    let mut w = TestConn::connect(&core, DEFAULT_NS);
    let gen = core.functions_generation();
    w.register(
        &core,
        hosted("h::late", json!({"late_refuse": "resolves to 10.0.0.1"})),
    )
    .await;
    let f = w.expect("registrationrejected").await;
    assert_eq!(f["error"]["message"], "resolves to 10.0.0.1");
    assert!(core.lookup(DEFAULT_NS, "h::late").is_none());
    assert!(core.functions_generation() > gen);
}
