//! The one protocol between the host and the guest agent (PID 1).
//!
//! A frame is `len: u32 LE` (of what follows), `kind: u8`, then `len - 1`
//! payload bytes. A session is one exec or one file operation: the client
//! opens it with [`Kind::Exec`] or [`Kind::Fs`], and the agent ends it with
//! [`Kind::Exit`] or [`Kind::FsResult`] (or [`Kind::Error`]). Over vsock (and
//! the namespace runtime's Unix socket) each session has its own connection;
//! over a serial port sessions follow each other on the one stream.
//!
//! Streaming file sessions: a [`FsRequest::Write`] with `stream: true` is
//! followed by [`Kind::Stdin`] chunks (at most [`FS_CHUNK`] bytes each) and an
//! empty one; the agent then answers one [`Kind::FsResult`]. A
//! [`FsRequest::ReadStream`] is answered with [`Kind::FsMeta`], then
//! [`Kind::FsData`] chunks, then [`Kind::FsResult`].

#![deny(clippy::cast_possible_truncation)]

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub mod client;

/// vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 52;
/// Exit code reported when an exec hits its timeout (as coreutils `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Upper bound for one frame, so a corrupt length cannot exhaust memory.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest data chunk of a streaming file session, either way.
pub const FS_CHUNK: usize = 64 << 10;
/// Bit 0 of the flags of an 8-byte [`Kind::Exit`]: the process was killed by
/// the session's `timeout_ms`.
pub const EXIT_FLAG_TIMED_OUT: i32 = 1;

/// The S-codes the agent puts in [`FsResponse::code`] (the `sandbox::fs::*`
/// error catalogue; the host maps them 1:1 to its error envelope).
pub mod codes {
    /// Invalid request (bad shape, a directory where a file list was expected).
    pub const INVALID: &str = "S210";
    /// File not found, or a parent directory not found.
    pub const NOT_FOUND: &str = "S211";
    /// Not a directory, or otherwise the wrong type.
    pub const WRONG_TYPE: &str = "S212";
    /// The target already exists.
    pub const EXISTS: &str = "S213";
    /// Directory not empty.
    pub const NOT_EMPTY: &str = "S214";
    /// Permission denied.
    pub const PERMISSION: &str = "S215";
    /// Any other I/O error.
    pub const IO: &str = "S216";
    /// The grep / sed pattern is not a valid regex.
    pub const REGEX: &str = "S217";
    /// An operation this agent does not know.
    pub const UNSUPPORTED: &str = "S219";
}

/// The frame type, the byte after the length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    // client → agent
    /// Opens an exec session; the payload is a JSON [`ExecRequest`].
    Exec = 1,
    /// Bytes for the process's stdin; an empty payload closes stdin.
    Stdin = 2,
    /// i32 LE signal number, delivered to the process group.
    Signal = 3,
    /// u16 LE rows, u16 LE cols.
    Resize = 4,
    /// Opens a file session; the payload is a [`pack`]ed [`FsRequest`] and its data.
    Fs = 5,
    /// Liveness probe; the agent answers [`Kind::Pong`].
    Ping = 6,
    /// Ask the guest to sync and power off.
    Poweroff = 7,
    // agent → client
    /// Bytes the process wrote to stdout (or to the PTY, for a `tty` session).
    Stdout = 16,
    /// Bytes the process wrote to stderr.
    Stderr = 17,
    /// i32 LE exit code (128 + signal for a signalled process, 124 on timeout),
    /// optionally followed by i32 LE flags ([`EXIT_FLAG_TIMED_OUT`]).
    Exit = 18,
    /// UTF-8 message; ends the session.
    Error = 19,
    /// Ends a file session; the payload is a [`pack`]ed [`FsResponse`] and any data read.
    FsResult = 20,
    /// The answer to [`Kind::Ping`].
    Pong = 21,
    /// First answer to [`FsRequest::ReadStream`]: a JSON [`FileInfo`].
    FsMeta = 22,
    /// A chunk (at most [`FS_CHUNK`] bytes) of a streamed read.
    FsData = 23,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        use Kind::*;
        Some(match v {
            1 => Exec,
            2 => Stdin,
            3 => Signal,
            4 => Resize,
            5 => Fs,
            6 => Ping,
            7 => Poweroff,
            16 => Stdout,
            17 => Stderr,
            18 => Exit,
            19 => Error,
            20 => FsResult,
            21 => Pong,
            22 => FsMeta,
            23 => FsData,
            _ => return None,
        })
    }
}

