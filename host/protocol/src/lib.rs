//! Wire types and codec of the iii worker protocol.
//!
//! The contract itself, in prose, is `PROTOCOL.md` beside this crate's `Cargo.toml`; every
//! "§N" in the code of this repository refers to a section of that file.
//!
//! Inbound frames are decoded into one flat, borrowed [`Frame`] (every field optional) and then
//! validated per message type. Payload fields (`data`, `result`, `metadata`, …) stay as borrowed
//! [`RawValue`]s so the engine can forward a call without re-parsing or re-serializing its payload:
//! the hot path copies the bytes once, into the outbound frame.
//!
//! | module | holds |
//! |---|---|
//! | crate root | [`decode`], [`Frame`], [`Kind`], [`Action`], [`ErrorBody`], UUID helpers, the `_caller_worker_id` injection |
//! | [`out`] | builders of engine → worker frames; each returns one JSON text frame |
//! | [`codes`] | the catalogue of every wire error code, with where it is used and whether it is upstream's |
//! | [`ids`] | the `engine::*` function ids, trigger-type ids and event names the protocol fixes |
#![deny(missing_docs)]

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod codes;
pub mod ids;
pub mod out;

/// The upstream iii release whose wire protocol this engine speaks (`iii --version` names it):
/// its SDKs connect unchanged.
pub const UPSTREAM_PROTOCOL_VERSION: &str = "0.23";

/// The error object of `invocationresult` and `triggerregistrationresult` (§2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code; the engine's codes are the constants of [`codes`].
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The handler's stack trace, when a worker reports one; omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<String>,
    /// Machine-readable detail of the failure, when the sender has some (a `validation_error`
    /// carries `{function_id | trigger_type, instance_path, schema_path}`); omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    /// An error without a stack trace. `code` should be one of [`codes`].
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            stacktrace: None,
            details: None,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Every message type the engine understands on input (§2.2), named after its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `registerfunction`: expose a function.
    RegisterFunction,
    /// `unregisterfunction`: retire a function.
    UnregisterFunction,
    /// `registertriggertype`: become the provider of a trigger type.
    RegisterTriggerType,
    /// `unregistertriggertype`: stop providing a trigger type (sent by SDKs; upstream 0.23
    /// does not understand it).
    UnregisterTriggerType,
    /// `registertrigger`: bind a function to a trigger.
    RegisterTrigger,
    /// `unregistertrigger`: remove a binding.
    UnregisterTrigger,
    /// `triggerregistrationresult`: a provider's answer to a `registertrigger`.
    TriggerRegistrationResult,
    /// `invokefunction`: call a function.
    InvokeFunction,
    /// `invocationresult`: the result or error of a call.
    InvocationResult,
    /// `reattach`: first frame of a reconnect; retire the previous connection.
    Reattach,
    /// `registerservice`: legacy grouping, accepted and ignored for routing.
    RegisterService,
    /// `ping`: JSON-level liveness; answered with `pong`.
    Ping,
    /// `pong`: ignored.
    Pong,
}

impl Kind {
    /// The kind whose `type` string is `s`, or `None` for an unknown type.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "registerfunction" => Kind::RegisterFunction,
            "unregisterfunction" => Kind::UnregisterFunction,
            "registertriggertype" => Kind::RegisterTriggerType,
            "unregistertriggertype" => Kind::UnregisterTriggerType,
            "registertrigger" => Kind::RegisterTrigger,
            "unregistertrigger" => Kind::UnregisterTrigger,
            "triggerregistrationresult" => Kind::TriggerRegistrationResult,
            "invokefunction" => Kind::InvokeFunction,
            "invocationresult" => Kind::InvocationResult,
            "reattach" => Kind::Reattach,
            "registerservice" => Kind::RegisterService,
            "ping" => Kind::Ping,
            "pong" => Kind::Pong,
            _ => return None,
        })
    }

    /// Registration messages are queued until the connection's namespace is known (§3.8).
    pub fn is_registration(self) -> bool {
        matches!(
            self,
            Kind::RegisterFunction
                | Kind::UnregisterFunction
                | Kind::RegisterTriggerType
                | Kind::UnregisterTriggerType
                | Kind::RegisterTrigger
                | Kind::UnregisterTrigger
                | Kind::RegisterService
        )
    }
}

