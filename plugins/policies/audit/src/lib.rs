//! Audit logger (world `iii:policy/policy@0.1.0`): as listener middleware it logs every
//! invocation (function, namespace, the context's subject) through the logging import and
//! lets it proceed unchanged; as a registration hook it logs and allows; as HTTP middleware it
//! logs the method and proceeds. It does not authenticate: used as an auth function it denies.
//!
//! The subject is the first of `context.sub`, `context.subject`, `context.user_id`,
//! `context.tenant` that is a string, else `-`. `config.level` (`info` by default, or
//! `debug`, `warn`) sets the level of the records.

use serde_json::Value;

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

struct Audit;

fn level() -> Level {
    let v = config::get("level").ok().flatten().unwrap_or_default();
    match v.trim_matches('"') {
        "debug" => Level::Debug,
        "warn" => Level::Warn,
        _ => Level::Info,
    }
}

fn subject(context: &str) -> String {
    let ctx: Value = serde_json::from_str(context).unwrap_or(Value::Null);
    ["sub", "subject", "user_id", "tenant"]
        .iter()
        .find_map(|k| ctx[*k].as_str())
        .unwrap_or("-")
        .to_string()
}

impl Guest for Audit {
    fn authenticate(_conn: Connection) -> AuthDecision {
        AuthDecision::Deny("the audit policy does not authenticate; use it as middleware".into())
    }

    fn on_registration(kind: RegistrationKind, registration: String) -> RegistrationDecision {
        let reg: Value = serde_json::from_str(&registration).unwrap_or(Value::Null);
        let id = ["function_id", "trigger_id", "trigger_type_id"]
            .iter()
            .find_map(|k| reg[*k].as_str())
            .unwrap_or("-");
        let who = subject(&reg["context"].to_string());
        log(
            level(),
            "audit",
            &format!("register {kind:?} {id} subject={who}"),
        );
        RegistrationDecision::Allow
    }

    fn on_invocation(call: Invocation) -> InvocationDecision {
        log(
            level(),
            "audit",
            &format!(
                "invoke {} namespace={} subject={}",
                call.function_id,
                call.namespace,
                subject(&call.context)
            ),
        );
        InvocationDecision::Proceed(call.payload)
    }

    fn on_http_request(request: HttpRequest) -> HttpDecision {
        log(
            level(),
            "audit",
            &format!(
                "http {} subject={}",
                request.method,
                subject(&request.context)
            ),
        );
        HttpDecision::Proceed
    }
}

export!(Audit);
