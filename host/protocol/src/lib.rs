//! Wire types and codec of the iii worker protocol (spec: `shared/spec/protocol.md` §2).
//!
//! Inbound frames are decoded into one flat, borrowed [`Frame`] (every field optional) and then
//! validated per message type. Payload fields (`data`, `result`, `metadata`, …) stay as borrowed
//! [`RawValue`]s so the engine can forward a call without re-parsing or re-serializing its payload:
//! the hot path copies the bytes once, into the outbound frame.
//!
//! Outbound frames are built by the functions in [`out`]; they always produce one JSON text frame.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod out;

/// The error object used in results and registration failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            stacktrace: None,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Every message type the engine understands on input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RegisterFunction,
    UnregisterFunction,
    RegisterTriggerType,
    UnregisterTriggerType,
    RegisterTrigger,
    UnregisterTrigger,
    TriggerRegistrationResult,
    InvokeFunction,
    InvocationResult,
    Reattach,
    RegisterService,
    Ping,
    Pong,
}

impl Kind {
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

    /// Registration messages are queued until the connection's namespace is known (spec §3.8).
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

/// `action` of an `invokefunction`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    Void,
    Enqueue { queue: String },
}

/// A decoded inbound frame: all fields of all message types, borrowed from the frame text.
/// `null` is treated as absent everywhere (spec §2.1).
#[derive(Debug, Default, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub invocation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(default)]
    pub error: Option<ErrorBody>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub baggage: Option<Cow<'a, str>>,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub trigger_namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub trigger_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub config: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub request_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub response_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub trigger_request_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub call_request_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub invocation: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub previous_worker_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reattach_token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

/// Why an inbound frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("frame has no \"type\" field")]
    MissingType,
    #[error("unknown message type \"{0}\"")]
    UnknownType(String),
    #[error("{kind} frame is missing the required field \"{field}\"")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{field} \"{value}\" is not a UUID")]
    InvalidUuid { field: &'static str, value: String },
}

/// Decodes a frame and checks that the fields its type requires are present.
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

/// Parses a hyphenated (or simple) UUID string into its 128-bit value.
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
/// (spec §3.3). The key goes last so that it wins over a same-named key the caller sent,
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
    s.push_str("\"_caller_worker_id\":");
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
}
