//! Data channels (PROTOCOL.md §6): byte/stream pipes between workers outside the JSON messages.
//! A channel is a bounded queue of items; each side (reader, writer) can be taken once, either by
//! a WebSocket at `/ws/channels/{id}` or by the engine itself (HTTP request/response bodies).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::core::{new_id, Core};

/// Frames buffered between a channel's writer and reader unless the creator asks otherwise.
pub const DEFAULT_BUFFER: usize = 64;
/// The largest buffer a creator may ask for.
pub const MAX_BUFFER: usize = 1024;
/// A channel at least one side of which never connected is reclaimed after this long, unless
/// the listener's `channel_unclaimed_timeout_ms` says otherwise.
pub const UNUSED_TTL: Duration = Duration::from_secs(60);
/// How often the writer side looks again while the channel holds its byte budget.
const BUDGET_POLL: Duration = Duration::from_millis(5);

/// Result of [`Channels::check`]: unknown channel or wrong key is `NotFound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideState {
    /// The side exists and nobody has opened it yet.
    Available,
    /// The side was opened already (each side opens once).
    Taken,
    /// No such channel, or the key is wrong.
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// A side of a channel.
pub enum Direction {
    /// The reading side.
    Read,
    /// The writing side.
    Write,
}

#[derive(Debug, Clone)]
/// One frame travelling through a channel.
pub enum ChanItem {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

/// A data channel: a bounded pipe from one WebSocket side to the other.
pub struct Channel {
    /// The channel id in `/ws/channels/{id}`.
    pub id: String,
    read_key: String,
    write_key: String,
    tx: Mutex<Option<mpsc::Sender<ChanItem>>>,
    rx: Mutex<Option<mpsc::Receiver<ChanItem>>>,
    created: Instant,
    /// Sides that have finished; the record is dropped when both have.
    finished: AtomicU8,
}

impl Channel {
    /// `{"channel_id","access_key","direction"}` for the holder of the given side.
    pub fn reference(&self, dir: Direction) -> Value {
        match dir {
            Direction::Read => {
                json!({"channel_id": self.id, "access_key": self.read_key, "direction": "read"})
            }
            Direction::Write => {
                json!({"channel_id": self.id, "access_key": self.write_key, "direction": "write"})
            }
        }
    }
}

/// Every open channel, by id.
pub struct Channels {
    map: Mutex<HashMap<String, Arc<Channel>>>,
    unclaimed_ttl: Mutex<Duration>,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            map: Mutex::default(),
            unclaimed_ttl: Mutex::new(UNUSED_TTL),
        }
    }
}

impl Channels {
    /// Creates a channel buffering `buffer` frames.
    pub fn create(&self, buffer: usize) -> Arc<Channel> {
        let (tx, rx) = mpsc::channel(buffer.clamp(1, MAX_BUFFER));
        let ch = Arc::new(Channel {
            id: iii_protocol::format_uuid(new_id()),
            read_key: iii_protocol::format_uuid(new_id()),
            write_key: iii_protocol::format_uuid(new_id()),
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            created: Instant::now(),
            finished: AtomicU8::new(0),
        });
        self.map.lock().insert(ch.id.clone(), ch.clone());
        ch
    }

