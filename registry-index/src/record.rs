//! The index record and its checks.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A record that is not well-formed, or that disagrees with the component it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A field is malformed.
    #[error("index record {name}: {reason}")]
    Invalid {
        /// The record's name (or `?`).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A declared field differs from what the artifact itself says.
    #[error(
        "index record {name}@{version} disagrees with its artifact: {field} is declared as {declared} but the component has {actual}"
    )]
    Disagrees {
        /// The plugin.
        name: String,
        /// Its version.
        version: String,
        /// The field (`world`, `digest`, `exports`, …).
        field: &'static str,
        /// What the record says.
        declared: String,
        /// What the component says.
        actual: String,
    },
}

/// A grant the plugin needs, derived from its imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// Imports `wasi:sockets`: needs `grants.network`.
    Network,
    /// Imports `wasi:filesystem`: needs `grants.data_dir`.
    DataDir,
}

impl Requirement {
    /// The grants a component with these imports needs.
    pub fn from_imports(imports: &[String]) -> Vec<Requirement> {
        let mut out = Vec::new();
        if imports.iter().any(|i| i.starts_with("wasi:sockets/")) {
            out.push(Requirement::Network);
        }
        if imports.iter().any(|i| i.starts_with("wasi:filesystem/")) {
            out.push(Requirement::DataDir);
        }
        out
    }

    /// The `grants:` key that satisfies it.
    pub fn grant(self) -> &'static str {
        match self {
            Requirement::Network => "network",
            Requirement::DataDir => "data_dir",
        }
    }
}

/// An optional detached signature in an existing scheme (a cosign bundle), never a home-made one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The scheme, e.g. `cosign-bundle-v0.3`.
    pub scheme: String,
    /// The scheme's payload.
    pub payload: String,
}

/// One published version of one plugin (`iii:registry/types@0.1.0.index-record`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRecord {
    /// `namespace:name`.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// Component size in bytes.
    pub size: u64,
    /// Primary world, e.g. `iii:adapter/state-adapter@0.1.0`.
    pub world: String,
    /// Every hosted world the component implements.
    #[serde(default)]
    pub worlds: Vec<String>,
    /// Top-level export names.
    pub exports: Vec<String>,
    /// Top-level import names.
    pub imports: Vec<String>,
    /// Grants it needs.
    #[serde(default)]
    pub requires: Vec<Requirement>,
    /// OCI reference of the artifact (`host:port/repo:tag`).
    pub artifact: String,
    /// One line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SPDX expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Source repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Optional detached signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A `ns:name` with lowercase ASCII letters, digits and `-` in each part.
pub(crate) fn valid_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.starts_with(|c: char| c.is_ascii_lowercase())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    matches!(name.split_once(':'), Some((ns, n)) if part(ns) && part(n))
}

