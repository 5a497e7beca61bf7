//! Architecture-specific boot setup.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod x86_64;
