//! The on-disk index: `<dir>/index/<ns>/<name>.json` holds every version of one plugin (a JSON
//! array of records, oldest first); `<dir>/workers/<name>.json` holds the worker registry API's
//! answers (an array of `/resolve` graphs, one per version, oldest first).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::record::{IndexRecord, RecordError};
use crate::resolve::{resolve, PluginRef, ResolveError};

/// An index directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not what the index writes.
    #[error("{}: not an index file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A record is malformed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Resolution failed.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// An index directory.
#[derive(Debug, Clone)]
pub struct IndexDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes through a temp file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl IndexDir {
    /// The index rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> IndexDir {
        IndexDir { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn plugin_file(&self, name: &str) -> Option<PathBuf> {
        let (ns, n) = name.split_once(':')?;
        crate::record::valid_name(name)
            .then(|| self.root.join("index").join(ns).join(format!("{n}.json")))
    }

    /// Every version of `name`, oldest first (empty when unknown).
    pub fn versions(&self, name: &str) -> Result<Vec<IndexRecord>, StoreError> {
        let Some(path) = self.plugin_file(name) else {
            return Ok(Vec::new());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Every record of every plugin.
    pub fn all(&self) -> Result<Vec<IndexRecord>, StoreError> {
        let mut out = Vec::new();
        let base = self.root.join("index");
        let Ok(namespaces) = std::fs::read_dir(&base) else {
            return Ok(out);
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for ns in namespaces.flatten() {
            if let Ok(entries) = std::fs::read_dir(ns.path()) {
                files.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "json")),
                );
            }
        }
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let recs: Vec<IndexRecord> =
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            out.extend(recs);
        }
        Ok(out)
    }

