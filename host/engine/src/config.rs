//! `config.yaml`: locating, `${VAR}` interpolation, and strict validation (spec §7).
//!
//! Unknown keys and bad values are rejected with the file, the dotted key and what was expected.
//! Entries for services this engine does not have yet are accepted (so an upstream `config.yaml`
//! works as is) and reported in [`EngineConfig::unavailable`], which the engine logs once each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use iii_plugin_host::AdapterSpec;
use serde_yaml::Value;

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerManagerConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
}

/// A stateful service (`iii-state`, `iii-stream`) and the adapter it runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The `adapter:` entry (`{name|path, config, grants}`); the builtin kv when absent.
    pub adapter: AdapterSpec,
    /// `iii-state` only: fire `state` triggers after writes.
    pub triggers_enabled: bool,
    /// `iii-state` only: refuse values whose JSON is larger than this.
    pub max_value_bytes: Option<usize>,
}

impl ServiceConfig {
    fn builtin_kv() -> Self {
        ServiceConfig {
            adapter: AdapterSpec::named("kv"),
            triggers_enabled: true,
            max_value_bytes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub host: String,
    pub port: u16,
    pub default_timeout: Duration,
    pub cors: Option<CorsConfig>,
    pub concurrency_request_limit: usize,
}

/// The validated engine configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub source: ConfigSource,
    pub worker_managers: Vec<WorkerManagerConfig>,
    pub http: Option<HttpConfig>,
    pub state: Option<ServiceConfig>,
    pub stream: Option<ServiceConfig>,
    /// Directory the project's relative paths and default data directories are resolved in:
    /// the config file's directory, or the working directory for the embedded defaults.
    pub project_dir: PathBuf,
    pub namespace_grace: Duration,
    /// Engine log level from `iii-observability.config.level`, if set.
    pub log_level: Option<String>,
    /// Entries that start nothing in this engine (with the reason), to be logged once each.
    pub unavailable: Vec<(String, &'static str)>,
}

#[derive(Debug, thiserror::Error)]
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

const BUILTIN_UNAVAILABLE: &[&str] = &[
    "iii-pubsub",
    "iii-cron",
    "iii-queue",
    "iii-exec",
    "iii-bridge",
    "iii-http-functions",
];
const MIGRATED: &[&str] = &["http", "cron", "queue", "state", "pubsub", "stream"];

impl EngineConfig {
    /// The embedded defaults: the worker socket on 127.0.0.1:49134 and the REST trigger server on
    /// 127.0.0.1:3111, plus the mandatory engine functions.
    pub fn embedded() -> Self {
        EngineConfig {
            source: ConfigSource::Embedded,
            worker_managers: vec![WorkerManagerConfig {
                name: "iii-worker-manager".into(),
                host: "127.0.0.1".into(),
                port: 49134,
                handshake_timeout: Duration::from_millis(10_000),
            }],
            http: Some(HttpConfig {
                host: "127.0.0.1".into(),
                port: 3111,
                default_timeout: Duration::from_millis(30_000),
                cors: None,
                concurrency_request_limit: 1024,
            }),
            state: Some(ServiceConfig::builtin_kv()),
            stream: Some(ServiceConfig::builtin_kv()),
            project_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            namespace_grace: grace_from_env().unwrap_or(Duration::from_millis(5000)),
            log_level: None,
            unavailable: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut cfg = Self::parse(
            &text,
            &path.display().to_string(),
            ConfigSource::File(abs.clone()),
        )?;
        if let Some(dir) = abs.parent() {
            cfg.project_dir = dir.to_path_buf();
        }
        Ok(cfg)
    }

    /// Parses config text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str, source: ConfigSource) -> Result<Self, ConfigError> {
        let text = interpolate(text, origin, &|k| std::env::var(k).ok())?;
        let root: Value = serde_yaml::from_str(&text).map_err(|e| ConfigError::Yaml {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let v = Validator { path: origin };
        let mut cfg = EngineConfig {
            source,
            worker_managers: Vec::new(),
            http: None,
            state: None,
            stream: None,
            project_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            namespace_grace: Duration::from_millis(5000),
            log_level: None,
            unavailable: Vec::new(),
        };
        let root = match root {
            Value::Null => return Ok(Self::with_mandatory(cfg)),
            Value::Mapping(m) => m,
            other => return Err(v.invalid("(top level)", "a mapping", &other)),
        };
        v.check_keys(
            &root,
            "",
            &["workers", "modules", "registration_namespace_grace_ms"],
        )?;
        if let Some(g) = root.get("registration_namespace_grace_ms") {
            cfg.namespace_grace =
                Duration::from_millis(v.u64(g, "registration_namespace_grace_ms")?);
        }
        if let Some(g) = grace_from_env() {
            cfg.namespace_grace = g;
        }
        let mut entries = Vec::new();
        for list_key in ["workers", "modules"] {
            match root.get(list_key) {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        entries.push((format!("{list_key}[{i}]"), item));
                    }
                }
                Some(other) => return Err(v.invalid(list_key, "a list of worker entries", other)),
            }
        }
        let mut seen: Vec<String> = Vec::new();
        for (at, item) in entries {
            let m = match item {
                Value::Mapping(m) => m,
                other => return Err(v.invalid(&at, "a mapping with a `name`", other)),
            };
            let name = match m.get("name") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                Some(other) => {
                    return Err(v.invalid(&format!("{at}.name"), "a non-empty string", other))
                }
                None => {
                    return Err(ConfigError::Invalid {
                        path: origin.into(),
                        message: format!("`{at}` has no `name`"),
                    })
                }
            };
            let key = |k: &str| format!("{at}({name}).{k}");
            let wcfg = m.get("config").cloned().unwrap_or(Value::Null);
            let has_image = m.get("image").is_some_and(|i| !i.is_null());
            let base = name.strip_prefix("iii-").unwrap_or(&name).to_string();
            if seen.iter().any(|s| {
                s != &name
                    && s.strip_prefix("iii-").unwrap_or(s) == base
                    && MIGRATED.contains(&base.as_str())
            }) {
                return Err(ConfigError::Invalid {
                    path: origin.into(),
                    message: format!("Duplicate worker configurations: `{name}` and `iii-{base}`/`{base}` name the same service; keep one"),
                });
            }
            seen.push(name.clone());
            let builtin = matches!(
                name.as_str(),
                "iii-worker-manager"
                    | "iii-http"
                    | "iii-engine-functions"
                    | "iii-observability"
                    | "iii-telemetry"
                    | "configuration"
            ) || BUILTIN_UNAVAILABLE.contains(&name.as_str());
            if builtin && has_image {
                return Err(ConfigError::Invalid {
                    path: origin.into(),
                    message: format!(
                        "`{}`: `image` is not allowed for the builtin worker `{name}`",
                        key("image")
                    ),
                });
            }
            match name.as_str() {
                "iii-worker-manager" => {
                    let n = cfg.worker_managers.len();
                    let wm = v.worker_manager(&wcfg, &key("config"), n)?;
                    cfg.worker_managers.push(wm);
                }
                "iii-http" => {
                    if cfg.http.is_some() {
                        return Err(ConfigError::Invalid {
                            path: origin.into(),
                            message:
                                "`iii-http` is listed twice; one REST trigger server is supported"
                                    .into(),
                        });
                    }
                    cfg.http = Some(v.http(&wcfg, &key("config"))?);
                }
                "iii-observability" => {
                    if let Value::Mapping(om) = &wcfg {
                        if let Some(l) = om.get("level") {
                            let l = v.string(l, &key("config.level"))?;
                            if !["trace", "debug", "info", "warn", "error"].contains(&l.as_str()) {
                                return Err(v.invalid(
                                    &key("config.level"),
                                    "one of trace, debug, info, warn, error",
                                    &Value::String(l),
                                ));
                            }
                            cfg.log_level = Some(l);
                        }
                    } else if !wcfg.is_null() {
                        return Err(v.invalid(&key("config"), "a mapping", &wcfg));
                    }
                }
                "iii-state" => {
                    if cfg.state.is_some() {
                        return Err(ConfigError::Invalid {
                            path: origin.into(),
                            message: "`iii-state` is listed twice".into(),
                        });
                    }
                    cfg.state = Some(v.service(&wcfg, &key("config"), true)?);
                }
                "iii-stream" => {
                    if cfg.stream.is_some() {
                        return Err(ConfigError::Invalid {
                            path: origin.into(),
                            message: "`iii-stream` is listed twice".into(),
                        });
                    }
                    let sc = v.service(&wcfg, &key("config"), false)?;
                    if matches!(&wcfg, Value::Mapping(m) if m.contains_key("port") || m.contains_key("auth_function"))
                    {
                        cfg.unavailable.push((format!("{name} (stream socket)"), "the browser stream socket (port 3112) is not served by this engine yet; stream::* functions and stream triggers work"));
                    }
                    cfg.stream = Some(sc);
                }
                "iii-engine-functions" | "iii-telemetry" | "configuration" => {}
                n if BUILTIN_UNAVAILABLE.contains(&n) => {
                    cfg.unavailable.push((name.clone(), "this service is not available in this engine yet; the entry starts nothing"));
                }
                _ => {
                    cfg.unavailable.push((name.clone(), "external and registry workers are not supported by this engine yet; start the worker yourself and point it at the worker socket"));
                }
            }
        }
        Ok(Self::with_mandatory(cfg))
    }

    fn with_mandatory(mut cfg: EngineConfig) -> Self {
        // Declaring any iii-worker-manager replaces the implicit default one (spec §1.1).
        if cfg.worker_managers.is_empty() {
            cfg.worker_managers.push(WorkerManagerConfig {
                name: "iii-worker-manager".into(),
                host: "127.0.0.1".into(),
                port: 49134,
                handshake_timeout: Duration::from_millis(10_000),
            });
        }
        cfg
    }
}

fn grace_from_env() -> Option<Duration> {
    std::env::var("III_NAMESPACE_GRACE_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Expands `${VAR}` and `${VAR:default}` in raw config text (spec §7.3). An unset variable
/// without a default is an error, not a crash.
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

struct Validator<'a> {
    path: &'a str,
}

fn describe(v: &Value) -> String {
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

impl Validator<'_> {
    fn invalid(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.into(),
            key: key.into(),
            expected,
            found: describe(found),
        }
    }

    fn check_keys(
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

    fn u64(&self, v: &Value, key: &str) -> Result<u64, ConfigError> {
        match v {
            Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or_default()),
            // `${PORT:3111}` interpolates to a string in some YAML positions.
            Value::String(s) if s.trim().parse::<u64>().is_ok() => {
                Ok(s.trim().parse().unwrap_or_default())
            }
            other => Err(self.invalid(key, "a non-negative integer", other)),
        }
    }

    fn port(&self, v: &Value, key: &str) -> Result<u16, ConfigError> {
        let n = self.u64(v, key)?;
        u16::try_from(n).map_err(|_| self.invalid(key, "a port number (0-65535)", v))
    }

    fn string(&self, v: &Value, key: &str) -> Result<String, ConfigError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.invalid(key, "a string", other)),
        }
    }

    fn host(&self, v: &Value, key: &str) -> Result<String, ConfigError> {
        let h = self.string(v, key)?;
        let ok = h == "localhost" || h.parse::<std::net::IpAddr>().is_ok();
        if !ok {
            return Err(self.invalid(key, "an IP address or `localhost`", v));
        }
        Ok(h)
    }

    fn string_list(&self, v: &Value, key: &str) -> Result<Vec<String>, ConfigError> {
        match v {
            Value::Sequence(items) => items.iter().map(|i| self.string(i, key)).collect(),
            other => Err(self.invalid(key, "a list of strings", other)),
        }
    }

    fn mapping<'v>(
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

    fn worker_manager(
        &self,
        v: &Value,
        at: &str,
        index: usize,
    ) -> Result<WorkerManagerConfig, ConfigError> {
        let mut wm = WorkerManagerConfig {
            name: if index == 0 {
                "iii-worker-manager".into()
            } else {
                format!("iii-worker-manager#{index}")
            },
            host: "127.0.0.1".into(),
            port: 49134,
            handshake_timeout: Duration::from_millis(10_000),
        };
        let Some(m) = self.mapping(v, at)? else {
            return Ok(wm);
        };
        self.check_keys(
            m,
            at,
            &[
                "port",
                "host",
                "middleware_function_id",
                "rbac",
                "handshake_timeout_ms",
            ],
        )?;
        if let Some(p) = m.get("port") {
            wm.port = self.port(p, &format!("{at}.port"))?;
        }
        if let Some(h) = m.get("host") {
            wm.host = self.host(h, &format!("{at}.host"))?;
        }
        if let Some(t) = m.get("handshake_timeout_ms") {
            let ms = self.u64(t, &format!("{at}.handshake_timeout_ms"))?;
            if ms == 0 {
                return Err(self.invalid(
                    &format!("{at}.handshake_timeout_ms"),
                    "a positive number of milliseconds",
                    t,
                ));
            }
            wm.handshake_timeout = Duration::from_millis(ms);
        }
        // Refuse rather than silently run an unauthenticated listener the user meant to protect.
        for k in ["rbac", "middleware_function_id"] {
            if m.get(k).is_some_and(|x| !x.is_null()) {
                return Err(ConfigError::Invalid {
                    path: self.path.into(),
                    message: format!("`{at}.{k}` is not supported by this engine yet (RBAC and invocation middleware arrive with the RBAC adapters); remove it or put this listener behind your own gateway"),
                });
            }
        }
        Ok(wm)
    }

    /// `iii-state` / `iii-stream` config: `adapter` (+ state's `triggers_enabled`, `max_value_bytes`).
    fn service(&self, v: &Value, at: &str, is_state: bool) -> Result<ServiceConfig, ConfigError> {
        let mut sc = ServiceConfig::builtin_kv();
        let Some(m) = self.mapping(v, at)? else {
            return Ok(sc);
        };
        let allowed: &[&str] = if is_state {
            &[
                "adapter",
                "triggers_enabled",
                "max_value_bytes",
                "save_interval_ms",
            ]
        } else {
            &["adapter", "port", "host", "auth_function"]
        };
        self.check_keys(m, at, allowed)?;
        if let Some(a) = m.get("adapter").filter(|a| !a.is_null()) {
            let json = serde_json::to_value(a).map_err(|e| ConfigError::Invalid {
                path: self.path.into(),
                message: format!("`{at}.adapter`: {e}"),
            })?;
            sc.adapter = AdapterSpec::from_value(&json).map_err(|e| ConfigError::Invalid {
                path: self.path.into(),
                message: format!("`{at}.adapter`: {e}"),
            })?;
        }
        if let Some(t) = m.get("triggers_enabled") {
            sc.triggers_enabled = match t {
                Value::Bool(b) => *b,
                other => {
                    return Err(self.invalid(
                        &format!("{at}.triggers_enabled"),
                        "true or false",
                        other,
                    ))
                }
            };
        }
        if let Some(x) = m.get("max_value_bytes") {
            let n = self.u64(x, &format!("{at}.max_value_bytes"))?;
            if n == 0 {
                return Err(self.invalid(
                    &format!("{at}.max_value_bytes"),
                    "an integer of at least 1",
                    x,
                ));
            }
            sc.max_value_bytes = Some(n as usize);
        }
        if let Some(x) = m.get("save_interval_ms") {
            let n = self.u64(x, &format!("{at}.save_interval_ms"))?;
            if !(100..=3_600_000).contains(&n) {
                return Err(self.invalid(
                    &format!("{at}.save_interval_ms"),
                    "between 100 and 3600000",
                    x,
                ));
            }
        }
        Ok(sc)
    }

    fn http(&self, v: &Value, at: &str) -> Result<HttpConfig, ConfigError> {
        let mut h = HttpConfig {
            host: "127.0.0.1".into(),
            port: 3111,
            default_timeout: Duration::from_millis(30_000),
            cors: None,
            concurrency_request_limit: 1024,
        };
        let Some(m) = self.mapping(v, at)? else {
            return Ok(h);
        };
        self.check_keys(
            m,
            at,
            &[
                "port",
                "host",
                "default_timeout",
                "cors",
                "concurrency_request_limit",
                "middleware",
            ],
        )?;
        if let Some(p) = m.get("port") {
            h.port = self.port(p, &format!("{at}.port"))?;
        }
        if let Some(x) = m.get("host") {
            h.host = self.host(x, &format!("{at}.host"))?;
        }
        if let Some(t) = m.get("default_timeout") {
            let ms = self.u64(t, &format!("{at}.default_timeout"))?;
            if ms == 0 {
                return Err(self.invalid(
                    &format!("{at}.default_timeout"),
                    "a positive number of milliseconds",
                    t,
                ));
            }
            h.default_timeout = Duration::from_millis(ms);
        }
        if let Some(c) = m.get("concurrency_request_limit") {
            let n = self.u64(c, &format!("{at}.concurrency_request_limit"))?;
            if n == 0 {
                return Err(self.invalid(
                    &format!("{at}.concurrency_request_limit"),
                    "an integer of at least 1",
                    c,
                ));
            }
            h.concurrency_request_limit = n as usize;
        }
        if let Some(c) = m.get("cors") {
            if let Some(cm) = self.mapping(c, &format!("{at}.cors"))? {
                self.check_keys(
                    cm,
                    &format!("{at}.cors"),
                    &["allowed_origins", "allowed_methods"],
                )?;
                let origins = match cm.get("allowed_origins") {
                    Some(o) => self.string_list(o, &format!("{at}.cors.allowed_origins"))?,
                    None => vec!["*".into()],
                };
                let methods = match cm.get("allowed_methods") {
                    Some(o) => self.string_list(o, &format!("{at}.cors.allowed_methods"))?,
                    None => Vec::new(),
                };
                h.cors = Some(CorsConfig {
                    allowed_origins: origins,
                    allowed_methods: methods,
                });
            }
        }
        if let Some(mw) = m.get("middleware") {
            match mw {
                Value::Null => {}
                Value::Sequence(items) if items.is_empty() => {}
                _ => {
                    return Err(ConfigError::Invalid {
                        path: self.path.into(),
                        message: format!(
                            "`{at}.middleware` is not supported by this engine yet; remove it"
                        ),
                    })
                }
            }
        }
        Ok(h)
    }
}

