//! The worker socket listeners (config entry `iii-worker-manager`, repeatable, always on): each
//! entry is one port serving workers, telemetry and data channels (PROTOCOL.md §1.1). Declaring
//! any entry replaces the implicit default listener on 127.0.0.1:49134.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iii_core::config::ConfigError;
use iii_core::limits::ConnLimits;
use iii_core::listener::{self, SessionPolicy, WorkerSocketConfig};
use iii_core::validation::PayloadValidator;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError,
};
use tokio::net::TcpListener;

use crate::rbac::{Gate, ListenerPolicy};
use crate::validation::{Mode, Validation};

const WORKER: &str = "iii-worker-manager";

/// The worker socket service.
pub struct WorkerSocket;

/// The configured listeners.
pub struct WorkerSockets(pub Vec<Listener>);

fn default_listener(index: usize) -> WorkerSocketConfig {
    WorkerSocketConfig {
        name: if index == 0 {
            WORKER.into()
        } else {
            format!("{WORKER}#{index}")
        },
        host: "127.0.0.1".into(),
        port: 49134,
        handshake_timeout: Duration::from_millis(10_000),
        limits: ConnLimits::default(),
    }
}

/// One listener: its socket settings, its access policy (RBAC, middleware), if any, and
/// whether it validates payloads.
pub struct Listener {
    /// Address, limits and timeouts.
    pub socket: WorkerSocketConfig,
    /// `rbac` / `middleware_function_id`; `None` = trusted.
    pub policy: Option<ListenerPolicy>,
    /// `validate`: payload checks against the registered schemas (PROTOCOL.md §3.9).
    pub validate: Mode,
}

fn listener(e: &Entry<'_>, index: usize) -> Result<Listener, ConfigError> {
    let socket = listener_config(e, index)?;
    let at = e.key("config");
    let (policy, validate) = match e.reader.mapping(e.config, &at)? {
        Some(m) => (
            ListenerPolicy::from_config(&e.reader, m, &at)?,
            validate_mode(&e.reader, m, &at)?,
        ),
        None => (None, Mode::Off),
    };
    Ok(Listener {
        socket,
        policy,
        validate,
    })
}

/// `validate: off | warn | enforce`, default `off` (upstream never validates).
fn validate_mode(
    r: &iii_core::config::EntryReader,
    m: &serde_yaml::Mapping,
    at: &str,
) -> Result<Mode, ConfigError> {
    let Some(v) = m.get("validate") else {
        return Ok(Mode::Off);
    };
    let key = format!("{at}.validate");
    v.as_str()
        .and_then(Mode::parse)
        .ok_or_else(|| r.invalid(&key, "one of off, warn, enforce", v))
}

