//! The builtin iii queue adapter as a WebAssembly component (`queue-adapter` world).
//!
//! With a data directory granted (preopened at `/data`) every change is appended to a
//! checksummed log (`iii-wal`) and fsynced before the call returns; memory holds an index of
//! the messages and payloads are read from disk when leased. Without one, messages live in
//! memory. See README.md for the format, the write path, replay and the memory bounds.

pub mod format;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;
    use std::path::Path;
    use std::time::{SystemTime, UNIX_EPOCH};

    use iii_wal::OnCorruption;
    use serde_json::Value;

    use crate::store::{self, Opened, Options, Queues, StoreError};

    wit_bindgen::generate!({
        path: "../../wit/queue-0.1.0",
        world: "queue-adapter",
        generate_all,
    });

    use exports::iii::adapter::lifecycle::Guest as Lifecycle;
    use exports::iii::queue::queue_store::{
        DeadLetter, Delivery, Guest as QueueStore, LeaseRequest, Leased, NackOutcome, NewMessage,
        QueueStats,
    };
    use iii::adapter::config;
    use iii::adapter::logging::{log, Level};
    use iii::adapter::types::Error;

    /// Guest path where the host preopens `grants.data_dir`.
    const DATA_DIR: &str = "/data";

    thread_local! {
        // A component instance is single-threaded; the host serialises calls.
        static QUEUES: RefCell<Option<Queues>> = const { RefCell::new(None) };
    }

    /// The WASI wall clock, milliseconds since the Unix epoch.
    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn with_queues<R>(f: impl FnOnce(&mut Queues) -> Result<R, StoreError>) -> Result<R, Error> {
        QUEUES.with(|cell| match cell.borrow_mut().as_mut() {
            Some(q) => {
                let r = f(q).map_err(store_error);
                if let Some(e) = q.take_compaction_error() {
                    log(
                        Level::Error,
                        "compaction",
                        &format!("compaction failed, the log keeps growing: {e}"),
                    );
                }
                r
            }
            None => Err(Error::Other("queue adapter used before init".into())),
        })
    }

    fn store_error(e: StoreError) -> Error {
        if e.is_invalid_input() {
            Error::InvalidInput(e.to_string())
        } else {
            Error::Backend(e.to_string())
        }
    }

    fn report_open(o: &Opened, log_bytes: u64, ms: u128) {
        if o.torn_tail > 0 && o.damage.is_empty() {
            log(
                Level::Warn,
                "replay",
                &format!(
                    "discarded {} bytes of an incomplete record at the end of the log (a write torn by a crash)",
                    o.torn_tail
                ),
            );
        }
        if !o.damage.is_empty() {
            let lost: u64 = o.damage.iter().map(|d| d.records).sum();
            let regions: Vec<String> = o
                .damage
                .iter()
                .map(|d| {
                    let names = if d.keys.is_empty() {
                        "messages unreadable".to_string()
                    } else {
                        format!("messages {}", d.keys.join(", "))
                    };
                    format!(
                        "offset {} ({} bytes, {} records, {names})",
                        d.offset, d.bytes, d.records
                    )
                })
                .collect();
            log(
                Level::Error,
                "salvage",
                &format!(
                    "on_corruption salvage: kept {} valid records ({} live messages, {} dead letters); lost {lost} damaged records plus {} torn bytes at the end; {} records named a lost message and were skipped; damaged at {}; the latest change of the messages named there may be lost",
                    o.records,
                    o.live,
                    o.dead,
                    o.torn_tail,
                    o.orphans,
                    regions.join("; ")
                ),
            );
        }
        if let Some(b) = &o.backup {
            log(
                Level::Warn,
                "replay",
                &format!("the original log was saved as {b}"),
            );
        }
        log(
            Level::Info,
            "replay",
            &format!(
                "opened /data/queue.wal: {} records, {} live messages (every lease ended), {} dead letters, {log_bytes} bytes, in {ms} ms",
                o.records, o.live, o.dead
            ),
        );
    }

    fn config_value(key: &str) -> Result<Option<Value>, Error> {
        match config::get(key) {
            Ok(Some(text)) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::InvalidInput(format!("config key `{key}` is not JSON: {e}"))),
            Ok(None) => Ok(None),
            Err(config::Error::Io(m)) => Err(Error::Other(format!("reading config: {m}"))),
        }
    }

    fn config_u64(key: &str, default: u64) -> Result<u64, Error> {
        match config_value(key)? {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::InvalidInput(format!(
                    "config `{key}` must be a non-negative integer, got {v}"
                ))
            }),
        }
    }

    fn options() -> Result<Options, Error> {
        let fsync = match config_value("fsync")? {
            None => true,
            Some(Value::Bool(b)) => b,
            Some(v) => {
                return Err(Error::InvalidInput(format!(
                    "config `fsync` must be a boolean, got {v}"
                )))
            }
        };
        let on_corruption = match config_value("on_corruption")? {
            None => OnCorruption::Refuse,
            Some(Value::String(s)) if s == "refuse" => OnCorruption::Refuse,
            Some(Value::String(s)) if s == "salvage" => OnCorruption::Salvage,
            Some(v) => {
                return Err(Error::InvalidInput(format!(
                "config `on_corruption` must be \"refuse\" (the default) or \"salvage\", got {v}"
            )))
            }
        };
        let d = Options::default();
        let max_message = config_u64("max_message_bytes", d.max_message_bytes as u64)?;
        let limit = u64::from(iii_wal::MAX_PAYLOAD) / 2;
        if max_message == 0 || max_message > limit {
            return Err(Error::InvalidInput(format!(
                "config `max_message_bytes` must be between 1 and {limit}, got {max_message}"
            )));
        }
        Ok(Options {
            fsync,
            compact_min_bytes: config_u64("compact_min_bytes", d.compact_min_bytes)?,
            compact_ratio: config_u64("compact_ratio", d.compact_ratio)?.max(1),
            max_message_bytes: max_message as usize,
            max_lease_bytes: config_u64("max_lease_bytes", d.max_lease_bytes)?,
            on_corruption,
        })
    }

    fn open() -> Result<Queues, Error> {
        let method = match config_value("store_method")? {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(v) => {
                return Err(Error::InvalidInput(format!(
                    "config `store_method` must be \"file_based\" or \"in_memory\", got {v}"
                )))
            }
        };
        let opts = options()?;
        if !opts.fsync {
            log(
                Level::Warn,
                "queue",
                "fsync: false: acknowledged changes survive a process kill but not a power loss",
            );
        }
        let dir = Path::new(DATA_DIR);
        let have_dir = std::fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false);
        match method.as_deref() {
            Some("in_memory") => {
                log(
                    Level::Warn,
                    "queue",
                    "store_method in_memory: messages are lost on restart",
                );
                Ok(Queues::in_memory(opts, now_ms()))
            }
            Some("file_based") | None if have_dir => {
                let started = std::time::Instant::now();
                let (q, opened) = Queues::open(dir, opts, now_ms()).map_err(|e| {
                    let mut e = store_error(e);
                    if let Error::Backend(m) | Error::InvalidInput(m) = &mut e {
                        m.push_str(" (/data is the adapter's `grants.data_dir`)");
                    }
                    e
                })?;
                report_open(&opened, q.log_bytes(), started.elapsed().as_millis());
                Ok(q)
            }
            Some("file_based") => Err(Error::InvalidInput(
                "store_method file_based needs a data directory: grant `data_dir`".into(),
            )),
            None => {
                log(
                    Level::Warn,
                    "queue",
                    "no data directory granted: running in memory, messages are lost on restart",
                );
                Ok(Queues::in_memory(opts, now_ms()))
            }
            Some(other) => Err(Error::InvalidInput(format!(
                "config `store_method` must be \"file_based\" or \"in_memory\", got \"{other}\""
            ))),
        }
    }

    struct Component;

    impl Lifecycle for Component {
        fn init() -> Result<(), Error> {
            let q = open()?;
            QUEUES.with(|cell| *cell.borrow_mut() = Some(q));
            Ok(())
        }
    }

    impl QueueStore for Component {
        fn enqueue(queue: String, msg: NewMessage) -> Result<(), Error> {
            let m = store::NewMessage {
                id: &msg.id,
                payload: &msg.payload,
                meta: &msg.meta,
                group: msg.group.as_deref(),
                max_attempts: msg.max_attempts,
                delay_ms: msg.delay_ms,
            };
            with_queues(|q| q.enqueue(&queue, m, now_ms()))
        }

        fn lease(queue: String, req: LeaseRequest) -> Result<Leased, Error> {
            let req = store::LeaseRequest {
                max: req.max,
                lease_ms: req.lease_ms,
                fifo: req.fifo,
            };
            let l = with_queues(|q| q.lease(&queue, req, now_ms()))?;
            Ok(Leased {
                deliveries: l
                    .deliveries
                    .into_iter()
                    .map(|d| Delivery {
                        token: d.token,
                        message_id: d.message_id,
                        payload: d.payload,
                        meta: d.meta,
                        group: d.group,
                        attempt: d.attempt,
                        max_attempts: d.max_attempts,
                    })
                    .collect(),
                next_due_ms: l.next_due_ms,
            })
        }

        fn ack(queue: String, token: String) -> Result<bool, Error> {
            with_queues(|q| q.ack(&queue, &token))
        }

        fn nack(
            queue: String,
            token: String,
            retry_after_ms: u64,
            error: String,
        ) -> Result<NackOutcome, Error> {
            let o = with_queues(|q| q.nack(&queue, &token, retry_after_ms, &error, now_ms()))?;
            Ok(match o {
                store::NackOutcome::Retrying => NackOutcome::Retrying,
                store::NackOutcome::DeadLettered => NackOutcome::DeadLettered,
                store::NackOutcome::Stale => NackOutcome::Stale,
            })
        }

        fn release(queue: String, token: String, retry_after_ms: u64) -> Result<bool, Error> {
            with_queues(|q| Ok(q.release(&queue, &token, retry_after_ms, now_ms())))
        }

        fn dead_letters(queue: String, offset: u64, limit: u64) -> Result<Vec<DeadLetter>, Error> {
            let dead = with_queues(|q| q.dead_letters(&queue, offset, limit))?;
            Ok(dead
                .into_iter()
                .map(|d| DeadLetter {
                    message_id: d.message_id,
                    payload: d.payload,
                    meta: d.meta,
                    error: d.error,
                    failed_at_ms: d.failed_at_ms,
                    attempts: d.attempts,
                    max_attempts: d.max_attempts,
                    group: d.group,
                })
                .collect())
        }

        fn redrive(queue: String, message_id: Option<String>) -> Result<u64, Error> {
            with_queues(|q| q.redrive(&queue, message_id.as_deref(), now_ms()))
        }

        fn discard(queue: String, message_id: String) -> Result<bool, Error> {
            with_queues(|q| q.discard(&queue, &message_id))
        }

        fn stats(queue: String) -> Result<QueueStats, Error> {
            let s = with_queues(|q| Ok(q.stats(&queue)))?;
            Ok(QueueStats {
                waiting: s.waiting,
                in_flight: s.in_flight,
                dead: s.dead,
            })
        }

        fn queues() -> Result<Vec<String>, Error> {
            with_queues(|q| Ok(q.queues()))
        }
    }

    export!(Component);
}
