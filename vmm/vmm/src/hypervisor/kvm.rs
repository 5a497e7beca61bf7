//! KVM backend.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::*;

fn call(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError {
    move |e| HypervisorError::Call {
        op,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// A KVM VM with its in-kernel irqchip and PIT.
pub struct KvmHypervisor {
    /// The open KVM device (for capability and CPUID queries).
    pub kvm: Kvm,
    /// The VM.
    pub vm: VmFd,
}

/// Where KVM keeps the TSS on x86 (three pages just below 4 GiB).
const TSS_ADDRESS: usize = 0xfffb_d000;

impl KvmHypervisor {
    /// Opens `/dev/kvm` and creates a VM with an in-kernel irqchip and PIT.
    pub fn new(dev: &std::path::Path) -> Result<Self, HypervisorError> {
        let f = File::open(dev).map_err(|source| HypervisorError::Call {
            op: "open /dev/kvm",
            source,
        })?;
        // SAFETY: the fd comes from a File we own and hand over completely.
        let kvm = unsafe { Kvm::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(f)) };
        let vm = kvm.create_vm().map_err(call("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(call("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(call("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(call("KVM_CREATE_PIT2"))?;
        Ok(Self { kvm, vm })
    }

    /// Interrupt line to GSI `gsi` through an irqfd.
    pub fn irq_line(&self, gsi: u32) -> Result<EventFd, HypervisorError> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| HypervisorError::Call {
            op: "eventfd",
            source,
        })?;
        self.vm
            .register_irqfd(&fd, gsi)
            .map_err(call("KVM_IRQFD"))?;
        Ok(fd)
    }

    /// An eventfd KVM signals (without exiting to userspace) when the guest
    /// writes `value` to the 32-bit MMIO register at `addr`.
    pub fn mmio_notifier(&self, addr: u64, value: u32) -> Result<EventFd, HypervisorError> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| HypervisorError::Call {
            op: "eventfd",
            source,
        })?;
        self.vm
            .register_ioevent(&fd, &IoEventAddress::Mmio(addr), value)
            .map_err(call("KVM_IOEVENTFD"))?;
        Ok(fd)
    }
}

/// Set by a signal handler (SIGUSR1 in `iii-vmm`): the vCPU thread prints
/// its registers at the next exit and keeps running. For diagnosing guests
/// that hang without console output.
pub static DUMP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// One KVM vCPU.
pub struct KvmVcpu {
    /// The vCPU descriptor, for register setup before it runs.
    pub fd: VcpuFd,
}

impl Hypervisor for KvmHypervisor {
    type Vcpu = KvmVcpu;

    // SAFETY (contract): see `Hypervisor::map_memory`; the caller keeps the range mapped.
    unsafe fn map_memory(
        &mut self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
    ) -> Result<(), HypervisorError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(call("KVM_SET_USER_MEMORY_REGION"))
    }

    fn create_vcpu(&mut self, id: u8) -> Result<KvmVcpu, HypervisorError> {
        let fd = self
            .vm
            .create_vcpu(u64::from(id))
            .map_err(call("KVM_CREATE_VCPU"))?;
        Ok(KvmVcpu { fd })
    }
}

impl KvmVcpu {
    fn dump(&self) {
        if let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) {
            eprintln!(
                "iii-vmm: vcpu rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, s.cr0, s.cr3, s.cr4, s.efer
            );
        }
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self, h: &mut dyn ExitHandler) -> Result<StopReason, HypervisorError> {
        loop {
            let exit = match self.fd.run() {
                Ok(e) => e,
                // An application processor waiting for its SIPI returns
                // EAGAIN each time it wakes without starting: run again.
                Err(e) if e.errno() == libc::EAGAIN => continue,
                // A signal kicked us out (a register dump, or a stop request).
                Err(e) if e.errno() == libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    if DUMP_REQUESTED.swap(false, Ordering::SeqCst) {
                        self.dump();
                        continue;
                    }
                    return Ok(StopReason::Requested);
                }
                Err(e) => return Err(call("KVM_RUN")(e)),
            };
            let ctl = match exit {
                VcpuExit::IoIn(port, data) => {
                    h.pio_read(port, data);
                    Control::Continue
                }
                VcpuExit::IoOut(port, data) => h.pio_write(port, data),
                VcpuExit::MmioRead(addr, data) => {
                    h.mmio_read(addr, data);
                    Control::Continue
                }
                VcpuExit::MmioWrite(addr, data) => h.mmio_write(addr, data),
                VcpuExit::Hlt => Control::Continue,
                VcpuExit::Shutdown => return Ok(StopReason::Shutdown),
                VcpuExit::SystemEvent(_, _) => return Ok(StopReason::Reset),
                VcpuExit::InternalError => {
                    return Err(HypervisorError::Emulation("KVM_EXIT_INTERNAL_ERROR".into()))
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    return Err(HypervisorError::EntryFailed(format!(
                        "reason {reason:#x} on cpu {cpu}"
                    )))
                }
                other => {
                    return Err(HypervisorError::EntryFailed(format!(
                        "unexpected exit {other:?}"
                    )))
                }
            };
            if ctl == Control::Reset {
                return Ok(StopReason::Reset);
            }
        }
    }
}
