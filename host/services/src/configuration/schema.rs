//! JSON Schema validation of configuration values (the `jsonschema` crate, drafts 7 and
//! 2020-12) and `${VAR}` / `${VAR:default}` expansion of stored values (PROTOCOL.md §7.3).

use std::sync::Arc;

use jsonschema::{Draft, Validator};
use serde_json::Value;

/// Why a schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema is not a valid schema of its draft, or names a draft this engine does not
    /// validate.
    #[error("the schema is invalid: {0}")]
    Invalid(String),
    /// The schema is valid but cannot be compiled: it refers to a document that is not
    /// available (remote and file `$ref`s are never fetched).
    #[error("the schema cannot be loaded: {0}")]
    Unavailable(String),
}

/// A value that does not satisfy its schema: the validator's message and the JSON pointer of
/// the failing field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value is invalid at {}: {message}", shown(.pointer))]
pub struct Invalid {
    /// The JSON pointer of the failing field (`""` for the whole value).
    pub pointer: String,
    /// What the validator said.
    pub message: String,
}

fn shown(pointer: &str) -> String {
    if pointer.is_empty() {
        "`` (the whole value)".into()
    } else {
        format!("`{pointer}`")
    }
}

/// A placeholder that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot expand `${{{var}}}` at {}: environment variable `{var}` is not set and the placeholder has no default (write `${{{var}:default}}`)", shown(.pointer))]
pub struct ExpandError {
    /// The JSON pointer of the string holding the placeholder.
    pub pointer: String,
    /// The variable.
    pub var: String,
}

/// The draft a schema declares with `$schema`: draft 7 or 2020-12, and 2020-12 when absent.
fn draft_of(schema: &Value) -> Result<Draft, SchemaError> {
    let Some(uri) = schema.get("$schema") else {
        return Ok(Draft::Draft202012);
    };
    let Some(uri) = uri.as_str() else {
        return Err(SchemaError::Invalid("`$schema` must be a string".into()));
    };
    let bare = uri
        .trim_end_matches('#')
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    match bare {
        "json-schema.org/draft-07/schema" => Ok(Draft::Draft7),
        "json-schema.org/draft/2020-12/schema" => Ok(Draft::Draft202012),
        _ => Err(SchemaError::Invalid(format!(
            "`$schema` is `{uri}`; this engine validates draft 7 (http://json-schema.org/draft-07/schema#) and draft 2020-12 (https://json-schema.org/draft/2020-12/schema, the default)"
        ))),
    }
}

/// Compiles `schema`, checking it against its draft's meta-schema first.
pub fn compile(schema: &Value) -> Result<Arc<Validator>, SchemaError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(SchemaError::Invalid(
            "a schema must be an object (or true/false)".into(),
        ));
    }
    let draft = draft_of(schema)?;
    let meta = match draft {
        Draft::Draft7 => jsonschema::draft7::meta::validate(schema),
        _ => jsonschema::draft202012::meta::validate(schema),
    };
    if let Err(e) = meta {
        return Err(SchemaError::Invalid(format!(
            "at {}: {e}",
            shown(e.instance_path().as_str())
        )));
    }
    jsonschema::options()
        .with_draft(draft)
        .build(schema)
        .map(Arc::new)
        .map_err(|e| match e.kind() {
            jsonschema::error::ValidationErrorKind::Referencing(_) => {
                SchemaError::Unavailable(e.to_string())
            }
            _ => SchemaError::Invalid(e.to_string()),
        })
}

