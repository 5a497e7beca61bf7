//! Assembles and runs one VM: memory, kernel, devices, one event thread
//! for device work, and the vCPU on the calling thread. One VM per process.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64 as arch;
use crate::convert::usize_from_u64;
use crate::devices::serial::{SerialConsole, COM1_BASE, COM1_GSI, PORT_COUNT};
use crate::devices::virtio::blk::{Block, BlockError, DiskMode};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, REG_QUEUE_NOTIFY};
use crate::devices::virtio::vsock::{MuxerError, Vsock, VsockConfig};
use crate::devices::virtio::VirtioDevice;
use crate::devices::MmioDevice;
use crate::hypervisor::kvm::KvmHypervisor;
use crate::hypervisor::{Control, ExitHandler, Hypervisor, HypervisorError, StopReason, Vcpu};

/// Smallest guest memory the VM accepts, in MiB.
pub const MIN_MEM_MIB: u64 = 64;
/// RAM sits below the virtio-mmio window at 0xd0000000.
pub const MAX_MEM_MIB: u64 = 3 * 1024;

/// One disk of the VM; disks appear as vda, vdb, ... in order.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Offer the disk read-only (and lock it shared rather than exclusive).
    pub read_only: bool,
}

/// Where the guest's serial console (the kernel log) goes.
#[derive(Debug, Clone)]
pub enum Console {
    /// The VMM's own stderr.
    Stderr,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    Null,
}

/// Everything needed to build one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel: ELF `vmlinux` or bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk, copied to the top of guest RAM.
    pub initrd: Option<PathBuf>,
    /// Appended to the base command line (e.g. `quiet iii.root=/dev/vda`).
    pub cmdline: String,
    /// Guest memory in MiB, [`MIN_MEM_MIB`]`..=`[`MAX_MEM_MIB`].
    pub mem_mib: u64,
    /// vCPU count, `1..=`[`arch::mptable::MAX_CPUS`].
    pub vcpus: u8,
    /// virtio-blk disks, in guest device order.
    pub disks: Vec<DiskConfig>,
    /// A virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Destination of the serial console.
    pub console: Console,
    /// The KVM device node (normally `/dev/kvm`).
    pub kvm_device: PathBuf,
}

