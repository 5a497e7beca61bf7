//! The image a sandbox starts from, as section C of the sandbox contract
//! describes `iii_oci_rootfs::Rootfs`. Until the image store lands in
//! `iii-oci-rootfs` the type is defined here with the same fields; the
//! crate root re-exports it, so switching is a one-line change there.

use std::path::PathBuf;

/// The filesystem of a read-only lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerFormat {
    /// erofs (`mkfs.erofs`).
    Erofs,
    /// ext4 (`mke2fs -d`).
    Ext4,
}

impl LowerFormat {
    /// Its name for `mount -t` and the guest's `iii.rootfstype=`.
    pub fn fstype(self) -> &'static str {
        match self {
            Self::Erofs => "erofs",
            Self::Ext4 => "ext4",
        }
    }
}

/// A published, never-written lower image and the environment its image declares.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The image file.
    pub lower: PathBuf,
    /// Its filesystem.
    pub format: LowerFormat,
    /// The image's own environment (`PATH`, …), applied before the sandbox's.
    pub env: Vec<(String, String)>,
    /// Content key of the image.
    pub key: String,
}
