//! The log file: appends that are durable before they return, reads of
//! one record by offset, a streaming replay that tells a torn tail from
//! mid-log damage, and the rewrite that compaction, salvage and migration
//! share. Payloads are opaque here; a [`Layout`] checks their shape.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::frame::{
    self, Layout, ShapeError, FILE_HEADER, LEGACY_RECORD_HEADER, MAX_PAYLOAD, RECORD_HEADER,
};

/// Bytes of a payload read up front while scanning: enough for the
/// addressing fields of any ordinary record, so replay never buffers a value.
pub const SCAN_PREFIX: usize = 64 * 1024;
/// Read-ahead of the scanner.
const READ_BUF: usize = 256 * 1024;
/// Records up to this payload length are appended with a single write.
const COALESCE: usize = 64 * 1024;
/// Length of a record marker.
const MARKER_LEN: usize = 4;
/// Records named in a salvage report, at most.
const REPORT_KEYS: usize = 10;

/// Where a record sits in the log: its first byte and its payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Offset of the record header.
    pub off: u64,
    /// Payload length (the record is a header plus this many bytes).
    pub len: u32,
}

/// What to do when valid records follow a damaged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCorruption {
    /// Refuse to open (the default): nothing is changed on disk.
    #[default]
    Refuse,
    /// Keep every valid record, save the original log beside it.
    Salvage,
}

/// Failures of the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The file system said no.
    #[error("log I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with this log's header.
    #[error(
        "{path} is not an iii {log} log (bad header); move it away or point `data_dir` elsewhere"
    )]
    NotALog {
        /// The log's kind ([`Layout::name`]).
        log: &'static str,
        /// The file.
        path: String,
    },
    /// Valid records follow a damaged one and the policy is to refuse.
    #[error(
        "{log} log {path} is damaged at byte offset {offset} ({bytes} unreadable bytes) and \
         {records_after} valid records follow the damage; refusing to start so they are not \
         lost. Set `on_corruption: salvage` in the adapter's config to keep every valid record \
         (the original log is saved beside it)"
    )]
    MidLogDamage {
        /// The log's kind ([`Layout::name`]).
        log: &'static str,
        /// The file.
        path: String,
        /// Offset of the first damaged byte.
        offset: u64,
        /// Length of the first damaged region.
        bytes: u64,
        /// Valid records after the first damaged region.
        records_after: u64,
    },
    /// A record the index points at did not read back intact.
    #[error("{log} log {path}: the record at byte offset {offset} is damaged ({reason})")]
    BadRecord {
        /// The log's kind ([`Layout::name`]).
        log: &'static str,
        /// The file.
        path: String,
        /// Offset of the record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// One valid record met by the replay.
#[derive(Debug)]
pub struct Replayed<'a> {
    /// The payload's first bytes: all of it when it is at most [`SCAN_PREFIX`] long or when
    /// [`Layout::check`] asked for the whole payload, else the first [`SCAN_PREFIX`] bytes.
    pub head: &'a [u8],
    /// Where the record is.
    pub loc: Loc,
}

/// A stretch of the log between two valid records that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// First damaged byte.
    pub offset: u64,
    /// Length of the stretch.
    pub bytes: u64,
    /// Record headers found inside it (records that were there and are lost).
    pub records: u64,
    /// What those records are about ([`Layout::describe`]), when that still decodes.
    pub keys: Vec<String>,
}

/// What opening the log found.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Valid records replayed.
    pub records: u64,
    /// Bytes cut off the end: a write torn by a crash.
    pub torn_tail: u64,
    /// Mid-log damage that was salvaged (empty unless `Salvage`).
    pub damage: Vec<Damage>,
    /// Valid records after the first damaged region.
    pub records_after_damage: u64,
    /// The log was in the legacy format and must be rewritten before use.
    pub v1: bool,
    /// Where the original log was saved (salvage, or a legacy log with unread bytes).
    pub backup: Option<PathBuf>,
}

/// The log's record format: current (marked) or legacy (unmarked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    V1,
    V2,
}

impl Format {
    fn header_len(self) -> u64 {
        match self {
            Format::V1 => LEGACY_RECORD_HEADER,
            Format::V2 => RECORD_HEADER,
        }
    }
}

/// Reads at arbitrary offsets through one read-ahead buffer, so the
/// sequential replay costs few host calls and a resync can jump.
struct PosReader<'f> {
    file: &'f mut File,
    buf: Vec<u8>,
    start: u64,
    filled: usize,
}