fn listener_config(e: &Entry<'_>, index: usize) -> Result<WorkerSocketConfig, ConfigError> {
    let mut wm = default_listener(index);
    let at = e.key("config");
    let r = &e.reader;
    let Some(m) = r.mapping(e.config, &at)? else {
        return Ok(wm);
    };
    r.check_keys(
        m,
        &at,
        &[
            "port",
            "host",
            "middleware_function_id",
            "rbac",
            "validate",
            "handshake_timeout_ms",
            "max_connections",
            "max_outbound_bytes",
            "max_message_bytes",
            "max_frame_bytes",
            "max_pending_calls",
            "max_buffered_registrations",
            "max_buffered_registration_bytes",
            "max_registrations",
            "max_registration_bytes",
            "max_channel_buffer_bytes",
            "channel_unclaimed_timeout_ms",
        ],
    )?;
    let l = &mut wm.limits;
    for (key, slot) in [
        ("max_connections", &mut l.max_connections),
        ("max_outbound_bytes", &mut l.max_outbound_bytes),
        ("max_message_bytes", &mut l.max_message_bytes),
        ("max_frame_bytes", &mut l.max_frame_bytes),
        ("max_pending_calls", &mut l.max_pending_calls),
        (
            "max_buffered_registrations",
            &mut l.max_buffered_registrations,
        ),
        (
            "max_buffered_registration_bytes",
            &mut l.max_buffered_registration_bytes,
        ),
        ("max_registrations", &mut l.max_registrations),
        ("max_registration_bytes", &mut l.max_registration_bytes),
        ("max_channel_buffer_bytes", &mut l.max_channel_buffer_bytes),
    ] {
        if let Some(v) = m.get(key) {
            let dotted = format!("{at}.{key}");
            let n = r.u64(v, &dotted)?;
            *slot = usize::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| r.invalid(&dotted, "a positive integer", v))?;
        }
    }
    if let Some(v) = m.get("channel_unclaimed_timeout_ms") {
        let key = format!("{at}.channel_unclaimed_timeout_ms");
        let ms = r.u64(v, &key)?;
        if ms == 0 {
            return Err(r.invalid(&key, "a positive number of milliseconds", v));
        }
        l.channel_unclaimed_timeout = Duration::from_millis(ms);
    }
    if l.max_frame_bytes > l.max_message_bytes {
        return Err(r.error(format!(
            "`{at}.max_frame_bytes` ({}) must not exceed `{at}.max_message_bytes` ({})",
            l.max_frame_bytes, l.max_message_bytes
        )));
    }
    if let Some(p) = m.get("port") {
        wm.port = r.port(p, &format!("{at}.port"))?;
    }
    if let Some(h) = m.get("host") {
        wm.host = r.host(h, &format!("{at}.host"))?;
    }
    if let Some(t) = m.get("handshake_timeout_ms") {
        let ms = r.u64(t, &format!("{at}.handshake_timeout_ms"))?;
        if ms == 0 {
            return Err(r.invalid(
                &format!("{at}.handshake_timeout_ms"),
                "a positive number of milliseconds",
                t,
            ));
        }
        wm.handshake_timeout = Duration::from_millis(ms);
    }
    Ok(wm)
}

impl Service for WorkerSocket {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: WORKER,
            worker: WORKER,
            deprecated_names: &[],
            repeatable: true,
            always_on: true,
        }
    }

    /// Its only exclusive resources are its ports; connections accepted by an old instance
    /// keep being served after it stops listening.
    fn may_overlap(&self) -> bool {
        true
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut list = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            list.push(listener(e, i)?);
        }
        if list.is_empty() {
            list.push(Listener {
                socket: default_listener(0),
                policy: None,
                validate: Mode::Off,
            });
        }
        Ok(Box::new(WorkerSockets(list)))
    }
}

struct Bound(Vec<(TcpListener, Listener, SocketAddr)>);