    /// Whether a socket may take the given side of a channel.
    pub fn check(&self, id: &str, key: &str, dir: Direction) -> SideState {
        let map = self.map.lock();
        let Some(ch) = map.get(id) else {
            return SideState::NotFound;
        };
        let free = match dir {
            Direction::Read if ch.read_key == key => ch.rx.lock().is_some(),
            Direction::Write if ch.write_key == key => ch.tx.lock().is_some(),
            _ => return SideState::NotFound,
        };
        if free {
            SideState::Available
        } else {
            SideState::Taken
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Channel>> {
        self.map.lock().get(id).cloned()
    }

    /// Takes the writing end (once).
    pub fn take_writer(&self, ch: &Channel) -> Option<mpsc::Sender<ChanItem>> {
        ch.tx.lock().take()
    }

    /// Takes the reading end (once).
    pub fn take_reader(&self, ch: &Channel) -> Option<mpsc::Receiver<ChanItem>> {
        ch.rx.lock().take()
    }

    /// Marks one side finished; drops the record once both are.
    pub fn side_finished(&self, ch: &Channel) {
        if ch.finished.fetch_add(1, Ordering::SeqCst) + 1 >= 2 {
            self.map.lock().remove(&ch.id);
        }
    }

    /// Removes a channel.
    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }

    /// Sets how long a channel may wait for its other side (the shortest a listener asks).
    pub fn set_unclaimed_timeout(&self, ttl: Duration) {
        let mut cur = self.unclaimed_ttl.lock();
        *cur = (*cur).min(ttl);
    }

    /// How long a channel may wait for its other side.
    pub fn unclaimed_timeout(&self) -> Duration {
        *self.unclaimed_ttl.lock()
    }

    /// Reclaims channels older than the timeout that never had both sides taken: the record
    /// goes, and so do the buffered frames, so a connected writer sees its channel closed.
    pub fn sweep(&self) -> usize {
        let ttl = self.unclaimed_timeout();
        let mut map = self.map.lock();
        let before = map.len();
        map.retain(|_, ch| {
            let keep =
                ch.created.elapsed() < ttl || (ch.tx.lock().is_none() && ch.rx.lock().is_none());
            if !keep {
                tracing::info!(channel_id = %ch.id, "data channel reclaimed: its other side never connected");
                ch.tx.lock().take();
                ch.rx.lock().take();
            }
            keep
        });
        before - map.len()
    }

    /// Number of open channels.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// No channel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Serves one side of a channel over a WebSocket.
pub async fn run_socket<S>(
    engine: Core,
    mut ws: WebSocketStream<S>,
    id: String,
    dir: Direction,
    budget: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let channels = engine.channels();
    let Some(ch) = channels.get(&id) else {
        let _ = ws.close(None).await;
        return;
    };
    match dir {
        Direction::Write => {
            let Some(tx) = channels.take_writer(&ch) else {
                let _ = ws.close(None).await;
                return;
            };
            let mut held = Held::default();
            loop {
                // A reclaimed channel drops its reader end: stop waiting on the writer then.
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = tx.closed() => break,
                };
                let Some(Ok(msg)) = msg else { break };
                let item = match msg {
                    Message::Text(t) => ChanItem::Text(t.as_str().to_string()),
                    Message::Binary(b) => ChanItem::Binary(b),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let n = match &item {
                    ChanItem::Text(t) => t.len(),
                    ChanItem::Binary(b) => b.len(),
                };
                // Back-pressure in bytes: while the channel holds its budget we stop reading
                // the writer's socket. The reader may be the engine itself (HTTP bodies), so
                // the budget is tracked from the queue's free permits rather than by the reader.
                held.settle(&tx);
                while held.bytes > 0 && held.bytes + n > budget && !tx.is_closed() {
                    tokio::time::sleep(BUDGET_POLL).await;
                    held.settle(&tx);
                }
                if tx.send(item).await.is_err() {
                    break;
                }
                held.sizes.push_back(n);
                held.bytes += n;
            }
            drop(tx);
            let _ = ws.close(None).await;
        }
        Direction::Read => {
            let Some(mut rx) = channels.take_reader(&ch) else {
                let _ = ws.close(None).await;
                return;
            };
            let (mut sink, mut stream) = ws.split();
            loop {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(ChanItem::Text(t)) => { if sink.send(Message::text(t)).await.is_err() { break; } }
                        Some(ChanItem::Binary(b)) => { if sink.send(Message::binary(b)).await.is_err() { break; } }
                        None => { let _ = sink.close().await; break; }
                    },
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        _ => {}
                    }
                }
            }
        }
    }
    channels.side_finished(&ch);
}

/// The sizes of the frames a writer socket queued that the reader has not taken yet.
#[derive(Default)]
struct Held {
    sizes: std::collections::VecDeque<usize>,
    bytes: usize,
}

impl Held {
    /// Forgets the frames the reader took. Only this writer sends on the queue, so the frames
    /// still queued are exactly its last `queued` ones.
    fn settle(&mut self, tx: &mpsc::Sender<ChanItem>) {
        let queued = tx.max_capacity() - tx.capacity();
        while self.sizes.len() > queued {
            self.bytes -= self.sizes.pop_front().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_taken_once_and_keys_checked() {
        let c = Channels::default();
        let ch = c.create(4);
        let r = ch.reference(Direction::Read);
        let w = ch.reference(Direction::Write);
        let rk = r["access_key"].as_str().unwrap();
        let wk = w["access_key"].as_str().unwrap();
        assert_eq!(c.check(&ch.id, rk, Direction::Read), SideState::Available);
        assert_eq!(c.check(&ch.id, wk, Direction::Read), SideState::NotFound);
        assert_eq!(c.check("nope", rk, Direction::Read), SideState::NotFound);
        assert!(c.take_reader(&ch).is_some());
        assert_eq!(c.check(&ch.id, rk, Direction::Read), SideState::Taken);
        assert!(c.take_reader(&ch).is_none());
        c.side_finished(&ch);
        assert_eq!(c.len(), 1);
        c.side_finished(&ch);
        assert_eq!(c.len(), 0);
    }
}
