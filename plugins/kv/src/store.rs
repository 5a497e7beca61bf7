//! The kv data model: state `scope → key → value` and stream
//! `stream → group → item → value`, each inner map in insertion order.
//!
//! With a log, the maps are a keydir: they hold where each value's record
//! is in the log ([`Loc`]), and values are read from disk on demand, so
//! memory grows with the number of keys, not with the bytes stored.

use std::collections::BTreeMap;
use std::path::Path;

use indexmap::IndexMap;

use crate::format::{self, OP_DEL, OP_PUT, RECORD_HEADER, TABLE_STATE, TABLE_STREAM};
use crate::wal::{self, Damage, Loc, OnCorruption, OpenReport, Wal, WalError};

/// Where a value is: in the log (durable store) or inline (in-memory store).
#[derive(Debug, Clone)]
enum Slot {
    Disk(Loc),
    Mem(String),
}

impl Slot {
    /// Framed size of the entry if it were written fresh.
    fn framed(&self, parts: &[&str]) -> u64 {
        match self {
            Slot::Disk(loc) => RECORD_HEADER + loc.len as u64,
            Slot::Mem(v) => RECORD_HEADER + format::put_payload_len(parts, v.len()),
        }
    }

    /// Length of the value's JSON text (for the disk case, an upper bound:
    /// the payload, which also holds the address).
    fn value_bytes(&self) -> u64 {
        match self {
            Slot::Disk(loc) => loc.len as u64,
            Slot::Mem(v) => v.len() as u64,
        }
    }
}

type Items = IndexMap<String, Slot>;

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The log failed (I/O, damage).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// An intact record that does not address an entry of its table.
    #[error("kv log holds a record the store does not understand: {0}")]
    Corrupt(String),
    /// A value larger than the store accepts; nothing was written.
    #[error(
        "value is {len} bytes of JSON; this kv store holds values of at most {max} bytes \
         (adapter config `max_value_bytes`)"
    )]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value this instance has no memory left to handle; nothing was written.
    #[error(
        "value is {len} bytes of JSON; the kv adapter has not enough memory left to store it \
         (raise `grants.memory_mb` or lower `max_value_bytes`)"
    )]
    NoMemoryFor {
        /// The value's length.
        len: usize,
    },
    /// A `list` whose values together exceed what one call may return.
    #[error(
        "{what} holds {bytes} bytes of values, more than one list call returns \
         (adapter config `max_list_bytes` = {max}); read the entries one by one"
    )]
    ListTooLarge {
        /// The scope or stream/group.
        what: String,
        /// Bytes of the values.
        bytes: u64,
        /// The limit.
        max: u64,
    },
}

impl StoreError {
    /// True for a refusal of the caller's input (the store is unchanged).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            StoreError::ValueTooLarge { .. }
                | StoreError::NoMemoryFor { .. }
                | StoreError::ListTooLarge { .. }
        )
    }
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct Options {
    /// fdatasync every write before it returns.
    pub fsync: bool,
    /// Compaction runs once the log is at least this big …
    pub compact_min_bytes: u64,
    /// … and at least this many times the live data.
    pub compact_ratio: u64,
    /// Largest value `set`/`update` accept.
    pub max_value_bytes: usize,
    /// Largest total of values one `list` returns.
    pub max_list_bytes: u64,
    /// Mid-log damage: refuse to open, or salvage.
    pub on_corruption: OnCorruption,
}

/// Default [`Options::max_value_bytes`]: a `set` holds the value about four
/// times at once (the call's argument, the returned copy, the replaced
/// value read back), which must fit the default 128 MiB instance.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Default [`Options::max_list_bytes`].
pub const DEFAULT_MAX_LIST_BYTES: u64 = 32 * 1024 * 1024;

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            compact_min_bytes: 4 * 1024 * 1024,
            compact_ratio: 2,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_list_bytes: DEFAULT_MAX_LIST_BYTES,
            on_corruption: OnCorruption::Refuse,
        }
    }
}

