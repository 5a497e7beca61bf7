//! `iii worker add ./dir` (workers-and-sandboxes spec section 6.1): a local-path worker is written as
//! `- name: <n>` + `worker_path: <canonical dir>`; the engine runs it through
//! `iii-worker-host --path`, which copies the project into a persistent workspace and runs its
//! scripts in a sandbox.

use std::path::{Path, PathBuf};

use super::config_file::{self, NewEntry};
use super::error::WorkerError;
use super::lock::{Lockfile, LOCK_PATH};
use super::{manifest, ProjectLock};

/// `~` and `~/x` against `$HOME`; anything else as given.
fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix('~'), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(home).join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(p),
    }
}

/// What `add` needs to know about the result.
pub struct Added {
    pub name: String,
    pub port: u16,
}

/// Validates the project and writes its entry. `force` replaces an existing entry (its
/// workspace and install marker are deleted so setup+install run again); `reset_config`
/// also drops its `config:`.
pub fn add(arg: &str, force: bool, reset_config: bool) -> Result<Added, WorkerError> {
    let given = expand_home(arg);
    let dir = std::fs::canonicalize(&given)
        .map_err(|e| WorkerError::InvalidSource(format!("Cannot resolve path '{arg}': {e}")))?;
    if !dir.is_dir() {
        return Err(WorkerError::InvalidSource(format!(
            "'{}' is not a directory: a local worker is a project directory",
            dir.display()
        )));
    }
    let project = manifest::load_for_add(&dir)?;
    let name = project.name.trim().to_string();
    if super::add::builtin(&name).is_some() {
        return Err(WorkerError::AlreadyExists(format!(
            "the project in {} is named '{name}', which is a builtin engine worker; \
give it a name of its own (`name:` in {})",
            dir.display(),
            manifest::MANIFEST_FILE
        )));
    }
    let _guard = ProjectLock::acquire()?;
    let path = config_file::config_path();
    let before = config_file::read(&path)?;
    let mut text = before.unwrap_or_default();
    // Refuse an unparsable existing block before anything changes.
    config_file::entry_config(&text, &name)?;
    if config_file::has_entry(&text, &name) && !force {
        return Err(WorkerError::AlreadyExists(format!(
            "'{name}' is already in {}. Options: `iii worker list` to see it; \
`iii worker add {arg} --force` to replace it (keeps its config:, reinstalls dependencies); \
`iii worker add {arg} --force --reset-config` to also drop its config:",
            path.display()
        )));
    }
    check_dependencies(&name, &project.dependencies)?;
    if force {
        let managed = iii_worker_state::managed_dir(&name)
            .map_err(|e| WorkerError::Internal(e.to_string()))?;
        match std::fs::remove_dir_all(&managed) {
            Ok(()) => eprintln!(
                "✓ Cleared {} (workspace and install marker)",
                managed.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(WorkerError::Internal(format!(
                    "cannot remove {}: {e}",
                    managed.display()
                )))
            }
        }
        if reset_config && config_file::has_entry(&text, &name) {
            text = config_file::remove_entry(&text, &name, &path)?;
        }
    }
    let entry = NewEntry {
        name: name.clone(),
        image: None,
        worker_path: Some(dir.to_string_lossy().into_owned()),
        config: None,
    };
    let after = config_file::upsert_entry(&text, &entry)?;
    config_file::write(&path, &after)?;
    eprintln!(
        "✓ {name} added to {} (local {} project at {}, from {})",
        path.display(),
        project.kind.as_str(),
        dir.display(),
        project.detected_from
    );
    Ok(Added {
        name,
        port: config_file::manager_port(&after),
    })
}

/// Installing dependencies by name needs the registry; until then a declared dependency must
/// already be in iii.lock at a version its range accepts, or `add` says what is missing
/// without failing (the worker may run without it; `verify --strict` fails).
fn check_dependencies(name: &str, deps: &[(String, String)]) -> Result<(), WorkerError> {
    if deps.is_empty() {
        return Ok(());
    }
    let lock = Lockfile::read(Path::new(LOCK_PATH))?.unwrap_or_default();
    for (dep, range) in deps {
        if let Some(problem) = super::verify::unsatisfied(&lock, dep, range) {
            eprintln!(
                "warning: {name} depends on {dep} {range}, but {problem}; add it (`iii worker add {dep}`) \
— `iii worker verify --strict` fails until then"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_expands_against_home() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(h) = home {
            assert_eq!(expand_home("~/w"), h.join("w"));
            assert_eq!(expand_home("~"), h);
        }
        assert_eq!(expand_home("~other/w"), PathBuf::from("~other/w"));
        assert_eq!(expand_home("./w"), PathBuf::from("./w"));
    }
}
