//! In-process adapters for tests: the same semantics as the builtin kv component (update ops
//! come from the same `iii-update-ops` crate), kept in a map, gone with the process.

mod queue;

pub use queue::MemoryQueueStore;

use std::collections::BTreeMap;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use crate::{
    AdapterError, SetResult, StateStore, StreamGroups, StreamStore, UpdateOp, UpdateOpError,
    UpdateResult,
};

/// Converts the wire shape of an update op to the one `iii-update-ops` applies.
pub fn to_update_ops(ops: &[UpdateOp]) -> Vec<iii_update_ops::Op> {
    use iii_update_ops::Op;
    let segs =
        |p: &Option<crate::SegmentPath>| p.as_ref().map(|p| p.segments()).unwrap_or_default();
    ops.iter()
        .map(|op| match op {
            UpdateOp::Set { path, value } => Op::Set {
                path: path.clone(),
                value: value.clone(),
            },
            UpdateOp::Merge { path, value } => Op::Merge {
                path: segs(path),
                value: value.clone(),
            },
            UpdateOp::Increment { path, by } => Op::Increment {
                path: path.clone(),
                by: *by,
            },
            UpdateOp::Decrement { path, by } => Op::Decrement {
                path: path.clone(),
                by: *by,
            },
            UpdateOp::Append { path, value } => Op::Append {
                path: segs(path),
                value: value.clone(),
            },
            UpdateOp::Remove { path } => Op::Remove { path: path.clone() },
        })
        .collect()
}

fn apply(old: Option<Value>, ops: &[UpdateOp]) -> UpdateResult {
    let (new_value, errors) = iii_update_ops::apply(old.clone(), &to_update_ops(ops));
    UpdateResult {
        old_value: old,
        new_value,
        errors: errors
            .into_iter()
            .map(|e| UpdateOpError {
                op_index: e.op_index,
                code: e.code,
                message: e.message,
                doc_url: e.doc_url,
            })
            .collect(),
    }
}

/// Values keyed by (group, key) in one ordered map.
#[derive(Default)]
struct Table(Mutex<BTreeMap<(String, String), Value>>);

impl Table {
    fn get(&self, group: &str, key: &str) -> Option<Value> {
        self.0.lock().get(&(group.into(), key.into())).cloned()
    }
    fn set(&self, group: &str, key: &str, value: &Value) -> SetResult {
        let old_value = self
            .0
            .lock()
            .insert((group.into(), key.into()), value.clone());
        SetResult {
            old_value,
            new_value: value.clone(),
        }
    }
    fn delete(&self, group: &str, key: &str) -> Option<Value> {
        self.0.lock().remove(&(group.into(), key.into()))
    }
    fn update(&self, group: &str, key: &str, ops: &[UpdateOp]) -> UpdateResult {
        let mut map = self.0.lock();
        let k = (group.to_string(), key.to_string());
        let r = apply(map.get(&k).cloned(), ops);
        map.insert(k, r.new_value.clone());
        r
    }
    fn list(&self, group: &str) -> Vec<Value> {
        self.0
            .lock()
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn groups(&self, prefix: Option<&str>) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .lock()
            .keys()
            .filter_map(|(g, _)| match prefix {
                None => Some(g.clone()),
                Some(p) => g.strip_prefix(p).map(str::to_string),
            })
            .collect();
        v.dedup();
        v
    }
}

