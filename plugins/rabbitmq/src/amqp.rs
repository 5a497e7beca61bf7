//! A blocking AMQP 0-9-1 client over `std::net` (wasi:sockets on wasip2): one connection, one
//! channel in publisher-confirm mode. Frames and methods are encoded and decoded by
//! `amq-protocol`; this module only sequences them. Heartbeats are negotiated off (0 in
//! `tune-ok`): a component runs only inside host calls and could not answer them in between;
//! a dead broker shows up as an I/O error on the next call instead.

use std::io::{Read, Write};
use std::net::TcpStream;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::uri::AMQPUri;

pub use amq_protocol::protocol::BasicProperties;

/// The one channel every call uses.
const CH: u16 = 1;
/// AMQP reply code of a missing queue or exchange (`passive` declares).
pub const NOT_FOUND: u16 = 404;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The socket failed or the broker closed the connection: reconnect.
    #[error("connection to the broker lost: {0}")]
    Io(#[from] std::io::Error),
    /// The broker closed the connection with a reason.
    #[error("the broker closed the connection: {code} {text}")]
    ConnectionClosed { code: u16, text: String },
    /// The broker closed the channel (the connection is fine; the channel was reopened).
    #[error("the broker refused the operation: {code} {text}")]
    ChannelClosed { code: u16, text: String },
    /// A frame the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker nacked a publish.
    #[error("the broker did not accept the message (publisher confirm nack)")]
    Nacked,
}

impl AmqpError {
    /// True when the connection is unusable and must be replaced.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            AmqpError::Io(_) | AmqpError::ConnectionClosed { .. } | AmqpError::Protocol(_)
        )
    }
}

/// A message fetched with `basic.get`.
pub struct Got {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// A live connection with its channel open in confirm mode.
pub struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
    frame_max: u32,
    /// Publish sequence number of the last publish (publisher confirms count from 1).
    seq: u64,
}

fn ss(s: &str) -> ShortString {
    s.into()
}

