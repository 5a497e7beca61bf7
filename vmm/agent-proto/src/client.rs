//! Host-side client: reaches the guest agent through the VMM's vsock Unix
//! socket (`CONNECT <port>` handshake) or any stream, and runs sessions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::*;

/// Opens a stream to guest vsock `port` through the VMM's host socket.
pub fn connect_vsock(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ProtoError> {
    let mut s = UnixStream::connect(uds)
        .map_err(|e| ProtoError::Connect(format!("{}: {e}", uds.display())))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read the reply byte by byte: anything after the newline is stream data.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                return Err(ProtoError::Connect(format!(
                    "guest refused vsock port {port} (nothing listening yet?)"
                )))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(ProtoError::Connect(format!("handshake: {e}"))),
        }
        if line.len() > 64 {
            return Err(ProtoError::Connect("handshake reply too long".into()));
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(ProtoError::Connect(format!(
            "unexpected handshake reply {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// What an exec session produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything the process wrote to stdout (or the PTY).
    pub stdout: Vec<u8>,
    /// Everything the process wrote to stderr.
    pub stderr: Vec<u8>,
    /// Exit code: 128 + signal for a signalled process, [`EXIT_TIMEOUT`] on timeout.
    pub code: i32,
}

/// Runs one exec session on `stream`, feeding `stdin` and collecting output.
/// stdin is written from a second thread so a chatty process cannot
/// deadlock against a large input.
pub fn exec(
    stream: &UnixStream,
    req: &ExecRequest,
    stdin: &[u8],
) -> Result<ExecOutput, ProtoError> {
    let mut input: Vec<Frame> = stdin
        .chunks(32 * 1024)
        .map(|c| Frame::new(Kind::Stdin, c.to_vec()))
        .collect();
    input.push(Frame::new(Kind::Stdin, Vec::new()));
    exec_frames(stream, req, input)
}

/// Like [`exec`], with the session's input given as frames, sent in order:
/// stdin chunks (an empty one closes stdin), [`Frame::resize`],
/// [`Frame::signal`].
pub fn exec_frames(
    stream: &UnixStream,
    req: &ExecRequest,
    input: Vec<Frame>,
) -> Result<ExecOutput, ProtoError> {
    let mut w = stream.try_clone()?;
    write_frame(&mut w, &Frame::with_json(Kind::Exec, req))?;
    let feeder = std::thread::spawn(move || -> Result<(), ProtoError> {
        for f in &input {
            write_frame(&mut w, f)?;
        }
        Ok(())
    });
    let mut r = stream.try_clone()?;
    let mut out = ExecOutput::default();
    let result = loop {
        let f = match read_frame(&mut r) {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        match f.kind {
            Kind::Stdout => out.stdout.extend_from_slice(&f.payload),
            Kind::Stderr => out.stderr.extend_from_slice(&f.payload),
            Kind::Exit => {
                out.code = f.i32_payload()?;
                break Ok(out);
            }
            Kind::Error => {
                break Err(ProtoError::Agent(
                    String::from_utf8_lossy(&f.payload).into(),
                ))
            }
            k => break Err(ProtoError::Unexpected(k)),
        }
    };
    // The process may exit without reading all of stdin; the feeder's
    // errors then do not matter.
    let _ = feeder.join();
    result
}

/// One file operation; returns the response and any data (for reads).
pub fn fs(
    stream: &mut (impl Read + Write),
    req: &FsRequest,
    data: &[u8],
) -> Result<(FsResponse, Vec<u8>), ProtoError> {
    write_frame(stream, &Frame::new(Kind::Fs, pack(req, data)?))?;
    let f = read_frame(stream)?;
    match f.kind {
        Kind::FsResult => {
            let (resp, data): (FsResponse, &[u8]) = unpack(&f.payload)?;
            Ok((resp, data.to_vec()))
        }
        Kind::Error => Err(ProtoError::Agent(
            String::from_utf8_lossy(&f.payload).into(),
        )),
        k => Err(ProtoError::Unexpected(k)),
    }
}

/// Sends [`Kind::Ping`] and waits for the agent's [`Kind::Pong`].
pub fn ping(stream: &mut (impl Read + Write)) -> Result<(), ProtoError> {
    write_frame(stream, &Frame::new(Kind::Ping, Vec::new()))?;
    match read_frame(stream)?.kind {
        Kind::Pong => Ok(()),
        k => Err(ProtoError::Unexpected(k)),
    }
}

/// Asks the guest to sync and power off; the agent sends no reply.
pub fn poweroff(stream: &mut (impl Read + Write)) -> Result<(), ProtoError> {
    write_frame(stream, &Frame::new(Kind::Poweroff, Vec::new()))
}
