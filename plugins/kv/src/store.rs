//! The kv data model: state `scope → key → value` and stream
//! `stream → group → item → value`, each inner map in insertion order,
//! optionally backed by the write-ahead log.

use std::collections::BTreeMap;
use std::path::Path;

use indexmap::IndexMap;

use crate::wal::{Record, Replay, Wal, TABLE_STATE, TABLE_STREAM};

/// Values are kept as the JSON text the host sent: `get`/`list` hand them
/// back without re-encoding.
type Items = IndexMap<String, String>;

#[derive(Debug)]
pub enum StoreError {
    Io(std::io::Error),
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "kv log I/O failed: {e}"),
            StoreError::Corrupt(m) => write!(f, "kv log is corrupt: {m}"),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

pub struct Options {
    pub fsync: bool,
    /// Compaction runs once the log is at least this big …
    pub compact_min_bytes: u64,
    /// … and at least this many times the live data.
    pub compact_ratio: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            compact_min_bytes: 4 * 1024 * 1024,
            compact_ratio: 2,
        }
    }
}

#[derive(Default)]
pub struct Kv {
    state: BTreeMap<String, Items>,
    stream: BTreeMap<String, BTreeMap<String, Items>>,
    wal: Option<Wal>,
    opts: Options,
    /// Framed size of the live entries if they were written fresh.
    live_bytes: u64,
    pub compactions: u64,
}

impl Kv {
    pub fn in_memory() -> Kv {
        Kv::default()
    }

    /// Opens the log in `dir`, replays it, and returns the store and how many
    /// torn bytes were discarded from the tail.
    pub fn open(dir: &Path, opts: Options) -> Result<(Kv, u64), StoreError> {
        let (
            wal,
            Replay {
                records,
                discarded_tail,
            },
        ) = Wal::open(&dir.join("kv.wal"), opts.fsync)?;
        let mut kv = Kv {
            opts,
            ..Kv::default()
        };
        for r in records {
            kv.apply(r)?;
        }
        kv.wal = Some(wal);
        Ok((kv, discarded_tail))
    }

    pub fn is_durable(&self) -> bool {
        self.wal.is_some()
    }

    pub fn log_bytes(&self) -> u64 {
        self.wal.as_ref().map_or(0, |w| w.size())
    }

    fn apply(&mut self, r: Record) -> Result<(), StoreError> {
        match r {
            Record::Put {
                table,
                parts,
                value,
            } => match (table, parts.as_slice()) {
                (TABLE_STATE, [s, k]) => {
                    self.put_state(s, k, value);
                }
                (TABLE_STREAM, [s, g, i]) => {
                    self.put_stream(s, g, i, value);
                }
                _ => return Err(StoreError::Corrupt(format!("bad put record {parts:?}"))),
            },
            Record::Del { table, parts } => match (table, parts.as_slice()) {
                (TABLE_STATE, [s, k]) => {
                    self.del_state(s, k);
                }
                (TABLE_STREAM, [s, g, i]) => {
                    self.del_stream(s, g, i);
                }
                _ => return Err(StoreError::Corrupt(format!("bad delete record {parts:?}"))),
            },
        }
        Ok(())
    }

    /// Logs `rec` (durably) before the in-memory change is made, then
    /// compacts if the log has grown far beyond the live data.
    fn log(&mut self, rec: &Record) -> Result<(), StoreError> {
        if let Some(w) = self.wal.as_mut() {
            w.append(rec)?;
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let Some(w) = self.wal.as_ref() else {
            return Ok(());
        };
        let len = w.size();
        if len < self.opts.compact_min_bytes || len < self.live_bytes * self.opts.compact_ratio {
            return Ok(());
        }
        let snapshot: Vec<Record> = self.snapshot().collect();
        self.wal
            .as_mut()
            .expect("checked above")
            .rewrite(snapshot.into_iter())?;
        self.compactions += 1;
        Ok(())
    }

    fn snapshot(&self) -> impl Iterator<Item = Record> + '_ {
        let state = self.state.iter().flat_map(|(s, items)| {
            items.iter().map(move |(k, v)| Record::Put {
                table: TABLE_STATE,
                parts: vec![s.clone(), k.clone()],
                value: v.clone(),
            })
        });
        let stream = self.stream.iter().flat_map(|(s, groups)| {
            groups.iter().flat_map(move |(g, items)| {
                items.iter().map(move |(i, v)| Record::Put {
                    table: TABLE_STREAM,
                    parts: vec![s.clone(), g.clone(), i.clone()],
                    value: v.clone(),
                })
            })
        });
        state.chain(stream)
    }

