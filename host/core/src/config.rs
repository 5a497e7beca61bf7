//! Reading one `config.yaml` entry: the [`EntryReader`] every service's `configure` uses, and the
//! [`ConfigError`] it returns. Messages name the file, the dotted key (`workers[2](state).config.
//! max_value_bytes`) and what was expected, so a user can fix the entry without reading code.

use serde_yaml::Value;

/// A config file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs, reason = "each variant is documented by its message")]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}:{line}: environment variable `{var}` is not set and `${{{var}}}` has no default (write `${{{var}:default}}` to give one)")]
    UnsetVariable {
        path: String,
        line: usize,
        var: String,
    },
    #[error("{path}: unknown key `{key}` (expected one of: {allowed})")]
    UnknownKey {
        path: String,
        key: String,
        allowed: String,
    },
    #[error("{path}: `{key}` must be {expected}, found {found}")]
    InvalidValue {
        path: String,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Typed reads of config values, each failing with a [`ConfigError`] that names the file and the
/// dotted key.
pub struct EntryReader<'a> {
    /// The file (or `(embedded defaults)`) the entry is in.
    pub path: &'a str,
}

/// Describes a YAML value for a message: `` `3` ``, `"text"`, `a list`.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("\"{s}\""),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

impl EntryReader<'_> {
    /// "`key` must be `expected`, found …".
    pub fn invalid(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.into(),
            key: key.into(),
            expected,
            found: describe(found),
        }
    }

    /// Refuses any key of `m` not in `allowed`; `at` is the dotted path of `m`.
    pub fn check_keys(
        &self,
        m: &serde_yaml::Mapping,
        at: &str,
        allowed: &[&str],
    ) -> Result<(), ConfigError> {
        for k in m.keys() {
            let ks = k.as_str().unwrap_or("");
            if !allowed.contains(&ks) {
                let key = if at.is_empty() {
                    describe_key(k)
                } else {
                    format!("{at}.{}", describe_key(k))
                };
                return Err(ConfigError::UnknownKey {
                    path: self.path.into(),
                    key,
                    allowed: allowed.join(", "),
                });
            }
        }
        Ok(())
    }

    /// A non-negative integer (also from a string, as `${VAR:3111}` can give).
    pub fn u64(&self, v: &Value, key: &str) -> Result<u64, ConfigError> {
        match v {
            Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or_default()),
            // `${PORT:3111}` interpolates to a string in some YAML positions.
            Value::String(s) if s.trim().parse::<u64>().is_ok() => {
                Ok(s.trim().parse().unwrap_or_default())
            }
            other => Err(self.invalid(key, "a non-negative integer", other)),
        }
    }

    /// A TCP port number.
    pub fn port(&self, v: &Value, key: &str) -> Result<u16, ConfigError> {
        let n = self.u64(v, key)?;
        u16::try_from(n).map_err(|_| self.invalid(key, "a port number (0-65535)", v))
    }

    /// A string.
    pub fn string(&self, v: &Value, key: &str) -> Result<String, ConfigError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.invalid(key, "a string", other)),
        }
    }

    /// An IP address or `localhost` to bind to.
    pub fn host(&self, v: &Value, key: &str) -> Result<String, ConfigError> {
        let h = self.string(v, key)?;
        let ok = h == "localhost" || h.parse::<std::net::IpAddr>().is_ok();
        if !ok {
            return Err(self.invalid(key, "an IP address or `localhost`", v));
        }
        Ok(h)
    }

    /// A list of strings.
    pub fn string_list(&self, v: &Value, key: &str) -> Result<Vec<String>, ConfigError> {
        match v {
            Value::Sequence(items) => items.iter().map(|i| self.string(i, key)).collect(),
            other => Err(self.invalid(key, "a list of strings", other)),
        }
    }

    /// A mapping, or `None` for null.
    pub fn mapping<'v>(
        &self,
        v: &'v Value,
        key: &str,
    ) -> Result<Option<&'v serde_yaml::Mapping>, ConfigError> {
        match v {
            Value::Null => Ok(None),
            Value::Mapping(m) => Ok(Some(m)),
            other => Err(self.invalid(key, "a mapping", other)),
        }
    }

    /// A `ConfigError::Invalid` with this file's path.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.into(),
            message: message.into(),
        }
    }

    /// `true`/`false`.
    pub fn bool(&self, v: &Value, key: &str) -> Result<bool, ConfigError> {
        match v {
            Value::Bool(b) => Ok(*b),
            other => Err(self.invalid(key, "true or false", other)),
        }
    }
}

/// A mapping key for a message.
pub fn describe_key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => describe(other),
    }
}

/// Expands `${VAR}` and `${VAR:default}` in raw config text (PROTOCOL.md §7.3). An unset variable
/// without a default is an error, not a crash. `config.yaml` text and the `configuration`
/// service's stored values share this one implementation.
pub fn interpolate(
    text: &str,
    origin: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else { break };
        let inner = &after[..end];
        let (name, default) = match inner.find(':') {
            Some(c) => (&inner[..c], Some(&inner[c + 1..])),
            None => (inner, None),
        };
        if name.is_empty() {
            out.push_str(&rest[..pos + 2]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..pos]);
        let value = match (lookup(name), default) {
            (Some(v), _) => v,
            (None, Some("__III_ENGINE_VERSION__")) => env!("CARGO_PKG_VERSION").to_string(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                let consumed = text.len() - rest.len() + pos;
                let line = text[..consumed].matches('\n').count() + 1;
                return Err(ConfigError::UnsetVariable {
                    path: origin.into(),
                    line,
                    var: name.into(),
                });
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
