//! Host-side client: reaches the guest agent through the VMM's vsock Unix
//! socket (`CONNECT <port>` handshake) or any stream, and runs sessions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Connects to the agent's Unix socket (the namespace runtime's transport:
/// no handshake, the socket is the stream). A socket that does not exist yet
/// or refuses is retried until `timeout`, so a caller can wait for a starting
/// sandbox with this one call.
pub fn connect_unix(path: &Path, timeout: Duration) -> Result<UnixStream, ProtoError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(ProtoError::Connect(format!("{}: {e}", path.display()))),
        }
    }
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
    /// The agent killed the process because the session's `timeout_ms` passed.
    pub timed_out: bool,
    /// [`exec_capped`] dropped stdout bytes past its cap.
    pub stdout_truncated: bool,
    /// [`exec_capped`] dropped stderr bytes past its cap.
    pub stderr_truncated: bool,
}

/// Runs one exec session on `stream`, feeding `stdin` and collecting output.
/// stdin is written from a second thread so a chatty process cannot
/// deadlock against a large input.
pub fn exec(
    stream: &UnixStream,
    req: &ExecRequest,
    stdin: &[u8],
) -> Result<ExecOutput, ProtoError> {
    exec_frames(stream, req, stdin_frames(stdin))
}

/// Like [`exec`], keeping at most `cap_per_stream` bytes of stdout and of
/// stderr; the rest is read and dropped (the process is never stalled by a
/// full pipe) and the `*_truncated` flags say so.
pub fn exec_capped(
    stream: &UnixStream,
    req: &ExecRequest,
    stdin: &[u8],
    cap_per_stream: usize,
) -> Result<ExecOutput, ProtoError> {
    run_exec(stream, req, stdin_frames(stdin), cap_per_stream)
}

fn stdin_frames(stdin: &[u8]) -> Vec<Frame> {
    let mut input: Vec<Frame> = stdin
        .chunks(32 * 1024)
        .map(|c| Frame::new(Kind::Stdin, c.to_vec()))
        .collect();
    input.push(Frame::new(Kind::Stdin, Vec::new()));
    input
}

/// Appends what still fits under `cap`; reports whether anything was dropped.
fn keep(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..room.min(data.len())]);
    data.len() > room
}

/// Like [`exec`], with the session's input given as frames, sent in order:
/// stdin chunks (an empty one closes stdin), [`Frame::resize`],
/// [`Frame::signal`].
pub fn exec_frames(
    stream: &UnixStream,
    req: &ExecRequest,
    input: Vec<Frame>,
) -> Result<ExecOutput, ProtoError> {
    run_exec(stream, req, input, usize::MAX)
}

