//! virtio-blk backed by a host file: read-only or read-write, with flush.
//!
//! Images are `flock`ed (shared for read-only, exclusive for read-write) so
//! that no two VMs ever write one image, and no VM writes an image another
//! VM reads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{
    read_config_bytes, DeviceError, GuestMem, Interrupt, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

/// Bytes per sector, the unit of capacity and request offsets.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request type: read sectors into the guest's buffers.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write the guest's buffers to sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: make earlier writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: return the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request status: I/O error (also bounds violations and writes to a read-only disk).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request status: unknown request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the device ID string returned for GET_ID.
const ID_BYTES: u32 = 20;

/// Why a disk image cannot back a virtio-blk device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened or its size read.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// Why opening or `stat` failed.
        source: std::io::Error,
    },
    /// Another VM holds a conflicting `flock` on the image.
    #[error("disk image {path} is in use by another VM (lock held)")]
    Locked {
        /// The image path.
        path: PathBuf,
    },
    /// The image size is not a whole number of sectors.
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    Size {
        /// The image path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
}

/// How the guest may use a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskMode {
    /// Writes fail with `IOERR`; the image is locked shared.
    ReadOnly,
    /// Reads and writes; the image is locked exclusively.
    ReadWrite,
}

/// The header at the start of every request chain.
#[derive(Copy, Clone, Default, Debug)]
#[repr(C)]
pub struct RequestHeader {
    /// One of the `VIRTIO_BLK_T_*` request types.
    pub request_type: u32,
    /// Unused; zero.
    pub reserved: u32,
    /// First sector of the transfer, for reads and writes.
    pub sector: u64,
}
// SAFETY: plain old data made of integers, no padding (4 + 4 + 8 bytes).
unsafe impl vm_memory::ByteValued for RequestHeader {}

/// A virtio-blk device backed by one image file.
pub struct Block {
    file: File,
    mode: DiskMode,
    capacity_sectors: u64,
    id: [u8; ID_BYTES as usize],
    acked: u64,
    mem: Option<GuestMem>,
    queue: Option<Queue>,
    interrupt: Option<Arc<Interrupt>>,
}

