//! The one protocol between the host and the guest agent (PID 1).
//!
//! A frame is `len: u32 LE` (of what follows), `kind: u8`, then `len - 1`
//! payload bytes. A session is one exec or one file operation: the client
//! opens it with [`Kind::Exec`] or [`Kind::Fs`], and the agent ends it with
//! [`Kind::Exit`] or [`Kind::FsResult`] (or [`Kind::Error`]). Over vsock each
//! session has its own connection; over a serial port sessions follow each
//! other on the one stream.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub mod client;

/// vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 52;
/// Exit code reported when an exec hits its timeout (as coreutils `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Upper bound for one frame, so a corrupt length cannot exhaust memory.
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    // client → agent
    Exec = 1,
    /// Bytes for the process's stdin; an empty payload closes stdin.
    Stdin = 2,
    /// i32 LE signal number, delivered to the process group.
    Signal = 3,
    /// u16 LE rows, u16 LE cols.
    Resize = 4,
    Fs = 5,
    Ping = 6,
    /// Ask the guest to sync and power off.
    Poweroff = 7,
    // agent → client
    Stdout = 16,
    Stderr = 17,
    /// i32 LE exit code (128 + signal for a signalled process, 124 on timeout).
    Exit = 18,
    /// UTF-8 message; ends the session.
    Error = 19,
    FsResult = 20,
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

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection closed")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("unexpected {0:?} frame")]
    Unexpected(Kind),
    #[error("agent error: {0}")]
    Agent(String),
    #[error("cannot reach the VM: {0}")]
    Connect(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            payload: payload.into(),
        }
    }

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

    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtoError> {
        serde_json::from_slice(&self.payload).map_err(|e| ProtoError::Malformed {
            what: "JSON payload",
            detail: e.to_string(),
        })
    }

    pub fn with_json<T: Serialize>(kind: Kind, v: &T) -> Self {
        // Serializing plain structs of strings and numbers cannot fail.
        Self::new(kind, serde_json::to_vec(v).expect("serializable"))
    }
}

pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<(), ProtoError> {
    if f.payload.len() + 1 > MAX_FRAME {
        return Err(ProtoError::TooLarge(f.payload.len() + 1));
    }
    let mut buf = Vec::with_capacity(5 + f.payload.len());
    buf.extend_from_slice(&((f.payload.len() + 1) as u32).to_le_bytes());
    buf.push(f.kind as u8);
    buf.extend_from_slice(&f.payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

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
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// File operations. Contents travel base64-free as raw bytes after the JSON
/// header: payload = `json_len: u32 LE`, JSON, data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsRequest {
    Read { path: String },
    Write { path: String, mode: u32 },
    Mkdir { path: String, mode: u32 },
    Remove { path: String, recursive: bool },
    List { path: String },
    Stat { path: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub mode: u32,
    pub is_dir: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsResponse {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub entries: Vec<FileInfo>,
}

/// Packs a JSON header and raw bytes into one payload.
pub fn pack<T: Serialize>(header: &T, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("serializable");
    let mut out = Vec::with_capacity(4 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

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
        let big = ((MAX_FRAME + 1) as u32).to_le_bytes();
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
        );
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
