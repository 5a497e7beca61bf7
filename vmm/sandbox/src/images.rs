//! From a catalog entry to a root filesystem on disk: a cache lookup, else (with
//! `auto_install`) a build or import, else S101. Builds run on blocking threads; the store
//! serialises builders of the same image with a file lock.

use std::path::Path;
use std::sync::Arc;

use iii_oci_rootfs::{ImageStore, Rootfs};

use crate::catalog::ImageSource;
use crate::error::SandboxError;

/// The daemon's view of the image cache.
#[derive(Clone)]
pub struct Images {
    store: Arc<ImageStore>,
    auto_install: bool,
}

impl Images {
    /// Over `store`; `auto_install` as configured.
    pub fn new(store: ImageStore, auto_install: bool) -> Self {
        Images {
            store: Arc::new(store),
            auto_install,
        }
    }

    /// The root filesystem of `name` (its catalog entry `src`).
    pub async fn rootfs(&self, name: &str, src: &ImageSource) -> Result<Rootfs, SandboxError> {
        let name = name.to_string();
        let store = self.store.clone();
        let auto = self.auto_install;
        let src = src.clone();
        tokio::task::spawn_blocking(move || resolve(&store, auto, &name, &src))
            .await
            .map_err(|e| SandboxError::AutoInstallFailed {
                image: "?".into(),
                reason: format!("image task failed: {e}"),
            })?
    }
}

fn resolve(
    store: &ImageStore,
    auto: bool,
    name: &str,
    src: &ImageSource,
) -> Result<Rootfs, SandboxError> {
    let failed = |reason: String| SandboxError::AutoInstallFailed {
        image: name.to_string(),
        reason,
    };
    let mut progress = |line: &str| tracing::info!(image = name, "{line}");
    match src {
        ImageSource::Preset(p) => {
            if let Some(r) = store.lookup_preset(p) {
                return Ok(r);
            }
            if !auto {
                return Err(SandboxError::RootfsMissing(name.to_string()));
            }
            tracing::info!(
                image = name,
                event = "pulling_image",
                "building preset image"
            );
            store
                .build_preset(p, &mut progress)
                .map_err(|e| failed(e.to_string()))
        }
        ImageSource::Custom(source) => {
            let path = Path::new(source);
            if !path.exists() {
                // A registry reference (or a path that is gone): nothing on disk to import.
                // Registry pulls arrive with `iii worker add`.
                return Err(SandboxError::RootfsMissing(name.to_string()));
            }
            if let Some(r) = store.lookup_custom(path) {
                return Ok(r);
            }
            if !auto {
                return Err(SandboxError::RootfsMissing(name.to_string()));
            }
            tracing::info!(image = name, event = "unpacking", "importing custom image");
            store
                .import_custom(path, &mut progress)
                .map_err(|e| failed(e.to_string()))
        }
    }
}
