//! Device tests: a simulated guest driver on mock queues talks to real host
//! sockets through the device.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;

use super::packet::*;
use super::*;
use crate::devices::virtio::testing::*;
use crate::devices::CountingIrq;

const GUEST_CID: u64 = 3;
const SLOT_LEN: u32 = 0x11000;
const SLOT: u64 = SLOT_LEN as u64;

struct Guest<'m> {
    dev: Vsock,
    rx: DriverQueue<'m>,
    tx: DriverQueue<'m>,
    irq: Arc<CountingIrq>,
    inbox: Vec<(Header, Vec<u8>)>,
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

impl<'m> Guest<'m> {
    fn new(mem: &'m GuestMem, cfg: VsockConfig) -> Self {
        let mut dev = Vsock::new(&cfg).unwrap();
        let rx = DriverQueue::new(mem, 0x1000, 0x10_0000, 32, SLOT);
        let tx = DriverQueue::new(mem, 0x4000, 0x100_0000, 32, SLOT);
        let ev = DriverQueue::new(mem, 0x1_0000, 0x200_0000, 4, 0x100);
        let irq = Arc::new(CountingIrq::default());
        dev.activate(
            mem.clone(),
            vec![rx.device_queue(), tx.device_queue(), ev.device_queue()],
            Arc::new(Interrupt::new(irq.clone())),
        )
        .unwrap();
        let mut g = Self {
            dev,
            rx,
            tx,
            irq,
            inbox: Vec::new(),
        };
        g.post_rx();
        g
    }

    fn post_rx(&mut self) {
        let mut posted = false;
        while self.rx.free_descriptors() > 0 {
            self.rx.add(&[w(SLOT_LEN)]);
            posted = true;
        }
        if posted {
            self.dev.process_queue(RXQ).unwrap();
        }
    }

    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = u32::try_from(payload.len()).unwrap();
        let hb = h.to_le();
        let bytes = hb.as_slice().to_vec();
        if payload.is_empty() {
            self.tx.add(&[r(&bytes)]);
        } else {
            self.tx.add(&[r(&bytes), r(payload)]);
        }
        self.dev.process_queue(TXQ).unwrap();
        assert_eq!(self.tx.take_used().len(), 1, "tx chain must be consumed");
        self.collect();
    }

    /// Moves completed rx buffers into the inbox and reposts them.
    fn collect(&mut self) {
        for (_, len, addrs) in self.rx.take_used() {
            let raw = self.rx.read(addrs[0], len as usize);
            let h = Header::from_slice(&raw[..HEADER_LEN]).unwrap().from_le();
            assert_eq!(h.len as usize, raw.len() - HEADER_LEN);
            self.inbox.push((h, raw[HEADER_LEN..].to_vec()));
        }
        self.post_rx();
    }

    /// Waits for host socket activity and lets the device handle it.
    fn pump_host(&mut self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.dev.host_event_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        self.dev.process_host_events().unwrap();
        self.collect();
    }

    fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Header, &[u8]) -> bool,
    ) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.inbox.iter().position(|(h, p)| pred(h, p)) {
                return self.inbox.remove(i);
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.pump_host(20);
        }
    }
}

fn tcp_cfg(port: u32, addr: std::net::SocketAddr) -> VsockConfig {
    VsockConfig {
        guest_cid: GUEST_CID,
        host_ports: [(port, HostTarget::Tcp(addr))].into_iter().collect(),
        listen_path: None,
    }
}

#[test]
fn config_space_reports_guest_cid() {
    let dev = Vsock::new(&VsockConfig {
        guest_cid: 42,
        ..Default::default()
    })
    .unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 42);
    assert_eq!(dev.device_type(), TYPE_VSOCK);
}

