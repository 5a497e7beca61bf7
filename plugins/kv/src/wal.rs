//! Write-ahead log: length-prefixed, CRC32-checksummed records appended to one
//! file and fsynced before a write is acknowledged. See README.md.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File magic + format version; a file without it is not ours.
const MAGIC: &[u8; 8] = b"IIIKVWL1";
/// Upper bound of one record; a larger length prefix is garbage, not data.
const MAX_RECORD: u32 = 256 * 1024 * 1024;

pub const TABLE_STATE: u8 = 0;
pub const TABLE_STREAM: u8 = 1;

const OP_PUT: u8 = 1;
const OP_DEL: u8 = 2;

/// One logged mutation. `parts` address the entry: `[scope, key]` for state,
/// `[stream, group, item]` for stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Put {
        table: u8,
        parts: Vec<String>,
        value: String,
    },
    Del {
        table: u8,
        parts: Vec<String>,
    },
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Record {
    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let (op, table, parts, value) = match self {
            Record::Put {
                table,
                parts,
                value,
            } => (OP_PUT, *table, parts, Some(value)),
            Record::Del { table, parts } => (OP_DEL, *table, parts, None),
        };
        p.push(op);
        p.push(table);
        p.push(parts.len() as u8);
        for part in parts {
            put_bytes(&mut p, part.as_bytes());
        }
        if let Some(v) = value {
            put_bytes(&mut p, v.as_bytes());
        }
        p
    }

    /// The framed record: `len u32 LE | crc32(payload) u32 LE | payload`.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.payload();
        let mut out = Vec::with_capacity(8 + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Framed size of a put, used to estimate the live size of the data.
    pub fn put_size(parts: &[&str], value: &str) -> u64 {
        8 + 3 + parts.iter().map(|p| 4 + p.len() as u64).sum::<u64>() + 4 + value.len() as u64
    }

    fn decode(payload: &[u8]) -> Option<Record> {
        let mut pos = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = payload.get(pos..pos.checked_add(n)?)?;
            pos += n;
            Some(s)
        };
        let head = take(3)?;
        let (op, table, n) = (head[0], head[1], head[2]);
        let mut read_str = || -> Option<String> {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            String::from_utf8(take(len)?.to_vec()).ok()
        };
        let mut parts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            parts.push(read_str()?);
        }
        let rec = match op {
            OP_PUT => Record::Put {
                table,
                parts,
                value: read_str()?,
            },
            OP_DEL => Record::Del { table, parts },
            _ => return None,
        };
        Some(rec)
    }
}

/// Outcome of reading a log at open.
pub struct Replay {
    pub records: Vec<Record>,
    /// Bytes after the last intact record that were cut off (a torn write).
    pub discarded_tail: u64,
}

/// An open log file positioned for appends.
pub struct Wal {
    path: PathBuf,
    file: File,
    /// Current length of the file (header + intact records).
    len: u64,
    fsync: bool,
}

impl Wal {
    /// Opens (creating if needed) `path`, reads every intact record, and cuts
    /// a torn tail off so new appends follow the last good record.
    pub fn open(path: &Path, fsync: bool) -> io::Result<(Wal, Replay)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        if buf.is_empty() {
            file.write_all(MAGIC)?;
            if fsync {
                file.sync_all()?;
            }
            let wal = Wal {
                path: path.to_path_buf(),
                file,
                len: MAGIC.len() as u64,
                fsync,
            };
            return Ok((
                wal,
                Replay {
                    records: Vec::new(),
                    discarded_tail: 0,
                },
            ));
        }
        if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
            // A crash while writing the header of a brand-new log leaves a
            // prefix of the magic; anything else is a foreign file we must
            // not overwrite.
            if MAGIC.starts_with(&buf) {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                file.write_all(MAGIC)?;
                if fsync {
                    file.sync_all()?;
                }
                let discarded_tail = buf.len() as u64;
                let wal = Wal {
                    path: path.to_path_buf(),
                    file,
                    len: MAGIC.len() as u64,
                    fsync,
                };
                return Ok((
                    wal,
                    Replay {
                        records: Vec::new(),
                        discarded_tail,
                    },
                ));
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not an iii kv log (bad header)", path.display()),
            ));
        }
        let (records, good) = scan(&buf);
        let discarded_tail = buf.len() as u64 - good;
        if discarded_tail > 0 {
            file.set_len(good)?;
            if fsync {
                file.sync_all()?;
            }
        }
        file.seek(SeekFrom::Start(good))?;
        let wal = Wal {
            path: path.to_path_buf(),
            file,
            len: good,
            fsync,
        };
        Ok((
            wal,
            Replay {
                records,
                discarded_tail,
            },
        ))
    }

    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        let bytes = rec.encode();
        if let Err(e) = self.file.write_all(&bytes) {
            // Never leave half a record before the next append: cut back to
            // the last good length (replay would drop it, but later records
            // would then be unreachable).
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(e);
        }
        if self.fsync {
            if let Err(e) = self.file.sync_data() {
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(SeekFrom::Start(self.len));
                return Err(e);
            }
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes in the log file, header included.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Replaces the log with `records` (a snapshot of the live data): written
    /// to a side file, synced, then renamed over the log, so a crash at any
    /// point leaves either the old or the new complete log.
    pub fn rewrite(&mut self, records: impl Iterator<Item = Record>) -> io::Result<()> {
        let tmp = self.path.with_extension("compact");
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        for r in records {
            out.extend_from_slice(&r.encode());
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // Persist the rename; some platforms cannot open directories,
            // where the rename is already as durable as it gets.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let mut file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        file.seek(SeekFrom::End(0))?;
        self.file = file;
        self.len = out.len() as u64;
        Ok(())
    }
}

/// Decodes records after the header; returns them with the offset just past
/// the last intact one. Stops at the first short or corrupt record.
fn scan(buf: &[u8]) -> (Vec<Record>, u64) {
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    while let Some(head) = buf.get(pos..pos + 8) {
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = buf.get(pos + 8..pos + 8 + len as usize) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(rec) = Record::decode(payload) else {
            break;
        };
        records.push(rec);
        pos += 8 + len as usize;
    }
    (records, pos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Record {
        Record::Put {
            table: TABLE_STATE,
            parts: vec!["s".into(), k.into()],
            value: v.into(),
        }
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_records_survive() {
        let dir = std::env::temp_dir().join(format!("iii-kv-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wal");
        let _ = std::fs::remove_file(&path);
        {
            let (mut w, _) = Wal::open(&path, true).unwrap();
            w.append(&put("a", "1")).unwrap();
            w.append(&put("b", "2")).unwrap();
        }
        let full = std::fs::metadata(&path).unwrap().len();
        // Half of a third record.
        let third = put("c", "3").encode();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&third[..third.len() / 2]).unwrap();
        drop(f);
        let (mut w, replay) = Wal::open(&path, true).unwrap();
        assert_eq!(replay.records, vec![put("a", "1"), put("b", "2")]);
        assert_eq!(replay.discarded_tail, (third.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
        w.append(&put("d", "4")).unwrap();
        drop(w);
        let (_, replay) = Wal::open(&path, true).unwrap();
        assert_eq!(replay.records.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
