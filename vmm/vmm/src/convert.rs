//! Narrowing integer conversions that cannot lose bits, each with the reason
//! why. The crate denies `clippy::cast_possible_truncation`: a value that can
//! be out of range goes through `try_from` with an error or a clamp at its use
//! site; the helpers here are for values whose range is fixed in advance.

// The VMM runs on 64-bit hosts only (x86_64 KVM, aarch64 Hypervisor.framework),
// so guest-physical sizes and offsets (`u64`) fit a `usize`.
const _: () = assert!(usize::BITS == u64::BITS);

/// `n` as a `usize`; lossless because the crate only builds for 64-bit hosts
/// (asserted at compile time above).
#[allow(
    clippy::cast_possible_truncation,
    reason = "usize is 64 bits wide on every target this crate builds for (asserted above)"
)]
pub(crate) const fn usize_from_u64(n: u64) -> usize {
    n as usize
}

/// `n` as a `u32`, for values fixed at compile time: used in a `const`, an
/// `n` above `u32::MAX` fails the build (at run time it would panic).
#[allow(
    clippy::cast_possible_truncation,
    reason = "the assertion rejects every value that does not fit"
)]
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code, reason = "only the x86_64 boot tables need it so far")
)]
pub(crate) const fn const_u32(n: u64) -> u32 {
    assert!(n <= u32::MAX as u64, "value does not fit in u32");
    n as u32
}

/// `n` as a `u16`, for values fixed at compile time (see [`const_u32`]).
#[allow(
    clippy::cast_possible_truncation,
    reason = "the assertion rejects every value that does not fit"
)]
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code, reason = "only the x86_64 boot tables need it so far")
)]
pub(crate) const fn const_u16(n: usize) -> u16 {
    assert!(n <= u16::MAX as usize, "value does not fit in u16");
    n as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_every_bit_in_range() {
        assert_eq!(usize_from_u64(u64::MAX), usize::MAX);
        assert_eq!(const_u32(u64::from(u32::MAX)), u32::MAX);
        assert_eq!(const_u16(usize::from(u16::MAX)), u16::MAX);
    }

    #[test]
    #[should_panic(expected = "does not fit in u32")]
    fn out_of_range_values_are_refused() {
        // In a `const` this is a build error; at run time, a panic.
        let n = std::hint::black_box(u64::from(u32::MAX) + 1);
        const_u32(n);
    }
}
