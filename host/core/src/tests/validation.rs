//! The payload-validation seam (PROTOCOL.md §3.9): the core asks a session's validator only for
//! functions and trigger types with a schema, a refusal answers the caller and forwards
//! nothing, results reach the check when it asks for them, and what a validator derives from a
//! function entry goes with the entry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use iii_protocol::ErrorBody;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::support::{invocation_id, TestConn};
use crate::core::FunctionEntry;
use crate::service::{FunctionSpec, Registrar};
use crate::validation::PayloadValidator;
use crate::{Core, CoreSettings, DEFAULT_NS};

/// Refuses any payload that contains `"bad"`; records what it was asked.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, String)>>,
    results: Mutex<Vec<(String, Option<String>)>>,
    configs: Mutex<Vec<(String, Value)>>,
    results_too: bool,
}

fn refuse_bad(text: &str) -> Result<(), ErrorBody> {
    if text.contains("bad") {
        Err(ErrorBody::new(
            "validation_error",
            format!("refused {text}"),
        ))
    } else {
        Ok(())
    }
}

impl PayloadValidator for Recorder {
    fn check_call(&self, entry: &FunctionEntry, data: &str) -> Result<(), ErrorBody> {
        assert!(entry.request_format.is_some(), "asked without a schema");
        self.calls.lock().push((entry.id.clone(), data.to_string()));
        refuse_bad(data)
    }
    fn checks_results(&self) -> bool {
        self.results_too
    }
    fn check_result(&self, entry: &FunctionEntry, result: Option<&str>) {
        assert!(entry.response_format.is_some(), "asked without a schema");
        self.results
            .lock()
            .push((entry.id.clone(), result.map(str::to_string)));
    }
    fn check_trigger_config(
        &self,
        trigger_type: &str,
        _schema: &Value,
        config: &Value,
    ) -> Result<(), ErrorBody> {
        self.configs
            .lock()
            .push((trigger_type.to_string(), config.clone()));
        refuse_bad(&config.to_string())
    }
}

fn validated(core: &Core, v: &Arc<Recorder>) -> TestConn {
    let c = TestConn::connect(core, DEFAULT_NS);
    c.conn.set_validator(v.clone());
    c
}

fn call(id: &str, data: Value) -> Value {
    json!({"type": "invokefunction", "invocation_id": invocation_id(), "function_id": id, "data": data})
}

#[tokio::test]
async fn calls_are_checked_only_where_a_schema_is_and_a_refusal_forwards_nothing() {
    let core = Core::new(CoreSettings::default());
    let v = Arc::new(Recorder::default());
    let mut callee = TestConn::connect(&core, DEFAULT_NS);
    callee
        .register(
            &core,
            json!({"type": "registerfunction", "id": "s::typed", "request_format": {"type": "object"}}),
        )
        .await;
    callee
        .register(&core, json!({"type": "registerfunction", "id": "s::free"}))
        .await;
    let mut caller = validated(&core, &v);

    // No schema: never asked, forwarded as is.
    caller.invoke(&core, call("s::free", json!("bad"))).await;
    assert_eq!(callee.expect("invokefunction").await["data"], "bad");
    assert!(v.calls.lock().is_empty());

    // A refusal is the caller's answer; the callee sees nothing.
    caller
        .invoke(&core, call("s::typed", json!({"k": "bad"})))
        .await;
    let r = caller.expect("invocationresult").await;
    assert_eq!(r["error"]["code"], "validation_error", "{r}");
    callee.assert_silent();
    assert_eq!(
        v.calls.lock().last().unwrap(),
        &("s::typed".to_string(), r#"{"k":"bad"}"#.to_string()),
        "the data as sent, before _caller_worker_id"
    );

    // A payload that passes is forwarded.
    caller
        .invoke(&core, call("s::typed", json!({"k": "ok"})))
        .await;
    assert_eq!(callee.expect("invokefunction").await["data"]["k"], "ok");

    // A missing `data` is checked as `null`.
    let mut f = call("s::typed", Value::Null);
    f.as_object_mut().unwrap().remove("data");
    caller.invoke(&core, f).await;
    callee.expect("invokefunction").await;
    assert_eq!(v.calls.lock().last().unwrap().1, "null");

    // A session without a validator is never checked.
    let before = v.calls.lock().len();
    let mut plain = TestConn::connect(&core, DEFAULT_NS);
    plain.invoke(&core, call("s::typed", json!("bad"))).await;
    callee.expect("invokefunction").await;
    assert_eq!(v.calls.lock().len(), before);
    plain.assert_silent();
}

#[tokio::test]
async fn in_process_targets_are_checked_too() {
    let core = Core::new(CoreSettings::default());
    let served = Arc::new(AtomicUsize::new(0));
    let n = served.clone();
    Registrar::new(&core, "svc").function(
        FunctionSpec::raw("svc::f", "test", move |_, _, v| {
            n.fetch_add(1, Ordering::SeqCst);
            async move { Ok(v) }
        })
        .accepts(json!({"type": "object"})),
    );
    let v = Arc::new(Recorder::default());
    let mut caller = validated(&core, &v);
    caller.invoke(&core, call("svc::f", json!("bad"))).await;
    assert_eq!(
        caller.expect("invocationresult").await["error"]["code"],
        "validation_error"
    );
    assert_eq!(served.load(Ordering::SeqCst), 0);
    caller.invoke(&core, call("svc::f", json!({"a": 1}))).await;
    assert_eq!(
        caller.expect("invocationresult").await["result"],
        json!({"a": 1})
    );
}

#[tokio::test]
async fn results_reach_the_check_when_it_asks_for_them() {
    let core = Core::new(CoreSettings::default());
    let v = Arc::new(Recorder {
        results_too: true,
        ..Recorder::default()
    });
    let mut callee = TestConn::connect(&core, DEFAULT_NS);
    callee
        .register(
            &core,
            json!({"type": "registerfunction", "id": "s::r", "response_format": {"type": "string"}}),
        )
        .await;
    callee
        .register(&core, json!({"type": "registerfunction", "id": "s::n"}))
        .await;
    let mut caller = validated(&core, &v);
    for id in ["s::r", "s::n"] {
        caller.invoke(&core, call(id, json!(1))).await;
        let inv = callee.expect("invokefunction").await;
        callee
            .answer(
                &core,
                json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "result": 42}),
            )
            .await;
        // The result is delivered whatever the check thinks of it.
        assert_eq!(caller.expect("invocationresult").await["result"], 42);
    }
    assert_eq!(
        *v.results.lock(),
        vec![("s::r".to_string(), Some("42".to_string()))],
        "only the function with a response_format"
    );
    assert!(
        v.calls.lock().is_empty(),
        "no request_format, no call check"
    );
}

