//! The kernel floor: one thread, one epoll set (through `mio`), two non-blocking sockets, and
//! the same WebSocket framing as the engine (`tungstenite`, synchronous). No runtime, no task
//! hand-offs, no channels: a frame read from one socket is written to the other in the same
//! loop iteration. What it costs is about what the kernel's loopback hops and the framing cost,
//! so the engine's rows over it show everything the engine adds (thread wake-ups, hand-offs,
//! routing), unlike the tokio relay floor, which is built like the engine and shares those.
//!
//! `iii-bench kernel-relay <port>` serves one `/callee` and one `/caller` connection.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use anyhow::{bail, Result};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::WebSocket;

fn config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(64 << 20);
    c.max_frame_size = Some(64 << 20);
    c
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock)
}

/// Accepts until it has one `/callee` and one `/caller` (port probes and failed handshakes are
/// skipped), then relays frames between them until either side goes away.
pub fn run(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let mut callee: Option<WebSocket<TcpStream>> = None;
    let mut caller: Option<WebSocket<TcpStream>> = None;
    while callee.is_none() || caller.is_none() {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut path = String::new();
        #[allow(
            clippy::result_large_err,
            reason = "the handshake callback's error type is fixed by tungstenite"
        )]
        let cb = |req: &Request, resp: Response| {
            path = req.uri().path().to_string();
            Ok(resp)
        };
        let Ok(ws) = tungstenite::accept_hdr_with_config(stream, cb, Some(config())) else {
            continue;
        };
        match path.as_str() {
            "/callee" if callee.is_none() => callee = Some(ws),
            "/caller" if caller.is_none() => caller = Some(ws),
            _ => bail!("kernel relay takes one caller and one callee"),
        }
    }
    let mut socks = [caller.expect("accepted"), callee.expect("accepted")];
    let mut poll = Poll::new()?;
    for (i, ws) in socks.iter().enumerate() {
        ws.get_ref().set_nonblocking(true)?;
        let fd = ws.get_ref().as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&fd),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    let mut events = Events::with_capacity(8);
    loop {
        poll.poll(&mut events, None)?;
        // Edge-triggered: drain both sides whatever the event said, then flush both.
        for from in 0..2 {
            loop {
                let msg = match socks[from].read() {
                    Ok(m) => m,
                    Err(e) if would_block(&e) => break,
                    Err(_) => return Ok(()),
                };
                if !(msg.is_text() || msg.is_binary()) {
                    continue;
                }
                let to = 1 - from;
                match socks[to].write(msg) {
                    Ok(()) => {}
                    Err(e) if would_block(&e) => {}
                    Err(_) => return Ok(()),
                }
            }
        }
        for ws in socks.iter_mut() {
            match ws.flush() {
                Ok(()) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => return Ok(()),
            }
        }
    }
}