/// Why a VM could not be built or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The requested memory size is out of range.
    #[error("memory must be {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB, got {0}")]
    Memory(u64),
    /// The vCPU count is out of range, or the MP table cannot be written.
    #[error(transparent)]
    Vcpus(#[from] arch::mptable::MpTableError),
    /// More virtio devices than there are interrupt lines for them.
    #[error("{0} virtio devices configured, at most {max} have an interrupt line", max = arch::MAX_VIRTIO_DEVICES)]
    Devices(usize),
    /// A vCPU thread could not be started.
    #[error("vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The guest memory mapping failed.
    #[error("cannot allocate guest memory: {0}")]
    Alloc(String),
    /// A KVM call failed.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The kernel, initrd or boot parameters could not be loaded.
    #[error(transparent)]
    Boot(#[from] arch::BootError),
    /// A disk image could not be opened or locked.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] MuxerError),
    /// The console file cannot be created.
    #[error("console {path}: {source}")]
    Console {
        /// The console file.
        path: PathBuf,
        /// Why creating it failed.
        source: std::io::Error,
    },
    /// The device event thread could not be set up.
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
}

struct MmioSlot {
    base: u64,
    transport: Arc<Mutex<MmioTransport>>,
}

/// Exit handling shared by all vCPU threads.
#[derive(Clone)]
struct Exits {
    serial: Arc<Mutex<SerialConsole>>,
    mmio: Arc<Vec<MmioSlot>>,
}

impl Exits {
    fn slot(&self, addr: u64) -> Option<(&MmioSlot, u64)> {
        self.mmio
            .iter()
            .find(|s| addr >= s.base && addr < s.base + MMIO_WINDOW)
            .map(|s| (s, addr - s.base))
    }
}

const I8042_PORT: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

impl ExitHandler for Exits {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_BASE..COM1_BASE + PORT_COUNT).contains(&p) && data.len() == 1 => {
                data[0] = lock(&self.serial).pio_read(p - COM1_BASE)
            }
            // Reads of the i8042 status must say "idle" or reboot=k spins.
            I8042_PORT => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> Control {
        match port {
            p if (COM1_BASE..COM1_BASE + PORT_COUNT).contains(&p) && data.len() == 1 => {
                lock(&self.serial).pio_write(p - COM1_BASE, data[0])
            }
            I8042_PORT if data.first() == Some(&I8042_RESET) => return Control::Reset,
            _ => {}
        }
        Control::Continue
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        match self.slot(addr) {
            Some((s, off)) => lock(&s.transport).mmio_read(off, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Control {
        if let Some((s, off)) = self.slot(addr) {
            lock(&s.transport).mmio_write(off, data);
        }
        Control::Continue
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked device thread leaves consistent enough state for shutdown.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Device work the event thread waits on.
enum Source {
    Notify {
        dev: usize,
        queue: usize,
        fd: EventFd,
    },
    Host {
        dev: usize,
        fd: RawFd,
    },
}

fn event_loop(
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    sources: Vec<Source>,
) -> Result<(), VmError> {
    let epoll = Epoll::new().map_err(VmError::EventLoop)?;
    for (i, s) in sources.iter().enumerate() {
        let fd = match s {
            Source::Notify { fd, .. } => fd.as_raw_fd(),
            Source::Host { fd, .. } => *fd,
        };
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, i as u64),
            )
            .map_err(VmError::EventLoop)?;
    }
    std::thread::Builder::new()
        .name("iii-vmm-devices".into())
        .spawn(move || {
            // Signals aimed at the VM (SIGUSR1 register dumps) must
            // interrupt the vCPU's KVM_RUN, not this thread.
            // SAFETY: sigset_t is plain data; the calls only touch it and this thread's mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            let mut events = [EpollEvent::default(); 64];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                for ev in &events[..n] {
                    // Every registered token is an index into `sources`.
                    let Some(source) = sources.get(usize_from_u64(ev.data())) else {
                        continue;
                    };
                    match source {
                        Source::Notify { dev, queue, fd } => {
                            let _ = fd.read();
                            let mut t = lock(&transports[*dev]);
                            if t.is_activated() {
                                let _ = t.device_mut().process_queue(*queue);
                            }
                        }
                        Source::Host { dev, .. } => {
                            let mut t = lock(&transports[*dev]);
                            let _ = t.device_mut().process_host_events();
                        }
                    }
                }
            }
        })
        .map_err(VmError::EventLoop)?;
    Ok(())
}

/// Builds the VM and runs its vCPU until the guest stops. `on_first_run`
/// is called right before the first `KVM_RUN`.
pub fn run(cfg: &VmConfig, on_first_run: impl FnOnce()) -> Result<StopReason, VmError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&cfg.mem_mib) {
        return Err(VmError::Memory(cfg.mem_mib));
    }
    if cfg.vcpus == 0 || cfg.vcpus > arch::mptable::MAX_CPUS {
        return Err(arch::mptable::MpTableError::CpuCount(cfg.vcpus).into());
    }
    let mut hv = KvmHypervisor::new(&cfg.kvm_device)?;
    // At most MAX_MEM_MIB (checked above), so the shift cannot overflow.
    let mem_bytes = usize_from_u64(cfg.mem_mib << 20);
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_bytes)])
        .map_err(|e| VmError::Alloc(e.to_string()))?;
    for (slot, r) in (0u32..).zip(mem.iter()) {
        // SAFETY: `mem` owns the mapping and lives until the process exits
        // (the vCPU runs inside this function and the event thread holds a clone).
        unsafe { hv.map_memory(slot, r.start_addr().0, r.as_ptr(), r.len())? };
    }

    let kernel = arch::load_kernel(&mem, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(arch::load_initrd(&mem, p)?),
        None => None,
    };

    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for d in &cfg.disks {
        let mode = if d.read_only {
            DiskMode::ReadOnly
        } else {
            DiskMode::ReadWrite
        };
        devices.push(Box::new(Block::open(&d.path, mode)?));
    }
    if let Some(v) = &cfg.vsock {
        devices.push(Box::new(Vsock::new(v)?));
    }
    if devices.len() > arch::MAX_VIRTIO_DEVICES as usize {
        return Err(VmError::Devices(devices.len()));
    }

    let mut cmdline = Cmdline::new(arch::CMDLINE_MAX).map_err(arch::BootError::Cmdline)?;
    cmdline
        .insert_str(arch::BASE_CMDLINE)
        .map_err(arch::BootError::Cmdline)?;
    if !cfg.cmdline.is_empty() {
        cmdline
            .insert_str(&cfg.cmdline)
            .map_err(arch::BootError::Cmdline)?;
    }

    let mut transports = Vec::new();
    let mut slots = Vec::new();
    let mut sources = Vec::new();
    for (dev_index, (i, dev)) in (0u32..).zip(devices).enumerate() {
        let base = arch::MMIO_BASE + u64::from(i) * MMIO_WINDOW;
        let gsi = arch::VIRTIO_GSI_BASE + i;
        let irq = hv.irq_line(gsi)?;
        let host_fd = dev.host_event_fd();
        let queues = dev.queue_max_sizes().len();
        let t = Arc::new(Mutex::new(MmioTransport::new(
            dev,
            mem.clone(),
            Arc::new(irq),
        )));
        for (queue, notify_value) in (0..queues).zip(0u32..) {
            let fd = hv.mmio_notifier(base + REG_QUEUE_NOTIFY, notify_value)?;
            sources.push(Source::Notify {
                dev: dev_index,
                queue,
                fd,
            });
        }
        if let Some(fd) = host_fd {
            sources.push(Source::Host { dev: dev_index, fd });
        }
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(base), gsi, None)
            .map_err(arch::BootError::Cmdline)?;
        slots.push(MmioSlot {
            base,
            transport: t.clone(),
        });
        transports.push(t);
    }
    arch::write_boot_params(&mem, &cmdline, &kernel, initrd)?;
    arch::mptable::write(&mem, cfg.vcpus)?;

    let out: Box<dyn Write + Send> = match &cfg.console {
        Console::Stderr => Box::new(std::io::stderr()),
        Console::Null => Box::new(std::io::sink()),
        Console::File(p) => Box::new(File::create(p).map_err(|source| VmError::Console {
            path: p.clone(),
            source,
        })?),
    };
    let serial_irq = Arc::new(hv.irq_line(COM1_GSI)?);
    let exits = Exits {
        serial: Arc::new(Mutex::new(SerialConsole::new(serial_irq, out))),
        mmio: Arc::new(slots),
    };

    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        let vcpu = hv.create_vcpu(id)?;
        arch::setup_vcpu(&hv.kvm, &vcpu.fd, id)?;
        if id == 0 {
            arch::setup_bsp_registers(&vcpu.fd, kernel.entry, &mem)?;
        }
        vcpus.push(vcpu);
    }
    event_loop(transports, sources)?;
    on_first_run();
    // Every vCPU runs on its own thread; the first one to stop ends the VM
    // (the process exits and takes the others with it).
    let (tx, rx) = std::sync::mpsc::channel();
    for (id, mut vcpu) in vcpus.into_iter().enumerate() {
        let tx = tx.clone();
        let mut exits = exits.clone();
        std::thread::Builder::new()
            .name(format!("iii-vcpu{id}"))
            .spawn(move || {
                let _ = tx.send(vcpu.run(&mut exits));
            })
            .map_err(VmError::Thread)?;
    }
    // Register-dump signals must land on a vCPU thread.
    // SAFETY: sigset_t is plain data; only this thread's mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    match rx.recv() {
        Ok(r) => Ok(r?),
        Err(_) => Ok(StopReason::Requested),
    }
}
