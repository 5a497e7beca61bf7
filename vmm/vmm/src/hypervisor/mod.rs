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
    Continue,
    Reset,
}

/// Guest accesses the backend could not complete by itself.
pub trait ExitHandler: Send {
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    fn pio_write(&mut self, port: u16, data: &[u8]) -> Control;
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Control;
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("{op} failed: {source}")]
    Call {
        op: &'static str,
        source: std::io::Error,
    },
    #[error(
        "guest stopped with an emulation failure ({0}); on a PVM host a stock kernel cannot run"
    )]
    Emulation(String),
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
    fn create_vcpu(&mut self, id: u8) -> Result<Self::Vcpu, HypervisorError>;
}