impl Block {
    /// Opens and locks the image at `path`; its file name (up to 20 bytes)
    /// becomes the device ID.
    pub fn open(path: &Path, mode: DiskMode) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(mode == DiskMode::ReadWrite)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.into(),
                source,
            })?;
        let lock = match mode {
            DiskMode::ReadOnly => libc::LOCK_SH,
            DiskMode::ReadWrite => libc::LOCK_EX,
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            return Err(BlockError::Locked { path: path.into() });
        }
        let size = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: path.into(),
                source,
            })?
            .len();
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Size {
                path: path.into(),
                size,
            });
        }
        let mut id = [0u8; ID_BYTES as usize];
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"disk");
        let n = name.len().min(id.len());
        id[..n].copy_from_slice(&name[..n]);
        Ok(Self {
            file,
            mode,
            capacity_sectors: size / SECTOR_SIZE,
            id,
            acked: 0,
            mem: None,
            queue: None,
            interrupt: None,
        })
    }

    /// The disk's size in sectors, as the guest sees it in config space.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Executes one request; returns the virtio status and the number of
    /// bytes written into the guest's buffers (the used length).
    fn execute(
        &self,
        reader: &mut virtio_queue::Reader<'_>,
        writer: &mut virtio_queue::Writer<'_>,
    ) -> (u8, u32) {
        let hdr: RequestHeader = match reader.read_obj() {
            Ok(h) => h,
            Err(_) => return (VIRTIO_BLK_S_IOERR, 0),
        };
        // The last writable byte of the chain is the status.
        let data_room = writer.available_bytes().saturating_sub(1);
        match hdr.request_type {
            VIRTIO_BLK_T_IN => {
                // The used length is a u32: a chain with more room than that
                // (possible with many large descriptors) cannot be reported.
                let Ok(used) = u32::try_from(data_room) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                if !self.in_bounds(hdr.sector, u64::from(used)) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut buf = vec![0u8; data_room];
                if self
                    .file
                    .read_exact_at(&mut buf, hdr.sector * SECTOR_SIZE)
                    .is_err()
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                if writer.write_all(&buf).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                (VIRTIO_BLK_S_OK, used)
            }
            VIRTIO_BLK_T_OUT => {
                if self.mode == DiskMode::ReadOnly {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let len = reader.available_bytes();
                if !self.in_bounds(hdr.sector, len as u64) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut buf = vec![0u8; len];
                if reader.read_exact(&mut buf).is_err()
                    || self
                        .file
                        .write_all_at(&buf, hdr.sector * SECTOR_SIZE)
                        .is_err()
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                (VIRTIO_BLK_S_OK, 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.mode == DiskMode::ReadWrite && self.file.sync_data().is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                (VIRTIO_BLK_S_OK, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                // As much of the ID as fits the buffer.
                let n = u32::try_from(data_room).map_or(ID_BYTES, |room| room.min(ID_BYTES));
                if writer.write_all(&self.id[..n as usize]).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                (VIRTIO_BLK_S_OK, n)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    fn in_bounds(&self, sector: u64, len: u64) -> bool {
        len.is_multiple_of(SECTOR_SIZE)
            && sector
                .checked_add(len / SECTOR_SIZE)
                .is_some_and(|end| end <= self.capacity_sectors)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.mode == DiskMode::ReadOnly {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (le64 at offset 0) is offered.
        read_config_bytes(&self.capacity_sectors.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), DeviceError> {
        if queues.len() != 1 {
            return Err(DeviceError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        self.queue = queues.pop();
        self.mem = Some(mem);
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn process_queue(&mut self, _index: usize) -> Result<(), DeviceError> {
        let (Some(mem), Some(interrupt)) = (self.mem.clone(), self.interrupt.clone()) else {
            return Err(DeviceError::NotActivated);
        };
        let mut queue = self.queue.take().ok_or(DeviceError::NotActivated)?;
        let result = (|| {
            let mut completed = false;
            loop {
                // Re-check after enabling notifications so no request that
                // races with the driver is left behind.
                queue.disable_notification(&mem)?;
                while let Some(chain) = queue.pop_descriptor_chain(&mem) {
                    let head = chain.head_index();
                    let used = match (chain.clone().reader(&mem), chain.writer(&mem)) {
                        (Ok(mut r), Ok(mut w)) => {
                            let (status, used) = self.execute(&mut r, &mut w);
                            // The status byte is the last byte of the writable part.
                            let room = w.available_bytes();
                            let mut status_w = if room > 1 {
                                w.split_at(room - 1).ok()
                            } else {
                                Some(w)
                            };
                            match status_w.as_mut().map(|sw| sw.write_all(&[status])) {
                                Some(Ok(())) => used.saturating_add(1),
                                _ => used,
                            }
                        }
                        // No readable header or no status byte: nothing to report into.
                        _ => 0,
                    };
                    queue.add_used(&mem, head, used)?;
                    completed = true;
                }
                if !queue.enable_notification(&mem)? {
                    break;
                }
            }
            if completed && queue.needs_notification(&mem)? {
                interrupt
                    .signal_used_queue()
                    .map_err(DeviceError::Interrupt)?;
            }
            Ok(())
        })();
        self.queue = Some(queue);
        result
    }

    fn reset(&mut self) {
        self.queue = None;
        self.mem = None;
        self.interrupt = None;
        self.acked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::*;
    use crate::devices::virtio::testing::*;
    use crate::devices::{CountingIrq, MmioDevice};
    use vm_memory::ByteValued;

    const SECTORS: u64 = 64;

    fn image(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let p = dir.path().join(name);
        let data: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    fn header(t: u32, sector: u64) -> Vec<u8> {
        RequestHeader {
            request_type: t,
            reserved: 0,
            sector,
        }
        .as_slice()
        .to_vec()
    }

    struct Rig<'m> {
        dev: Block,
        q: DriverQueue<'m>,
        irq: Arc<CountingIrq>,
    }

    fn rig<'m>(mem: &'m GuestMem, path: &Path, mode: DiskMode) -> Rig<'m> {
        let mut dev = Block::open(path, mode).unwrap();
        let q = DriverQueue::new(mem, 0x1000, 0x10_0000, 16, 0x1_0000);
        let irq = Arc::new(CountingIrq::default());
        dev.activate(
            mem.clone(),
            vec![q.device_queue()],
            Arc::new(Interrupt::new(irq.clone())),
        )
        .unwrap();
        Rig { dev, q, irq }
    }

    /// Submits one request and returns (status, used len, data read back).
    fn submit(
        rig: &mut Rig<'_>,
        t: u32,
        sector: u64,
        out: &[u8],
        in_len: u32,
    ) -> (u8, u32, Vec<u8>) {
        let hdr = header(t, sector);
        let mut bufs = vec![r(&hdr)];
        if !out.is_empty() {
            bufs.push(r(out));
        }
        if in_len > 0 {
            bufs.push(w(in_len));
        }
        bufs.push(w(1));
        rig.q.add(&bufs);
        rig.dev.process_queue(0).unwrap();
        let used = rig.q.take_used();
        assert_eq!(used.len(), 1);
        let (_, len, addrs) = &used[0];
        let status = rig.q.read(*addrs.last().unwrap(), 1)[0];
        let data = if in_len > 0 {
            rig.q.read(addrs[addrs.len() - 2], in_len as usize)
        } else {
            Vec::new()
        };
        (status, *len, data)
    }

    #[test]
    fn reads_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir, "a.img");
        let mem = guest_memory();
        let mut rig = rig(&mem, &path, DiskMode::ReadOnly);
        let (status, used, data) = submit(&mut rig, VIRTIO_BLK_T_IN, 3, &[], 1024);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(used, 1025);
        let file = std::fs::read(&path).unwrap();
        assert_eq!(data, file[3 * 512..3 * 512 + 1024]);
        assert!(rig.irq.count() >= 1, "completion must interrupt the guest");
    }

    #[test]
    fn writes_land_in_the_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir, "a.img");
        let mem = guest_memory();
        let mut rig = rig(&mem, &path, DiskMode::ReadWrite);
        let payload = vec![0xabu8; 1536];
        let (status, used, _) = submit(&mut rig, VIRTIO_BLK_T_OUT, 10, &payload, 0);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
        let (status, _, data) = submit(&mut rig, VIRTIO_BLK_T_IN, 10, &[], 1536);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(data, payload);
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[10 * 512..13 * 512], &payload[..]);
        assert_eq!(
            file[9 * 512],
            ((9 * 512) % 251) as u8,
            "neighbours untouched"
        );
        let (status, _, _) = submit(&mut rig, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir, "ro.img");
        let before = std::fs::read(&path).unwrap();
        let mem = guest_memory();
        let mut rig = rig(&mem, &path, DiskMode::ReadOnly);
        assert_ne!(rig.dev.features() & VIRTIO_BLK_F_RO, 0);
        let (status, _, _) = submit(&mut rig, VIRTIO_BLK_T_OUT, 0, &[1u8; 512], 0);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // Flush on a read-only disk is harmless and succeeds.
        let (status, _, _) = submit(&mut rig, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn out_of_range_and_unknown_requests_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir, "a.img");
        let mem = guest_memory();
        let mut rig = rig(&mem, &path, DiskMode::ReadWrite);
        let (status, _, _) = submit(&mut rig, VIRTIO_BLK_T_IN, SECTORS - 1, &[], 1024);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        let (status, _, _) = submit(&mut rig, VIRTIO_BLK_T_OUT, u64::MAX, &[0u8; 512], 0);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        let (status, _, _) = submit(&mut rig, 0x77, 0, &[], 0);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
        let (status, _, id) = submit(&mut rig, VIRTIO_BLK_T_GET_ID, 0, &[], 20);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(&id[..5], b"a.img");
    }

    #[test]
    fn several_disks_and_image_locking() {
        let dir = tempfile::tempdir().unwrap();
        let a = image(&dir, "a.img");
        let b = image(&dir, "b.img");
        let _ro1 = Block::open(&a, DiskMode::ReadOnly).unwrap();
        let _ro2 = Block::open(&a, DiskMode::ReadOnly).expect("shared read-only is fine");
        assert!(matches!(
            Block::open(&a, DiskMode::ReadWrite),
            Err(BlockError::Locked { .. })
        ));
        let _rw = Block::open(&b, DiskMode::ReadWrite).unwrap();
        assert!(matches!(
            Block::open(&b, DiskMode::ReadOnly),
            Err(BlockError::Locked { .. })
        ));
        std::fs::write(dir.path().join("odd.img"), [0u8; 100]).unwrap();
        assert!(matches!(
            Block::open(&dir.path().join("odd.img"), DiskMode::ReadOnly),
            Err(BlockError::Size { .. })
        ));
    }

    fn reg_write(t: &mut MmioTransport, off: u64, v: u32) {
        t.mmio_write(off, &v.to_le_bytes());
    }

    fn reg_read(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn mmio_transport_drives_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir, "a.img");
        let mem = guest_memory();
        let irq = Arc::new(CountingIrq::default());
        let dev = Block::open(&path, DiskMode::ReadOnly).unwrap();
        let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq.clone());
        assert_eq!(reg_read(&mut t, 0x00), 0x7472_6976);
        assert_eq!(reg_read(&mut t, 0x04), 2);
        assert_eq!(reg_read(&mut t, 0x08), TYPE_BLOCK);
        // Capacity in config space, as the Linux driver reads it (two 32-bit reads).
        assert_eq!(u64::from(reg_read(&mut t, 0x100)), SECTORS);
        reg_write(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        reg_write(&mut t, 0x14, 1);
        assert_eq!(reg_read(&mut t, 0x10), 1, "VERSION_1 in the high word");
        reg_write(&mut t, 0x24, 1);
        reg_write(&mut t, 0x20, 1);
        reg_write(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        let mut q = DriverQueue::new(&mem, 0x1000, 0x10_0000, 16, 0x1_0000);
        let dq = q.device_queue();
        reg_write(&mut t, 0x30, 0);
        assert_eq!(reg_read(&mut t, 0x34), 256);
        reg_write(&mut t, 0x38, 16);
        let (desc_lo, desc_hi) = split_addr(dq.desc_table());
        let (avail_lo, avail_hi) = split_addr(dq.avail_ring());
        let (used_lo, used_hi) = split_addr(dq.used_ring());
        reg_write(&mut t, 0x80, desc_lo);
        reg_write(&mut t, 0x84, desc_hi);
        reg_write(&mut t, 0x90, avail_lo);
        reg_write(&mut t, 0x94, avail_hi);
        reg_write(&mut t, 0xa0, used_lo);
        reg_write(&mut t, 0xa4, used_hi);
        reg_write(&mut t, 0x44, 1);
        reg_write(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(t.is_activated());
        assert_eq!(t.status() & STATUS_FAILED, 0);
        let hdr = header(VIRTIO_BLK_T_IN, 0);
        q.add(&[r(&hdr), w(512), w(1)]);
        reg_write(&mut t, REG_QUEUE_NOTIFY, 0);
        let used = q.take_used();
        assert_eq!(used.len(), 1);
        assert_eq!(q.read(used[0].2[2], 1)[0], VIRTIO_BLK_S_OK);
        assert_eq!(reg_read(&mut t, 0x60) & 1, 1, "used-ring interrupt pending");
        reg_write(&mut t, 0x64, 1);
        assert_eq!(reg_read(&mut t, 0x60), 0);
        assert!(irq.count() >= 1);
        // Reset returns the device to its initial state.
        reg_write(&mut t, 0x70, 0);
        assert!(!t.is_activated());
        assert_eq!(reg_read(&mut t, 0x70), 0);
    }
}
