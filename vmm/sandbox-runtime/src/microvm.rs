//! The microVM runtime: one `iii-vmm` process (one VM, its own guest kernel)
//! per sandbox. The lower is the VM's read-only `vda`, a fresh sparse ext4
//! upper its `vdb`; the agent is reached through the VMM's vsock socket
//! (`CONNECT 52`), and the guest's `127.0.0.1:<engine_port>` is carried by
//! vsock to the host's.
//!
//! Per sandbox, `<state root>/<id>/` (0700) holds `owner`, `initrd.cpio`,
//! `upper.ext4`, `vsock.sock`, `vmm.pid`, `vmm.log` and `console.log`.
//! `pids_max` is not enforced here (the VM's memory bounds its processes),
//! and there is no network device yet.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iii_vm_agent_proto::{client, AGENT_PORT};
use iii_vmm::host;
use tokio::sync::watch;

use crate::state::{self, Owner};
use crate::{
    check_id, exit_code, find_binary, log_tail, RuntimeError, RuntimeOptions, SandboxHandle,
    SandboxSpec,
};

/// One microVM per sandbox.
pub struct MicroVmRuntime {
    root: PathBuf,
    vmm: PathBuf,
    init: PathBuf,
    kernel: PathBuf,
    ready_timeout: Duration,
    upper_mib: u64,
    upper_template: Option<PathBuf>,
    allow_pvm: bool,
}

/// The guest kernel: explicit, `$III_KERNEL`, or the newest `vmlinux` in the
/// kernel cache (`${XDG_CACHE_HOME:-~/.cache}/iii/kernel/*/vmlinux`).
fn find_kernel(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("III_KERNEL") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"))
        .join("iii/kernel");
    let newest = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p);
    Ok(newest.unwrap_or_else(|| cache.join("<key>/vmlinux")))
}

impl MicroVmRuntime {
    /// Checks that this host runs microVMs (`/dev/kvm` usable, not PVM) and
    /// that the kernel, `iii-vmm` and `iii-init` are there.
    pub fn new(opts: RuntimeOptions) -> Result<Self, RuntimeError> {
        host::check_kvm(Path::new("/dev/kvm"), opts.allow_pvm)
            .map_err(|e| RuntimeError::Host(e.to_string()))?;
        let kernel = find_kernel(opts.kernel.as_deref())?;
        host::check_kernel(&kernel).map_err(|e| RuntimeError::Host(e.to_string()))?;
        let vmm = find_binary(opts.vmm.as_deref(), "iii-vmm", "III_VMM")?;
        let init = find_binary(opts.init.as_deref(), "iii-init", "III_INIT")?;
        let root = crate::state_root(&opts);
        crate::check_root_len(&root)?;
        state::mkdir_private(&root)?;
        Ok(Self {
            root,
            vmm,
            init,
            kernel,
            ready_timeout: opts.ready_timeout,
            upper_mib: opts.upper_mib,
            upper_template: opts.upper_template,
            allow_pvm: opts.allow_pvm,
        })
    }
}

/// `vmm.pid`: the VMM's pid and start time (so a reused pid is never killed).
fn write_vmm_pid(dir: &Path, pid: i32) -> Result<(), RuntimeError> {
    let o = Owner {
        pid,
        start_time: state::start_time(pid).unwrap_or(0),
    };
    let p = dir.join("vmm.pid");
    std::fs::write(&p, serde_json::to_vec(&o).unwrap_or_default())
        .map_err(|e| RuntimeError::io("writing", &p, e))
}

fn read_vmm_pid(dir: &Path) -> Option<Owner> {
    serde_json::from_slice(&std::fs::read(dir.join("vmm.pid")).ok()?).ok()
}

fn kill_vmm(o: Option<Owner>) {
    if let Some(o) = o.filter(Owner::alive) {
        // SAFETY: kill(2) has no memory effects; the pid has the recorded
        // start time, so it is still that VMM.
        unsafe { libc::kill(o.pid, libc::SIGKILL) };
    }
}

/// Waits (at most 5 s) until the recorded VMM no longer runs.
async fn wait_gone(o: Option<Owner>) {
    let Some(o) = o else { return };
    let deadline = Instant::now() + Duration::from_secs(5);
    while o.alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn remove_dir(id: &str, dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RuntimeError::io("removing", dir, e)),
    }
    if dir.exists() {
        return Err(RuntimeError::Leftover {
            id: id.into(),
            what: format!("directory {}", dir.display()),
        });
    }
    Ok(())
}

