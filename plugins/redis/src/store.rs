//! The store semantics over Redis, independent of the component glue (so it also runs, and
//! is tested, natively):
//!
//! * state (spec section 8.1): hash `state:<scope>`, field = key, value = JSON text;
//! * stream (spec section 8.2): hash `stream:<stream>:<group>`, field = item id;
//! * lock (spec section 8.6): string `lock:<key>` holding the owner, with a PX expiry;
//! * pub/sub (spec section 8.5): one Redis channel per topic, on a dedicated connection.
//!
//! `set` and `delete` are Lua scripts, so the old value they return is the one they
//! replaced. `update` reads the value, applies `iii-update-ops` (the same code as the kv
//! adapter, so results are identical) and writes it back with a compare-and-set script,
//! retrying when another writer got there first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame as Frame;
use serde_json::Value;

use crate::resp::{command, describe, Client, Conn, RespError, Settings};

/// `HGET`+`HSET`; returns the replaced value (nil when new).
const SET: &str = "local o = redis.call('HGET', KEYS[1], ARGV[1]) \
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return o";
/// `HGET`+`HDEL`; returns the removed value (nil, and no effect, when absent).
const DELETE: &str = "local o = redis.call('HGET', KEYS[1], ARGV[1]) \
if o then redis.call('HDEL', KEYS[1], ARGV[1]) end return o";
/// Compare-and-set of one field: ARGV[2] = '0' expects it absent, '1' expects ARGV[3].
const CAS: &str = "local c = redis.call('HGET', KEYS[1], ARGV[1]) \
if ARGV[2] == '0' then if c then return 0 end elseif c ~= ARGV[3] then return 0 end \
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4]) return 1";
/// Take, renew (same owner) or refuse a lease.
const ACQUIRE: &str = "local c = redis.call('GET', KEYS[1]) \
if not c then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
if c == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0";
/// Compare-and-delete: only the owner frees its lease.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
redis.call('DEL', KEYS[1]) return 1 end return 0";

const SCRIPTS: &[&str] = &[SET, DELETE, CAS, ACQUIRE, RELEASE];
const S_SET: usize = 0;
const S_DELETE: usize = 1;
const S_CAS: usize = 2;
const S_ACQUIRE: usize = 3;
const S_RELEASE: usize = 4;

/// How often `update` retries a compare-and-set that lost a race before giving up.
const UPDATE_RETRIES: usize = 100;

/// Failure of a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Resp(#[from] RespError),
    #[error("{0}")]
    InvalidInput(String),
    #[error("redis at {addr}: stored value of {what} is not JSON: {error}")]
    Corrupt {
        addr: String,
        what: String,
        error: String,
    },
    #[error("redis at {addr}: update of {what} lost the race to other writers {retries} times in a row; try again")]
    Contended {
        addr: String,
        what: String,
        retries: usize,
    },
}

/// Result of `update`.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub old: Option<String>,
    pub new: String,
    pub errors: Vec<iii_update_ops::OpError>,
}

/// One received pub/sub message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub data: String,
}

/// The adapter's state: a command connection and, once a topic is subscribed, a subscriber
/// connection.
pub struct Redis {
    client: Client,
    sub: Option<Conn>,
    topics: BTreeSet<String>,
    inbox: VecDeque<Message>,
    /// When the subscriber connection may be tried again after it failed.
    sub_retry_at: Option<Instant>,
    sub_backoff: Duration,
}

fn state_key(scope: &str) -> String {
    format!("state:{scope}")
}

fn stream_key(stream: &str, group: &str) -> String {
    format!("stream:{stream}:{group}")
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn text(f: Frame) -> Option<Vec<u8>> {
    match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => Some(b),
        _ => None,
    }
}

impl Redis {
    pub fn new(settings: Settings) -> Redis {
        Redis {
            sub_backoff: settings.backoff_min,
            client: Client::new(settings, SCRIPTS),
            sub: None,
            topics: BTreeSet::new(),
            inbox: VecDeque::new(),
            sub_retry_at: None,
        }
    }

