//! The append log the builtin adapters (`plugins/kv`, `plugins/queue`) keep their data in.
//!
//! A log is a file header (8 magic bytes) followed by records framed as
//! `marker | len u32 LE | crc32(len ‖ payload) u32 LE | payload`. The framing, the checksums,
//! the replay that tells a torn tail from mid-log damage, salvage and compaction by rewrite
//! live here; what a payload means belongs to the adapter, which describes its records with a
//! [`Layout`]. See `plugins/kv/README.md` for the mechanism in full.

pub mod frame;
mod log;

pub use frame::{Layout, ShapeError, FILE_HEADER, MAX_PAYLOAD, RECORD_HEADER};
pub use log::{Damage, Loc, OnCorruption, OpenReport, Replayed, Rewriter, Wal, WalError};
