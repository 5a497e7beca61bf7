//! 8250 UART on the legacy COM1 ports, used for the kernel log only: every
//! console byte is a VM exit, so the guest boots with `quiet` and bulk stdio
//! goes over vsock.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_GSI: u32 = 4;
pub const PORT_COUNT: u16 = 8;

/// vm-superio wants its own `Trigger`; this adapts an irqfd-registered EventFd.
pub struct EventFdTrigger(pub Arc<EventFd>);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    pub fn new(irq: Arc<EventFd>, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(irq), out),
        }
    }

    pub fn pio_read(&mut self, offset: u16) -> u8 {
        self.uart.read(offset as u8)
    }

    pub fn pio_write(&mut self, offset: u16, value: u8) {
        // A failing log sink must not stop the guest.
        let _ = self.uart.write(offset as u8, value);
    }
}
