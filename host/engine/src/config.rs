//! `config.yaml`: locating, `${VAR}` interpolation, the top level, and handing each entry to
//! the service that claims it (PROTOCOL.md §7).
//!
//! This is the only place that maps entry names to services, and it does so through the
//! service list ([`crate::services`]), never by naming a service. Unknown keys and bad values
//! are rejected by the services with the file, the dotted key and what was expected. Entries
//! upstream has and this engine does not yet are accepted and reported in
//! [`EngineConfig::unavailable`]; a near miss of a known name is an error with a suggestion.

use std::path::{Path, PathBuf};
use std::time::Duration;

use iii_core::config::{ConfigError, EntryReader};
use iii_core::{Configured, CoreSettings, Entry, Service, ServiceInfo};
use serde_yaml::Value;

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file (absolute path).
    File(PathBuf),
    /// The embedded defaults ([`EMBEDDED`]).
    Embedded,
}

/// The embedded defaults: the worker socket on 127.0.0.1:49134, the REST trigger server on
/// 127.0.0.1:3111, state and stream on the builtin kv adapter and the durable queue on the
/// builtin queue adapter, all durable under `./.iii/data`. Always-on services (engine
/// functions, observability) run as well.
pub const EMBEDDED: &str = "workers:
  - name: iii-worker-manager
  - name: http
  - name: state
  - name: stream
  - name: queue
";

/// Upstream entry names that start nothing in this engine yet, each with its other name
/// (upstream 0.22 renamed `iii-<x>` to `<x>`): listing one is a warning, not an error.
const UPSTREAM_UNAVAILABLE: &[(&str, &str)] = &[("iii-exec", "iii-exec")];

/// One service as the file configured it.
pub struct ConfiguredService {
    /// Its names.
    pub info: ServiceInfo,
    /// Validated, not started.
    pub configured: Box<dyn Configured>,
    /// Its entries' `config:` blocks as JSON, in file order (empty for an always-on service the
    /// file does not list). Run-time changes are diffed against these.
    pub blocks: Vec<serde_json::Value>,
}

/// A `config:` block as JSON (`{}` when absent; YAML keys that are not strings are written as
/// YAML text, which no service accepts anyway).
pub fn block_json(config: &Value) -> serde_json::Value {
    match config {
        Value::Null => serde_json::json!({}),
        v => serde_json::to_value(v).unwrap_or_else(|_| {
            serde_json::Value::String(serde_yaml::to_string(v).unwrap_or_default())
        }),
    }
}

