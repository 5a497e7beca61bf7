//! Device models. They are independent of the hypervisor backend: a device
//! sees guest memory, its queues and an interrupt line, nothing else.

#[cfg(target_os = "linux")]
pub mod serial;
pub mod virtio;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// An edge-triggered interrupt line into the guest.
pub trait IrqLine: Send + Sync {
    /// Raises the line once.
    fn trigger(&self) -> io::Result<()>;
}

#[cfg(target_os = "linux")]
impl IrqLine for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// An interrupt line that only counts; used by device tests and by devices
/// that are polled rather than interrupt driven.
#[derive(Default, Debug)]
pub struct CountingIrq {
    count: AtomicU64,
}

impl CountingIrq {
    /// How many times the line has been raised.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingIrq {
    fn trigger(&self) -> io::Result<()> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A device that claims a window of guest-physical MMIO space.
pub trait MmioDevice: Send {
    /// A guest load of `data.len()` bytes at `offset` into the window.
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest store of `data` at `offset` into the window.
    fn mmio_write(&mut self, offset: u64, data: &[u8]);
}
