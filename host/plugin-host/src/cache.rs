//! On-disk cache of compiled components, so a restart does not run Cranelift
//! again. The key is (plugin digest, engine compatibility hash); the latter
//! hashes the exact wasmtime version and every setting that affects
//! compiled code, so an upgrade or a config change misses instead of
//! loading incompatible machine code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::error::PluginError;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled code from the cache.
    Hit,
    /// Compiled now and stored in the cache.
    Miss,
    /// No cache configured; compiled now.
    Disabled,
}

pub(crate) fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) struct CodeCache {
    dir: PathBuf,
    engine_key: String,
}

impl CodeCache {
    pub(crate) fn new(dir: &Path, engine: &Engine) -> Result<CodeCache, PluginError> {
        // DefaultHasher::new() uses fixed keys, so the value is stable for a
        // given build of the host, which is all a cache key needs.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        let dir = dir.join("wasmtime-48");
        std::fs::create_dir_all(&dir).map_err(|source| PluginError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(CodeCache { dir, engine_key })
    }

    fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Returns the compiled component for `bytes`, from the cache if present.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
        label: &str,
    ) -> Result<(Component, CacheOutcome), PluginError> {
        let path = self.path_for(digest);
        if path.exists() {
            // SAFETY: the file was written by `store` below from
            // `Component::serialize` of an engine with the same
            // compatibility hash (it is part of the file name), in a cache
            // directory owned by this host. wasmtime still checks the
            // header and version; a corrupt file falls through to a
            // recompile.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled-code cache entry")
                }
            }
        }
        let component = compile(engine, bytes, label)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "could not write compiled-code cache entry");
        }
        Ok((component, CacheOutcome::Miss))
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Write aside and rename so a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

pub(crate) fn compile(
    engine: &Engine,
    bytes: &[u8],
    label: &str,
) -> Result<Component, PluginError> {
    Component::new(engine, bytes).map_err(|e| PluginError::NotAComponent {
        adapter: label.to_string(),
        reason: format!("{e:#}"),
    })
}
