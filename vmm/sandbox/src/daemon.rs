//! The daemon's state and the lifecycle handlers: `sandbox::create`, `exec`, `stop`, `list`,
//! `catalog::list`. File handlers are in [`crate::fs`], `sandbox::run` in [`crate::run`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use iii_sandbox_runtime::{Runtime, SandboxSpec};
use iii_vm_agent_proto::ExecRequest;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::{self, ExecEnd};
use crate::catalog::Catalog;
use crate::config::SandboxConfig;
use crate::error::{invalid, SandboxError};
use crate::images::Images;
use crate::registry::{Entry, Registry};
use crate::request::{decode_b64, resolve_argv, sandbox_id, EnvInput};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct Daemon {
    /// Settings.
    pub cfg: Arc<SandboxConfig>,
    /// Known and allowed images.
    pub catalog: Arc<Catalog>,
    /// The image cache.
    pub images: Images,
    /// The isolation runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Live sandboxes.
    pub registry: Registry,
    /// The engine's worker port (forwarded into every sandbox's 127.0.0.1).
    pub engine_port: u16,
    /// The engine's WebSocket URL (data channels are opened against it).
    pub engine_url: String,
}

/// `sandbox::create`.
#[derive(Debug, Deserialize)]
pub struct CreateRequest {
    /// Catalog name.
    pub image: String,
    /// vCPUs.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// A label shown by `list`.
    #[serde(default)]
    pub name: Option<String>,
    /// Outbound networking.
    #[serde(default)]
    pub network: Option<bool>,
    /// Idle seconds before the reaper stops it.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// Environment of every exec.
    #[serde(default)]
    pub env: EnvInput,
}

/// `sandbox::exec`.
#[derive(Debug, Deserialize, Default)]
pub struct ExecInput {
    /// Target.
    pub sandbox_id: String,
    /// Program (or a whole command line, split shell-style).
    #[serde(default)]
    pub cmd: Option<String>,
    /// Arguments after `cmd`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Exact argument vector.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Base64 stdin.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: EnvInput,
    /// Milliseconds before the process is killed.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Working directory.
    #[serde(default)]
    pub workdir: Option<String>,
}

/// `sandbox::stop`.
#[derive(Debug, Deserialize)]
pub struct StopRequest {
    /// Target.
    pub sandbox_id: String,
    /// Accepted; stop always waits.
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted for upstream compatibility; stop always waits"
    )]
    pub wait: Option<bool>,
}

impl Daemon {
    /// `sandbox::create`; returns the new id.
    pub async fn create(&self, req: CreateRequest) -> Result<Value, SandboxError> {
        let slot = self.registry.reserve(self.cfg.max_concurrent_sandboxes)?;
        let src = self.catalog.resolve(&req.image)?;
        let cpus = req.cpus.unwrap_or(self.cfg.default_cpus);
        let memory_mb = req.memory_mb.unwrap_or(self.cfg.default_memory_mb);
        if cpus == 0 || memory_mb < 16 {
            return Err(invalid(
                "`cpus` must be at least 1 and `memory_mb` at least 16",
            ));
        }
        if let Some(caps) = self.cfg.per_image_caps.get(&req.image) {
            if let Some(max) = caps.max_cpus.filter(|m| cpus > *m) {
                return Err(SandboxError::ResourceLimit(format!(
                    "cpus={cpus} exceeds per-image cap {max}"
                )));
            }
            if let Some(max) = caps.max_memory_mb.filter(|m| memory_mb > *m) {
                return Err(SandboxError::ResourceLimit(format!(
                    "memory_mb={memory_mb} exceeds per-image cap {max}"
                )));
            }
        }
        let network = req.network.unwrap_or(false);
        // No loopback rewrite for `network: true` (upstream points env URLs at its gateway):
        // here the engine port stays forwarded at the sandbox's own 127.0.0.1 either way.
        let env = req.env.pairs()?;
        let rootfs = self.images.rootfs(&req.image, &src).await?;
        // Every exec starts from the image's env, then the sandbox's (the namespace init has
        // them as its defaults too; a microVM's init has none, so each request carries them).
        let base_env: Vec<(String, String)> = rootfs
            .env
            .iter()
            .cloned()
            .chain(env.iter().cloned())
            .collect();
        let id = uuid::Uuid::new_v4();
        let started = Instant::now();
        tracing::info!(sandbox_id = %id, image = %req.image, event = "booting_vm", runtime = self.runtime.name(), "creating sandbox");
        let spec = SandboxSpec {
            id: id.to_string(),
            rootfs,
            cpus,
            memory_mb,
            pids_max: self.cfg.max_pids_per_sandbox,
            network,
            env,
            engine_port: self.engine_port,
            mounts: Vec::new(),
        };
        let handle = self
            .runtime
            .create(spec)
            .await
            .map_err(|e| SandboxError::BootFailed(e.to_string()))?;
        tracing::info!(sandbox_id = %id, event = "ready", ms = started.elapsed().as_millis() as u64, "sandbox ready");
        let now = Instant::now();
        self.registry.insert(
            id,
            Entry {
                handle: Arc::from(handle),
                image: req.image.clone(),
                base_env,
                name: req.name,
                created: now,
                last_activity: now,
                exec_in_flight: 0,
                stopped: false,
                idle_timeout_secs: req
                    .idle_timeout_secs
                    .unwrap_or(self.cfg.default_idle_timeout_secs),
            },
            slot,
        );
        Ok(json!({"sandbox_id": id.to_string(), "image": req.image}))
    }

