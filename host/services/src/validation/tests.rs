use super::*;
use iii_core::{Core, CoreSettings, FunctionSpec, Registrar, DEFAULT_NS};

/// A function `f` of an in-process test worker with the given schemas, as registered.
fn entry(request: Option<Value>, response: Option<Value>) -> Arc<FunctionEntry> {
    let core = Core::new(CoreSettings::default());
    let mut reg = Registrar::new(&core, "test-worker");
    let mut spec = FunctionSpec::raw("t::f", "test", |_c, _ctx, v| async move { Ok(v) });
    spec.request_schema = request;
    spec.response_schema = response;
    reg.function(spec);
    core.lookup(DEFAULT_NS, "t::f").expect("registered")
}

fn order_schema() -> Value {
    json!({
        "type": "object",
        "required": ["sku", "qty"],
        "properties": {
            "sku": {"type": "string", "minLength": 1},
            "qty": {"type": "integer", "minimum": 1},
            "tags": {"type": "array", "items": {"type": "string"}}
        }
    })
}

#[test]
fn modes_parse_and_off_sets_nothing() {
    assert_eq!(Mode::parse("off"), Some(Mode::Off));
    assert_eq!(Mode::parse("warn"), Some(Mode::Warn));
    assert_eq!(Mode::parse("enforce"), Some(Mode::Enforce));
    assert_eq!(Mode::parse("Enforce"), None);
    assert!(Validation::new(Mode::Off, "l").is_none());
    let v = Validation::new(Mode::Warn, "l").unwrap();
    assert!(v.checks_results());
    let v = Validation::new(Mode::Enforce, "l").unwrap();
    assert!(!v.checks_results(), "enforce checks inputs, not results");
}

