//! A blocking RESP2 connection over `std::net::TcpStream` (works on `wasm32-wasip2`, where
//! the host checks every connect against `grants.network`), with the `redis-protocol` codec.
//!
//! [`Client`] owns the command connection and the reconnect policy: after a failure the next
//! call reconnects, but not sooner than a capped, doubling backoff; calls inside the backoff
//! fail at once with [`RespError::Unavailable`] naming the address, so a dead server costs the
//! caller microseconds, not a connect timeout each time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame as Frame, Resp2Frame};

/// Failure of a Redis call.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The server cannot be reached (connect failed, connection lost, backoff running).
    #[error("unavailable: redis at {addr}: {reason}")]
    Unavailable { addr: String, reason: String },
    /// The server answered with an error reply.
    #[error("redis at {addr} replied with an error: {message}")]
    Server { addr: String, message: String },
    /// The reply did not have the shape the command has.
    #[error("redis at {addr}: unexpected reply to {command}: {reply}")]
    Protocol {
        addr: String,
        command: String,
        reply: String,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

impl RespError {
    /// True when the connection must be dropped (the stream may be out of step).
    fn breaks_connection(&self) -> bool {
        matches!(self, RespError::Unavailable { .. })
    }
}

/// Where and how to connect, from the adapter's `config:` block.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port` as written in the URL (what the error messages name).
    pub addr: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    pub connect_timeout: Duration,
    /// Bound on one reply (and one write); a call on a hung server fails after it.
    pub io_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Settings {
    /// Parses `redis://[user[:password]@]host[:port][/db]`.
    pub fn from_url(url: &str) -> Result<Settings, RespError> {
        let bad = |why: &str| RespError::Config(format!("config `redis_url` {url:?}: {why}"));
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| bad("must start with redis:// (rediss:// TLS is not supported)"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse::<u32>()
                    .map_err(|_| bad("the path must be a database number"))?,
            ),
            None => (rest, 0),
        };
        if hostport.is_empty() {
            return Err(bad("no host"));
        }
        let addr = if hostport.starts_with('[') {
            if hostport.contains("]:") {
                hostport.to_string()
            } else {
                format!("{hostport}:6379")
            }
        } else if hostport.contains(':') {
            let (_, p) = hostport.rsplit_once(':').unwrap_or_default();
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?;
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(Settings {
            addr,
            username,
            password,
            db,
            connect_timeout: Duration::from_millis(1000),
            io_timeout: Duration::from_millis(2000),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(2000),
        })
    }
}

/// One RESP2 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: String,
}

fn lost(addr: &str, what: &str, e: std::io::Error) -> RespError {
    RespError::Unavailable {
        addr: addr.to_string(),
        reason: format!("{what}: {e}"),
    }
}

/// Encodes a command (an array of bulk strings).
pub fn command(args: &[&[u8]]) -> Frame {
    Frame::Array(args.iter().map(|a| Frame::BulkString(a.to_vec())).collect())
}