#[async_trait::async_trait]
impl crate::Runtime for MicroVmRuntime {
    fn name(&self) -> &'static str {
        "microvm"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn SandboxHandle>, RuntimeError> {
        check_id(&spec.id)?;
        if !spec.mounts.is_empty() {
            return Err(RuntimeError::InvalidSpec(
                "the microVM runtime cannot bind-mount host directories yet (no virtio-fs); \
                 use the namespace runtime for sandboxes with mounts"
                    .into(),
            ));
        }
        if spec.network {
            return Err(RuntimeError::Network(
                "the microVM runtime has no network device yet (iii-vmm has no virtio-net); \
                 only the engine port is forwarded. Use `network: false`, or `runtime: namespace` \
                 for outbound network"
                    .into(),
            ));
        }
        let vcpus = u8::try_from(spec.cpus)
            .ok()
            .filter(|c| (1..=32).contains(c));
        let Some(vcpus) = vcpus else {
            return Err(RuntimeError::InvalidSpec(format!(
                "cpus must be 1..=32 for a microVM (got {})",
                spec.cpus
            )));
        };
        if !(64..=3072).contains(&spec.memory_mb) {
            return Err(RuntimeError::InvalidSpec(format!(
                "memory_mb must be 64..=3072 for a microVM (got {})",
                spec.memory_mb
            )));
        }
        if !spec.rootfs.lower.is_file() {
            return Err(RuntimeError::InvalidSpec(format!(
                "lower image {} does not exist",
                spec.rootfs.lower.display()
            )));
        }
        state::mkdir_private(&self.root)?;
        let dir = self.root.join(&spec.id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists(spec.id))
            }
            Err(e) => return Err(RuntimeError::io("creating", &dir, e)),
        }
        match self.start(&spec, &dir, vcpus).await {
            Ok(sb) => Ok(Box::new(sb)),
            Err(e) => {
                let vmm = read_vmm_pid(&dir);
                kill_vmm(vmm);
                wait_gone(vmm).await;
                let _ = remove_dir(&spec.id, &dir);
                Err(e)
            }
        }
    }

    async fn cleanup_orphans(&self) -> Vec<String> {
        let mut cleaned = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return cleaned;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            // Only microVM sandboxes (they have vmm.pid) whose daemon died.
            if check_id(&id).is_err() || !dir.join("vmm.pid").exists() {
                continue;
            }
            if Owner::read(&dir).is_some_and(|o| o.alive()) {
                continue;
            }
            let vmm = read_vmm_pid(&dir);
            kill_vmm(vmm);
            wait_gone(vmm).await;
            if remove_dir(&id, &dir).is_ok() {
                cleaned.push(id);
            }
        }
        cleaned
    }
}