#[test]
fn enforce_refuses_with_the_pointer_and_passes_a_good_payload() {
    let v = Validation::new(Mode::Enforce, "l").unwrap();
    let e = entry(Some(order_schema()), None);
    assert_eq!(v.check_call(&e, r#"{"sku":"a","qty":2}"#), Ok(()));
    let err = v
        .check_call(&e, r#"{"sku":"a","qty":2,"tags":["x",7]}"#)
        .unwrap_err();
    assert_eq!(err.code, codes::VALIDATION_ERROR);
    assert!(
        err.message.contains("function `t::f`")
            && err.message.contains("\"/tags/1\"")
            && err.message.contains("string"),
        "{}",
        err.message
    );
    let d = err.details.expect("details");
    assert_eq!(d["function_id"], "t::f");
    assert_eq!(d["instance_path"], "/tags/1");
    assert_eq!(d["schema_path"], "/properties/tags/items/type");
    let err = v.check_call(&e, r#"{"qty":0}"#).unwrap_err();
    assert_eq!(err.details.unwrap()["instance_path"], "", "{}", err.message);
}

#[test]
fn warn_passes_what_enforce_refuses() {
    let e = entry(Some(order_schema()), None);
    let warn = Validation::new(Mode::Warn, "l").unwrap();
    assert_eq!(warn.check_call(&e, r#"{"sku":1}"#), Ok(()));
    let enforce = Validation::new(Mode::Enforce, "l").unwrap();
    assert!(enforce.check_call(&e, r#"{"sku":1}"#).is_err());
}

#[test]
fn engine_functions_read_null_as_an_empty_object() {
    let v = Validation::new(Mode::Enforce, "l").unwrap();
    let e = entry(Some(json!({"type": "object"})), None);
    assert!(e.engine_worker.is_some());
    assert_eq!(v.check_call(&e, "null"), Ok(()));
    assert!(v.check_call(&e, "[]").is_err());
}

#[test]
fn a_schema_that_does_not_compile_is_no_schema() {
    let v = Validation::new(Mode::Enforce, "l").unwrap();
    let e = entry(Some(json!({"type": "no-such-type"})), None);
    assert_eq!(v.check_call(&e, r#"{"a":1}"#), Ok(()));
    // Compiled once: the entry's slot remembers the failure.
    let c = compiled(&e).unwrap();
    assert!(matches!(c.request.get(), Some(None)));
    assert_eq!(v.check_call(&e, "1"), Ok(()));
    // A remote `$ref` is not fetched: the schema does not compile.
    let e = entry(
        Some(json!({"$ref": "https://example.invalid/schema.json"})),
        None,
    );
    assert_eq!(v.check_call(&e, "1"), Ok(()));
}

#[test]
fn validators_are_compiled_once_per_entry_and_shared_by_listeners() {
    let e = entry(Some(order_schema()), Some(json!({"type": "string"})));
    let a = Validation::new(Mode::Enforce, "a").unwrap();
    let b = Validation::new(Mode::Warn, "b").unwrap();
    assert!(compiled(&e).unwrap().request.get().is_none(), "lazy");
    a.check_call(&e, r#"{"sku":"a","qty":1}"#).unwrap();
    let first = compiled(&e)
        .unwrap()
        .request
        .get()
        .unwrap()
        .as_ref()
        .unwrap() as *const _;
    b.check_call(&e, r#"{"sku":"a","qty":1}"#).unwrap();
    let second = compiled(&e)
        .unwrap()
        .request
        .get()
        .unwrap()
        .as_ref()
        .unwrap() as *const _;
    assert_eq!(first, second);
    assert!(compiled(&e).unwrap().response.get().is_none());
    b.check_result(&e, Some("\"ok\""));
    b.check_result(&e, Some("1"));
    assert!(matches!(
        compiled(&e).unwrap().response.get(),
        Some(Some(_))
    ));
}

#[test]
fn drafts_come_from_dollar_schema_and_default_to_2020_12() {
    let v = Validation::new(Mode::Enforce, "l").unwrap();
    // 2020-12 `prefixItems`, no `$schema`.
    let e = entry(
        Some(json!({"type": "array", "prefixItems": [{"type": "integer"}]})),
        None,
    );
    assert!(v.check_call(&e, r#"["x"]"#).is_err());
    // Draft 7: `items` as an array is the tuple form.
    let e = entry(
        Some(json!({"$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "array", "items": [{"type": "integer"}]})),
        None,
    );
    assert!(v.check_call(&e, r#"["x"]"#).is_err());
    assert_eq!(v.check_call(&e, r#"[1, "x"]"#), Ok(()));
}

#[test]
fn trigger_configs_are_checked_and_cached_by_schema() {
    let v = Validation::new(Mode::Enforce, "l").unwrap();
    let schema = json!({"type": "object", "required": ["topic"],
                        "properties": {"topic": {"type": "string"}}});
    assert_eq!(
        v.check_trigger_config("subscribe", &schema, &json!({"topic": "t"})),
        Ok(())
    );
    let err = v
        .check_trigger_config("subscribe", &schema, &json!({"topic": 5}))
        .unwrap_err();
    assert_eq!(err.code, codes::VALIDATION_ERROR);
    assert!(
        err.message.contains("trigger type `subscribe`") && err.message.contains("/topic"),
        "{}",
        err.message
    );
    assert_eq!(err.details.unwrap()["trigger_type"], "subscribe");
    assert_eq!(v.triggers.lock().len(), 1);
    assert!(v
        .check_trigger_config("subscribe", &schema, &Value::Null)
        .is_err());
    assert_eq!(v.triggers.lock().len(), 1, "one schema, one validator");
    // A broken schema is remembered as none.
    let bad = json!({"minimum": "three"});
    assert_eq!(v.check_trigger_config("x", &bad, &json!(1)), Ok(()));
    assert!(matches!(
        v.triggers.lock().get(&bad.to_string()),
        Some(None)
    ));
}

#[test]
fn long_messages_are_cut() {
    let v = Validation::new(Mode::Enforce, "l").unwrap();
    let e = entry(Some(json!({"type": "integer"})), None);
    let big = format!("\"{}\"", "é".repeat(2000));
    let err = v.check_call(&e, &big).unwrap_err();
    assert!(
        err.message.len() < MAX_MESSAGE + 200,
        "{}",
        err.message.len()
    );
    assert!(err.message.contains('…'));
}
