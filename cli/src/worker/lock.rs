//! `./iii.lock` (workers-and-sandboxes spec section 2.2): the schema, its validation, the atomic write
//! and the byte-stable drift/sync error texts that `iii worker sync --frozen` prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::names;

/// The lock file's path: always `./iii.lock`.
pub const LOCK_PATH: &str = "iii.lock";

/// Why a lock file could not be read, validated or written.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid iii.lock: {reason}")]
    Parse { path: String, reason: String },
    #[error("invalid iii.lock: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_dependencies: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub workers: BTreeMap<String, LockedWorker>,
}

impl Default for Lockfile {
    fn default() -> Self {
        Lockfile {
            version: 1,
            manifest_hash: None,
            declared_dependencies: None,
            workers: BTreeMap::new(),
        }
    }
}

/// What kind of artifact a locked worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerType {
    Binary,
    Image,
    Engine,
    Bundle,
}

/// One `workers.<name>` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedWorker {
    pub version: String,
    #[serde(rename = "type")]
    pub kind: WorkerType,
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl LockedWorker {
    /// A builtin (engine) worker at `version`.
    pub fn engine(version: &str) -> Self {
        LockedWorker {
            version: version.into(),
            kind: WorkerType::Engine,
            dependencies: BTreeMap::new(),
            source: None,
        }
    }
}

/// Where a locked worker's artifact comes from, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Binary {
        artifacts: BTreeMap<String, Artifact>,
    },
    Image {
        image: String,
    },
    Bundle {
        archive_url: String,
        sha256: String,
    },
}

/// One binary artifact for a target triple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub url: String,
    pub sha256: String,
}

/// The on-disk `source:` as read: also accepts the legacy flat binary form
/// (`kind: binary, target, url, sha256`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: String,
    #[serde(default)]
    artifacts: Option<BTreeMap<String, Artifact>>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    archive_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    version: String,
    #[serde(rename = "type")]
    kind: WorkerType,
    #[serde(default)]
    dependencies: BTreeMap<String, String>,
    #[serde(default)]
    source: Option<RawSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    version: u32,
    #[serde(default)]
    manifest_hash: Option<String>,
    #[serde(default)]
    declared_dependencies: Option<BTreeMap<String, String>>,
    #[serde(default)]
    workers: BTreeMap<String, RawWorker>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn invalid(msg: impl Into<String>) -> LockError {
    LockError::Invalid(msg.into())
}

fn check_range(owner: &str, dep: &str, range: &str) -> Result<(), LockError> {
    names::validate(dep).map_err(|e| invalid(format!("{owner}: dependency {e}")))?;
    if range.trim().is_empty() {
        return Err(invalid(format!(
            "{owner}: dependency '{dep}' has an empty version range"
        )));
    }
    semver::VersionReq::parse(range).map_err(|e| {
        invalid(format!(
            "{owner}: dependency '{dep}' has an invalid version range \"{range}\": {e}"
        ))
    })?;
    Ok(())
}