impl MicroVmRuntime {
    async fn start(
        &self,
        spec: &SandboxSpec,
        dir: &Path,
        vcpus: u8,
    ) -> Result<VmSandbox, RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RuntimeError::io("chmod", dir, e))?;
        Owner::current().write(dir)?;
        let initrd = dir.join("initrd.cpio");
        let upper = dir.join("upper.ext4");
        {
            let (init, initrd, upper, mib, template) = (
                self.init.clone(),
                initrd.clone(),
                upper.clone(),
                self.upper_mib,
                self.upper_template.clone(),
            );
            tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
                let bytes =
                    std::fs::read(&init).map_err(|e| RuntimeError::io("reading", &init, e))?;
                let cpio = iii_oci_rootfs::initramfs::build(&bytes, &[])
                    .map_err(|e| RuntimeError::InvalidSpec(format!("initramfs: {e}")))?;
                std::fs::write(&initrd, cpio)
                    .map_err(|e| RuntimeError::io("writing", &initrd, e))?;
                match template {
                    Some(t) => std::fs::copy(&t, &upper)
                        .map(|_| ())
                        .map_err(|e| RuntimeError::io("copying the upper template", &t, e)),
                    None => iii_oci_rootfs::image::create_upper(&upper, mib)
                        .map_err(|e| RuntimeError::InvalidSpec(format!("upper image: {e}"))),
                }
            })
            .await
            .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))??;
        }
        let uds = dir.join("vsock.sock");
        let port = spec.engine_port;
        let cmdline = format!(
            "quiet iii.root=/dev/vda iii.rootfstype={} iii.upper=/dev/vdb iii.fwd={port}",
            spec.rootfs.format.fstype()
        );
        let log = dir.join("vmm.log");
        let console = dir.join("console.log");
        let log_f =
            std::fs::File::create(&log).map_err(|e| RuntimeError::io("creating", &log, e))?;
        let mut cmd = tokio::process::Command::new(&self.vmm);
        cmd.arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&initrd)
            .arg("--mem-mib")
            .arg(spec.memory_mb.to_string())
            .arg("--vcpus")
            .arg(vcpus.to_string())
            .arg("--disk")
            .arg(format!("{},ro", spec.rootfs.lower.display()))
            .arg("--disk")
            .arg(&upper)
            .arg("--vsock-cid")
            .arg("3")
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--vsock-port")
            .arg(format!("{port}=tcp:127.0.0.1:{port}"))
            .arg("--cmdline")
            .arg(&cmdline)
            .arg("--console")
            .arg(&console)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_f);
        if self.allow_pvm {
            cmd.arg("--allow-pvm");
        }
        let mut child = cmd.spawn().map_err(|e| RuntimeError::Spawn {
            what: self.vmm.display().to_string(),
            source: e,
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        write_vmm_pid(dir, pid)?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(st) => exit_code(st),
                Err(_) => -1,
            };
            let _ = tx.send(Some(code));
        });
        let tail = || format!("{}\n{}", log_tail(&log, 10), log_tail(&console, 10));
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(code) = *rx.borrow() {
                return Err(RuntimeError::DiedStarting {
                    id: spec.id.clone(),
                    code,
                    log: tail(),
                });
            }
            if uds.exists() {
                let u = uds.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let mut s = client::connect_vsock(&u, AGENT_PORT, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    client::ping(&mut s)
                })
                .await;
                if let Ok(Ok(())) = r {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::ReadyTimeout {
                    id: spec.id.clone(),
                    timeout: self.ready_timeout,
                    log: tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(VmSandbox {
            id: spec.id.clone(),
            dir: dir.to_path_buf(),
            uds,
            exit: Mutex::new(rx),
            stopped: AtomicBool::new(false),
        })
    }
}

/// A running microVM sandbox.
struct VmSandbox {
    id: String,
    dir: PathBuf,
    uds: PathBuf,
    exit: Mutex<watch::Receiver<Option<i32>>>,
    stopped: AtomicBool,
}

#[async_trait::async_trait]
impl SandboxHandle for VmSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn connect_agent(&self) -> Result<UnixStream, RuntimeError> {
        client::connect_vsock(&self.uds, AGENT_PORT, Duration::from_secs(10)).map_err(|e| {
            RuntimeError::Agent {
                id: self.id.clone(),
                source: e,
            }
        })
    }

    fn net_activity_file(&self) -> Option<PathBuf> {
        // The forwarded port's bytes pass through the VMM's vsock muxer,
        // which reports nothing to this side yet.
        None
    }

    async fn stop(&self) -> Result<(), RuntimeError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut rx = self
            .exit
            .lock()
            .map(|r| r.clone())
            .map_err(|_| RuntimeError::Leftover {
                id: self.id.clone(),
                what: "its VMM (state lock poisoned)".into(),
            })?;
        if rx.borrow().is_none() {
            // Ask the guest to sync and power off; kill the VMM if it does not.
            let u = self.uds.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut s = client::connect_vsock(&u, AGENT_PORT, Duration::from_secs(2))?;
                client::poweroff(&mut s)
            })
            .await;
            let clean = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|c| c.is_some()))
                .await
                .is_ok();
            if !clean {
                kill_vmm(read_vmm_pid(&self.dir));
                if tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|c| c.is_some()))
                    .await
                    .is_err()
                {
                    return Err(RuntimeError::Leftover {
                        id: self.id.clone(),
                        what: "its VMM process, which did not exit after SIGKILL".into(),
                    });
                }
            }
        }
        remove_dir(&self.id, &self.dir)
    }

    fn exited(&self) -> Option<i32> {
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        self.exit.lock().ok().and_then(|r| *r.borrow())
    }
}