/// `action` of an `invokefunction` (§3.4). Absent means request/response. Serialises to its
/// wire form (the RBAC middleware input carries it, §9.5).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    /// `{"type":"void"}`: fire-and-forget; no result is returned to the caller.
    Void,
    /// `{"type":"enqueue","queue":Q}`: hand the call to the queue provider
    /// ([`ids::functions::QUEUE_ENQUEUE`]); the caller gets a receipt.
    Enqueue {
        /// The named queue.
        queue: String,
    },
}

/// A decoded inbound frame: all fields of all message types, borrowed from the frame text.
/// `null` is treated as absent everywhere (§2.1).
#[derive(Debug, Default, Deserialize)]
pub struct Frame<'a> {
    /// `type`: the message type, parsed by [`Kind::parse`].
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    /// `id`: the function id, trigger-type id or binding id, depending on the message.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// `invocation_id` of a call or result; absent on a fire-and-forget call.
    #[serde(borrow, default)]
    pub invocation_id: Option<Cow<'a, str>>,
    /// `function_id`: the target of a call or binding.
    #[serde(borrow, default)]
    pub function_id: Option<Cow<'a, str>>,
    /// `data`: a call's payload, kept as raw JSON.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    /// `result`: a successful call's value, kept as raw JSON.
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    /// `error`: a failed call's or binding's error.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// `metadata`: per-call or per-binding side channel, or registration metadata.
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    /// `traceparent`: W3C trace context.
    #[serde(borrow, default)]
    pub traceparent: Option<Cow<'a, str>>,
    /// `baggage`: W3C baggage.
    #[serde(borrow, default)]
    pub baggage: Option<Cow<'a, str>>,
    /// `action` of an `invokefunction`.
    #[serde(default)]
    pub action: Option<Action>,
    /// `namespace`: where the target resolves, or the namespace a trigger type is provided in (§3.8).
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    /// `trigger_namespace` of a `registertrigger`: where to find the provider.
    #[serde(borrow, default)]
    pub trigger_namespace: Option<Cow<'a, str>>,
    /// `trigger_type` of a binding.
    #[serde(borrow, default)]
    pub trigger_type: Option<Cow<'a, str>>,
    /// `config` of a binding, kept as raw JSON.
    #[serde(borrow, default)]
    pub config: Option<&'a RawValue>,
    /// `description` of a function or trigger type.
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    /// `request_format` of a function (stored, never validated, §3.9).
    #[serde(borrow, default)]
    pub request_format: Option<&'a RawValue>,
    /// `response_format` of a function.
    #[serde(borrow, default)]
    pub response_format: Option<&'a RawValue>,
    /// `trigger_request_format` of a trigger type: the schema of a binding's `config`.
    #[serde(borrow, default)]
    pub trigger_request_format: Option<&'a RawValue>,
    /// `call_request_format` of a trigger type: the schema of the payload it delivers.
    #[serde(borrow, default)]
    pub call_request_format: Option<&'a RawValue>,
    /// `invocation` of a `registerfunction`: makes it an HTTP-invoked function (§3.10).
    #[serde(borrow, default)]
    pub invocation: Option<&'a RawValue>,
    /// `previous_worker_id` of a `reattach`.
    #[serde(borrow, default)]
    pub previous_worker_id: Option<Cow<'a, str>>,
    /// `reattach_token` of a `reattach`.
    #[serde(borrow, default)]
    pub reattach_token: Option<Cow<'a, str>>,
    /// `name` of a legacy `registerservice`.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

/// Why an inbound frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not JSON, or a field has the wrong JSON type (the parser's message).
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(String),
    /// The object has no `type`.
    #[error("frame has no \"type\" field")]
    MissingType,
    /// The `type` is not one of [`Kind`].
    #[error("unknown message type \"{0}\"")]
    UnknownType(String),
    /// A field the message type requires is absent or `null`.
    #[error("{kind} frame is missing the required field \"{field}\"")]
    MissingField {
        /// The message type.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A field that must hold a UUID does not.
    #[error("{field} \"{value}\" is not a UUID")]
    InvalidUuid {
        /// The field.
        field: &'static str,
        /// Its value, cut to 64 characters.
        value: String,
    },
}

