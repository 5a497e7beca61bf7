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
