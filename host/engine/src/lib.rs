//! The composition root of iii: the one list of services ([`services`]), the top level of
//! `config.yaml` ([`config`]), start-up in phases ([`start`]) and orderly shutdown
//! ([`Running::shutdown`]).
//!
//! Dependencies point one way: `iii-protocol` ← `iii-core` ← `iii-services` ← this crate ←
//! the `iii` binary. Only this crate knows both the services and the plugin host that
//! implements their adapter traits.

pub mod config;
mod supervisor;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iii_adapter_api::{AdapterError, AdapterErrorKind, AdapterLoader, AdapterSpec};
use iii_core::{CancellationToken, Core, Handles, Service};
use tokio::task::JoinHandle;

pub use config::{ConfigSource, ConfiguredService, EngineConfig};
pub use iii_core::config::ConfigError;
pub use iii_core::StartError;

/// Every service this engine has, in start order. A new capability is a module in
/// `iii-services` plus one line here.
pub fn services() -> Vec<Box<dyn Service>> {
    use iii_services::*;
    vec![
        Box::new(worker_socket::WorkerSocket),
        Box::new(engine_fns::EngineFunctions),
        Box::new(observability::Observability),
        Box::new(configuration::Configuration),
        Box::new(listed_worker::ListedWorker {
            name: "iii-telemetry",
        }),
        Box::new(http::Http),
        Box::new(state::State),
        Box::new(stream::Stream),
        Box::new(queue::Queue),
        Box::new(pubsub::PubSub),
        Box::new(cron::Cron),
        Box::new(http_functions::HttpFunctions),
        Box::new(bridge_worker::Bridge),
        Box::new(policies::Policies),
        Box::new(external::ExternalWorker {
            name: "iii-sandbox",
            program: "iii-sandbox",
            program_env: "III_SANDBOX_BIN",
        }),
        Box::new(external::ManagedWorkers),
    ]
}

/// A started engine.
pub struct Running {
    /// The core handle.
    pub core: Core,
    /// What the services listened on at start-up, labelled (`worker socket`, `REST trigger
    /// server`); [`Running::listening_now`] follows run-time changes.
    pub listening: Vec<(&'static str, SocketAddr)>,
    supervisor: Arc<supervisor::Supervisor>,
    /// The core's maintenance and the config watcher, stopped after the services.
    tasks: Vec<(&'static str, CancellationToken, JoinHandle<()>)>,
}

impl Running {
    /// The first address labelled `what` at start-up.
    pub fn addr(&self, what: &str) -> Option<SocketAddr> {
        self.listening
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, a)| *a)
    }

    /// What the services listen on now (after any run-time change).
    pub async fn listening_now(&self) -> Vec<(&'static str, SocketAddr)> {
        self.supervisor.listening().await
    }

    /// The engine's handle for changing service configuration at run time.
    pub fn control(&self) -> Arc<dyn iii_core::control::ServiceControl> {
        self.supervisor.clone()
    }

    /// Applies the config file at `path` now, as the watcher does on a change.
    pub async fn reload(&self, path: &std::path::Path) {
        watch::reload(&self.supervisor, path).await
    }

    /// Stops the services in reverse start order, giving each up to `per_service` to finish
    /// (flush) after its token is cancelled.
    pub async fn shutdown(self, per_service: Duration) {
        let mut tasks = self.tasks;
        // The watcher first, so that no change starts during shutdown.
        if let Some(i) = tasks.iter().position(|(n, _, _)| *n == "config watcher") {
            let (_, stop, task) = tasks.remove(i);
            stop.cancel();
            let _ = task.await;
        }
        self.supervisor.shutdown(per_service).await;
        for (name, stop, task) in tasks.into_iter().rev() {
            stop.cancel();
            let abort = task.abort_handle();
            if tokio::time::timeout(per_service, task).await.is_err() {
                tracing::warn!(
                    service = name,
                    "did not stop within {per_service:?}; aborted"
                );
                abort.abort();
            }
        }
    }
}