/// A [`StateStore`] in memory.
#[derive(Default)]
pub struct MemoryStateStore(Table);

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn get(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError> {
        Ok(self.0.get(scope, key))
    }
    async fn set(&self, scope: &str, key: &str, value: &Value) -> Result<SetResult, AdapterError> {
        Ok(self.0.set(scope, key, value))
    }
    async fn delete(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError> {
        Ok(self.0.delete(scope, key))
    }
    async fn update(
        &self,
        scope: &str,
        key: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError> {
        Ok(self.0.update(scope, key, ops))
    }
    async fn list(&self, scope: &str) -> Result<Vec<Value>, AdapterError> {
        Ok(self.0.list(scope))
    }
    async fn list_groups(&self) -> Result<Vec<String>, AdapterError> {
        Ok(self.0.groups(None))
    }
}

/// A [`StreamStore`] in memory. Stream and group are joined with a NUL, which neither may
/// contain on the wire.
#[derive(Default)]
pub struct MemoryStreamStore(Table);

fn sg(stream: &str, group: &str) -> String {
    format!("{stream}\0{group}")
}

#[async_trait]
impl StreamStore for MemoryStreamStore {
    async fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError> {
        Ok(self.0.get(&sg(stream, group), item))
    }
    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        value: &Value,
    ) -> Result<SetResult, AdapterError> {
        Ok(self.0.set(&sg(stream, group), item, value))
    }
    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError> {
        Ok(self.0.delete(&sg(stream, group), item))
    }
    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError> {
        Ok(self.0.update(&sg(stream, group), item, ops))
    }
    async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, AdapterError> {
        Ok(self.0.list(&sg(stream, group)))
    }
    async fn list_groups(&self, stream: &str) -> Result<Vec<String>, AdapterError> {
        Ok(self.0.groups(Some(&format!("{stream}\0"))))
    }
    async fn list_all(&self) -> Result<Vec<StreamGroups>, AdapterError> {
        let mut out: Vec<StreamGroups> = Vec::new();
        for key in self.0.groups(None) {
            let (stream, group) = key.split_once('\0').unwrap_or((&key, ""));
            match out.last_mut() {
                Some(last) if last.id == stream => last.groups.push(group.to_string()),
                _ => out.push(StreamGroups {
                    id: stream.to_string(),
                    groups: vec![group.to_string()],
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn state_round_trip_and_update() {
        let s = MemoryStateStore::default();
        assert_eq!(s.get("a", "k").await.unwrap(), None);
        let r = s.set("a", "k", &json!({"n": 1})).await.unwrap();
        assert_eq!(r.old_value, None);
        let ops =
            UpdateOp::parse_list(&json!([{"type": "increment", "path": "n", "by": 2}])).unwrap();
        let u = s.update("a", "k", &ops).await.unwrap();
        assert_eq!(u.new_value, json!({"n": 3}));
        assert_eq!(s.list_groups().await.unwrap(), vec!["a".to_string()]);
        assert_eq!(s.delete("a", "k").await.unwrap(), Some(json!({"n": 3})));
        assert!(s.list("a").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stream_groups_are_listed_per_stream() {
        let s = MemoryStreamStore::default();
        s.set("chat", "room1", "m1", &json!(1)).await.unwrap();
        s.set("chat", "room2", "m1", &json!(2)).await.unwrap();
        s.set("other", "g", "x", &json!(3)).await.unwrap();
        assert_eq!(
            s.list_groups("chat").await.unwrap(),
            vec!["room1".to_string(), "room2".to_string()]
        );
        let all = s.list_all().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].groups.len(), 2);
    }
}

/// An [`AdapterLoader`](crate::AdapterLoader) that hands out fresh in-memory stores for the
/// state, stream and queue worlds, whatever the spec says. For service tests.
#[derive(Default)]
pub struct MemoryLoader;

#[async_trait]
impl crate::AdapterLoader for MemoryLoader {
    async fn load_any(
        &self,
        world: &'static str,
        _spec: &crate::AdapterSpec,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, AdapterError> {
        use crate::AdapterWorld;
        if world == crate::StateWorld::WORLD {
            let s: std::sync::Arc<dyn StateStore> =
                std::sync::Arc::new(MemoryStateStore::default());
            Ok(Box::new(s))
        } else if world == crate::StreamWorld::WORLD {
            let s: std::sync::Arc<dyn StreamStore> =
                std::sync::Arc::new(MemoryStreamStore::default());
            Ok(Box::new(s))
        } else if world == crate::QueueWorld::WORLD {
            let s: std::sync::Arc<dyn crate::QueueStore> =
                std::sync::Arc::new(MemoryQueueStore::default());
            Ok(Box::new(s))
        } else if world == crate::LockWorld::WORLD {
            let s: std::sync::Arc<dyn crate::LockStore> =
                std::sync::Arc::new(crate::LocalLocks::new());
            Ok(Box::new(s))
        } else if world == crate::PubSubWorld::WORLD {
            let s: std::sync::Arc<dyn crate::PubSubBus> =
                std::sync::Arc::new(crate::LocalBus::default());
            Ok(Box::new(s))
        } else {
            Err(AdapterError::new(
                crate::AdapterErrorKind::Other,
                format!("the in-memory loader has no adapter for world {world}"),
            ))
        }
    }
}
