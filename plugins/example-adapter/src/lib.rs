//! Template for a third-party state adapter: an in-memory store whose keys
//! expire after `ttl_ms` (from the adapter's `config:`), to show config,
//! logging, WASI clocks and the update-op helper. Copy this crate, change
//! the storage, build with `cargo build --target wasm32-wasip2 --release`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

wit_bindgen::generate!({
    // Point this at your copy of the iii WIT package.
    path: "../../wit/adapter-0.1.0",
    world: "state-adapter",
    generate_all,
});

use exports::iii::adapter::lifecycle::Guest as Lifecycle;
use exports::iii::adapter::state_store::Guest as StateStore;
use iii::adapter::logging::{log, Level};
use iii::adapter::types::{Error, OpError, SetResult, UpdateOp, UpdateResult};

struct Entry {
    value: String,
    written: Instant,
}

#[derive(Default)]
struct Store {
    ttl: Option<Duration>,
    // scope -> key -> entry (sorted keys; the builtin kv keeps insertion order)
    data: BTreeMap<String, BTreeMap<String, Entry>>,
}

thread_local! {
    static STORE: RefCell<Store> = RefCell::new(Store::default());
}

impl Store {
    fn live(&self, e: &Entry) -> bool {
        self.ttl.is_none_or(|ttl| e.written.elapsed() < ttl)
    }

    fn get(&self, scope: &str, key: &str) -> Option<String> {
        let e = self.data.get(scope)?.get(key)?;
        self.live(e).then(|| e.value.clone())
    }

    fn put(&mut self, scope: &str, key: &str, value: String) -> Option<String> {
        let old = self.get(scope, key);
        let entry = Entry {
            value,
            written: Instant::now(),
        };
        self.data
            .entry(scope.into())
            .or_default()
            .insert(key.into(), entry);
        old
    }
}

fn to_op(op: UpdateOp) -> Result<iii_update_ops::Op, Error> {
    use iii_update_ops::Op;
    let json = |s: String| serde_json::from_str(&s).map_err(|e| Error::InvalidInput(e.to_string()));
    Ok(match op {
        UpdateOp::Set(o) => Op::Set {
            path: o.path,
            value: json(o.value)?,
        },
        UpdateOp::Merge(o) => Op::Merge {
            path: o.path,
            value: json(o.value)?,
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
            value: json(o.value)?,
        },
        UpdateOp::Remove(path) => Op::Remove { path },
    })
}

struct Adapter;

impl Lifecycle for Adapter {
    fn init() -> Result<(), Error> {
        let ttl = match iii::adapter::config::get("ttl_ms") {
            Ok(Some(v)) => Some(Duration::from_millis(v.parse().map_err(|_| {
                Error::InvalidInput(format!("ttl_ms must be an integer, got {v}"))
            })?)),
            Ok(None) => None,
            Err(_) => return Err(Error::Other("config unavailable".into())),
        };
        log(
            Level::Info,
            "init",
            &format!("example adapter ready, ttl {ttl:?}"),
        );
        STORE.with(|s| s.borrow_mut().ttl = ttl);
        Ok(())
    }
}

impl StateStore for Adapter {
    fn get(scope: String, key: String) -> Result<Option<String>, Error> {
        Ok(STORE.with(|s| s.borrow().get(&scope, &key)))
    }

    fn set(scope: String, key: String, value: String) -> Result<SetResult, Error> {
        let old = STORE.with(|s| s.borrow_mut().put(&scope, &key, value.clone()));
        Ok(SetResult {
            old_value: old,
            new_value: value,
        })
    }

    fn delete(scope: String, key: String) -> Result<Option<String>, Error> {
        Ok(STORE.with(|s| {
            let mut s = s.borrow_mut();
            let old = s.get(&scope, &key);
            if let Some(items) = s.data.get_mut(&scope) {
                items.remove(&key);
            }
            old
        }))
    }

    fn update(scope: String, key: String, ops: Vec<UpdateOp>) -> Result<UpdateResult, Error> {
        let ops = ops.into_iter().map(to_op).collect::<Result<Vec<_>, _>>()?;
        STORE.with(|s| {
            let mut s = s.borrow_mut();
            let old = s.get(&scope, &key);
            let old_value = old
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| Error::Other(e.to_string()))?;
            let (new, errors) = iii_update_ops::apply(old_value, &ops);
            s.put(&scope, &key, new.to_string());
            Ok(UpdateResult {
                old_value: old,
                new_value: new.to_string(),
                errors: errors
                    .into_iter()
                    .map(|e| OpError {
                        op_index: e.op_index as u32,
                        code: e.code,
                        message: e.message,
                        doc_url: e.doc_url,
                    })
                    .collect(),
            })
        })
    }

    fn list(scope: String) -> Result<Vec<String>, Error> {
        Ok(STORE.with(|s| {
            let s = s.borrow();
            s.data
                .get(&scope)
                .map(|items| {
                    items
                        .values()
                        .filter(|e| s.live(e))
                        .map(|e| e.value.clone())
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    fn list_groups() -> Result<Vec<String>, Error> {
        Ok(STORE.with(|s| {
            let s = s.borrow();
            s.data
                .iter()
                .filter(|(_, items)| items.values().any(|e| s.live(e)))
                .map(|(k, _)| k.clone())
                .collect()
        }))
    }
}

export!(Adapter);