    /// `sandbox::exec`.
    pub async fn exec(&self, req: ExecInput) -> Result<Value, SandboxError> {
        let id = sandbox_id(&req.sandbox_id)?;
        let argv = resolve_argv(req.cmd.as_deref(), &req.args, &req.argv)?;
        let env = req.env.pairs()?;
        let stdin = match req.stdin.as_deref() {
            None | Some("") => Vec::new(),
            Some(s) => decode_b64(s, "stdin")?,
        };
        let timeout_ms = req
            .timeout_ms
            .unwrap_or(300_000)
            .min(self.cfg.max_exec_timeout_ms)
            .max(1);
        let crate::registry::Admitted {
            handle,
            base_env,
            slot: _slot,
        } = self
            .registry
            .begin_exec(id, self.cfg.max_concurrent_exec_per_sandbox)?;
        let program = argv[0].clone();
        let exec = ExecRequest {
            argv,
            // Later entries win: the request's env over the sandbox's.
            env: base_env.into_iter().chain(env).collect(),
            // Upstream's dispatcher runs in `/`; `/workspace` exists for files.
            cwd: Some(req.workdir.clone().unwrap_or_else(|| "/".into())),
            user: None,
            tty: false,
            timeout_ms: Some(timeout_ms),
        };
        let started = Instant::now();
        let end = agent::exec(handle, exec, stdin, Duration::from_millis(timeout_ms)).await?;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(match end {
            ExecEnd::Ran(out) if out.timed_out => {
                return Err(SandboxError::ExecTimedOut(timeout_ms))
            }
            ExecEnd::Ran(out) => json!({
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
                "exit_code": out.code,
                "timed_out": false,
                "duration_ms": duration_ms,
                "success": out.code == 0,
            }),
            ExecEnd::SpawnFailed(errno, msg) => {
                let (code, what) = match errno {
                    libc::ENOENT | libc::ENOTDIR => (127, "not found"),
                    libc::EACCES => (126, "permission denied"),
                    _ => {
                        return Err(SandboxError::BootFailed(format!(
                            "exec of {program} failed in the sandbox: {msg}"
                        )))
                    }
                };
                json!({
                    "stdout": "",
                    "stderr": format!("exec: {program}: {what}\n"),
                    "exit_code": code,
                    "timed_out": false,
                    "duration_ms": duration_ms,
                    "success": false,
                })
            }
        })
    }

    /// `sandbox::stop`.
    pub async fn stop(&self, req: StopRequest) -> Result<Value, SandboxError> {
        let id = sandbox_id(&req.sandbox_id)?;
        let Some(handle) = self.registry.mark_stopped(id)? else {
            return Ok(json!({"sandbox_id": id.to_string(), "stopped": true}));
        };
        if let Err(e) = handle.stop().await {
            // Keep the entry so the caller can retry.
            self.registry.unmark_stopped(id);
            return Err(SandboxError::BootFailed(format!("stop failed: {e}")));
        }
        self.registry.remove(id);
        Ok(json!({"sandbox_id": id.to_string(), "stopped": true}))
    }

    /// `sandbox::list`.
    pub fn list(&self) -> Value {
        let cap = self.cfg.max_concurrent_exec_per_sandbox;
        let rows: Vec<Value> = self
            .registry
            .list()
            .into_iter()
            .map(|r| {
                json!({
                    "sandbox_id": r.id.to_string(),
                    "name": r.name,
                    "image": r.image,
                    "age_secs": r.age_secs,
                    "exec_in_progress": r.exec_in_flight > 0,
                    "exec_in_flight": r.exec_in_flight,
                    "exec_slots_free": cap.saturating_sub(r.exec_in_flight),
                    "stopped": r.stopped,
                })
            })
            .collect();
        json!({ "sandboxes": rows })
    }

    /// Stops every sandbox (daemon shutdown).
    pub async fn stop_all(&self) {
        for (id, h) in self.registry.drain() {
            if let Err(e) = h.stop().await {
                tracing::warn!(sandbox_id = %id, "stop at shutdown failed: {e}");
            }
        }
    }

    /// One reaper pass: stops sandboxes idle past their timeout (and ones that died).
    pub async fn reap_once(&self) {
        let idle = self
            .registry
            .take_idle(self.cfg.max_exec_timeout_ms, std::time::SystemTime::now());
        for (id, h, busy) in idle {
            if busy {
                tracing::warn!(sandbox_id = %id, "reaping a sandbox with an exec still in flight (idle past timeout + max exec timeout + 60 s)");
            } else {
                tracing::info!(sandbox_id = %id, "reaping idle sandbox");
            }
            if let Err(e) = h.stop().await {
                tracing::warn!(sandbox_id = %id, "reaper stop failed: {e}");
                self.registry.unmark_stopped(id);
                continue;
            }
            self.registry.remove(id);
        }
    }
}
