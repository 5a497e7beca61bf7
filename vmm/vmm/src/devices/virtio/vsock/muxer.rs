//! Userspace vsock backend: maps guest vsock streams onto host sockets.
//!
//! * guest → host: a REQUEST to CID 2 port P connects to the host target the
//!   configuration allows for P (a TCP address or a Unix socket), else RST.
//! * host → guest: a client connects to the VM's Unix socket and writes
//!   `CONNECT <port>\n`; once the guest accepts it reads `OK <local port>\n`
//!   and the socket carries the stream.
//!
//! Host sockets are non-blocking and watched by the muxer's own epoll, so no
//! caller ever blocks on host I/O. Bytes from the guest that the host has not
//! yet accepted wait in a per-connection buffer bounded by the credit we
//! advertise; `fwd_cnt` only advances for bytes the host really took.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::*;

/// Receive buffer we advertise per connection (our side of credit control).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload we put in one packet to the guest.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Host ports for host-initiated connections are allocated from here up.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Longest `CONNECT <port>` line accepted.
const MAX_CONNECT_LINE: usize = 32;

const TOKEN_LISTENER: u64 = u64::MAX;

/// Where a guest→host connection on a given vsock port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTarget {
    /// A TCP address (in practice on loopback).
    Tcp(SocketAddr),
    /// A Unix stream socket.
    Unix(PathBuf),
}

/// Why the muxer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Creating or registering with the muxer's epoll instance failed.
    #[error("cannot create epoll instance: {0}")]
    Epoll(io::Error),
    /// The Unix socket for host-initiated connections cannot be bound.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why binding failed.
        source: io::Error,
    },
}

enum HostStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl HostStream {
    fn connect(target: &HostTarget) -> io::Result<Self> {
        // Targets are local (loopback TCP or a Unix socket), where connect
        // completes or fails at once without waiting on a remote peer.
        let s = match target {
            HostTarget::Tcp(a) => HostStream::Tcp(TcpStream::connect(a)?),
            HostTarget::Unix(p) => HostStream::Unix(UnixStream::connect(p)?),
        };
        s.set_nonblocking()?;
        Ok(s)
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            HostStream::Tcp(s) => s.set_nonblocking(true),
            HostStream::Unix(s) => s.set_nonblocking(true),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            HostStream::Tcp(s) => s.shutdown(Shutdown::Write),
            HostStream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for HostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HostStream::Tcp(s) => s.read(buf),
            HostStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for HostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a vanished peer must give EPIPE, not kill the VMM.
        let fd = self.as_raw_fd();
        // SAFETY: `buf` is valid for `buf.len()` bytes for the whole call.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for HostStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            HostStream::Tcp(s) => s.as_raw_fd(),
            HostStream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// A connection is named by the host-side port and the guest-side port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ConnKey {
    host_port: u32,
    guest_port: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated; REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: HostStream,
    state: ConnState,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Bytes from the guest delivered to the host socket.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes waiting for the host socket to accept them.
    pending: VecDeque<u8>,
    /// Leading bytes of `pending` that are ours (the `OK` line), not the guest's.
    pending_uncounted: usize,
    /// The host socket has (or may have) data to read.
    readable: bool,
    host_eof: bool,
    /// The guest will send nothing more: shut the host socket's write side
    /// once `pending` drains.
    guest_done_sending: bool,
    /// Close with RST once `pending` drains (guest shut both directions).
    close_when_flushed: bool,
    credit_update_due: bool,
    interest: EventSet,
}

impl Conn {
    fn new(stream: HostStream, state: ConnState) -> Self {
        Self {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            pending: VecDeque::new(),
            pending_uncounted: 0,
            readable: false,
            host_eof: false,
            guest_done_sending: false,
            close_when_flushed: false,
            credit_update_due: false,
            interest: EventSet::empty(),
        }
    }