/// Starts every configured service: prepare all (binds, adapter loads), then install all,
/// then run all. Nothing is served until everything prepared, so a port clash or a bad
/// adapter fails start-up cleanly. A configuration read from a file is watched from then on
/// ([`watch`]).
pub async fn start(cfg: EngineConfig) -> Result<Running, StartError> {
    start_with(cfg, Handles::default()).await
}

/// [`start`] with handles provided up front; without an `Arc<dyn AdapterLoader>` among them,
/// adapters load through the plugin host.
pub async fn start_with(cfg: EngineConfig, mut handles: Handles) -> Result<Running, StartError> {
    for (name, why) in &cfg.unavailable {
        tracing::warn!(worker = %name, "config entry `{name}` starts nothing: {why}");
    }
    for (old, new) in &cfg.deprecated {
        tracing::warn!(worker = %old, "config entry name `{old}` is deprecated; write `{new}`");
    }
    if handles.get::<Arc<dyn AdapterLoader>>().is_none() {
        let loader: Arc<dyn AdapterLoader> = Arc::new(LazyPluginHost::new(cfg.project_dir.clone()));
        handles.insert(loader);
    }
    let watched = match &cfg.source {
        ConfigSource::File(p) if watch_enabled() => Some(p.clone()),
        _ => None,
    };
    let (supervisor, listening) = supervisor::Supervisor::boot(cfg, handles).await?;
    let core = supervisor.core().clone();
    let mut tasks = Vec::new();
    {
        let stop = CancellationToken::new();
        let t = tokio::spawn(core.clone().run_maintenance(stop.clone()));
        tasks.push(("core", stop, t));
    }
    if let Some(path) = watched {
        let stop = CancellationToken::new();
        let t = tokio::spawn(watch::watch_config(
            Arc::downgrade(&supervisor),
            path,
            stop.clone(),
        ));
        tasks.push(("config watcher", stop, t));
    }
    Ok(Running {
        core,
        listening,
        supervisor,
        tasks,
    })
}

/// `III_WATCH_CONFIG=0` turns the `config.yaml` watcher off (e.g. a read-only deployment that
/// wants edits to wait for a restart).
fn watch_enabled() -> bool {
    !matches!(
        std::env::var("III_WATCH_CONFIG").as_deref(),
        Ok("0") | Ok("false") | Ok("off")
    )
}

/// Compiled plugin code is cached here, keyed by wasmtime version and plugin digest.
fn plugin_cache_dir() -> std::path::PathBuf {
    if let Ok(d) = std::env::var("III_CACHE_DIR") {
        return std::path::PathBuf::from(d).join("plugins");
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|_| std::env::temp_dir());
    base.join("iii").join("plugins")
}

/// The plugin host, created on the first adapter load: an engine whose services load no
/// adapter never starts wasmtime.
struct LazyPluginHost {
    project_dir: std::path::PathBuf,
    host: tokio::sync::OnceCell<iii_plugin_host::PluginHost>,
}

