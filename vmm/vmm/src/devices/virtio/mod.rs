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

/// Feature bit every modern (virtio 1.x) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// virtio device ID of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// virtio device ID of a vsock device.
pub const TYPE_VSOCK: u32 = 19;

/// InterruptStatus bit: the device returned buffers on a used ring.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the device's configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// The device side of a virtio interrupt: the status register the driver
/// reads and acknowledges, and the line that raises it.
pub struct Interrupt {
    status: AtomicU32,
    line: Arc<dyn IrqLine>,
}

impl Interrupt {
    /// An interrupt with no bits pending that raises `line`.
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Sets [`INT_USED_RING`] and raises the line.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        self.line.trigger()
    }

    /// Sets [`INT_CONFIG`] and raises the line.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        self.line.trigger()
    }

    /// The pending bits, as the InterruptStatus register reads.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears `bits` (the driver's InterruptACK write).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Errors a device model reports while processing its queues.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver's rings or descriptors are invalid.
    #[error("virtqueue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A descriptor points outside guest memory.
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Raising the interrupt line failed.
    #[error("cannot signal the guest: {0}")]
    Interrupt(std::io::Error),
    /// The transport handed over a different number of queues than the device has.
    #[error("device activated with {got} queues, expected {expected}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues it was given.
        got: usize,
    },
    /// Queue work arrived before the driver set DRIVER_OK.
    #[error("device is not activated")]
    NotActivated,
    /// The host side of the device (sockets, files) failed.
    #[error("host I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device, independent of the transport that carries it.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each of the device's queues, in queue order.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// The driver accepted `features`; the device keeps those it offered.
    fn ack_features(&mut self, features: u64);
    /// Fills `data` from configuration space at `offset` (zeros past its end).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to configuration space; ignored unless the device has writable config.
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
    /// Handles the host-side work [`VirtioDevice::host_event_fd`] signalled.
    fn process_host_events(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Drop queues and connections; the driver starts over.
    fn reset(&mut self);
}

/// Reads a little-endian config space from a byte image.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    // An offset past the image (even past usize) reads as zeros.
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    for (i, b) in data.iter_mut().enumerate() {
        *b = start
            .checked_add(i)
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod testing;
