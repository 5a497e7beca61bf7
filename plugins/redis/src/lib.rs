//! The iii Redis adapter as one WebAssembly component (`redis-adapter` world): state,
//! stream, pub/sub bus and lock store over RESP2. The host instantiates it once per world it
//! is loaded as; each instance has its own connection. See README.md.

pub mod resp;
pub mod store;

pub use resp::{RespError, Settings};
pub use store::{Message, Redis, StoreError, Updated};

/// Builds the settings from the `config:` values (each a parsed JSON value, absent = None).
pub fn settings_from(
    url: Option<&serde_json::Value>,
    connect_timeout_ms: Option<&serde_json::Value>,
    timeout_ms: Option<&serde_json::Value>,
) -> Result<Settings, String> {
    let url = match url {
        None => "redis://localhost:6379",
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("config `redis_url` must be a string, got {v}")),
    };
    let mut s = Settings::from_url(url).map_err(|e| e.to_string())?;
    let ms = |key: &str, v: Option<&serde_json::Value>, default: u64| -> Result<u64, String> {
        match v {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "config `{key}` must be a positive integer (ms), got {v}"
                )),
            },
        }
    };
    s.connect_timeout =
        std::time::Duration::from_millis(ms("connect_timeout_ms", connect_timeout_ms, 1000)?);
    s.io_timeout = std::time::Duration::from_millis(ms("timeout_ms", timeout_ms, 2000)?);
    Ok(s)
}

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use serde_json::Value;

    use crate::store::{Redis, StoreError, Updated};

    wit_bindgen::generate!({
        path: "wit",
        world: "redis-adapter",
        generate_all,
    });

    use exports::iii::adapter::lifecycle::Guest as Lifecycle;
    use exports::iii::adapter::state_store::Guest as StateStore;
    use exports::iii::adapter::stream_store::{Guest as StreamStore, StreamGroups};
    use exports::iii::lock::lock_store::Guest as LockStore;
    use exports::iii::pubsub::bus::{Guest as Bus, Message};
    use iii::adapter::config;
    use iii::adapter::logging::{log, Level};
    use iii::adapter::types::{Error, OpError, SetResult, UpdateOp, UpdateResult};

    thread_local! {
        // A component instance is single-threaded; the host serialises calls.
        static REDIS: RefCell<Option<Redis>> = const { RefCell::new(None) };
    }

    fn with<R>(f: impl FnOnce(&mut Redis) -> Result<R, StoreError>) -> Result<R, Error> {
        REDIS.with(|cell| match cell.borrow_mut().as_mut() {
            Some(r) => f(r).map_err(error),
            None => Err(Error::Other("redis adapter used before init".into())),
        })
    }

    fn error(e: StoreError) -> Error {
        match e {
            StoreError::InvalidInput(m) => Error::InvalidInput(m),
            other => Error::Backend(other.to_string()),
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

    fn update_result(u: Updated) -> UpdateResult {
        UpdateResult {
            old_value: u.old,
            new_value: u.new,
            errors: u
                .errors
                .into_iter()
                .map(|e| OpError {
                    op_index: e.op_index as u32,
                    code: e.code,
                    message: e.message,
                    doc_url: e.doc_url,
                })
                .collect(),
        }
    }

    fn checked(value: &str) -> Result<(), Error> {
        parse(value).map(|_| ())
    }

    struct Component;

    impl Lifecycle for Component {
        fn init() -> Result<(), Error> {
            let settings = crate::settings_from(
                config_value("redis_url")?.as_ref(),
                config_value("connect_timeout_ms")?.as_ref(),
                config_value("timeout_ms")?.as_ref(),
            )
            .map_err(Error::InvalidInput)?;
            let mut redis = Redis::new(settings);
            // A server that is down at start is not fatal: calls fail with `unavailable`
            // until it is back, and the adapter reconnects by itself.
            match redis.ping() {
                Ok(()) => log(
                    Level::Info,
                    "redis",
                    &format!("connected to redis at {}", redis.addr()),
                ),
                Err(e) => log(
                    Level::Warn,
                    "redis",
                    &format!("{e}; calls fail until it is reachable, reconnecting with backoff"),
                ),
            }
            REDIS.with(|cell| *cell.borrow_mut() = Some(redis));
            Ok(())
        }
    }

    impl StateStore for Component {
        fn get(scope: String, key: String) -> Result<Option<String>, Error> {
            with(|r| r.state_get(&scope, &key))
        }

        fn set(scope: String, key: String, value: String) -> Result<SetResult, Error> {
            checked(&value)?;
            let old = with(|r| r.state_set(&scope, &key, &value))?;
            Ok(SetResult {
                old_value: old,
                new_value: value,
            })
        }

        fn delete(scope: String, key: String) -> Result<Option<String>, Error> {
            with(|r| r.state_delete(&scope, &key))
        }

        fn update(scope: String, key: String, ops: Vec<UpdateOp>) -> Result<UpdateResult, Error> {
            let ops = to_ops(ops)?;
            with(|r| r.state_update(&scope, &key, &ops)).map(update_result)
        }

        fn list(scope: String) -> Result<Vec<String>, Error> {
            with(|r| r.state_list(&scope))
        }

        fn list_groups() -> Result<Vec<String>, Error> {
            with(|r| r.state_groups())
        }
    }

    impl StreamStore for Component {
        fn get(stream: String, group: String, item: String) -> Result<Option<String>, Error> {
            with(|r| r.stream_get(&stream, &group, &item))
        }

        fn set(
            stream: String,
            group: String,
            item: String,
            value: String,
        ) -> Result<SetResult, Error> {
            checked(&value)?;
            let old = with(|r| r.stream_set(&stream, &group, &item, &value))?;
            Ok(SetResult {
                old_value: old,
                new_value: value,
            })
        }

        fn delete(stream: String, group: String, item: String) -> Result<Option<String>, Error> {
            with(|r| r.stream_delete(&stream, &group, &item))
        }

        fn update(
            stream: String,
            group: String,
            item: String,
            ops: Vec<UpdateOp>,
        ) -> Result<UpdateResult, Error> {
            let ops = to_ops(ops)?;
            with(|r| r.stream_update(&stream, &group, &item, &ops)).map(update_result)
        }

        fn list(stream: String, group: String) -> Result<Vec<String>, Error> {
            with(|r| r.stream_list(&stream, &group))
        }

        fn list_groups(stream: String) -> Result<Vec<String>, Error> {
            with(|r| r.stream_groups(&stream))
        }

        fn list_all() -> Result<Vec<StreamGroups>, Error> {
            with(|r| r.stream_all()).map(|all| {
                all.into_iter()
                    .map(|(stream, groups)| StreamGroups { stream, groups })
                    .collect()
            })
        }
    }

    impl LockStore for Component {
        fn try_acquire(key: String, owner: String, ttl_ms: u64) -> Result<bool, Error> {
            with(|r| r.try_acquire(&key, &owner, ttl_ms))
        }

        fn release(key: String, owner: String) -> Result<bool, Error> {
            with(|r| r.release(&key, &owner))
        }
    }

    impl Bus for Component {
        fn publish(topic: String, data: String) -> Result<(), Error> {
            checked(&data)?;
            with(|r| r.publish(&topic, &data))
        }

        fn subscribe(topic: String) -> Result<(), Error> {
            with(|r| r.subscribe(&topic))
        }

        fn unsubscribe(topic: String) -> Result<(), Error> {
            with(|r| r.unsubscribe(&topic))
        }

        fn poll(max: u32, wait_ms: u32) -> Result<Vec<Message>, Error> {
            with(|r| r.poll(max, wait_ms)).map(|ms| {
                ms.into_iter()
                    .map(|m| Message {
                        topic: m.topic,
                        data: m.data,
                    })
                    .collect()
            })
        }
    }

    export!(Component);
}