/// Why reading, writing or decoding a frame or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The peer closed the stream, at a frame boundary or inside a frame.
    #[error("connection closed")]
    Closed,
    /// The underlying stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A frame (or a packed header) longer than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A length prefix of zero: no room for the kind byte.
    #[error("empty frame")]
    Empty,
    /// A kind byte that names no [`Kind`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A payload that does not decode as its kind requires.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which payload shape was expected.
        what: &'static str,
        /// What the decoder found wrong.
        detail: String,
    },
    /// A valid frame whose kind is not allowed at this point of the session.
    #[error("unexpected {0:?} frame")]
    Unexpected(Kind),
    /// The agent ended the session with a [`Kind::Error`] message.
    #[error("agent error: {0}")]
    Agent(String),
    /// The VMM socket could not be reached or the `CONNECT` handshake failed.
    #[error("cannot reach the VM: {0}")]
    Connect(String),
}

/// One decoded frame: its kind and the bytes after the kind byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame type.
    pub kind: Kind,
    /// The payload, whose layout depends on `kind`.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame of `kind` carrying `payload` as is.
    pub fn new(kind: Kind, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            payload: payload.into(),
        }
    }

    /// The legacy 4-byte [`Kind::Exit`] frame that ends an exec session with `code`.
    pub fn exit(code: i32) -> Self {
        Self::new(Kind::Exit, code.to_le_bytes().to_vec())
    }

    /// The 8-byte [`Kind::Exit`] frame: `code`, then `flags` ([`EXIT_FLAG_TIMED_OUT`]).
    pub fn exit_with(code: i32, flags: i32) -> Self {
        let mut p = code.to_le_bytes().to_vec();
        p.extend_from_slice(&flags.to_le_bytes());
        Self::new(Kind::Exit, p)
    }

    /// Decodes an exit payload of either size: `(code, flags)`, flags 0 for 4 bytes.
    pub fn exit_payload(&self) -> Result<(i32, i32), ProtoError> {
        let p = &self.payload;
        let word = |i: usize| i32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        match p.len() {
            4 => Ok((word(0), 0)),
            8 => Ok((word(0), word(4))),
            n => Err(ProtoError::Malformed {
                what: "exit payload",
                detail: format!("{n} bytes, want 4 or 8"),
            }),
        }
    }

    /// A terminal size change for a `tty` session.
    pub fn resize(rows: u16, cols: u16) -> Self {
        let mut p = rows.to_le_bytes().to_vec();
        p.extend_from_slice(&cols.to_le_bytes());
        Self::new(Kind::Resize, p)
    }

    /// A signal for the session's process group.
    pub fn signal(sig: i32) -> Self {
        Self::new(Kind::Signal, sig.to_le_bytes().to_vec())
    }

    /// Decodes the payload as one little-endian `i32` (exit code, signal number).
    pub fn i32_payload(&self) -> Result<i32, ProtoError> {
        let b: [u8; 4] = self
            .payload
            .as_slice()
            .try_into()
            .map_err(|_| ProtoError::Malformed {
                what: "integer payload",
                detail: format!("{} bytes", self.payload.len()),
            })?;
        Ok(i32::from_le_bytes(b))
    }

    /// Decodes the payload as JSON.
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtoError> {
        serde_json::from_slice(&self.payload).map_err(|e| ProtoError::Malformed {
            what: "JSON payload",
            detail: e.to_string(),
        })
    }

    /// A frame of `kind` whose payload is `v` serialized as JSON.
    pub fn with_json<T: Serialize>(kind: Kind, v: &T) -> Self {
        // Serializing plain structs of strings and numbers cannot fail.
        Self::new(kind, serde_json::to_vec(v).expect("serializable"))
    }
}

