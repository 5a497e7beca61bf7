//! Hypervisor.framework backend (macOS on Apple silicon).
//!
//! Covers what the trait needs: memory mapping, vCPU creation and the run
//! loop, decoding MMIO data aborts into [`ExitHandler`] calls, and PSCI power
//! requests. arm64 boot setup (device tree, GIC, kernel placement) is not
//! here yet; see vmm/README.md.

use std::ffi::c_void;

use super::*;

type HvReturn = i32;
type HvVcpu = u64;

const HV_SUCCESS: HvReturn = 0;
const HV_MEMORY_READ: u64 = 1;
const HV_MEMORY_WRITE: u64 = 2;
const HV_MEMORY_EXEC: u64 = 4;

const HV_EXIT_REASON_CANCELED: u32 = 0;
const HV_EXIT_REASON_EXCEPTION: u32 = 1;
const HV_EXIT_REASON_VTIMER_ACTIVATED: u32 = 2;

const HV_REG_X0: u32 = 0;
const HV_REG_PC: u32 = 31;

#[repr(C)]
struct HvVcpuExitException {
    syndrome: u64,
    virtual_address: u64,
    physical_address: u64,
}

#[repr(C)]
struct HvVcpuExit {
    reason: u32,
    exception: HvVcpuExitException,
}

#[link(name = "Hypervisor", kind = "framework")]
extern "C" {
    fn hv_vm_create(config: *mut c_void) -> HvReturn;
    fn hv_vm_map(addr: *mut c_void, ipa: u64, size: usize, flags: u64) -> HvReturn;
    fn hv_vcpu_create(
        vcpu: *mut HvVcpu,
        exit: *mut *const HvVcpuExit,
        config: *mut c_void,
    ) -> HvReturn;
    fn hv_vcpu_run(vcpu: HvVcpu) -> HvReturn;
    fn hv_vcpu_get_reg(vcpu: HvVcpu, reg: u32, value: *mut u64) -> HvReturn;
    fn hv_vcpu_set_reg(vcpu: HvVcpu, reg: u32, value: u64) -> HvReturn;
    fn hv_vcpu_set_vtimer_mask(vcpu: HvVcpu, masked: bool) -> HvReturn;
}

fn check(op: &'static str, r: HvReturn) -> Result<(), HypervisorError> {
    if r == HV_SUCCESS {
        Ok(())
    } else {
        Err(HypervisorError::Call {
            op,
            source: std::io::Error::other(format!("hv_return_t {r:#x}")),
        })
    }
}

/// The process's Hypervisor.framework VM.
pub struct HvfHypervisor;

impl HvfHypervisor {
    /// One VM per process, as Hypervisor.framework allows.
    pub fn new() -> Result<Self, HypervisorError> {
        // SAFETY: a null config asks for the defaults.
        check("hv_vm_create", unsafe {
            hv_vm_create(std::ptr::null_mut())
        })?;
        Ok(Self)
    }
}

/// HVF binds a vCPU to the thread that created it, so the vCPU is created
/// lazily on the thread that first runs it.
pub struct HvfVcpu {
    handle: Option<(HvVcpu, *const HvVcpuExit)>,
}

// SAFETY: before `run` there is no HVF state; after it the handle is only
// used from the thread that created it (run never returns the handle).
unsafe impl Send for HvfVcpu {}

impl Hypervisor for HvfHypervisor {
    type Vcpu = HvfVcpu;

    // SAFETY (contract): see `Hypervisor::map_memory`; the caller keeps the range mapped.
    unsafe fn map_memory(
        &mut self,
        _slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
    ) -> Result<(), HypervisorError> {
        // SAFETY: the caller guarantees the host range outlives the VM.
        let r = unsafe {
            hv_vm_map(
                host.cast(),
                gpa,
                crate::convert::usize_from_u64(size),
                HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC,
            )
        };
        check("hv_vm_map", r)
    }

    fn create_vcpu(&mut self, _id: u8) -> Result<HvfVcpu, HypervisorError> {
        Ok(HvfVcpu { handle: None })
    }
}

