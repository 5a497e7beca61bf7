//! `iii.worker.yaml` on the CLI side (workers-and-sandboxes spec section 2.3, section 6.1): the parser and
//! detection are the worker host's (`iii_worker_host::manifest`, which re-validates on every
//! start); this adds the naming rule of section 3.0 and the user-facing warnings.

use std::path::Path;

pub use iii_worker_host::manifest::{Project, MANIFEST_FILE};

use super::error::WorkerError;
use super::names;

/// Loads the project in `dir` the way `iii worker add` does: a manifest must be valid and
/// named; the worker's name and its dependencies' names must be valid worker names. Warnings
/// are printed (deprecations unless `III_NO_DEPRECATION_WARN` is set).
pub fn load_for_add(dir: &Path) -> Result<Project, WorkerError> {
    let bad = |m: String| WorkerError::InvalidSource(m);
    let project = iii_worker_host::manifest::load_project(dir).map_err(|e| bad(e.to_string()))?;
    let path = dir.join(MANIFEST_FILE);
    if let Some(m) = &project.manifest {
        m.require_name(&path).map_err(|e| bad(e.to_string()))?;
        for w in &m.warnings {
            eprintln!("warning: {MANIFEST_FILE}: {w}");
        }
        if std::env::var_os("III_NO_DEPRECATION_WARN").is_none() {
            if let Some(w) = m.deprecation_warning() {
                eprintln!("warning: {w}");
            }
        }
    }
    names::validate(project.name.trim()).map_err(|e| {
        bad(format!(
            "{e} (the worker's name comes from {})",
            if project.manifest.is_some() {
                format!("`name` in {}", path.display())
            } else {
                format!("the directory name of {}", dir.display())
            }
        ))
    })?;
    for (dep, _) in &project.dependencies {
        names::validate(dep)
            .map_err(|e| bad(format!("{}: `dependencies.{dep}`: {e}", path.display())))?;
    }
    Ok(project)
}

/// The dependencies of the local worker at `dir` (manifest `dependencies:`; none without one).
pub fn dependencies(dir: &Path) -> Result<Vec<(String, String)>, WorkerError> {
    match iii_worker_host::manifest::read(dir) {
        Ok(Some((_, m))) => Ok(m.dependencies),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(WorkerError::InvalidSource(e.to_string())),
    }
}
