//! The daemon's configuration: the `config:` block of the `iii-sandbox` entry, flat (§4.2), plus
//! `runtime:` (which isolation runs the sandboxes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::PRESETS;

/// Why a configuration cannot be used. The daemon exits with status 2 on any of them (fail
/// closed), and the engine reports the message when it checks the entry at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not YAML, an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What serde_yaml found.
        message: String,
    },
    /// A value that parses but cannot be used.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

/// Which isolation runs the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeSetting {
    /// The microVM runtime when this host can really run it; otherwise start-up fails and says
    /// how to choose the namespace runtime (weaker isolation is never chosen silently).
    #[default]
    Auto,
    /// One microVM per sandbox (`vmm/`).
    Microvm,
    /// Linux namespaces + cgroups, the same guest init and root filesystem as the VM.
    Namespace,
}

/// Per-image resource caps.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageCaps {
    /// Most vCPUs a sandbox of this image may ask for.
    pub max_cpus: Option<u32>,
    /// Most memory (MiB) a sandbox of this image may ask for.
    pub max_memory_mb: Option<u32>,
}

/// The daemon's settings (§4.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Build or import a missing root filesystem on create (false → S101).
    pub auto_install: bool,
    /// Images that may be booted (fail-closed: empty allows nothing).
    pub image_allowlist: Vec<String>,
    /// Seconds without exec or fs activity after which the reaper stops a sandbox.
    pub default_idle_timeout_secs: u64,
    /// Most live sandboxes (S400 beyond).
    pub max_concurrent_sandboxes: u32,
    /// Most concurrent execs per sandbox (S003 beyond); 0 is read as 1.
    pub max_concurrent_exec_per_sandbox: u32,
    /// Clamp for every exec's `timeout_ms`.
    pub max_exec_timeout_ms: u64,
    /// vCPUs when the request names none.
    pub default_cpus: u32,
    /// Memory (MiB) when the request names none.
    pub default_memory_mb: u32,
    /// Caps by image name.
    pub per_image_caps: BTreeMap<String, ImageCaps>,
    /// Name → image source: an OCI layout directory or an OCI/`docker save` tarball (relative
    /// paths resolve against the directory of the engine's config file).
    pub custom_images: BTreeMap<String, String>,
    /// Which isolation runs the sandboxes.
    pub runtime: RuntimeSetting,
    /// Most processes in one sandbox (a fork bomb stops here).
    pub max_pids_per_sandbox: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            auto_install: true,
            image_allowlist: Vec::new(),
            default_idle_timeout_secs: 300,
            max_concurrent_sandboxes: 32,
            max_concurrent_exec_per_sandbox: 4,
            max_exec_timeout_ms: 300_000,
            default_cpus: 1,
            default_memory_mb: 512,
            per_image_caps: BTreeMap::new(),
            custom_images: BTreeMap::new(),
            runtime: RuntimeSetting::Auto,
            max_pids_per_sandbox: 512,
        }
    }
}

impl SandboxConfig {
    /// Reads and validates a file. A file with a top-level `workers:` key is an engine config
    /// file (the daemon was started without a `config:` block): its `workers:` is ignored and
    /// the defaults apply, as upstream does.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        cfg.resolve_paths(&base);
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: origin.into(),
                message: e.to_string(),
            })?;
        let value = match value {
            serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
            serde_yaml::Value::Mapping(mut m) => {
                if m.contains_key("sandbox") {
                    return Err(ConfigError::Invalid {
                        path: origin.into(),
                        message: "legacy wrapped shape detected: move fields from `sandbox:` to the top level of the iii-sandbox `config:` block".into(),
                    });
                }
                if m.contains_key("workers") {
                    m.clear();
                }
                if let Some(r) = m.get("runtime") {
                    if !matches!(r.as_str(), Some("auto" | "microvm" | "namespace")) {
                        return Err(ConfigError::Invalid {
                            path: origin.into(),
                            message: format!(
                                "`runtime` must be `auto`, `microvm` or `namespace`, found {}",
                                serde_yaml::to_string(r).unwrap_or_default().trim()
                            ),
                        });
                    }
                }
                serde_yaml::Value::Mapping(m)
            }
            other => {
                return Err(ConfigError::Invalid {
                    path: origin.into(),
                    message: format!("expected a mapping of settings, found {other:?}"),
                })
            }
        };
        let mut cfg: SandboxConfig =
            serde_yaml::from_value(value).map_err(|e| ConfigError::Parse {
                path: origin.into(),
                message: e.to_string(),
            })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn validate(&mut self, origin: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: origin.into(),
            message,
        };
        for key in self.custom_images.keys() {
            if key.trim().is_empty() {
                return Err(bad("`custom_images` has an empty name".into()));
            }
            if PRESETS.iter().any(|(p, _)| p == key) {
                return Err(bad(format!(
                    "`custom_images.{key}`: `{key}` is a preset name; choose another name"
                )));
            }
        }
        if self.max_concurrent_exec_per_sandbox == 0 {
            tracing::warn!("max_concurrent_exec_per_sandbox is 0; treating it as 1");
            self.max_concurrent_exec_per_sandbox = 1;
        }
        if self.default_cpus == 0 {
            return Err(bad("`default_cpus` must be at least 1".into()));
        }
        if self.default_memory_mb < 16 {
            return Err(bad("`default_memory_mb` must be at least 16".into()));
        }
        if self.max_pids_per_sandbox < 8 {
            return Err(bad("`max_pids_per_sandbox` must be at least 8".into()));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        for v in self.custom_images.values_mut() {
            let p = Path::new(v.as_str());
            if p.is_relative() && base.join(p).exists() {
                *v = base.join(p).display().to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_block_parses() {
        let c = SandboxConfig::parse(
            "auto_install: true\nimage_allowlist:\n  - python\n  - node\ndefault_idle_timeout_secs: 300\nmax_concurrent_sandboxes: 32\ndefault_cpus: 1\ndefault_memory_mb: 512\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.image_allowlist, ["python", "node"]);
        assert_eq!(c.max_concurrent_exec_per_sandbox, 4);
        assert_eq!(c.max_exec_timeout_ms, 300_000);
        assert_eq!(c.runtime, RuntimeSetting::Auto);
    }

    #[test]
    fn rejects_the_legacy_shape_unknown_keys_and_preset_names() {
        let e = SandboxConfig::parse("sandbox:\n  auto_install: true\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("legacy wrapped shape"), "{e}");
        let e = SandboxConfig::parse("auto_instal: true\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("auto_instal"), "{e}");
        let e = SandboxConfig::parse("custom_images:\n  python: /x\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("preset name"), "{e}");
        let e = SandboxConfig::parse("runtime: docker\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("runtime"), "{e}");
    }

    #[test]
    fn engine_file_means_defaults_and_zero_exec_cap_means_one() {
        let c = SandboxConfig::parse("workers:\n  - name: iii-sandbox\n", "c").unwrap();
        assert!(c.image_allowlist.is_empty());
        let c = SandboxConfig::parse("max_concurrent_exec_per_sandbox: 0\n", "c").unwrap();
        assert_eq!(c.max_concurrent_exec_per_sandbox, 1);
    }
}