    fn put_state(&mut self, scope: &str, key: &str, value: String) -> Option<String> {
        self.live_bytes += Record::put_size(&[scope, key], &value);
        let old = self
            .state
            .entry(scope.to_string())
            .or_default()
            .insert(key.to_string(), value);
        if let Some(o) = &old {
            self.live_bytes -= Record::put_size(&[scope, key], o);
        }
        old
    }

    fn del_state(&mut self, scope: &str, key: &str) -> Option<String> {
        let items = self.state.get_mut(scope)?;
        // shift_remove keeps the insertion order of the remaining keys.
        let old = items.shift_remove(key)?;
        if items.is_empty() {
            self.state.remove(scope);
        }
        self.live_bytes -= Record::put_size(&[scope, key], &old);
        Some(old)
    }

    fn put_stream(&mut self, s: &str, g: &str, i: &str, value: String) -> Option<String> {
        self.live_bytes += Record::put_size(&[s, g, i], &value);
        let old = self
            .stream
            .entry(s.to_string())
            .or_default()
            .entry(g.to_string())
            .or_default()
            .insert(i.to_string(), value);
        if let Some(o) = &old {
            self.live_bytes -= Record::put_size(&[s, g, i], o);
        }
        old
    }

    fn del_stream(&mut self, s: &str, g: &str, i: &str) -> Option<String> {
        let groups = self.stream.get_mut(s)?;
        let items = groups.get_mut(g)?;
        let old = items.shift_remove(i)?;
        if items.is_empty() {
            groups.remove(g);
            if groups.is_empty() {
                self.stream.remove(s);
            }
        }
        self.live_bytes -= Record::put_size(&[s, g, i], &old);
        Some(old)
    }

    // ---- state ----

    pub fn state_get(&self, scope: &str, key: &str) -> Option<String> {
        self.state.get(scope)?.get(key).cloned()
    }

    pub fn state_set(
        &mut self,
        scope: &str,
        key: &str,
        value: String,
    ) -> Result<Option<String>, StoreError> {
        self.log(&Record::Put {
            table: TABLE_STATE,
            parts: vec![scope.to_string(), key.to_string()],
            value: value.clone(),
        })?;
        let old = self.put_state(scope, key, value);
        self.maybe_compact()?;
        Ok(old)
    }

    pub fn state_delete(&mut self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        if self.state_get(scope, key).is_none() {
            return Ok(None);
        }
        self.log(&Record::Del {
            table: TABLE_STATE,
            parts: vec![scope.to_string(), key.to_string()],
        })?;
        let old = self.del_state(scope, key);
        self.maybe_compact()?;
        Ok(old)
    }

    pub fn state_list(&self, scope: &str) -> Vec<String> {
        self.state
            .get(scope)
            .map(|items| items.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn state_groups(&self) -> Vec<String> {
        // BTreeMap keys: sorted and unique; emptied scopes are removed.
        self.state.keys().cloned().collect()
    }

    // ---- stream ----

    pub fn stream_get(&self, s: &str, g: &str, i: &str) -> Option<String> {
        self.stream.get(s)?.get(g)?.get(i).cloned()
    }

    pub fn stream_set(
        &mut self,
        s: &str,
        g: &str,
        i: &str,
        value: String,
    ) -> Result<Option<String>, StoreError> {
        self.log(&Record::Put {
            table: TABLE_STREAM,
            parts: vec![s.to_string(), g.to_string(), i.to_string()],
            value: value.clone(),
        })?;
        let old = self.put_stream(s, g, i, value);
        self.maybe_compact()?;
        Ok(old)
    }

    pub fn stream_delete(
        &mut self,
        s: &str,
        g: &str,
        i: &str,
    ) -> Result<Option<String>, StoreError> {
        if self.stream_get(s, g, i).is_none() {
            return Ok(None);
        }
        self.log(&Record::Del {
            table: TABLE_STREAM,
            parts: vec![s.to_string(), g.to_string(), i.to_string()],
        })?;
        let old = self.del_stream(s, g, i);
        self.maybe_compact()?;
        Ok(old)
    }

    pub fn stream_list(&self, s: &str, g: &str) -> Vec<String> {
        self.stream
            .get(s)
            .and_then(|groups| groups.get(g))
            .map(|items| items.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn stream_groups(&self, s: &str) -> Vec<String> {
        self.stream
            .get(s)
            .map(|groups| groups.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn stream_all(&self) -> Vec<(String, Vec<String>)> {
        self.stream
            .iter()
            .map(|(s, groups)| (s.clone(), groups.keys().cloned().collect()))
            .collect()
    }
}
