//! Request shapes shared by several handlers: the exec command (three shapes), environment
//! variables (list or map), octal modes and base64 input.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{invalid, SandboxError};

/// `env` as a `["K=V", …]` list or a `{K: V}` map.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(untagged)]
pub enum EnvInput {
    /// Nothing given.
    #[default]
    None,
    /// `["K=V", …]`.
    List(Vec<String>),
    /// `{K: V}` (values may be any scalar; they are written as text).
    Map(serde_json::Map<String, Value>),
}

/// Is `name` a portable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`)?
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl EnvInput {
    /// The variables as pairs, in a stable order (a map is sorted by name). Every name must be
    /// valid (S001 lists the bad ones).
    pub fn pairs(&self) -> Result<Vec<(String, String)>, SandboxError> {
        let mut out = Vec::new();
        match self {
            EnvInput::None => {}
            EnvInput::List(items) => {
                for item in items {
                    let (k, v) = item.split_once('=').ok_or_else(|| {
                        invalid(format!("env entry {item:?} is not of the form KEY=VALUE"))
                    })?;
                    out.push((k.to_string(), v.to_string()));
                }
            }
            EnvInput::Map(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                for k in keys {
                    let v = match &m[k] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    out.push((k.clone(), v));
                }
            }
        }
        let bad: Vec<&str> = out
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !valid_name(k))
            .collect();
        if !bad.is_empty() {
            return Err(invalid(format!(
                "env names must match [A-Za-z_][A-Za-z0-9_]*; rejected: {}",
                bad.join(", ")
            )));
        }
        Ok(out)
    }
}

/// The command of an exec, before it is resolved: `argv`, or `cmd` with `args`, or a `cmd`
/// string with spaces split like a shell would (without running one).
pub fn resolve_argv(
    cmd: Option<&str>,
    args: &[String],
    argv: &[String],
) -> Result<Vec<String>, SandboxError> {
    if !argv.is_empty() {
        if cmd.is_some_and(|c| !c.is_empty()) || !args.is_empty() {
            return Err(invalid(
                "give either `argv` or `cmd`/`args`, not both (e.g. {\"argv\":[\"python3\",\"-c\",\"print(1)\"]})",
            ));
        }
        if argv[0].is_empty() {
            return Err(invalid("`argv[0]` is empty"));
        }
        return Ok(argv.to_vec());
    }
    let cmd = cmd.unwrap_or("");
    if cmd.trim().is_empty() {
        return Err(invalid(
            "empty command: set `cmd` (e.g. \"python3\") with `args`, or `argv`",
        ));
    }
    if cmd.chars().any(char::is_whitespace) {
        if !args.is_empty() {
            return Err(invalid(format!(
                "ambiguous command: `cmd` {cmd:?} contains whitespace and `args` is set; put the program alone in `cmd`, or use `argv`"
            )));
        }
        let parts = shlex::split(cmd).ok_or_else(|| {
            invalid(format!(
                "cannot split `cmd` {cmd:?}: unbalanced quotes (use `argv` for exact arguments)"
            ))
        })?;
        if parts.is_empty() {
            return Err(invalid("empty command"));
        }
        return Ok(parts);
    }
    let mut out = vec![cmd.to_string()];
    out.extend(args.iter().cloned());
    Ok(out)
}

/// An octal mode string (`"0644"`, `"755"`).
pub fn parse_mode(mode: &str, field: &str) -> Result<u32, SandboxError> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(invalid(format!(
            "`{field}` must be an octal mode such as \"0644\", got {mode:?}"
        ))),
    }
}

/// Decodes standard base64 (with or without padding).
pub fn decode_b64(s: &str, field: &str) -> Result<Vec<u8>, SandboxError> {
    let e = base64::engine::general_purpose::STANDARD;
    e.decode(s.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.trim()))
        .map_err(|err| invalid(format!("`{field}` is not valid base64: {err}")))
}

/// Validates a sandbox id as a UUID.
pub fn sandbox_id(id: &str) -> Result<uuid::Uuid, SandboxError> {
    uuid::Uuid::parse_str(id).map_err(|e| invalid(format!("sandbox_id is not a valid UUID: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_command_shapes() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resolve_argv(Some("python3"), &v(&["-c", "print(1)"]), &[]).unwrap(),
            v(&["python3", "-c", "print(1)"])
        );
        assert_eq!(
            resolve_argv(Some("python3 -c 'print(2 + 2)'"), &[], &[]).unwrap(),
            v(&["python3", "-c", "print(2 + 2)"])
        );
        assert_eq!(
            resolve_argv(None, &[], &v(&["ls", "-la"])).unwrap(),
            v(&["ls", "-la"])
        );
        for (cmd, args, argv, needle) in [
            (Some("ls"), vec![], v(&["ls"]), "not both"),
            (Some("echo 'x"), vec![], vec![], "unbalanced"),
            (Some("echo a"), v(&["b"]), vec![], "ambiguous"),
            (None, vec![], vec![], "empty command"),
            (Some("  "), vec![], vec![], "empty command"),
        ] {
            let e = resolve_argv(cmd, &args, &argv).unwrap_err();
            assert_eq!(e.code(), "S001");
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn env_list_and_map() {
        let m: EnvInput = serde_json::from_value(json!({"B": "2", "A": 1})).unwrap();
        assert_eq!(
            m.pairs().unwrap(),
            [("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        let l: EnvInput = serde_json::from_value(json!(["X=1=2", "Y="])).unwrap();
        assert_eq!(
            l.pairs().unwrap(),
            [("X".into(), "1=2".into()), ("Y".into(), "".into())]
        );
        let bad: EnvInput =
            serde_json::from_value(json!({"1X": "a", "OK": "b", "A-B": "c"})).unwrap();
        let e = bad.pairs().unwrap_err();
        assert_eq!(e.code(), "S001");
        assert!(e.to_string().contains("1X, A-B"), "{e}");
        let noeq: EnvInput = serde_json::from_value(json!(["NOPE"])).unwrap();
        assert_eq!(noeq.pairs().unwrap_err().code(), "S001");
        assert_eq!(EnvInput::None.pairs().unwrap(), vec![]);
    }

    #[test]
    fn modes_base64_ids() {
        assert_eq!(parse_mode("0644", "mode").unwrap(), 0o644);
        assert_eq!(parse_mode("755", "mode").unwrap(), 0o755);
        assert!(parse_mode("0999", "mode").is_err());
        assert!(parse_mode("", "mode").is_err());
        assert_eq!(decode_b64("aGk=", "stdin").unwrap(), b"hi");
        assert_eq!(decode_b64("aGk", "stdin").unwrap(), b"hi");
        assert_eq!(decode_b64("!!", "stdin").unwrap_err().code(), "S001");
        assert!(sandbox_id("nope")
            .unwrap_err()
            .to_string()
            .contains("not a valid UUID"));
    }
}