/// Decodes a frame and checks that the fields its type requires are present (§1.3, §2.1).
pub fn decode(text: &str) -> Result<(Kind, Frame<'_>), DecodeError> {
    let frame: Frame<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let kind_str = frame.kind.as_deref().ok_or(DecodeError::MissingType)?;
    let kind = Kind::parse(kind_str).ok_or_else(|| DecodeError::UnknownType(kind_str.into()))?;
    let need = |present: bool, kind: &'static str, field: &'static str| {
        if present {
            Ok(())
        } else {
            Err(DecodeError::MissingField { kind, field })
        }
    };
    match kind {
        Kind::RegisterFunction => need(frame.id.is_some(), "registerfunction", "id")?,
        Kind::UnregisterFunction => need(frame.id.is_some(), "unregisterfunction", "id")?,
        Kind::RegisterTriggerType => need(frame.id.is_some(), "registertriggertype", "id")?,
        Kind::UnregisterTriggerType => need(frame.id.is_some(), "unregistertriggertype", "id")?,
        Kind::RegisterTrigger => {
            need(frame.id.is_some(), "registertrigger", "id")?;
            need(
                frame.trigger_type.is_some(),
                "registertrigger",
                "trigger_type",
            )?;
            need(
                frame.function_id.is_some(),
                "registertrigger",
                "function_id",
            )?;
        }
        Kind::UnregisterTrigger => need(frame.id.is_some(), "unregistertrigger", "id")?,
        Kind::TriggerRegistrationResult => {
            need(frame.id.is_some(), "triggerregistrationresult", "id")?
        }
        Kind::InvokeFunction => {
            need(frame.function_id.is_some(), "invokefunction", "function_id")?;
            if let Some(id) = &frame.invocation_id {
                parse_uuid("invocation_id", id)?;
            }
        }
        Kind::InvocationResult => {
            let id = frame
                .invocation_id
                .as_deref()
                .ok_or(DecodeError::MissingField {
                    kind: "invocationresult",
                    field: "invocation_id",
                })?;
            parse_uuid("invocation_id", id)?;
        }
        Kind::Reattach | Kind::RegisterService | Kind::Ping | Kind::Pong => {}
    }
    Ok((kind, frame))
}

/// Parses a hyphenated (or simple, 32-digit) UUID string into its 128-bit value; `field`
/// names the field in the error.
pub fn parse_uuid(field: &'static str, s: &str) -> Result<u128, DecodeError> {
    let bad = || DecodeError::InvalidUuid {
        field,
        value: s.chars().take(64).collect(),
    };
    let mut v: u128 = 0;
    let mut digits = 0;
    for (i, c) in s.bytes().enumerate() {
        if c == b'-' {
            if !matches!(i, 8 | 13 | 18 | 23) {
                return Err(bad());
            }
            continue;
        }
        let d = (c as char).to_digit(16).ok_or_else(bad)?;
        v = (v << 4) | d as u128;
        digits += 1;
    }
    if digits != 32 || !(s.len() == 32 || s.len() == 36) {
        return Err(bad());
    }
    Ok(v)
}

