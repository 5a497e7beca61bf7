//! Reading a `registerfunction.invocation` object (PROTOCOL.md §3.10) into what each call
//! needs: the checked URL, the method, the timeout, the extra headers and the resolved auth.
//! The shapes follow the official SDKs' `HttpInvocationConfig` / `HttpAuthConfig` (Python
//! iii-sdk 0.25, Node iii-sdk 0.22): `null` counts as absent, unknown fields are ignored so a
//! newer SDK's additions do not refuse a registration.

use std::collections::BTreeMap;
use std::time::Duration;

use iii_protocol::{codes, ErrorBody};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::Value;

use super::security::{Refused, Security};

/// `timeout_ms` when the registration gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);
/// The longest `timeout_ms` honoured; larger values are lowered to it (§3.5).
pub const MAX_TIMEOUT: Duration = Duration::from_millis(60_000);

/// A registration the service accepted, ready to be called.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Where calls go.
    pub url: Url,
    /// The request method.
    pub method: Method,
    /// Per-call limit, connect to last body byte.
    pub timeout: Duration,
    /// The configured `headers`.
    pub headers: HeaderMap,
    /// The auth, with its secret read from the engine's environment.
    pub auth: Option<Auth>,
}

/// Resolved auth (the values, not the variable names).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `x-iii-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>:<base64 body>")>`.
    Hmac {
        /// The shared secret.
        secret: Vec<u8>,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The header value, `Bearer <token>`.
        value: HeaderValue,
    },
    /// `<header>: <value>`.
    ApiKey {
        /// The header.
        header: HeaderName,
        /// Its value.
        value: HeaderValue,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        match self {
            Auth::Hmac { .. } => write!(f, "Hmac(..)"),
            Auth::Bearer { .. } => write!(f, "Bearer(..)"),
            Auth::ApiKey { header, .. } => write!(f, "ApiKey({header}: ..)"),
        }
    }
}

/// Why a registration is refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The object does not have the documented shape.
    #[error("`invocation` of `{function_id}` is malformed: {reason}")]
    Malformed {
        /// The function.
        function_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The URL fails the security policy.
    #[error("`invocation.url` of `{function_id}` refused: {source}")]
    Url {
        /// The function.
        function_id: String,
        /// The policy's reason.
        source: Refused,
    },
    /// An auth variable is unset.
    #[error("`invocation.auth.{field}` of `{function_id}` names the environment variable `{var}`, which is not set in the engine's environment")]
    MissingEnv {
        /// The function.
        function_id: String,
        /// `secret_key`, `token_key` or `value_key`.
        field: &'static str,
        /// The variable.
        var: String,
    },
    /// An auth variable is set but unusable.
    #[error(
        "`invocation.auth.{field}` of `{function_id}`: the environment variable `{var}` {why}"
    )]
    Unusable {
        /// The function.
        function_id: String,
        /// `secret_key`, `token_key` or `value_key`.
        field: &'static str,
        /// The variable.
        var: String,
        /// Empty, not UTF-8, or not valid in a header.
        why: &'static str,
        /// The catalogue code for this auth kind.
        code: &'static str,
    },
}

impl SpecError {
    /// The catalogue code the worker is sent.
    pub fn code(&self) -> &'static str {
        match self {
            SpecError::Malformed { .. } => codes::INVALID_INVOCATION,
            SpecError::Url { .. } => codes::URL_VALIDATION_FAILED,
            SpecError::MissingEnv { .. } => codes::MISSING_ENV_VAR,
            SpecError::Unusable { code, .. } => code,
        }
    }
}