fn convert_source(
    name: &str,
    kind: WorkerType,
    raw: Option<RawSource>,
) -> Result<Option<Source>, LockError> {
    let Some(raw) = raw else {
        if kind == WorkerType::Engine {
            return Ok(None);
        }
        return Err(invalid(
            format!("worker '{name}' of type {kind:?} has no source").to_lowercase(),
        ));
    };
    if kind == WorkerType::Engine {
        return Err(invalid(format!(
            "worker '{name}' of type engine must not have a source"
        )));
    }
    let want = match kind {
        WorkerType::Binary => "binary",
        WorkerType::Image => "image",
        WorkerType::Bundle => "bundle",
        WorkerType::Engine => unreachable!(),
    };
    if raw.kind != want {
        return Err(invalid(format!(
            "worker '{name}': source kind '{}' does not match type '{want}'",
            raw.kind
        )));
    }
    let src = match kind {
        WorkerType::Binary => {
            let mut artifacts = raw.artifacts.unwrap_or_default();
            if let (Some(t), Some(u), Some(s)) = (raw.target, raw.url, raw.sha256) {
                artifacts.insert(t, Artifact { url: u, sha256: s });
            }
            if artifacts.is_empty() {
                return Err(invalid(format!(
                    "worker '{name}': binary source has no artifacts"
                )));
            }
            for (t, a) in &artifacts {
                if t.is_empty() {
                    return Err(invalid(format!(
                        "worker '{name}': artifact with an empty target"
                    )));
                }
                if a.url.is_empty() {
                    return Err(invalid(format!(
                        "worker '{name}': artifact for {t} has an empty url"
                    )));
                }
                if !is_hex64(&a.sha256) {
                    return Err(invalid(format!(
                        "worker '{name}': artifact for {t} has a sha256 that is not 64 hex digits"
                    )));
                }
            }
            Source::Binary { artifacts }
        }
        WorkerType::Image => {
            let image = raw.image.unwrap_or_default();
            if !image.contains("@sha256:") {
                return Err(invalid(format!(
                    "worker '{name}': image source '{image}' is not digest-pinned (@sha256:…)"
                )));
            }
            Source::Image { image }
        }
        WorkerType::Bundle => {
            let archive_url = raw.archive_url.unwrap_or_default();
            let sha256 = raw.sha256.unwrap_or_default();
            if archive_url.is_empty() {
                return Err(invalid(format!(
                    "worker '{name}': bundle source has an empty archive_url"
                )));
            }
            if !is_hex64(&sha256) {
                return Err(invalid(format!(
                    "worker '{name}': bundle sha256 is not 64 hex digits"
                )));
            }
            Source::Bundle {
                archive_url,
                sha256,
            }
        }
        WorkerType::Engine => unreachable!(),
    };
    Ok(Some(src))
}