/// Writes `f` (length prefix, kind, payload) in one `write_all` and flushes.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<(), ProtoError> {
    let len = f.payload.len() + 1;
    let wire_len = match u32::try_from(len) {
        Ok(n) if len <= MAX_FRAME => n,
        _ => return Err(ProtoError::TooLarge(len)),
    };
    let mut buf = Vec::with_capacity(5 + f.payload.len());
    buf.extend_from_slice(&wire_len.to_le_bytes());
    buf.push(f.kind as u8);
    buf.extend_from_slice(&f.payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame, refusing empty, oversized and unknown-kind frames.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return Err(ProtoError::Empty);
    }
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            e.into()
        }
    })?;
    let kind = Kind::from_u8(body[0]).ok_or(ProtoError::UnknownKind(body[0]))?;
    body.remove(0);
    Ok(Frame {
        kind,
        payload: body,
    })
}

/// What to run. `user` is `uid[:gid]` (numeric; the root filesystem may
/// have no passwd database).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// The process's whole environment (a standard `PATH` is added when absent).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// `uid[:gid]` to run as (default root).
    #[serde(default)]
    pub user: Option<String>,
    /// Run on a PTY (stdout and stderr merged) instead of pipes.
    #[serde(default)]
    pub tty: bool,
    /// Kill the process group after this long and report [`EXIT_TIMEOUT`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

fn default_max_matches() -> usize {
    10_000
}

fn default_max_line_bytes() -> usize {
    4096
}

/// File operations. Contents travel base64-free as raw bytes after the JSON
/// header: payload = `json_len: u32 LE`, JSON, data. Paths are absolute paths
/// in the guest; modes are permission bits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsRequest {
    /// Read the whole file; its bytes come back as the response data.
    Read {
        /// Absolute path in the guest.
        path: String,
    },
    /// Replace the file atomically (temp file in the same directory, fsync,
    /// rename) with the request data, or with the streamed chunks that follow
    /// when `stream` is set. Answers `{"bytes_written":N}`.
    Write {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits of the written file.
        mode: u32,
        /// Create missing parent directories (0755) first.
        #[serde(default)]
        parents: bool,
        /// The data follows as [`Kind::Stdin`] frames ended by an empty one.
        #[serde(default)]
        stream: bool,
    },
    /// Create the directory (and missing parents when `parents`); answers
    /// `{"created":bool}` (`false`: it already existed, with `parents`).
    Mkdir {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits for the created directories.
        mode: u32,
        /// Create missing parents and accept an existing directory.
        #[serde(default = "yes")]
        parents: bool,
    },
    /// Remove a file or an empty directory, or a whole tree with `recursive`;
    /// answers `{"removed":true}`.
    Remove {
        /// Absolute path in the guest.
        path: String,
        /// Remove a directory with everything below it.
        #[serde(default)]
        recursive: bool,
    },
    /// List a directory's entries (`lstat`: symlinks are not followed).
    List {
        /// Absolute path in the guest.
        path: String,
    },
    /// Describe one path as a single entry (`lstat`).
    Stat {
        /// Absolute path in the guest.
        path: String,
    },
    /// Stream a file: [`Kind::FsMeta`], [`Kind::FsData`] chunks, [`Kind::FsResult`].
    ReadStream {
        /// Absolute path in the guest.
        path: String,
    },
    /// Change permission bits (and owner, when given); answers `{"updated":N}`.
    Chmod {
        /// Absolute path in the guest.
        path: String,
        /// New permission bits.
        mode: u32,
        /// New owner.
        #[serde(default)]
        uid: Option<u32>,
        /// New group.
        #[serde(default)]
        gid: Option<u32>,
        /// Apply to everything below a directory too (symlinks are not followed).
        #[serde(default)]
        recursive: bool,
    },
    /// Move `src` to `dst`; answers `{"moved":true}`.
    Rename {
        /// Absolute source path.
        src: String,
        /// Absolute destination path.
        dst: String,
        /// Replace an existing `dst`.
        #[serde(default)]
        overwrite: bool,
    },
    /// Search files for a regex; answers `{"matches":[{path,line,content}],"truncated":bool}`.
    Grep {
        /// A file, or a directory to search.
        path: String,
        /// A `regex` crate pattern.
        pattern: String,
        /// Descend into subdirectories.
        #[serde(default = "yes")]
        recursive: bool,
        /// Match case-insensitively.
        #[serde(default)]
        ignore_case: bool,
        /// Only files matching one of these globs (name, or path below `path` when it has a `/`).
        #[serde(default)]
        include_glob: Vec<String>,
        /// Skip files (and directories) matching one of these globs.
        #[serde(default)]
        exclude_glob: Vec<String>,
        /// Stop after this many matches (`truncated` is then set).
        #[serde(default = "default_max_matches")]
        max_matches: usize,
        /// Longer lines are cut to this many bytes and end with `…`.
        #[serde(default = "default_max_line_bytes")]
        max_line_bytes: usize,
    },
    /// Replace a pattern in files, each rewritten atomically; answers
    /// `{"results":[{path,replacements,success,error?}],"total_replacements":N}`.
    Sed {
        /// The files to edit (exclusive with `path`).
        #[serde(default)]
        files: Vec<String>,
        /// A directory (or a file) whose files are edited.
        #[serde(default)]
        path: Option<String>,
        /// With `path`: descend into subdirectories; a directory needs it.
        #[serde(default = "yes")]
        recursive: bool,
        /// With `path`: only files matching one of these globs.
        #[serde(default)]
        include_glob: Vec<String>,
        /// With `path`: skip files matching one of these globs.
        #[serde(default)]
        exclude_glob: Vec<String>,
        /// What to replace: a regex, or a literal string when `regex` is false.
        pattern: String,
        /// The replacement (`$1`-style groups with `regex`).
        replacement: String,
        /// Treat `pattern` as a regex.
        #[serde(default = "yes")]
        regex: bool,
        /// Replace only the first match of each file.
        #[serde(default)]
        first_only: bool,
        /// Match case-insensitively.
        #[serde(default)]
        ignore_case: bool,
    },
}

