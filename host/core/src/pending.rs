//! The table of in-flight invocations, keyed by invocation id.
//!
//! An entry is inserted *before* the call is forwarded to the target, so a result can never
//! arrive for an id the engine does not know yet (upstream's lost-result race). The table is
//! sharded to keep lock contention low at high concurrency; disconnect cleanup scans it, which
//! keeps per-call bookkeeping to one insert and one remove.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use iii_protocol::ErrorBody;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::conn::Conn;
use crate::core::FunctionEntry;

/// The outcome of a call as seen by an in-process caller.
pub type Outcome = Result<Option<Box<RawValue>>, ErrorBody>;

/// Who gets the result.
pub enum Waiter {
    /// A worker that sent `invokefunction`: it gets an `invocationresult` frame.
    Conn {
        /// The caller's connection.
        conn: Arc<Conn>,
        /// The function called (echoed in the result).
        function_id: Arc<str>,
        /// The caller's traceparent, echoed.
        traceparent: Option<String>,
        /// The caller's baggage, echoed.
        baggage: Option<String>,
        /// The function, when the caller's listener checks results against its
        /// `response_format` ([`crate::validation`]).
        check: Option<Arc<FunctionEntry>>,
    },
    /// An in-process caller (HTTP trigger, builtin function, trigger fire).
    Oneshot(oneshot::Sender<Outcome>),
    /// Fire-and-forget: the result is dropped, an error logged.
    Discard {
        /// The function called (named in the log line).
        function_id: Arc<str>,
    },
}

/// One of a connection's slots for calls in flight (made or served); the slot is given back
/// when the call leaves the table, however it leaves.
pub struct CallSlot {
    conn: Arc<Conn>,
    made: bool,
}

impl CallSlot {
    /// Takes a slot on `conn` for a call it makes (`made`) or serves, or `None` when the
    /// connection already has its limit of such calls in flight.
    pub fn acquire(conn: &Arc<Conn>, made: bool) -> Option<CallSlot> {
        let counter = if made {
            &conn.calls_made
        } else {
            &conn.calls_served
        };
        if counter.fetch_add(1, Ordering::SeqCst) >= conn.limits.max_pending_calls {
            counter.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(CallSlot {
            conn: conn.clone(),
            made,
        })
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let counter = if self.made {
            &self.conn.calls_made
        } else {
            &self.conn.calls_served
        };
        counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One call in flight.
pub struct PendingCall {
    /// The caller's and the callee's slots, held while the call is in the table.
    pub slots: Vec<CallSlot>,
    /// Who gets the result.
    pub waiter: Waiter,
    /// Connection that made the call, if a worker did.
    pub caller: Option<u128>,
    /// Connection serving the call.
    pub target: u128,
    /// When the router took the call; set only while an observer is installed.
    pub started: Option<std::time::Instant>,
}

/// UUIDv4 ids are already uniformly random: fold them instead of hashing.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

type Shard = Mutex<HashMap<u128, PendingCall, BuildHasherDefault<IdHasher>>>;

const SHARDS: usize = 64;

/// Calls in flight, sharded by id so concurrent calls rarely contend.
pub struct PendingTable {
    shards: Box<[Shard]>,
}

impl Default for PendingTable {
    fn default() -> Self {
        PendingTable {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }
}

impl PendingTable {
    fn shard(&self, id: u128) -> &Shard {
        &self.shards[(id as usize) % SHARDS]
    }

    /// Records a call. Returns false (and records nothing) if the id is already in flight.
    pub fn insert(&self, id: u128, call: PendingCall) -> bool {
        let mut s = self.shard(id).lock();
        if s.contains_key(&id) {
            return false;
        }
        s.insert(id, call);
        true
    }

    /// Removes a call if `from` is the connection serving it (or if `from` is `None`, always).
    pub fn take(&self, id: u128, from: Option<u128>) -> Take {
        let mut s = self.shard(id).lock();
        match s.get(&id) {
            None => Take::Unknown,
            Some(c) if from.is_some_and(|f| f != c.target) => Take::WrongSender,
            Some(_) => Take::Found(s.remove(&id).expect("present")),
        }
    }

    /// Removes every call that `conn` made or serves.
    pub fn drain_conn(&self, conn: u128) -> Vec<(u128, PendingCall)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            let ids: Vec<u128> = s
                .iter()
                .filter(|(_, c)| c.target == conn || c.caller == Some(conn))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(c) = s.remove(&id) {
                    out.push((id, c));
                }
            }
        }
        out
    }

    /// Number of calls the connection is serving right now.
    pub fn active_for(&self, conn: u128) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|c| c.target == conn).count())
            .sum()
    }

    /// Number of calls in flight.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// No call in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What taking a result's call found.
pub enum Take {
    /// The call, removed from the table.
    Found(PendingCall),
    /// No such call (finished, or never made).
    Unknown,
    /// The call exists but another connection serves it; it stays.
    WrongSender,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(target: u128, caller: Option<u128>) -> PendingCall {
        PendingCall {
            slots: Vec::new(),
            waiter: Waiter::Discard {
                function_id: "f".into(),
            },
            caller,
            target,
            started: None,
        }
    }

    #[test]
    fn insert_take_and_sender_check() {
        let t = PendingTable::default();
        assert!(t.insert(7, call(1, Some(2))));
        assert!(!t.insert(7, call(1, Some(2))));
        assert!(matches!(t.take(7, Some(3)), Take::WrongSender));
        assert!(matches!(t.take(7, Some(1)), Take::Found(_)));
        assert!(matches!(t.take(7, Some(1)), Take::Unknown));
    }

    #[test]
    fn drain_by_connection() {
        let t = PendingTable::default();
        for i in 0..100u128 {
            assert!(t.insert(i, call(i % 3, Some(10 + i % 2))));
        }
        let served = t.active_for(0);
        let drained = t.drain_conn(0);
        assert_eq!(drained.len(), served);
        let made = t.drain_conn(11);
        assert!(made.iter().all(|(_, c)| c.caller == Some(11)));
        assert_eq!(t.len(), 100 - served - made.len());
    }
}
