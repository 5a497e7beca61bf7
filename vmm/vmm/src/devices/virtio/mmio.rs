//! virtio-mmio (version 2) transport: the register file the guest driver
//! programs, holding queue configuration until the driver sets DRIVER_OK.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{GuestMem, Interrupt, VirtioDevice};
use crate::devices::{IrqLine, MmioDevice};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x0069_6969;

/// Offset of the QueueNotify register, where the driver kicks a queue.
pub const REG_QUEUE_NOTIFY: u64 = 0x50;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bit: the driver has found the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit: the driver knows how to drive it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit: the driver is ready; the device activates.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status bit: the device could not be activated.
pub const STATUS_FAILED: u32 = 0x80;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

/// The virtio-mmio register file in front of one device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// A transport for `device` over guest memory `mem`, interrupting through `irq`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMem, irq: Arc<dyn IrqLine>) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            // Queue::new only fails for a size that is not a power of two, which
            // is a bug in the device model's constant table.
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect()
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the transport, for the event thread to drive.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Whether the driver has set DRIVER_OK and the device owns its queues.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status register as the driver last wrote it (plus FAILED).
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue configuration is only legal before DRIVER_OK.
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, status: u32) {
        if status == 0 {
            self.reset();
            return;
        }
        let newly_set = status & !self.status;
        self.status = status;
        if newly_set & STATUS_FEATURES_OK != 0 {
            self.device.ack_features(self.driver_features);
        }
        if newly_set & STATUS_DRIVER_OK != 0 && !self.activated {
            let queues = std::mem::take(&mut self.queues);
            match self
                .device
                .activate(self.mem.clone(), queues, self.interrupt.clone())
            {
                Ok(()) => self.activated = true,
                Err(_) => {
                    // The driver sees FAILED and gives up on the device.
                    self.status |= STATUS_FAILED;
                    self.queues = Self::fresh_queues(self.device.as_ref());
                }
            }
        }
    }

    /// A queue notification that did not go through an ioeventfd.
    pub fn notify(&mut self, index: u32) {
        if self.activated {
            // Errors are the guest's problem (bad descriptors); the device
            // has already completed what it could.
            let _ = self.device.process_queue(index as usize);
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.device.features();
                match self.device_features_sel {
                    0 => (f & 0xffff_ffff) as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let lo = Some(v);
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                // A size beyond u16 is invalid like any other bad size: the
                // queue keeps its current one (as `set_size` does).
                if let (Some(q), Ok(size)) = (self.selected_queue(), u16::try_from(v)) {
                    q.set_size(size)
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1)
                }
            }
            REG_QUEUE_NOTIFY => self.notify(v),
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.with_queue(|q| q.set_desc_table_address(lo, None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, lo)),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(lo, None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, lo)),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(lo, None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, lo)),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q)
        }
    }
}

impl MmioDevice for MmioTransport {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return; // registers are 32-bit only
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
