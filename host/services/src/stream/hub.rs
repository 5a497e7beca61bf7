//! Who is subscribed to what on the stream socket, and the fan-out of stream events to them
//! (PROTOCOL.md §4.6.4). The write path (`stream::set` …) calls [`Hub::publish`], which never
//! waits: each subscriber has a byte-bounded [`Outbox`], and a subscriber whose outbox is full is
//! dropped rather than waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use iii_core::CancellationToken;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// The frames queued for one socket connection, bounded in bytes.
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<String>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    slow: AtomicBool,
    /// Cancelled when the connection must end at once (slow consumer).
    dropped: CancellationToken,
}

impl Outbox {
    /// An outbox holding at most `limit` bytes; the receiver and the shared byte count are
    /// the writer task's (it decrements the count as frames reach the socket).
    pub(crate) fn new(
        limit: usize,
    ) -> (
        Arc<Outbox>,
        mpsc::UnboundedReceiver<String>,
        Arc<AtomicUsize>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let o = Outbox {
            tx,
            queued: queued.clone(),
            limit,
            slow: AtomicBool::new(false),
            dropped: CancellationToken::new(),
        };
        (Arc::new(o), rx, queued)
    }

    /// Queues `frame` without waiting. An empty queue always takes one frame; a frame that would
    /// take the queue past its bound drops the connection instead. `false` when not queued.
    pub(crate) fn push(&self, frame: String) -> bool {
        if self.dropped.is_cancelled() {
            return false;
        }
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::SeqCst);
        if before > 0 && before + len > self.limit {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            self.drop_slow(before);
            return false;
        }
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Ends the connection as a slow consumer (logged once).
    pub(crate) fn drop_slow(&self, queued_bytes: usize) {
        if !self.slow.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                queued_bytes,
                limit_bytes = self.limit,
                "stream socket: slow consumer: subscriber stopped reading; disconnecting it"
            );
        }
        self.dropped.cancel();
    }

    /// Was the connection dropped as a slow consumer?
    pub(crate) fn is_slow(&self) -> bool {
        self.slow.load(Ordering::SeqCst)
    }

    /// Resolves when the connection must end at once.
    pub(crate) fn dropped(&self) -> &CancellationToken {
        &self.dropped
    }
}

/// Events reach a subscription only after its `sync`: until then they are held here.
enum Gate {
    Syncing { held: Vec<String>, bytes: usize },
    Live,
}

/// One open subscription of one connection.
pub(crate) struct Subscription {
    conn: u64,
    id: String,
    item: Option<String>,
    outbox: Arc<Outbox>,
    gate: Mutex<Gate>,
}

impl Subscription {
    /// A subscription of connection `conn`, holding events until [`Subscription::go_live`].
    pub(crate) fn new(conn: u64, id: String, item: Option<String>, outbox: Arc<Outbox>) -> Self {
        Subscription {
            conn,
            id,
            item,
            outbox,
            gate: Mutex::new(Gate::Syncing {
                held: Vec::new(),
                bytes: 0,
            }),
        }
    }

    /// Queues `sync`, then the events held since the subscription was recorded, then lets
    /// events through directly. Under the gate lock, so no event overtakes `sync`.
    pub(crate) fn go_live(&self, sync: String) {
        let mut gate = self.gate.lock();
        let held = match std::mem::replace(&mut *gate, Gate::Live) {
            Gate::Syncing { held, .. } => held,
            Gate::Live => Vec::new(),
        };
        if self.outbox.push(sync) {
            for f in held {
                if !self.outbox.push(f) {
                    break;
                }
            }
        }
    }

    fn deliver(&self, frame: String) {
        let mut gate = self.gate.lock();
        match &mut *gate {
            Gate::Live => {
                self.outbox.push(frame);
            }
            Gate::Syncing { held, bytes } => {
                *bytes += frame.len();
                if *bytes > self.outbox.limit {
                    let b = *bytes;
                    held.clear();
                    self.outbox.drop_slow(b);
                } else {
                    held.push(frame);
                }
            }
        }
    }
}

type Groups = HashMap<String, HashMap<String, Vec<Arc<Subscription>>>>;

/// Every open subscription, by stream and group.
#[derive(Default)]
pub(crate) struct Hub {
    streams: Mutex<Groups>,
    /// With a shared backend (redis): where events go for the other engines.
    pub(crate) relay: std::sync::OnceLock<Arc<crate::common::EventRelay>>,
}

impl Hub {
    /// Records `sub` on `stream`/`group`.
    pub(crate) fn add(&self, stream: &str, group: &str, sub: Arc<Subscription>) {
        self.streams
            .lock()
            .entry(stream.to_string())
            .or_default()
            .entry(group.to_string())
            .or_default()
            .push(sub);
    }

