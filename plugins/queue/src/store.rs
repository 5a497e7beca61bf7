//! The queue data model and its delivery contract (that of the host's `QueueStore` trait and
//! its `MemoryQueueStore` reference), over an optional log.
//!
//! With a log, memory holds an index: per message its id, group, attempt counts, due time,
//! lease, and where its enqueue record is in the log ([`Loc`]); payloads and metadata stay on
//! disk and are read when a message is leased or a dead letter listed. Every change is logged
//! before it is made in memory, so a failed write changes nothing. Leases are not logged: a
//! reopened store has none, and every message that was in flight is ready again.
//!
//! Time is a parameter of every call (milliseconds since the Unix epoch), so the logic is
//! deterministic under test; the component passes the WASI wall clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use indexmap::IndexMap;

use crate::format::{self, Record};
use iii_wal::{Damage, Loc, OnCorruption, OpenReport, Wal, WalError, RECORD_HEADER};

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The log failed (I/O, damage).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// An intact record the store cannot use.
    #[error("queue log holds a record the store does not understand: {0}")]
    Corrupt(String),
    /// A message larger than the store accepts; nothing was written.
    #[error(
        "message is {len} bytes of payload and meta; this queue store holds messages of at \
         most {max} bytes (adapter config `max_message_bytes`)"
    )]
    MessageTooLarge {
        /// The message's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl StoreError {
    /// True for a refusal of the caller's input (the store is unchanged).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, StoreError::MessageTooLarge { .. })
    }
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct Options {
    /// fdatasync every change before it returns.
    pub fsync: bool,
    /// Compaction runs once the log is at least this big …
    pub compact_min_bytes: u64,
    /// … and at least this many times the live records.
    pub compact_ratio: u64,
    /// Largest payload + meta `enqueue` accepts.
    pub max_message_bytes: usize,
    /// A `lease` stops adding messages once their payloads and metas reach this many bytes
    /// (it always returns at least one ready message).
    pub max_lease_bytes: u64,
    /// Mid-log damage: refuse to open, or salvage.
    pub on_corruption: OnCorruption,
}

/// Default [`Options::max_message_bytes`]: a lease holds a message about three times (the
/// record read back, the split texts, the copy the host takes), which must fit the default
/// 128 MiB instance.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Default [`Options::max_lease_bytes`].
pub const DEFAULT_MAX_LEASE_BYTES: u64 = 32 * 1024 * 1024;

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            compact_min_bytes: 4 * 1024 * 1024,
            compact_ratio: 2,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_lease_bytes: DEFAULT_MAX_LEASE_BYTES,
            on_corruption: OnCorruption::Refuse,
        }
    }
}

/// A message to store (the WIT `new-message`, JSON texts as they came).
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// Unique within the queue.
    pub id: &'a str,
    /// JSON text.
    pub payload: &'a str,
    /// JSON text, stored and returned as is.
    pub meta: &'a str,
    /// The FIFO group key.
    pub group: Option<&'a str>,
    /// Attempts before the message is dead-lettered (0 counts as 1).
    pub max_attempts: u32,
    /// Milliseconds before the first delivery.
    pub delay_ms: u64,
}

/// What `lease` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    /// At most this many messages.
    pub max: u32,
    /// How long each lease lasts.
    pub lease_ms: u64,
    /// FIFO group order.
    pub fifo: bool,
}

/// One leased message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The lease token.
    pub token: String,
    /// The message id.
    pub message_id: String,
    /// JSON text.
    pub payload: String,
    /// JSON text.
    pub meta: String,
    /// The FIFO group key.
    pub group: Option<String>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
}

/// The result of a `lease`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leased {
    /// The messages now leased.
    pub deliveries: Vec<Delivery>,
    /// Milliseconds until the next delayed message or lapsing lease is due.
    pub next_due_ms: Option<u64>,
}

/// What a `nack` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Ready again after the delay.
    Retrying,
    /// That was the last attempt.
    DeadLettered,
    /// The lease had already ended; nothing changed.
    Stale,
}

