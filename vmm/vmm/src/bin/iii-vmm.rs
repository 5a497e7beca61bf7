//! `iii-vmm`: runs one microVM in this process.

#![deny(clippy::cast_possible_truncation)]

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!(
        "iii-vmm: this binary drives KVM; on macOS the HVF backend is used through the library"
    );
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::time::Instant;

    use anyhow::{bail, Context, Result};
    use clap::Parser;
    use iii_vmm::devices::virtio::vsock::{HostTarget, VsockConfig};
    use iii_vmm::host;
    use iii_vmm::vm::{self, Console, DiskConfig, VmConfig};

    #[derive(Parser)]
    #[command(about = "Run one iii microVM (KVM)")]
    struct Args {
        /// Guest kernel: ELF vmlinux (preferred) or bzImage.
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Extra kernel command line (appended to the built-in base).
        #[arg(long, default_value = "quiet")]
        cmdline: String,
        #[arg(long, default_value_t = 256)]
        mem_mib: u64,
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// Disk image; append `,ro` for read-only. Repeat for more disks (vda, vdb, ...).
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Guest CID; enables virtio-vsock.
        #[arg(long)]
        vsock_cid: Option<u64>,
        /// Unix socket for host→guest connections (`CONNECT <port>\n`).
        #[arg(long)]
        vsock_uds: Option<PathBuf>,
        /// Allow guest→host: PORT=tcp:HOST:PORT or PORT=unix:PATH. Repeatable.
        #[arg(long = "vsock-port")]
        vsock_ports: Vec<String>,
        /// Kernel log destination: a file path, `-` for stderr, or `none`.
        #[arg(long, default_value = "-")]
        console: String,
        #[arg(long, default_value = "/dev/kvm")]
        kvm: PathBuf,
        /// Run even on a PVM host (only for measuring VMM setup there).
        #[arg(long)]
        allow_pvm: bool,
        /// Print setup timing and peak RSS to stderr.
        #[arg(long)]
        timing: bool,
    }

    fn parse_target(s: &str) -> Result<(u32, HostTarget)> {
        let (port, target) = s
            .split_once('=')
            .context("expected PORT=tcp:ADDR or PORT=unix:PATH")?;
        let port: u32 = port.parse().context("vsock port")?;
        let t = if let Some(a) = target.strip_prefix("tcp:") {
            HostTarget::Tcp(a.parse().with_context(|| format!("address {a}"))?)
        } else if let Some(p) = target.strip_prefix("unix:") {
            HostTarget::Unix(p.into())
        } else {
            bail!("unknown vsock target {target:?}");
        };
        Ok((port, t))
    }

    fn rss_kib(field: &str) -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    extern "C" fn on_sigusr1(_: libc::c_int) {
        iii_vmm::hypervisor::kvm::DUMP_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// SIGUSR1 prints the vCPU registers (interrupting KVM_RUN, no SA_RESTART).
    fn install_dump_handler() {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
    }

    pub fn main() -> Result<()> {
        let start = Instant::now();
        let a = Args::parse();
        install_dump_handler();
        host::check_kvm(&a.kvm, a.allow_pvm)?;
        host::check_kernel(&a.kernel)?;
        let disks = a
            .disks
            .iter()
            .map(|d| {
                let (path, ro) = match d.strip_suffix(",ro") {
                    Some(p) => (p, true),
                    None => (d.as_str(), false),
                };
                DiskConfig {
                    path: path.into(),
                    read_only: ro,
                }
            })
            .collect();
        let vsock = match a.vsock_cid {
            Some(cid) => {
                let mut host_ports = HashMap::new();
                for s in &a.vsock_ports {
                    let (p, t) = parse_target(s)?;
                    host_ports.insert(p, t);
                }
                Some(VsockConfig {
                    guest_cid: cid,
                    host_ports,
                    listen_path: a.vsock_uds.clone(),
                })
            }
            None => None,
        };
        let console = match a.console.as_str() {
            "-" => Console::Stderr,
            "none" => Console::Null,
            p => Console::File(p.into()),
        };
        let cfg = VmConfig {
            kernel: a.kernel,
            initrd: a.initrd,
            cmdline: a.cmdline,
            mem_mib: a.mem_mib,
            vcpus: a.vcpus,
            disks,
            vsock,
            console,
            kvm_device: a.kvm,
        };
        let timing = a.timing;
        let reason = vm::run(&cfg, || {
            if timing {
                eprintln!(
                    "iii-vmm: first KVM_RUN at {} us, rss {} KiB",
                    start.elapsed().as_micros(),
                    rss_kib("VmRSS:")
                );
            }
        })?;
        if timing {
            eprintln!(
                "iii-vmm: guest stopped ({reason:?}) after {} ms, peak rss {} KiB",
                start.elapsed().as_millis(),
                rss_kib("VmHWM:")
            );
        }
        Ok(())
    }
}