impl Conn {
    /// Connects and runs the handshake (AUTH, SELECT) in one pipeline.
    pub fn open(s: &Settings) -> Result<Conn, RespError> {
        let addrs: Vec<SocketAddr> = s
            .addr
            .to_socket_addrs()
            .map_err(|e| lost(&s.addr, "resolving", e))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, s.connect_timeout) {
                Ok(st) => {
                    stream = Some(st);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match stream {
            Some(st) => st,
            None => {
                return Err(match last {
                    Some(e) => lost(&s.addr, "connecting", e),
                    None => RespError::Unavailable {
                        addr: s.addr.clone(),
                        reason: "the name resolved to no address".into(),
                    },
                })
            }
        };
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(s.io_timeout))
            .map_err(|e| lost(&s.addr, "setting the read timeout", e))?;
        stream
            .set_write_timeout(Some(s.io_timeout))
            .map_err(|e| lost(&s.addr, "setting the write timeout", e))?;
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(4096),
            addr: s.addr.clone(),
        };
        let mut hello = Vec::new();
        let db = s.db.to_string();
        if let Some(p) = &s.password {
            match &s.username {
                Some(u) => hello.push(command(&[b"AUTH", u.as_bytes(), p.as_bytes()])),
                None => hello.push(command(&[b"AUTH", p.as_bytes()])),
            }
        }
        if s.db != 0 {
            hello.push(command(&[b"SELECT", db.as_bytes()]));
        }
        if !hello.is_empty() {
            for r in conn.pipeline(&hello)? {
                if let Frame::Error(m) = r {
                    return Err(RespError::Server {
                        addr: s.addr.clone(),
                        message: format!("during the handshake: {m}"),
                    });
                }
            }
        }
        Ok(conn)
    }

    /// Sets how long one read may block (pub/sub polling waits longer than a command).
    pub fn set_read_timeout(&self, t: Duration) -> Result<(), RespError> {
        self.stream
            .set_read_timeout(Some(t.max(Duration::from_millis(1))))
            .map_err(|e| lost(&self.addr, "setting the read timeout", e))
    }

    /// Writes the frames without reading.
    pub fn send(&mut self, frames: &[Frame]) -> Result<(), RespError> {
        let len: usize = frames.iter().map(|f| f.encode_len(false)).sum();
        let mut out = vec![0u8; len];
        let mut at = 0;
        for f in frames {
            at += encode(&mut out[at..], f, false).map_err(|e| RespError::Protocol {
                addr: self.addr.clone(),
                command: "encode".into(),
                reply: e.to_string(),
            })?;
        }
        self.stream
            .write_all(&out[..at])
            .map_err(|e| lost(&self.addr, "writing", e))
    }

    /// A frame already buffered, without reading the socket.
    pub fn buffered(&mut self) -> Result<Option<Frame>, RespError> {
        match decode(&self.buf) {
            Ok(Some((frame, used))) => {
                self.buf.drain(..used);
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(RespError::Unavailable {
                addr: self.addr.clone(),
                reason: format!("undecodable reply: {e}"),
            }),
        }
    }

    /// Reads one reply. A timeout is `Ok(None)` only when `timeout_is_none` (pub/sub wait);
    /// for a command it is a lost connection.
    pub fn read(&mut self, timeout_is_none: bool) -> Result<Option<Frame>, RespError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(RespError::Unavailable {
                        addr: self.addr.clone(),
                        reason: "the server closed the connection".into(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if timeout_is_none
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(&self.addr, "reading", e)),
            }
        }
    }

    /// Sends every frame in one write and reads one reply per frame.
    pub fn pipeline(&mut self, frames: &[Frame]) -> Result<Vec<Frame>, RespError> {
        self.send(frames)?;
        let mut replies = Vec::with_capacity(frames.len());
        for _ in frames {
            match self.read(false)? {
                Some(f) => replies.push(f),
                None => unreachable!("a command read never returns None"),
            }
        }
        Ok(replies)
    }
}