/// A dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id.
    pub message_id: String,
    /// JSON text (`null` if its record is damaged).
    pub payload: String,
    /// JSON text (`null` if its record is damaged).
    pub meta: String,
    /// The last failure's text.
    pub error: String,
    /// Milliseconds since the Unix epoch.
    pub failed_at_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The FIFO group key.
    pub group: Option<String>,
}

/// Counts of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Ready or delayed, not leased.
    pub waiting: u64,
    /// Leased now.
    pub in_flight: u64,
    /// Dead-lettered.
    pub dead: u64,
}

/// What [`Queues::open`] found and did.
#[derive(Debug, Default)]
pub struct Opened {
    /// Valid records replayed.
    pub records: u64,
    /// Live messages after replay (all ready or delayed: leases do not survive).
    pub live: u64,
    /// Dead letters after replay.
    pub dead: u64,
    /// Records about a message the log no longer holds (after salvaged damage), skipped.
    pub orphans: u64,
    /// Torn bytes cut off the end.
    pub torn_tail: u64,
    /// Salvaged mid-log damage (empty unless `on_corruption: salvage`).
    pub damage: Vec<Damage>,
    /// Where the original log was saved.
    pub backup: Option<String>,
}

/// A message's payload and meta: where its enqueue record is, or the texts themselves.
#[derive(Debug, Clone)]
enum Body {
    Disk(Loc),
    Mem { meta: String, payload: String },
}

/// A dead letter's error text: its dead-letter record, or the text itself.
#[derive(Debug, Clone)]
enum ErrorText {
    Disk(Loc),
    Mem(String),
}

#[derive(Debug)]
struct Live {
    id: String,
    group: Option<String>,
    max_attempts: u32,
    attempts: u32,
    ready_at: u64,
    /// `(token, lease end)` while leased.
    lease: Option<(String, u64)>,
    body: Body,
}

#[derive(Debug)]
struct Dead {
    group: Option<String>,
    max_attempts: u32,
    attempts: u32,
    failed_at: u64,
    error: ErrorText,
    body: Body,
}

/// Framed bytes of a record with a payload of `len` bytes.
fn framed(len: u32) -> u64 {
    RECORD_HEADER + u64::from(len)
}

fn body_bytes(b: &Body) -> u64 {
    match b {
        Body::Disk(loc) => framed(loc.len),
        Body::Mem { .. } => 0,
    }
}

impl Live {
    /// Log bytes this message takes when rewritten: its enqueue, plus a retry record once it
    /// has failed.
    fn footprint(&self, queue: &str) -> u64 {
        let retry = if self.attempts > 0 && matches!(self.body, Body::Disk(_)) {
            framed((1 + 4 + queue.len() + 4 + self.id.len() + 4 + 8) as u32)
        } else {
            0
        };
        body_bytes(&self.body) + retry
    }
}

impl Dead {
    fn footprint(&self) -> u64 {
        let error = match &self.error {
            ErrorText::Disk(loc) => framed(loc.len),
            ErrorText::Mem(_) => 0,
        };
        body_bytes(&self.body) + error
    }
}

#[derive(Debug, Default)]
struct Queue {
    /// Live messages by arrival sequence: iteration order is FIFO order.
    live: BTreeMap<u64, Live>,
    /// Sequence of each live message, by id.
    live_ids: HashMap<String, u64>,
    tokens: HashMap<String, u64>,
    /// Dead letters by id, in the order they died.
    dead: IndexMap<String, Dead>,
    /// Log bytes of this queue's messages if rewritten (compaction's "live data").
    bytes: u64,
}

impl Queue {
    fn holds(&self, id: &str) -> bool {
        self.live_ids.contains_key(id) || self.dead.contains_key(id)
    }

    fn insert_live(&mut self, name: &str, seq: u64, l: Live) {
        self.bytes += l.footprint(name);
        self.live_ids.insert(l.id.clone(), seq);
        self.live.insert(seq, l);
    }

