//! virtio device models and the virtio-mmio transport that exposes them.

pub mod blk;
pub mod mmio;
#[cfg(target_os = "linux")]
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::IrqLine;

/// Guest memory as every device sees it.
pub type GuestMem = GuestMemoryMmap<()>;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;

/// Bits of the virtio-mmio InterruptStatus register.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The device side of a virtio interrupt: the status register the driver
/// reads and acknowledges, and the line that raises it.
pub struct Interrupt {
    status: AtomicU32,
    line: Arc<dyn IrqLine>,
}

impl Interrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        self.line.trigger()
    }

    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        self.line.trigger()
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Errors a device model reports while processing its queues.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("virtqueue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot signal the guest: {0}")]
    Interrupt(std::io::Error),
    #[error("device activated with {got} queues, expected {expected}")]
    QueueCount { expected: usize, got: usize },
    #[error("device is not activated")]
    NotActivated,
    #[error("host I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device, independent of the transport that carries it.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    fn features(&self) -> u64;
    fn ack_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called once the driver sets DRIVER_OK; the device owns its queues from here on.
    fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), DeviceError>;
    /// The driver made buffers available on queue `index`.
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError>;
    /// A file descriptor that becomes readable when the device has host-side
    /// work (for example a nested epoll over host sockets).
    fn host_event_fd(&self) -> Option<RawFd> {
        None
    }
    fn process_host_events(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Drop queues and connections; the driver starts over.
    fn reset(&mut self);
}

/// Reads a little-endian config space from a byte image.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = offset as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b = config.get(start + i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod testing;