impl<'f> PosReader<'f> {
    fn new(file: &'f mut File) -> Self {
        PosReader {
            file,
            buf: vec![0; READ_BUF],
            start: 0,
            filled: 0,
        }
    }

    fn read_at(&mut self, mut pos: u64, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            let end = self.start + self.filled as u64;
            if pos >= self.start && pos < end {
                let at = (pos - self.start) as usize;
                let n = (self.filled - at).min(out.len() - done);
                out[done..done + n].copy_from_slice(&self.buf[at..at + n]);
                done += n;
                pos += n as u64;
                continue;
            }
            if out.len() - done >= self.buf.len() {
                self.file.seek(SeekFrom::Start(pos))?;
                return self.file.read_exact(&mut out[done..]);
            }
            self.file.seek(SeekFrom::Start(pos))?;
            self.start = pos;
            self.filled = 0;
            while self.filled < self.buf.len() {
                match self.file.read(&mut self.buf[self.filled..]) {
                    Ok(0) => break,
                    Ok(n) => self.filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.filled == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

/// A record that checked out: its payload length and the decoded prefix.
struct Probed {
    len: u32,
    /// The first bytes of the payload (the whole payload when short).
    head: Vec<u8>,
}

/// Scratch buffers of a scan.
struct Scanner<'f> {
    layout: &'static Layout,
    r: PosReader<'f>,
    file_len: u64,
    format: Format,
    chunk: Vec<u8>,
}

impl Scanner<'_> {
    /// Checks the record at `pos` (header, bounds, checksum, shape) without
    /// buffering its value. `None` if there is no intact record there.
    fn probe(&mut self, pos: u64) -> io::Result<Option<Probed>> {
        let hlen = self.format.header_len();
        if self.file_len.saturating_sub(pos) < hlen {
            return Ok(None);
        }
        let mut h = [0u8; RECORD_HEADER as usize];
        self.r.read_at(pos, &mut h[..hlen as usize])?;
        let (len, crc) = match self.format {
            Format::V2 => match frame::parse_header(self.layout.marker, &h) {
                Some(lc) => lc,
                None => return Ok(None),
            },
            Format::V1 => (
                u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")),
                u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
            ),
        };
        if len > MAX_PAYLOAD || pos + hlen + len as u64 > self.file_len {
            return Ok(None);
        }
        let mut hasher = crc32fast::Hasher::new();
        if self.format == Format::V2 {
            hasher.update(&len.to_le_bytes());
        }
        let body = pos + hlen;
        let head_len = (len as usize).min(SCAN_PREFIX);
        let mut head = vec![0u8; head_len];
        self.r.read_at(body, &mut head)?;
        hasher.update(&head);
        let mut at = head_len as u64;
        while at < len as u64 {
            let n = ((len as u64 - at) as usize).min(self.chunk.len());
            let (r, chunk) = (&mut self.r, &mut self.chunk[..n]);
            r.read_at(body + at, chunk)?;
            hasher.update(chunk);
            at += n as u64;
        }
        if hasher.finalize() != crc {
            return Ok(None);
        }
        // The checksum holds, so `len` is real: reading the whole payload
        // for an address longer than the prefix is a legitimate allocation.
        if let Err(ShapeError::Short) = (self.layout.check)(&head, len) {
            if head_len < len as usize {
                head = vec![0u8; len as usize];
                self.r.read_at(body, &mut head)?;
            }
        }
        match (self.layout.check)(&head, len) {
            Ok(()) => Ok(Some(Probed { len, head })),
            Err(_) => Ok(None),
        }
    }

    /// The offset of the next intact v2 record after `from`, if any.
    fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut p = from;
        let mut window = vec![0u8; READ_BUF];
        while p + RECORD_HEADER <= self.file_len {
            let n = ((self.file_len - p) as usize).min(window.len());
            self.r.read_at(p, &mut window[..n])?;
            let mut i = 0;
            while i + MARKER_LEN <= n {
                if window[i..i + MARKER_LEN] == self.layout.marker
                    && self.probe(p + i as u64)?.is_some()
                {
                    return Ok(Some(p + i as u64));
                }
                i += 1;
            }
            if p + n as u64 >= self.file_len {
                break;
            }
            // Overlap so a marker across the window edge is seen.
            p += (n - (MARKER_LEN - 1)) as u64;
        }
        Ok(None)
    }

    /// Record headers inside a damaged stretch and what they are about.
    fn autopsy(&mut self, offset: u64, bytes: u64) -> io::Result<(u64, Vec<String>)> {
        let mut records = 0;
        let mut keys = Vec::new();
        let end = offset + bytes;
        let mut buf = vec![0u8; bytes.min(SCAN_PREFIX as u64) as usize];
        let mut p = offset;
        while p < end {
            let n = ((end - p) as usize).min(buf.len());
            self.r.read_at(p, &mut buf[..n])?;
            let mut i = 0;
            while i + MARKER_LEN <= n {
                if buf[i..i + MARKER_LEN] == self.layout.marker {
                    records += 1;
                    let at = p + i as u64 + RECORD_HEADER;
                    let m = (end.saturating_sub(at) as usize).min(SCAN_PREFIX);
                    let mut head = vec![0u8; m];
                    if self.r.read_at(at, &mut head).is_ok() {
                        if let Some(d) = (self.layout.describe)(&head) {
                            if keys.len() < REPORT_KEYS {
                                keys.push(d);
                            }
                        }
                    }
                }
                i += 1;
            }
            if p + n as u64 >= end {
                break;
            }
            p += (n - (MARKER_LEN - 1)) as u64;
        }
        // A flipped byte in a marker hides that record's header; the
        // stretch held at least one record all the same.
        Ok((records.max(1), keys))
    }
}

/// An open log positioned for appends.
pub struct Wal {
    layout: &'static Layout,
    path: PathBuf,
    file: File,
    /// Length of the file: header + records.
    len: u64,
    fsync: bool,
    format: Format,
}

fn io_path(p: &Path) -> String {
    p.display().to_string()
}

impl Wal {
    /// Opens (creating if needed) the log at `path` and streams every
    /// intact record to `visit` in log order.
    ///
    /// A torn tail (a bad stretch with no intact record after it) is cut
    /// off. Damage followed by intact records is refused, or with
    /// [`OnCorruption::Salvage`] skipped after the original is saved beside
    /// the log; the caller must then [`Wal::rewrite`] it. A legacy log is
    /// read the same way and must be rewritten too ([`OpenReport::v1`]).
    pub fn open(
        layout: &'static Layout,
        path: &Path,
        fsync: bool,
        policy: OnCorruption,
        mut visit: impl FnMut(Replayed<'_>) -> Result<(), WalError>,
    ) -> Result<(Wal, OpenReport), WalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file_len = file.metadata()?.len();
        let mut magic = [0u8; FILE_HEADER as usize];
        let got = read_up_to(&mut file, &mut magic)?;
        let format = if got == magic.len() && magic == layout.magic {
            Format::V2
        } else if got == magic.len() && Some(magic) == layout.legacy_magic {
            Format::V1
        } else if layout.magic.starts_with(&magic[..got]) && got as u64 == file_len {
            // Empty, or a crash while writing the header of a new log.
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&layout.magic)?;
            if fsync {
                file.sync_all()?;
            }
            let report = OpenReport {
                torn_tail: got as u64,
                ..OpenReport::default()
            };
            let wal = Wal {
                layout,
                path: path.to_path_buf(),
                file,
                len: FILE_HEADER,
                fsync,
                format: Format::V2,
            };
            return Ok((wal, report));
        } else {
            return Err(WalError::NotALog {
                log: layout.name,
                path: io_path(path),
            });
        };

