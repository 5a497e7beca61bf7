//! The virtio-vsock packet header (virtio spec 5.10.6).

use vm_memory::ByteValued;

/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 44;
/// The host's context ID (the guest has its own, from the configuration).
pub const HOST_CID: u64 = 2;

/// Socket type: a connected byte stream (the only one we support).
pub const TYPE_STREAM: u16 = 1;

/// Operation: open a connection.
pub const OP_REQUEST: u16 = 1;
/// Operation: accept a connection.
pub const OP_RESPONSE: u16 = 2;
/// Operation: refuse or abort a connection.
pub const OP_RST: u16 = 3;
/// Operation: the sender stops receiving and/or sending (see the `SHUTDOWN_*` flags).
pub const OP_SHUTDOWN: u16 = 4;
/// Operation: stream data follows the header.
pub const OP_RW: u16 = 5;
/// Operation: the sender's receive buffer and forwarded count changed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Operation: asks the peer for a [`OP_CREDIT_UPDATE`].
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// The header in front of every vsock packet, in host byte order once
/// [`Header::from_le`] has been applied.
#[derive(Copy, Clone, Default, Debug, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Header {
    /// Sender's context ID.
    pub src_cid: u64,
    /// Receiver's context ID.
    pub dst_cid: u64,
    /// Sender's port.
    pub src_port: u32,
    /// Receiver's port.
    pub dst_port: u32,
    /// Payload bytes after the header (`OP_RW` only).
    pub len: u32,
    /// Socket type (`TYPE_STREAM`).
    pub kind: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*` for `OP_SHUTDOWN`).
    pub flags: u32,
    /// The sender's receive buffer for this connection, in bytes.
    pub buf_alloc: u32,
    /// Bytes the sender has taken out of that buffer so far (modulo 2^32).
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

    /// The header with its fields converted from wire (little-endian) order.
    pub fn from_le(self) -> Self {
        // The conversion is its own inverse.
        self.to_le()
    }
}

/// Largest byte count [`wire_len`] is ever given: a full packet (header plus
/// the largest payload) or a credit window's worth of bytes.
const MAX_WIRE_LEN: usize = {
    let packet = HEADER_LEN + super::muxer::MAX_PKT_PAYLOAD;
    let window = super::muxer::BUF_ALLOC as usize;
    if packet > window {
        packet
    } else {
        window
    }
};
const _: () = assert!(MAX_WIRE_LEN <= u32::MAX as usize);

/// A byte count the device has already bounded (by the packet size or the
/// credit window, both far below 4 GiB) as the `u32` that header fields, byte
/// counters and the used ring carry. It saturates rather than truncates, so
/// even a broken bound could never make a count wrap around.
pub fn wire_len(n: usize) -> u32 {
    debug_assert!(n <= MAX_WIRE_LEN, "{n} bytes exceeds every vsock bound");
    u32::try_from(n).unwrap_or(u32::MAX)
}
