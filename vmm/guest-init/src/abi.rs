//! libc constants converted to the field types of the kernel structures they
//! go in. libc declares them as `c_int` or measures them in `usize`, while the
//! structures use narrower types; each conversion here is evaluated at
//! compile time behind an assertion, so a value that did not fit would fail
//! the build instead of being truncated.

#![allow(
    clippy::cast_possible_truncation,
    reason = "every cast below follows a compile-time assertion that its value fits"
)]

use libc::{c_int, c_short, c_ulong, sa_family_t, sockaddr_vm, socklen_t};

/// The request argument of `ioctl`: `c_ulong` in glibc, `c_int` in musl.
#[cfg(target_env = "musl")]
pub type IoctlRequest = c_int;
/// The request argument of `ioctl`: `c_ulong` in glibc, `c_int` in musl.
#[cfg(not(target_env = "musl"))]
pub type IoctlRequest = c_ulong;

/// `SIOCGIFFLAGS` (0x8913) as this libc's `ioctl` request type.
pub const SIOCGIFFLAGS: IoctlRequest = {
    assert!(libc::SIOCGIFFLAGS <= IoctlRequest::MAX as c_ulong);
    libc::SIOCGIFFLAGS as IoctlRequest
};

/// `SIOCSIFFLAGS` (0x8914) as this libc's `ioctl` request type.
pub const SIOCSIFFLAGS: IoctlRequest = {
    assert!(libc::SIOCSIFFLAGS <= IoctlRequest::MAX as c_ulong);
    libc::SIOCSIFFLAGS as IoctlRequest
};

/// `IFF_UP` (1) for the `c_short` flags of an `ifreq`.
pub const IFF_UP: c_short = {
    assert!(libc::IFF_UP >= 0 && libc::IFF_UP <= c_short::MAX as c_int);
    libc::IFF_UP as c_short
};

/// `AF_VSOCK` (40) for the `sa_family_t` field of a `sockaddr_vm`.
pub const AF_VSOCK: sa_family_t = {
    assert!(libc::AF_VSOCK >= 0 && libc::AF_VSOCK <= sa_family_t::MAX as c_int);
    libc::AF_VSOCK as sa_family_t
};

/// The size of a `sockaddr_vm` (16 bytes) as the address length `bind` and
/// `connect` take.
pub const SOCKADDR_VM_LEN: socklen_t = {
    let n = std::mem::size_of::<sockaddr_vm>();
    assert!(n <= socklen_t::MAX as usize);
    n as socklen_t
};

/// Loop device ioctls (`linux/loop.h`; libc does not define them).
pub const LOOP_SET_FD: IoctlRequest = 0x4C00;
/// Detaches a loop device from its backing file.
pub const LOOP_CLR_FD: IoctlRequest = 0x4C01;
/// Sets a loop device's `loop_info64` (flags, name).
pub const LOOP_SET_STATUS64: IoctlRequest = 0x4C04;
/// Attaches and configures a loop device in one call (Linux 5.8+).
pub const LOOP_CONFIGURE: IoctlRequest = 0x4C0A;
/// On `/dev/loop-control`: the number of a free loop device.
pub const LOOP_CTL_GET_FREE: IoctlRequest = 0x4C82;
/// `loop_info64.lo_flags`: read-only device.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `loop_info64.lo_flags`: detach when the last user (the mount) goes away.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

/// `struct loop_config`, the argument of [`LOOP_CONFIGURE`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopConfig {
    pub fd: u32,
    pub block_size: u32,
    pub info: LoopInfo64,
    pub reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);
