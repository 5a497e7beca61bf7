//! Builders for engine → worker frames. Each returns the complete JSON text of one frame.
//! Optional fields are omitted when absent (§2.1).

use std::fmt::Write;

use crate::codes;
use crate::ErrorBody;

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn field_str(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    push_json_str(out, value);
}

fn field_opt_str(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        field_str(out, key, v);
    }
}

fn field_raw(out: &mut String, key: &str, raw: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    out.push_str(raw);
}

fn start(kind: &str, cap: usize) -> String {
    let mut s = String::with_capacity(cap + 64);
    s.push_str("{\"type\":\"");
    s.push_str(kind);
    s.push('"');
    s
}

/// The JSON of an [`ErrorBody`], written directly: strings and an already parsed value cannot
/// fail to serialize, so no fallback code is needed.
fn error_json(e: &ErrorBody) -> String {
    let trace = e.stacktrace.as_deref().map_or(0, str::len);
    let mut s = String::with_capacity(e.code.len() + e.message.len() + trace + 48);
    s.push_str("{\"code\":");
    push_json_str(&mut s, &e.code);
    field_str(&mut s, "message", &e.message);
    field_opt_str(&mut s, "stacktrace", e.stacktrace.as_deref());
    if let Some(d) = &e.details {
        field_raw(&mut s, "details", &d.to_string());
    }
    s.push('}');
    s
}

/// `workerregistered`, the first frame of every session (§1.2, §2.3).
pub fn worker_registered(worker_id: &str, reattach_token: &str) -> String {
    let mut s = start("workerregistered", 96);
    field_str(&mut s, "worker_id", worker_id);
    field_str(&mut s, "reattach_token", reattach_token);
    s.push('}');
    s
}

/// The JSON-level `pong` answering a `ping` (§1.4).
pub fn pong() -> String {
    "{\"type\":\"pong\"}".to_string()
}

/// What an engine → worker `invokefunction` carries (§2.3, §3.3).
pub struct Invoke<'a> {
    /// Always present towards a worker: the caller's id, or a fresh one.
    pub invocation_id: &'a str,
    /// The id as the worker registered it.
    pub function_id: &'a str,
    /// Raw JSON of the payload (already with `_caller_worker_id` where it applies).
    pub data: &'a str,
    /// Raw JSON of the per-call metadata, if any.
    pub metadata: Option<&'a str>,
    /// W3C trace context to continue.
    pub traceparent: Option<&'a str>,
    /// W3C baggage to pass on.
    pub baggage: Option<&'a str>,
}

/// An engine → worker `invokefunction`.
pub fn invoke_function(i: &Invoke<'_>) -> String {
    let mut s = start("invokefunction", i.data.len() + i.function_id.len() + 160);
    field_str(&mut s, "invocation_id", i.invocation_id);
    field_str(&mut s, "function_id", i.function_id);
    field_raw(&mut s, "data", i.data);
    if let Some(m) = i.metadata {
        field_raw(&mut s, "metadata", m);
    }
    field_opt_str(&mut s, "traceparent", i.traceparent);
    field_opt_str(&mut s, "baggage", i.baggage);
    s.push('}');
    s
}

/// An `invocationresult` (§2.3): `Ok(raw result JSON or None for null)` or `Err(error)`.
pub fn invocation_result(
    invocation_id: &str,
    function_id: &str,
    outcome: Result<Option<&str>, &ErrorBody>,
    traceparent: Option<&str>,
    baggage: Option<&str>,
) -> String {
    let len = match outcome {
        Ok(Some(r)) => r.len(),
        _ => 0,
    };
    let mut s = start("invocationresult", len + function_id.len() + 128);
    field_str(&mut s, "invocation_id", invocation_id);
    field_str(&mut s, "function_id", function_id);
    match outcome {
        Ok(Some(r)) => field_raw(&mut s, "result", r),
        Ok(None) => {}
        Err(e) => field_raw(&mut s, "error", &error_json(e)),
    }
    field_opt_str(&mut s, "traceparent", traceparent);
    field_opt_str(&mut s, "baggage", baggage);
    s.push('}');
    s
}

