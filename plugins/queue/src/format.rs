//! Byte layout of the queue log's payloads (the framing is `iii-wal`'s). See README.md.
//!
//! Every payload starts with an op byte and names its queue and message id. Strings are
//! `u32 LE length + UTF-8`; an optional string is a `0`/`1` byte and then the string.

use iii_wal::ShapeError;

/// Header of a queue log: magic + format version.
pub const MAGIC: [u8; 8] = *b"IIIQUWL1";
/// First bytes of every record (`0xFF` never occurs in UTF-8 text).
pub const RECORD_MARKER: [u8; 4] = [0xFF, b'Q', b'U', 0xA7];

/// A message arrived: `queue | id | group? | max_attempts u32 | ready_at u64 |
/// meta_len u32 | payload_len u32 | meta | payload`. The two JSON texts are last, so replay
/// reads only the fields before them.
pub const OP_ENQUEUE: u8 = 1;
/// A failed or lapsed attempt: `queue | id | attempts u32 | ready_at u64`.
pub const OP_RETRY: u8 = 2;
/// Dead-lettered: `queue | id | attempts u32 | failed_at u64 | error`.
pub const OP_DEAD: u8 = 3;
/// Dead letters back to ready: `queue | id? (none: all of the queue) | ready_at u64`.
pub const OP_REDRIVE: u8 = 4;
/// Acknowledged (deleted): `queue | id`.
pub const OP_ACK: u8 = 5;
/// A dead letter deleted: `queue | id`.
pub const OP_DISCARD: u8 = 6;

/// A decoded record, borrowing from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// [`OP_ENQUEUE`]. `meta` is the offset of the meta text in the payload; the payload
    /// text follows it.
    Enqueue {
        /// The queue.
        queue: &'a str,
        /// The message id.
        id: &'a str,
        /// The FIFO group.
        group: Option<&'a str>,
        /// The attempt limit.
        max_attempts: u32,
        /// When it is first due, ms since the epoch.
        ready_at: u64,
        /// Offset of the meta text inside the payload.
        meta_at: usize,
        /// Length of the meta text.
        meta_len: usize,
        /// Length of the payload text (it follows the meta).
        payload_len: usize,
    },
    /// [`OP_RETRY`].
    Retry {
        /// The queue.
        queue: &'a str,
        /// The message id.
        id: &'a str,
        /// Attempts made.
        attempts: u32,
        /// When it is due again.
        ready_at: u64,
    },
    /// [`OP_DEAD`].
    Dead {
        /// The queue.
        queue: &'a str,
        /// The message id.
        id: &'a str,
        /// Attempts made.
        attempts: u32,
        /// When, ms since the epoch.
        failed_at: u64,
        /// The last failure's text.
        error: &'a str,
    },
    /// [`OP_REDRIVE`].
    Redrive {
        /// The queue.
        queue: &'a str,
        /// One dead letter, or all of the queue.
        id: Option<&'a str>,
        /// When they are ready.
        ready_at: u64,
    },
    /// [`OP_ACK`].
    Ack {
        /// The queue.
        queue: &'a str,
        /// The message id.
        id: &'a str,
    },
    /// [`OP_DISCARD`].
    Discard {
        /// The queue.
        queue: &'a str,
        /// The message id.
        id: &'a str,
    },
}