/// One file or directory in a [`FsResponse`] (or a [`Kind::FsMeta`] frame).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileInfo {
    /// File name (for `Stat`, the path asked about).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Whether this is a directory.
    pub is_dir: bool,
    /// Modification time, unix seconds.
    #[serde(default)]
    pub mtime: i64,
    /// Whether this is a symbolic link (never followed).
    #[serde(default)]
    pub is_symlink: bool,
}

/// The outcome of a file operation, the header of a [`Kind::FsResult`] frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsResponse {
    /// Why the operation failed; `None` on success.
    #[serde(default)]
    pub error: Option<String>,
    /// The S-code of `error` ([`codes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Entries for `List` and `Stat`; empty otherwise.
    #[serde(default)]
    pub entries: Vec<FileInfo>,
    /// The op's result object (`{"created":true}`, `{"bytes_written":N}`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

impl FsResponse {
    /// A failed operation: S-code and message.
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: Some(message.into()),
            code: Some(code.into()),
            ..Default::default()
        }
    }
}

/// Packs a JSON header and raw bytes into one payload; fails only for a
/// header too long for its `u32` length prefix.
pub fn pack<T: Serialize>(header: &T, data: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let json = serde_json::to_vec(header).expect("serializable");
    let json_len = u32::try_from(json.len()).map_err(|_| ProtoError::TooLarge(json.len()))?;
    let mut out = Vec::with_capacity(4 + json.len() + data.len());
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    Ok(out)
}