#[test]
fn guest_connects_to_allowed_tcp_port_and_exchanges_data() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, tcp_cfg(5000, listener.local_addr().unwrap()));
    g.send(hdr(OP_REQUEST, 1025, 5000), &[]);
    let (resp, _) = g.wait_for("RESPONSE", |h, _| h.op == OP_RESPONSE);
    assert_eq!(
        (resp.src_port, resp.dst_port, resp.dst_cid),
        (5000, 1025, GUEST_CID)
    );
    assert_eq!({ resp.buf_alloc }, muxer::BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    assert!(g.irq.count() > 0);

    g.send(hdr(OP_RW, 1025, 5000), b"ping from guest");
    let mut buf = [0u8; 15];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping from guest");

    host.write_all(b"pong from host").unwrap();
    let (rw, data) = g.wait_for("RW", |h, _| h.op == OP_RW);
    assert_eq!(data, b"pong from host");
    assert_eq!({ rw.fwd_cnt }, 15, "fwd_cnt counts bytes the host accepted");

    // Host closes: the guest is told the host will send no more.
    drop(host);
    let (sd, _) = g.wait_for("SHUTDOWN", |h, _| h.op == OP_SHUTDOWN);
    assert_ne!(sd.flags & SHUTDOWN_SEND, 0);
    g.send(hdr(OP_RST, 1025, 5000), &[]);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn ports_not_allowed_are_refused_with_rst() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, tcp_cfg(5000, listener.local_addr().unwrap()));
    g.send(hdr(OP_REQUEST, 1025, 22), &[]);
    let (rst, _) = g.wait_for("RST", |h, _| h.op == OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (22, 1025));
    // Data on a connection that does not exist is refused as well.
    g.send(hdr(OP_RW, 1026, 5000), b"x");
    g.wait_for("RST", |h, _| h.op == OP_RST && h.dst_port == 1026);
    // A packet claiming another source CID is refused.
    let mut spoofed = hdr(OP_REQUEST, 1027, 5000);
    spoofed.src_cid = 99;
    g.send(spoofed, &[]);
    g.wait_for("RST", |h, _| h.op == OP_RST && h.dst_port == 1027);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn refused_host_connection_is_reset() {
    // Bind then drop, so nothing listens on the port.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, tcp_cfg(5000, addr));
    g.send(hdr(OP_REQUEST, 1025, 5000), &[]);
    g.wait_for("RST", |h, _| h.op == OP_RST);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn host_initiated_connect_handshake_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm.sock");
    let mem = guest_memory();
    let mut g = Guest::new(
        &mem,
        VsockConfig {
            guest_cid: GUEST_CID,
            host_ports: Default::default(),
            listen_path: Some(sock.clone()),
        },
    );
    let mut client = UnixStream::connect(&sock).unwrap();
    client.write_all(b"CONNECT 7000\nearly bytes").unwrap();
    let (req, _) = g.wait_for("REQUEST", |h, _| h.op == OP_REQUEST);
    assert_eq!(
        (req.dst_port, req.dst_cid, req.src_cid),
        (7000, GUEST_CID, HOST_CID)
    );
    let local = req.src_port;
    // Guest accepts.
    let mut resp = hdr(OP_RESPONSE, 7000, local);
    resp.dst_port = local;
    g.send(resp, &[]);
    let mut line = [0u8; 64];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = client.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {local}\n")
    );
    // Bytes written right after the CONNECT line belong to the stream.
    let (_, data) = g.wait_for("RW", |h, _| h.op == OP_RW);
    assert_eq!(data, b"early bytes");
    let mut rw = hdr(OP_RW, 7000, local);
    rw.fwd_cnt = 11;
    g.send(rw, b"hello host");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    // The guest resets: the host side sees EOF.
    g.send(hdr(OP_RST, 7000, local), &[]);
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn guest_refusing_host_connect_closes_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm.sock");
    let mem = guest_memory();
    let mut g = Guest::new(
        &mem,
        VsockConfig {
            guest_cid: GUEST_CID,
            host_ports: Default::default(),
            listen_path: Some(sock.clone()),
        },
    );
    let mut client = UnixStream::connect(&sock).unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    let (req, _) = g.wait_for("REQUEST", |h, _| h.op == OP_REQUEST);
    g.send(hdr(OP_RST, 9, req.src_port), &[]);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "client sees EOF, no OK line"
    );
}