/// A validated configuration: core settings plus every configured service, in list order.
pub struct EngineConfig {
    /// Where it came from.
    pub source: ConfigSource,
    /// The directory relative paths and default data directories resolve in: the config
    /// file's directory, or the working directory for the embedded defaults.
    pub project_dir: PathBuf,
    /// The core's own settings.
    pub core: CoreSettings,
    /// The services to start, configured, in the order of the service list.
    pub services: Vec<ConfiguredService>,
    /// Entries that start nothing in this engine (with the reason), logged once each.
    pub unavailable: Vec<(String, &'static str)>,
    /// Deprecated entry names used, with the name to use instead.
    pub deprecated: Vec<(String, &'static str)>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("source", &self.source)
            .field("project_dir", &self.project_dir)
            .field("core", &self.core)
            .field(
                "services",
                &self
                    .services
                    .iter()
                    .map(|s| s.info.name)
                    .collect::<Vec<_>>(),
            )
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl EngineConfig {
    /// The embedded defaults ([`EMBEDDED`]).
    pub fn embedded() -> Self {
        let mut cfg = Self::parse(EMBEDDED, "(embedded defaults)", ConfigSource::Embedded)
            .expect("the embedded defaults are valid");
        cfg.project_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        cfg
    }

    /// Loads and validates a file.
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

    /// The configured value of service type `T` (its `Configured` type), if that service runs.
    pub fn service<T: 'static>(&self) -> Option<&T> {
        self.services
            .iter()
            .find_map(|s| s.configured.as_any().downcast_ref::<T>())
    }

    /// The engine log level the observability entry set, if any.
    pub fn log_level(&self) -> Option<String> {
        self.service::<iii_services::observability::ObservabilityConfig>()
            .and_then(|o| o.level.clone())
    }

    /// The engine log format the observability entry set (`default` or `json`), if any.
    pub fn log_format(&self) -> Option<String> {
        self.service::<iii_services::observability::ObservabilityConfig>()
            .and_then(|o| o.format.clone())
    }

    /// Is a service with config name `name` configured to run?
    pub fn runs(&self, name: &str) -> bool {
        self.services.iter().any(|s| s.info.name == name)
    }

    /// Parses config text against the service list; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str, source: ConfigSource) -> Result<Self, ConfigError> {
        Self::parse_with(text, origin, source, &crate::services())
    }

    /// Parses config text against `services` (tests pass their own list).
    pub fn parse_with(
        text: &str,
        origin: &str,
        source: ConfigSource,
        services: &[Box<dyn Service>],
    ) -> Result<Self, ConfigError> {
        let text = interpolate(text, origin, &|k| std::env::var(k).ok())?;
        let root: Value = serde_yaml::from_str(&text).map_err(|e| ConfigError::Yaml {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let v = EntryReader { path: origin };
        let mut core = CoreSettings::default();
        let empty = serde_yaml::Mapping::new();
        let root = match &root {
            Value::Null => &empty,
            Value::Mapping(m) => m,
            other => return Err(v.invalid("(top level)", "a mapping", other)),
        };
        v.check_keys(
            root,
            "",
            &["workers", "modules", "registration_namespace_grace_ms"],
        )?;
        if let Some(g) = root.get("registration_namespace_grace_ms") {
            core.namespace_grace =
                Duration::from_millis(v.u64(g, "registration_namespace_grace_ms")?);
        }
        if let Some(g) = grace_from_env() {
            core.namespace_grace = g;
        }
        let mut items = Vec::new();
        for list_key in ["workers", "modules"] {
            match root.get(list_key) {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(list)) => {
                    for (i, item) in list.iter().enumerate() {
                        items.push((format!("{list_key}[{i}]"), item));
                    }
                }
                Some(other) => return Err(v.invalid(list_key, "a list of worker entries", other)),
            }
        }

        let infos: Vec<ServiceInfo> = services.iter().map(|s| s.info()).collect();
        let null = Value::Null;
        // Entries per service index, and the names each service was listed under.
        let mut claimed: Vec<Vec<Entry<'_>>> = infos.iter().map(|_| Vec::new()).collect();
        let mut listed_as: Vec<Vec<String>> = infos.iter().map(|_| Vec::new()).collect();
        let mut unavailable_seen: Vec<(usize, String)> = Vec::new();
        let mut cfg = EngineConfig {
            source,
            project_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            core,
            services: Vec::new(),
            unavailable: Vec::new(),
            deprecated: Vec::new(),
        };
        for (at, item) in items {
            let m = match item {
                Value::Mapping(m) => m,
                other => return Err(v.invalid(&at, "a mapping with a `name`", other)),
            };
            let name = match m.get("name") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
                Some(other) => {
                    return Err(v.invalid(&format!("{at}.name"), "a non-empty string", other))
                }
                None => return Err(v.error(format!("`{at}` has no `name`"))),
            };
            let external = ["image", "worker_path"]
                .iter()
                .any(|k| m.get(*k).is_some_and(|x| !x.is_null()));
            let at = format!("{at}({name})");
            if name == iii_services::external::IMAGE_WORKERS {
                return Err(v.error(format!(
                    "`{at}`: `{name}` is reserved (managed workers are listed by their own name with `image:` or `worker_path:`)"
                )));
            }
            if let Some(i) = infos
                .iter()
                .position(|s| s.name == name || s.deprecated_names.contains(&name))
            {
                let info = &infos[i];
                if external {
                    return Err(v.error(format!(
                        "`{at}`: `image`/`worker_path` is not allowed for the builtin worker `{name}`"
                    )));
                }
                if let Some(prev) = listed_as[i].first() {
                    if !info.repeatable {
                        return Err(v.error(if prev == name {
                            format!("`{name}` is listed twice; keep one entry")
                        } else {
                            format!("Duplicate worker configurations: `{prev}` and `{name}` name the same service; keep one")
                        }));
                    }
                }
                if name != info.name {
                    cfg.deprecated.push((name.to_string(), info.name));
                }
                listed_as[i].push(name.to_string());
                claimed[i].push(Entry {
                    at,
                    name,
                    config: m.get("config").unwrap_or(&null),
                    reader: EntryReader { path: origin },
                });
                continue;
            }
            if let Some(u) = UPSTREAM_UNAVAILABLE
                .iter()
                .position(|(a, b)| *a == name || *b == name)
            {
                if external {
                    return Err(v.error(format!(
                        "`{at}`: `image`/`worker_path` is not allowed for the builtin worker `{name}`"
                    )));
                }
                if let Some((_, prev)) = unavailable_seen.iter().find(|(x, _)| *x == u) {
                    return Err(v.error(format!("Duplicate worker configurations: `{prev}` and `{name}` name the same service; keep one")));
                }
                unavailable_seen.push((u, name.to_string()));
                cfg.unavailable.push((
                    name.to_string(),
                    "this service is not available in this engine yet; the entry starts nothing",
                ));
                continue;
            }
            // An entry with an image or a path is explicitly a worker of the user's own.
            if !external {
                if let Some(known) = near_miss(name, &infos) {
                    return Err(v.error(format!(
                        "`{at}`: unknown builtin `{name}`; did you mean `{known}`? (an external worker needs `image:` or `worker_path:`)"
                    )));
                }
            }
            // A worker of the user's own from an image: the engine runs it in a sandbox
            // through `iii-worker-host`. Its service gets the whole entry (name, image, config).
            // A local-path worker (`worker_path:`) runs the same way, from a project directory.
            if external {
                if let Some(i) = infos
                    .iter()
                    .position(|s| s.name == iii_services::external::IMAGE_WORKERS)
                {
                    claimed[i].push(Entry {
                        at,
                        name,
                        config: item,
                        reader: EntryReader { path: origin },
                    });
                    continue;
                }
            }
            cfg.unavailable.push((name.to_string(), "external and registry workers are not supported by this engine yet; start the worker yourself and point it at the worker socket"));
        }
        for (i, service) in services.iter().enumerate() {
            if claimed[i].is_empty() && !infos[i].always_on {
                continue;
            }
            let configured = service.configure(&claimed[i])?;
            let blocks = claimed[i].iter().map(|e| block_json(e.config)).collect();
            cfg.services.push(ConfiguredService {
                info: infos[i],
                configured,
                blocks,
            });
        }
        Ok(cfg)
    }
}

/// Every name an entry may use for a builtin: the services' names, their deprecated names
/// and the upstream names that start nothing yet.
fn known_names(infos: &[ServiceInfo]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for i in infos {
        v.push(i.name);
        v.extend(i.deprecated_names.iter().copied());
    }
    for (a, b) in UPSTREAM_UNAVAILABLE {
        v.push(a);
        v.push(b);
    }
    v
}

/// The builtin `name` was probably meant as: same after trimming, lower-casing and `_` → `-`,
/// or within edit distance 2.
fn near_miss(name: &str, infos: &[ServiceInfo]) -> Option<&'static str> {
    let norm = |s: &str| s.trim().to_lowercase().replace('_', "-");
    let n = norm(name);
    let known = known_names(infos);
    if let Some(k) = known.iter().find(|k| norm(k) == n) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(&n, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn grace_from_env() -> Option<Duration> {
    std::env::var("III_NAMESPACE_GRACE_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

pub use iii_core::config::interpolate;

#[cfg(test)]
mod tests {
    use super::*;
    use iii_services::http::HttpConfig;
    use iii_services::state::StateConfig;
    use iii_services::worker_socket::WorkerSockets;

    fn parse(t: &str) -> Result<EngineConfig, ConfigError> {
        EngineConfig::parse(t, "config.yaml", ConfigSource::Embedded)
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
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
        assert_eq!(
            c.service::<WorkerSockets>().unwrap().0[0].socket.port,
            49999
        );
        assert_eq!(c.service::<HttpConfig>().unwrap().port, 3999);
        assert_eq!(c.log_level().as_deref(), Some("debug"));
        assert!(c.unavailable.is_empty(), "{:?}", c.unavailable);
        assert!(c.runs("queue") && c.runs("pubsub") && c.runs("cron"));
        assert_eq!(
            c.service::<StateConfig>().unwrap().adapter,
            iii_adapter_api::AdapterSpec::named("kv")
        );
        assert!(c.runs("stream"));
        let deprecated: Vec<_> = c.deprecated.iter().map(|(o, n)| (o.as_str(), *n)).collect();
        assert_eq!(
            deprecated,
            [
                ("iii-http", "http"),
                ("iii-state", "state"),
                ("iii-stream", "stream"),
                ("iii-pubsub", "pubsub"),
                ("iii-cron", "cron"),
                ("iii-queue", "queue")
            ]
        );
    }

    #[test]
    fn new_names_start_the_services() {
        let c = parse(
            "workers:\n  - name: http\n    config: {port: 0}\n  - name: state\n  - name: stream\n",
        )
        .unwrap();
        assert!(c.runs("http") && c.runs("state") && c.runs("stream"));
        assert!(c.unavailable.is_empty() && c.deprecated.is_empty());
    }

    #[test]
    fn bad_config_is_named() {
        assert!(err("workerz: []").contains("unknown key `workerz`"));
        let e = err("workers:\n  - name: iii-http\n    config: {port: 'abc'}");
        assert!(
            e.contains("workers[0](iii-http).config.port") && e.contains("non-negative integer"),
            "{e}"
        );
        let e = err("workers:\n  - name: iii-worker-manager\n    config: {bogus: 1}");
        assert!(
            e.contains("unknown key `workers[0](iii-worker-manager).config.bogus`"),
            "{e}"
        );
        assert!(
            err("workers:\n  - name: iii-http\n    config: {port: 70000}").contains("port number")
        );
        assert!(err("workers: 3").contains("`workers` must be a list"));
        let e =
            err("workers:\n  - name: iii-state\n    config: {adapter: {name: kv, path: x.wasm}}");
        assert!(
            e.contains("iii-state") && e.contains("both `name` and `path`"),
            "{e}"
        );
        let e = err("workers:\n  - name: iii-state\n    config: {triggers_enabled: 1}");
        assert!(
            e.contains("triggers_enabled") && e.contains("true or false"),
            "{e}"
        );
        assert!(err("workers: [").contains("invalid YAML"));
    }

    #[test]
    fn both_names_of_one_service_are_an_error() {
        for (a, b) in [
            ("iii-http", "http"),
            ("state", "iii-state"),
            ("iii-cron", "cron"),
        ] {
            let e = err(&format!("workers:\n  - name: {a}\n  - name: {b}\n"));
            assert!(
                e.contains("Duplicate worker configurations") && e.contains(a) && e.contains(b),
                "{e}"
            );
        }
        let e = err("workers:\n  - name: http\n  - name: http\n");
        assert!(e.contains("`http` is listed twice"), "{e}");
    }

    #[test]
    fn near_misses_of_builtins_are_refused_with_a_suggestion() {
        for (typo, meant) in [
            ("iii_worker_manager", "iii-worker-manager"),
            ("III-HTTP", "iii-http"),
            (" state ", "state"),
            ("iii-stat", "iii-state"),
            ("iii-crn", "iii-cron"),
        ] {
            let e = err(&format!("workers:\n  - name: \"{typo}\"\n"));
            assert!(
                e.contains(&format!("did you mean `{meant}`")),
                "{typo}: {e}"
            );
        }
        // An explicit external worker is not second-guessed: with `image:` it is an image
        // worker the engine runs; a distinct name without one starts nothing.
        let c =
            parse("workers:\n  - name: iii-stat\n    image: ghcr.io/me/stat:1\n  - name: pdfkit\n")
                .unwrap();
        assert!(c.runs(iii_services::external::IMAGE_WORKERS));
        assert_eq!(c.unavailable.len(), 1, "{:?}", c.unavailable);
        assert_eq!(c.unavailable[0].0, "pdfkit");
    }

    #[test]
    fn rbac_on_a_misspelled_listener_does_not_run_unauthenticated() {
        let e = err("workers:\n  - name: iii_worker_manager\n    config: {rbac: {auth_function_id: a::b}}\n");
        assert!(e.contains("did you mean `iii-worker-manager`"), "{e}");
        let ok = parse("workers:\n  - name: iii-worker-manager\n    config: {rbac: {auth_function_id: a::b}}\n").unwrap();
        let ws = &ok.service::<WorkerSockets>().unwrap().0;
        assert!(ws[0].policy.as_ref().is_some_and(|p| p.rbac.is_some()));
        let e = err("workers:\n  - name: iii-worker-manager\n    config: {rbac: {expose_functions: [{metadata: 3}]}}\n");
        assert!(e.contains("rbac.expose_functions[0].metadata"), "{e}");
    }

    #[test]
    fn empty_file_gives_default_listener_and_always_on_services() {
        let c = parse("").unwrap();
        let ws = &c.service::<WorkerSockets>().unwrap().0;
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0].socket.port, 49134);
        assert!(!c.runs("http") && !c.runs("state"));
        assert!(c.runs("iii-engine-functions") && c.runs("iii-observability"));
    }

    #[test]
    fn embedded_defaults_run_http_state_and_stream() {
        let c = EngineConfig::embedded();
        assert!(c.runs("http") && c.runs("state") && c.runs("stream"));
        assert_eq!(c.source, ConfigSource::Embedded);
    }
}