    fn remove_live(&mut self, name: &str, seq: u64) -> Option<Live> {
        let mut l = self.live.remove(&seq)?;
        self.bytes -= l.footprint(name);
        self.live_ids.remove(&l.id);
        if let Some((t, _)) = l.lease.take() {
            self.tokens.remove(&t);
        }
        Some(l)
    }

    /// A failed attempt: due again at `ready_at`.
    fn retry(&mut self, name: &str, seq: u64, attempts: u32, ready_at: u64) {
        if let Some(l) = self.live.get_mut(&seq) {
            self.bytes -= l.footprint(name);
            if let Some((t, _)) = l.lease.take() {
                self.tokens.remove(&t);
            }
            l.attempts = attempts;
            l.ready_at = ready_at;
            self.bytes += l.footprint(name);
        }
    }

    fn dead_letter(
        &mut self,
        name: &str,
        seq: u64,
        attempts: u32,
        failed_at: u64,
        error: ErrorText,
    ) {
        if let Some(l) = self.remove_live(name, seq) {
            let d = Dead {
                group: l.group,
                max_attempts: l.max_attempts,
                attempts,
                failed_at,
                error,
                body: l.body,
            };
            self.bytes += d.footprint();
            self.dead.insert(l.id, d);
        }
    }

    fn remove_dead(&mut self, id: &str) -> Option<Dead> {
        let d = self.dead.shift_remove(id)?;
        self.bytes -= d.footprint();
        Some(d)
    }

    /// Ids of the dead letters a redrive of `id` (or all) moves, in dead order.
    fn redrive_ids(&self, id: Option<&str>) -> Vec<String> {
        match id {
            Some(id) if self.dead.contains_key(id) => vec![id.to_string()],
            Some(_) => Vec::new(),
            None => self.dead.keys().cloned().collect(),
        }
    }
}

/// The store.
#[derive(Default)]
pub struct Queues {
    queues: BTreeMap<String, Queue>,
    wal: Option<Wal>,
    opts: Options,
    /// Arrival sequence and lease counter.
    seq: u64,
    /// Tells this instance's tokens from a previous one's, whose leases ended.
    epoch: u64,
    /// Compactions run so far.
    pub compactions: u64,
    /// A compaction that failed after a change had succeeded: reported by the caller's log,
    /// never as the change's error.
    compaction_error: Option<String>,
}

/// A replayed record, applied.
#[derive(PartialEq, Eq)]
enum Applied {
    Used,
    /// It names a message the log no longer holds (lost to salvaged damage): skipped.
    Orphan,
}

impl Queues {
    /// A store without a log: messages live in memory and die with it.
    pub fn in_memory(opts: Options, now: u64) -> Queues {
        Queues {
            opts,
            epoch: now,
            ..Queues::default()
        }
    }

