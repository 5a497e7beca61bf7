//! Byte layout of the kv log: the file header and the records, in the
//! current format (v2, resynchronisable) and the one before it (v1, read
//! only so old data directories still open). See README.md.

/// Header of a v2 log: magic + format version.
pub const MAGIC_V2: &[u8; 8] = b"IIIKVWL2";
/// Header of a v1 log (no record markers); migrated on first open.
pub const MAGIC_V1: &[u8; 8] = b"IIIKVWL1";
pub use iii_wal::{FILE_HEADER, MAX_PAYLOAD, RECORD_HEADER};

/// First bytes of every v2 record. `0xFF` never occurs in UTF-8, so the
/// marker cannot appear inside a key or a JSON value; a scan that lost its
/// place finds the next record by looking for it.
pub const RECORD_MARKER: [u8; 4] = [0xFF, b'K', b'V', 0xA7];
/// `table` byte of a state entry (`[scope, key]`).
pub const TABLE_STATE: u8 = 0;
/// `table` byte of a stream entry (`[stream, group, item]`).
pub const TABLE_STREAM: u8 = 1;

/// `op` byte of a put.
pub const OP_PUT: u8 = 1;
/// `op` byte of a delete.
pub const OP_DEL: u8 = 2;

/// A decoded payload, borrowing from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload<'a> {
    /// [`OP_PUT`] or [`OP_DEL`].
    pub op: u8,
    /// [`TABLE_STATE`] or [`TABLE_STREAM`].
    pub table: u8,
    /// The entry's address: `[scope, key]` or `[stream, group, item]`.
    pub parts: Vec<&'a str>,
    /// Offset of the value's bytes inside the payload and their length
    /// (puts only). The value is always the last field.
    pub value: Option<(usize, usize)>,
}

/// Why a payload did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended inside a field (a prefix was decoded, or garbage).
    #[error("payload ends inside a field")]
    Short,
    /// Bad op byte, bad UTF-8, or bytes left over.
    #[error("payload is not a kv record")]
    Invalid,
}

/// Encodes everything of a payload but the value: `op | table | n |
/// n × (u32 len + part) | [u32 len of the value]`. The value bytes follow
/// it unchanged, so a write need not copy them.
pub fn payload_prefix(op: u8, table: u8, parts: &[&str], value_len: Option<usize>) -> Vec<u8> {
    let mut p = Vec::with_capacity(3 + parts.iter().map(|s| 4 + s.len()).sum::<usize>() + 4);
    p.push(op);
    p.push(table);
    p.push(parts.len() as u8);
    for part in parts {
        p.extend_from_slice(&(part.len() as u32).to_le_bytes());
        p.extend_from_slice(part.as_bytes());
    }
    if let Some(n) = value_len {
        p.extend_from_slice(&(n as u32).to_le_bytes());
    }
    p
}

/// A whole v2 record (header + payload), for snapshots and tests.
pub fn encode_record(op: u8, table: u8, parts: &[&str], value: Option<&str>) -> Vec<u8> {
    let prefix = payload_prefix(op, table, parts, value.map(str::len));
    let value = value.unwrap_or("").as_bytes();
    iii_wal::frame::encode_record(RECORD_MARKER, &[&prefix, value])
}

/// Payload length of a put, used to size the live data.
pub fn put_payload_len(parts: &[&str], value_len: usize) -> u64 {
    3 + parts.iter().map(|p| 4 + p.len() as u64).sum::<u64>() + 4 + value_len as u64
}

/// Decodes a payload (or a prefix of one: a prefix that holds the parts
/// and the value's length decodes too, `value` then points past its end).
/// `full` says whether `p` is the whole payload, in which case the value
/// must end exactly at its end.
pub fn decode(p: &[u8], full: bool) -> Result<Payload<'_>, DecodeError> {
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], DecodeError> {
        let end = pos.checked_add(n).ok_or(DecodeError::Invalid)?;
        let s = p.get(*pos..end).ok_or(DecodeError::Short)?;
        *pos = end;
        Ok(s)
    };
    let read_len = |pos: &mut usize| -> Result<usize, DecodeError> {
        Ok(u32::from_le_bytes(take(pos, 4)?.try_into().expect("4 bytes")) as usize)
    };
    let head = take(&mut pos, 3)?;
    let (op, table, n) = (head[0], head[1], head[2]);
    if op != OP_PUT && op != OP_DEL {
        return Err(DecodeError::Invalid);
    }
    let mut parts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = read_len(&mut pos)?;
        let bytes = take(&mut pos, len)?;
        parts.push(std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid)?);
    }
    let value = if op == OP_PUT {
        let len = read_len(&mut pos)?;
        let start = pos;
        if full {
            let end = start.checked_add(len).ok_or(DecodeError::Invalid)?;
            if end != p.len() {
                return Err(DecodeError::Invalid);
            }
        }
        Some((start, len))
    } else {
        if full && pos != p.len() {
            return Err(DecodeError::Invalid);
        }
        None
    };
    Ok(Payload {
        op,
        table,
        parts,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_wal::frame::{parse_header, record_crc};

    #[test]
    fn a_record_round_trips_and_its_value_is_the_tail() {
        let rec = encode_record(OP_PUT, TABLE_STATE, &["s", "k"], Some("{\"a\":1}"));
        let h: [u8; 12] = rec[..12].try_into().unwrap();
        let (len, crc) = parse_header(RECORD_MARKER, &h).unwrap();
        let payload = &rec[12..];
        assert_eq!(len as usize, payload.len());
        assert_eq!(record_crc(len, &[payload]), crc);
        let d = decode(payload, true).unwrap();
        assert_eq!(d.parts, vec!["s", "k"]);
        let (start, n) = d.value.unwrap();
        assert_eq!(&payload[start..start + n], b"{\"a\":1}");
        assert_eq!(put_payload_len(&["s", "k"], 7), payload.len() as u64);
    }

    #[test]
    fn a_prefix_with_the_parts_decodes_without_the_value() {
        let rec = encode_record(OP_PUT, TABLE_STREAM, &["s", "g", "i"], Some("\"xxxx\""));
        let payload = &rec[12..];
        let d = decode(&payload[..payload.len() - 3], false).unwrap();
        assert_eq!(d.parts, vec!["s", "g", "i"]);
        assert_eq!(decode(&payload[..4], false), Err(DecodeError::Short));
        assert_eq!(
            decode(&payload[..payload.len() - 1], true),
            Err(DecodeError::Invalid)
        );
    }
}