        let mut report = OpenReport {
            v1: format == Format::V1,
            ..OpenReport::default()
        };
        let mut first_damage: Option<(u64, u64)> = None;
        let mut damage = Vec::new();
        let mut end = FILE_HEADER;
        {
            let mut sc = Scanner {
                layout,
                r: PosReader::new(&mut file),
                file_len,
                format,
                chunk: vec![0u8; READ_BUF],
            };
            let mut pos = FILE_HEADER;
            while pos < file_len {
                if let Some(p) = sc.probe(pos)? {
                    visit(Replayed {
                        head: &p.head,
                        loc: Loc {
                            off: pos,
                            len: p.len,
                        },
                    })?;
                    report.records += 1;
                    if first_damage.is_some() {
                        report.records_after_damage += 1;
                    }
                    pos += format.header_len() + p.len as u64;
                    end = pos;
                    continue;
                }
                // v1 has no markers to resynchronise on: its first bad
                // record ends what can be read.
                let next = match format {
                    Format::V2 => sc.resync(pos + 1)?,
                    Format::V1 => None,
                };
                match next {
                    None => break,
                    Some(q) => {
                        let (records, keys) = sc.autopsy(pos, q - pos)?;
                        first_damage.get_or_insert((pos, q - pos));
                        damage.push(Damage {
                            offset: pos,
                            bytes: q - pos,
                            records,
                            keys,
                        });
                        pos = q;
                    }
                }
            }
        }
        let unread = file_len - end;
        if let Some((offset, bytes)) = first_damage {
            if policy == OnCorruption::Refuse {
                return Err(WalError::MidLogDamage {
                    log: layout.name,
                    path: io_path(path),
                    offset,
                    bytes,
                    records_after: report.records_after_damage,
                });
            }
            report.damage = damage;
            report.backup = Some(save_beside(layout, path, "corrupt")?);
            report.torn_tail = unread;
        } else if unread > 0 {
            if format == Format::V1 {
                // v1 cannot tell a torn tail from damage: keep the bytes.
                report.backup = Some(save_beside(layout, path, "v1")?);
            } else {
                file.set_len(end)?;
                if fsync {
                    file.sync_all()?;
                }
            }
            report.torn_tail = unread;
        }
        file.seek(SeekFrom::Start(end))?;
        let wal = Wal {
            layout,
            path: path.to_path_buf(),
            file,
            len: end,
            fsync,
            format,
        };
        Ok((wal, report))
    }