    /// Removes subscription `id` of connection `conn` (absent: nothing happens).
    pub(crate) fn remove(&self, stream: &str, group: &str, conn: u64, id: &str) {
        let mut streams = self.streams.lock();
        let Some(groups) = streams.get_mut(stream) else {
            return;
        };
        if let Some(subs) = groups.get_mut(group) {
            subs.retain(|s| !(s.conn == conn && s.id == id));
            if subs.is_empty() {
                groups.remove(group);
            }
        }
        if groups.is_empty() {
            streams.remove(stream);
        }
    }

    /// Number of open subscriptions (all connections).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.streams
            .lock()
            .values()
            .flat_map(|g| g.values())
            .map(Vec::len)
            .sum()
    }

    /// Queues `wrapper` (the `{"type":"stream",…}` object) for every subscription of
    /// `stream`/`group` it concerns: group subscriptions get everything, item subscriptions
    /// only events whose `id` is theirs. Each copy carries its `subscriptionId`. Serializes only
    /// when someone listens, outside the hub's lock, and never waits.
    pub(crate) fn publish(
        &self,
        stream: &str,
        group: &str,
        id: Option<&str>,
        wrapper: &serde_json::Value,
    ) {
        let targets: Vec<Arc<Subscription>> = {
            let streams = self.streams.lock();
            let Some(subs) = streams.get(stream).and_then(|g| g.get(group)) else {
                return;
            };
            subs.iter()
                .filter(|s| match (&s.item, id) {
                    (None, _) => true,
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                })
                .cloned()
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        let text = wrapper.to_string();
        for s in targets {
            s.deliver(with_subscription_id(&text, &s.id));
        }
    }
}

/// `{…}` → `{…,"subscriptionId":"<id>"}` without re-serializing the event (a serialized JSON
/// object always ends with `}`).
pub(crate) fn with_subscription_id(object: &str, id: &str) -> String {
    let body = object.strip_suffix('}').unwrap_or(object);
    let id = serde_json::Value::String(id.to_string()).to_string();
    let sep = if body.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!("{body}{sep}\"subscriptionId\":{id}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn drain(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<Value> {
        let mut v = Vec::new();
        while let Ok(f) = rx.try_recv() {
            v.push(serde_json::from_str(&f).unwrap());
        }
        v
    }

    #[test]
    fn the_subscription_id_is_appended_to_any_object() {
        assert_eq!(
            with_subscription_id(r#"{"a":1}"#, "s\"1"),
            r#"{"a":1,"subscriptionId":"s\"1"}"#
        );
        assert_eq!(with_subscription_id("{}", "x"), r#"{"subscriptionId":"x"}"#);
    }

    #[test]
    fn groups_get_everything_items_only_their_own_and_sync_comes_first() {
        let hub = Hub::default();
        let (out, mut rx, _) = Outbox::new(1 << 20);
        let group = Arc::new(Subscription::new(1, "g".into(), None, out.clone()));
        let item = Arc::new(Subscription::new(
            1,
            "i".into(),
            Some("m1".into()),
            out.clone(),
        ));
        hub.add("chat", "room", group.clone());
        hub.add("chat", "room", item.clone());
        hub.publish("chat", "room", Some("m1"), &json!({"n": 1}));
        group.go_live(r#"{"sync":"g","subscriptionId":"g"}"#.into());
        hub.publish("chat", "room", Some("m2"), &json!({"n": 2}));
        hub.publish("chat", "room", None, &json!({"n": 3}));
        hub.publish("chat", "other", Some("m1"), &json!({"n": 4}));
        item.go_live(r#"{"sync":"i","subscriptionId":"i"}"#.into());
        hub.publish("chat", "room", Some("m1"), &json!({"n": 5}));
        let got = drain(&mut rx);
        let seen: Vec<(String, Value)> = got
            .iter()
            .map(|f| {
                let what = f.get("n").or(f.get("sync")).cloned().unwrap();
                (f["subscriptionId"].as_str().unwrap().to_string(), what)
            })
            .collect();
        let want: Vec<(String, Value)> = vec![
            ("g".into(), json!("g")),
            ("g".into(), json!(1)),
            ("g".into(), json!(2)),
            ("g".into(), json!(3)),
            ("i".into(), json!("i")),
            ("i".into(), json!(1)),
            ("g".into(), json!(5)),
            ("i".into(), json!(5)),
        ];
        assert_eq!(seen, want);
        hub.remove("chat", "room", 1, "g");
        hub.remove("chat", "room", 1, "unknown");
        assert_eq!(hub.len(), 1);
        hub.remove("chat", "room", 1, "i");
        assert_eq!(hub.len(), 0);
        assert!(hub.streams.lock().is_empty(), "empty maps are pruned");
    }

    #[test]
    fn a_full_outbox_drops_the_connection_instead_of_waiting() {
        let (out, _rx, _) = Outbox::new(100);
        assert!(out.push("x".repeat(150)), "an empty queue takes one frame");
        assert!(!out.push("y".repeat(10)));
        assert!(out.is_slow());
        assert!(out.dropped().is_cancelled());
        assert!(!out.push("z".into()), "nothing is queued after the drop");
    }
}
