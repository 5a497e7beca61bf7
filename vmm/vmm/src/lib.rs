//! iii microVM monitor.
//!
//! * [`devices`]: virtio-mmio transport, virtio-blk, virtio-vsock, serial.
//! * [`hypervisor`]: the backend trait, with KVM (Linux) and HVF (macOS).
//! * [`arch`]: x86_64 direct boot (zero page, page tables, vCPU registers).
//! * [`vm`]: assembles memory, kernel, devices and the vCPU into a running VM.
//! * [`host`]: can this host run microVMs, and if not, what to do.

#![deny(clippy::cast_possible_truncation)]

#[cfg(target_os = "linux")]
pub mod arch;
mod convert;
pub mod devices;
#[cfg(target_os = "linux")]
pub mod host;
pub mod hypervisor;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod vm;