impl Conn {
    /// Connects, authenticates with PLAIN from the URI, opens the vhost and channel 1 with
    /// `confirm.select`.
    pub fn open(uri: &AMQPUri) -> Result<Conn, AmqpError> {
        let sock = TcpStream::connect((uri.authority.host.as_str(), uri.authority.port))?;
        let _ = sock.set_nodelay(true);
        let mut c = Conn {
            sock,
            buf: Vec::with_capacity(8192),
            frame_max: 131_072,
            seq: 0,
        };
        c.send(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()))?;
        match c.read_method(0)? {
            AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
            other => {
                return Err(AmqpError::Protocol(format!(
                    "expected connection.start, got {other:?}"
                )))
            }
        }
        let user = &uri.authority.userinfo;
        let mut response = Vec::new();
        response.push(0);
        response.extend_from_slice(user.username.as_bytes());
        response.push(0);
        response.extend_from_slice(user.password.as_bytes());
        let mut props = FieldTable::default();
        props.insert(
            ss("product"),
            AMQPValue::LongString(LongString::from("iii-rabbitmq".as_bytes())),
        );
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: ss("PLAIN"),
                response: LongString::from(response),
                locale: ss("en_US"),
            })),
        )?;
        let tune = match c.read_method(0)? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => {
                return Err(AmqpError::Protocol(format!(
                    "expected connection.tune (wrong credentials?), got {other:?}"
                )))
            }
        };
        c.frame_max = if tune.frame_max == 0 {
            131_072
        } else {
            tune.frame_max.min(131_072)
        };
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 1,
                frame_max: c.frame_max,
                heartbeat: 0,
            })),
        )?;
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: ss(&uri.vhost),
            })),
        )?;
        match c.read_method(0)? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => {
                return Err(AmqpError::Protocol(format!(
                    "expected connection.open-ok, got {other:?}"
                )))
            }
        }
        c.open_channel()?;
        Ok(c)
    }

    fn open_channel(&mut self) -> Result<(), AmqpError> {
        self.send_method(
            CH,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        match self.read_method(CH)? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => {
                return Err(AmqpError::Protocol(format!(
                    "expected channel.open-ok, got {other:?}"
                )))
            }
        }
        self.send_method(
            CH,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )?;
        match self.read_method(CH)? {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
            other => {
                return Err(AmqpError::Protocol(format!(
                    "expected confirm.select-ok, got {other:?}"
                )))
            }
        }
        self.seq = 0;
        Ok(())
    }

    fn send(&mut self, f: &AMQPFrame) -> Result<(), AmqpError> {
        let (bytes, _) = cookie_factory::gen(gen_frame(f), Vec::new())
            .map_err(|e| AmqpError::Protocol(format!("cannot encode a frame: {e:?}")))?;
        self.sock.write_all(&bytes)?;
        Ok(())
    }

    /// Encodes `frames` into one buffer and writes it with one call.
    fn send_all(&mut self, frames: &[AMQPFrame]) -> Result<(), AmqpError> {
        let mut bytes = Vec::new();
        for f in frames {
            let (b, _) = cookie_factory::gen(gen_frame(f), bytes)
                .map_err(|e| AmqpError::Protocol(format!("cannot encode a frame: {e:?}")))?;
            bytes = b;
        }
        self.sock.write_all(&bytes)?;
        Ok(())
    }

    fn send_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), AmqpError> {
        self.send(&AMQPFrame::Method(ch, m))
    }

    /// The next frame from the socket.
    fn read_frame(&mut self) -> Result<AMQPFrame, AmqpError> {
        loop {
            if !self.buf.is_empty() {
                match parse_frame(self.buf.as_slice()) {
                    Ok((rest, frame)) => {
                        let used = self.buf.len() - rest.len();
                        self.buf.drain(..used);
                        return Ok(frame);
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => {
                        return Err(AmqpError::Protocol(format!("cannot decode a frame: {e:?}")))
                    }
                }
            }
            let mut chunk = [0u8; 16_384];
            let n = self.sock.read(&mut chunk)?;
            if n == 0 {
                return Err(AmqpError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the broker closed the socket",
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next method on `ch`, skipping heartbeats; a close of the channel or connection is
    /// answered and turned into an error (the channel is reopened).
    fn read_method(&mut self, ch: u16) -> Result<AMQPClass, AmqpError> {
        loop {
            match self.read_frame()? {
                AMQPFrame::Heartbeat(_) => {}
                AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    let _ = self.send_method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    return Err(AmqpError::ConnectionClosed {
                        code: c.reply_code,
                        text: c.reply_text.to_string(),
                    });
                }
                AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
                    if c == ch =>
                {
                    self.send_method(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    )?;
                    self.open_channel()?;
                    return Err(AmqpError::ChannelClosed {
                        code: close.reply_code,
                        text: close.reply_text.to_string(),
                    });
                }
                AMQPFrame::Method(c, m) if c == ch => return Ok(m),
                other => return Err(AmqpError::Protocol(format!("unexpected frame {other:?}"))),
            }
        }
    }

    fn call(&mut self, m: AMQPClass) -> Result<AMQPClass, AmqpError> {
        self.send_method(CH, m)?;
        self.read_method(CH)
    }

    /// Declares a durable queue (or checks it exists with `passive`); its ready count.
    pub fn declare_queue(
        &mut self,
        name: &str,
        passive: bool,
        arguments: FieldTable,
    ) -> Result<u32, AmqpError> {
        match self.call(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: ss(name),
                passive,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            },
        )))? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => Err(AmqpError::Protocol(format!(
                "expected queue.declare-ok, got {other:?}"
            ))),
        }
    }

    /// Declares a durable fanout exchange.
    pub fn declare_fanout(&mut self, name: &str) -> Result<(), AmqpError> {
        match self.call(AMQPClass::Exchange(exchange::AMQPMethod::Declare(
            exchange::Declare {
                exchange: ss(name),
                kind: ss("fanout"),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )))? {
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)) => Ok(()),
            other => Err(AmqpError::Protocol(format!(
                "expected exchange.declare-ok, got {other:?}"
            ))),
        }
    }

    /// Binds (or unbinds) `queue` to `exchange`.
    pub fn bind(
        &mut self,
        queue_name: &str,
        exchange_name: &str,
        bind: bool,
    ) -> Result<(), AmqpError> {
        let m = if bind {
            queue::AMQPMethod::Bind(queue::Bind {
                queue: ss(queue_name),
                exchange: ss(exchange_name),
                routing_key: ss(""),
                nowait: false,
                arguments: FieldTable::default(),
            })
        } else {
            queue::AMQPMethod::Unbind(queue::Unbind {
                queue: ss(queue_name),
                exchange: ss(exchange_name),
                routing_key: ss(""),
                arguments: FieldTable::default(),
            })
        };
        match self.call(AMQPClass::Queue(m))? {
            AMQPClass::Queue(queue::AMQPMethod::BindOk(_) | queue::AMQPMethod::UnbindOk(_)) => {
                Ok(())
            }
            other => Err(AmqpError::Protocol(format!(
                "expected queue.bind-ok, got {other:?}"
            ))),
        }
    }

    /// Publishes and waits for the broker's confirm. `Ok(false)`: `mandatory` and no queue
    /// took it (returned).
    pub fn publish(
        &mut self,
        exchange_name: &str,
        routing_key: &str,
        mandatory: bool,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<bool, AmqpError> {
        // One write for the method, header and body frames: written one by one, Nagle and the
        // broker's delayed ACK hold the later ones back ~40 ms per publish.
        let mut frames = vec![
            AMQPFrame::Method(
                CH,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: ss(exchange_name),
                    routing_key: ss(routing_key),
                    mandatory,
                    immediate: false,
                })),
            ),
            AMQPFrame::Header(
                CH,
                60,
                Box::new(AMQPContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties,
                }),
            ),
        ];
        let max = (self.frame_max as usize).saturating_sub(8).max(1);
        frames.extend(body.chunks(max).map(|c| AMQPFrame::Body(CH, c.to_vec())));
        self.send_all(&frames)?;
        self.seq += 1;
        let mut routed = true;
        loop {
            match self.read_method(CH)? {
                AMQPClass::Basic(basic::AMQPMethod::Return(_)) => {
                    routed = false;
                    self.read_content()?;
                }
                AMQPClass::Basic(basic::AMQPMethod::Ack(a)) if a.delivery_tag >= self.seq => {
                    return Ok(routed)
                }
                AMQPClass::Basic(basic::AMQPMethod::Ack(_)) => {}
                AMQPClass::Basic(basic::AMQPMethod::Nack(_)) => return Err(AmqpError::Nacked),
                other => {
                    return Err(AmqpError::Protocol(format!(
                        "expected basic.ack, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Reads a content header and its body frames.
    fn read_content(&mut self) -> Result<(BasicProperties, Vec<u8>), AmqpError> {
        let header = match self.read_frame()? {
            AMQPFrame::Header(_, _, h) => h,
            other => {
                return Err(AmqpError::Protocol(format!(
                    "expected a content header, got {other:?}"
                )))
            }
        };
        let mut body = Vec::with_capacity(header.body_size as usize);
        while (body.len() as u64) < header.body_size {
            match self.read_frame()? {
                AMQPFrame::Body(_, b) => body.extend_from_slice(&b),
                AMQPFrame::Heartbeat(_) => {}
                other => {
                    return Err(AmqpError::Protocol(format!(
                        "expected a content body, got {other:?}"
                    )))
                }
            }
        }
        Ok((header.properties, body))
    }

    /// `basic.get` without auto-ack: the message stays unacknowledged on this channel.
    pub fn get(&mut self, queue_name: &str) -> Result<Option<Got>, AmqpError> {
        match self.call(AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: ss(queue_name),
            no_ack: false,
        })))? {
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => Ok(None),
            AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)) => {
                let (properties, body) = self.read_content()?;
                Ok(Some(Got {
                    delivery_tag: ok.delivery_tag,
                    redelivered: ok.redelivered,
                    properties,
                    body,
                }))
            }
            other => Err(AmqpError::Protocol(format!(
                "expected basic.get-ok, got {other:?}"
            ))),
        }
    }

    /// Acknowledges one delivery (no reply in AMQP).
    pub fn ack(&mut self, delivery_tag: u64) -> Result<(), AmqpError> {
        self.send_method(
            CH,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple: false,
            })),
        )
    }

    /// Hands one delivery back to its queue.
    pub fn requeue(&mut self, delivery_tag: u64) -> Result<(), AmqpError> {
        self.send_method(
            CH,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag,
                multiple: false,
                requeue: true,
            })),
        )
    }
}