impl From<SpecError> for ErrorBody {
    fn from(e: SpecError) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

#[derive(Deserialize)]
struct Wire {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    auth: Option<AuthWire>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AuthWire {
    Hmac {
        secret_key: String,
    },
    Bearer {
        token_key: String,
    },
    // `header` is accepted as another spelling of `api_key`.
    #[serde(alias = "header")]
    ApiKey {
        header: String,
        value_key: String,
    },
}

/// Where environment variables come from (the process's in the engine, a map in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Result<String, std::env::VarError>;

/// Reads and checks `invocation` for `function_id` against `security`, resolving auth
/// variables through `env`. No I/O besides the environment.
pub fn parse(
    function_id: &str,
    invocation: &Value,
    security: &Security,
    env: Env<'_>,
) -> Result<Invocation, SpecError> {
    let malformed = |reason: String| SpecError::Malformed {
        function_id: function_id.into(),
        reason,
    };
    let w: Wire =
        serde_json::from_value(invocation.clone()).map_err(|e| malformed(e.to_string()))?;
    let url = security
        .check_url(&w.url)
        .map_err(|source| SpecError::Url {
            function_id: function_id.into(),
            source,
        })?;
    let method = match w.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("POST") => Method::POST,
        Some("GET") => Method::GET,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some(other) => {
            return Err(malformed(format!(
                "method `{other}` is not one of GET, POST, PUT, PATCH, DELETE"
            )))
        }
    };
    let timeout = match w.timeout_ms {
        None => DEFAULT_TIMEOUT,
        Some(0) => return Err(malformed("timeout_ms must be at least 1".into())),
        Some(ms) => {
            let t = Duration::from_millis(ms);
            if t > MAX_TIMEOUT {
                tracing::warn!(
                    function_id,
                    timeout_ms = ms,
                    "timeout_ms above the 60000 ms cap; using 60000"
                );
            }
            t.min(MAX_TIMEOUT)
        }
    };
    let mut headers = HeaderMap::new();
    for (k, v) in w.headers.unwrap_or_default() {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| malformed(format!("`{k}` is not a valid header name")))?;
        let value = HeaderValue::from_str(&v).map_err(|_| {
            malformed(format!(
                "the value of header `{k}` is not a valid header value"
            ))
        })?;
        headers.insert(name, value);
    }
    let var = |field: &'static str, var: &str, code: &'static str| -> Result<String, SpecError> {
        let unusable = |why| SpecError::Unusable {
            function_id: function_id.into(),
            field,
            var: var.into(),
            why,
            code,
        };
        match env(var) {
            Ok(v) if v.is_empty() => Err(unusable("is empty")),
            Ok(v) => Ok(v),
            Err(std::env::VarError::NotUnicode(_)) => Err(unusable("is not UTF-8")),
            Err(std::env::VarError::NotPresent) => Err(SpecError::MissingEnv {
                function_id: function_id.into(),
                field,
                var: var.into(),
            }),
        }
    };
    let header_value = |field: &'static str, name: &str, code, text: String| {
        HeaderValue::from_str(&text).map_err(|_| SpecError::Unusable {
            function_id: function_id.into(),
            field,
            var: name.into(),
            why: "holds characters a header value cannot carry",
            code,
        })
    };
    let auth = match w.auth {
        None => None,
        Some(AuthWire::Hmac { secret_key }) => Some(Auth::Hmac {
            secret: var("secret_key", &secret_key, codes::SECRET_NOT_FOUND)?.into_bytes(),
        }),
        Some(AuthWire::Bearer { token_key }) => {
            let token = var("token_key", &token_key, codes::TOKEN_NOT_FOUND)?;
            let mut value = header_value(
                "token_key",
                &token_key,
                codes::TOKEN_NOT_FOUND,
                format!("Bearer {token}"),
            )?;
            value.set_sensitive(true);
            Some(Auth::Bearer { value })
        }
        Some(AuthWire::ApiKey { header, value_key }) => {
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                malformed(format!("auth.header `{header}` is not a valid header name"))
            })?;
            let key = var("value_key", &value_key, codes::API_KEY_NOT_FOUND)?;
            let mut value = header_value("value_key", &value_key, codes::API_KEY_NOT_FOUND, key)?;
            value.set_sensitive(true);
            Some(Auth::ApiKey {
                header: name,
                value,
            })
        }
    };
    Ok(Invocation {
        url,
        method,
        timeout,
        headers,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open() -> Security {
        Security {
            url_allowlist: vec!["*".into()],
            block_private_ips: false,
            require_https: false,
        }
    }

    fn env(name: &str) -> Result<String, std::env::VarError> {
        match name {
            "TOKEN" => Ok("t0k".into()),
            "EMPTY" => Ok(String::new()),
            "NEWLINE" => Ok("a\nb".into()),
            _ => Err(std::env::VarError::NotPresent),
        }
    }

    fn p(v: Value) -> Result<Invocation, SpecError> {
        parse("f::x", &v, &open(), &env)
    }

    #[test]
    fn defaults_and_every_field() {
        let i = p(json!({"url": "http://127.0.0.1:9/x"})).unwrap();
        assert_eq!(
            (i.method.clone(), i.timeout),
            (Method::POST, DEFAULT_TIMEOUT)
        );
        assert!(i.headers.is_empty() && i.auth.is_none());
        // Python sends absent options as null.
        let i = p(json!({"url": "http://h/x", "method": "put", "timeout_ms": null, "headers": null, "auth": null})).unwrap();
        assert_eq!(i.method, Method::PUT);
        let i = p(json!({"url": "http://h/x", "method": "GET", "timeout_ms": 250,
            "headers": {"X-Team": "a"}, "auth": {"type": "bearer", "token_key": "TOKEN"}, "future_field": 1}))
        .unwrap();
        assert_eq!(
            (i.method, i.timeout),
            (Method::GET, Duration::from_millis(250))
        );
        assert_eq!(i.headers["x-team"], "a");
        assert!(matches!(i.auth, Some(Auth::Bearer { ref value }) if value == "Bearer t0k"));
        let i = p(json!({"url": "http://h/x", "timeout_ms": 600000})).unwrap();
        assert_eq!(i.timeout, MAX_TIMEOUT);
    }

    #[test]
    fn each_auth_kind_resolves_its_variable() {
        let i = p(json!({"url": "http://h/", "auth": {"type": "hmac", "secret_key": "TOKEN"}}))
            .unwrap();
        assert!(matches!(i.auth, Some(Auth::Hmac { ref secret }) if secret == b"t0k"));
        for ty in ["api_key", "header"] {
            let i = p(json!({"url": "http://h/", "auth": {"type": ty, "header": "X-Api-Key", "value_key": "TOKEN"}})).unwrap();
            assert!(
                matches!(i.auth, Some(Auth::ApiKey { ref header, ref value }) if header == "x-api-key" && value == "t0k"),
                "{ty}"
            );
        }
    }

    #[test]
    fn refusals_carry_their_catalogue_codes() {
        let cases = [
            (
                json!({"method": "POST"}),
                "invalid_invocation",
                "missing field `url`",
            ),
            (
                json!({"url": "http://h/", "method": "HEAD"}),
                "invalid_invocation",
                "method `HEAD`",
            ),
            (
                json!({"url": "http://h/", "timeout_ms": 0}),
                "invalid_invocation",
                "timeout_ms",
            ),
            (
                json!({"url": "http://h/", "headers": {"bad header": "v"}}),
                "invalid_invocation",
                "header name",
            ),
            (
                json!({"url": "http://h/", "auth": {"type": "oauth"}}),
                "invalid_invocation",
                "unknown variant `oauth`",
            ),
            (
                json!({"url": "ftp://h/"}),
                "url_validation_failed",
                "scheme `ftp`",
            ),
            (
                json!({"url": "http://h/", "auth": {"type": "bearer", "token_key": "NOPE"}}),
                "missing_env_var",
                "`NOPE`, which is not set",
            ),
            (
                json!({"url": "http://h/", "auth": {"type": "bearer", "token_key": "EMPTY"}}),
                "token_not_found",
                "is empty",
            ),
            (
                json!({"url": "http://h/", "auth": {"type": "hmac", "secret_key": "EMPTY"}}),
                "secret_not_found",
                "is empty",
            ),
            (
                json!({"url": "http://h/", "auth": {"type": "api_key", "header": "X-K", "value_key": "EMPTY"}}),
                "api_key_not_found",
                "is empty",
            ),
            (
                json!({"url": "http://h/", "auth": {"type": "api_key", "header": "X-K", "value_key": "NEWLINE"}}),
                "api_key_not_found",
                "header value",
            ),
        ];
        for (v, code, needle) in cases {
            let e = ErrorBody::from(p(v.clone()).unwrap_err());
            assert_eq!(e.code, code, "{v}: {e}");
            assert!(e.message.contains(needle), "{v}: {e}");
            assert!(e.message.contains("f::x"), "{v}: {e}");
        }
        let strict = Security::default();
        let e = ErrorBody::from(
            parse("f::x", &json!({"url": "http://h/"}), &strict, &env).unwrap_err(),
        );
        assert_eq!(e.code, "url_validation_failed");
        assert!(e.message.contains("require_https"), "{e}");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let i = p(json!({"url": "http://h/", "auth": {"type": "bearer", "token_key": "TOKEN"}}))
            .unwrap();
        assert!(!format!("{i:?}").contains("t0k"));
    }
}
