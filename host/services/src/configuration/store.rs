//! Where configuration entries live: one YAML file per id under a directory ([`FsStore`],
//! the `fs` adapter of PROTOCOL.md §8.7), or memory ([`MemoryStore`], for tests and for
//! `adapter: {name: memory}`).
//!
//! A file is `{id, name, description, value, schema?, metadata?}`. Writes are atomic: a
//! temporary file in the same directory, fsynced, renamed over the old one, then the directory
//! fsynced, so a crash leaves either the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The configuration id (also the file name).
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// The value as set (placeholders unexpanded).
    #[serde(default)]
    pub value: Value,
    /// The JSON Schema the value satisfies; kept so an entry survives a restart before its
    /// owner registers it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Free-form metadata from `configuration::register`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or the directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a valid entry.
    #[error("{path}: not a configuration entry: {message}")]
    Parse {
        /// The path.
        path: String,
        /// The YAML parser's message (with line and column).
        message: String,
    },
    /// The entry could not be serialised.
    #[error("cannot serialise entry `{id}`: {message}")]
    Serialise {
        /// The id.
        id: String,
        /// Why.
        message: String,
    },
}

/// Every stored entry by id, each read on its own (a bad file is an `Err` beside the others).
pub type Loaded = Vec<(String, Result<StoredEntry, StoreError>)>;

/// A place for entries. Calls are blocking and short (one small file); async callers run them
/// on the blocking pool.
pub trait ConfigStore: Send + Sync {
    /// Every stored entry, each read on its own: one bad file does not hide the others.
    fn load_all(&self) -> Result<Loaded, StoreError>;
    /// The entry `id`, if stored.
    fn read(&self, id: &str) -> Result<Option<StoredEntry>, StoreError> {
        match self.read_raw(id)? {
            Some(t) => from_yaml(&t, &self.describe(id)).map(Some),
            None => Ok(None),
        }
    }
    /// The stored bytes of `id`, if stored.
    fn read_raw(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `entry` (replacing), returning the bytes written, which the watcher uses to
    /// recognise its own writes.
    fn put(&self, entry: &StoredEntry) -> Result<Vec<u8>, StoreError>;
    /// Removes `id` (absent is fine).
    fn delete(&self, id: &str) -> Result<(), StoreError>;
    /// The directory to watch for external edits, if the store has one.
    fn watch_dir(&self) -> Option<&Path>;
    /// The file of `id`, for messages.
    fn describe(&self, id: &str) -> String;
}

/// The entry `id` as YAML text.
pub fn to_yaml(entry: &StoredEntry) -> Result<Vec<u8>, StoreError> {
    serde_yaml::to_string(entry)
        .map(String::into_bytes)
        .map_err(|e| StoreError::Serialise {
            id: entry.id.clone(),
            message: e.to_string(),
        })
}

/// Parses a stored file's text.
pub fn from_yaml(text: &[u8], path: &str) -> Result<StoredEntry, StoreError> {
    serde_yaml::from_slice(text).map_err(|e| StoreError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

/// The `fs` adapter: `<directory>/<id>.yaml`.
pub struct FsStore {
    dir: PathBuf,
}

impl FsStore {
    /// A store over `dir`, created if missing.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(FsStore { dir })
    }

    /// The file of `id`.
    pub fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.yaml"))
    }

    /// The id a path in the directory stands for: `<id>.yaml`, not hidden (temporary files
    /// start with a dot).
    pub fn id_of(path: &Path) -> Option<String> {
        let name = path.file_name()?.to_str()?;
        if name.starts_with('.') {
            return None;
        }
        name.strip_suffix(".yaml").map(str::to_string)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl ConfigStore for FsStore {
    fn load_all(&self) -> Result<Loaded, StoreError> {
        let mut out = Vec::new();
        for item in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let item = item.map_err(io(&self.dir))?;
            let path = item.path();
            let Some(id) = Self::id_of(&path) else {
                continue;
            };
            let got = std::fs::read(&path)
                .map_err(io(&path))
                .and_then(|t| from_yaml(&t, &path.display().to_string()));
            out.push((id, got));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn read_raw(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path_of(id);
        match std::fs::read(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn put(&self, entry: &StoredEntry) -> Result<Vec<u8>, StoreError> {
        let bytes = to_yaml(entry)?;
        let path = self.path_of(&entry.id);
        let tmp = self
            .dir
            .join(format!(".{}.yaml.{}.tmp", entry.id, uuid::Uuid::new_v4()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename is durable only once the directory is.
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(&path)(e)
        })?;
        Ok(bytes)
    }

    fn delete(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path_of(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn watch_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn describe(&self, id: &str) -> String {
        self.path_of(id).display().to_string()
    }
}

/// Entries in memory, lost at exit.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, StoredEntry>>,
}

impl ConfigStore for MemoryStore {
    fn load_all(&self) -> Result<Loaded, StoreError> {
        Ok(self
            .entries
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), Ok(v.clone())))
            .collect())
    }

    fn read_raw(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.entries.lock().get(id).map(to_yaml).transpose()
    }

    fn put(&self, entry: &StoredEntry) -> Result<Vec<u8>, StoreError> {
        let bytes = to_yaml(entry)?;
        self.entries.lock().insert(entry.id.clone(), entry.clone());
        Ok(bytes)
    }

    fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.entries.lock().remove(id);
        Ok(())
    }

    fn watch_dir(&self) -> Option<&Path> {
        None
    }

    fn describe(&self, id: &str) -> String {
        format!("(memory)/{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str, v: Value) -> StoredEntry {
        StoredEntry {
            id: id.into(),
            name: "N".into(),
            description: "D".into(),
            value: v,
            schema: Some(json!({"type": "object"})),
            metadata: None,
        }
    }

    #[test]
    fn fs_store_round_trips_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path().join("config")).unwrap();
        let e = entry("app.db", json!({"url": "${DB_URL:sqlite://x}"}));
        let bytes = s.put(&e).unwrap();
        assert_eq!(std::fs::read(s.path_of("app.db")).unwrap(), bytes);
        assert_eq!(s.read("app.db").unwrap(), Some(e.clone()));
        let mut e2 = e.clone();
        e2.value = json!({"url": "pg://y"});
        s.put(&e2).unwrap();
        let all = s.load_all().unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].1.as_ref().unwrap(), &e2);
        let names: Vec<_> = std::fs::read_dir(s.watch_dir().unwrap())
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["app.db.yaml".to_string()]);
        s.delete("app.db").unwrap();
        s.delete("app.db").unwrap();
        assert_eq!(s.read("app.db").unwrap(), None);
    }

    #[test]
    fn a_bad_file_is_reported_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path().to_path_buf()).unwrap();
        s.put(&entry("good", json!(1))).unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "id: [unclosed").unwrap();
        std::fs::write(dir.path().join(".bad.yaml.x.tmp"), "junk").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "junk").unwrap();
        let all = s.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "bad");
        let msg = all[0].1.as_ref().unwrap_err().to_string();
        assert!(msg.contains("bad.yaml") && msg.contains("line"), "{msg}");
        assert!(all[1].1.is_ok());
    }

    #[test]
    fn ids_come_from_visible_yaml_files_only() {
        assert_eq!(
            FsStore::id_of(Path::new("/c/iii-http.yaml")).as_deref(),
            Some("iii-http")
        );
        assert_eq!(FsStore::id_of(Path::new("/c/.iii-http.yaml.1.tmp")), None);
        assert_eq!(FsStore::id_of(Path::new("/c/x.yml")), None);
    }
}
