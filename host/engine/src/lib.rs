//! The iii engine core: worker protocol sessions, function registry and router, trigger
//! registry, REST trigger server, data channels and the built-in engine functions.
//!
//! Module map:
//! - [`config`]: `config.yaml` loading and validation.
//! - [`engine`]: the registry of functions and workers, the invocation router, worker lifecycle.
//! - [`pending`]: in-flight invocations.
//! - [`conn`], [`session`], [`listener`]: the worker WebSocket transport.
//! - [`triggers`]: trigger types and bindings; [`http`]: the `http` trigger type and server.
//! - [`channels`]: data channels; [`builtins`]: `engine::*` functions.
//! - [`services`]: `state::*` and `stream::*` over adapter components loaded by the plugin host.

pub mod builtins;
pub mod channels;
pub mod config;
pub mod conn;
pub mod engine;
pub mod http;
pub mod listener;
pub mod pending;
pub mod services;
pub mod session;
pub mod triggers;

use std::net::SocketAddr;
use std::time::Duration;

pub use config::{ConfigError, ConfigSource, EngineConfig};
pub use engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the {service} adapter: {source}")]
    Adapter {
        service: &'static str,
        source: iii_plugin_host::AdapterError,
    },
    #[error("cannot create {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {host}:{port} for {what}: {source}")]
    Bind {
        what: String,
        host: String,
        port: u16,
        source: std::io::Error,
    },
}

/// A started engine: the addresses it listens on.
pub struct Running {
    pub engine: Engine,
    pub worker_addrs: Vec<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
}

/// Binds every listener, then starts serving in the background on the current runtime.
/// All binds happen before anything is served, so a port clash fails start-up cleanly.
pub async fn start(cfg: EngineConfig) -> Result<Running, StartError> {
    let mut wm = Vec::new();
    for c in &cfg.worker_managers {
        let l = listener::bind(c).await.map_err(|source| StartError::Bind {
            what: c.name.clone(),
            host: c.host.clone(),
            port: c.port,
            source,
        })?;
        wm.push((l, c.clone()));
    }
    let http = match &cfg.http {
        Some(h) => Some((
            http::bind(h).await.map_err(|source| StartError::Bind {
                what: "iii-http".into(),
                host: h.host.clone(),
                port: h.port,
                source,
            })?,
            h.clone(),
        )),
        None => None,
    };
    for (name, why) in &cfg.unavailable {
        tracing::warn!(worker = %name, "config entry `{name}` starts nothing: {why}");
    }
    let (state_cfg, stream_cfg, project_dir) = (
        cfg.state.clone(),
        cfg.stream.clone(),
        cfg.project_dir.clone(),
    );
    let engine = Engine::new(cfg);
    if state_cfg.is_some() || stream_cfg.is_some() {
        let host = iii_plugin_host::PluginHost::new(iii_plugin_host::HostConfig {
            cache_dir: Some(plugin_cache_dir()),
            base_dir: project_dir.clone(),
            max_memory_mb: 512,
            max_instances: 32,
            ..Default::default()
        })
        .map_err(|source| StartError::Adapter {
            service: "plugin host",
            source: source.into(),
        })?;
        if let Some(sc) = state_cfg {
            let spec = with_default_data_dir(&sc.adapter, &project_dir, "state")?;
            let store = iii_plugin_host::load::<iii_plugin_host::StateWorld>(&host, &spec)
                .await
                .map_err(|source| StartError::Adapter {
                    service: "iii-state",
                    source,
                })?;
            services::state::install(
                &engine,
                store,
                services::state::StateOptions {
                    triggers_enabled: sc.triggers_enabled,
                    max_value_bytes: sc.max_value_bytes,
                },
            );
            tracing::info!(adapter = %spec.label(), data_dir = ?spec.grants.data_dir, "state service ready");
        }
        if let Some(sc) = stream_cfg {
            let spec = with_default_data_dir(&sc.adapter, &project_dir, "stream")?;
            let store = iii_plugin_host::load::<iii_plugin_host::StreamWorld>(&host, &spec)
                .await
                .map_err(|source| StartError::Adapter {
                    service: "iii-stream",
                    source,
                })?;
            services::stream::install(&engine, store);
            tracing::info!(adapter = %spec.label(), data_dir = ?spec.grants.data_dir, "stream service ready");
        }
    }
    let mut worker_addrs = Vec::new();
    for (l, c) in wm {
        if let Ok(a) = l.local_addr() {
            worker_addrs.push(a);
        }
        tokio::spawn(listener::serve(engine.clone(), l, c));
    }
    let http_addr = match http {
        Some((l, c)) => {
            let a = l.local_addr().ok();
            tokio::spawn(http::serve(engine.clone(), l, c));
            a
        }
        None => None,
    };
    tokio::spawn(builtins::watch_functions(
        engine.clone(),
        Duration::from_secs(5),
    ));
    {
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                engine.channels().sweep();
            }
        });
    }
    {
        // Worker providers that left a `registertrigger` unanswered get it again.
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let sends = engine
                    .inner
                    .triggers
                    .lock()
                    .resend_unacked(std::time::Instant::now());
                triggers::deliver(sends).await;
            }
        });
    }
    Ok(Running {
        engine,
        worker_addrs,
        http_addr,
    })
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

/// The builtin kv adapter is durable by default: without a `data_dir` grant it gets
/// `<project>/.iii/data/<service>` (unless its config asks for `store_method: in_memory`).
fn with_default_data_dir(
    spec: &iii_plugin_host::AdapterSpec,
    project: &std::path::Path,
    service: &str,
) -> Result<iii_plugin_host::AdapterSpec, StartError> {
    let mut spec = spec.clone();
    let builtin_kv = matches!(&spec.source, iii_plugin_host::AdapterSource::Name(n) if n == "kv");
    let in_memory = spec.config.get("store_method").and_then(|v| v.as_str()) == Some("in_memory");
    if builtin_kv && !in_memory && spec.grants.data_dir.is_none() {
        let dir = project.join(".iii").join("data").join(service);
        std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        spec.grants.data_dir = Some(dir);
    }
    Ok(spec)
}