/// What [`Kv::open`] found and did, for the log.
#[derive(Debug, Default)]
pub struct Opened {
    /// Valid records replayed.
    pub records: u64,
    /// Live keys after replay.
    pub keys: u64,
    /// Torn bytes cut off the end.
    pub torn_tail: u64,
    /// Salvaged mid-log damage (empty unless `on_corruption: salvage`).
    pub damage: Vec<Damage>,
    /// The log was in the v1 format and was rewritten as v2.
    pub migrated_v1: bool,
    /// Where the original log was saved.
    pub backup: Option<String>,
}

/// The store.
#[derive(Default)]
pub struct Kv {
    state: BTreeMap<String, Items>,
    stream: BTreeMap<String, BTreeMap<String, Items>>,
    wal: Option<Wal>,
    opts: Options,
    /// Framed size of the live entries if they were written fresh.
    live_bytes: u64,
    /// Compactions run so far.
    pub compactions: u64,
    /// A compaction that failed after a write had succeeded: reported by
    /// the caller's log, never as the write's error.
    compaction_error: Option<String>,
}

impl Kv {
    /// A store without a log: values live in memory and die with it.
    pub fn in_memory(opts: Options) -> Kv {
        Kv {
            opts,
            ..Kv::default()
        }
    }

    /// Opens the log in `dir` and replays it into the keydir, streaming
    /// record by record. A v1 log, or a salvaged one, is rewritten before
    /// this returns.
    pub fn open(dir: &Path, opts: Options) -> Result<(Kv, Opened), StoreError> {
        let mut kv = Kv {
            opts,
            ..Kv::default()
        };
        let mut bad: Option<String> = None;
        let (wal, report) = Wal::open(
            &wal::LAYOUT,
            &dir.join("kv.wal"),
            kv.opts.fsync,
            kv.opts.on_corruption,
            |r| {
                let slot = Slot::Disk(r.loc);
                // The log checked the shape, so an intact record decodes.
                let Ok(d) = format::decode(r.head, r.head.len() == r.loc.len as usize) else {
                    bad.get_or_insert_with(|| {
                        format!("record at byte offset {} does not decode", r.loc.off)
                    });
                    return Ok(());
                };
                match (d.op, d.table, d.parts.as_slice()) {
                    (OP_PUT, TABLE_STATE, [s, k]) => {
                        kv.put_state(s, k, slot);
                    }
                    (OP_PUT, TABLE_STREAM, [s, g, i]) => {
                        kv.put_stream(s, g, i, slot);
                    }
                    (OP_DEL, TABLE_STATE, [s, k]) => {
                        kv.del_state(s, k);
                    }
                    (OP_DEL, TABLE_STREAM, [s, g, i]) => {
                        kv.del_stream(s, g, i);
                    }
                    _ => {
                        bad.get_or_insert_with(|| {
                            format!(
                                "record at byte offset {}: op {} table {} address {:?}",
                                r.loc.off, d.op, d.table, d.parts
                            )
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
            records_after_damage: _,
            v1,
            backup,
        } = report;
        kv.wal = Some(wal);
        let mut opened = Opened {
            records,
            keys: kv.key_count(),
            torn_tail,
            migrated_v1: v1,
            backup: backup.map(|p| p.display().to_string()),
            damage,
        };
        if v1 || !opened.damage.is_empty() {
            kv.compact()?;
            opened.migrated_v1 = v1;
        }
        Ok((kv, opened))
    }

    /// Whether writes go to a log.
    pub fn is_durable(&self) -> bool {
        self.wal.is_some()
    }

    /// Bytes in the log file.
    pub fn log_bytes(&self) -> u64 {
        self.wal.as_ref().map_or(0, |w| w.size())
    }

    /// Live entries, state and stream.
    pub fn key_count(&self) -> u64 {
        let state: usize = self.state.values().map(|i| i.len()).sum();
        let stream: usize = self
            .stream
            .values()
            .flat_map(|g| g.values())
            .map(|i| i.len())
            .sum();
        (state + stream) as u64
    }

    /// The last compaction failure, once.
    pub fn take_compaction_error(&mut self) -> Option<String> {
        self.compaction_error.take()
    }

    /// Refuses a value the store cannot hold: over the configured limit, or
    /// too big for the memory this instance has left to finish the call
    /// (the returned copy and the replaced value read back). Asking for the
    /// memory up front turns a would-be trap mid-call into a refusal.
    fn check_value(&self, value: &str) -> Result<(), StoreError> {
        if value.len() > self.opts.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max: self.opts.max_value_bytes,
            });
        }
        let mut headroom: Vec<u8> = Vec::new();
        if headroom
            .try_reserve_exact(value.len().saturating_mul(2))
            .is_err()
        {
            return Err(StoreError::NoMemoryFor { len: value.len() });
        }
        Ok(())
    }

    /// Durably logs a put and returns the slot that now holds `value`.
    fn log_put(&mut self, table: u8, parts: &[&str], value: String) -> Result<Slot, StoreError> {
        match self.wal.as_mut() {
            Some(w) => Ok(Slot::Disk(wal::append(
                w,
                OP_PUT,
                table,
                parts,
                Some(&value),
            )?)),
            None => Ok(Slot::Mem(value)),
        }
    }

    fn log_del(&mut self, table: u8, parts: &[&str]) -> Result<(), StoreError> {
        if let Some(w) = self.wal.as_mut() {
            wal::append(w, OP_DEL, table, parts, None)?;
        }
        Ok(())
    }

    fn read(&mut self, slot: Slot, parts: &[&str]) -> Result<String, StoreError> {
        match slot {
            Slot::Mem(v) => Ok(v),
            Slot::Disk(loc) => {
                let w = self.wal.as_mut().expect("disk slots exist only with a log");
                Ok(wal::read_value(w, loc, parts)?)
            }
        }
    }

    /// Compacts when the log has grown far beyond the live data. A failure
    /// leaves the old log in place and is kept for the caller to report.
    fn maybe_compact(&mut self) {
        let Some(w) = self.wal.as_ref() else {
            return;
        };
        let len = w.size();
        if len < self.opts.compact_min_bytes || len < self.live_bytes * self.opts.compact_ratio {
            return;
        }
        if let Err(e) = self.compact() {
            self.compaction_error = Some(e.to_string());
        }
    }

    /// Rewrites the log with only the live entries, one record at a time,
    /// and points the keydir at their new places.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let Some(w) = self.wal.as_mut() else {
            return Ok(());
        };
        let slots = self
            .state
            .values_mut()
            .flat_map(|items| items.values_mut())
            .chain(
                self.stream
                    .values_mut()
                    .flat_map(|groups| groups.values_mut())
                    .flat_map(|items| items.values_mut()),
            );
        let mut locs = Vec::new();
        let mut refs = Vec::new();
        for slot in slots {
            if let Slot::Disk(loc) = slot {
                locs.push(*loc);
                refs.push(loc);
            }
        }
        let new_locs = w.rewrite(&locs)?;
        for (r, new) in refs.into_iter().zip(new_locs) {
            *r = new;
        }
        self.compactions += 1;
        Ok(())
    }

