//! Policies (`iii:policy@0.1.0`, `wit/policy-0.1.0`): code that decides on connections
//! (RBAC authentication, protocol §9.2), registrations (the three §9.6 hooks), invocations
//! (listener middleware, §9.5) and HTTP requests (route middleware, §4.6.1).
//!
//! A service loads one with the ordinary loader, `load::<PolicyWorld>(loader, &spec)`, and gets
//! an `Arc<dyn Policy>`. The plugin host implements it over a WebAssembly component of world
//! `iii:policy/policy@0.1.0` or over an Extism module; either way every call runs in a fresh
//! instance under the spec's deadline and memory cap, and a trap, a deadline or the cap is an
//! [`AdapterError`] the caller must treat as a denial (fail closed).
//!
//! The types mirror the WIT. Their serde form is the JSON an Extism policy reads and writes
//! (and the one `plugins/policies/README.md` documents): name/value lists are JSON objects,
//! decisions are externally tagged (`{"allow": {…}}`, `{"deny": "why"}`, `"proceed"`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AdapterError, AdapterWorld};

/// Name/value lists as JSON objects (the protocol's shape for headers and parameters).
/// Reading accepts an object or a list of `[name, value]` pairs; writing keeps the order.
mod pairs {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::ser::{SerializeMap, Serializer};
    use serde::{Deserialize, Serialize};

    pub fn serialize<S: Serializer, V: Serialize>(
        v: &[(String, V)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, x) in v {
            m.serialize_entry(k, x)?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<(String, V)>, D::Error> {
        struct Pairs<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
            type Value = Vec<(String, V)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object, or a list of [name, value] pairs")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Vec::new())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = a.next_entry::<String, V>()? {
                    out.push(e);
                }
                Ok(out)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = a.next_element::<(String, V)>()? {
                    out.push(e);
                }
                Ok(out)
            }
        }
        d.deserialize_any(Pairs(std::marker::PhantomData))
    }
}

/// A connection asking to be let in: the §9.2 auth input.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Connection {
    /// Header names lowercase, one value per name.
    #[serde(default, with = "pairs")]
    pub headers: Vec<(String, String)>,
    /// Query parameters as sent: values are not URL-decoded.
    #[serde(default, with = "pairs")]
    pub query_params: Vec<(String, Vec<String>)>,
    /// The peer address, without port.
    #[serde(default)]
    pub ip_address: String,
}

/// What `authenticate` decided. JSON: `{"allow": {…AuthResult…}}` or `{"deny": "why"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthDecision {
    /// Let it in with this §9.2 `AuthResult` object (absent keys take the §9.2 defaults).
    Allow(Value),
    /// Refuse it, for this reason.
    Deny(String),
}

/// Which §9.6 hook a registration comes through. JSON: `"function"`, `"trigger"`,
/// `"trigger_type"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationKind {
    /// `registerfunction`: `{function_id, description, metadata, namespace, context}`.
    Function,
    /// `registertrigger`: `{trigger_id, trigger_type, function_id, config, metadata, namespace, context}`.
    Trigger,
    /// `registertriggertype`: `{trigger_type_id, description, context}`.
    TriggerType,
}

/// What `on_registration` decided. JSON: `"allow"` (or `{"allow": null}`), `{"rewrite": {…}}`,
/// `{"deny": "why"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationDecision {
    /// Keep it as sent.
    Allow,
    /// Keep it with these fields overridden (an object of fields §9.6 lets the hook change).
    Rewrite(Value),
    /// Drop it; the reason is logged.
    Deny(String),
}

/// One `invokefunction` that passed the RBAC checks: the §9.5 middleware input.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Invocation {
    /// The target function.
    pub function_id: String,
    /// The namespace the call resolves in.
    #[serde(default)]
    pub namespace: String,
    /// The call's data.
    #[serde(default)]
    pub payload: Value,
    /// `null`, `{"type":"void"}` or `{"type":"enqueue","queue":"q"}`.
    #[serde(default)]
    pub action: Value,
    /// The connection's auth `context`.
    #[serde(default)]
    pub context: Value,
    /// The invocation's metadata, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// An invocation refused by a policy: the error the caller gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// A short machine-readable code (e.g. `RATE_LIMITED`).
    pub code: String,
    /// Readable explanation.
    pub message: String,
}

/// What `on_invocation` decided. JSON: `{"proceed": <payload>}` or
/// `{"reject": {"code": "…", "message": "…"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationDecision {
    /// Route the call to its target with this payload (the original or a rewritten one).
    Proceed(Value),
    /// Answer the caller with this error instead.
    Reject(Rejection),
}