#[tokio::test]
async fn a_refused_trigger_config_fails_the_registration() {
    let core = Core::new(CoreSettings::default());
    let v = Arc::new(Recorder::default());
    let provider = TestConn::connect(&core, DEFAULT_NS);
    provider
        .register(
            &core,
            json!({"type": "registertriggertype", "id": "typed", "description": "t",
                   "trigger_request_format": {"type": "object"}}),
        )
        .await;
    provider
        .register(
            &core,
            json!({"type": "registertriggertype", "id": "free", "description": "t"}),
        )
        .await;
    let mut w = validated(&core, &v);
    let bind = |id: &str, ty: &str, config: Value| json!({"type": "registertrigger", "id": id, "trigger_type": ty, "function_id": "w::f", "config": config});
    w.register(&core, bind("b1", "typed", json!({"x": "bad"})))
        .await;
    let r = w.expect("triggerregistrationresult").await;
    assert_eq!(r["error"]["code"], "validation_error", "{r}");
    assert_eq!(r["id"], "b1");
    assert!(core.triggers().binding("b1").is_none());

    w.register(&core, bind("b2", "typed", json!({"x": "ok"})))
        .await;
    assert!(core.triggers().binding("b2").is_some());
    // No schema, or no provider yet: not asked.
    w.register(&core, bind("b3", "free", json!("bad"))).await;
    w.register(&core, bind("b4", "later", json!("bad"))).await;
    assert!(core.triggers().binding("b3").is_some());
    assert!(core.triggers().binding("b4").is_some());
    assert_eq!(
        *v.configs.lock(),
        vec![
            ("typed".to_string(), json!({"x": "bad"})),
            ("typed".to_string(), json!({"x": "ok"}))
        ]
    );
}

/// Counts its drops.
struct Derived(Arc<AtomicUsize>);

impl Drop for Derived {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn what_is_derived_from_an_entry_goes_with_it() {
    let core = Core::new(CoreSettings::default());
    let w = TestConn::connect(&core, DEFAULT_NS);
    w.register(&core, json!({"type": "registerfunction", "id": "s::d"}))
        .await;
    let drops = Arc::new(AtomicUsize::new(0));
    let inits = AtomicUsize::new(0);
    {
        let e = core.lookup(DEFAULT_NS, "s::d").unwrap();
        for _ in 0..3 {
            let d = e.derived(|_| {
                inits.fetch_add(1, Ordering::SeqCst);
                Derived(drops.clone())
            });
            assert!(d.is_some());
        }
        assert_eq!(inits.load(Ordering::SeqCst), 1, "computed once");
        // Another type does not displace it.
        assert!(e.derived(|_| 5u8).is_none());
    }
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    w.register(&core, json!({"type": "unregisterfunction", "id": "s::d"}))
        .await;
    assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped with the entry");
}
