//! The virtio-vsock packet header (virtio spec 5.10.6).

use vm_memory::ByteValued;

pub const HEADER_LEN: usize = 44;
pub const HOST_CID: u64 = 2;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Copy, Clone, Default, Debug, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: packed integers only, so every byte pattern is a valid value and
// there is no padding.
unsafe impl ByteValued for Header {}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_LEN);

impl Header {
    /// Fields are stored little-endian on the wire; x86_64 and aarch64 are
    /// little-endian, and this converts explicitly so big-endian hosts work too.
    pub fn to_le(self) -> Self {
        Self {
            src_cid: self.src_cid.to_le(),
            dst_cid: self.dst_cid.to_le(),
            src_port: self.src_port.to_le(),
            dst_port: self.dst_port.to_le(),
            len: self.len.to_le(),
            kind: self.kind.to_le(),
            op: self.op.to_le(),
            flags: self.flags.to_le(),
            buf_alloc: self.buf_alloc.to_le(),
            fwd_cnt: self.fwd_cnt.to_le(),
        }
    }

    pub fn from_le(self) -> Self {
        // The conversion is its own inverse.
        self.to_le()
    }
}