/// An HTTP request before its handler runs (§4.6.1 middleware input, phase `preHandler`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HttpRequest {
    /// The request method.
    #[serde(default)]
    pub method: String,
    /// The route's path parameters.
    #[serde(default, with = "pairs")]
    pub path_params: Vec<(String, String)>,
    /// Query parameters, one value per name.
    #[serde(default, with = "pairs")]
    pub query_params: Vec<(String, String)>,
    /// Header names lowercase, one value per name.
    #[serde(default, with = "pairs")]
    pub headers: Vec<(String, String)>,
    /// The middleware input's `context`.
    #[serde(default)]
    pub context: Value,
}

/// The response a policy answers a request with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// The HTTP status.
    pub status_code: u16,
    /// Response headers.
    #[serde(default, with = "pairs")]
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`null` for none).
    #[serde(default)]
    pub body: Value,
}

/// What `on_http_request` decided. JSON: `"proceed"` (or `{"proceed": null}`) or
/// `{"respond": {"status_code": 401, "headers": {…}, "body": …}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpDecision {
    /// Go on to the next middleware and then the handler.
    Proceed,
    /// Answer the request with this response; the handler is not called.
    Respond(HttpResponse),
}

/// A loaded policy. Every method is one call into a fresh instance; an `Err` means the policy
/// could not decide (trap, deadline, memory cap, invalid output, or a hook it does not
/// implement, [`crate::AdapterErrorKind::Unsupported`]) and the caller must deny.
#[async_trait]
pub trait Policy: Send + Sync {
    /// Decides whether a connection may open a session, and with which `AuthResult`.
    async fn authenticate(&self, conn: &Connection) -> Result<AuthDecision, AdapterError>;

    /// Decides on a registration; `registration` is the §9.6 input object.
    async fn on_registration(
        &self,
        kind: RegistrationKind,
        registration: &Value,
    ) -> Result<RegistrationDecision, AdapterError>;

    /// Decides on an invocation (listener middleware).
    async fn on_invocation(&self, call: &Invocation) -> Result<InvocationDecision, AdapterError>;

    /// Decides on an HTTP request (route middleware).
    async fn on_http_request(&self, request: &HttpRequest) -> Result<HttpDecision, AdapterError>;
}

/// The `policy` world of `iii:policy@0.1.0`.
pub struct PolicyWorld;
impl AdapterWorld for PolicyWorld {
    const WORLD: &'static str = "iii:policy/policy@0.1.0";
    type Store = dyn Policy;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_json_forms_are_the_documented_ones() {
        let c: Connection = serde_json::from_value(json!({
            "headers": {"authorization": "Bearer t"},
            "query_params": {"token": ["a", "b"]},
            "ip_address": "127.0.0.1"
        }))
        .unwrap();
        assert_eq!(c.headers, vec![("authorization".into(), "Bearer t".into())]);
        assert_eq!(
            c.query_params,
            vec![("token".into(), vec!["a".into(), "b".into()])]
        );
        assert_eq!(
            serde_json::to_value(&c).unwrap()["query_params"],
            json!({"token": ["a", "b"]})
        );
        let pairs: HttpRequest =
            serde_json::from_value(json!({"headers": [["x", "1"]], "query_params": null})).unwrap();
        assert_eq!(pairs.headers, vec![("x".into(), "1".into())]);

        let d: AuthDecision = serde_json::from_value(json!({"allow": {"context": 1}})).unwrap();
        assert_eq!(d, AuthDecision::Allow(json!({"context": 1})));
        let d: AuthDecision = serde_json::from_value(json!({"deny": "no"})).unwrap();
        assert_eq!(d, AuthDecision::Deny("no".into()));
        for allow in [json!("allow"), json!({"allow": null})] {
            let d: RegistrationDecision = serde_json::from_value(allow).unwrap();
            assert_eq!(d, RegistrationDecision::Allow);
        }
        let d: InvocationDecision =
            serde_json::from_value(json!({"reject": {"code": "RATE_LIMITED", "message": "slow"}}))
                .unwrap();
        assert!(matches!(d, InvocationDecision::Reject(r) if r.code == "RATE_LIMITED"));
        let d: HttpDecision = serde_json::from_value(
            json!({"respond": {"status_code": 401, "headers": {"www-authenticate": "Bearer"}}}),
        )
        .unwrap();
        assert!(matches!(d, HttpDecision::Respond(r) if r.status_code == 401 && r.body.is_null()));
        assert!(serde_json::from_value::<HttpDecision>(json!({"maybe": 1})).is_err());
        assert_eq!(
            serde_json::to_value(RegistrationKind::TriggerType).unwrap(),
            json!("trigger_type")
        );
    }
}