impl IndexRecord {
    /// Checks the fields' shapes.
    pub fn validate(&self) -> Result<(), RecordError> {
        let bad = |reason: String| RecordError::Invalid {
            name: self.name.clone(),
            reason,
        };
        if !valid_name(&self.name) {
            return Err(bad(format!(
                "name `{}` is not `namespace:name` (lowercase letters, digits, `-`)",
                self.name
            )));
        }
        semver::Version::parse(&self.version)
            .map_err(|e| bad(format!("version `{}` is not semver: {e}", self.version)))?;
        let hex = self.digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(bad(format!(
                "digest `{}` is not sha256:<64 hex>",
                self.digest
            )));
        }
        if self.world.is_empty() || !self.world.contains('/') || !self.world.contains('@') {
            return Err(bad(format!(
                "world `{}` is not package-qualified (`ns:pkg/world@version`)",
                self.world
            )));
        }
        if self.artifact.is_empty() {
            return Err(bad("artifact reference is empty".into()));
        }
        Ok(())
    }

    /// The parsed version (call [`IndexRecord::validate`] first).
    pub fn semver(&self) -> Option<semver::Version> {
        semver::Version::parse(&self.version).ok()
    }

    /// Rejects a record whose component facts differ from `actual`, the record extracted from
    /// the artifact itself (same name and version; `digest`, `size`, `world`, `worlds`,
    /// `exports`, `imports`, `requires` from the component).
    pub fn check_against(&self, actual: &IndexRecord) -> Result<(), RecordError> {
        let dis = |field: &'static str, d: String, a: String| RecordError::Disagrees {
            name: self.name.clone(),
            version: self.version.clone(),
            field,
            declared: d,
            actual: a,
        };
        if self.digest != actual.digest {
            return Err(dis("digest", self.digest.clone(), actual.digest.clone()));
        }
        if self.world != actual.world {
            return Err(dis("world", self.world.clone(), actual.world.clone()));
        }
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        if !self.worlds.is_empty() && sorted(&self.worlds) != sorted(&actual.worlds) {
            return Err(dis(
                "worlds",
                self.worlds.join(", "),
                actual.worlds.join(", "),
            ));
        }
        if sorted(&self.exports) != sorted(&actual.exports) {
            return Err(dis(
                "exports",
                self.exports.join(", "),
                actual.exports.join(", "),
            ));
        }
        if sorted(&self.imports) != sorted(&actual.imports) {
            return Err(dis(
                "imports",
                self.imports.join(", "),
                actual.imports.join(", "),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec(name: &str, version: &str) -> IndexRecord {
        IndexRecord {
            name: name.into(),
            version: version.into(),
            digest: sha256_digest(version.as_bytes()),
            size: 1,
            world: "iii:adapter/state-adapter@0.1.0".into(),
            worlds: vec!["iii:adapter/state-adapter@0.1.0".into()],
            exports: vec!["iii:adapter/state-store@0.1.0".into()],
            imports: vec!["wasi:sockets/tcp@0.2.3".into()],
            requires: vec![Requirement::Network],
            artifact: format!("127.0.0.1:5000/{}:{version}", name.replace(':', "/")),
            description: Some("a store".into()),
            license: None,
            source: None,
            signature: None,
        }
    }

    #[test]
    fn validates_shapes() {
        rec("iii:redis", "0.1.0").validate().unwrap();
        let mut r = rec("iii:redis", "0.1.0");
        r.name = "Redis".into();
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("namespace:name"));
        let mut r = rec("iii:redis", "one");
        r.digest = sha256_digest(b"x");
        assert!(r.validate().unwrap_err().to_string().contains("semver"));
        let mut r = rec("iii:redis", "0.1.0");
        r.digest = "sha256:xyz".into();
        assert!(r.validate().unwrap_err().to_string().contains("digest"));
    }

    #[test]
    fn a_declared_world_that_differs_is_named() {
        let actual = rec("iii:redis", "0.1.0");
        let mut declared = actual.clone();
        declared.world = "iii:queue/queue-adapter@0.1.0".into();
        let e = declared.check_against(&actual).unwrap_err().to_string();
        assert!(
            e.contains("world is declared as iii:queue/queue-adapter@0.1.0"),
            "{e}"
        );
        assert!(e.contains("iii:adapter/state-adapter@0.1.0"), "{e}");
        actual.check_against(&actual).unwrap();
    }

    #[test]
    fn requirements_follow_imports() {
        let r = Requirement::from_imports(&[
            "wasi:filesystem/types@0.2.3".into(),
            "wasi:sockets/tcp@0.2.3".into(),
        ]);
        assert_eq!(r, vec![Requirement::Network, Requirement::DataDir]);
        assert!(
            Requirement::from_imports(&["wasi:clocks/monotonic-clock@0.2.3".into()]).is_empty()
        );
    }

    #[test]
    fn json_form_round_trips_and_refuses_unknown_fields() {
        let r = rec("iii:redis", "0.1.0");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["requires"], serde_json::json!(["network"]));
        let back: IndexRecord = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(back, r);
        let mut j = j;
        j["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<IndexRecord>(j).is_err());
    }
}