/// `registrationrejected` with [`codes::FUNCTION_NAMESPACE_CONFLICT`]: one `registerfunction`
/// is refused (§2.3, §3.2). `owner_worker_id` is empty when no worker owns the id (an engine
/// builtin, or a reserved `engine::*` id outside `default`).
pub fn function_conflict(namespace: &str, function_id: &str, owner_worker_id: &str) -> String {
    let mut s = start("registrationrejected", 160);
    field_str(&mut s, "code", codes::FUNCTION_NAMESPACE_CONFLICT);
    field_str(&mut s, "namespace", namespace);
    field_str(&mut s, "function_id", function_id);
    field_str(&mut s, "owner_worker_id", owner_worker_id);
    s.push('}');
    s
}

/// `registrationrejected` for one `registerfunction` the engine refuses for a reason other
/// than ownership (an HTTP-invoked function it cannot serve, §3.10): `error` says why. The
/// frame's `code` is [`codes::FUNCTION_NAMESPACE_CONFLICT`] with an empty `owner_worker_id`,
/// because that is the one per-function refusal the 0.23+ SDKs understand; they treat every
/// other code as fatal and stop the whole worker.
pub fn function_refused(namespace: &str, function_id: &str, error: &ErrorBody) -> String {
    let mut s = start("registrationrejected", 240);
    field_str(&mut s, "code", codes::FUNCTION_NAMESPACE_CONFLICT);
    field_str(&mut s, "namespace", namespace);
    field_str(&mut s, "function_id", function_id);
    field_str(&mut s, "owner_worker_id", "");
    field_raw(&mut s, "error", &error_json(error));
    s.push('}');
    s
}

/// `registrationrejected` with [`codes::WORKER_NAMESPACE_CONFLICT`]: the worker name is taken
/// in this namespace; the engine closes the connection after sending it (§2.3, §3.8).
pub fn worker_conflict(namespace: &str, worker_name: &str, owner_worker_id: &str) -> String {
    let mut s = start("registrationrejected", 160);
    field_str(&mut s, "code", codes::WORKER_NAMESPACE_CONFLICT);
    field_str(&mut s, "namespace", namespace);
    field_str(&mut s, "worker_name", worker_name);
    field_str(&mut s, "owner_worker_id", owner_worker_id);
    s.push('}');
    s
}

/// What the engine sends a worker that provides a trigger type, so it arms a binding (§2.3,
/// §4.4).
pub struct RegisterTrigger<'a> {
    /// The binding id.
    pub id: &'a str,
    /// The trigger type the provider serves.
    pub trigger_type: &'a str,
    /// The function the provider must invoke when the trigger fires.
    pub function_id: &'a str,
    /// Raw JSON of the binding's config.
    pub config: &'a str,
    /// Raw JSON of the binding's metadata, if any.
    pub metadata: Option<&'a str>,
    /// The target's namespace; only set when it is not `default`.
    pub namespace: Option<&'a str>,
    /// The provider's namespace; only set when it is not `default`.
    pub trigger_namespace: Option<&'a str>,
}

/// An engine → provider `registertrigger`.
pub fn register_trigger(r: &RegisterTrigger<'_>) -> String {
    let mut s = start("registertrigger", r.config.len() + 160);
    field_str(&mut s, "id", r.id);
    field_str(&mut s, "trigger_type", r.trigger_type);
    field_str(&mut s, "function_id", r.function_id);
    field_raw(&mut s, "config", r.config);
    if let Some(m) = r.metadata {
        field_raw(&mut s, "metadata", m);
    }
    field_opt_str(&mut s, "namespace", r.namespace);
    field_opt_str(&mut s, "trigger_namespace", r.trigger_namespace);
    s.push('}');
    s
}

/// An engine → provider `unregistertrigger`: disarm the binding (§2.3, §4.4).
pub fn unregister_trigger(id: &str, trigger_type: &str) -> String {
    let mut s = start("unregistertrigger", 96);
    field_str(&mut s, "id", id);
    field_str(&mut s, "trigger_type", trigger_type);
    s.push('}');
    s
}

/// A `triggerregistrationresult` to a binding's originator; the engine only sends failures
/// (§2.3).
pub fn trigger_registration_result(
    id: &str,
    trigger_type: &str,
    function_id: &str,
    error: Option<&ErrorBody>,
) -> String {
    let mut s = start("triggerregistrationresult", 160);
    field_str(&mut s, "id", id);
    field_str(&mut s, "trigger_type", trigger_type);
    field_str(&mut s, "function_id", function_id);
    if let Some(e) = error {
        field_raw(&mut s, "error", &error_json(e));
    }
    s.push('}');
    s
}

