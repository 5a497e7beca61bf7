//! Bearer-token allowlist (world `iii:policy/policy@0.1.0`).
//!
//! `authenticate` takes the token from `authorization: Bearer <t>` or, failing that, the
//! first `?token=` query value, and looks it up in `config.tokens`: a list of tokens (each
//! admitted with `{}`, what `expose_functions` exposes) or a map token → `AuthResult` fields.
//! Anything else is denied. `on-http-request` applies the same check to a request's
//! `authorization` header and answers 401 without one that is listed; the other hooks let
//! everything through.

use serde_json::{json, Map, Value};

wit_bindgen::generate!({
    path: "../../../wit/policy-0.1.0",
    world: "policy",
    generate_all,
});

use exports::iii::policy::decisions::{
    AuthDecision, Connection, Guest, HttpDecision, HttpRequest, HttpResponse, Invocation,
    InvocationDecision, RegistrationDecision, RegistrationKind,
};
use iii::adapter::config;
use iii::adapter::logging::{log, Level};

struct Bearer;

/// `config.tokens` as token → AuthResult object.
fn tokens() -> Result<Vec<(String, Value)>, String> {
    let text = config::get("tokens")
        .map_err(|_| "cannot read the policy config".to_string())?
        .ok_or("config.tokens is not set")?;
    match serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())? {
        Value::Array(list) => list
            .into_iter()
            .map(|t| match t {
                Value::String(s) => Ok((s, json!({}))),
                other => Err(format!(
                    "config.tokens entries must be strings, got {other}"
                )),
            })
            .collect(),
        Value::Object(m) => Ok(m
            .into_iter()
            .map(|(t, v)| (t, if v.is_object() { v } else { json!({}) }))
            .collect()),
        other => Err(format!(
            "config.tokens must be a list or a map of tokens, got {other}"
        )),
    }
}

/// Equal in time independent of where they differ, so a token cannot be guessed byte by byte
/// from response times.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &[(String, String)]) -> Option<&str> {
    let v = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?
        .1
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The grant of `token`, or why there is none.
fn check(token: Option<&str>) -> Result<Value, String> {
    let token =
        token.ok_or("no bearer token (send `authorization: Bearer <token>` or `?token=`)")?;
    let mut grant = None;
    // Compare against every entry so the time taken does not tell which one matched.
    for (t, g) in tokens()? {
        if same(&t, token) && grant.is_none() {
            grant = Some(g);
        }
    }
    grant.ok_or_else(|| "the bearer token is not on the allowlist".to_string())
}

impl Guest for Bearer {
    fn authenticate(conn: Connection) -> AuthDecision {
        let query = conn
            .query_params
            .iter()
            .find(|(k, _)| k == "token")
            .and_then(|(_, v)| v.first())
            .map(String::as_str);
        match check(bearer(&conn.headers).or(query)) {
            Ok(grant) => AuthDecision::Allow(grant.to_string()),
            Err(why) => {
                log(
                    Level::Info,
                    "bearer",
                    &format!("denied {}: {why}", conn.ip_address),
                );
                AuthDecision::Deny(why)
            }
        }
    }

    fn on_registration(_kind: RegistrationKind, _registration: String) -> RegistrationDecision {
        RegistrationDecision::Allow
    }

    fn on_invocation(call: Invocation) -> InvocationDecision {
        InvocationDecision::Proceed(call.payload)
    }

    fn on_http_request(request: HttpRequest) -> HttpDecision {
        match check(bearer(&request.headers)) {
            Ok(_) => HttpDecision::Proceed,
            Err(why) => {
                let mut body = Map::new();
                body.insert(
                    "error".into(),
                    json!({"code": "UNAUTHORIZED", "message": why}),
                );
                HttpDecision::Respond(HttpResponse {
                    status_code: 401,
                    headers: vec![("www-authenticate".into(), "Bearer".into())],
                    body: Value::Object(body).to_string(),
                })
            }
        }
    }
}

export!(Bearer);
