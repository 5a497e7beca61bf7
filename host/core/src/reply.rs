//! What an in-process function answers with: a JSON [`Value`], or JSON text serialised earlier
//! and shared ([`SharedJson`]), which is sent as it is. A large answer that rarely changes (the
//! function listing) is then serialised once per change instead of once per call.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// JSON text, valid by construction (only [`SharedJson::new`] makes one) and cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedJson(Arc<str>);

impl SharedJson {
    /// Serialises `value` once.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(|text| SharedJson(text.into()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text parsed back, for a caller that needs to look inside. It fails only for a value
    /// nested deeper than the parser's recursion limit (128).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for SharedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A listing can be megabytes: show its size, not its text.
        write!(f, "SharedJson({} bytes)", self.0.len())
    }
}

/// The result of an in-process function.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A value, serialised when it is sent.
    Value(Value),
    /// Text serialised before, sent without being parsed or serialised again.
    Shared(SharedJson),
}

impl Reply {
    /// The JSON text a result frame carries; `None` for null, which a result frame omits.
    pub fn json_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Reply::Value(Value::Null) => None,
            Reply::Value(v) => Some(Cow::Owned(v.to_string())),
            Reply::Shared(s) if s.as_str() == "null" => None,
            Reply::Shared(s) => Some(Cow::Borrowed(s.as_str())),
        }
    }

    /// The result as a value (parsing shared text), for in-process callers that inspect it.
    pub fn into_value(self) -> Result<Value, serde_json::Error> {
        match self {
            Reply::Value(v) => Ok(v),
            Reply::Shared(s) => s.to_value(),
        }
    }
}

impl From<Value> for Reply {
    fn from(v: Value) -> Self {
        Reply::Value(v)
    }
}

impl From<SharedJson> for Reply {
    fn from(s: SharedJson) -> Self {
        Reply::Shared(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_text_is_sent_as_serialised_and_parses_back_to_the_value() {
        let v = json!({"functions": [{"function_id": "a::b", "namespace": "default"}]});
        let shared = SharedJson::new(&v).expect("serialise");
        let reply = Reply::from(shared.clone());
        assert_eq!(reply.json_text().as_deref(), Some(v.to_string().as_str()));
        assert_eq!(reply.into_value().expect("parse"), v);
        assert_eq!(
            format!("{shared:?}"),
            format!("SharedJson({} bytes)", v.to_string().len())
        );
    }

    #[test]
    fn null_is_omitted_whichever_way_it_is_given() {
        assert_eq!(Reply::Value(Value::Null).json_text(), None);
        let shared_null = SharedJson::new(&Value::Null).expect("serialise");
        assert_eq!(Reply::Shared(shared_null).json_text(), None);
        assert_eq!(Reply::Value(json!(0)).json_text().as_deref(), Some("0"));
    }

    #[test]
    fn too_deep_shared_text_is_an_error_not_a_panic() {
        let mut v = json!(1);
        for _ in 0..200 {
            v = json!([v]);
        }
        let shared = SharedJson::new(&v).expect("serialising has no depth limit");
        assert!(shared.to_value().is_err());
    }
}