    /// Checks the server answers (`PING`), so `init` reports a wrong URL at load.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.client.call(&[b"PING"])?;
        Ok(())
    }

    pub fn addr(&self) -> &str {
        self.client.addr()
    }

    fn protocol(&self, command: &str, f: &Frame) -> StoreError {
        RespError::Protocol {
            addr: self.addr().to_string(),
            command: command.into(),
            reply: describe(f),
        }
        .into()
    }

    fn opt_string(&self, command: &str, f: Frame) -> Result<Option<String>, StoreError> {
        match f {
            Frame::Null => Ok(None),
            Frame::BulkString(b) => {
                String::from_utf8(b)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        addr: self.addr().to_string(),
                        what: command.to_string(),
                        error: e.to_string(),
                    })
            }
            other => Err(self.protocol(command, &other)),
        }
    }

    fn strings(&self, command: &str, f: Frame) -> Result<Vec<String>, StoreError> {
        match f {
            Frame::Array(items) => items
                .into_iter()
                .map(|i| {
                    self.opt_string(command, i)?
                        .ok_or_else(|| self.protocol(command, &Frame::Null))
                })
                .collect(),
            other => Err(self.protocol(command, &other)),
        }
    }

    // ---- hashes (state and stream share them) ----

    pub fn hget(&mut self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        let r = self
            .client
            .call(&[b"HGET", key.as_bytes(), field.as_bytes()])?;
        self.opt_string("HGET", r)
    }

    pub fn hset(
        &mut self,
        key: &str,
        field: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        let r = self.client.script(
            S_SET,
            &[key.as_bytes()],
            &[field.as_bytes(), value.as_bytes()],
        )?;
        self.opt_string("set script", r)
    }

    pub fn hdel(&mut self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        let r = self
            .client
            .script(S_DELETE, &[key.as_bytes()], &[field.as_bytes()])?;
        self.opt_string("delete script", r)
    }

    pub fn hvals(&mut self, key: &str) -> Result<Vec<String>, StoreError> {
        let r = self.client.call(&[b"HVALS", key.as_bytes()])?;
        self.strings("HVALS", r)
    }

    /// Read-modify-write with [`iii_update_ops::apply`], committed by compare-and-set.
    pub fn hupdate(
        &mut self,
        key: &str,
        field: &str,
        ops: &[iii_update_ops::Op],
    ) -> Result<Updated, StoreError> {
        for _ in 0..UPDATE_RETRIES {
            let old = self.hget(key, field)?;
            let old_value = match &old {
                None => None,
                Some(t) => {
                    Some(
                        serde_json::from_str::<Value>(t).map_err(|e| StoreError::Corrupt {
                            addr: self.addr().to_string(),
                            what: format!("{key} {field}"),
                            error: e.to_string(),
                        })?,
                    )
                }
            };
            let (new, errors) = iii_update_ops::apply(old_value, ops);
            let new = new.to_string();
            let (flag, expect): (&[u8], &[u8]) = match &old {
                None => (b"0", b""),
                Some(o) => (b"1", o.as_bytes()),
            };
            let r = self.client.script(
                S_CAS,
                &[key.as_bytes()],
                &[field.as_bytes(), flag, expect, new.as_bytes()],
            )?;
            match r {
                Frame::Integer(1) => return Ok(Updated { old, new, errors }),
                Frame::Integer(0) => continue,
                other => return Err(self.protocol("compare-and-set script", &other)),
            }
        }
        Err(StoreError::Contended {
            addr: self.addr().to_string(),
            what: format!("{key} {field}"),
            retries: UPDATE_RETRIES,
        })
    }

    /// Every key matching `pattern` (`SCAN` until the cursor returns to 0).
    fn scan(&mut self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut cursor = b"0".to_vec();
        let mut keys = Vec::new();
        loop {
            let r = self.client.call(&[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
                b"TYPE",
                b"hash",
            ])?;
            let Frame::Array(mut parts) = r else {
                return Err(self.protocol("SCAN", &r));
            };
            if parts.len() != 2 {
                return Err(self.protocol("SCAN", &Frame::Array(parts)));
            }
            let batch = parts.pop().expect("two parts");
            let next = parts.pop().expect("two parts");
            keys.extend(self.strings("SCAN", batch)?);
            cursor = text(next).ok_or_else(|| self.protocol("SCAN", &Frame::Null))?;
            if cursor == b"0" {
                return Ok(keys);
            }
        }
    }

    // ---- state ----

    pub fn state_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.hget(&state_key(scope), key)
    }

    pub fn state_set(
        &mut self,
        scope: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        self.hset(&state_key(scope), key, value)
    }

    pub fn state_delete(&mut self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.hdel(&state_key(scope), key)
    }

    pub fn state_update(
        &mut self,
        scope: &str,
        key: &str,
        ops: &[iii_update_ops::Op],
    ) -> Result<Updated, StoreError> {
        self.hupdate(&state_key(scope), key, ops)
    }

    pub fn state_list(&mut self, scope: &str) -> Result<Vec<String>, StoreError> {
        self.hvals(&state_key(scope))
    }

    /// Sorted scopes (`SCAN MATCH state:*`; an emptied hash is gone in Redis).
    pub fn state_groups(&mut self) -> Result<Vec<String>, StoreError> {
        let set: BTreeSet<String> = self
            .scan("state:*")?
            .into_iter()
            .filter_map(|k| k.strip_prefix("state:").map(str::to_string))
            .collect();
        Ok(set.into_iter().collect())
    }

    // ---- stream ----

    pub fn stream_get(
        &mut self,
        s: &str,
        g: &str,
        item: &str,
    ) -> Result<Option<String>, StoreError> {
        self.hget(&stream_key(s, g), item)
    }

    pub fn stream_set(
        &mut self,
        s: &str,
        g: &str,
        item: &str,
        v: &str,
    ) -> Result<Option<String>, StoreError> {
        self.hset(&stream_key(s, g), item, v)
    }

    pub fn stream_delete(
        &mut self,
        s: &str,
        g: &str,
        item: &str,
    ) -> Result<Option<String>, StoreError> {
        self.hdel(&stream_key(s, g), item)
    }

    pub fn stream_update(
        &mut self,
        s: &str,
        g: &str,
        item: &str,
        ops: &[iii_update_ops::Op],
    ) -> Result<Updated, StoreError> {
        self.hupdate(&stream_key(s, g), item, ops)
    }

    pub fn stream_list(&mut self, s: &str, g: &str) -> Result<Vec<String>, StoreError> {
        self.hvals(&stream_key(s, g))
    }

    /// Sorted groups of `stream`. A stream name is the text up to the first `:` of the key's
    /// remainder when listing every stream, so stream names should not contain `:`.
    pub fn stream_groups(&mut self, s: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("stream:{s}:");
        let set: BTreeSet<String> = self
            .scan(&format!("{}*", glob_escape(&prefix)))?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .collect();
        Ok(set.into_iter().collect())
    }

    /// Every stream (sorted) with its sorted groups.
    pub fn stream_all(&mut self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for k in self.scan("stream:*")? {
            if let Some((s, g)) = k.strip_prefix("stream:").and_then(|r| r.split_once(':')) {
                all.entry(s.to_string()).or_default().insert(g.to_string());
            }
        }
        Ok(all
            .into_iter()
            .map(|(s, g)| (s, g.into_iter().collect()))
            .collect())
    }

    // ---- lock ----

    pub fn try_acquire(&mut self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        if ttl_ms == 0 {
            return Err(StoreError::InvalidInput(
                "lock ttl-ms must be at least 1".into(),
            ));
        }
        let k = format!("lock:{key}");
        let ttl = ttl_ms.to_string();
        match self.client.script(
            S_ACQUIRE,
            &[k.as_bytes()],
            &[owner.as_bytes(), ttl.as_bytes()],
        )? {
            Frame::Integer(n) => Ok(n == 1),
            other => Err(self.protocol("acquire script", &other)),
        }
    }

    pub fn release(&mut self, key: &str, owner: &str) -> Result<bool, StoreError> {
        let k = format!("lock:{key}");
        match self
            .client
            .script(S_RELEASE, &[k.as_bytes()], &[owner.as_bytes()])?
        {
            Frame::Integer(n) => Ok(n == 1),
            other => Err(self.protocol("release script", &other)),
        }
    }

    // ---- pub/sub ----

    pub fn publish(&mut self, topic: &str, data: &str) -> Result<(), StoreError> {
        self.client
            .call(&[b"PUBLISH", topic.as_bytes(), data.as_bytes()])?;
        Ok(())
    }

    pub fn subscribe(&mut self, topic: &str) -> Result<(), StoreError> {
        if !self.topics.insert(topic.to_string()) {
            return Ok(());
        }
        if let Some(conn) = self.sub.as_mut() {
            if let Err(e) = conn.send(&[command(&[b"SUBSCRIBE", topic.as_bytes()])]) {
                // The topic stays wanted: the next poll reconnects and subscribes it.
                self.sub = None;
                return Err(e.into());
            }
            Ok(())
        } else {
            // Open now so a dead server is reported to the caller; poll retries otherwise.
            self.open_subscriber().map_err(Into::into)
        }
    }

    pub fn unsubscribe(&mut self, topic: &str) -> Result<(), StoreError> {
        if !self.topics.remove(topic) {
            return Ok(());
        }
        self.inbox.retain(|m| m.topic != topic);
        if let Some(conn) = self.sub.as_mut() {
            if conn
                .send(&[command(&[b"UNSUBSCRIBE", topic.as_bytes()])])
                .is_err()
            {
                self.sub = None;
            }
        }
        Ok(())
    }

    fn open_subscriber(&mut self) -> Result<(), RespError> {
        if let Some(at) = self.sub_retry_at {
            if Instant::now() < at {
                return Err(RespError::Unavailable {
                    addr: self.addr().to_string(),
                    reason: "subscriber connection lost; reconnecting".into(),
                });
            }
        }
        let opened = Conn::open(&self.client.settings).and_then(|mut c| {
            if !self.topics.is_empty() {
                let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
                args.extend(self.topics.iter().map(|t| t.as_bytes()));
                c.send(&[command(&args)])?;
            }
            Ok(c)
        });
        match opened {
            Ok(c) => {
                self.sub = Some(c);
                self.sub_retry_at = None;
                self.sub_backoff = self.client.settings.backoff_min;
                Ok(())
            }
            Err(e) => {
                self.sub_retry_at = Some(Instant::now() + self.sub_backoff);
                self.sub_backoff = (self.sub_backoff * 2).min(self.client.settings.backoff_max);
                Err(e)
            }
        }
    }

    /// Files a frame read on the subscriber connection.
    fn file(&mut self, f: Frame) {
        if let Frame::Array(mut parts) = f {
            if parts.len() == 3 {
                let data = parts.pop().and_then(text);
                let chan = parts.pop().and_then(text);
                let kind = parts.pop().and_then(text);
                if let (Some(k), Some(c), Some(d)) = (kind, chan, data) {
                    if k == b"message" {
                        let topic = String::from_utf8_lossy(&c).into_owned();
                        // A message can race an UNSUBSCRIBE; drop what is no longer wanted.
                        if self.topics.contains(&topic) {
                            self.inbox.push_back(Message {
                                topic,
                                data: String::from_utf8_lossy(&d).into_owned(),
                            });
                        }
                    }
                }
            }
        }
        // Subscribe/unsubscribe confirmations carry nothing we need.
    }

    /// One frame from the subscriber connection: buffered first, else a read of up to `wait`
    /// (zero = only what is buffered).
    fn read_sub(&mut self, wait: Duration) -> Result<Option<Frame>, RespError> {
        let conn = self.sub.as_mut().expect("called with a subscriber");
        if let Some(f) = conn.buffered()? {
            return Ok(Some(f));
        }
        if wait.is_zero() {
            return Ok(None);
        }
        conn.set_read_timeout(wait)?;
        conn.read(true)
    }

    /// Up to `max` messages; waits up to `wait_ms` for the first one. While the server is
    /// down it waits out `wait_ms` (never spins) and then reports the outage.
    pub fn poll(&mut self, max: u32, wait_ms: u32) -> Result<Vec<Message>, StoreError> {
        let max = max.max(1) as usize;
        let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms));
        if self.sub.is_none() && !self.topics.is_empty() {
            if let Err(e) = self.open_subscriber() {
                let left = deadline.saturating_duration_since(Instant::now());
                let until_retry = self
                    .sub_retry_at
                    .map(|a| a.saturating_duration_since(Instant::now()))
                    .unwrap_or(left);
                std::thread::sleep(left.min(until_retry.max(Duration::from_millis(1))));
                if self.inbox.is_empty() {
                    return Err(e.into());
                }
            }
        }
        if self.sub.is_some() {
            loop {
                if self.inbox.len() >= max {
                    break;
                }
                // Wait for the first message only; after that take what is already here.
                let wait = if self.inbox.is_empty() {
                    deadline.saturating_duration_since(Instant::now())
                } else {
                    Duration::ZERO
                };
                match self.read_sub(wait) {
                    Ok(Some(f)) => self.file(f),
                    Ok(None) => break,
                    Err(e) => {
                        self.sub = None;
                        self.sub_retry_at = Some(Instant::now() + self.sub_backoff);
                        if self.inbox.is_empty() {
                            return Err(e.into());
                        }
                        break;
                    }
                }
            }
        } else if self.topics.is_empty() {
            // Nothing subscribed: honour the wait without spinning.
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        }
        let n = self.inbox.len().min(max);
        Ok(self.inbox.drain(..n).collect())
    }
}
