//! virtio-vsock with a userspace backend (see [`muxer`]).
//!
//! Queue 0 (rx) carries packets to the guest, queue 1 (tx) packets from it,
//! queue 2 (event) is only used for transport resets, which we never send.

pub mod muxer;
pub mod packet;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;

pub use muxer::{HostTarget, MuxerError};
use muxer::{Muxer, MAX_PKT_PAYLOAD};
use packet::{wire_len, Header, HEADER_LEN};

use super::{
    read_config_bytes, DeviceError, GuestMem, Interrupt, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;

/// What a vsock device connects: the guest's CID and the host endpoints.
#[derive(Debug, Clone, Default)]
pub struct VsockConfig {
    /// The guest's context ID (3 or above).
    pub guest_cid: u64,
    /// guest→host: vsock port on CID 2 → host socket it may reach.
    pub host_ports: HashMap<u32, HostTarget>,
    /// host→guest: Unix socket where host clients send `CONNECT <port>\n`.
    pub listen_path: Option<PathBuf>,
}

/// A virtio-vsock device whose streams end in host sockets.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    acked: u64,
    mem: Option<GuestMem>,
    queues: Vec<Queue>,
    interrupt: Option<Arc<Interrupt>>,
    scratch: Vec<u8>,
}

impl Vsock {
    /// A device for `cfg`; binds the host listening socket, if any, at once.
    pub fn new(cfg: &VsockConfig) -> Result<Self, MuxerError> {
        Ok(Self {
            guest_cid: cfg.guest_cid,
            muxer: Muxer::new(
                cfg.guest_cid,
                cfg.host_ports.clone(),
                cfg.listen_path.as_deref(),
            )?,
            acked: 0,
            mem: None,
            queues: Vec::new(),
            interrupt: None,
            scratch: vec![0; MAX_PKT_PAYLOAD],
        })
    }

    /// Open connections, for tests and diagnostics.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    fn active(&self) -> Result<(GuestMem, Arc<Interrupt>), DeviceError> {
        match (&self.mem, &self.interrupt) {
            (Some(m), Some(i)) if self.queues.len() == 3 => Ok((m.clone(), i.clone())),
            _ => Err(DeviceError::NotActivated),
        }
    }

    /// Takes every packet the guest queued on tx and hands it to the muxer.
    fn process_tx(&mut self) -> Result<bool, DeviceError> {
        let (mem, _) = self.active()?;
        let mut any = false;
        loop {
            self.queues[TXQ].disable_notification(&mem)?;
            while let Some(chain) = self.queues[TXQ].pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                if let Ok(mut reader) = chain.reader(&mem) {
                    if let Ok(h) = reader.read_obj::<Header>() {
                        let h = h.from_le();
                        let len = (h.len as usize).min(MAX_PKT_PAYLOAD);
                        let payload = &mut self.scratch[..len];
                        // A short chain means a malformed packet; drop it.
                        if reader.read_exact(payload).is_ok() {
                            self.muxer.handle_guest_packet(&h, payload);
                        }
                    }
                }
                self.queues[TXQ].add_used(&mem, head, 0)?;
                any = true;
            }
            if !self.queues[TXQ].enable_notification(&mem)? {
                break;
            }
        }
        Ok(any)
    }

    /// Fills guest rx buffers with whatever the muxer has for the guest.
    fn process_rx(&mut self) -> Result<bool, DeviceError> {
        let (mem, _) = self.active()?;
        let mut any = false;
        while self.muxer.has_rx_work() {
            let Some(chain) = self.queues[RXQ].pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(&mem) {
                Ok(w) if w.available_bytes() >= HEADER_LEN => w,
                _ => {
                    // Unusable buffer: give it back empty.
                    self.queues[RXQ].add_used(&mem, head, 0)?;
                    any = true;
                    continue;
                }
            };
            let room = writer.available_bytes() - HEADER_LEN;
            let n = room.min(self.scratch.len());
            match self.muxer.next_rx_packet(&mut self.scratch[..n]) {
                Some(pkt) => {
                    let used = writer
                        .write_obj(pkt.header.to_le())
                        .and_then(|_| writer.write_all(&self.scratch[..pkt.payload_len]))
                        // payload_len ≤ n ≤ MAX_PKT_PAYLOAD (the scratch buffer).
                        .map(|_| wire_len(HEADER_LEN + pkt.payload_len))
                        .unwrap_or(0);
                    self.queues[RXQ].add_used(&mem, head, used)?;
                    any = true;
                }
                None => {
                    // Readiness turned out stale (EAGAIN); keep the buffer.
                    self.queues[RXQ].go_to_previous_position();
                    break;
                }
            }
        }
        Ok(any)
    }

    fn kick(&mut self, tx: bool, rx: bool) -> Result<(), DeviceError> {
        let (mem, interrupt) = self.active()?;
        let mut notify = false;
        if tx {
            notify |= self.queues[TXQ].needs_notification(&mem)?;
        }
        if rx {
            notify |= self.queues[RXQ].needs_notification(&mem)?;
        }
        if notify {
            interrupt
                .signal_used_queue()
                .map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }

    fn pump(&mut self, process_tx: bool) -> Result<(), DeviceError> {
        let tx = if process_tx {
            self.process_tx()?
        } else {
            false
        };
        self.muxer.process_host_events()?;
        let rx = self.process_rx()?;
        self.kick(tx, rx)
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), DeviceError> {
        if queues.len() != 3 {
            return Err(DeviceError::QueueCount {
                expected: 3,
                got: queues.len(),
            });
        }
        self.queues = queues;
        self.mem = Some(mem);
        self.interrupt = Some(interrupt);
        // Host clients may have connected before the driver came up.
        self.pump(false)
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        self.pump(index == TXQ)
    }

    fn host_event_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_host_events(&mut self) -> Result<(), DeviceError> {
        if self.active().is_err() {
            // Accept clients and read their CONNECT lines even before the
            // driver is up: otherwise the level-triggered readiness never
            // clears and the event thread spins. Packets wait in the muxer.
            self.muxer.process_host_events()?;
            return Ok(());
        }
        self.pump(false)
    }

    fn reset(&mut self) {
        self.muxer.reset();
        self.queues.clear();
        self.mem = None;
        self.interrupt = None;
        self.acked = 0;
    }
}

// `Header` must stay a valid wire image; keep the trait bound visible here.
const _: fn() = || {
    fn assert_bytes<T: ByteValued>() {}
    assert_bytes::<Header>();
};

#[cfg(test)]
mod tests;
