//! 8250 UART on the legacy COM1 ports, used for the kernel log only: every
//! console byte is a VM exit, so the guest boots with `quiet` and bulk stdio
//! goes over vsock.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// First I/O port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// The interrupt line of COM1 (ISA IRQ 4).
pub const COM1_GSI: u32 = 4;
/// Number of I/O ports the UART decodes from [`COM1_BASE`].
pub const PORT_COUNT: u16 = 8;

/// vm-superio wants its own `Trigger`; this adapts an irqfd-registered EventFd.
pub struct EventFdTrigger(pub Arc<EventFd>);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The guest's COM1: a UART whose output goes to a host log sink.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART that raises `irq` and writes the guest's output to `out`.
    pub fn new(irq: Arc<EventFd>, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// A guest read of register `offset` (port minus [`COM1_BASE`]); offsets
    /// past the UART's ports read as an absent device (all ones).
    pub fn pio_read(&mut self, offset: u16) -> u8 {
        match register(offset) {
            Some(r) => self.uart.read(r),
            None => 0xff,
        }
    }

    /// A guest write of `value` to register `offset`; offsets past the
    /// UART's ports are ignored.
    pub fn pio_write(&mut self, offset: u16, value: u8) {
        if let Some(r) = register(offset) {
            // A failing log sink must not stop the guest.
            let _ = self.uart.write(r, value);
        }
    }
}

/// The UART register for a port offset, if the offset is one of its ports.
fn register(offset: u16) -> Option<u8> {
    u8::try_from(offset).ok().filter(|_| offset < PORT_COUNT)
}