/// `sha256:v1:<hex>` over the sorted `name=range\n` lines of a dependency map.
pub fn manifest_hash(deps: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (name, range) in deps {
        h.update(name.as_bytes());
        h.update(b"=");
        h.update(range.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let mut out = String::from("sha256:v1:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl Lockfile {
    /// Parses and validates lock text.
    pub fn parse(text: &str, origin: &str) -> Result<Lockfile, LockError> {
        let raw: RawLock = serde_yaml::from_str(text).map_err(|e| LockError::Parse {
            path: origin.into(),
            reason: e.to_string(),
        })?;
        if raw.version != 1 {
            return Err(invalid(format!(
                "unsupported version {} (expected 1)",
                raw.version
            )));
        }
        let mut workers = BTreeMap::new();
        for (name, w) in raw.workers {
            names::validate(&name).map_err(|e| invalid(e.to_string()))?;
            for (dep, range) in &w.dependencies {
                check_range(&name, dep, range)?;
            }
            let source = convert_source(&name, w.kind, w.source)?;
            workers.insert(
                name,
                LockedWorker {
                    version: w.version,
                    kind: w.kind,
                    dependencies: w.dependencies,
                    source,
                },
            );
        }
        let lock = Lockfile {
            version: 1,
            manifest_hash: raw.manifest_hash,
            declared_dependencies: raw.declared_dependencies,
            workers,
        };
        lock.check_manifest()?;
        Ok(lock)
    }

    fn check_manifest(&self) -> Result<(), LockError> {
        if let Some(h) = &self.manifest_hash {
            let hex = h.strip_prefix("sha256:v1:").unwrap_or("");
            if !is_hex64(hex) || hex.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(invalid(format!(
                    "manifest_hash '{h}' is not sha256:v1:<64 lowercase hex>"
                )));
            }
        }
        match (&self.manifest_hash, &self.declared_dependencies) {
            (None, Some(_)) => Err(invalid("declared_dependencies without manifest_hash")),
            (Some(h), Some(deps)) => {
                for (dep, range) in deps {
                    check_range("declared_dependencies", dep, range)?;
                }
                if manifest_hash(deps) != *h {
                    return Err(invalid(SyncError::LockInconsistent.to_string()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Reads `path`; a missing file is `None`.
    pub fn read(path: &Path) -> Result<Option<Lockfile>, LockError> {
        match std::fs::read_to_string(path) {
            Ok(t) => Lockfile::parse(&t, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LockError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The YAML text (no leading `---`; workers sorted).
    pub fn render(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Writes atomically: a temp file in the same directory, fsync, rename over `path` (a
    /// symlink there is replaced by a regular file), then fsync of the directory.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let err = |source| LockError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(
            ".iii.lock.tmp.{}.{nanos}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }
}

/// One dependency difference between `iii.worker.yaml` and `iii.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftLine {
    Added {
        name: String,
        range: String,
    },
    Removed {
        name: String,
        range: String,
    },
    Changed {
        name: String,
        old: String,
        new: String,
    },
}

/// The frozen-sync failures, each rendered as the byte-stable block of section 2.2.3 (no colors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("{}", render_drift(.0))]
    Drift(Vec<DriftLine>),
    #[error("{}", render_missing(.0))]
    ManifestMissing(BTreeMap<String, String>),
    #[error("error: iii.worker.yaml failed to parse: {0}\nfix: correct the YAML in iii.worker.yaml and re-run\ndocs: https://iii.dev/docs/sync#corrupt-manifest")]
    CorruptManifest(String),
    #[error("error: iii.lock is internally inconsistent: manifest_hash does not match declared_dependencies\nfix: restore iii.lock from git, or regenerate with `iii worker add`\ndocs: https://iii.dev/docs/sync#corrupt-lock")]
    LockInconsistent,
    #[error("{}", render_config_drift(.0, .1))]
    ConfigDrift(String, Vec<ConfigDrift>),
}

/// One difference between the config file's workers and `iii.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigDrift {
    /// A worker in the config file that the lock does not pin.
    NotLocked { name: String },
    /// A locked worker that is gone from the config file.
    NotConfigured { name: String },
    /// The config file's `image:` is not the one the lock pins.
    Image {
        name: String,
        locked: String,
        config: String,
    },
}

fn render_config_drift(config: &str, lines: &[ConfigDrift]) -> String {
    let mut s = format!("error: {config} drift vs iii.lock\n");
    for l in lines {
        let _ = match l {
            ConfigDrift::NotLocked { name } => {
                writeln!(s, "  + {name} (in {config}, not in iii.lock)")
            }
            ConfigDrift::NotConfigured { name } => {
                writeln!(s, "  - {name} (in iii.lock, not in {config})")
            }
            ConfigDrift::Image {
                name,
                locked,
                config,
            } => writeln!(s, "  ~ {name} image \"{locked}\" → \"{config}\""),
        };
    }
    s.push_str("fix: run `iii worker add <worker>` or `iii worker update <worker>` to re-pin iii.lock, or restore the config file from git\n");
    s.push_str("docs: https://iii.dev/docs/sync#drift");
    s
}

/// The differences between the manifest's dependencies and the lock's declared ones, sorted
/// by name.
pub fn drift(
    manifest: &BTreeMap<String, String>,
    locked: &BTreeMap<String, String>,
) -> Vec<DriftLine> {
    let mut names: Vec<&String> = manifest.keys().chain(locked.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|n| match (manifest.get(n), locked.get(n)) {
            (Some(r), None) => Some(DriftLine::Added {
                name: n.clone(),
                range: r.clone(),
            }),
            (None, Some(r)) => Some(DriftLine::Removed {
                name: n.clone(),
                range: r.clone(),
            }),
            (Some(new), Some(old)) if new != old => Some(DriftLine::Changed {
                name: n.clone(),
                old: old.clone(),
                new: new.clone(),
            }),
            _ => None,
        })
        .collect()
}

fn render_drift(lines: &[DriftLine]) -> String {
    let mut s = String::from("error: iii.worker.yaml drift vs iii.lock\n");
    for l in lines {
        let _ = match l {
            DriftLine::Added { name, range } => writeln!(s, "  + {name} \"{range}\" (not in lock)"),
            DriftLine::Removed { name, range } => {
                writeln!(s, "  - {name} \"{range}\" (in lock, not in manifest)")
            }
            DriftLine::Changed { name, old, new } => {
                writeln!(s, "  ~ {name} \"{old}\" → \"{new}\"")
            }
        };
    }
    s.push_str("fix: run `iii worker sync --refresh && git add iii.lock`\n");
    s.push_str("docs: https://iii.dev/docs/sync#drift");
    s
}

fn render_missing(locked: &BTreeMap<String, String>) -> String {
    let mut s = String::from("error: iii.worker.yaml is missing but iii.lock expects it\n");
    for (n, r) in locked {
        let _ = writeln!(s, "  - {n} \"{r}\" (in lock)");
    }
    s.push_str("fix: restore iii.worker.yaml from git, or remove iii.lock\n");
    s.push_str("docs: https://iii.dev/docs/sync#missing-manifest");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn deps(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn example() -> String {
        let h = manifest_hash(&deps(&[("http", "^0.20")]));
        format!(
            "version: 1\nmanifest_hash: {h}\ndeclared_dependencies:\n  http: ^0.20\nworkers:\n  hello-worker:\n    version: 1.0.0\n    type: binary\n    dependencies:\n      helper: ^1.0.0\n    source:\n      kind: binary\n      artifacts:\n        x86_64-unknown-linux-gnu:\n          url: https://example.com/h.tar.gz\n          sha256: {HEX}\n  image-resize:\n    version: 1.0.0\n    type: image\n    dependencies: {{}}\n    source:\n      kind: image\n      image: ghcr.io/iii-hq/image-resize@sha256:{HEX}\n  http:\n    version: 0.23.0\n    type: engine\n    dependencies: {{}}\n"
        )
    }

    #[test]
    fn the_spec_example_round_trips_sorted() {
        let lock = Lockfile::parse(&example(), "iii.lock").unwrap();
        assert_eq!(lock.workers.len(), 3);
        let text = lock.render();
        assert!(!text.starts_with("---"));
        let order: Vec<_> = lock.workers.keys().cloned().collect();
        assert_eq!(order, vec!["hello-worker", "http", "image-resize"]);
        assert!(
            text.find("  hello-worker:").unwrap() < text.find("\n  http:\n    version").unwrap()
        );
        assert_eq!(Lockfile::parse(&text, "x").unwrap(), lock);
        assert!(!text.contains("source:\n      kind: engine"));
    }

    #[test]
    fn legacy_flat_binary_source_is_read_as_artifacts() {
        let text = format!("version: 1\nworkers:\n  a:\n    version: 1.0.0\n    type: binary\n    source:\n      kind: binary\n      target: x86_64-unknown-linux-gnu\n      url: https://e/a.tgz\n      sha256: {HEX}\n");
        let lock = Lockfile::parse(&text, "x").unwrap();
        let Some(Source::Binary { artifacts }) = &lock.workers["a"].source else {
            panic!("not binary")
        };
        assert_eq!(artifacts["x86_64-unknown-linux-gnu"].url, "https://e/a.tgz");
    }

    #[test]
    fn every_rule_is_enforced() {
        let bad = [
            ("version: 2\nworkers: {}\n", "unsupported version"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: image\n    source: {kind: image, image: 'r/a:1'}\n", "digest-pinned"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: image\n    source: {kind: binary, artifacts: {}}\n", "does not match"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: engine\n    source: {kind: image, image: 'r@sha256:x'}\n", "must not have a source"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: binary\n", "has no source"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: binary\n    source: {kind: binary, artifacts: {}}\n", "no artifacts"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: binary\n    source: {kind: binary, artifacts: {t: {url: u, sha256: abc}}}\n", "64 hex"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: bundle\n    source: {kind: bundle, archive_url: '', sha256: abc}\n", "archive_url"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: engine\n    dependencies: {b: 'not a range'}\n", "invalid version range"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: engine\n    dependencies: {'../b': '^1'}\n", "'..'"),
            ("version: 1\nworkers:\n  .a:\n    version: '1'\n    type: engine\n", "start with '.'"),
            ("version: 1\ndeclared_dependencies: {http: '^1'}\nworkers: {}\n", "without manifest_hash"),
            ("version: 1\nmanifest_hash: sha256:v1:abc\nworkers: {}\n", "64 lowercase hex"),
            ("version: 1\nworkers:\n  a:\n    version: '1'\n    type: wasm\n", "not a valid iii.lock"),
            ("version: 1\nextra: 1\n", "not a valid iii.lock"),
        ];
        for (text, needle) in bad {
            let e = Lockfile::parse(text, "iii.lock").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let wrong = format!(
            "version: 1\nmanifest_hash: {}\ndeclared_dependencies: {{http: '^2'}}\nworkers: {{}}\n",
            manifest_hash(&deps(&[("http", "^1")]))
        );
        let e = Lockfile::parse(&wrong, "iii.lock").unwrap_err().to_string();
        assert!(
            e.contains("manifest_hash does not match declared_dependencies"),
            "{e}"
        );
    }

    #[test]
    fn manifest_hash_is_over_sorted_lines() {
        let mut h = Sha256::new();
        h.update(b"a=^1\nb=~2.0\n");
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            manifest_hash(&deps(&[("b", "~2.0"), ("a", "^1")])),
            format!("sha256:v1:{want}")
        );
        assert_ne!(
            manifest_hash(&deps(&[("a", "^1")])),
            manifest_hash(&deps(&[("a", "^2")]))
        );
    }

    #[test]
    fn atomic_write_replaces_a_symlink_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "old").unwrap();
        let path = dir.path().join("iii.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let mut lock = Lockfile::default();
        lock.workers
            .insert("http".into(), LockedWorker::engine("0.1.0"));
        lock.write(&path).unwrap();
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(Lockfile::read(&path).unwrap().unwrap(), lock);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "version: 1\nworkers:\n  http:\n    version: 0.1.0\n    type: engine\n    dependencies: {}\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(Lockfile::read(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn drift_texts_are_byte_stable() {
        let d = drift(
            &deps(&[("a", "^1"), ("c", "^3")]),
            &deps(&[("b", "^2"), ("c", "^2")]),
        );
        assert_eq!(
            SyncError::Drift(d).to_string(),
            "error: iii.worker.yaml drift vs iii.lock\n  + a \"^1\" (not in lock)\n  - b \"^2\" (in lock, not in manifest)\n  ~ c \"^2\" → \"^3\"\nfix: run `iii worker sync --refresh && git add iii.lock`\ndocs: https://iii.dev/docs/sync#drift"
        );
        assert_eq!(
            SyncError::ManifestMissing(deps(&[("http", "^0.20")])).to_string(),
            "error: iii.worker.yaml is missing but iii.lock expects it\n  - http \"^0.20\" (in lock)\nfix: restore iii.worker.yaml from git, or remove iii.lock\ndocs: https://iii.dev/docs/sync#missing-manifest"
        );
        assert_eq!(
            SyncError::CorruptManifest("bad indent".into()).to_string(),
            "error: iii.worker.yaml failed to parse: bad indent\nfix: correct the YAML in iii.worker.yaml and re-run\ndocs: https://iii.dev/docs/sync#corrupt-manifest"
        );
        assert!(SyncError::LockInconsistent
            .to_string()
            .ends_with("docs: https://iii.dev/docs/sync#corrupt-lock"));
        assert!(drift(&deps(&[("a", "^1")]), &deps(&[("a", "^1")])).is_empty());
    }
}