fn run_exec(
    stream: &UnixStream,
    req: &ExecRequest,
    input: Vec<Frame>,
    cap: usize,
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
            Kind::Stdout => out.stdout_truncated |= keep(&mut out.stdout, &f.payload, cap),
            Kind::Stderr => out.stderr_truncated |= keep(&mut out.stderr, &f.payload, cap),
            Kind::Exit => {
                let (code, flags) = f.exit_payload()?;
                out.code = code;
                out.timed_out = flags & EXIT_FLAG_TIMED_OUT != 0;
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

/// A streaming [`FsRequest::Write`]: sends the request (with `stream` set),
/// then `chunks` as [`Kind::Stdin`] frames of at most [`FS_CHUNK`] bytes and
/// the empty end frame, and returns the agent's one answer. Any other request
/// is refused, since only a write takes a stream.
pub fn fs_write_stream(
    stream: &mut (impl Read + Write),
    req: &FsRequest,
    chunks: impl Iterator<Item = Vec<u8>>,
) -> Result<FsResponse, ProtoError> {
    let FsRequest::Write {
        path,
        mode,
        parents,
        ..
    } = req
    else {
        return Err(ProtoError::Malformed {
            what: "streaming write",
            detail: "only FsRequest::Write can stream".into(),
        });
    };
    let req = FsRequest::Write {
        path: path.clone(),
        mode: *mode,
        parents: *parents,
        stream: true,
    };
    write_frame(stream, &Frame::new(Kind::Fs, pack(&req, &[])?))?;
    for chunk in chunks {
        for part in chunk.chunks(FS_CHUNK) {
            write_frame(stream, &Frame::new(Kind::Stdin, part.to_vec()))?;
        }
    }
    write_frame(stream, &Frame::new(Kind::Stdin, Vec::new()))?;
    let f = read_frame(stream)?;
    match f.kind {
        Kind::FsResult => Ok(unpack::<FsResponse>(&f.payload)?.0),
        Kind::Error => Err(ProtoError::Agent(
            String::from_utf8_lossy(&f.payload).into(),
        )),
        k => Err(ProtoError::Unexpected(k)),
    }
}

/// A [`FsRequest::ReadStream`]: `on_meta` gets the file's [`FileInfo`] before
/// any data, `on_chunk` each chunk in order (an error from it aborts the
/// session with [`ProtoError::Io`]). Returns the closing [`FsResponse`]; its
/// `error`/`code` are set when the read failed, before or midway.
pub fn fs_read_stream(
    stream: &mut (impl Read + Write),
    path: &str,
    mut on_meta: impl FnMut(&FileInfo),
    mut on_chunk: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<FsResponse, ProtoError> {
    let req = FsRequest::ReadStream { path: path.into() };
    write_frame(stream, &Frame::new(Kind::Fs, pack(&req, &[])?))?;
    let mut saw_meta = false;
    loop {
        let f = read_frame(stream)?;
        match f.kind {
            Kind::FsMeta if !saw_meta => {
                saw_meta = true;
                on_meta(&f.json::<FileInfo>()?);
            }
            Kind::FsData if saw_meta => on_chunk(&f.payload)?,
            Kind::FsResult => return Ok(unpack::<FsResponse>(&f.payload)?.0),
            Kind::Error => {
                return Err(ProtoError::Agent(
                    String::from_utf8_lossy(&f.payload).into(),
                ))
            }
            k => return Err(ProtoError::Unexpected(k)),
        }
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

#[cfg(test)]
mod tests {
    //! The client against a scripted agent on the other end of a socketpair.
    use super::*;

    #[test]
    fn capped_exec_keeps_the_cap_and_reads_past_it() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut r = b.try_clone().unwrap();
            assert_eq!(read_frame(&mut r).unwrap().kind, Kind::Exec);
            for _ in 0..4 {
                write_frame(&mut b, &Frame::new(Kind::Stdout, vec![b'o'; 3])).unwrap();
            }
            write_frame(&mut b, &Frame::new(Kind::Stderr, b"e".to_vec())).unwrap();
            write_frame(&mut b, &Frame::exit_with(EXIT_TIMEOUT, EXIT_FLAG_TIMED_OUT)).unwrap();
            // Drain the client's stdin frames.
            while read_frame(&mut r).is_ok() {}
        });
        let out = exec_capped(&a, &ExecRequest::default(), b"", 5).unwrap();
        drop(a);
        agent.join().unwrap();
        assert_eq!(out.stdout, b"ooooo");
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr, b"e");
        assert!(!out.stderr_truncated);
        assert_eq!(out.code, EXIT_TIMEOUT);
        assert!(out.timed_out);
    }

    #[test]
    fn legacy_exit_is_not_a_timeout() {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut r = b.try_clone().unwrap();
            read_frame(&mut r).unwrap();
            write_frame(&mut b, &Frame::exit(3)).unwrap();
            while read_frame(&mut r).is_ok() {}
        });
        let out = exec(&a, &ExecRequest::default(), b"").unwrap();
        assert_eq!((out.code, out.timed_out), (3, false));
    }

    #[test]
    fn write_stream_splits_chunks_and_ends_with_an_empty_frame() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let f = read_frame(&mut b).unwrap();
            let (req, data): (FsRequest, &[u8]) = unpack(&f.payload).unwrap();
            assert!(data.is_empty());
            assert!(matches!(req, FsRequest::Write { stream: true, .. }));
            let mut sizes = Vec::new();
            loop {
                let f = read_frame(&mut b).unwrap();
                assert_eq!(f.kind, Kind::Stdin);
                if f.payload.is_empty() {
                    break;
                }
                sizes.push(f.payload.len());
            }
            let resp = FsResponse {
                value: Some(serde_json::json!({"bytes_written": sizes.iter().sum::<usize>()})),
                ..Default::default()
            };
            write_frame(
                &mut b,
                &Frame::new(Kind::FsResult, pack(&resp, &[]).unwrap()),
            )
            .unwrap();
            sizes
        });
        let req = FsRequest::Write {
            path: "/f".into(),
            mode: 0o644,
            parents: false,
            stream: false,
        };
        let chunks = vec![vec![1u8; FS_CHUNK + 10], vec![2u8; 5]];
        let resp = fs_write_stream(&mut a, &req, chunks.into_iter()).unwrap();
        assert_eq!(agent.join().unwrap(), vec![FS_CHUNK, 10, 5]);
        assert_eq!(
            resp.value,
            Some(serde_json::json!({"bytes_written": FS_CHUNK + 15}))
        );
        let not_write = FsRequest::Read { path: "/f".into() };
        assert!(fs_write_stream(&mut a, &not_write, std::iter::empty()).is_err());
    }

    #[test]
    fn read_stream_reports_meta_then_chunks() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            read_frame(&mut b).unwrap();
            let meta = FileInfo {
                name: "/f".into(),
                size: 4,
                ..Default::default()
            };
            write_frame(&mut b, &Frame::with_json(Kind::FsMeta, &meta)).unwrap();
            write_frame(&mut b, &Frame::new(Kind::FsData, b"ab".to_vec())).unwrap();
            write_frame(&mut b, &Frame::new(Kind::FsData, b"cd".to_vec())).unwrap();
            let resp = FsResponse::failed(codes::IO, "fs i/o error: boom");
            write_frame(
                &mut b,
                &Frame::new(Kind::FsResult, pack(&resp, &[]).unwrap()),
            )
            .unwrap();
        });
        let mut size = 0;
        let mut data = Vec::new();
        let resp = fs_read_stream(
            &mut a,
            "/f",
            |m| size = m.size,
            |c| {
                data.extend_from_slice(c);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((size, data.as_slice()), (4, &b"abcd"[..]));
        assert_eq!(resp.code.as_deref(), Some("S216"));
    }

    #[test]
    fn read_stream_refuses_data_before_meta() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            read_frame(&mut b).unwrap();
            write_frame(&mut b, &Frame::new(Kind::FsData, b"x".to_vec())).unwrap();
        });
        assert!(matches!(
            fs_read_stream(&mut a, "/f", |_| {}, |_| Ok(())),
            Err(ProtoError::Unexpected(Kind::FsData))
        ));
    }

    #[test]
    fn connect_unix_waits_for_the_socket() {
        let dir = std::env::temp_dir().join(format!("iii-proto-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let _ = std::fs::remove_file(&path);
        let p = path.clone();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
            let (mut s, _) = l.accept().unwrap();
            assert_eq!(read_frame(&mut s).unwrap().kind, Kind::Ping);
            write_frame(&mut s, &Frame::new(Kind::Pong, Vec::new())).unwrap();
        });
        let mut s = connect_unix(&path, Duration::from_secs(5)).unwrap();
        ping(&mut s).unwrap();
        server.join().unwrap();
        let missing = dir.join("missing.sock");
        assert!(matches!(
            connect_unix(&missing, Duration::from_millis(50)),
            Err(ProtoError::Connect(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