/// The command connection with its reconnect policy.
pub struct Client {
    pub settings: Settings,
    conn: Option<Conn>,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_failure: String,
    /// Scripts to load (`SCRIPT LOAD`) on every new connection, with their SHA1 once loaded.
    scripts: Vec<(&'static str, String)>,
}

impl Client {
    pub fn new(settings: Settings, scripts: &[&'static str]) -> Client {
        Client {
            backoff: settings.backoff_min,
            settings,
            conn: None,
            retry_at: None,
            last_failure: String::new(),
            scripts: scripts.iter().map(|s| (*s, String::new())).collect(),
        }
    }

    /// The address the errors name.
    pub fn addr(&self) -> &str {
        &self.settings.addr
    }

    /// Opens the connection if there is none and the backoff allows it.
    fn connection(&mut self) -> Result<&mut Conn, RespError> {
        if self.conn.is_none() {
            if let Some(at) = self.retry_at {
                let now = Instant::now();
                if now < at {
                    return Err(RespError::Unavailable {
                        addr: self.settings.addr.clone(),
                        reason: format!(
                            "{} (next reconnect attempt in {} ms)",
                            self.last_failure,
                            (at - now).as_millis()
                        ),
                    });
                }
            }
            let opened = Conn::open(&self.settings).and_then(|mut c| {
                if !self.scripts.is_empty() {
                    let load: Vec<Frame> = self
                        .scripts
                        .iter()
                        .map(|(src, _)| command(&[b"SCRIPT", b"LOAD", src.as_bytes()]))
                        .collect();
                    let replies = c.pipeline(&load)?;
                    for ((_, sha), r) in self.scripts.iter_mut().zip(replies) {
                        *sha = match r {
                            Frame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                            other => {
                                return Err(RespError::Protocol {
                                    addr: self.settings.addr.clone(),
                                    command: "SCRIPT LOAD".into(),
                                    reply: describe(&other),
                                })
                            }
                        };
                    }
                }
                Ok(c)
            });
            match opened {
                Ok(c) => {
                    self.conn = Some(c);
                    self.retry_at = None;
                    self.backoff = self.settings.backoff_min;
                }
                Err(e) => {
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    fn fail(&mut self, e: &RespError) {
        self.conn = None;
        self.last_failure = match e {
            RespError::Unavailable { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.settings.backoff_max);
    }

    /// Runs the commands as one pipeline and returns their replies (error replies included,
    /// as `Frame::Error`). A connection failure drops the connection and starts the backoff.
    pub fn pipeline(&mut self, frames: &[Frame]) -> Result<Vec<Frame>, RespError> {
        let r = self.connection()?.pipeline(frames);
        if let Err(e) = &r {
            if e.breaks_connection() {
                self.fail(e);
            }
        }
        r
    }

    /// One command; an error reply becomes [`RespError::Server`].
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Frame, RespError> {
        let r = self
            .pipeline(&[command(args)])?
            .pop()
            .expect("one reply per command");
        self.check(r)
    }

    /// Turns an error reply into [`RespError::Server`].
    pub fn check(&self, f: Frame) -> Result<Frame, RespError> {
        match f {
            Frame::Error(m) => Err(RespError::Server {
                addr: self.settings.addr.clone(),
                message: m,
            }),
            f => Ok(f),
        }
    }

    /// Runs script number `idx` (of those given to [`Client::new`]) by SHA, falling back to
    /// the source when the server lost its script cache (`SCRIPT FLUSH`, a restart between
    /// our load and the call).
    pub fn script(
        &mut self,
        idx: usize,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Frame, RespError> {
        // Connect first so the SHA is the one loaded on this connection's server.
        self.connection()?;
        let nkeys = keys.len().to_string();
        let sha = self.scripts[idx].1.clone();
        let mut cmd: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), nkeys.as_bytes()];
        cmd.extend_from_slice(keys);
        cmd.extend_from_slice(args);
        match self.call(&cmd) {
            Err(RespError::Server { message, .. }) if message.starts_with("NOSCRIPT") => {
                let src = self.scripts[idx].0;
                cmd[0] = b"EVAL";
                cmd[1] = src.as_bytes();
                self.call(&cmd)
            }
            r => r,
        }
    }
}

/// A short description of a reply for error messages.
pub fn describe(f: &Frame) -> String {
    match f {
        Frame::SimpleString(s) => format!("+{}", String::from_utf8_lossy(s)),
        Frame::Error(e) => format!("-{e}"),
        Frame::Integer(i) => format!(":{i}"),
        Frame::BulkString(b) => format!("bulk of {} bytes", b.len()),
        Frame::Array(a) => format!("array of {}", a.len()),
        Frame::Null => "nil".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = Settings::from_url("redis://127.0.0.1:7000").unwrap();
        assert_eq!(s.addr, "127.0.0.1:7000");
        assert_eq!(s.db, 0);
        let s = Settings::from_url("redis://u:p%@host/3").unwrap();
        assert_eq!(s.addr, "host:6379");
        assert_eq!(s.username.as_deref(), Some("u"));
        assert_eq!(s.password.as_deref(), Some("p%"));
        assert_eq!(s.db, 3);
        let s = Settings::from_url("redis://:secret@[::1]:6380").unwrap();
        assert_eq!(s.addr, "[::1]:6380");
        assert_eq!(s.username, None);
        assert!(Settings::from_url("http://x").is_err());
        assert!(Settings::from_url("redis://h:notaport").is_err());
        assert!(Settings::from_url("redis://h/x").is_err());
    }
}