    /// Opens the log in `dir` and replays it into the index, record by record. A salvaged
    /// log is rewritten before this returns.
    pub fn open(dir: &Path, opts: Options, now: u64) -> Result<(Queues, Opened), StoreError> {
        let mut qs = Queues::in_memory(opts, now);
        let mut bad: Option<String> = None;
        let mut orphans = 0;
        let (wal, report) = Wal::open(
            &format::LAYOUT,
            &dir.join("queue.wal"),
            qs.opts.fsync,
            qs.opts.on_corruption,
            |r| {
                match format::decode(r.head, r.loc.len as usize) {
                    Ok(rec) => {
                        if qs.apply(rec, r.loc) == Applied::Orphan {
                            orphans += 1;
                        }
                    }
                    Err(e) => {
                        bad.get_or_insert_with(|| {
                            format!("record at byte offset {}: {e}", r.loc.off)
                        });
                    }
                }
                Ok(())
            },
        )?;
        if let Some(b) = bad {
            return Err(StoreError::Corrupt(b));
        }
        let OpenReport {
            records,
            torn_tail,
            damage,
            backup,
            ..
        } = report;
        qs.wal = Some(wal);
        let salvaged = !damage.is_empty();
        let opened = Opened {
            records,
            live: qs.queues.values().map(|q| q.live.len() as u64).sum(),
            dead: qs.queues.values().map(|q| q.dead.len() as u64).sum(),
            orphans,
            torn_tail,
            damage,
            backup: backup.map(|p| p.display().to_string()),
        };
        if salvaged {
            qs.compact()?;
        }
        Ok((qs, opened))
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Applies one replayed record to the index.
    fn apply(&mut self, rec: Record<'_>, loc: Loc) -> Applied {
        match rec {
            Record::Enqueue {
                queue,
                id,
                group,
                max_attempts,
                ready_at,
                ..
            } => {
                let seq = self.next();
                let q = self.queues.entry(queue.to_string()).or_default();
                if q.holds(id) {
                    return Applied::Orphan;
                }
                q.insert_live(
                    queue,
                    seq,
                    Live {
                        id: id.to_string(),
                        group: group.map(str::to_string),
                        max_attempts,
                        attempts: 0,
                        ready_at,
                        lease: None,
                        body: Body::Disk(loc),
                    },
                );
            }
            Record::Retry {
                queue,
                id,
                attempts,
                ready_at,
            } => {
                let Some(q) = self.queues.get_mut(queue) else {
                    return Applied::Orphan;
                };
                let Some(&seq) = q.live_ids.get(id) else {
                    return Applied::Orphan;
                };
                q.retry(queue, seq, attempts, ready_at);
            }
            Record::Dead {
                queue,
                id,
                attempts,
                failed_at,
                ..
            } => {
                let Some(q) = self.queues.get_mut(queue) else {
                    return Applied::Orphan;
                };
                let Some(&seq) = q.live_ids.get(id) else {
                    return Applied::Orphan;
                };
                q.dead_letter(queue, seq, attempts, failed_at, ErrorText::Disk(loc));
            }
            Record::Redrive {
                queue,
                id,
                ready_at,
            } => {
                let ids = match self.queues.get(queue) {
                    Some(q) => q.redrive_ids(id),
                    None => return Applied::Orphan,
                };
                self.redrive_in_memory(queue, &ids, ready_at);
            }
            Record::Ack { queue, id } => {
                let Some(q) = self.queues.get_mut(queue) else {
                    return Applied::Orphan;
                };
                let Some(&seq) = q.live_ids.get(id) else {
                    return Applied::Orphan;
                };
                q.remove_live(queue, seq);
            }
            Record::Discard { queue, id } => {
                let Some(q) = self.queues.get_mut(queue) else {
                    return Applied::Orphan;
                };
                if q.remove_dead(id).is_none() {
                    return Applied::Orphan;
                }
            }
        }
        Applied::Used
    }

    fn redrive_in_memory(&mut self, queue: &str, ids: &[String], ready_at: u64) {
        for id in ids {
            let seq = self.next();
            let Some(q) = self.queues.get_mut(queue) else {
                return;
            };
            let Some(d) = q.remove_dead(id) else {
                continue;
            };
            q.insert_live(
                queue,
                seq,
                Live {
                    id: id.clone(),
                    group: d.group,
                    max_attempts: d.max_attempts.max(1),
                    attempts: 0,
                    ready_at,
                    lease: None,
                    body: d.body,
                },
            );
        }
    }

    /// Whether changes go to a log.
    pub fn is_durable(&self) -> bool {
        self.wal.is_some()
    }

    /// Bytes in the log file.
    pub fn log_bytes(&self) -> u64 {
        self.wal.as_ref().map_or(0, |w| w.size())
    }

    /// The last compaction failure, once.
    pub fn take_compaction_error(&mut self) -> Option<String> {
        self.compaction_error.take()
    }

    /// Logs a change, durably unless `synced` is false.
    fn log(&mut self, payload: &[u8], synced: bool) -> Result<Option<Loc>, StoreError> {
        let Some(w) = self.wal.as_mut() else {
            return Ok(None);
        };
        Ok(Some(if synced {
            w.append(&[payload])?
        } else {
            w.append_unsynced(&[payload])?
        }))
    }

    /// Stores a message; an id the queue already holds is a no-op.
    pub fn enqueue(
        &mut self,
        queue: &str,
        msg: NewMessage<'_>,
        now: u64,
    ) -> Result<(), StoreError> {
        let len = msg.payload.len() + msg.meta.len();
        if len > self.opts.max_message_bytes {
            return Err(StoreError::MessageTooLarge {
                len,
                max: self.opts.max_message_bytes,
            });
        }
        if self.queues.get(queue).is_some_and(|q| q.holds(msg.id)) {
            return Ok(());
        }
        let max_attempts = msg.max_attempts.max(1);
        let ready_at = now.saturating_add(msg.delay_ms);
        let body = match self.wal.as_mut() {
            Some(w) => {
                let prefix = format::enqueue_prefix(
                    queue,
                    msg.id,
                    msg.group,
                    max_attempts,
                    ready_at,
                    msg.meta.len(),
                    msg.payload.len(),
                );
                Body::Disk(w.append(&[&prefix, msg.meta.as_bytes(), msg.payload.as_bytes()])?)
            }
            None => Body::Mem {
                meta: msg.meta.to_string(),
                payload: msg.payload.to_string(),
            },
        };
        let seq = self.next();
        self.queues
            .entry(queue.to_string())
            .or_default()
            .insert_live(
                queue,
                seq,
                Live {
                    id: msg.id.to_string(),
                    group: msg.group.map(str::to_string),
                    max_attempts,
                    attempts: 0,
                    ready_at,
                    lease: None,
                    body,
                },
            );
        Ok(())
    }

    /// Ends the leases of `queue` that lapsed by `now`, counting the attempt. Logged without
    /// a sync of its own: losing it to a power cut loses only the count.
    fn lapse(&mut self, queue: &str, now: u64) -> Result<(), StoreError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok(());
        };
        let lapsed: Vec<(u64, String, u32, bool)> = q
            .live
            .iter()
            .filter(|(_, l)| l.lease.as_ref().is_some_and(|(_, until)| *until <= now))
            .map(|(s, l)| {
                (
                    *s,
                    l.id.clone(),
                    l.attempts + 1,
                    l.attempts + 1 >= l.max_attempts,
                )
            })
            .collect();
        for (seq, id, attempts, last) in lapsed {
            if last {
                let error = "the lease lapsed on the last attempt";
                let loc = self.log(&format::dead(queue, &id, attempts, now, error), false)?;
                let text = loc.map_or_else(|| ErrorText::Mem(error.into()), ErrorText::Disk);
                if let Some(q) = self.queues.get_mut(queue) {
                    q.dead_letter(queue, seq, attempts, now, text);
                }
            } else {
                self.log(&format::retry(queue, &id, attempts, now), false)?;
                if let Some(q) = self.queues.get_mut(queue) {
                    q.retry(queue, seq, attempts, now);
                }
            }
        }
        Ok(())
    }

    /// Reads a message's meta and payload texts.
    fn read_body(&mut self, id: &str, body: &Body) -> Result<(String, String), WalError> {
        let loc = match body {
            Body::Mem { meta, payload } => return Ok((meta.clone(), payload.clone())),
            Body::Disk(loc) => *loc,
        };
        let w = self
            .wal
            .as_mut()
            .expect("disk bodies exist only with a log");
        let mut bytes = w.read_payload(loc)?;
        let (meta_at, meta_len) = match format::decode(&bytes, bytes.len()) {
            Ok(Record::Enqueue {
                id: got,
                meta_at,
                meta_len,
                ..
            }) if got == id => (meta_at, meta_len),
            _ => return Err(w.bad_record(loc.off, format!("it is not the enqueue of {id}"))),
        };
        let payload = bytes.split_off(meta_at + meta_len);
        bytes.drain(..meta_at);
        match (String::from_utf8(bytes), String::from_utf8(payload)) {
            (Ok(m), Ok(p)) => Ok((m, p)),
            _ => Err(w.bad_record(loc.off, "the message is not UTF-8")),
        }
    }

    /// Leases up to `req.max` ready messages of `queue`, oldest first.
    pub fn lease(
        &mut self,
        queue: &str,
        req: LeaseRequest,
        now: u64,
    ) -> Result<Leased, StoreError> {
        if !self.queues.contains_key(queue) {
            return Ok(Leased::default());
        }
        self.lapse(queue, now)?;
        let mut next_due: Option<u64> = None;
        let mut due = |t: u64| {
            let d = t.saturating_sub(now);
            next_due = Some(next_due.map_or(d, |n: u64| n.min(d)));
        };
        let mut picked = Vec::new();
        let q = self.queues.get(queue).expect("checked above");
        let mut groups_seen: HashSet<Option<&str>> = HashSet::new();
        for (seq, l) in &q.live {
            if let Some((_, until)) = &l.lease {
                due(*until);
            } else if l.ready_at > now {
                due(l.ready_at);
            }
            if req.fifo && !groups_seen.insert(l.group.as_deref()) {
                continue;
            }
            if l.lease.is_some() || l.ready_at > now {
                continue;
            }
            if picked.len() < req.max as usize {
                picked.push(*seq);
            }
        }
        drop(groups_seen);
        let mut out = Leased::default();
        let mut bytes = 0u64;
        for seq in picked {
            let Some(l) = self.queues.get(queue).and_then(|q| q.live.get(&seq)) else {
                continue;
            };
            let size = match &l.body {
                Body::Disk(loc) => u64::from(loc.len),
                Body::Mem { meta, payload } => (meta.len() + payload.len()) as u64,
            };
            if !out.deliveries.is_empty() && bytes + size > self.opts.max_lease_bytes {
                break;
            }
            let (id, body, attempts) = (l.id.clone(), l.body.clone(), l.attempts);
            let (meta, payload) = match self.read_body(&id, &body) {
                Ok(texts) => texts,
                Err(e) => {
                    // Unreadable now means unreadable on every retry: park it with the reason
                    // instead of failing every lease of the queue.
                    let error = format!("the stored message is damaged: {e}");
                    let loc = self.log(&format::dead(queue, &id, attempts, now, &error), true)?;
                    let text = loc.map_or_else(|| ErrorText::Mem(error), ErrorText::Disk);
                    if let Some(q) = self.queues.get_mut(queue) {
                        q.dead_letter(queue, seq, attempts, now, text);
                    }
                    continue;
                }
            };
            bytes += size;
            let n = self.next();
            let token = format!("{:x}.{seq}.{n}", self.epoch);
            let until = now.saturating_add(req.lease_ms);
            let q = self.queues.get_mut(queue).expect("checked above");
            let l = q.live.get_mut(&seq).expect("picked from it");
            l.lease = Some((token.clone(), until));
            q.tokens.insert(token.clone(), seq);
            due(until);
            out.deliveries.push(Delivery {
                token,
                message_id: id,
                payload,
                meta,
                group: l.group.clone(),
                attempt: l.attempts + 1,
                max_attempts: l.max_attempts,
            });
        }
        out.next_due_ms = next_due;
        self.maybe_compact();
        Ok(out)
    }

    /// Deletes the leased message; `false` when the lease had ended.
    pub fn ack(&mut self, queue: &str, token: &str) -> Result<bool, StoreError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok(false);
        };
        let Some(&seq) = q.tokens.get(token) else {
            return Ok(false);
        };
        let id = q.live[&seq].id.clone();
        self.log(&format::ack(queue, &id), true)?;
        if let Some(q) = self.queues.get_mut(queue) {
            q.remove_live(queue, seq);
        }
        self.maybe_compact();
        Ok(true)
    }

    /// Ends the lease as a failure (see the trait's docs).
    pub fn nack(
        &mut self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
        error: &str,
        now: u64,
    ) -> Result<NackOutcome, StoreError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok(NackOutcome::Stale);
        };
        let Some(&seq) = q.tokens.get(token) else {
            return Ok(NackOutcome::Stale);
        };
        let l = &q.live[&seq];
        let (id, attempts) = (l.id.clone(), l.attempts + 1);
        let outcome = if attempts >= l.max_attempts {
            let loc = self.log(&format::dead(queue, &id, attempts, now, error), true)?;
            let text = loc.map_or_else(|| ErrorText::Mem(error.into()), ErrorText::Disk);
            if let Some(q) = self.queues.get_mut(queue) {
                q.dead_letter(queue, seq, attempts, now, text);
            }
            NackOutcome::DeadLettered
        } else {
            let ready_at = now.saturating_add(retry_after_ms);
            self.log(&format::retry(queue, &id, attempts, ready_at), true)?;
            if let Some(q) = self.queues.get_mut(queue) {
                q.retry(queue, seq, attempts, ready_at);
            }
            NackOutcome::Retrying
        };
        self.maybe_compact();
        Ok(outcome)
    }

    /// Ends the lease without counting the attempt (see the trait's docs). Leases are not
    /// persisted, so neither is this: after a restart the message is ready at once.
    pub fn release(&mut self, queue: &str, token: &str, retry_after_ms: u64, now: u64) -> bool {
        let Some(q) = self.queues.get_mut(queue) else {
            return false;
        };
        let Some(&seq) = q.tokens.get(token) else {
            return false;
        };
        let attempts = q.live[&seq].attempts;
        q.retry(queue, seq, attempts, now.saturating_add(retry_after_ms));
        true
    }

    /// Dead letters of `queue`, oldest first.
    pub fn dead_letters(
        &mut self,
        queue: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok(Vec::new());
        };
        let page: Vec<(String, Body, ErrorText, DeadLetter)> = q
            .dead
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(id, d)| {
                let letter = DeadLetter {
                    message_id: id.clone(),
                    payload: String::new(),
                    meta: String::new(),
                    error: String::new(),
                    failed_at_ms: d.failed_at,
                    attempts: d.attempts,
                    max_attempts: d.max_attempts,
                    group: d.group.clone(),
                };
                (id.clone(), d.body.clone(), d.error.clone(), letter)
            })
            .collect();
        let mut out = Vec::with_capacity(page.len());
        for (id, body, error, mut letter) in page {
            // A damaged record must not hide the rest of the list: say so in its place.
            match self.read_body(&id, &body) {
                Ok((meta, payload)) => {
                    letter.meta = meta;
                    letter.payload = payload;
                }
                Err(e) => {
                    letter.meta = "null".into();
                    letter.payload = "null".into();
                    letter.error = format!("the stored message is damaged: {e}; ");
                }
            }
            match self.read_error(&error) {
                Ok(text) => letter.error.push_str(&text),
                Err(e) => letter
                    .error
                    .push_str(&format!("(the error text is damaged: {e})")),
            }
            out.push(letter);
        }
        Ok(out)
    }

    fn read_error(&mut self, error: &ErrorText) -> Result<String, WalError> {
        let loc = match error {
            ErrorText::Mem(t) => return Ok(t.clone()),
            ErrorText::Disk(loc) => *loc,
        };
        let w = self.wal.as_mut().expect("disk texts exist only with a log");
        let bytes = w.read_payload(loc)?;
        match format::decode(&bytes, bytes.len()) {
            Ok(Record::Dead { error, .. }) => Ok(error.to_string()),
            _ => Err(w.bad_record(loc.off, "it is not a dead-letter record")),
        }
    }

    /// Moves dead letters back to ready with their attempts reset; returns how many moved.
    pub fn redrive(
        &mut self,
        queue: &str,
        message_id: Option<&str>,
        now: u64,
    ) -> Result<u64, StoreError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok(0);
        };
        let ids = q.redrive_ids(message_id);
        if ids.is_empty() {
            return Ok(0);
        }
        self.log(&format::redrive(queue, message_id, now), true)?;
        self.redrive_in_memory(queue, &ids, now);
        self.maybe_compact();
        Ok(ids.len() as u64)
    }

    /// Deletes one dead letter; `false` when there was none with that id.
    pub fn discard(&mut self, queue: &str, message_id: &str) -> Result<bool, StoreError> {
        if !self
            .queues
            .get(queue)
            .is_some_and(|q| q.dead.contains_key(message_id))
        {
            return Ok(false);
        }
        self.log(&format::discard(queue, message_id), true)?;
        if let Some(q) = self.queues.get_mut(queue) {
            q.remove_dead(message_id);
        }
        self.maybe_compact();
        Ok(true)
    }

    /// Counts of `queue` (zeros for an unknown queue).
    pub fn stats(&self, queue: &str) -> Stats {
        self.queues
            .get(queue)
            .map(|q| {
                let in_flight = q.tokens.len() as u64;
                Stats {
                    waiting: q.live.len() as u64 - in_flight,
                    in_flight,
                    dead: q.dead.len() as u64,
                }
            })
            .unwrap_or_default()
    }

    /// Every queue that holds a message, live or dead, sorted.
    pub fn queues(&self) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, q)| !q.live.is_empty() || !q.dead.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Log bytes the held messages would take rewritten.
    fn live_bytes(&self) -> u64 {
        iii_wal::FILE_HEADER + self.queues.values().map(|q| q.bytes).sum::<u64>()
    }

    /// Compacts when the log is mostly dead records. A failure leaves the old log in place
    /// and is kept for the caller to report.
    fn maybe_compact(&mut self) {
        let Some(w) = self.wal.as_ref() else {
            return;
        };
        let len = w.size();
        if len < self.opts.compact_min_bytes
            || len < self.live_bytes().saturating_mul(self.opts.compact_ratio)
        {
            return;
        }
        if let Err(e) = self.compact() {
            self.compaction_error = Some(e.to_string());
        }
    }

    /// Rewrites the log with only what the held messages need: per live message its enqueue
    /// record (and a retry record once it has failed), in arrival order; then per dead letter
    /// its enqueue and its dead-letter record, in the order they died. The index is pointed
    /// at the new places only once the new log is in place.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let Queues { wal, queues, .. } = self;
        let Some(w) = wal.as_mut() else {
            return Ok(());
        };
        // Drop queues left empty: nothing of theirs is rewritten.
        queues.retain(|_, q| !q.live.is_empty() || !q.dead.is_empty());
        let new_locs = w.rewrite_with(|rw| {
            let mut locs = Vec::new();
            for (name, q) in queues.iter() {
                for l in q.live.values() {
                    if let Body::Disk(loc) = l.body {
                        locs.push(rw.copy(loc)?);
                        if l.attempts > 0 {
                            rw.append(&[&format::retry(name, &l.id, l.attempts, l.ready_at)])?;
                        }
                    }
                }
                for d in q.dead.values() {
                    if let Body::Disk(loc) = d.body {
                        locs.push(rw.copy(loc)?);
                    }
                    if let ErrorText::Disk(loc) = d.error {
                        locs.push(rw.copy(loc)?);
                    }
                }
            }
            Ok(locs)
        })?;
        // Same walk, same order: hand out the new places.
        let mut new_locs = new_locs.into_iter();
        for q in queues.values_mut() {
            for l in q.live.values_mut() {
                if let Body::Disk(loc) = &mut l.body {
                    *loc = new_locs.next().expect("one per record copied");
                }
            }
            for d in q.dead.values_mut() {
                if let Body::Disk(loc) = &mut d.body {
                    *loc = new_locs.next().expect("one per record copied");
                }
                if let ErrorText::Disk(loc) = &mut d.error {
                    *loc = new_locs.next().expect("one per record copied");
                }
            }
        }
        self.compactions += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
