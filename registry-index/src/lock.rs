//! The `plugins:` section of `iii.lock` and the local content-addressed plugin cache. The
//! engine reads both at start-up and never touches the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::resolve::{parse_ref, satisfies, ResolveError};

/// One `plugins.<ns:name>` entry of `iii.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPlugin {
    /// The pinned version.
    pub version: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// The world it was checked against when pinned.
    pub world: String,
    /// Where it was pulled from.
    pub artifact: String,
}

/// A `plugin:` reference that the lock cannot satisfy.
#[derive(Debug, thiserror::Error)]
pub enum PluginLockError {
    /// Malformed reference.
    #[error(transparent)]
    Ref(#[from] ResolveError),
    /// iii.lock could not be read or parsed.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// The lock file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The plugin is not pinned.
    #[error("plugin {reference} is not locked in {}: run `iii plugin add {reference}` (it pins the digest in iii.lock and fills the cache)", path.display())]
    NotLocked {
        /// As written in config.yaml.
        reference: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The pin does not satisfy the range config.yaml asks for.
    #[error("iii.lock pins {name} {version}, which does not satisfy `{range}` in config.yaml: run `iii plugin update {name}` to move the pin")]
    OutOfRange {
        /// The plugin.
        name: String,
        /// The pinned version.
        version: String,
        /// The requested range.
        range: String,
    },
}

/// Reads the `plugins:` section of the lock at `path` (empty when the file or section is
/// absent). Other sections are the CLI's business and are not validated here.
pub fn read_plugins(path: &Path) -> Result<BTreeMap<String, LockedPlugin>, PluginLockError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(PluginLockError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        plugins: BTreeMap<String, LockedPlugin>,
    }
    let only: Only = serde_yaml::from_str(&text).map_err(|e| PluginLockError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(only.plugins)
}

impl LockedPlugin {
    /// The pin for `reference` (`ns:name[@range]`) in the lock at `lock_path`.
    pub fn for_reference(
        lock_path: &Path,
        reference: &str,
    ) -> Result<(String, LockedPlugin), PluginLockError> {
        let r = parse_ref(reference)?;
        let plugins = read_plugins(lock_path)?;
        let pin = plugins
            .get(&r.name)
            .ok_or_else(|| PluginLockError::NotLocked {
                reference: reference.to_string(),
                path: lock_path.to_path_buf(),
            })?;
        let ok = semver::Version::parse(&pin.version)
            .map(|v| satisfies(&r.range, &v, true))
            .unwrap_or(false);
        if !ok {
            return Err(PluginLockError::OutOfRange {
                name: r.name,
                version: pin.version.clone(),
                range: r.range_text,
            });
        }
        Ok((r.name, pin.clone()))
    }
}

/// `<home>/plugins/sha256/<hex>.wasm`: where a plugin with `digest` is cached (`home` is
/// `$III_HOME`). `None` for a digest that is not `sha256:<64 hex>`.
pub fn plugin_cache_path(home: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))).then(|| {
        home.join("plugins")
            .join("sha256")
            .join(format!("{hex}.wasm"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_plugins_section_beside_workers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("iii.lock");
        assert!(read_plugins(&p).unwrap().is_empty());
        let digest = crate::sha256_digest(b"x");
        std::fs::write(
            &p,
            format!(
                "version: 1\nworkers: {{}}\nplugins:\n  iii:redis:\n    version: 0.1.2\n    digest: {digest}\n    world: iii:adapter/state-adapter@0.1.0\n    artifact: 127.0.0.1:5000/iii/redis:0.1.2\n"
            ),
        )
        .unwrap();
        let (name, pin) = LockedPlugin::for_reference(&p, "iii:redis@^0.1").unwrap();
        assert_eq!(
            (name.as_str(), pin.version.as_str()),
            ("iii:redis", "0.1.2")
        );
        let e = LockedPlugin::for_reference(&p, "iii:redis@^0.2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iii plugin update iii:redis"), "{e}");
        let e = LockedPlugin::for_reference(&p, "iii:kv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iii plugin add iii:kv"), "{e}");
        let c = plugin_cache_path(Path::new("/h"), &digest).unwrap();
        assert!(c.starts_with("/h/plugins/sha256"));
        assert!(plugin_cache_path(Path::new("/h"), "sha256:../x").is_none());
    }
}
