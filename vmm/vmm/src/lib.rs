//! iii microVM monitor.
//!
//! * [`devices`]: virtio-mmio transport, virtio-blk, virtio-vsock, serial.
//! * [`hypervisor`]: the backend trait, with KVM (Linux) and HVF (macOS).
//! * [`vm`]: assembles memory, kernel, devices and vCPUs into a running VM.

pub mod devices;