impl Record<'_> {
    /// `queue/id` (or `queue/*` for a redrive of all), for reports.
    pub fn describe(&self) -> String {
        match self {
            Record::Enqueue { queue, id, .. }
            | Record::Retry { queue, id, .. }
            | Record::Dead { queue, id, .. }
            | Record::Ack { queue, id }
            | Record::Discard { queue, id } => format!("{queue}/{id}"),
            Record::Redrive { queue, id, .. } => format!("{queue}/{}", id.unwrap_or("*")),
        }
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(op: u8) -> Writer {
        Writer(vec![op])
    }
    fn str(mut self, s: &str) -> Writer {
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn opt(mut self, s: Option<&str>) -> Writer {
        match s {
            None => {
                self.0.push(0);
                self
            }
            Some(s) => {
                self.0.push(1);
                self.str(s)
            }
        }
    }
    fn u32(mut self, n: u32) -> Writer {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn u64(mut self, n: u64) -> Writer {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
}

/// Everything of an enqueue payload but the two texts, which follow it unchanged (so a
/// write need not copy them).
pub fn enqueue_prefix(
    queue: &str,
    id: &str,
    group: Option<&str>,
    max_attempts: u32,
    ready_at: u64,
    meta_len: usize,
    payload_len: usize,
) -> Vec<u8> {
    Writer::new(OP_ENQUEUE)
        .str(queue)
        .str(id)
        .opt(group)
        .u32(max_attempts)
        .u64(ready_at)
        .u32(meta_len as u32)
        .u32(payload_len as u32)
        .0
}

/// Payload of a retry record.
pub fn retry(queue: &str, id: &str, attempts: u32, ready_at: u64) -> Vec<u8> {
    Writer::new(OP_RETRY)
        .str(queue)
        .str(id)
        .u32(attempts)
        .u64(ready_at)
        .0
}

/// Payload of a dead-letter record.
pub fn dead(queue: &str, id: &str, attempts: u32, failed_at: u64, error: &str) -> Vec<u8> {
    Writer::new(OP_DEAD)
        .str(queue)
        .str(id)
        .u32(attempts)
        .u64(failed_at)
        .str(error)
        .0
}

/// Payload of a redrive record.
pub fn redrive(queue: &str, id: Option<&str>, ready_at: u64) -> Vec<u8> {
    Writer::new(OP_REDRIVE).str(queue).opt(id).u64(ready_at).0
}

/// Payload of an ack record.
pub fn ack(queue: &str, id: &str) -> Vec<u8> {
    Writer::new(OP_ACK).str(queue).str(id).0
}

/// Payload of a discard record.
pub fn discard(queue: &str, id: &str) -> Vec<u8> {
    Writer::new(OP_DISCARD).str(queue).str(id).0
}

/// Length of an enqueue payload, to account for the live data.
pub fn enqueue_len(queue: &str, id: &str, group: Option<&str>, meta: usize, payload: usize) -> u64 {
    let group = 1 + group.map_or(0, |g| 4 + g.len());
    (1 + 4 + queue.len() + 4 + id.len() + group + 4 + 8 + 4 + 4 + meta + payload) as u64
}

struct Reader<'a> {
    p: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ShapeError> {
        let end = self.pos.checked_add(n).ok_or(ShapeError::Invalid)?;
        let s = self.p.get(self.pos..end).ok_or(ShapeError::Short)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ShapeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, ShapeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str(&mut self) -> Result<&'a str, ShapeError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| ShapeError::Invalid)
    }
    fn opt(&mut self) -> Result<Option<&'a str>, ShapeError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(ShapeError::Invalid),
        }
    }
}

