//! `UpdateOp` semantics (protocol §8.3), shared by every adapter that applies
//! updates in-process (the builtin kv adapter; a template for others).
//!
//! Ops apply in order to the current value (a missing value starts as `{}`).
//! A failing op is recorded with a stable code and skipped; the others still
//! apply and the final value is stored. Field paths (`set`, `increment`,
//! `decrement`, `remove`) are one literal top-level key; segment paths
//! (`merge`, `append`) are lists of literal keys. Dots are never special.

use serde_json::{Map, Number, Value};

/// Bounds on merge/append input, identical for every adapter so a plugin
/// swap never changes which updates are accepted.
pub const MAX_PATH_SEGMENTS: usize = 32;
pub const MAX_SEGMENT_BYTES: usize = 256;
pub const MAX_VALUE_DEPTH: usize = 16;
pub const MAX_VALUE_KEYS: usize = 1024;
/// Keys that become prototype-pollution sinks in JavaScript consumers.
pub const FORBIDDEN_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];
pub const DOC_URL: &str = "https://iii.dev/docs/workers/iii-state#error-codes";

/// One update operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Set { path: String, value: Value },
    Merge { path: Vec<String>, value: Value },
    Increment { path: String, by: i64 },
    Decrement { path: String, by: i64 },
    Append { path: Vec<String>, value: Value },
    Remove { path: String },
}

/// A failed op inside an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub op_index: usize,
    pub code: String,
    pub message: String,
    pub doc_url: Option<String>,
}

fn op_error(op_index: usize, code: impl Into<String>, message: String) -> OpError {
    OpError {
        op_index,
        code: code.into(),
        message,
        doc_url: Some(DOC_URL.to_string()),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn label(path: &str) -> &str {
    if path.is_empty() {
        "root"
    } else {
        path
    }
}

fn segments_label(path: &[String]) -> String {
    if path.is_empty() {
        "root".to_string()
    } else {
        format!("[{}]", path.join(", "))
    }
}

/// Checks a path's bounds; `op` prefixes the error code (`merge.path.too_deep`).
fn check_path(op: &str, op_index: usize, segments: &[String]) -> Result<(), OpError> {
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(op_error(
            op_index,
            format!("{op}.path.too_deep"),
            format!(
                "path has {} segments, the maximum is {MAX_PATH_SEGMENTS}",
                segments.len()
            ),
        ));
    }
    for s in segments {
        if s.is_empty() {
            return Err(op_error(
                op_index,
                format!("{op}.path.empty_segment"),
                "path contains an empty segment".to_string(),
            ));
        }
        if s.len() > MAX_SEGMENT_BYTES {
            return Err(op_error(
                op_index,
                format!("{op}.path.segment_too_long"),
                format!(
                    "path segment of {} bytes exceeds the maximum of {MAX_SEGMENT_BYTES}",
                    s.len()
                ),
            ));
        }
        if FORBIDDEN_KEYS.contains(&s.as_str()) {
            return Err(op_error(
                op_index,
                format!("{op}.path.proto_polluted"),
                format!("path segment '{s}' is not allowed (prototype pollution)"),
            ));
        }
    }
    Ok(())
}

/// A field path as segments: the empty string is the root.
fn field_segments(path: &str) -> Vec<String> {
    if path.is_empty() {
        Vec::new()
    } else {
        vec![path.to_string()]
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_merge_value(op_index: usize, v: &Value) -> Result<(), OpError> {
    let Value::Object(m) = v else {
        return Err(op_error(
            op_index,
            "merge.value.not_an_object",
            format!("merge value must be a JSON object, got {}", type_name(v)),
        ));
    };
    if m.len() > MAX_VALUE_KEYS {
        return Err(op_error(
            op_index,
            "merge.value.too_many_keys",
            format!(
                "merge value has {} top-level keys, the maximum is {MAX_VALUE_KEYS}",
                m.len()
            ),
        ));
    }
    if let Some(k) = m.keys().find(|k| FORBIDDEN_KEYS.contains(&k.as_str())) {
        return Err(op_error(
            op_index,
            "merge.value.proto_polluted",
            format!("merge value key '{k}' is not allowed (prototype pollution)"),
        ));
    }
    let d = depth(v);
    if d > MAX_VALUE_DEPTH {
        return Err(op_error(
            op_index,
            "merge.value.too_deep",
            format!("merge value nesting depth {d} exceeds the maximum of {MAX_VALUE_DEPTH}"),
        ));
    }
    Ok(())
}

/// Descends `segments` from `root`, turning the root and every missing or
/// non-object node on the way into `{}`, and returns the object reached.
fn descend_creating<'a>(root: &'a mut Value, segments: &[String]) -> &'a mut Map<String, Value> {
    if !root.is_object() {
        *root = Value::Object(Map::new());
    }
    let mut node = root;
    for s in segments {
        let Value::Object(map) = node else {
            unreachable!("every node on the path was made an object")
        };
        let child = map
            .entry(s.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !child.is_object() {
            *child = Value::Object(Map::new());
        }
        node = child;
    }
    match node {
        Value::Object(map) => map,
        _ => unreachable!("every node on the path was made an object"),
    }
}

/// `value + by` keeping integers integral; `None` if not a number or on
/// integer overflow.
fn add(value: &Value, by: i64) -> Option<Value> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        if let Some(r) = i.checked_add(by) {
            return Some(Value::Number(r.into()));
        }
    }
    if let Some(u) = n.as_u64() {
        let r = if by >= 0 {
            u.checked_add(by as u64)?
        } else {
            u.checked_sub(by.unsigned_abs())?
        };
        return Some(Value::Number(r.into()));
    }
    if n.is_f64() {
        return Number::from_f64(n.as_f64()? + by as f64).map(Value::Number);
    }
    None
}

