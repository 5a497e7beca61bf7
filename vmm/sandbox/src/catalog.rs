//! The image catalog: the presets (fixed order) and the configured custom images, and the
//! allowlist check every create passes.

use serde_json::{json, Value};

use crate::config::SandboxConfig;
use crate::error::SandboxError;

/// Preset name → the upstream reference it stands for. Upstream pulls these from Docker Hub;
/// this daemon builds the same-named images locally from Debian packages (no registry pull).
pub const PRESETS: &[(&str, &str)] = &[
    ("python", "docker.io/iiidev/python:latest"),
    ("node", "docker.io/iiidev/node:latest"),
];

/// Where an allowed image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A preset, built from Debian packages on first use.
    Preset(&'static str),
    /// A custom image: an OCI layout directory or tarball on disk (or a registry reference,
    /// which this daemon cannot pull yet).
    Custom(String),
}

/// The catalog of one daemon.
#[derive(Debug, Clone)]
pub struct Catalog {
    allow: Vec<String>,
    custom: Vec<(String, String)>,
}

impl Catalog {
    /// The catalog a configuration describes.
    pub fn new(cfg: &SandboxConfig) -> Self {
        Catalog {
            allow: cfg.image_allowlist.clone(),
            custom: cfg
                .custom_images
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The image behind `name`, if it is known and allowed (S100 otherwise). Presets win over
    /// a custom entry of the same name.
    pub fn resolve(&self, name: &str) -> Result<ImageSource, SandboxError> {
        let known = if let Some((p, _)) = PRESETS.iter().find(|(p, _)| *p == name) {
            Some(ImageSource::Preset(p))
        } else {
            self.custom
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| ImageSource::Custom(v.clone()))
        };
        match known {
            Some(src) if self.allow.iter().any(|a| a == name) => Ok(src),
            _ => Err(SandboxError::ImageNotInCatalog(name.into())),
        }
    }

    /// `sandbox::catalog::list`: presets first in fixed order, then custom images by name.
    pub fn list(&self) -> Value {
        let mut images: Vec<Value> = PRESETS
            .iter()
            .map(|(n, r)| json!({"name": n, "oci_ref": r, "kind": "preset"}))
            .collect();
        images.extend(
            self.custom
                .iter()
                .map(|(n, r)| json!({"name": n, "oci_ref": r, "kind": "custom"})),
        );
        json!({ "images": images })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> SandboxConfig {
        SandboxConfig::parse(yaml, "t").unwrap()
    }

    #[test]
    fn allowlist_is_fail_closed_and_needs_a_known_name() {
        let c = Catalog::new(&cfg("image_allowlist: [python, ghost]\n"));
        assert_eq!(c.resolve("python").unwrap(), ImageSource::Preset("python"));
        assert_eq!(c.resolve("node").unwrap_err().code(), "S100");
        assert_eq!(c.resolve("ghost").unwrap_err().code(), "S100");
        let none = Catalog::new(&cfg("{}"));
        assert_eq!(none.resolve("python").unwrap_err().code(), "S100");
    }

    #[test]
    fn list_orders_presets_then_custom() {
        let c = Catalog::new(&cfg(
            "custom_images:\n  zeta: /z\n  alpha: /a\nimage_allowlist: [alpha]\n",
        ));
        let v = c.list();
        let names: Vec<&str> = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["python", "node", "alpha", "zeta"]);
        assert_eq!(v["images"][2]["kind"], "custom");
        assert_eq!(
            c.resolve("alpha").unwrap(),
            ImageSource::Custom("/a".into())
        );
    }
}
