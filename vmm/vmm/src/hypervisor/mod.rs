//! The hypervisor backend trait. A backend maps guest memory, creates vCPUs
//! and runs them, handing every exit that needs the VMM (port I/O, MMIO) to
//! an [`ExitHandler`]. KVM (Linux) and Hypervisor.framework (macOS) sit
//! behind it; device models never see the backend.

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub mod hvf;
#[cfg(target_os = "linux")]
pub mod kvm;

/// Why a vCPU stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked to reset (our kernels use reset as power off).
    Reset,
    /// Triple fault or an explicit shutdown.
    Shutdown,
    /// The VMM asked the vCPU to stop.
    Requested,
}

/// What the vCPU loop should do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Resume the guest.
    Continue,
    /// The guest requested a reset: stop with [`StopReason::Reset`].
    Reset,
}

/// Guest accesses the backend could not complete by itself.
pub trait ExitHandler: Send {
    /// A port read of `data.len()` bytes; the handler fills `data`.
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    /// A port write of `data`.
    fn pio_write(&mut self, port: u16, data: &[u8]) -> Control;
    /// An MMIO load of `data.len()` bytes at guest-physical `addr`; the handler fills `data`.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    /// An MMIO store of `data` at guest-physical `addr`.
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Control;
}

/// A failure of the hypervisor backend or of the guest's execution.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A backend call (ioctl, framework function) failed.
    #[error("{op} failed: {source}")]
    Call {
        /// The call that failed.
        op: &'static str,
        /// The error it returned.
        source: std::io::Error,
    },
    /// The backend could not emulate an instruction of the guest.
    #[error(
        "guest stopped with an emulation failure ({0}); on a PVM host a stock kernel cannot run"
    )]
    Emulation(String),
    /// The backend refused to enter the guest (invalid vCPU state).
    #[error("vCPU entry failed: {0}")]
    EntryFailed(String),
}

/// A running vCPU.
pub trait Vcpu: Send {
    /// Runs until the guest stops for good; exits go to `handler`.
    fn run(&mut self, handler: &mut dyn ExitHandler) -> Result<StopReason, HypervisorError>;
}

/// A VM: its memory map and vCPU factory.
pub trait Hypervisor {
    /// The backend's vCPU.
    type Vcpu: Vcpu;
    /// Maps `size` bytes of host memory at `host` to guest-physical `gpa`.
    ///
    /// # Safety
    /// The host range must stay mapped and unaliased by Rust references for
    /// as long as the VM exists.
    unsafe fn map_memory(
        &mut self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
    ) -> Result<(), HypervisorError>;
    /// Creates vCPU number `id` (0 is the boot CPU).
    fn create_vcpu(&mut self, id: u8) -> Result<Self::Vcpu, HypervisorError>;
}
