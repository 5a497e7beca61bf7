//! Namespace prefixing per tenant (world `iii:policy/policy@0.1.0`).
//!
//! `authenticate` finds the connection's tenant: with `config.tenants` (a map bearer token →
//! tenant) from `authorization: Bearer <t>`, otherwise from the `x-tenant` header (the header
//! name is `config.header`). The session gets `function_registration_prefix: <tenant>` and
//! `context: {"tenant": <tenant>}`. `on-registration` then keeps every id the session
//! registers inside its tenant: function ids, trigger ids and their targets, and trigger type
//! ids that do not start with `<tenant>::` get that prefix. A registration from a session
//! without a tenant is denied. Invocations and HTTP requests pass.

use serde_json::{json, Value};

wit_bindgen::generate!({
    path: "../../../wit/policy-0.1.0",
    world: "policy",
    generate_all,
});

use exports::iii::policy::decisions::{
    AuthDecision, Connection, Guest, HttpDecision, HttpRequest, Invocation, InvocationDecision,
    RegistrationDecision, RegistrationKind,
};
use iii::adapter::config;
use iii::adapter::logging::{log, Level};

struct TenantPrefix;

fn config_json(key: &str) -> Option<Value> {
    config::get(key)
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// A tenant is one id segment: letters, digits, `-` and `_`.
fn valid(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn tenant_of(conn: &Connection) -> Result<String, String> {
    if let Some(Value::Object(tenants)) = config_json("tenants") {
        let token = header(&conn.headers, "authorization")
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or("no bearer token")?;
        return match tenants.get(token) {
            Some(Value::String(t)) if valid(t) => Ok(t.clone()),
            Some(_) => Err("config.tenants maps the token to an invalid tenant".into()),
            None => Err("unknown token".into()),
        };
    }
    let name = config_json("header")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "x-tenant".into());
    let t = header(&conn.headers, &name).ok_or(format!("no `{name}` header"))?;
    if valid(t) {
        Ok(t.to_string())
    } else {
        Err(format!("`{name}` must be letters, digits, `-` or `_`"))
    }
}

/// `id` inside `tenant`.
fn prefixed(tenant: &str, id: &str) -> String {
    let p = format!("{tenant}::");
    if id.starts_with(&p) {
        id.to_string()
    } else {
        format!("{p}{id}")
    }
}

impl Guest for TenantPrefix {
    fn authenticate(conn: Connection) -> AuthDecision {
        match tenant_of(&conn) {
            Ok(t) => AuthDecision::Allow(
                json!({"function_registration_prefix": t, "context": {"tenant": t}}).to_string(),
            ),
            Err(why) => AuthDecision::Deny(why),
        }
    }

    fn on_registration(kind: RegistrationKind, registration: String) -> RegistrationDecision {
        let Ok(reg) = serde_json::from_str::<Value>(&registration) else {
            return RegistrationDecision::Deny("the registration is not JSON".into());
        };
        let Some(tenant) = reg["context"]["tenant"].as_str().filter(|t| valid(t)) else {
            return RegistrationDecision::Deny("the session has no tenant".into());
        };
        let keys: &[&str] = match kind {
            RegistrationKind::Function => &["function_id"],
            RegistrationKind::Trigger => &["trigger_id", "function_id"],
            RegistrationKind::TriggerType => &["trigger_type_id"],
        };
        let mut out = serde_json::Map::new();
        for k in keys {
            if let Some(id) = reg[*k].as_str() {
                let p = prefixed(tenant, id);
                if p != id {
                    out.insert(k.to_string(), Value::String(p));
                }
            }
        }
        if out.is_empty() {
            RegistrationDecision::Allow
        } else {
            log(
                Level::Debug,
                "tenant-prefix",
                &format!("tenant {tenant}: {}", Value::Object(out.clone())),
            );
            RegistrationDecision::Rewrite(Value::Object(out).to_string())
        }
    }

    fn on_invocation(call: Invocation) -> InvocationDecision {
        InvocationDecision::Proceed(call.payload)
    }

    fn on_http_request(_request: HttpRequest) -> HttpDecision {
        HttpDecision::Proceed
    }
}

export!(TenantPrefix);