fn describe_key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => describe(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<EngineConfig, ConfigError> {
        EngineConfig::parse(t, "config.yaml", ConfigSource::Embedded)
    }

    #[test]
    fn interpolation() {
        let env = |k: &str| (k == "PORT").then(|| "4000".to_string());
        assert_eq!(
            interpolate("a ${PORT} ${X:dflt} ${Y:}", "c", &env).unwrap(),
            "a 4000 dflt "
        );
        let e = interpolate("a: 1\nb: ${MISSING}", "c.yaml", &env).unwrap_err();
        assert_eq!(e.to_string(), "c.yaml:2: environment variable `MISSING` is not set and `${MISSING}` has no default (write `${MISSING:default}` to give one)");
    }

    #[test]
    fn upstream_config_is_accepted() {
        let c = parse(
            r#"
workers:
  - name: iii-worker-manager
    config: {port: 49999, host: 127.0.0.1, handshake_timeout_ms: 5000}
  - name: iii-http
    config:
      port: 3999
      host: 127.0.0.1
      default_timeout: 1000
      cors: {allowed_origins: ["*"], allowed_methods: [GET, POST]}
  - name: iii-state
    config: {adapter: {name: kv}}
  - name: iii-stream
  - name: iii-pubsub
  - name: iii-cron
  - name: iii-queue
  - name: iii-observability
    config: {enabled: true, level: debug, exporter: memory}
  - name: iii-telemetry
  - name: configuration
  - name: iii-engine-functions
"#,
        )
        .unwrap();
        assert_eq!(c.worker_managers[0].port, 49999);
        assert_eq!(c.http.as_ref().unwrap().port, 3999);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        let names: Vec<_> = c.unavailable.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["iii-pubsub", "iii-cron", "iii-queue"]);
        assert_eq!(c.state.as_ref().unwrap().adapter, AdapterSpec::named("kv"));
        assert!(c.stream.is_some());
    }

    #[test]
    fn bad_config_is_named() {
        let e = parse("workerz: []").unwrap_err().to_string();
        assert!(e.contains("unknown key `workerz`"), "{e}");
        let e = parse("workers:\n  - name: iii-http\n    config: {port: 'abc'}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("workers[0](iii-http).config.port") && e.contains("non-negative integer"),
            "{e}"
        );
        let e = parse("workers:\n  - name: iii-worker-manager\n    config: {bogus: 1}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `workers[0](iii-worker-manager).config.bogus`"),
            "{e}"
        );
        let e = parse("workers:\n  - name: iii-http\n    config: {port: 70000}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port number"), "{e}");
        let e = parse("workers: 3").unwrap_err().to_string();
        assert!(e.contains("`workers` must be a list"), "{e}");
        let e = parse("workers:\n  - name: iii-http\n  - name: http")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Duplicate worker configurations"), "{e}");
        let e =
            parse("workers:\n  - name: iii-state\n    config: {adapter: {name: kv, path: x.wasm}}")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("iii-state") && e.contains("both `name` and `path`"),
            "{e}"
        );
        let e = parse("workers:\n  - name: iii-state\n    config: {triggers_enabled: 1}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("triggers_enabled") && e.contains("true or false"),
            "{e}"
        );
        let e = parse("workers: [").unwrap_err().to_string();
        assert!(e.contains("invalid YAML"), "{e}");
    }

    #[test]
    fn empty_file_gives_default_listener() {
        let c = parse("").unwrap();
        assert_eq!(c.worker_managers.len(), 1);
        assert_eq!(c.worker_managers[0].port, 49134);
        assert!(c.http.is_none());
    }
}
