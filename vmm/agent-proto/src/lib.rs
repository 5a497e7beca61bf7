//! The one protocol between the host and the guest agent (PID 1).
//!
//! A frame is `len: u32 LE` (of what follows), `kind: u8`, then `len - 1`
//! payload bytes. A session is one exec or one file operation: the client
//! opens it with [`Kind::Exec`] or [`Kind::Fs`], and the agent ends it with
//! [`Kind::Exit`] or [`Kind::FsResult`] (or [`Kind::Error`]). Over vsock each
//! session has its own connection; over a serial port sessions follow each
//! other on the one stream.

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
    /// i32 LE exit code (128 + signal for a signalled process, 124 on timeout).
    Exit = 18,
    /// UTF-8 message; ends the session.
    Error = 19,
    /// Ends a file session; the payload is a [`pack`]ed [`FsResponse`] and any data read.
    FsResult = 20,
    /// The answer to [`Kind::Ping`].
    Pong = 21,
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

    /// The [`Kind::Exit`] frame that ends an exec session with `code`.
    pub fn exit(code: i32) -> Self {
        Self::new(Kind::Exit, code.to_le_bytes().to_vec())
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

/// File operations. Contents travel base64-free as raw bytes after the JSON
/// header: payload = `json_len: u32 LE`, JSON, data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsRequest {
    /// Read the whole file; its bytes come back as the response data.
    Read {
        /// Absolute path in the guest.
        path: String,
    },
    /// Create or truncate the file with the request data.
    Write {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits for a newly created file.
        mode: u32,
    },
    /// Create the directory and any missing parents.
    Mkdir {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits for the created directories.
        mode: u32,
    },
    /// Remove a file or an empty directory, or a whole tree with `recursive`.
    Remove {
        /// Absolute path in the guest.
        path: String,
        /// Remove a directory with everything below it.
        recursive: bool,
    },
    /// List a directory's entries.
    List {
        /// Absolute path in the guest.
        path: String,
    },
    /// Describe one path as a single entry.
    Stat {
        /// Absolute path in the guest.
        path: String,
    },
}

/// One file or directory in a [`FsResponse`].
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
}

/// The outcome of a file operation, the header of a [`Kind::FsResult`] frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsResponse {
    /// Why the operation failed; `None` on success.
    #[serde(default)]
    pub error: Option<String>,
    /// Entries for `List` and `Stat`; empty otherwise.
    #[serde(default)]
    pub entries: Vec<FileInfo>,
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
        let p = pack(
            &FsRequest::Write {
                path: "/a".into(),
                mode: 0o644,
            },
            b"data",
        )
        .unwrap();
        let (req, data): (FsRequest, _) = unpack(&p).unwrap();
        assert_eq!(
            req,
            FsRequest::Write {
                path: "/a".into(),
                mode: 0o644
            }
        );
        assert_eq!(data, b"data");
        assert!(unpack::<FsRequest>(&[9, 0, 0, 0, b'{']).is_err());
    }
}