fn sub(value: &Value, by: i64) -> Option<Value> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        if let Some(r) = i.checked_sub(by) {
            return Some(Value::Number(r.into()));
        }
    }
    if let Some(u) = n.as_u64() {
        let r = if by >= 0 {
            u.checked_sub(by as u64)?
        } else {
            u.checked_add(by.unsigned_abs())?
        };
        return Some(Value::Number(r.into()));
    }
    if n.is_f64() {
        return Number::from_f64(n.as_f64()? - by as f64).map(Value::Number);
    }
    None
}

/// `-by` for a missing decrement target (i64::MIN has no negation in i64).
fn negated(by: i64) -> Value {
    match by.checked_neg() {
        Some(n) => Value::Number(n.into()),
        None => Value::Number(by.unsigned_abs().into()),
    }
}

/// First value of an append target: strings stay strings (so they can be
/// concatenated later), anything else starts an array.
fn first_append(value: &Value) -> Value {
    if value.is_string() {
        value.clone()
    } else {
        Value::Array(vec![value.clone()])
    }
}

fn append_into(
    target: &mut Value,
    value: &Value,
    at: &str,
    op_index: usize,
) -> Result<(), OpError> {
    match target {
        Value::Array(items) => {
            items.push(value.clone());
            Ok(())
        }
        Value::String(s) => match value.as_str() {
            Some(chunk) => {
                s.push_str(chunk);
                Ok(())
            }
            None => Err(op_error(
                op_index,
                "append.type_mismatch",
                format!(
                    "cannot append {} to the string at '{}'",
                    type_name(value),
                    label(at)
                ),
            )),
        },
        Value::Null => {
            *target = first_append(value);
            Ok(())
        }
        other => Err(op_error(
            op_index,
            "append.type_mismatch",
            format!(
                "cannot append at '{}': target is {}, expected array, string, null or missing",
                label(at),
                type_name(other)
            ),
        )),
    }
}