    /// How many more bytes the guest can take on this connection.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wanted_interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.state == ConnState::Established && !self.readable && !self.host_eof {
            ev |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    /// Writes as much of `pending` to the host as it accepts right now.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                    let ours = n.min(self.pending_uncounted);
                    self.pending_uncounted -= ours;
                    self.fwd_cnt += Wrapping(wire_len(n - ours));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= BUF_ALLOC / 4 {
            self.credit_update_due = true;
        }
        if self.pending.is_empty() && self.guest_done_sending {
            self.stream.shutdown_write();
        }
        Ok(())
    }
}

/// A host client that connected to the VM socket and has not yet finished
/// its `CONNECT <port>` line.
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
}

/// One packet for the guest: a header plus (for RW) its payload.
pub struct RxPacket {
    /// The header, in host byte order.
    pub header: Header,
    /// How many bytes of the caller's buffer hold the payload.
    pub payload_len: usize,
}

/// The host side of every vsock connection of one VM.
pub struct Muxer {
    guest_cid: u64,
    targets: HashMap<u32, HostTarget>,
    epoll: Epoll,
    listener: Option<UnixListener>,
    clients: HashMap<RawFd, PendingClient>,
    conns: BTreeMap<ConnKey, Conn>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Control packets (no payload) waiting for an rx buffer.
    control: VecDeque<Header>,
    next_local_port: u32,
    /// Where the round-robin over readable connections resumes.
    rr_cursor: Option<ConnKey>,
}

