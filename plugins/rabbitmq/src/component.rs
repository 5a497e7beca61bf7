//! The exports: queue-store and topic-router over [`crate::amqp::Conn`].

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::uri::AMQPUri;
use serde_json::Value;

use crate::amqp::{AmqpError, BasicProperties, Conn, Got, NOT_FOUND};

wit_bindgen::generate!({
    path: "../../wit/queue-0.1.0",
    world: "queue-router-adapter",
    generate_all,
});

use exports::iii::adapter::lifecycle::Guest as Lifecycle;
use exports::iii::queue::queue_store::{
    DeadLetter, Delivery, Guest as QueueStore, LeaseRequest, Leased, NackOutcome, NewMessage,
    QueueStats,
};
use exports::iii::queue::topic_router::Guest as TopicRouter;
use iii::adapter::config;
use iii::adapter::logging::{log, Level};
use iii::adapter::types::Error;

const H_META: &str = "x-iii-meta";
const H_GROUP: &str = "x-iii-group";
const H_MAX: &str = "x-iii-max-attempts";
const H_ATTEMPTS: &str = "x-iii-attempts";
const H_ERROR: &str = "x-iii-error";
const H_FAILED_AT: &str = "x-iii-failed-at";
const REGISTRY: &str = "iii.registry";

struct Settings {
    uri: AMQPUri,
    url: String,
    prefetch: u32,
    fifo: bool,
    max_priority: Option<u8>,
    priority_field: Option<String>,
}

/// One leased delivery.
struct Lease {
    queue: String,
    tag: u64,
    id: String,
    payload: String,
    meta: String,
    group: Option<String>,
    attempts: u32,
    max_attempts: u32,
    priority: Option<u8>,
}

struct State {
    s: Settings,
    conn: Option<Conn>,
    /// Bumped at every connect: tokens of an older generation are stale.
    generation: u64,
    declared: HashSet<String>,
    registered: HashSet<String>,
    leases: HashMap<u64, Lease>,
    retry_delays: HashMap<String, BTreeSet<u64>>,
}

thread_local! {
    // A component instance is single-threaded; the host serialises calls.
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn config_value(key: &str) -> Result<Option<Value>, Error> {
    match config::get(key) {
        Ok(Some(text)) => Ok(Some(
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )),
        Ok(None) => Ok(None),
        Err(config::Error::Io(m)) => Err(Error::Other(format!("reading config: {m}"))),
    }
}

fn config_uint(key: &str, default: u64, min: u64, max: u64) -> Result<u64, Error> {
    match config_value(key)? {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "config `{key}` must be an integer from {min} to {max}, not {v}"
                ))
            }),
    }
}