impl LazyPluginHost {
    fn new(project_dir: std::path::PathBuf) -> Self {
        LazyPluginHost {
            project_dir,
            host: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait::async_trait]
impl AdapterLoader for LazyPluginHost {
    async fn load_any(
        &self,
        world: &'static str,
        spec: &AdapterSpec,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, AdapterError> {
        let host = self
            .host
            .get_or_try_init(|| async {
                iii_plugin_host::PluginHost::new(iii_plugin_host::HostConfig {
                    cache_dir: Some(plugin_cache_dir()),
                    base_dir: self.project_dir.clone(),
                    max_memory_mb: 512,
                    max_instances: 32,
                    ..Default::default()
                })
                .map_err(|e| {
                    AdapterError::new(
                        AdapterErrorKind::Other,
                        format!("cannot start the plugin host: {e}"),
                    )
                })
            })
            .await?;
        host.load_any(world, spec).await
    }
}

#[cfg(test)]
mod tests {
    //! The seam's promise: a new capability is its own module plus one line in the list.
    use super::*;
    use iii_core::config::ConfigError;
    use iii_core::{
        Configured, Entry, FunctionSpec, PrepareCx, Prepared, Registrar, ServiceInfo, StartError,
    };
    use serde_json::json;

    /// A throwaway service: `echo::say` answers its input with a configured prefix.
    struct Echo;
    struct EchoConfig(String);

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct SayIn {
        text: String,
    }

    impl Service for Echo {
        fn info(&self) -> ServiceInfo {
            ServiceInfo {
                name: "echo",
                worker: "echo",
                deprecated_names: &[],
                repeatable: false,
                always_on: false,
            }
        }
        fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
            let e = &entries[0];
            let prefix = match e.reader.mapping(e.config, &e.key("config"))? {
                Some(m) => match m.get("prefix") {
                    Some(p) => e.reader.string(p, &e.key("config.prefix"))?,
                    None => String::new(),
                },
                None => String::new(),
            };
            Ok(Box::new(EchoConfig(prefix)))
        }
    }

    #[async_trait::async_trait]
    impl Configured for EchoConfig {
        async fn prepare(
            self: Box<Self>,
            _cx: &mut PrepareCx<'_>,
        ) -> Result<Box<dyn Prepared>, StartError> {
            Ok(self)
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    impl Prepared for EchoConfig {
        fn install(&mut self, reg: &mut Registrar<'_>) {
            let prefix = self.0.clone();
            reg.function(FunctionSpec::typed(
                "echo::say",
                "Echo",
                move |_c, _ctx, i: SayIn| {
                    let out = format!("{prefix}{}", i.text);
                    async move { Ok(json!(out)) }
                },
            ));
        }
    }

    #[tokio::test]
    async fn a_new_service_is_one_module_and_one_line() {
        let mut list = services();
        list.push(Box::new(Echo)); // the one line
        let cfg = EngineConfig::parse_with(
            "workers:\n  - name: iii-worker-manager\n    config: {port: 0}\n  - name: echo\n    config: {prefix: '> '}\n",
            "test.yaml",
            ConfigSource::Embedded,
            &list,
        )
        .unwrap();
        assert!(cfg.runs("echo"));
        let running = start(cfg).await.unwrap();
        let r = running
            .core
            .call("default", "echo::say", r#"{"text":"hi"}"#, None, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.get(), r#""> hi""#);
        let bad = running
            .core
            .call("default", "echo::say", r#"{"txt":"hi"}"#, None, None)
            .await
            .unwrap_err();
        assert_eq!(bad.code, "deserialization_error");
        let info = running.core.lookup("default", "echo::say").unwrap();
        assert_eq!(info.worker_name(), "echo");
        assert!(info.request_format.as_ref().unwrap()["properties"]["text"].is_object());
        running.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn every_builtin_function_has_request_and_response_schemas() {
        let dir = std::env::temp_dir().join(format!("iii-engine-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = EngineConfig::parse(
            "workers:\n  - name: iii-worker-manager\n    config: {port: 0}\n  - name: http\n    config: {port: 0}\n  - name: state\n  - name: stream\n    config: {port: 0}\n  - name: queue\n",
            "test.yaml",
            ConfigSource::Embedded,
        )
        .unwrap();
        cfg.project_dir = dir.clone();
        let mut handles = Handles::default();
        let loader: Arc<dyn AdapterLoader> = Arc::new(iii_adapter_api::memory::MemoryLoader);
        handles.insert(loader);
        let running = start_with(cfg, handles).await.unwrap();
        let funcs = running.core.all_functions();
        assert!(funcs.len() >= 30, "{}", funcs.len());
        for f in &funcs {
            assert!(f.request_format.is_some(), "{} has no request schema", f.id);
            assert!(
                f.response_format.is_some(),
                "{} has no response schema",
                f.id
            );
        }
        let r = running
            .core
            .call(
                "default",
                "engine::functions::info",
                r#"{"function_id":"state::set"}"#,
                None,
                None,
            )
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(r.get()).unwrap();
        assert!(v["request_schema"]["properties"]["key"].is_object(), "{v}");
        assert!(v["response_schema"].is_object(), "{v}");
        assert!(running.addr("REST trigger server").is_some());
        running.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