#[async_trait::async_trait]
impl Configured for WorkerSockets {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let mut bound = Vec::new();
        for lc in self.0 {
            let c = &lc.socket;
            let l = listener::bind(c).await.map_err(|source| StartError::Bind {
                what: c.name.clone(),
                host: c.host.clone(),
                port: c.port,
                source,
            })?;
            let addr = l.local_addr().map_err(|source| StartError::Bind {
                what: c.name.clone(),
                host: c.host.clone(),
                port: c.port,
                source,
            })?;
            let validate = lc.validate.as_str();
            match &lc.policy {
                Some(p) => {
                    tracing::info!(listener = %c.name, rbac = p.rbac.is_some(), middleware = p.middleware_function_id.as_deref().unwrap_or(""), validate, "worker socket listening on ws://{addr}")
                }
                None => {
                    tracing::info!(listener = %c.name, validate, "worker socket listening on ws://{addr}")
                }
            }
            bound.push((l, lc, addr));
        }
        cx.provide(crate::common::WorkerEndpoints(
            bound
                .iter()
                .map(|(_, lc, addr)| crate::common::WorkerEndpoint {
                    addr: *addr,
                    gated: lc.policy.is_some(),
                })
                .collect(),
        ));
        Ok(Box::new(Bound(bound)))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Prepared for Bound {
    fn install(&mut self, _reg: &mut Registrar<'_>) {}

    fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        self.0
            .iter()
            .map(|(_, _, a)| ("worker socket", *a))
            .collect()
    }

    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        Some(Box::pin(async move {
            let tasks: Vec<_> = self
                .0
                .into_iter()
                .map(|(l, c, _)| {
                    let policy = SessionPolicy {
                        access: c.policy.map(Gate::for_listener),
                        validator: Validation::new(c.validate, &c.socket.name)
                            .map(|v| v as Arc<dyn PayloadValidator>),
                    };
                    tokio::spawn(listener::serve(
                        core.clone(),
                        l,
                        c.socket,
                        policy,
                        stop.clone(),
                    ))
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_core::config::EntryReader;

    fn parse(yaml: &str) -> Result<WorkerSocketConfig, ConfigError> {
        let config: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test yaml");
        let e = Entry {
            at: "workers[0](iii-worker-manager)".into(),
            name: WORKER,
            config: &config,
            reader: EntryReader {
                path: "config.yaml",
            },
        };
        listener_config(&e, 0)
    }

    fn parse_listener(yaml: &str) -> Result<Listener, ConfigError> {
        let config: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test yaml");
        let e = Entry {
            at: "workers[0](iii-worker-manager)".into(),
            name: WORKER,
            config: &config,
            reader: EntryReader {
                path: "config.yaml",
            },
        };
        listener(&e, 0)
    }

    #[test]
    fn validate_defaults_to_off_and_names_its_key_when_wrong() {
        assert_eq!(parse_listener("port: 1").unwrap().validate, Mode::Off);
        assert_eq!(parse_listener("{}").unwrap().validate, Mode::Off);
        for (v, m) in [
            ("off", Mode::Off),
            ("warn", Mode::Warn),
            ("enforce", Mode::Enforce),
        ] {
            let l = parse_listener(&format!("validate: {v}")).unwrap();
            assert_eq!(l.validate, m);
        }
        for bad in ["validate: strict", "validate: true", "validate: [warn]"] {
            let e = parse_listener(bad).err().expect(bad).to_string();
            assert!(
                e.contains("workers[0](iii-worker-manager).config.validate")
                    && e.contains("off, warn, enforce"),
                "{e}"
            );
        }
    }

    #[test]
    fn limits_default_and_are_configurable() {
        let d = parse("port: 1").unwrap();
        assert_eq!(d.limits, ConnLimits::default());
        let c = parse(
            "{max_connections: 7, max_outbound_bytes: 1000, max_pending_calls: 3, \
             max_message_bytes: 4096, max_frame_bytes: 1024, max_buffered_registrations: 2, \
             max_buffered_registration_bytes: 99, max_registrations: 5, max_registration_bytes: 77, \
             max_channel_buffer_bytes: 55, channel_unclaimed_timeout_ms: 1500}",
        )
        .unwrap();
        let l = c.limits;
        assert_eq!(
            (l.max_connections, l.max_outbound_bytes, l.max_pending_calls),
            (7, 1000, 3)
        );
        assert_eq!((l.max_message_bytes, l.max_frame_bytes), (4096, 1024));
        assert_eq!(
            (
                l.max_buffered_registrations,
                l.max_buffered_registration_bytes
            ),
            (2, 99)
        );
        assert_eq!((l.max_registrations, l.max_registration_bytes), (5, 77));
        assert_eq!(l.max_channel_buffer_bytes, 55);
        assert_eq!(l.channel_unclaimed_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bad_limits_name_their_dotted_key() {
        let e = parse("max_pending_calls: 0").unwrap_err().to_string();
        assert!(
            e.contains("workers[0](iii-worker-manager).config.max_pending_calls")
                && e.contains("positive"),
            "{e}"
        );
        let e = parse("max_connections: lots").unwrap_err().to_string();
        assert!(e.contains("config.max_connections"), "{e}");
        let e = parse("{max_message_bytes: 10, max_frame_bytes: 20}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_frame_bytes") && e.contains("must not exceed"),
            "{e}"
        );
    }
}