    /// Appends a record whose payload is `pieces` (concatenated) and, with
    /// fsync on, makes it durable before returning. Returns where it went.
    pub fn append(&mut self, pieces: &[&[u8]]) -> Result<Loc, WalError> {
        let loc = self.append_unsynced(pieces)?;
        if self.fsync {
            if let Err(e) = self.file.sync_data() {
                // The record may or may not be on disk: take it back so the
                // caller's failure is the truth.
                self.len = loc.off;
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(SeekFrom::Start(self.len));
                return Err(e.into());
            }
        }
        Ok(loc)
    }

    /// Appends a record without syncing, for a batch that ends with
    /// [`Wal::sync`] (or for state that may be lost, like a lapsed lease).
    pub fn append_unsynced(&mut self, pieces: &[&[u8]]) -> Result<Loc, WalError> {
        debug_assert_eq!(self.format, Format::V2, "a legacy log is rewritten at open");
        let header = frame::record_header(self.layout.marker, pieces);
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if len > MAX_PAYLOAD as usize {
            return Err(WalError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a record of {len} bytes is over the log's limit of {MAX_PAYLOAD}"),
            )));
        }
        let loc = Loc {
            off: self.len,
            len: len as u32,
        };
        let written = (|| {
            if len <= COALESCE {
                // One write, not one per piece: under WASI every write is a host call.
                let mut rec = Vec::with_capacity(RECORD_HEADER as usize + len);
                rec.extend_from_slice(&header);
                for p in pieces {
                    rec.extend_from_slice(p);
                }
                self.file.write_all(&rec)?;
            } else {
                // A large value is written where it is, not copied.
                self.file.write_all(&header)?;
                for p in pieces {
                    self.file.write_all(p)?;
                }
            }
            Ok::<(), io::Error>(())
        })();
        if let Err(e) = written {
            // Never leave half a record before the next append.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(e.into());
        }
        self.len += RECORD_HEADER + loc.len as u64;
        Ok(loc)
    }

    /// Makes every append so far durable (a no-op with fsync off).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// The error of a record at `off` that is not what its reader expected.
    pub fn bad_record(&self, off: u64, reason: impl Into<String>) -> WalError {
        WalError::BadRecord {
            log: self.layout.name,
            path: io_path(&self.path),
            offset: off,
            reason: reason.into(),
        }
    }

    /// Reads the payload at `loc` and checks its checksum.
    pub fn read_payload(&mut self, loc: Loc) -> Result<Vec<u8>, WalError> {
        let hlen = self.format.header_len();
        let mut buf = vec![0u8; hlen as usize + loc.len as usize];
        self.file.seek(SeekFrom::Start(loc.off))?;
        let read = self.file.read_exact(&mut buf);
        self.file.seek(SeekFrom::Start(self.len))?;
        let bad = |reason: &str| self.bad_record(loc.off, reason);
        read.map_err(|e| bad(&format!("short read: {e}")))?;
        let (len, crc, ok_marker) = match self.format {
            Format::V2 => {
                let h: [u8; RECORD_HEADER as usize] =
                    buf[..RECORD_HEADER as usize].try_into().expect("12 bytes");
                match frame::parse_header(self.layout.marker, &h) {
                    Some((l, c)) => (l, c, true),
                    None => (0, 0, false),
                }
            }
            Format::V1 => (
                u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")),
                u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")),
                true,
            ),
        };
        if !ok_marker || len != loc.len {
            return Err(bad("header does not match the index"));
        }
        let payload = &buf[hlen as usize..];
        let actual = match self.format {
            Format::V2 => frame::record_crc(len, &[payload]),
            Format::V1 => crc32fast::hash(payload),
        };
        if actual != crc {
            return Err(bad("checksum mismatch"));
        }
        buf.drain(..hlen as usize);
        Ok(buf)
    }

    /// Bytes in the log file, header included.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Replaces the log with copies of the records at `locs` (the live
    /// entries, in order), one record in memory at a time. Returns the
    /// records' new places. See [`Wal::rewrite_with`].
    pub fn rewrite(&mut self, locs: &[Loc]) -> Result<Vec<Loc>, WalError> {
        self.rewrite_with(|w| locs.iter().map(|&loc| w.copy(loc)).collect())
    }

    /// Replaces the log with what `fill` writes to a [`Rewriter`]: copies of
    /// existing records and new ones. Written to a side file, synced, then
    /// renamed over the log, so a crash leaves either the old or the new
    /// complete log. If `fill` fails the old log stays as it was.
    pub fn rewrite_with<T>(
        &mut self,
        fill: impl FnOnce(&mut Rewriter<'_>) -> Result<T, WalError>,
    ) -> Result<T, WalError> {
        let tmp = self.path.with_extension("compact");
        let out = {
            let mut w = Rewriter {
                out: io::BufWriter::with_capacity(READ_BUF, File::create(&tmp)?),
                at: FILE_HEADER,
                from: self,
            };
            let written = (|| {
                w.out.write_all(&w.from.layout.magic)?;
                let out = fill(&mut w)?;
                let f = w.out.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                Ok::<T, WalError>(out)
            })();
            match written {
                Ok(out) => out,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        };
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path);
        let mut file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.len = file.seek(SeekFrom::End(0))?;
        self.file = file;
        self.format = Format::V2;
        Ok(out)
    }
}