impl Muxer {
    /// A muxer for guest `guest_cid` that lets guest connections reach
    /// `targets` (by port) and, with `listen`, accepts host clients there.
    pub fn new(
        guest_cid: u64,
        targets: HashMap<u32, HostTarget>,
        listen: Option<&Path>,
    ) -> Result<Self, MuxerError> {
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let listener = match listen {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let l = UnixListener::bind(path)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                    .map_err(|source| MuxerError::Listen {
                        path: path.into(),
                        source,
                    })?;
                epoll
                    .ctl(
                        ControlOperation::Add,
                        l.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
                    )
                    .map_err(MuxerError::Epoll)?;
                Some(l)
            }
            None => None,
        };
        Ok(Self {
            guest_cid,
            targets,
            epoll,
            listener,
            clients: HashMap::new(),
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: LOCAL_PORT_BASE,
            rr_cursor: None,
        })
    }

    /// The muxer's epoll descriptor: readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Open connections (established or waiting for the guest's answer).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        let fds: Vec<_> = self.clients.keys().copied().collect();
        for fd in fds {
            self.drop_client(fd);
        }
        self.control.clear();
    }

    fn header(&self, key: ConnKey, op: u16) -> Header {
        let (fwd_cnt, flags) = self.conns.get(&key).map_or((0, 0), |c| (c.fwd_cnt.0, 0));
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.host_port,
            dst_port: key.guest_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    fn queue_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        let mut h = self.header(key, op);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&key) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
            c.credit_update_due = false;
        }
        self.control.push_back(h);
    }

    fn rst_reply(&mut self, h: &Header) {
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            kind: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            // Closing the fd removes it from the epoll set as well.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn reset_conn(&mut self, key: ConnKey) {
        self.remove(key);
        self.queue_control(key, OP_RST, 0);
    }

    fn update_interest(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let want = c.wanted_interest();
        if want == c.interest {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let token = u64::from(fd as u32);
        let res = if c.interest.is_empty() {
            self.epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(want, token))
        } else if want.is_empty() {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        } else {
            self.epoll
                .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token))
        };
        if res.is_ok() {
            c.interest = want;
        }
    }

    /// Handles one packet the guest sent on the tx queue.
    pub fn handle_guest_packet(&mut self, h: &Header, payload: &[u8]) {
        if h.op == OP_RST && !self.conns.contains_key(&key_of(h)) {
            return;
        }
        if h.dst_cid != HOST_CID || h.kind != TYPE_STREAM || h.src_cid != self.guest_cid {
            if h.op != OP_RST {
                self.rst_reply(h);
            }
            return;
        }
        let key = key_of(h);
        if h.op == OP_REQUEST {
            self.guest_connect(key, h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.rst_reply(h);
            return;
        };
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match h.op {
            OP_RESPONSE => {
                if conn.state != ConnState::Connecting {
                    self.reset_conn(key);
                    return;
                }
                conn.state = ConnState::Established;
                conn.readable = true;
                let ok = format!("OK {}\n", key.host_port);
                conn.pending.extend(ok.as_bytes());
                conn.pending_uncounted += ok.len();
                self.flush_conn(key);
            }
            OP_RW => {
                if conn.state != ConnState::Established || conn.guest_done_sending {
                    self.reset_conn(key);
                    return;
                }
                let guest_pending = conn.pending.len() - conn.pending_uncounted;
                if guest_pending + payload.len() > BUF_ALLOC as usize {
                    // The guest overran the credit we gave it.
                    self.reset_conn(key);
                    return;
                }
                conn.pending.extend(payload);
                self.flush_conn(key);
            }
            OP_CREDIT_UPDATE => self.update_interest(key),
            OP_CREDIT_REQUEST => self.queue_control(key, OP_CREDIT_UPDATE, 0),
            OP_SHUTDOWN => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    conn.guest_done_sending = true;
                }
                if h.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    conn.close_when_flushed = true;
                }
                self.flush_conn(key);
            }
            OP_RST => self.remove(key),
            _ => self.reset_conn(key),
        }
    }

    fn guest_connect(&mut self, key: ConnKey, h: &Header) {
        if self.conns.contains_key(&key) {
            self.reset_conn(key);
            return;
        }
        let Some(target) = self.targets.get(&key.host_port) else {
            self.rst_reply(h);
            return;
        };
        match HostStream::connect(target) {
            Ok(stream) => {
                let mut c = Conn::new(stream, ConnState::Established);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
                self.by_fd.insert(c.stream.as_raw_fd(), key);
                self.conns.insert(key, c);
                self.update_interest(key);
                self.queue_control(key, OP_RESPONSE, 0);
            }
            Err(_) => self.rst_reply(h),
        }
    }

    fn flush_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.flush().is_err() {
            self.reset_conn(key);
            return;
        }
        if conn.pending.is_empty() && conn.close_when_flushed {
            self.reset_conn(key);
            return;
        }
        self.update_interest(key);
    }

    /// Drains host socket readiness. Never blocks.
    pub fn process_host_events(&mut self) -> io::Result<()> {
        let mut events = [EpollEvent::default(); 32];
        // Drain until quiet (handling one event can make another ready, as
        // accepting a client does), but bounded so a misbehaving fd cannot
        // hold the device lock forever.
        for _ in 0..64 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            for ev in &events[..n] {
                self.handle_event(ev.data(), ev.event_set());
            }
        }
        Ok(())
    }

    fn handle_event(&mut self, token: u64, set: EventSet) {
        if token == TOKEN_LISTENER {
            self.accept_clients();
            return;
        }
        // Connection tokens are the (non-negative) descriptors themselves.
        let Ok(fd) = RawFd::try_from(token) else {
            return;
        };
        if self.clients.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            if let Some(c) = self.conns.get_mut(&key) {
                c.readable = true;
            }
        }
        if set.contains(EventSet::OUT) {
            self.flush_conn(key);
        }
        self.update_interest(key);
    }

    fn accept_clients(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, u64::from(fd as u32)),
                )
                .is_ok()
            {
                self.clients.insert(
                    fd,
                    PendingClient {
                        stream,
                        line: Vec::new(),
                    },
                );
            }
        }
    }

    fn drop_client(&mut self, fd: RawFd) {
        if self.clients.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        // One byte at a time: nothing after the newline may be consumed here,
        // it belongs to the stream.
        let mut byte = [0u8; 1];
        let port = loop {
            match client.stream.read(&mut byte) {
                Ok(0) => return self.drop_client(fd),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&client.line),
                Ok(_) => {
                    client.line.push(byte[0]);
                    if client.line.len() > MAX_CONNECT_LINE {
                        return self.drop_client(fd);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_client(fd),
            }
        };
        let Some(port) = port else {
            return self.drop_client(fd);
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let key = ConnKey {
            host_port: self.alloc_local_port(),
            guest_port: port,
        };
        self.by_fd.insert(fd, key);
        self.conns.insert(
            key,
            Conn::new(HostStream::Unix(client.stream), ConnState::Connecting),
        );
        self.queue_control(key, OP_REQUEST, 0);
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(LOCAL_PORT_BASE);
            if !self.conns.keys().any(|k| k.host_port == p) {
                return p;
            }
        }
    }

    /// Is there anything to give the guest, given an rx buffer?
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty()
            || self.conns.values().any(|c| {
                c.credit_update_due
                    || (c.state == ConnState::Established
                        && c.readable
                        && !c.host_eof
                        && c.peer_credit() > 0)
            })
    }

    /// Produces the next packet for the guest into `buf` (payload only; the
    /// caller writes the returned header in front). `None` when idle.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<RxPacket> {
        if let Some(h) = self.control.pop_front() {
            return Some(RxPacket {
                header: h,
                payload_len: 0,
            });
        }
        if let Some((&key, _)) = self.conns.iter().find(|(_, c)| c.credit_update_due) {
            let mut h = self.header(key, OP_CREDIT_UPDATE);
            if let Some(c) = self.conns.get_mut(&key) {
                c.credit_update_due = false;
                c.last_fwd_cnt_sent = c.fwd_cnt;
                h.fwd_cnt = c.fwd_cnt.0;
            }
            return Some(RxPacket {
                header: h,
                payload_len: 0,
            });
        }
        // Round-robin so one busy connection cannot starve the others.
        let keys: Vec<ConnKey> = match self.rr_cursor {
            Some(cur) => self
                .conns
                .range((std::ops::Bound::Excluded(cur), std::ops::Bound::Unbounded))
                .chain(self.conns.range(..=cur))
                .map(|(k, _)| *k)
                .collect(),
            None => self.conns.keys().copied().collect(),
        };
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if c.state != ConnState::Established || !c.readable || c.host_eof {
                continue;
            }
            let credit = c.peer_credit() as usize;
            if credit == 0 {
                continue;
            }
            let want = credit.min(buf.len()).min(MAX_PKT_PAYLOAD);
            match c.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    c.host_eof = true;
                    c.readable = false;
                    self.update_interest(key);
                    self.rr_cursor = Some(key);
                    let mut h = self.header(key, OP_SHUTDOWN);
                    h.flags = SHUTDOWN_SEND;
                    return Some(RxPacket {
                        header: h,
                        payload_len: 0,
                    });
                }
                Ok(n) => {
                    // At most `want` ≤ MAX_PKT_PAYLOAD bytes.
                    let len = wire_len(n);
                    c.rx_cnt += Wrapping(len);
                    c.last_fwd_cnt_sent = c.fwd_cnt;
                    c.credit_update_due = false;
                    self.rr_cursor = Some(key);
                    let mut h = self.header(key, OP_RW);
                    h.len = len;
                    return Some(RxPacket {
                        header: h,
                        payload_len: n,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.readable = false;
                    self.update_interest(key);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.reset_conn(key);
                    return self.control.pop_front().map(|h| RxPacket {
                        header: h,
                        payload_len: 0,
                    });
                }
            }
        }
        None
    }
}

fn key_of(h: &Header) -> ConnKey {
    ConnKey {
        host_port: h.dst_port,
        guest_port: h.src_port,
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    s.strip_prefix("CONNECT ")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
    }
}