/// Checks `value`, reporting the first failure.
pub fn check(validator: &Validator, value: &Value) -> Result<(), Invalid> {
    match validator.iter_errors(value).next() {
        None => Ok(()),
        Some(e) => Err(Invalid {
            pointer: e.instance_path().as_str().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Expands every string of `value` that holds a placeholder. A string that is one lone
/// placeholder where `schema` wants an integer, number or boolean becomes that type
/// (`${PORT:3111}` in a `port` field is the number 3111).
pub fn expand(
    value: &Value,
    schema: Option<&Value>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, ExpandError> {
    let mut pointer = String::new();
    walk(value, schema, lookup, &mut pointer)
}

/// The process environment, for [`expand`].
pub fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

fn walk(
    v: &Value,
    schema: Option<&Value>,
    lookup: &dyn Fn(&str) -> Option<String>,
    pointer: &mut String,
) -> Result<Value, ExpandError> {
    Ok(match v {
        Value::String(s) if s.contains("${") => {
            let out = iii_core::config::interpolate(s, "", lookup).map_err(|e| match e {
                iii_core::config::ConfigError::UnsetVariable { var, .. } => ExpandError {
                    pointer: pointer.clone(),
                    var,
                },
                other => ExpandError {
                    pointer: pointer.clone(),
                    var: other.to_string(),
                },
            })?;
            coerce(s, out, schema)
        }
        Value::Object(m) => {
            let mut o = serde_json::Map::with_capacity(m.len());
            for (k, x) in m {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                let sub = schema.and_then(|s| {
                    s.get("properties")
                        .and_then(|p| p.get(k))
                        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
                });
                o.insert(k.clone(), walk(x, sub, lookup, pointer)?);
                pointer.truncate(len);
            }
            Value::Object(o)
        }
        Value::Array(a) => {
            let sub = schema.and_then(|s| s.get("items").filter(|i| i.is_object()));
            let mut out = Vec::with_capacity(a.len());
            for (i, x) in a.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                out.push(walk(x, sub, lookup, pointer)?);
                pointer.truncate(len);
            }
            Value::Array(out)
        }
        other => other.clone(),
    })
}

/// A lone placeholder takes the scalar type the schema wants, when the text parses as it.
fn coerce(original: &str, expanded: String, schema: Option<&Value>) -> Value {
    let lone = original.starts_with("${")
        && original.ends_with('}')
        && original.matches("${").count() == 1;
    let wants = |t: &str| match schema.and_then(|s| s.get("type")) {
        Some(Value::String(s)) => s == t,
        Some(Value::Array(a)) => a.iter().any(|x| x == t) && !a.iter().any(|x| x == "string"),
        _ => false,
    };
    if lone {
        let t = expanded.trim();
        if wants("integer") {
            if let Ok(n) = t.parse::<i64>() {
                return Value::from(n);
            }
        }
        if wants("number") || wants("integer") {
            if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                return Value::Number(n);
            }
        }
        if wants("boolean") {
            if let Ok(b) = t.parse::<bool>() {
                return Value::Bool(b);
            }
        }
    }
    Value::String(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(k: &str) -> Option<String> {
        match k {
            "HOST" => Some("example.org".into()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    #[test]
    fn drafts_are_chosen_by_dollar_schema_and_2020_12_is_the_default() {
        // `prefixItems` exists in 2020-12 only; draft 7 ignores it.
        let s = |d: Option<&str>| {
            let mut s = json!({"type": "array", "prefixItems": [{"type": "integer"}]});
            if let Some(d) = d {
                s["$schema"] = json!(d);
            }
            compile(&s).unwrap()
        };
        let v = json!(["x"]);
        assert!(check(&s(None), &v).is_err());
        assert!(check(&s(Some("https://json-schema.org/draft/2020-12/schema")), &v).is_err());
        assert!(check(&s(Some("http://json-schema.org/draft-07/schema#")), &v).is_ok());
        let e = compile(&json!({"$schema": "http://json-schema.org/draft-04/schema#"}))
            .err()
            .unwrap();
        assert!(e.to_string().contains("draft 7"), "{e}");
    }

    #[test]
    fn a_failure_names_the_pointer_and_the_validators_message() {
        let v = compile(&json!({"type": "object", "properties": {
            "server": {"type": "object", "properties": {"port": {"type": "integer"}}}}}))
        .unwrap();
        let e = check(&v, &json!({"server": {"port": "x"}})).unwrap_err();
        assert_eq!(e.pointer, "/server/port");
        assert!(e.message.contains("integer"), "{}", e.message);
        assert!(e
            .to_string()
            .starts_with("value is invalid at `/server/port`: "));
        let root = check(&v, &json!(3)).unwrap_err();
        assert_eq!(root.pointer, "");
    }

    #[test]
    fn bad_and_unloadable_schemas_are_told_apart() {
        assert!(matches!(
            compile(&json!({"type": "no-such-type"})),
            Err(SchemaError::Invalid(_))
        ));
        assert!(matches!(compile(&json!(3)), Err(SchemaError::Invalid(_))));
        // Remote references are never fetched.
        let r = compile(&json!({"$ref": "https://example.org/remote.json"}));
        assert!(
            matches!(r, Err(SchemaError::Unavailable(_))),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn placeholders_expand_and_lone_ones_take_the_schema_type() {
        let schema = json!({"type": "object", "properties": {
            "port": {"type": "integer"}, "on": {"type": "boolean"},
            "hosts": {"type": "array", "items": {"type": "string"}}}});
        let v = json!({"port": "${PORT}", "on": "${ON:true}", "url": "http://${HOST}:${PORT}/",
            "hosts": ["${HOST}", "${NONE:}"], "n": 3});
        let out = expand(&v, Some(&schema), &vars).unwrap();
        assert_eq!(
            out,
            json!({"port": 8080, "on": true, "url": "http://example.org:8080/",
            "hosts": ["example.org", ""], "n": 3})
        );
        // Without a schema the string stays a string.
        assert_eq!(
            expand(&json!({"port": "${PORT}"}), None, &vars).unwrap(),
            json!({"port": "8080"})
        );
        let e = expand(&json!({"a": [{"b": "${MISSING}"}]}), None, &vars).unwrap_err();
        assert_eq!(e.pointer, "/a/0/b");
        assert_eq!(e.var, "MISSING");
        assert!(e.to_string().contains("`/a/0/b`"), "{e}");
    }
}