/// Splits a [`pack`]ed payload into its decoded header and the raw bytes after it.
pub fn unpack<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<(T, &[u8]), ProtoError> {
    let bad = |d: String| ProtoError::Malformed {
        what: "packed payload",
        detail: d,
    };
    if payload.len() < 4 {
        return Err(bad("shorter than its length prefix".into()));
    }
    let n = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let json = payload
        .get(4..4 + n)
        .ok_or_else(|| bad(format!("JSON length {n} past the end")))?;
    let v = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    Ok((v, &payload[4 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let req = ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "1".into())],
            cwd: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            tty: true,
            timeout_ms: Some(5),
        };
        write_frame(&mut buf, &Frame::with_json(Kind::Exec, &req)).unwrap();
        write_frame(&mut buf, &Frame::exit(-3)).unwrap();
        let mut r = buf.as_slice();
        let f = read_frame(&mut r).unwrap();
        assert_eq!(f.kind, Kind::Exec);
        assert_eq!(f.json::<ExecRequest>().unwrap(), req);
        assert_eq!(read_frame(&mut r).unwrap().i32_payload().unwrap(), -3);
        assert!(matches!(read_frame(&mut r), Err(ProtoError::Closed)));
    }

    #[test]
    fn rejects_bad_frames() {
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read_frame(&mut r), Err(ProtoError::Empty)));
        let mut r: &[u8] = &[1, 0, 0, 0, 99];
        assert!(matches!(
            read_frame(&mut r),
            Err(ProtoError::UnknownKind(99))
        ));
        let big = u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes();
        let mut r: &[u8] = &big;
        assert!(matches!(read_frame(&mut r), Err(ProtoError::TooLarge(_))));
        let mut r: &[u8] = &[5, 0, 0, 0, 16, 1];
        assert!(matches!(read_frame(&mut r), Err(ProtoError::Closed)));
    }

    #[test]
    fn packed_payloads() {
        let req = FsRequest::Write {
            path: "/a".into(),
            mode: 0o644,
            parents: true,
            stream: false,
        };
        let p = pack(&req, b"data").unwrap();
        let (back, data): (FsRequest, _) = unpack(&p).unwrap();
        assert_eq!(back, req);
        assert_eq!(data, b"data");
        assert!(unpack::<FsRequest>(&[9, 0, 0, 0, b'{']).is_err());
    }

    #[test]
    fn exit_payloads_of_both_sizes() {
        let old = Frame::exit(7);
        assert_eq!(old.payload.len(), 4);
        assert_eq!(old.exit_payload().unwrap(), (7, 0));
        let new = Frame::exit_with(EXIT_TIMEOUT, EXIT_FLAG_TIMED_OUT);
        assert_eq!(new.payload.len(), 8);
        assert_eq!(
            new.exit_payload().unwrap(),
            (EXIT_TIMEOUT, EXIT_FLAG_TIMED_OUT)
        );
        assert!(Frame::new(Kind::Exit, vec![1, 2, 3])
            .exit_payload()
            .is_err());
    }

    #[test]
    fn stream_kinds_round_trip() {
        let mut buf = Vec::new();
        let meta = FileInfo {
            name: "/f".into(),
            size: 3,
            mode: 0o100644,
            mtime: 1_700_000_000,
            ..Default::default()
        };
        write_frame(&mut buf, &Frame::with_json(Kind::FsMeta, &meta)).unwrap();
        write_frame(&mut buf, &Frame::new(Kind::FsData, b"abc".to_vec())).unwrap();
        let mut r = buf.as_slice();
        let f = read_frame(&mut r).unwrap();
        assert_eq!(f.kind, Kind::FsMeta);
        assert_eq!(f.json::<FileInfo>().unwrap(), meta);
        let f = read_frame(&mut r).unwrap();
        assert_eq!((f.kind, f.payload.as_slice()), (Kind::FsData, &b"abc"[..]));
        assert_eq!(Kind::FsMeta as u8, 22);
        assert_eq!(Kind::FsData as u8, 23);
    }

    #[test]
    fn old_payloads_still_decode() {
        // What the previous protocol version put on the wire.
        let info: FileInfo =
            serde_json::from_str(r#"{"name":"a","size":1,"mode":33188,"is_dir":false}"#).unwrap();
        assert_eq!((info.mtime, info.is_symlink), (0, false));
        let resp: FsResponse = serde_json::from_str(r#"{"error":null,"entries":[]}"#).unwrap();
        assert_eq!(resp, FsResponse::default());
        let mkdir: FsRequest =
            serde_json::from_str(r#"{"op":"mkdir","path":"/d","mode":493}"#).unwrap();
        assert_eq!(
            mkdir,
            FsRequest::Mkdir {
                path: "/d".into(),
                mode: 0o755,
                parents: true
            }
        );
        let write: FsRequest =
            serde_json::from_str(r#"{"op":"write","path":"/f","mode":420}"#).unwrap();
        assert_eq!(
            write,
            FsRequest::Write {
                path: "/f".into(),
                mode: 0o644,
                parents: false,
                stream: false
            }
        );
        // And a response of this version omits the new fields when unset.
        let json = serde_json::to_string(&FsResponse::default()).unwrap();
        assert_eq!(json, r#"{"error":null,"entries":[]}"#);
    }

    #[test]
    fn new_ops_take_their_defaults() {
        let grep: FsRequest =
            serde_json::from_str(r#"{"op":"grep","path":"/w","pattern":"x"}"#).unwrap();
        assert_eq!(
            grep,
            FsRequest::Grep {
                path: "/w".into(),
                pattern: "x".into(),
                recursive: true,
                ignore_case: false,
                include_glob: vec![],
                exclude_glob: vec![],
                max_matches: 10_000,
                max_line_bytes: 4096,
            }
        );
        let sed: FsRequest =
            serde_json::from_str(r#"{"op":"sed","files":["/a"],"pattern":"x","replacement":"y"}"#)
                .unwrap();
        assert_eq!(
            sed,
            FsRequest::Sed {
                files: vec!["/a".into()],
                path: None,
                recursive: true,
                include_glob: vec![],
                exclude_glob: vec![],
                pattern: "x".into(),
                replacement: "y".into(),
                regex: true,
                first_only: false,
                ignore_case: false,
            }
        );
        let chmod: FsRequest =
            serde_json::from_str(r#"{"op":"chmod","path":"/a","mode":384,"uid":5}"#).unwrap();
        assert_eq!(
            chmod,
            FsRequest::Chmod {
                path: "/a".into(),
                mode: 0o600,
                uid: Some(5),
                gid: None,
                recursive: false
            }
        );
        let mv: FsRequest =
            serde_json::from_str(r#"{"op":"rename","src":"/a","dst":"/b"}"#).unwrap();
        assert_eq!(
            mv,
            FsRequest::Rename {
                src: "/a".into(),
                dst: "/b".into(),
                overwrite: false
            }
        );
        let rs: FsRequest = serde_json::from_str(r#"{"op":"read_stream","path":"/a"}"#).unwrap();
        assert_eq!(rs, FsRequest::ReadStream { path: "/a".into() });
        let rm: FsRequest = serde_json::from_str(r#"{"op":"remove","path":"/a"}"#).unwrap();
        assert_eq!(
            rm,
            FsRequest::Remove {
                path: "/a".into(),
                recursive: false
            }
        );
        // An op this version does not know does not decode (the agent answers S219).
        assert!(serde_json::from_str::<FsRequest>(r#"{"op":"teleport","path":"/a"}"#).is_err());
    }

    #[test]
    fn responses_carry_code_and_value() {
        let mut ok = FsResponse {
            value: Some(serde_json::json!({"bytes_written": 3})),
            ..Default::default()
        };
        ok.entries.push(FileInfo {
            name: "l".into(),
            is_symlink: true,
            mtime: 5,
            ..Default::default()
        });
        let back: FsResponse = serde_json::from_slice(&serde_json::to_vec(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
        let err = FsResponse::failed(codes::NOT_FOUND, "file not found: /x");
        let back: FsResponse = serde_json::from_slice(&serde_json::to_vec(&err).unwrap()).unwrap();
        assert_eq!(back.code.as_deref(), Some("S211"));
        assert_eq!(back.error.as_deref(), Some("file not found: /x"));
    }
}