/// Formats a 128-bit id as a lowercase hyphenated UUID string.
pub fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Returns `data` with `"_caller_worker_id": <worker_id>` added when it is a JSON object
/// (§3.3). The key goes last so that it wins over a same-named key the caller sent,
/// as upstream's map insert does. Non-objects are returned unchanged.
pub fn inject_caller_worker_id<'a>(data: &'a str, worker_id: &str) -> Cow<'a, str> {
    let trimmed = data.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return Cow::Borrowed(data);
    }
    let body = trimmed[..trimmed.len() - 1].trim_end();
    let empty = body[1..].trim().is_empty();
    let mut s = String::with_capacity(trimmed.len() + worker_id.len() + 24);
    s.push_str(body);
    if !empty {
        s.push(',');
    }
    out::push_json_str(&mut s, ids::CALLER_WORKER_ID_KEY);
    s.push(':');
    out::push_json_str(&mut s, worker_id);
    s.push('}');
    Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_invoke_with_raw_payload() {
        let t = r#"{"type":"invokefunction","invocation_id":"9f3c3b2e-9d4e-4b1a-8a1f-2f0b5c7d1e11","function_id":"math::add","data":{"a":2, "b":[1,2]},"extra":1}"#;
        let (k, f) = decode(t).unwrap();
        assert_eq!(k, Kind::InvokeFunction);
        assert_eq!(f.function_id.as_deref(), Some("math::add"));
        assert_eq!(f.data.unwrap().get(), r#"{"a":2, "b":[1,2]}"#);
    }

    #[test]
    fn null_fields_are_absent() {
        let t = r#"{"type":"invokefunction","invocation_id":null,"function_id":"f","data":null,"action":null}"#;
        let (_, f) = decode(t).unwrap();
        assert!(f.invocation_id.is_none());
        assert!(f.data.is_none());
        assert!(f.action.is_none());
    }

    #[test]
    fn rejects_bad_frames_with_reasons() {
        assert!(matches!(decode("{"), Err(DecodeError::InvalidJson(_))));
        assert_eq!(decode(r#"{"a":1}"#).unwrap_err(), DecodeError::MissingType);
        assert_eq!(
            decode(r#"{"type":"nope"}"#).unwrap_err(),
            DecodeError::UnknownType("nope".into())
        );
        assert_eq!(
            decode(r#"{"type":"invokefunction","data":1}"#).unwrap_err(),
            DecodeError::MissingField {
                kind: "invokefunction",
                field: "function_id"
            }
        );
        assert!(matches!(
            decode(r#"{"type":"invocationresult","invocation_id":"x"}"#),
            Err(DecodeError::InvalidUuid { .. })
        ));
    }

    #[test]
    fn action_variants() {
        let (_, f) =
            decode(r#"{"type":"invokefunction","function_id":"f","action":{"type":"void"}}"#)
                .unwrap();
        assert_eq!(f.action, Some(Action::Void));
        let (_, f) = decode(r#"{"type":"invokefunction","function_id":"f","action":{"type":"enqueue","queue":"q"}}"#).unwrap();
        assert_eq!(f.action, Some(Action::Enqueue { queue: "q".into() }));
    }

    #[test]
    fn uuid_round_trip() {
        let s = "9f3c3b2e-9d4e-4b1a-8a1f-2f0b5c7d1e11";
        assert_eq!(format_uuid(parse_uuid("x", s).unwrap()), s);
        assert!(parse_uuid("x", "9f3c3b2e9d4e4b1a8a1f2f0b5c7d1e11").is_ok());
        assert!(parse_uuid("x", "9f3c3b2e-9d4e-4b1a-8a1f-2f0b5c7d1e1").is_err());
        assert!(parse_uuid("x", "9f3c3b2e-9d4e-4b1a-8a1f-2f0b5c7d1e1z").is_err());
    }

    #[test]
    fn injects_caller_id_last() {
        assert_eq!(
            inject_caller_worker_id(r#"{"a":1}"#, "w"),
            r#"{"a":1,"_caller_worker_id":"w"}"#
        );
        assert_eq!(
            inject_caller_worker_id(" { } ", "w"),
            r#"{"_caller_worker_id":"w"}"#
        );
        assert_eq!(inject_caller_worker_id("[1]", "w"), "[1]");
        assert_eq!(inject_caller_worker_id("\"{x}\"", "w"), "\"{x}\"");
        let v: serde_json::Value = serde_json::from_str(&inject_caller_worker_id(
            r#"{"_caller_worker_id":"spoof","b":{"c":2}}"#,
            "real",
        ))
        .unwrap();
        assert_eq!(v["_caller_worker_id"], "real");
        assert_eq!(v["b"]["c"], 2);
    }

    /// Section numbers of PROTOCOL.md's headings (`## 3. …`, `#### 4.6.1 …`).
    fn protocol_sections() -> Vec<String> {
        include_str!("../PROTOCOL.md")
            .lines()
            .filter(|l| l.starts_with('#'))
            .filter_map(|l| l.trim_start_matches('#').split_whitespace().next())
            .map(|n| n.trim_end_matches('.').to_string())
            .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
            .collect()
    }

    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable source directory") {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    rust_files(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }

    /// Every "§N" in the repository's Rust code names a heading of PROTOCOL.md, so a reader of
    /// a clone can follow it.
    #[test]
    fn section_references_in_the_code_resolve_to_protocol_md() {
        let sections = protocol_sections();
        assert!(sections.iter().any(|s| s == "3.6"), "headings not found");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert!(root.join("Cargo.toml").exists(), "workspace root not found");
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let mut missing = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for (at, _) in text.match_indices('§') {
                let number: String = text[at + '§'.len_utf8()..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                let number = number.trim_end_matches('.');
                if !number.is_empty() && !sections.iter().any(|s| s == number) {
                    missing.push(format!("{}: §{number}", file.display()));
                }
            }
        }
        assert!(files.len() > 20, "walked too few files: {}", files.len());
        assert!(missing.is_empty(), "unresolved references: {missing:#?}");
    }
}