/// Applies `ops` to `old` (none = missing, starts as `{}`). Returns the new
/// value and the errors of the ops that were skipped.
pub fn apply(old: Option<Value>, ops: &[Op]) -> (Value, Vec<OpError>) {
    // Root-level increment/decrement/append on a *missing* value start from
    // the op itself rather than from the `{}` placeholder.
    let mut placeholder = old.is_none();
    let mut cur = old.unwrap_or_else(|| Value::Object(Map::new()));
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match apply_one(&mut cur, &mut placeholder, i, op) {
            Ok(()) => {}
            Err(e) => errors.push(e),
        }
    }
    (cur, errors)
}

fn apply_one(cur: &mut Value, placeholder: &mut bool, i: usize, op: &Op) -> Result<(), OpError> {
    match op {
        Op::Set { path, value } => {
            check_path("set", i, &field_segments(path))?;
            if path.is_empty() {
                *cur = value.clone();
            } else if let Value::Object(m) = cur {
                m.insert(path.clone(), value.clone());
            } else {
                return Err(op_error(
                    i,
                    "set.target_not_object",
                    format!(
                        "cannot set '{}': target is {}, expected object",
                        label(path),
                        type_name(cur)
                    ),
                ));
            }
            *placeholder = false;
        }
        Op::Merge { path, value } => {
            check_path("merge", i, path)?;
            check_merge_value(i, value)?;
            let Value::Object(incoming) = value else {
                unreachable!("checked to be an object")
            };
            if path.is_empty() {
                // A root merge into a non-object root is a no-op, as in the
                // reference adapter (it is not reported as an error there).
                if let Value::Object(m) = cur {
                    for (k, v) in incoming {
                        m.insert(k.clone(), v.clone());
                    }
                    *placeholder = false;
                }
            } else {
                let target = descend_creating(cur, path);
                for (k, v) in incoming {
                    target.insert(k.clone(), v.clone());
                }
                *placeholder = false;
            }
        }
        Op::Increment { path, by } | Op::Decrement { path, by } => {
            let (name, up) = match op {
                Op::Increment { .. } => ("increment", true),
                _ => ("decrement", false),
            };
            check_path(name, i, &field_segments(path))?;
            let start = || {
                if up {
                    Value::Number((*by).into())
                } else {
                    negated(*by)
                }
            };
            let step = |v: &Value| if up { add(v, *by) } else { sub(v, *by) };
            let not_number = |v: &Value| {
                op_error(
                    i,
                    format!("{name}.not_number"),
                    format!(
                        "expected a number at '{}', got {}",
                        label(path),
                        type_name(v)
                    ),
                )
            };
            if path.is_empty() {
                if *placeholder {
                    *cur = start();
                } else {
                    *cur = step(cur).ok_or_else(|| not_number(cur))?;
                }
            } else if let Value::Object(m) = cur {
                match m.get_mut(path) {
                    Some(v) => *v = step(v).ok_or_else(|| not_number(v))?,
                    None => {
                        m.insert(path.clone(), start());
                    }
                }
            } else {
                return Err(op_error(
                    i,
                    format!("{name}.target_not_object"),
                    format!(
                        "cannot {name} '{}': target is {}, expected object",
                        label(path),
                        type_name(cur)
                    ),
                ));
            }
            *placeholder = false;
        }
        Op::Append { path, value } => {
            check_path("append", i, path)?;
            if path.is_empty() {
                if *placeholder {
                    *cur = Value::Null;
                }
                append_into(cur, value, "", i)?;
            } else if !cur.is_object() {
                return Err(op_error(
                    i,
                    "append.target_not_object",
                    format!(
                        "cannot append at {}: target is {}, expected object",
                        segments_label(path),
                        type_name(cur)
                    ),
                ));
            } else {
                let (leaf, parents) = path.split_last().expect("path is not empty");
                let parent = descend_creating(cur, parents);
                match parent.get_mut(leaf) {
                    Some(v) => append_into(v, value, leaf, i)?,
                    // A missing top-level field takes the first-append shape;
                    // a missing nested leaf is always an array.
                    None if parents.is_empty() => {
                        parent.insert(leaf.clone(), first_append(value));
                    }
                    None => {
                        parent.insert(leaf.clone(), Value::Array(vec![value.clone()]));
                    }
                }
            }
            *placeholder = false;
        }
        Op::Remove { path } => {
            check_path("remove", i, &field_segments(path))?;
            if path.is_empty() {
                *cur = Value::Null;
            } else if let Value::Object(m) = cur {
                // Keep the other keys' order where the map keeps one (the kv component's).
                #[cfg(feature = "preserve_order")]
                m.shift_remove(path);
                #[cfg(not(feature = "preserve_order"))]
                m.remove(path);
            } else {
                return Err(op_error(
                    i,
                    "remove.target_not_object",
                    format!(
                        "cannot remove '{}': target is {}, expected object",
                        label(path),
                        type_name(cur)
                    ),
                ));
            }
            *placeholder = false;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seg(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_value_starts_as_object() {
        let (v, e) = apply(
            None,
            &[Op::Set {
                path: "a".into(),
                value: json!(1),
            }],
        );
        assert_eq!(v, json!({"a": 1}));
        assert!(e.is_empty());
    }

    #[test]
    fn root_increment_on_missing_starts_from_by() {
        let (v, _) = apply(
            None,
            &[Op::Decrement {
                path: "".into(),
                by: 4,
            }],
        );
        assert_eq!(v, json!(-4));
    }

    #[test]
    fn failing_op_is_skipped_and_others_apply() {
        let (v, e) = apply(
            Some(json!({"n": "x"})),
            &[
                Op::Increment {
                    path: "n".into(),
                    by: 1,
                },
                Op::Set {
                    path: "m".into(),
                    value: json!(2),
                },
            ],
        );
        assert_eq!(v, json!({"n": "x", "m": 2}));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code, "increment.not_number");
        assert_eq!(e[0].op_index, 0);
    }

    #[test]
    fn nested_merge_creates_and_overwrites_intermediates() {
        let (v, e) = apply(
            Some(json!({"a": 5})),
            &[Op::Merge {
                path: seg(&["a", "b"]),
                value: json!({"c": 1}),
            }],
        );
        assert!(e.is_empty());
        assert_eq!(v, json!({"a": {"b": {"c": 1}}}));
    }

    #[test]
    fn merge_bounds() {
        let deep: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        let (_, e) = apply(
            None,
            &[Op::Merge {
                path: deep,
                value: json!({}),
            }],
        );
        assert_eq!(e[0].code, "merge.path.too_deep");
        let (_, e) = apply(
            None,
            &[Op::Merge {
                path: seg(&["__proto__"]),
                value: json!({}),
            }],
        );
        assert_eq!(e[0].code, "merge.path.proto_polluted");
        let (_, e) = apply(
            None,
            &[Op::Merge {
                path: vec![],
                value: json!([1]),
            }],
        );
        assert_eq!(e[0].code, "merge.value.not_an_object");
    }

    #[test]
    fn append_shapes() {
        let (v, e) = apply(
            Some(json!({"s": "ab", "l": [1]})),
            &[
                Op::Append {
                    path: seg(&["s"]),
                    value: json!("c"),
                },
                Op::Append {
                    path: seg(&["l"]),
                    value: json!(2),
                },
                Op::Append {
                    path: seg(&["new"]),
                    value: json!("x"),
                },
                Op::Append {
                    path: seg(&["x", "y"]),
                    value: json!("z"),
                },
                Op::Append {
                    path: seg(&["s"]),
                    value: json!(1),
                },
            ],
        );
        assert_eq!(
            v,
            json!({"s": "abc", "l": [1, 2], "new": "x", "x": {"y": ["z"]}})
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code, "append.type_mismatch");
        assert_eq!(e[0].op_index, 4);
    }
}