#[test]
fn guest_shutdown_closes_host_side_after_flushing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, tcp_cfg(5000, listener.local_addr().unwrap()));
    g.send(hdr(OP_REQUEST, 1025, 5000), &[]);
    g.wait_for("RESPONSE", |h, _| h.op == OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    g.send(hdr(OP_RW, 1025, 5000), b"last words");
    let mut sd = hdr(OP_SHUTDOWN, 1025, 5000);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    g.send(sd, &[]);
    g.wait_for("RST", |h, _| h.op == OP_RST);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last words");
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn device_respects_guest_credit() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, tcp_cfg(5000, listener.local_addr().unwrap()));
    let mut req = hdr(OP_REQUEST, 1025, 5000);
    req.buf_alloc = 4096;
    g.send(req, &[]);
    g.wait_for("RESPONSE", |h, _| h.op == OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[7u8; 10_000]).unwrap();
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        g.pump_host(20);
        got += g
            .inbox
            .drain(..)
            .filter(|(h, _)| h.op == OP_RW)
            .map(|(_, d)| d.len())
            .sum::<usize>();
    }
    assert_eq!(got, 4096, "exactly the guest's buffer, no more");
    // The guest consumed it and says so: more flows.
    let mut cu = hdr(OP_CREDIT_UPDATE, 1025, 5000);
    cu.buf_alloc = 4096;
    cu.fwd_cnt = 4096;
    g.send(cu, &[]);
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        g.pump_host(20);
        got += g
            .inbox
            .drain(..)
            .filter(|(h, _)| h.op == OP_RW)
            .map(|(_, d)| d.len())
            .sum::<usize>();
    }
    assert_eq!(got, 8192);
}

#[test]
fn guest_overrunning_host_credit_is_reset() {
    // A listener that never reads: the host socket fills up, pending grows.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, tcp_cfg(5000, listener.local_addr().unwrap()));
    g.send(hdr(OP_REQUEST, 1025, 5000), &[]);
    g.wait_for("RESPONSE", |h, _| h.op == OP_RESPONSE);
    let (_host, _) = listener.accept().unwrap();
    let chunk = vec![1u8; 64 * 1024];
    // Far more than BUF_ALLOC plus what the kernel socket buffers absorb.
    for _ in 0..256 {
        g.send(hdr(OP_RW, 1025, 5000), &chunk);
        if g.inbox.iter().any(|(h, _)| h.op == OP_RST) {
            break;
        }
    }
    g.wait_for("RST", |h, _| h.op == OP_RST);
    assert_eq!(g.dev.connection_count(), 0);
}