fn settings() -> Result<Settings, Error> {
    let url = match config_value("amqp_url")? {
        None | Some(Value::Null) => "amqp://localhost:5672".to_string(),
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(Error::InvalidInput(format!(
                "config `amqp_url` must be a string, not {v}"
            )))
        }
    };
    let uri: AMQPUri = url.parse().map_err(|e| {
        Error::InvalidInput(format!("config `amqp_url` {url:?} is not an AMQP URL: {e}"))
    })?;
    let fifo = match config_value("queue_mode")? {
        None | Some(Value::Null) => false,
        Some(Value::String(m)) if m == "fifo" => true,
        Some(Value::String(m)) if m == "standard" => false,
        Some(v) => {
            return Err(Error::InvalidInput(format!(
                "config `queue_mode` must be \"standard\" or \"fifo\", not {v}"
            )))
        }
    };
    let max_priority = match config_value("max_priority")? {
        None | Some(Value::Null) => None,
        Some(_) => Some(config_uint("max_priority", 0, 1, 255)? as u8),
    };
    let priority_field = match config_value("priority_field")? {
        None | Some(Value::Null) => None,
        Some(Value::String(f)) if !f.is_empty() => Some(f),
        Some(v) => {
            return Err(Error::InvalidInput(format!(
                "config `priority_field` must be a payload field name, not {v}"
            )))
        }
    };
    if priority_field.is_some() && max_priority.is_none() {
        return Err(Error::InvalidInput(
            "config `priority_field` needs `max_priority` (the queues' x-max-priority)".into(),
        ));
    }
    Ok(Settings {
        prefetch: config_uint("prefetch_count", 64, 1, 65_535)? as u32,
        uri,
        // Never log the password.
        url: redact(&url),
        fifo,
        max_priority,
        priority_field,
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

fn main_q(q: &str) -> String {
    format!("iii.q.{q}")
}
fn dlq(q: &str) -> String {
    format!("iii.dlq.{q}")
}
fn retry_q(q: &str, ms: u64) -> String {
    format!("iii.retry.{ms}.{q}")
}
fn topic_x(t: &str) -> String {
    format!("iii.topic.{t}")
}

fn ss(s: &str) -> ShortString {
    s.into()
}
fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

fn header_str(h: &FieldTable, k: &str) -> Option<String> {
    match h.inner().get(k)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn header_u64(h: &FieldTable, k: &str) -> Option<u64> {
    match h.inner().get(k)? {
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// What a stored message carries besides its body.
struct Envelope<'a> {
    id: &'a str,
    meta: &'a str,
    group: Option<&'a str>,
    attempts: u32,
    max_attempts: u32,
    priority: Option<u8>,
    dead: Option<(&'a str, u64)>,
}

fn properties(e: &Envelope<'_>, expiration: Option<u64>) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(ss(H_META), ls(e.meta));
    if let Some(g) = e.group {
        h.insert(ss(H_GROUP), ls(g));
    }
    h.insert(ss(H_MAX), AMQPValue::LongUInt(e.max_attempts));
    h.insert(ss(H_ATTEMPTS), AMQPValue::LongUInt(e.attempts));
    if let Some((err, at)) = e.dead {
        h.insert(ss(H_ERROR), ls(err));
        h.insert(
            ss(H_FAILED_AT),
            AMQPValue::LongLongInt(i64::try_from(at).unwrap_or(i64::MAX)),
        );
    }
    let mut p = BasicProperties::default()
        .with_message_id(ss(e.id))
        .with_delivery_mode(2)
        .with_content_type(ss("application/json"))
        .with_headers(h);
    if let Some(pr) = e.priority {
        p = p.with_priority(pr);
    }
    if let Some(ms) = expiration {
        p = p.with_expiration(ss(&ms.to_string()));
    }
    p
}

fn backend(s: &Settings, e: &AmqpError) -> Error {
    Error::Backend(format!("rabbitmq at {}: {e}", s.url))
}

impl State {
    fn conn(&mut self) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            let c = Conn::open(&self.s.uri).map_err(|e| {
                Error::Backend(format!("cannot connect to rabbitmq at {}: {e}", self.s.url))
            })?;
            self.generation += 1;
            self.declared.clear();
            // Deliveries of the old channel are gone with it: the broker redelivers them.
            self.leases.clear();
            if self.generation > 1 {
                log(
                    Level::Info,
                    "connection",
                    &format!("reconnected to rabbitmq at {}", self.s.url),
                );
            }
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Runs `f` on the connection; a fatal error drops it so the next call reconnects.
    fn run<R>(&mut self, f: impl FnOnce(&mut State) -> Result<R, AmqpError>) -> Result<R, Error> {
        self.conn()?;
        match f(self) {
            Ok(r) => Ok(r),
            Err(e) => {
                if e.is_fatal() {
                    self.conn = None;
                    self.leases.clear();
                    log(
                        Level::Warn,
                        "connection",
                        &format!("lost the rabbitmq connection: {e}"),
                    );
                }
                Err(backend(&self.s, &e))
            }
        }
    }

    fn c(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("run() connects first")
    }

    fn main_args(&self) -> FieldTable {
        let mut a = FieldTable::default();
        if let Some(p) = self.s.max_priority {
            a.insert(ss("x-max-priority"), AMQPValue::ShortShortUInt(p));
        }
        a
    }

    /// Declares the main and dead-letter queues of `q` once per connection, and records `q`.
    fn ensure(&mut self, q: &str) -> Result<(), AmqpError> {
        if self.declared.contains(q) {
            return Ok(());
        }
        let args = self.main_args();
        self.c().declare_queue(&main_q(q), false, args)?;
        self.c()
            .declare_queue(&dlq(q), false, FieldTable::default())?;
        if !self.registered.contains(q) {
            if self.registered.is_empty() {
                self.registered = self.browse_registry()?;
            }
            if !self.registered.contains(q) {
                self.c()
                    .declare_queue(REGISTRY, false, FieldTable::default())?;
                self.c().publish(
                    "",
                    REGISTRY,
                    false,
                    BasicProperties::default().with_delivery_mode(2),
                    q.as_bytes(),
                )?;
                self.registered.insert(q.to_string());
            }
        }
        self.declared.insert(q.to_string());
        Ok(())
    }

    fn browse_registry(&mut self) -> Result<HashSet<String>, AmqpError> {
        self.c()
            .declare_queue(REGISTRY, false, FieldTable::default())?;
        let got = self.browse(REGISTRY, usize::MAX)?;
        let mut out = HashSet::new();
        for g in got {
            out.insert(String::from_utf8_lossy(&g.body).into_owned());
            self.c().requeue(g.delivery_tag)?;
        }
        Ok(out)
    }

    /// Fetches up to `n` messages of `queue` without acknowledging them (the caller acks or
    /// requeues each). Stops at the count the queue had when it started.
    fn browse(&mut self, queue: &str, n: usize) -> Result<Vec<Got>, AmqpError> {
        let count = match self.c().declare_queue(queue, true, FieldTable::default()) {
            Ok(c) => c as usize,
            Err(AmqpError::ChannelClosed {
                code: NOT_FOUND, ..
            }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        while out.len() < count.min(n) {
            match self.c().get(queue)? {
                Some(g) => out.push(g),
                None => break,
            }
        }
        Ok(out)
    }

    fn priority_of(&self, payload: &str) -> Option<u8> {
        let max = self.s.max_priority?;
        let field = self.s.priority_field.as_deref()?;
        let v: Value = serde_json::from_str(payload).ok()?;
        let p = v.get(field)?.as_u64()?;
        Some(p.min(u64::from(max)) as u8)
    }

    /// Stores a message in `q`, after `delay_ms` through a retry queue.
    fn store(
        &mut self,
        q: &str,
        e: &Envelope<'_>,
        payload: &str,
        delay_ms: u64,
    ) -> Result<(), AmqpError> {
        self.ensure(q)?;
        if delay_ms == 0 {
            self.c().publish(
                "",
                &main_q(q),
                false,
                properties(e, None),
                payload.as_bytes(),
            )?;
            return Ok(());
        }
        let rq = retry_q(q, delay_ms);
        let mut args = FieldTable::default();
        args.insert(ss("x-message-ttl"), AMQPValue::LongLongInt(delay_ms as i64));
        args.insert(ss("x-dead-letter-exchange"), ls(""));
        args.insert(ss("x-dead-letter-routing-key"), ls(&main_q(q)));
        // Unused retry queues go away; declared again before every use, so a message in it
        // (shorter-lived than the expiry) is never dropped with the queue.
        args.insert(
            ss("x-expires"),
            AMQPValue::LongLongInt(delay_ms.saturating_add(60_000) as i64),
        );
        self.c().declare_queue(&rq, false, args)?;
        self.c()
            .publish("", &rq, false, properties(e, None), payload.as_bytes())?;
        self.retry_delays
            .entry(q.to_string())
            .or_default()
            .insert(delay_ms);
        Ok(())
    }

    fn lease_of(&self, token: &str) -> Option<u64> {
        let (g, tag) = token.split_once('.')?;
        let (g, tag) = (g.parse::<u64>().ok()?, tag.parse::<u64>().ok()?);
        (g == self.generation && self.conn.is_some() && self.leases.contains_key(&tag))
            .then_some(tag)
    }

    fn in_flight(&self, q: &str) -> u64 {
        self.leases.values().filter(|l| l.queue == q).count() as u64
    }
}

fn with<R>(f: impl FnOnce(&mut State) -> Result<R, Error>) -> Result<R, Error> {
    STATE.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => f(s),
        None => Err(Error::Other("rabbitmq adapter used before init".into())),
    })
}

fn check_queue(q: &str) -> Result<(), Error> {
    if q.is_empty() || q.len() > 200 {
        return Err(Error::InvalidInput(format!(
            "queue name must be 1 to 200 bytes, got {}",
            q.len()
        )));
    }
    Ok(())
}

struct Component;

impl Lifecycle for Component {
    fn init() -> Result<(), Error> {
        let s = settings()?;
        let mut st = State {
            s,
            conn: None,
            generation: 0,
            declared: HashSet::new(),
            registered: HashSet::new(),
            leases: HashMap::new(),
            retry_delays: HashMap::new(),
        };
        // Fail the load with a clear error when the broker is unreachable or refuses us.
        st.conn()?;
        log(
            Level::Info,
            "init",
            &format!(
                "connected to rabbitmq at {} (heartbeats off, publisher confirms on)",
                st.s.url
            ),
        );
        STATE.with(|c| *c.borrow_mut() = Some(st));
        Ok(())
    }
}

impl QueueStore for Component {
    fn enqueue(queue: String, msg: NewMessage) -> Result<(), Error> {
        check_queue(&queue)?;
        if serde_json::from_str::<Value>(&msg.payload).is_err() {
            return Err(Error::InvalidInput("payload is not JSON".into()));
        }
        with(|st| {
            let priority = st.priority_of(&msg.payload);
            st.run(|st| {
                let e = Envelope {
                    id: &msg.id,
                    meta: &msg.meta,
                    group: msg.group.as_deref(),
                    attempts: 0,
                    max_attempts: msg.max_attempts.max(1),
                    priority,
                    dead: None,
                };
                st.store(&queue, &e, &msg.payload, msg.delay_ms)
            })
        })
    }

    fn lease(queue: String, req: LeaseRequest) -> Result<Leased, Error> {
        check_queue(&queue)?;
        with(|st| {
            let cap = if req.fifo || st.s.fifo {
                1
            } else {
                u64::from(st.s.prefetch)
            };
            let room = cap
                .saturating_sub(st.in_flight(&queue))
                .min(u64::from(req.max));
            st.run(|st| {
                st.ensure(&queue)?;
                let mut out = Vec::new();
                for _ in 0..room {
                    let Some(g) = st.c().get(&main_q(&queue))? else {
                        break;
                    };
                    let h = g.properties.headers().clone().unwrap_or_default();
                    let lease = Lease {
                        queue: queue.clone(),
                        tag: g.delivery_tag,
                        id: g
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                        payload: String::from_utf8_lossy(&g.body).into_owned(),
                        meta: header_str(&h, H_META).unwrap_or_else(|| "{}".into()),
                        group: header_str(&h, H_GROUP),
                        attempts: header_u64(&h, H_ATTEMPTS).unwrap_or(0) as u32,
                        max_attempts: header_u64(&h, H_MAX).unwrap_or(1).max(1) as u32,
                        priority: *g.properties.priority(),
                    };
                    out.push(Delivery {
                        token: format!("{}.{}", st.generation, lease.tag),
                        message_id: lease.id.clone(),
                        payload: lease.payload.clone(),
                        meta: lease.meta.clone(),
                        group: lease.group.clone(),
                        attempt: lease.attempts + 1,
                        max_attempts: lease.max_attempts,
                    });
                    st.leases.insert(lease.tag, lease);
                }
                Ok(Leased {
                    deliveries: out,
                    next_due_ms: None,
                })
            })
        })
    }

    fn ack(_queue: String, token: String) -> Result<bool, Error> {
        with(|st| {
            let Some(tag) = st.lease_of(&token) else {
                return Ok(false);
            };
            st.run(|st| st.c().ack(tag))?;
            st.leases.remove(&tag);
            Ok(true)
        })
    }

    fn nack(
        _queue: String,
        token: String,
        retry_after_ms: u64,
        error: String,
    ) -> Result<NackOutcome, Error> {
        with(|st| {
            let Some(tag) = st.lease_of(&token) else {
                return Ok(NackOutcome::Stale);
            };
            let l = st.leases.remove(&tag).expect("lease_of checked it");
            let attempts = l.attempts + 1;
            let dead = attempts >= l.max_attempts;
            let failed_at = now_ms();
            let r = st.run(|st| {
                let e = Envelope {
                    id: &l.id,
                    meta: &l.meta,
                    group: l.group.as_deref(),
                    attempts,
                    max_attempts: l.max_attempts,
                    priority: l.priority,
                    dead: dead.then_some((error.as_str(), failed_at)),
                };
                // Copy first, then ack: a failure in between duplicates, never loses.
                if dead {
                    st.ensure(&l.queue)?;
                    st.c().publish(
                        "",
                        &dlq(&l.queue),
                        false,
                        properties(&e, None),
                        l.payload.as_bytes(),
                    )?;
                } else {
                    st.store(&l.queue, &e, &l.payload, retry_after_ms)?;
                }
                st.c().ack(tag)
            });
            match r {
                Ok(()) => Ok(if dead {
                    NackOutcome::DeadLettered
                } else {
                    NackOutcome::Retrying
                }),
                Err(e) => {
                    if st.conn.is_some() {
                        st.leases.insert(tag, l);
                    }
                    Err(e)
                }
            }
        })
    }

    fn release(_queue: String, token: String, retry_after_ms: u64) -> Result<bool, Error> {
        with(|st| {
            let Some(tag) = st.lease_of(&token) else {
                return Ok(false);
            };
            let l = st.leases.remove(&tag).expect("lease_of checked it");
            let r = st.run(|st| {
                if retry_after_ms == 0 {
                    return st.c().requeue(tag);
                }
                let e = Envelope {
                    id: &l.id,
                    meta: &l.meta,
                    group: l.group.as_deref(),
                    attempts: l.attempts,
                    max_attempts: l.max_attempts,
                    priority: l.priority,
                    dead: None,
                };
                st.store(&l.queue, &e, &l.payload, retry_after_ms)?;
                st.c().ack(tag)
            });
            match r {
                Ok(()) => Ok(true),
                Err(e) => {
                    if st.conn.is_some() {
                        st.leases.insert(tag, l);
                    }
                    Err(e)
                }
            }
        })
    }

    fn dead_letters(queue: String, offset: u64, limit: u64) -> Result<Vec<DeadLetter>, Error> {
        check_queue(&queue)?;
        with(|st| {
            st.run(|st| {
                let want = offset.saturating_add(limit).min(100_000) as usize;
                let got = st.browse(&dlq(&queue), want)?;
                let mut out = Vec::new();
                for (i, g) in got.iter().enumerate() {
                    if (i as u64) >= offset {
                        out.push(dead_letter(g));
                    }
                }
                for g in got {
                    st.c().requeue(g.delivery_tag)?;
                }
                Ok(out)
            })
        })
    }

    fn redrive(queue: String, message_id: Option<String>) -> Result<u64, Error> {
        check_queue(&queue)?;
        with(|st| {
            st.run(|st| {
                st.ensure(&queue)?;
                let got = st.browse(&dlq(&queue), usize::MAX)?;
                let mut moved = 0;
                for g in got {
                    let d = dead_letter(&g);
                    if message_id.as_ref().is_some_and(|m| *m != d.message_id) {
                        st.c().requeue(g.delivery_tag)?;
                        continue;
                    }
                    let e = Envelope {
                        id: &d.message_id,
                        meta: &d.meta,
                        group: d.group.as_deref(),
                        attempts: 0,
                        max_attempts: d.max_attempts,
                        priority: *g.properties.priority(),
                        dead: None,
                    };
                    st.c()
                        .publish("", &main_q(&queue), false, properties(&e, None), &g.body)?;
                    st.c().ack(g.delivery_tag)?;
                    moved += 1;
                }
                Ok(moved)
            })
        })
    }

    fn discard(queue: String, message_id: String) -> Result<bool, Error> {
        check_queue(&queue)?;
        with(|st| {
            st.run(|st| {
                let got = st.browse(&dlq(&queue), usize::MAX)?;
                let mut found = false;
                for g in got {
                    if !found && dead_letter(&g).message_id == message_id {
                        st.c().ack(g.delivery_tag)?;
                        found = true;
                    } else {
                        st.c().requeue(g.delivery_tag)?;
                    }
                }
                Ok(found)
            })
        })
    }

    fn stats(queue: String) -> Result<QueueStats, Error> {
        check_queue(&queue)?;
        with(|st| {
            let in_flight = st.in_flight(&queue);
            let delays: Vec<u64> = st
                .retry_delays
                .get(&queue)
                .map(|d| d.iter().copied().collect())
                .unwrap_or_default();
            st.run(|st| {
                let count = |st: &mut State, name: &str| -> Result<u64, AmqpError> {
                    match st.c().declare_queue(name, true, FieldTable::default()) {
                        Ok(n) => Ok(u64::from(n)),
                        Err(AmqpError::ChannelClosed {
                            code: NOT_FOUND, ..
                        }) => Ok(0),
                        Err(e) => Err(e),
                    }
                };
                let mut waiting = count(st, &main_q(&queue))?;
                for d in delays {
                    waiting += count(st, &retry_q(&queue, d))?;
                }
                let dead = count(st, &dlq(&queue))?;
                Ok(QueueStats {
                    waiting,
                    in_flight,
                    dead,
                })
            })
        })
    }

    fn queues() -> Result<Vec<String>, Error> {
        with(|st| {
            st.run(|st| {
                let all = st.browse_registry()?;
                st.registered.extend(all.iter().cloned());
                let mut v: Vec<String> = all.into_iter().collect();
                v.sort();
                Ok(v)
            })
        })
    }
}

fn dead_letter(g: &Got) -> DeadLetter {
    let h = g.properties.headers().clone().unwrap_or_default();
    DeadLetter {
        message_id: g
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        payload: String::from_utf8_lossy(&g.body).into_owned(),
        meta: header_str(&h, H_META).unwrap_or_else(|| "{}".into()),
        error: header_str(&h, H_ERROR).unwrap_or_default(),
        failed_at_ms: header_u64(&h, H_FAILED_AT).unwrap_or(0),
        attempts: header_u64(&h, H_ATTEMPTS).unwrap_or(0) as u32,
        max_attempts: header_u64(&h, H_MAX).unwrap_or(1).max(1) as u32,
        group: header_str(&h, H_GROUP),
    }
}

impl TopicRouter for Component {
    fn bind(topic: String, queue: String) -> Result<(), Error> {
        check_queue(&queue)?;
        with(|st| {
            st.run(|st| {
                st.ensure(&queue)?;
                st.c().declare_fanout(&topic_x(&topic))?;
                st.c().bind(&main_q(&queue), &topic_x(&topic), true)
            })
        })
    }

    fn unbind(topic: String, queue: String) -> Result<(), Error> {
        with(|st| {
            st.run(|st| {
                st.c().declare_fanout(&topic_x(&topic))?;
                match st.c().bind(&main_q(&queue), &topic_x(&topic), false) {
                    Err(AmqpError::ChannelClosed {
                        code: NOT_FOUND, ..
                    }) => Ok(()),
                    r => r,
                }
            })
        })
    }

    fn publish(topic: String, unrouted: String, msg: NewMessage) -> Result<(), Error> {
        check_queue(&unrouted)?;
        if serde_json::from_str::<Value>(&msg.payload).is_err() {
            return Err(Error::InvalidInput("payload is not JSON".into()));
        }
        with(|st| {
            let priority = st.priority_of(&msg.payload);
            st.run(|st| {
                let e = Envelope {
                    id: &msg.id,
                    meta: &msg.meta,
                    group: msg.group.as_deref(),
                    attempts: 0,
                    max_attempts: msg.max_attempts.max(1),
                    priority,
                    dead: None,
                };
                let x = topic_x(&topic);
                if !st.declared.contains(&x) {
                    st.c().declare_fanout(&x)?;
                    st.declared.insert(x.clone());
                }
                // Mandatory: with no queue bound the broker returns it, and it waits in
                // `unrouted` for the first subscriber.
                let routed =
                    st.c()
                        .publish(&x, "", true, properties(&e, None), msg.payload.as_bytes())?;
                if !routed {
                    st.store(&unrouted, &e, &msg.payload, 0)?;
                }
                Ok(())
            })
        })
    }
}

export!(Component);