/// Decodes `head`, the first bytes of a payload `len` bytes long. An enqueue decodes from a
/// prefix that reaches its two lengths (the texts may lie beyond `head`); every other record
/// must be whole. The lengths must add up to exactly `len`.
pub fn decode(head: &[u8], len: usize) -> Result<Record<'_>, ShapeError> {
    let mut r = Reader { p: head, pos: 0 };
    let op = r.take(1)?[0];
    let queue = r.str()?;
    let rec = match op {
        OP_ENQUEUE => {
            let id = r.str()?;
            let group = r.opt()?;
            let max_attempts = r.u32()?;
            let ready_at = r.u64()?;
            let meta_len = r.u32()? as usize;
            let payload_len = r.u32()? as usize;
            let end = r
                .pos
                .checked_add(meta_len)
                .and_then(|n| n.checked_add(payload_len));
            if end != Some(len) {
                return Err(ShapeError::Invalid);
            }
            return Ok(Record::Enqueue {
                queue,
                id,
                group,
                max_attempts,
                ready_at,
                meta_at: r.pos,
                meta_len,
                payload_len,
            });
        }
        OP_RETRY => Record::Retry {
            queue,
            id: r.str()?,
            attempts: r.u32()?,
            ready_at: r.u64()?,
        },
        OP_DEAD => Record::Dead {
            queue,
            id: r.str()?,
            attempts: r.u32()?,
            failed_at: r.u64()?,
            error: r.str()?,
        },
        OP_REDRIVE => Record::Redrive {
            queue,
            id: r.opt()?,
            ready_at: r.u64()?,
        },
        OP_ACK => Record::Ack {
            queue,
            id: r.str()?,
        },
        OP_DISCARD => Record::Discard {
            queue,
            id: r.str()?,
        },
        _ => return Err(ShapeError::Invalid),
    };
    if r.pos != len {
        return Err(ShapeError::Invalid);
    }
    Ok(rec)
}

/// What a queue log looks like to `iii-wal`.
pub static LAYOUT: iii_wal::Layout = iii_wal::Layout {
    name: "queue",
    file_name: "queue.wal",
    magic: MAGIC,
    legacy_magic: None,
    marker: RECORD_MARKER,
    check: |head, len| decode(head, len as usize).map(|_| ()),
    describe: |head| {
        // A damaged region's record may be cut short: name what still decodes.
        let mut r = Reader { p: head, pos: 0 };
        let op = r.take(1).ok()?[0];
        let queue = r.str().ok()?;
        let id = if op == OP_REDRIVE {
            r.opt().ok()?.unwrap_or("*")
        } else {
            r.str().ok()?
        };
        Some(format!("{queue}/{id}"))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enqueue_decodes_from_a_prefix_and_its_lengths_must_add_up() {
        let prefix = enqueue_prefix("q", "m1", Some("g"), 3, 42, 2, 5);
        let mut whole = prefix.clone();
        whole.extend_from_slice(b"{}\"abc\"");
        assert_eq!(whole.len() as u64, enqueue_len("q", "m1", Some("g"), 2, 5));
        let Record::Enqueue {
            queue,
            id,
            group,
            max_attempts,
            ready_at,
            meta_at,
            meta_len,
            payload_len,
        } = decode(&prefix, whole.len()).unwrap()
        else {
            panic!("not an enqueue")
        };
        assert_eq!((queue, id, group), ("q", "m1", Some("g")));
        assert_eq!((max_attempts, ready_at), (3, 42));
        assert_eq!(&whole[meta_at..meta_at + meta_len], b"{}");
        assert_eq!(payload_len, 5);
        assert_eq!(decode(&whole, whole.len() + 1), Err(ShapeError::Invalid));
        assert_eq!(decode(&prefix[..6], whole.len()), Err(ShapeError::Short));
    }

    #[test]
    fn the_other_records_round_trip_and_must_be_whole() {
        let cases = [
            (retry("q", "a", 2, 9), "q/a"),
            (dead("q", "a", 3, 10, "boom"), "q/a"),
            (redrive("q", None, 11), "q/*"),
            (redrive("q", Some("a"), 11), "q/a"),
            (ack("q", "a"), "q/a"),
            (discard("q", "a"), "q/a"),
        ];
        for (p, name) in cases {
            assert_eq!(decode(&p, p.len()).unwrap().describe(), name);
            assert_eq!((LAYOUT.describe)(&p).as_deref(), Some(name));
            assert_eq!(decode(&p[..p.len() - 1], p.len()), Err(ShapeError::Short));
            let mut longer = p.clone();
            longer.push(0);
            assert_eq!(decode(&longer, longer.len()), Err(ShapeError::Invalid));
        }
        assert_eq!(decode(&[9, 0, 0, 0, 0], 5), Err(ShapeError::Invalid));
    }
}
