//! Record framing: what every log shares, whatever its payloads mean.

/// Length of the file header (the magic).
pub const FILE_HEADER: u64 = 8;
/// `marker | len u32 LE | crc u32 LE`.
pub const RECORD_HEADER: u64 = 12;
/// Header of a legacy record (no marker): `len u32 LE | crc32(payload) u32 LE`.
pub const LEGACY_RECORD_HEADER: u64 = 8;
/// Upper bound of one record's payload; a larger length is garbage.
pub const MAX_PAYLOAD: u32 = 256 * 1024 * 1024;

/// Why a payload (or its first bytes) is not a record of a [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The bytes end inside a field: a longer prefix may still decode.
    #[error("payload ends inside a field")]
    Short,
    /// Not a record of this log (bad op byte, bad UTF-8, bytes left over).
    #[error("payload is not a record of this log")]
    Invalid,
}

/// What one kind of log looks like: its name in messages, its magic, its record marker, and
/// how to check a payload's shape. A record whose checksum holds but whose payload does not
/// check out is treated as damage, like a bad checksum.
#[derive(Debug)]
pub struct Layout {
    /// The log's name in error messages ("kv", "queue").
    pub name: &'static str,
    /// File name used when a backup is saved of a log whose own name is unknown.
    pub file_name: &'static str,
    /// The header of a log in the current format.
    pub magic: [u8; 8],
    /// The header of a log in the legacy, unmarked format (read once, then rewritten).
    pub legacy_magic: Option<[u8; 8]>,
    /// First bytes of every record. Replay resynchronises on it after damage.
    pub marker: [u8; 4],
    /// Checks `head`, the first bytes of a payload `len` bytes long (all of it when
    /// `head.len() == len`). [`ShapeError::Short`] asks for the whole payload.
    pub check: fn(head: &[u8], len: u32) -> Result<(), ShapeError>,
    /// Names what a (possibly damaged) record is about, for salvage reports.
    pub describe: fn(head: &[u8]) -> Option<String>,
}

/// The CRC a record header carries: over the length field and the payload.
pub fn record_crc(len: u32, payload_pieces: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    for p in payload_pieces {
        h.update(p);
    }
    h.finalize()
}

/// The header of a payload made of `pieces`.
pub fn record_header(marker: [u8; 4], pieces: &[&[u8]]) -> [u8; RECORD_HEADER as usize] {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let len = len as u32;
    let mut h = [0u8; RECORD_HEADER as usize];
    h[..4].copy_from_slice(&marker);
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&record_crc(len, pieces).to_le_bytes());
    h
}

/// A whole record (header + payload), for snapshots and tests.
pub fn encode_record(marker: [u8; 4], pieces: &[&[u8]]) -> Vec<u8> {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(RECORD_HEADER as usize + len);
    out.extend_from_slice(&record_header(marker, pieces));
    for p in pieces {
        out.extend_from_slice(p);
    }
    out
}

/// Splits a header into `(len, crc)`, or `None` without `marker`.
pub fn parse_header(marker: [u8; 4], h: &[u8; RECORD_HEADER as usize]) -> Option<(u32, u32)> {
    if h[..4] != marker {
        return None;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    Some((len, crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_names_its_payload_and_another_marker_is_not_a_header() {
        let rec = encode_record(*b"\xFFab\x01", &[b"hello ", b"world"]);
        let h: [u8; 12] = rec[..12].try_into().unwrap();
        let (len, crc) = parse_header(*b"\xFFab\x01", &h).unwrap();
        assert_eq!(len as usize, rec.len() - 12);
        assert_eq!(crc, record_crc(len, &[&rec[12..]]));
        assert_eq!(parse_header(*b"\xFFab\x02", &h), None);
    }
}
