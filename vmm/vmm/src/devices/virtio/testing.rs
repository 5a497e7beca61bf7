//! Test-only driver side of a split virtqueue, built on virtio-queue's
//! `MockSplitQueue`: it places chains in guest memory the way a guest driver
//! would and collects what the device returned.

use std::collections::HashMap;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::GuestMem;

pub const MEM_SIZE: usize = 64 << 20;

pub fn guest_memory() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One buffer of a chain: its length, whether the device writes it, and
/// (for readable buffers) its contents.
pub struct Buf<'d> {
    pub len: u32,
    pub writable: bool,
    pub data: &'d [u8],
}

/// The low and high 32-bit halves of a guest address, as a driver writes
/// them into a pair of registers.
pub fn split_addr(a: u64) -> (u32, u32) {
    ((a & 0xffff_ffff) as u32, (a >> 32) as u32)
}

pub fn r(data: &[u8]) -> Buf<'_> {
    Buf {
        len: u32::try_from(data.len()).expect("test buffers are small"),
        writable: false,
        data,
    }
}

pub fn w(len: u32) -> Buf<'static> {
    Buf {
        len,
        writable: true,
        data: &[],
    }
}

/// The driver side of one split queue. `MockSplitQueue::create` is not used
/// because (virtio-queue 0.18) it places the used ring inside the avail ring
/// for queues longer than a few entries; the rings are laid out here instead
/// from the same mock building blocks.
pub struct DriverQueue<'m> {
    mem: &'m GuestMem,
    desc: DescriptorTable<'m, GuestMem>,
    avail: AvailRing<'m, GuestMem>,
    used: UsedRing<'m, GuestMem>,
    addrs: (u64, u64, u64),
    size: u16,
    data_base: u64,
    slot: u64,
    next_avail: u16,
    next_used: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
}

impl<'m> DriverQueue<'m> {
    /// A queue of `size` descriptors with its rings at `ring_base` and one
    /// `slot`-byte data buffer per descriptor at `data_base`.
    pub fn new(mem: &'m GuestMem, ring_base: u64, data_base: u64, size: u16, slot: u64) -> Self {
        let desc_addr = ring_base;
        let avail_addr = ring_base + 16 * u64::from(size);
        let used_addr = avail_addr + 0x1000;
        assert!(6 + 2 * u64::from(size) <= 0x1000);
        Self {
            mem,
            desc: DescriptorTable::new(mem, GuestAddress(desc_addr), size),
            avail: AvailRing::new(mem, GuestAddress(avail_addr), size),
            used: UsedRing::new(mem, GuestAddress(used_addr), size),
            addrs: (desc_addr, avail_addr, used_addr),
            size,
            data_base,
            slot,
            next_avail: 0,
            next_used: 0,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
        }
    }

    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        let (d, a, u) = self.addrs;
        let ((d_lo, d_hi), (a_lo, a_hi), (u_lo, u_hi)) =
            (split_addr(d), split_addr(a), split_addr(u));
        q.set_desc_table_address(Some(d_lo), Some(d_hi));
        q.set_avail_ring_address(Some(a_lo), Some(a_hi));
        q.set_used_ring_address(Some(u_lo), Some(u_hi));
        q.set_ready(true);
        q
    }

    #[cfg_attr(
        not(target_os = "linux"),
        allow(
            dead_code,
            reason = "only the vsock tests use it, and vsock is Linux-only"
        )
    )]
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    fn addr(&self, idx: u16) -> u64 {
        self.data_base + u64::from(idx) * self.slot
    }

    /// Makes a chain available; returns its head and the guest addresses of its buffers.
    pub fn add(&mut self, bufs: &[Buf<'_>]) -> (u16, Vec<u64>) {
        assert!(bufs.len() <= self.free.len(), "driver queue exhausted");
        let idxs: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        let mut addrs = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            assert!(u64::from(b.len) <= self.slot);
            let addr = self.addr(idxs[i]);
            if !b.writable {
                self.mem.write_slice(b.data, GuestAddress(addr)).unwrap();
            }
            let (write, next_flag) = (desc_flag(VRING_DESC_F_WRITE), desc_flag(VRING_DESC_F_NEXT));
            let mut flags = if b.writable { write } else { 0 };
            let next = if i + 1 < bufs.len() {
                flags |= next_flag;
                idxs[i + 1]
            } else {
                0
            };
            let desc = RawDescriptor::from(Descriptor::new(addr, b.len, flags, next));
            self.desc.store(idxs[i], desc).unwrap();
            addrs.push(addr);
        }
        let head = idxs[0];
        self.chains.insert(head, idxs);
        self.avail
            .ring()
            .ref_at(usize::from(self.next_avail % self.size))
            .unwrap()
            .store(head);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.avail.idx().store(self.next_avail);
        (head, addrs)
    }

    /// Chains the device has returned since the last call: (head, used len, buffer addresses).
    pub fn take_used(&mut self) -> Vec<(u16, u32, Vec<u64>)> {
        let mut out = Vec::new();
        let used_idx: u16 = self.used.idx().load();
        while self.next_used != used_idx {
            let e: VirtqUsedElem = self
                .used
                .ring()
                .ref_at(usize::from(self.next_used % self.size))
                .unwrap()
                .load();
            self.next_used = self.next_used.wrapping_add(1);
            let head = u16::try_from(e.id()).expect("a head index beyond the queue size");
            let idxs = self.chains.remove(&head).unwrap_or_else(|| {
                panic!(
                    "device returned unknown head {head} (len {}), outstanding {:?}",
                    e.len(),
                    self.chains.keys().collect::<Vec<_>>()
                )
            });
            let addrs = idxs.iter().map(|&i| self.addr(i)).collect();
            self.free.extend(idxs);
            out.push((head, e.len(), addrs));
        }
        out
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A descriptor flag constant (bindgen makes them `u32`) as the `u16` field.
fn desc_flag(f: u32) -> u16 {
    u16::try_from(f).expect("descriptor flags are 16 bits")
}