/// What an `enqueue` action becomes: the input of `engine::queue::enqueue` (PROTOCOL.md §3.4).
pub struct EnqueueRequest<'a> {
    /// The queue named by the action.
    pub queue: &'a str,
    /// The function the message is for.
    pub function_id: &'a str,
    /// The call's data (null when absent or not JSON).
    pub data: serde_json::Value,
    /// The receipt id the caller gets back.
    pub receipt: &'a str,
    /// The caller's traceparent, if any.
    pub traceparent: Option<&'a str>,
    /// The caller's baggage, if any.
    pub baggage: Option<&'a str>,
    /// The caller's namespace when it is not `default`.
    pub namespace: Option<&'a str>,
}

impl EnqueueRequest<'_> {
    /// The JSON input of `engine::queue::enqueue`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "queue": self.queue,
            "function_id": self.function_id,
            "data": self.data,
            "messageReceiptId": self.receipt,
            "traceparent": self.traceparent,
            "baggage": self.baggage,
        });
        if let Some(ns) = self.namespace {
            v["namespace"] = serde_json::json!(ns);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect(s)
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(parse(&s), Value::String("a\"b\\c\n\u{1}é".into()));
    }

    #[test]
    fn error_bodies_match_serde() {
        let mut e = ErrorBody::new("c\u{1}", "m \"q\" \\ é\n");
        assert_eq!(
            parse(&error_json(&e)),
            serde_json::to_value(&e).unwrap(),
            "without a stack trace"
        );
        e.stacktrace = Some("at f()\n\tat g()".into());
        assert_eq!(parse(&error_json(&e)), serde_json::to_value(&e).unwrap());
        e.details = Some(serde_json::json!({"instance_path": "/a/0", "n": [1, null]}));
        assert_eq!(parse(&error_json(&e)), serde_json::to_value(&e).unwrap());
        let back: ErrorBody = serde_json::from_str(&error_json(&e)).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn frames_are_valid_json() {
        let v = parse(&invoke_function(&Invoke {
            invocation_id: "i",
            function_id: "f",
            data: "{\"a\":1}",
            metadata: Some("{\"m\":true}"),
            traceparent: Some("00-x"),
            baggage: None,
        }));
        assert_eq!(v["type"], "invokefunction");
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(v["metadata"]["m"], true);
        assert!(v.get("baggage").is_none());

        let e = ErrorBody::new("boom", "it \"broke\"");
        let v = parse(&invocation_result("i", "f", Err(&e), None, None));
        assert_eq!(v["error"]["message"], "it \"broke\"");
        assert!(v.get("result").is_none());
        let v = parse(&invocation_result("i", "f", Ok(None), None, None));
        assert!(v.get("result").is_none() && v.get("error").is_none());
        let v = parse(&worker_conflict("ns", "w", "o"));
        assert_eq!(v["code"], "WORKER_NAMESPACE_CONFLICT");
        assert_eq!(v["worker_name"], "w");
        let v = parse(&function_conflict("ns", "f", ""));
        assert_eq!(v["code"], "FUNCTION_NAMESPACE_CONFLICT");
        assert_eq!(v["owner_worker_id"], "");
        let e = ErrorBody::new("url_validation_failed", "host \"x\" is not allowed");
        let v = parse(&function_refused("ns", "f", &e));
        assert_eq!(v["type"], "registrationrejected");
        assert_eq!(v["code"], "FUNCTION_NAMESPACE_CONFLICT");
        assert_eq!(
            (&v["namespace"], &v["function_id"]),
            (&"ns".into(), &"f".into())
        );
        assert_eq!(v["owner_worker_id"], "");
        assert_eq!(v["error"]["code"], "url_validation_failed");
        assert_eq!(v["error"]["message"], "host \"x\" is not allowed");
        let v = parse(&register_trigger(&RegisterTrigger {
            id: "t",
            trigger_type: "webhook",
            function_id: "f",
            config: "null",
            metadata: None,
            namespace: None,
            trigger_namespace: Some("x"),
        }));
        assert_eq!(v["trigger_namespace"], "x");
        assert!(v["config"].is_null());
    }
}
