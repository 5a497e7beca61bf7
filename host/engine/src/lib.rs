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

pub mod builtins;
pub mod channels;
pub mod config;
pub mod conn;
pub mod engine;
pub mod http;
pub mod listener;
pub mod pending;
pub mod session;
pub mod triggers;

use std::net::SocketAddr;
use std::time::Duration;

pub use config::{ConfigError, ConfigSource, EngineConfig};
pub use engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    let engine = Engine::new(cfg);
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
    Ok(Running {
        engine,
        worker_addrs,
        http_addr,
    })
}