    /// The newest non-prerelease record of each plugin whose name or description contains
    /// `text` (case-insensitive); an empty text lists everything.
    pub fn search(&self, text: &str) -> Result<Vec<IndexRecord>, StoreError> {
        let needle = text.to_lowercase();
        let all = self.all()?;
        let mut names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let any = PluginRef {
                name: name.to_string(),
                range: semver::VersionReq::STAR,
                range_text: "*".into(),
            };
            let Ok(newest) = resolve(&all, &any, false) else {
                continue;
            };
            let hay = format!(
                "{} {}",
                newest.name,
                newest.description.as_deref().unwrap_or("")
            )
            .to_lowercase();
            if hay.contains(&needle) {
                out.push(newest.clone());
            }
        }
        Ok(out)
    }

    /// Resolves a reference against this index.
    pub fn resolve(&self, r: &PluginRef, pre: bool) -> Result<IndexRecord, StoreError> {
        let versions = self.versions(&r.name)?;
        Ok(resolve(&versions, r, pre)?.clone())
    }

    /// Adds a record, or replaces the one with the same version. Returns whether it replaced.
    pub fn put(&self, record: &IndexRecord) -> Result<bool, StoreError> {
        record.validate()?;
        let path = self.plugin_file(&record.name).expect("validated name");
        let mut versions = self.versions(&record.name)?;
        let replaced = match versions.iter_mut().find(|r| r.version == record.version) {
            Some(r) => {
                *r = record.clone();
                true
            }
            None => {
                versions.push(record.clone());
                false
            }
        };
        versions.sort_by_key(|r| r.semver());
        let text = serde_json::to_string_pretty(&versions).expect("records serialise");
        write_atomic(&path, format!("{text}\n").as_bytes())?;
        Ok(replaced)
    }

    fn worker_file(&self, name: &str) -> Option<PathBuf> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        ok.then(|| self.root.join("workers").join(format!("{name}.json")))
    }

    fn worker_graphs(&self, name: &str) -> Result<Vec<Value>, StoreError> {
        let Some(path) = self.worker_file(name) else {
            return Ok(Vec::new());
        };
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The `/resolve` answer for `worker` at `version` (`latest`: the newest non-prerelease;
    /// a semver range: the newest version in it).
    pub fn worker_resolve(&self, worker: &str, version: &str) -> Result<Option<Value>, StoreError> {
        let graphs = self.worker_graphs(worker)?;
        let ver = |g: &Value| {
            g["root"]["version"]
                .as_str()
                .and_then(|v| semver::Version::parse(v).ok())
        };
        if let Some(exact) = graphs
            .iter()
            .find(|g| g["root"]["version"].as_str() == Some(version))
        {
            return Ok(Some(exact.clone()));
        }
        let req = if version == "latest" {
            semver::VersionReq::STAR
        } else {
            match semver::VersionReq::parse(version) {
                Ok(r) => r,
                Err(_) => return Ok(None),
            }
        };
        Ok(graphs
            .iter()
            .filter_map(|g| ver(g).map(|v| (g, v)))
            .filter(|(_, v)| crate::resolve::satisfies(&req, v, false))
            .max_by(|a, b| a.1.cmp(&b.1))
            .map(|(g, _)| g.clone()))
    }

    /// Adds (or replaces by root version) a worker graph, as `/resolve` will answer it.
    pub fn put_worker(&self, worker: &str, graph: Value) -> Result<(), StoreError> {
        let path = self
            .worker_file(worker)
            .ok_or_else(|| StoreError::Corrupt {
                path: self.root.join("workers"),
                reason: format!("`{worker}` is not a worker name"),
            })?;
        let version = graph["root"]["version"].as_str().unwrap_or("").to_string();
        let mut graphs = self.worker_graphs(worker)?;
        graphs.retain(|g| g["root"]["version"].as_str() != Some(version.as_str()));
        graphs.push(graph);
        let text = serde_json::to_string_pretty(&graphs).expect("json serialises");
        write_atomic(&path, format!("{text}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::rec;
    use crate::resolve::parse_ref;

    #[test]
    fn put_replace_search_resolve() {
        let d = tempfile::tempdir().unwrap();
        let idx = IndexDir::new(d.path());
        assert!(!idx.put(&rec("iii:redis", "0.1.0")).unwrap());
        assert!(!idx.put(&rec("iii:redis", "0.2.0-rc.1")).unwrap());
        assert!(!idx.put(&rec("iii:kv", "0.1.0")).unwrap());
        let mut again = rec("iii:redis", "0.1.0");
        again.description = Some("the redis adapter".into());
        assert!(idx.put(&again).unwrap());
        assert_eq!(idx.versions("iii:redis").unwrap().len(), 2);
        let found = idx.search("REDIS").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].version, "0.1.0");
        assert_eq!(idx.search("").unwrap().len(), 2);
        let r = idx.resolve(&parse_ref("iii:redis").unwrap(), true).unwrap();
        assert_eq!(r.version, "0.2.0-rc.1");
        let mut bad = rec("iii:redis", "0.3.0");
        bad.digest = "md5:1".into();
        assert!(matches!(idx.put(&bad), Err(StoreError::Record(_))));
    }

    #[test]
    fn worker_graphs_by_version_and_latest() {
        let d = tempfile::tempdir().unwrap();
        let idx = IndexDir::new(d.path());
        let g = |v: &str| serde_json::json!({"root": {"name": "w", "version": v}, "graph": [], "edges": []});
        idx.put_worker("w", g("1.0.0")).unwrap();
        idx.put_worker("w", g("1.2.0")).unwrap();
        idx.put_worker("w", g("2.0.0-rc.1")).unwrap();
        let v = |q: &str| {
            idx.worker_resolve("w", q)
                .unwrap()
                .map(|g| g["root"]["version"].clone())
        };
        assert_eq!(v("latest").unwrap(), "1.2.0");
        assert_eq!(v("1.0.0").unwrap(), "1.0.0");
        assert_eq!(v("^1").unwrap(), "1.2.0");
        assert_eq!(v("2.0.0-rc.1").unwrap(), "2.0.0-rc.1");
        assert!(v("^3").is_none());
        assert!(idx.worker_resolve("../etc", "latest").unwrap().is_none());
    }
}
