//! Per-instance store data and the deny-by-default capability set built
//! from an adapter's `grants:`.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::error::PluginError;
use iii_adapter_api::Grants;

/// Guest path of the granted data directory.
pub const GUEST_DATA_DIR: &str = "/data";

/// `StoreLimits` (memory cap, table size) that also remembers whether it
/// refused a growth, so the trap that follows (Rust aborts on allocation
/// failure) is reported as the memory cap rather than a generic trap.
pub(crate) struct Limiter {
    inner: StoreLimits,
    pub(crate) hit: bool,
}

impl Limiter {
    pub(crate) fn new(max_bytes: usize) -> Limiter {
        Limiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(max_bytes)
                // Function-reference tables: a million entries is far beyond
                // any legitimate plugin and bounds host memory per instance.
                .table_elements(1_000_000)
                .build(),
            hit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if !ok {
            self.hit = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

/// Store data of one adapter instance: its WASI context, memory limiter, config and the
/// capability denials of the current call. Opaque outside the plugin host; world modules
/// ([`crate::worlds`]) name it in their bindings.
pub struct AdapterCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) adapter: Arc<str>,
    pub(crate) config: Arc<Map<String, Value>>,
    /// Capability checks that said no during the current call.
    pub(crate) denials: Arc<Mutex<Vec<String>>>,
    /// Wall-clock deadline of the current call, checked on every epoch tick.
    pub(crate) call_deadline: std::time::Instant,
}

impl WasiView for AdapterCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Everything needed to build a fresh [`AdapterCtx`] for each (re)start.
#[derive(Clone)]
pub(crate) struct Capabilities {
    pub(crate) adapter: Arc<str>,
    pub(crate) config: Arc<Map<String, Value>>,
    pub(crate) data_dir: Option<std::path::PathBuf>,
    /// Held while the adapter exists; see [`Capabilities::new`].
    _dir_lock: Option<Arc<std::fs::File>>,
    pub(crate) network: Arc<Vec<String>>,
    pub(crate) memory_bytes: usize,
}

impl Capabilities {
    pub(crate) fn new(
        adapter: &str,
        config: Map<String, Value>,
        grants: &Grants,
        base_dir: &std::path::Path,
    ) -> Result<Self, PluginError> {
        for entry in &grants.network {
            parse_host_port(entry).ok_or_else(|| {
                PluginError::InvalidSpec(format!(
                    "grants.network entry `{entry}` of adapter `{adapter}` must be `host:port`"
                ))
            })?;
        }
        let data_dir = grants.data_dir.as_ref().map(|d| base_dir.join(d));
        let mut dir_lock = None;
        if let Some(d) = &data_dir {
            let io = |source| PluginError::Io {
                path: d.clone(),
                source,
            };
            std::fs::create_dir_all(d).map_err(io)?;
            // Two writers on one log would interleave records: hold an
            // exclusive lock on the directory for the adapter's lifetime
            // (released by the OS if the process dies).
            let lock = std::fs::File::create(d.join(".iii-adapter.lock")).map_err(io)?;
            match lock.try_lock() {
                Ok(()) => dir_lock = Some(Arc::new(lock)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(PluginError::DataDirInUse {
                        adapter: adapter.to_string(),
                        path: d.clone(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        Ok(Capabilities {
            adapter: adapter.into(),
            config: Arc::new(config),
            data_dir,
            _dir_lock: dir_lock,
            network: Arc::new(grants.network.clone()),
            memory_bytes: usize::try_from(grants.memory_mb().saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
        })
    }

    pub(crate) fn build(&self) -> Result<AdapterCtx, PluginError> {
        let mut b = WasiCtxBuilder::new();
        // Nothing is inherited: no env, args, stdin; stdout/stderr go nowhere.
        if let Some(dir) = &self.data_dir {
            b.preopened_dir(dir, GUEST_DATA_DIR, FsPerms::ReadWrite)
                .map_err(|e| PluginError::Io {
                    path: dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        let denials: Arc<Mutex<Vec<String>>> = Arc::default();
        // TCP is switched on so that every attempt reaches the address check
        // below (and is reported), instead of failing anonymously earlier.
        b.allow_tcp(true);
        b.allow_udp(false);
        b.allow_ip_name_lookup(!self.network.is_empty());
        let allow = self.network.clone();
        let seen = denials.clone();
        b.socket_addr_check(move |addr, usage| {
            let allow = allow.clone();
            let seen = seen.clone();
            Box::pin(async move {
                let ok = match usage {
                    // The implicit bind before an outgoing connect.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    SocketAddrUse::TcpConnect => allowed(&allow, addr).await,
                    _ => false,
                };
                if !ok {
                    seen.lock().push(format!(
                        "network {} to {addr} (not in grants.network)",
                        use_name(usage)
                    ));
                }
                ok
            })
        });
        Ok(AdapterCtx {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(self.memory_bytes),
            adapter: self.adapter.clone(),
            config: self.config.clone(),
            denials,
            call_deadline: std::time::Instant::now(),
        })
    }
}

fn use_name(u: SocketAddrUse) -> &'static str {
    match u {
        SocketAddrUse::TcpBind => "tcp bind",
        SocketAddrUse::TcpConnect => "tcp connect",
        SocketAddrUse::TcpListen => "tcp listen",
        SocketAddrUse::TcpAccept => "tcp accept",
        SocketAddrUse::UdpBind => "udp bind",
        _ => "udp",
    }
}

fn parse_host_port(entry: &str) -> Option<(&str, u16)> {
    let (host, port) = entry.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// Is `addr` one of the granted `host:port` entries? Names are resolved
/// now, at connect time, so a DNS change cannot widen the grant: the
/// address actually dialled must be one the name resolves to.
async fn allowed(allow: &[String], addr: SocketAddr) -> bool {
    for entry in allow {
        let Some((host, port)) = parse_host_port(entry) else {
            continue;
        };
        if port != addr.port() {
            continue;
        }
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            if ip == addr.ip() {
                return true;
            }
            continue;
        }
        if let Ok(resolved) = tokio::net::lookup_host((host, port)).await {
            if resolved.into_iter().any(|r| r.ip() == addr.ip()) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allowlist_matches_resolved_addresses_only() {
        let allow = vec!["localhost:7000".to_string(), "10.1.2.3:80".to_string()];
        assert!(allowed(&allow, "127.0.0.1:7000".parse().unwrap()).await);
        assert!(!allowed(&allow, "127.0.0.1:7001".parse().unwrap()).await);
        assert!(allowed(&allow, "10.1.2.3:80".parse().unwrap()).await);
        assert!(!allowed(&allow, "10.1.2.4:80".parse().unwrap()).await);
        assert!(parse_host_port("nohost").is_none());
        assert!(parse_host_port(":80").is_none());
        assert_eq!(parse_host_port("[::1]:80"), Some(("::1", 80)));
    }
}