/// The new log being written by [`Wal::rewrite_with`].
pub struct Rewriter<'w> {
    from: &'w mut Wal,
    out: io::BufWriter<File>,
    at: u64,
}

impl Rewriter<'_> {
    /// Copies the old log's record at `loc`; returns its new place.
    pub fn copy(&mut self, loc: Loc) -> Result<Loc, WalError> {
        let payload = self.from.read_payload(loc)?;
        self.append(&[&payload])
    }

    /// Writes a new record; returns its place.
    pub fn append(&mut self, pieces: &[&[u8]]) -> Result<Loc, WalError> {
        let header = frame::record_header(self.from.layout.marker, pieces);
        self.out.write_all(&header)?;
        let mut len = 0usize;
        for p in pieces {
            self.out.write_all(p)?;
            len += p.len();
        }
        let loc = Loc {
            off: self.at,
            len: len as u32,
        };
        self.at += RECORD_HEADER + len as u64;
        Ok(loc)
    }

    /// Reads the old log's payload at `loc` (checksum verified).
    pub fn read(&mut self, loc: Loc) -> Result<Vec<u8>, WalError> {
        self.from.read_payload(loc)
    }
}

/// Persists a rename; some platforms cannot open directories, where the
/// rename is already as durable as it gets.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Saves the log as `<name>.<tag>-<unix seconds>` beside it: a hard link
/// when the file system allows (the rewrite then leaves the old inode to
/// it), else a streamed copy.
fn save_beside(layout: &Layout, path: &Path, tag: &str) -> io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| layout.file_name.into());
    let mut dest = path.with_file_name(format!("{name}.{tag}-{secs}"));
    let mut n = 1;
    while dest.exists() {
        dest = path.with_file_name(format!("{name}.{tag}-{secs}-{n}"));
        n += 1;
    }
    if std::fs::hard_link(path, &dest).is_err() {
        let mut from = File::open(path)?;
        let mut to = File::create(&dest)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
    }
    sync_dir(&dest);
    Ok(dest)
}