    fn put_state(&mut self, scope: &str, key: &str, slot: Slot) -> Option<Slot> {
        self.live_bytes += slot.framed(&[scope, key]);
        let old = self
            .state
            .entry(scope.to_string())
            .or_default()
            .insert(key.to_string(), slot);
        if let Some(o) = &old {
            self.live_bytes -= o.framed(&[scope, key]);
        }
        old
    }

    fn del_state(&mut self, scope: &str, key: &str) -> Option<Slot> {
        let items = self.state.get_mut(scope)?;
        // shift_remove keeps the insertion order of the remaining keys.
        let old = items.shift_remove(key)?;
        if items.is_empty() {
            self.state.remove(scope);
        }
        self.live_bytes -= old.framed(&[scope, key]);
        Some(old)
    }

    fn put_stream(&mut self, s: &str, g: &str, i: &str, slot: Slot) -> Option<Slot> {
        self.live_bytes += slot.framed(&[s, g, i]);
        let old = self
            .stream
            .entry(s.to_string())
            .or_default()
            .entry(g.to_string())
            .or_default()
            .insert(i.to_string(), slot);
        if let Some(o) = &old {
            self.live_bytes -= o.framed(&[s, g, i]);
        }
        old
    }

    fn del_stream(&mut self, s: &str, g: &str, i: &str) -> Option<Slot> {
        let groups = self.stream.get_mut(s)?;
        let items = groups.get_mut(g)?;
        let old = items.shift_remove(i)?;
        if items.is_empty() {
            groups.remove(g);
            if groups.is_empty() {
                self.stream.remove(s);
            }
        }
        self.live_bytes -= old.framed(&[s, g, i]);
        Some(old)
    }

