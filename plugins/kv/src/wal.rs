//! The kv log: the shared log of `iii-wal` with the kv [`LAYOUT`], plus the
//! two operations that know what a kv payload is (append a put or delete,
//! read a put's value back).

pub use iii_wal::{Damage, Loc, OnCorruption, OpenReport, Replayed, Wal, WalError};

use crate::format::{self, DecodeError, MAGIC_V1, MAGIC_V2, RECORD_MARKER};

/// What a kv log looks like to `iii-wal`.
pub static LAYOUT: iii_wal::Layout = iii_wal::Layout {
    name: "kv",
    file_name: "kv.wal",
    magic: *MAGIC_V2,
    legacy_magic: Some(*MAGIC_V1),
    marker: RECORD_MARKER,
    check,
    describe,
};

/// A payload (prefix) is a kv record when it decodes and a put's value
/// ends exactly at the end of the payload.
fn check(head: &[u8], len: u32) -> Result<(), iii_wal::ShapeError> {
    let full = head.len() == len as usize;
    match format::decode(head, full) {
        Ok(p) => match p.value {
            Some((start, n)) if start + n != len as usize => Err(iii_wal::ShapeError::Invalid),
            _ => Ok(()),
        },
        Err(DecodeError::Short) => Err(iii_wal::ShapeError::Short),
        Err(DecodeError::Invalid) => Err(iii_wal::ShapeError::Invalid),
    }
}

/// A damaged record's address, `scope/key` or `stream/group/item`.
fn describe(head: &[u8]) -> Option<String> {
    format::decode(head, false).ok().map(|d| d.parts.join("/"))
}

/// Appends a put (`value: Some`) or a delete and makes it durable before
/// returning. Returns where the record went.
pub fn append(
    w: &mut Wal,
    op: u8,
    table: u8,
    parts: &[&str],
    value: Option<&str>,
) -> Result<Loc, WalError> {
    let prefix = format::payload_prefix(op, table, parts, value.map(str::len));
    w.append(&[&prefix, value.unwrap_or("").as_bytes()])
}

/// The value of the put at `loc`, which must address `parts`.
pub fn read_value(w: &mut Wal, loc: Loc, parts: &[&str]) -> Result<String, WalError> {
    let mut payload = w.read_payload(loc)?;
    let (start, n) = {
        let d = format::decode(&payload, true).map_err(|e| w.bad_record(loc.off, e.to_string()))?;
        match d.value {
            Some(v) if d.parts == parts => v,
            _ => {
                return Err(
                    w.bad_record(loc.off, format!("it is not the put of {}", parts.join("/")))
                )
            }
        }
    };
    // Move the value to the front in place: no second copy of it.
    payload.truncate(start + n);
    payload.drain(..start);
    String::from_utf8(payload).map_err(|_| w.bad_record(loc.off, "value is not UTF-8"))
}
