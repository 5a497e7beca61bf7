//! The builtin iii kv adapter as a WebAssembly component (`kv-adapter` world).
//!
//! With a data directory granted (preopened at `/data`) every write is
//! appended to a checksummed log and fsynced before the call returns; memory
//! holds only a keydir (where each value is in the log) and values are read
//! from disk on demand. Without one, values live in memory. See README.md for
//! the log format, replay, damage handling and compaction.

pub mod format;
pub mod store;
pub mod wal;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;
    use std::path::Path;

    use serde_json::Value;

    use crate::store::{Kv, Opened, Options, StoreError};
    use crate::wal::OnCorruption;

    wit_bindgen::generate!({
        path: "../../wit/adapter-0.1.0",
        world: "kv-adapter",
        generate_all,
    });

    use exports::iii::adapter::lifecycle::Guest as Lifecycle;
    use exports::iii::adapter::state_store::Guest as StateStore;
    use exports::iii::adapter::stream_store::{Guest as StreamStore, StreamGroups};
    use iii::adapter::config;
    use iii::adapter::logging::{log, Level};
    use iii::adapter::types::{Error, OpError, SetResult, UpdateOp, UpdateResult};

    /// Guest path where the host preopens `grants.data_dir`.
    const DATA_DIR: &str = "/data";

    thread_local! {
        // A component instance is single-threaded; the host serialises calls.
        static KV: RefCell<Option<Kv>> = const { RefCell::new(None) };
    }

    fn with_kv<R>(f: impl FnOnce(&mut Kv) -> Result<R, Error>) -> Result<R, Error> {
        KV.with(|cell| match cell.borrow_mut().as_mut() {
            Some(kv) => {
                let r = f(kv);
                report_compaction(kv);
                r
            }
            None => Err(Error::Other("kv adapter used before init".into())),
        })
    }

    fn store_error(e: StoreError) -> Error {
        if e.is_invalid_input() {
            Error::InvalidInput(e.to_string())
        } else {
            Error::Backend(e.to_string())
        }
    }

    /// Reports a compaction that failed after a write had succeeded.
    fn report_compaction(kv: &mut Kv) {
        if let Some(e) = kv.take_compaction_error() {
            log(
                Level::Error,
                "compaction",
                &format!("compaction failed, the log keeps growing: {e}"),
            );
        }
    }

    fn report_open(o: &Opened) {
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
        if o.migrated_v1 {
            log(
                Level::Info,
                "replay",
                &format!(
                    "migrated the log from format v1 to v2: {} records read, {} keys kept",
                    o.records, o.keys
                ),
            );
        }
        if !o.damage.is_empty() {
            let lost_records: u64 = o.damage.iter().map(|d| d.records).sum();
            let lost_bytes: u64 = o.damage.iter().map(|d| d.bytes).sum();
            let regions: Vec<String> = o
                .damage
                .iter()
                .map(|d| {
                    let keys = if d.keys.is_empty() {
                        "keys unreadable".to_string()
                    } else {
                        format!("keys {}", d.keys.join(", "))
                    };
                    format!(
                        "offset {} ({} bytes, {} records, {keys})",
                        d.offset, d.bytes, d.records
                    )
                })
                .collect();
            log(
                Level::Error,
                "salvage",
                &format!(
                    "on_corruption salvage: kept {} valid records ({} keys); lost {lost_records} damaged records ({lost_bytes} bytes) plus {} torn bytes at the end; damaged at {}; the latest write of the keys named there may be lost",
                    o.records,
                    o.keys,
                    o.torn_tail,
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

    fn open() -> Result<Kv, Error> {
        let method = match config_value("store_method")? {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(v) => {
                return Err(Error::InvalidInput(format!(
                    "config `store_method` must be \"file_based\" or \"in_memory\", got {v}"
                )))
            }
        };
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
        let defaults = Options::default();
        let max_value = config_u64("max_value_bytes", defaults.max_value_bytes as u64)?;
        if max_value == 0 || max_value > u64::from(crate::format::MAX_PAYLOAD) / 2 {
            return Err(Error::InvalidInput(format!(
                "config `max_value_bytes` must be between 1 and {}, got {max_value}",
                crate::format::MAX_PAYLOAD / 2
            )));
        }
        let opts = Options {
            fsync,
            compact_min_bytes: config_u64("compact_min_bytes", defaults.compact_min_bytes)?,
            compact_ratio: config_u64("compact_ratio", defaults.compact_ratio)?.max(1),
            max_value_bytes: max_value as usize,
            max_list_bytes: config_u64("max_list_bytes", defaults.max_list_bytes)?,
            on_corruption,
        };
        let dir = Path::new(DATA_DIR);
        let have_dir = std::fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false);
        match method.as_deref() {
            Some("in_memory") => {
                log(
                    Level::Warn,
                    "kv",
                    "store_method in_memory: data is lost on restart",
                );
                Ok(Kv::in_memory(opts))
            }
            Some("file_based") | None if have_dir => {
                let started = std::time::Instant::now();
                let (kv, opened) = Kv::open(dir, opts).map_err(|e| {
                    // The guest sees the data directory as /data; say which
                    // host directory that is.
                    let mut e = store_error(e);
                    if let Error::Backend(m) | Error::InvalidInput(m) = &mut e {
                        m.push_str(" (/data is the adapter's `grants.data_dir`; for the builtin kv by default <project>/.iii/data/state or .iii/data/stream)");
                    }
                    e
                })?;
                report_open(&opened);
                log(
                    Level::Info,
                    "replay",
                    &format!(
                        "opened /data/kv.wal: {} records, {} keys, {} bytes, in {} ms",
                        opened.records,
                        opened.keys,
                        kv.log_bytes(),
                        started.elapsed().as_millis()
                    ),
                );
                Ok(kv)
            }
            Some("file_based") => Err(Error::InvalidInput(
                "store_method file_based needs a data directory: grant `data_dir`".into(),
            )),
            None => {
                log(
                    Level::Warn,
                    "kv",
                    "no data directory granted: running in memory, data is lost on restart",
                );
                Ok(Kv::in_memory(opts))
            }
            Some(other) => Err(Error::InvalidInput(format!(
                "config `store_method` must be \"file_based\" or \"in_memory\", got \"{other}\""
            ))),
        }
    }

    fn parse(json: &str) -> Result<Value, Error> {
        serde_json::from_str(json)
            .map_err(|e| Error::InvalidInput(format!("value is not JSON: {e}")))
    }

    fn to_ops(ops: Vec<UpdateOp>) -> Result<Vec<iii_update_ops::Op>, Error> {
        use iii_update_ops::Op;
        ops.into_iter()
            .map(|op| {
                Ok(match op {
                    UpdateOp::Set(o) => Op::Set {
                        path: o.path,
                        value: parse(&o.value)?,
                    },
                    UpdateOp::Merge(o) => Op::Merge {
                        path: o.path,
                        value: parse(&o.value)?,
                    },
                    UpdateOp::Increment(o) => Op::Increment {
                        path: o.path,
                        by: o.by,
                    },
                    UpdateOp::Decrement(o) => Op::Decrement {
                        path: o.path,
                        by: o.by,
                    },
                    UpdateOp::Append(o) => Op::Append {
                        path: o.path,
                        value: parse(&o.value)?,
                    },
                    UpdateOp::Remove(path) => Op::Remove { path },
                })
            })
            .collect()
    }

    /// Runs the ops on `old` and returns the JSON text to store and the result.
    fn run_update(
        old: Option<String>,
        ops: Vec<UpdateOp>,
    ) -> Result<(String, UpdateResult), Error> {
        let ops = to_ops(ops)?;
        let old_value = old.as_deref().map(parse).transpose()?;
        let (new, errors) = iii_update_ops::apply(old_value, &ops);
        let new_text = new.to_string();
        let result = UpdateResult {
            old_value: old,
            new_value: new_text.clone(),
            errors: errors
                .into_iter()
                .map(|e| OpError {
                    op_index: e.op_index as u32,
                    code: e.code,
                    message: e.message,
                    doc_url: e.doc_url,
                })
                .collect(),
        };
        Ok((new_text, result))
    }

    struct Component;

    impl Lifecycle for Component {
        fn init() -> Result<(), Error> {
            let kv = open()?;
            KV.with(|cell| *cell.borrow_mut() = Some(kv));
            Ok(())
        }
    }

    impl StateStore for Component {
        fn get(scope: String, key: String) -> Result<Option<String>, Error> {
            with_kv(|kv| kv.state_get(&scope, &key).map_err(store_error))
        }

        fn set(scope: String, key: String, value: String) -> Result<SetResult, Error> {
            with_kv(|kv| {
                let old = kv
                    .state_set(&scope, &key, value.clone())
                    .map_err(store_error)?;
                Ok(SetResult {
                    old_value: old,
                    new_value: value,
                })
            })
        }

        fn delete(scope: String, key: String) -> Result<Option<String>, Error> {
            with_kv(|kv| kv.state_delete(&scope, &key).map_err(store_error))
        }

        fn update(scope: String, key: String, ops: Vec<UpdateOp>) -> Result<UpdateResult, Error> {
            with_kv(|kv| {
                let (new, result) =
                    run_update(kv.state_get(&scope, &key).map_err(store_error)?, ops)?;
                kv.state_put(&scope, &key, new).map_err(store_error)?;
                Ok(result)
            })
        }

        fn list(scope: String) -> Result<Vec<String>, Error> {
            with_kv(|kv| kv.state_list(&scope).map_err(store_error))
        }

        fn list_groups() -> Result<Vec<String>, Error> {
            with_kv(|kv| Ok(kv.state_groups()))
        }
    }

    impl StreamStore for Component {
        fn get(stream: String, group: String, item: String) -> Result<Option<String>, Error> {
            with_kv(|kv| kv.stream_get(&stream, &group, &item).map_err(store_error))
        }

        fn set(
            stream: String,
            group: String,
            item: String,
            value: String,
        ) -> Result<SetResult, Error> {
            with_kv(|kv| {
                let old = kv
                    .stream_set(&stream, &group, &item, value.clone())
                    .map_err(store_error)?;
                Ok(SetResult {
                    old_value: old,
                    new_value: value,
                })
            })
        }

        fn delete(stream: String, group: String, item: String) -> Result<Option<String>, Error> {
            with_kv(|kv| {
                kv.stream_delete(&stream, &group, &item)
                    .map_err(store_error)
            })
        }

        fn update(
            stream: String,
            group: String,
            item: String,
            ops: Vec<UpdateOp>,
        ) -> Result<UpdateResult, Error> {
            with_kv(|kv| {
                let (new, result) = run_update(
                    kv.stream_get(&stream, &group, &item).map_err(store_error)?,
                    ops,
                )?;
                kv.stream_put(&stream, &group, &item, new)
                    .map_err(store_error)?;
                Ok(result)
            })
        }

        fn list(stream: String, group: String) -> Result<Vec<String>, Error> {
            with_kv(|kv| kv.stream_list(&stream, &group).map_err(store_error))
        }

        fn list_groups(stream: String) -> Result<Vec<String>, Error> {
            with_kv(|kv| Ok(kv.stream_groups(&stream)))
        }

        fn list_all() -> Result<Vec<StreamGroups>, Error> {
            with_kv(|kv| {
                Ok(kv
                    .stream_all()
                    .into_iter()
                    .map(|(stream, groups)| StreamGroups { stream, groups })
                    .collect())
            })
        }
    }

    export!(Component);
}