    /// Reads every value of `items` after checking they fit one list call.
    fn read_all(
        &mut self,
        what: String,
        slots: Vec<Slot>,
        parts: &[&str],
        keys: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        let bytes: u64 = slots.iter().map(Slot::value_bytes).sum();
        if bytes > self.opts.max_list_bytes {
            return Err(StoreError::ListTooLarge {
                what,
                bytes,
                max: self.opts.max_list_bytes,
            });
        }
        let mut out = Vec::with_capacity(slots.len());
        for (slot, key) in slots.into_iter().zip(&keys) {
            let mut addr: Vec<&str> = parts.to_vec();
            addr.push(key);
            out.push(self.read(slot, &addr)?);
        }
        Ok(out)
    }

    // ---- state ----

    /// The value of `scope`/`key`, read from the log.
    pub fn state_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        match self.state.get(scope).and_then(|i| i.get(key)).cloned() {
            Some(slot) => Ok(Some(self.read(slot, &[scope, key])?)),
            None => Ok(None),
        }
    }

    /// Stores `value` durably and returns the value it replaced.
    pub fn state_set(
        &mut self,
        scope: &str,
        key: &str,
        value: String,
    ) -> Result<Option<String>, StoreError> {
        self.check_value(&value)?;
        let old = self.state_get(scope, key)?;
        self.state_put(scope, key, value)?;
        Ok(old)
    }

    /// Stores `value` durably without reading back the value it replaces
    /// (`update` has read it already).
    pub fn state_put(&mut self, scope: &str, key: &str, value: String) -> Result<(), StoreError> {
        self.check_value(&value)?;
        let slot = self.log_put(TABLE_STATE, &[scope, key], value)?;
        self.put_state(scope, key, slot);
        self.maybe_compact();
        Ok(())
    }

    /// Removes `scope`/`key`; returns the removed value.
    pub fn state_delete(&mut self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        let Some(old) = self.state_get(scope, key)? else {
            return Ok(None);
        };
        self.log_del(TABLE_STATE, &[scope, key])?;
        self.del_state(scope, key);
        self.maybe_compact();
        Ok(Some(old))
    }

    /// Every value of `scope`, in insertion order.
    pub fn state_list(&mut self, scope: &str) -> Result<Vec<String>, StoreError> {
        let Some(items) = self.state.get(scope) else {
            return Ok(Vec::new());
        };
        let keys: Vec<String> = items.keys().cloned().collect();
        let slots: Vec<Slot> = items.values().cloned().collect();
        self.read_all(format!("scope `{scope}`"), slots, &[scope], keys)
    }

    /// Sorted, unique scopes that hold a key.
    pub fn state_groups(&self) -> Vec<String> {
        // BTreeMap keys: sorted and unique; emptied scopes are removed.
        self.state.keys().cloned().collect()
    }

    // ---- stream ----

    /// The item `s`/`g`/`i`, read from the log.
    pub fn stream_get(&mut self, s: &str, g: &str, i: &str) -> Result<Option<String>, StoreError> {
        let slot = self
            .stream
            .get(s)
            .and_then(|groups| groups.get(g))
            .and_then(|items| items.get(i))
            .cloned();
        match slot {
            Some(slot) => Ok(Some(self.read(slot, &[s, g, i])?)),
            None => Ok(None),
        }
    }

    /// Stores an item durably and returns the one it replaced.
    pub fn stream_set(
        &mut self,
        s: &str,
        g: &str,
        i: &str,
        value: String,
    ) -> Result<Option<String>, StoreError> {
        self.check_value(&value)?;
        let old = self.stream_get(s, g, i)?;
        self.stream_put(s, g, i, value)?;
        Ok(old)
    }

    /// Stores an item durably without reading back the one it replaces.
    pub fn stream_put(
        &mut self,
        s: &str,
        g: &str,
        i: &str,
        value: String,
    ) -> Result<(), StoreError> {
        self.check_value(&value)?;
        let slot = self.log_put(TABLE_STREAM, &[s, g, i], value)?;
        self.put_stream(s, g, i, slot);
        self.maybe_compact();
        Ok(())
    }

    /// Removes an item; returns it.
    pub fn stream_delete(
        &mut self,
        s: &str,
        g: &str,
        i: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(old) = self.stream_get(s, g, i)? else {
            return Ok(None);
        };
        self.log_del(TABLE_STREAM, &[s, g, i])?;
        self.del_stream(s, g, i);
        self.maybe_compact();
        Ok(Some(old))
    }

    /// Every item of a group, in insertion order.
    pub fn stream_list(&mut self, s: &str, g: &str) -> Result<Vec<String>, StoreError> {
        let Some(items) = self.stream.get(s).and_then(|groups| groups.get(g)) else {
            return Ok(Vec::new());
        };
        let keys: Vec<String> = items.keys().cloned().collect();
        let slots: Vec<Slot> = items.values().cloned().collect();
        self.read_all(format!("stream `{s}` group `{g}`"), slots, &[s, g], keys)
    }

    /// Sorted groups of a stream that hold an item.
    pub fn stream_groups(&self, s: &str) -> Vec<String> {
        self.stream
            .get(s)
            .map(|groups| groups.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every stream with its groups, sorted.
    pub fn stream_all(&self) -> Vec<(String, Vec<String>)> {
        self.stream
            .iter()
            .map(|(s, groups)| (s.clone(), groups.keys().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory per test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("iii-kv-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
        fn wal(&self) -> PathBuf {
            self.0.join("kv.wal")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(dir: &TempDir) -> (Kv, Opened) {
        Kv::open(&dir.0, Options::default()).unwrap()
    }

    fn salvage() -> Options {
        Options {
            on_corruption: OnCorruption::Salvage,
            ..Options::default()
        }
    }

    fn v(n: usize) -> String {
        format!("{{\"n\":{n}}}")
    }

    /// Offsets of every record in a v2 log (by walking the headers).
    fn record_offsets(path: &Path) -> Vec<u64> {
        let bytes = std::fs::read(path).unwrap();
        let mut at = format::FILE_HEADER as usize;
        let mut out = Vec::new();
        while at + 12 <= bytes.len() {
            out.push(at as u64);
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            at += 12 + len;
        }
        out
    }

    fn flip(path: &Path, at: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at as usize] ^= 0x20;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn replay_rebuilds_the_keydir_and_reads_values_from_disk() {
        let dir = TempDir::new("replay");
        {
            let (mut kv, _) = open(&dir);
            for i in 0..50 {
                kv.state_set("s", &format!("k{i}"), v(i)).unwrap();
            }
            kv.state_set("s", "k3", v(333)).unwrap();
            kv.state_delete("s", "k4").unwrap();
            kv.state_set("t", "x", "\"y\"".into()).unwrap();
            kv.stream_set("st", "g", "i1", v(1)).unwrap();
            kv.stream_set("st", "g", "i2", v(2)).unwrap();
            kv.stream_delete("st", "g", "i1").unwrap();
        }
        let (mut kv, opened) = open(&dir);
        assert_eq!(opened.records, 50 + 1 + 1 + 1 + 2 + 1);
        assert_eq!(opened.keys, 49 + 1 + 1);
        assert_eq!(opened.torn_tail, 0);
        assert!(kv
            .state
            .values()
            .flat_map(|i| i.values())
            .all(|s| matches!(s, Slot::Disk(_))));
        assert_eq!(kv.state_get("s", "k3").unwrap(), Some(v(333)));
        assert_eq!(kv.state_get("s", "k4").unwrap(), None);
        let list = kv.state_list("s").unwrap();
        assert_eq!(list.len(), 49);
        assert_eq!(list[3], v(333), "an overwrite keeps the key's position");
        assert_eq!(list[4], v(5), "a delete keeps the order of the rest");
        assert_eq!(kv.state_groups(), vec!["s".to_string(), "t".to_string()]);
        assert_eq!(kv.stream_list("st", "g").unwrap(), vec![v(2)]);
        assert_eq!(
            kv.stream_all(),
            vec![("st".to_string(), vec!["g".to_string()])]
        );
    }

    #[test]
    fn a_torn_tail_is_cut_silently_and_appends_follow_it() {
        let dir = TempDir::new("torn");
        {
            let (mut kv, _) = open(&dir);
            kv.state_set("s", "a", v(1)).unwrap();
            kv.state_set("s", "b", v(2)).unwrap();
        }
        let good = std::fs::metadata(dir.wal()).unwrap().len();
        let third = format::encode_record(OP_PUT, TABLE_STATE, &["s", "c"], Some(&v(3)));
        let mut bytes = std::fs::read(dir.wal()).unwrap();
        bytes.extend_from_slice(&third[..third.len() / 2]);
        std::fs::write(dir.wal(), &bytes).unwrap();
        {
            let (mut kv, opened) = open(&dir);
            assert_eq!(opened.torn_tail, (third.len() / 2) as u64);
            assert!(opened.damage.is_empty() && opened.backup.is_none());
            assert_eq!(std::fs::metadata(dir.wal()).unwrap().len(), good);
            kv.state_set("s", "d", v(4)).unwrap();
        }
        let (mut kv, opened) = open(&dir);
        assert_eq!(opened.torn_tail, 0);
        assert_eq!(kv.state_list("s").unwrap(), vec![v(1), v(2), v(4)]);
    }

    #[test]
    fn mid_log_damage_refuses_to_open_and_names_file_offset_and_count() {
        let dir = TempDir::new("refuse");
        {
            let (mut kv, _) = open(&dir);
            for i in 0..10 {
                kv.state_set("s", &format!("k{i}"), v(i)).unwrap();
            }
        }
        let offs = record_offsets(&dir.wal());
        // A byte inside record 2's value.
        let at = offs[2] + 20;
        flip(&dir.wal(), at);
        let before = std::fs::read(dir.wal()).unwrap();
        let err = Kv::open(&dir.0, Options::default())
            .err()
            .expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains(&dir.wal().display().to_string()), "{msg}");
        assert!(msg.contains(&format!("byte offset {}", offs[2])), "{msg}");
        assert!(msg.contains("7 valid records follow"), "{msg}");
        assert!(msg.contains("on_corruption: salvage"), "{msg}");
        assert_eq!(
            std::fs::read(dir.wal()).unwrap(),
            before,
            "refusing changes nothing"
        );
    }

    #[test]
    fn salvage_keeps_the_records_on_both_sides_and_saves_the_original() {
        let dir = TempDir::new("salvage");
        {
            let (mut kv, _) = open(&dir);
            for i in 0..10 {
                kv.state_set("s", &format!("k{i}"), v(i)).unwrap();
            }
        }
        let offs = record_offsets(&dir.wal());
        // One flip in a header (marker) and one in a body: two regions.
        flip(&dir.wal(), offs[2] + 1);
        flip(&dir.wal(), offs[6] + 32);
        let original = std::fs::read(dir.wal()).unwrap();
        {
            let (mut kv, opened) = Kv::open(&dir.0, salvage()).unwrap();
            assert_eq!(opened.records, 8);
            assert_eq!(opened.keys, 8);
            assert_eq!(opened.damage.len(), 2);
            assert_eq!(opened.damage[0].offset, offs[2]);
            assert_eq!(opened.damage[1].offset, offs[6]);
            assert_eq!(opened.damage[1].keys, vec!["s/k6".to_string()]);
            let backup = opened.backup.clone().expect("original saved");
            assert!(backup.contains("kv.wal.corrupt-"), "{backup}");
            assert_eq!(std::fs::read(&backup).unwrap(), original);
            for i in [0, 1, 3, 4, 5, 7, 8, 9] {
                assert_eq!(kv.state_get("s", &format!("k{i}")).unwrap(), Some(v(i)));
            }
            assert_eq!(kv.state_get("s", "k2").unwrap(), None);
            kv.state_set("s", "k2", v(22)).unwrap();
        }
        // The salvaged log is clean: the default policy opens it.
        let (mut kv, opened) = open(&dir);
        assert!(opened.damage.is_empty() && opened.torn_tail == 0);
        assert_eq!(kv.state_get("s", "k2").unwrap(), Some(v(22)));
        assert_eq!(kv.key_count(), 9);
    }

    /// A v1 log, as the previous version of this adapter wrote it.
    fn v1_record(parts: &[&str], value: Option<&str>) -> Vec<u8> {
        let op = if value.is_some() { OP_PUT } else { OP_DEL };
        let mut payload = format::payload_prefix(op, TABLE_STATE, parts, value.map(str::len));
        payload.extend_from_slice(value.unwrap_or("").as_bytes());
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn a_v1_log_opens_and_is_migrated() {
        let dir = TempDir::new("v1");
        let mut bytes = format::MAGIC_V1.to_vec();
        bytes.extend(v1_record(&["s", "a"], Some(&v(1))));
        bytes.extend(v1_record(&["s", "b"], Some(&v(2))));
        bytes.extend(v1_record(&["s", "a"], Some(&v(11))));
        bytes.extend(v1_record(&["s", "b"], None));
        bytes.extend(v1_record(&["s", "c"], Some(&v(3))));
        std::fs::write(dir.wal(), &bytes).unwrap();
        {
            let (mut kv, opened) = open(&dir);
            assert!(opened.migrated_v1);
            assert_eq!(opened.records, 5);
            assert!(opened.backup.is_none(), "a clean v1 log needs no backup");
            assert_eq!(kv.state_list("s").unwrap(), vec![v(11), v(3)]);
            let now = std::fs::read(dir.wal()).unwrap();
            assert_eq!(&now[..8], format::MAGIC_V2);
            kv.state_set("s", "d", v(4)).unwrap();
        }
        let (mut kv, opened) = open(&dir);
        assert!(!opened.migrated_v1);
        assert_eq!(kv.state_list("s").unwrap(), vec![v(11), v(3), v(4)]);
    }

    #[test]
    fn a_v1_log_with_unreadable_bytes_is_kept_beside_the_migrated_one() {
        let dir = TempDir::new("v1torn");
        let mut bytes = format::MAGIC_V1.to_vec();
        bytes.extend(v1_record(&["s", "a"], Some(&v(1))));
        let torn = v1_record(&["s", "b"], Some(&v(2)));
        bytes.extend_from_slice(&torn[..torn.len() - 2]);
        std::fs::write(dir.wal(), &bytes).unwrap();
        let (mut kv, opened) = open(&dir);
        assert!(opened.migrated_v1);
        assert_eq!(opened.torn_tail, (torn.len() - 2) as u64);
        let backup = opened.backup.expect("the unread bytes are kept");
        assert_eq!(std::fs::read(backup).unwrap(), bytes);
        assert_eq!(kv.state_list("s").unwrap(), vec![v(1)]);
    }

    #[test]
    fn compaction_keeps_the_latest_values_and_their_order() {
        let dir = TempDir::new("compact");
        let opts = || Options {
            compact_min_bytes: 4096,
            ..Options::default()
        };
        let big = |i: usize, round: usize| format!("\"{}-{round}\"", "x".repeat(200 + i));
        {
            let (mut kv, _) = Kv::open(&dir.0, opts()).unwrap();
            for round in 0..20 {
                for i in 0..10 {
                    kv.state_set("s", &format!("k{i}"), big(i, round)).unwrap();
                }
            }
            kv.state_delete("s", "k0").unwrap();
            kv.stream_set("st", "g", "i", v(7)).unwrap();
            assert!(kv.compactions > 0, "the log grew 20x past the live data");
            assert!(kv.log_bytes() < 20 * 10 * 200, "{}", kv.log_bytes());
            let want: Vec<String> = (1..10).map(|i| big(i, 19)).collect();
            assert_eq!(kv.state_list("s").unwrap(), want);
        }
        let (mut kv, _) = Kv::open(&dir.0, opts()).unwrap();
        let want: Vec<String> = (1..10).map(|i| big(i, 19)).collect();
        assert_eq!(kv.state_list("s").unwrap(), want);
        assert_eq!(kv.stream_get("st", "g", "i").unwrap(), Some(v(7)));
        assert_eq!(
            std::fs::read_dir(&dir.0).unwrap().count(),
            1,
            "no side files left"
        );
    }

    #[test]
    fn an_oversized_value_is_refused_at_set_and_nothing_is_written() {
        let dir = TempDir::new("oversize");
        let opts = Options {
            max_value_bytes: 1000,
            ..Options::default()
        };
        let (mut kv, _) = Kv::open(&dir.0, opts).unwrap();
        kv.state_set("s", "k", v(1)).unwrap();
        let size = kv.log_bytes();
        let err = kv
            .state_set("s", "k", format!("\"{}\"", "x".repeat(1000)))
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        assert!(err.to_string().contains("max_value_bytes"), "{err}");
        let err = kv
            .stream_set("s", "g", "i", format!("\"{}\"", "x".repeat(1000)))
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        assert_eq!(kv.log_bytes(), size);
        assert_eq!(kv.state_get("s", "k").unwrap(), Some(v(1)));
    }

    #[test]
    fn a_list_larger_than_one_call_returns_is_refused() {
        let mut kv = Kv::in_memory(Options {
            max_list_bytes: 100,
            ..Options::default()
        });
        for i in 0..10 {
            kv.state_set("s", &format!("k{i}"), format!("\"{}\"", "y".repeat(20)))
                .unwrap();
        }
        let err = kv.state_list("s").unwrap_err();
        assert!(
            err.is_invalid_input() && err.to_string().contains("max_list_bytes"),
            "{err}"
        );
        assert_eq!(kv.state_get("s", "k9").unwrap().unwrap().len(), 22);
    }

    #[test]
    fn a_value_damaged_after_open_fails_its_read_not_the_store() {
        let dir = TempDir::new("bitrot");
        let (mut kv, _) = open(&dir);
        kv.state_set("s", "a", v(1)).unwrap();
        kv.state_set("s", "b", v(2)).unwrap();
        let offs = record_offsets(&dir.wal());
        flip(&dir.wal(), offs[0] + 22);
        let err = kv.state_get("s", "a").unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(kv.state_get("s", "b").unwrap(), Some(v(2)));
    }
}