// ESR_EL2 fields of a data abort.
const EC_DATA_ABORT_LOWER: u64 = 0x24;
const EC_HVC64: u64 = 0x16;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;

impl HvfVcpu {
    fn reg(&self, v: HvVcpu, r: u32) -> Result<u64, HypervisorError> {
        let mut x = 0;
        // SAFETY: valid out-pointer; v belongs to this thread.
        check("hv_vcpu_get_reg", unsafe { hv_vcpu_get_reg(v, r, &mut x) })?;
        Ok(x)
    }

    fn set_reg(&self, v: HvVcpu, r: u32, x: u64) -> Result<(), HypervisorError> {
        // SAFETY: v belongs to this thread.
        check("hv_vcpu_set_reg", unsafe { hv_vcpu_set_reg(v, r, x) })
    }
}

impl Vcpu for HvfVcpu {
    fn run(&mut self, h: &mut dyn ExitHandler) -> Result<StopReason, HypervisorError> {
        let (v, exit) = match self.handle {
            Some(x) => x,
            None => {
                let mut v = 0;
                let mut exit = std::ptr::null();
                // SAFETY: valid out-pointers; a null config asks for defaults.
                check("hv_vcpu_create", unsafe {
                    hv_vcpu_create(&mut v, &mut exit, std::ptr::null_mut())
                })?;
                self.handle = Some((v, exit));
                (v, exit)
            }
        };
        loop {
            // SAFETY: v was created on this thread.
            check("hv_vcpu_run", unsafe { hv_vcpu_run(v) })?;
            // SAFETY: HVF keeps the exit record valid for the vCPU's lifetime
            // and fills it before hv_vcpu_run returns.
            let e = unsafe { &*exit };
            match e.reason {
                HV_EXIT_REASON_CANCELED => return Ok(StopReason::Requested),
                HV_EXIT_REASON_VTIMER_ACTIVATED => {
                    // Without a GIC model the timer cannot be delivered yet;
                    // unmask so the guest keeps running.
                    // SAFETY: v belongs to this thread.
                    unsafe { hv_vcpu_set_vtimer_mask(v, false) };
                }
                HV_EXIT_REASON_EXCEPTION => {
                    let esr = e.exception.syndrome;
                    match esr >> 26 {
                        EC_DATA_ABORT_LOWER => {
                            let pa = e.exception.physical_address;
                            let size = 1usize << ((esr >> 22) & 3);
                            let srt = ((esr >> 16) & 0x1f) as u32;
                            let write = esr & (1 << 6) != 0;
                            if write {
                                // Register 31 is XZR here.
                                let val = if srt == 31 {
                                    0
                                } else {
                                    self.reg(v, HV_REG_X0 + srt)?
                                };
                                if h.mmio_write(pa, &val.to_le_bytes()[..size]) == Control::Reset {
                                    return Ok(StopReason::Reset);
                                }
                            } else {
                                let mut buf = [0u8; 8];
                                h.mmio_read(pa, &mut buf[..size]);
                                if srt != 31 {
                                    self.set_reg(v, HV_REG_X0 + srt, u64::from_le_bytes(buf))?;
                                }
                            }
                            let pc = self.reg(v, HV_REG_PC)?;
                            self.set_reg(v, HV_REG_PC, pc + 4)?;
                        }
                        EC_HVC64 => match self.reg(v, HV_REG_X0)? {
                            PSCI_SYSTEM_OFF => return Ok(StopReason::Shutdown),
                            PSCI_SYSTEM_RESET => return Ok(StopReason::Reset),
                            // Unknown PSCI/SMCCC call: NOT_SUPPORTED.
                            _ => self.set_reg(v, HV_REG_X0, u64::MAX)?,
                        },
                        ec => {
                            return Err(HypervisorError::EntryFailed(format!(
                                "unhandled exception class {ec:#x} (ESR {esr:#x})"
                            )))
                        }
                    }
                }
                r => {
                    return Err(HypervisorError::EntryFailed(format!(
                        "unknown exit reason {r}"
                    )))
                }
            }
        }
    }
}