/// Two-way bulk traffic through an echo server, both sides honouring credit.
/// The echo server writes back while we keep writing, which is the pattern
/// that deadlocks a device doing blocking host writes.
#[test]
fn bulk_echo_both_directions_with_credit() {
    const TOTAL: usize = 16 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let data: Vec<u8> = (0..TOTAL).map(|i| u8::try_from(i % 253).unwrap()).collect();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, tcp_cfg(5000, addr));
    const GUEST_BUF: u32 = 128 * 1024;
    let mut req = hdr(OP_REQUEST, 1025, 5000);
    req.buf_alloc = GUEST_BUF;
    g.send(req, &[]);
    let (resp, _) = g.wait_for("RESPONSE", |h, _| h.op == OP_RESPONSE);
    let mut host_buf_alloc = resp.buf_alloc;
    let mut host_fwd_cnt = resp.fwd_cnt;
    let mut sent = 0usize;
    let mut received: Vec<u8> = Vec::with_capacity(TOTAL);
    let mut reported = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "bulk echo stalled at {} of {TOTAL}",
            received.len()
        );
        // Send while the host has credit for us.
        let credit = host_buf_alloc as usize - (sent - host_fwd_cnt as usize);
        if sent < TOTAL && credit > 0 {
            let n = credit.min(32 * 1024).min(TOTAL - sent);
            let mut h = hdr(OP_RW, 1025, 5000);
            h.buf_alloc = GUEST_BUF;
            h.fwd_cnt = u32::try_from(received.len()).unwrap();
            g.send(h, &data[sent..sent + n]);
            sent += n;
        } else {
            g.pump_host(10);
        }
        for (h, payload) in g.inbox.drain(..).collect::<Vec<_>>() {
            host_buf_alloc = h.buf_alloc;
            host_fwd_cnt = h.fwd_cnt;
            match h.op {
                OP_RW => received.extend_from_slice(&payload),
                OP_CREDIT_UPDATE => {}
                op => panic!("unexpected op {op}"),
            }
        }
        if received.len() - reported >= GUEST_BUF as usize / 4 {
            let mut cu = hdr(OP_CREDIT_UPDATE, 1025, 5000);
            cu.buf_alloc = GUEST_BUF;
            cu.fwd_cnt = u32::try_from(received.len()).unwrap();
            g.send(cu, &[]);
            reported = received.len();
        }
    }
    assert_eq!(received.len(), TOTAL);
    assert!(received == data, "echoed bytes differ");
    g.send(hdr(OP_RST, 1025, 5000), &[]);
    echo.join().unwrap();
}

#[test]
fn host_connect_before_driver_is_up_is_queued_not_spun_on() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm.sock");
    let mut dev = Vsock::new(&VsockConfig {
        guest_cid: GUEST_CID,
        host_ports: Default::default(),
        listen_path: Some(sock.clone()),
    })
    .unwrap();
    let mut client = UnixStream::connect(&sock).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let fd = dev.host_event_fd().unwrap();
    let readable = |timeout: i32| {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout) > 0 }
    };
    assert!(readable(1000));
    dev.process_host_events().unwrap();
    // Readiness was consumed: an event loop would now sleep, not spin.
    assert!(!readable(50), "host events still pending before activation");
    // Once the driver is up, the queued REQUEST reaches the guest.
    let mem = guest_memory();
    let mut rx = DriverQueue::new(&mem, 0x1000, 0x10_0000, 32, SLOT);
    let tx = DriverQueue::new(&mem, 0x4000, 0x100_0000, 32, SLOT);
    let ev = DriverQueue::new(&mem, 0x1_0000, 0x200_0000, 4, 0x100);
    rx.add(&[w(SLOT_LEN)]);
    dev.activate(
        mem.clone(),
        vec![rx.device_queue(), tx.device_queue(), ev.device_queue()],
        Arc::new(Interrupt::new(Arc::new(CountingIrq::default()))),
    )
    .unwrap();
    let used = rx.take_used();
    assert_eq!(used.len(), 1);
    let raw = rx.read(used[0].2[0], HEADER_LEN);
    let h = Header::from_slice(&raw).unwrap().from_le();
    assert_eq!(({ h.op }, { h.dst_port }), (OP_REQUEST, 52));
}

#[test]
fn guest_connects_to_allowed_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(
        &mem,
        VsockConfig {
            guest_cid: GUEST_CID,
            host_ports: [(49134, HostTarget::Unix(path.clone()))]
                .into_iter()
                .collect(),
            listen_path: None,
        },
    );
    g.send(hdr(OP_REQUEST, 2000, 49134), &[]);
    g.wait_for("RESPONSE", |h, _| h.op == OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    g.send(hdr(OP_RW, 2000, 49134), b"over unix");
    let mut buf = [0u8; 9];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"over unix");
    host.write_all(b"back").unwrap();
    let (_, data) = g.wait_for("RW", |h, _| h.op == OP_RW);
    assert_eq!(data, b"back");
}
