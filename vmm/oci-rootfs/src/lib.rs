//! Building what a microVM boots from.
//!
//! * [`oci`]: read an OCI image layout (directory or tarball) or a
//!   `docker save` tarball, and apply its layers in order into a directory:
//!   whiteouts honoured, setuid/setgid stripped, path traversal refused.
//! * [`image`]: turn that directory into the read-only lower image (erofs via
//!   `mkfs.erofs`, or ext4 via `mke2fs -d`; neither needs root) and create a
//!   fresh per-VM ext4 upper. A shared lower is never booted read-write.
//! * [`initramfs`]: a newc cpio holding `/init` and `/dev/console`.
//! * [`layout`]: write an OCI image layout (test images, and presets).
//! * [`store`]: the content-keyed cache of sandbox lowers: presets
//!   bootstrapped from Debian, imported custom images, pulled images.
//! * [`registry`]: pulls from OCI registries into the store, pushes layouts.

#![deny(clippy::cast_possible_truncation)]

pub mod image;
pub mod initramfs;
pub mod layout;
pub mod oci;
pub mod registry;
pub mod store;

pub use registry::{ImageConfig, PullError, Pulled};
pub use store::{ImageError, ImageStore, LowerFormat, Rootfs};
