//! `iii worker add` (workers-and-sandboxes spec section 1.2): builtin names edit config.yaml and
//! iii.lock; OCI references are pulled into the image store and written as `image:` entries the
//! engine starts (their digest pinned in iii.lock); registry names resolve through the
//! registry API (sync.rs).

use std::path::Path;

use clap::Args;
use serde_yaml::Mapping;

use super::config_file::{self, NewEntry};
use super::error::WorkerError;
use super::lock::{LockedWorker, Lockfile, LOCK_PATH};
use super::{engine, names, oci, ProjectLock};

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Builtin worker names (ex. http, state, iii-sandbox; optionally name@version), Docker / OCI image
    /// references (ex. ghcr.io/org/worker:tag, localhost:5050/my-worker:latest) or project directories
    /// (starting with `.`, `/` or `~`: local-path workers)
    #[arg(value_name = "WORKER[@VERSION]|IMAGE|PATH", required = true)]
    workers: Vec<String>,
    /// Force re-install: stop the worker if the engine runs it and delete its artifacts (binary, cached image, managed/<name>/) before adding
    #[arg(short, long)]
    force: bool,
    /// With --force: discard the worker's config.yaml entry (and its hand-written config:) before re-adding
    #[arg(long)]
    reset_config: bool,
    /// Don't block waiting for the engine to start the worker (otherwise up to 120s, or $III_WORKER_READY_TIMEOUT_SECS)
    #[arg(long)]
    no_wait: bool,
    /// Consent for registry workers whose dependency graph has more than 32 workers
    #[arg(short, long)]
    yes: bool,
}

#[derive(Args, Debug)]
pub struct ReinstallArgs {
    /// Worker names (name[@version]) or OCI image references to reinstall
    #[arg(value_name = "WORKER[@VERSION]|IMAGE", required = true)]
    workers: Vec<String>,
    /// Also discard the worker's config.yaml entry (and its hand-written config:) before re-adding
    #[arg(long)]
    reset_config: bool,
    /// Consent for registry workers whose dependency graph has more than 32 workers
    #[arg(short, long)]
    yes: bool,
}

/// `iii worker reinstall` = `add --force --no-wait` (section 1.3).
pub async fn reinstall(a: ReinstallArgs) -> bool {
    run(AddArgs {
        workers: a.workers,
        force: true,
        reset_config: a.reset_config,
        no_wait: true,
        yes: a.yes,
    })
    .await
}

/// How an argument is read (section 1.2 "Source classification").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Local(String),
    Oci(String),
    Registry {
        name: String,
        version: Option<String>,
    },
}

/// Local if it starts with `.`, `/` or `~`; OCI if it has a `/`, or a `:` and no `@`; else a
/// registry name, `name@version`.
pub fn classify(arg: &str) -> Source {
    if arg.starts_with(['.', '/', '~']) {
        return Source::Local(arg.into());
    }
    if arg.contains('/') || (arg.contains(':') && !arg.contains('@')) {
        return Source::Oci(arg.into());
    }
    match arg.split_once('@') {
        Some((n, v)) => Source::Registry {
            name: n.into(),
            version: Some(v.into()),
        },
        None => Source::Registry {
            name: arg.into(),
            version: None,
        },
    }
}

/// What the engine does with a builtin name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// Always on: nothing to write.
    Mandatory,
    /// Written as a bare entry; `current` is the service's name when `name` is a deprecated one.
    Configurable {
        service: &'static str,
        names: Vec<&'static str>,
        current: Option<&'static str>,
    },
}

/// The engine's own service list decides which names are builtins.
pub fn builtin(name: &str) -> Option<Builtin> {
    iii_engine::services()
        .iter()
        .map(|s| s.info())
        .find_map(|i| {
            if i.name != name && !i.deprecated_names.contains(&name) {
                return None;
            }
            if i.always_on {
                return Some(Builtin::Mandatory);
            }
            let mut names = vec![i.name];
            names.extend(i.deprecated_names.iter().copied());
            Some(Builtin::Configurable {
                service: i.name,
                names,
                current: (i.name != name).then_some(i.name),
            })
        })
}

/// `iii worker add iii-sandbox` writes the daemon's defaults (section 4.2) so they are visible and editable.
pub(super) fn sandbox_defaults() -> Mapping {
    serde_yaml::from_str(
        "auto_install: true\nimage_allowlist:\n  - python\n  - node\ndefault_idle_timeout_secs: 300\n\
max_concurrent_sandboxes: 32\ndefault_cpus: 1\ndefault_memory_mb: 512\n",
    )
    .expect("static YAML")
}

pub(super) fn ready_timeout() -> std::time::Duration {
    std::env::var("III_WORKER_READY_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(engine::READY_TIMEOUT)
}

/// Runs `iii worker add`; exit 0 iff every argument was added.
pub async fn run(a: AddArgs) -> bool {
    let n = a.workers.len();
    let mut ok = 0;
    for (i, arg) in a.workers.iter().enumerate() {
        if n > 1 {
            eprintln!("[{}/{n}] Adding {arg}...", i + 1);
        }
        match add_one(arg, &a).await {
            Ok(()) => ok += 1,
            Err(e) => e.print(),
        }
    }
    if n > 1 {
        eprintln!("Added {ok}/{n} workers.");
    }
    ok == n
}

async fn add_one(arg: &str, a: &AddArgs) -> Result<(), WorkerError> {
    match classify(arg) {
        Source::Local(p) => {
            let added = super::local::add(&p, a.force, a.reset_config)?;
            // Upstream fails a local add whose worker is not up in time (an install that
            // breaks shows here, not later); an image add's timeout is only a hint.
            if !a.no_wait
                && engine::wait_ready(&added.name, added.port, ready_timeout()).await
                    == engine::Readiness::NotYet
            {
                return Err(WorkerError::StartTimeout(format!(
                    "{} was added but did not connect within {}s (the engine keeps starting it; \
`iii worker status {}` follows it)",
                    added.name,
                    ready_timeout().as_secs(),
                    added.name
                )));
            }
            Ok(())
        }
        Source::Oci(r) => add_image(&r, a).await,
        Source::Registry { name, version } => {
            names::validate(&name)?;
            match builtin(&name) {
                Some(Builtin::Mandatory) => {
                    eprintln!(
                        "ℹ {name} is a mandatory engine worker (always on, built into the engine); nothing to add."
                    );
                    Ok(())
                }
                Some(Builtin::Configurable {
                    service,
                    names,
                    current,
                }) => add_builtin(&name, version.as_deref(), service, &names, current, a),
                None => {
                    super::sync::add_registry(super::sync::RegistryAdd {
                        name: &name,
                        version: version.as_deref(),
                        force: a.force,
                        reset_config: a.reset_config,
                        yes: a.yes,
                        wait: !a.no_wait,
                    })
                    .await
                }
            }
        }
    }
}

/// Reads the config text; `None` when the file does not exist yet.
fn read_config(path: &Path) -> Result<Option<String>, WorkerError> {
    Ok(config_file::read(path)?)
}

/// Writes config then lock; a failed lock write puts the config file back as it was.
pub(super) fn write_both(
    path: &Path,
    before: Option<&str>,
    after: &str,
    lock: &Lockfile,
) -> Result<(), WorkerError> {
    config_file::write(path, after)?;
    if let Err(e) = lock.write(Path::new(LOCK_PATH)) {
        match before {
            Some(t) => {
                let _ = config_file::write(path, t);
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
        return Err(e.into());
    }
    Ok(())
}

fn add_builtin(
    name: &str,
    version: Option<&str>,
    service: &str,
    all_names: &[&str],
    current: Option<&str>,
    a: &AddArgs,
) -> Result<(), WorkerError> {
    if let Some(c) = current {
        eprintln!("warning: Worker name '{name}' is deprecated (renamed to '{c}'). Use `iii worker add {c}` instead.");
    }
    let _guard = ProjectLock::acquire()?;
    let path = config_file::config_path();
    let before = read_config(&path)?;
    let text = before.clone().unwrap_or_default();
    if let Some(other) = config_file::list_names(&text)
        .into_iter()
        .find(|n| n != name && all_names.contains(&n.as_str()))
    {
        return Err(WorkerError::AlreadyExists(format!(
            "{} already has '{other}', which is the same engine service as '{name}' ({service}); \
the engine refuses both in one file. Keep '{other}' or remove it first",
            path.display()
        )));
    }
    // Read (and validate) the lock before touching anything.
    let mut lock = Lockfile::read(Path::new(LOCK_PATH))?.unwrap_or_default();
    if a.force {
        eprintln!("{name} is built into the engine: no artifacts to remove.");
    }
    let mut text = text;
    if a.force && a.reset_config && config_file::has_entry(&text, name) {
        text = config_file::remove_entry(&text, name, &path)?;
    }
    let entry = NewEntry {
        name: name.into(),
        config: (service == "iii-sandbox").then(sandbox_defaults),
        ..Default::default()
    };
    let after = config_file::upsert_entry(&text, &entry)?;
    let version = version.unwrap_or(env!("CARGO_PKG_VERSION"));
    lock.workers
        .insert(name.into(), LockedWorker::engine(version));
    write_both(&path, before.as_deref(), &after, &lock)?;
    eprintln!(
        "✓ {name} added to {} and {LOCK_PATH} (built into the engine; a running engine starts it when it reloads the file)",
        path.display()
    );
    Ok(())
}

async fn add_image(reference: &str, a: &AddArgs) -> Result<(), WorkerError> {
    let name = oci::worker_name(reference)?;
    if builtin(&name).is_some() {
        return Err(WorkerError::AlreadyExists(format!(
            "the image {reference} would be named '{name}', which is a builtin engine worker; \
an image worker needs a name of its own (retag the image)"
        )));
    }
    let port;
    {
        let _guard = ProjectLock::acquire()?;
        let path = config_file::config_path();
        let before = read_config(&path)?;
        let mut text = before.clone().unwrap_or_default();
        // Refuse an unparsable existing block before the (slow) pull.
        config_file::entry_config(&text, &name)?;
        if a.force {
            super::sync::force_cleanup(&name, &text).await?;
        }
        eprintln!("Pulling {reference}...");
        let pulled = oci::pull(reference, &mut |line| eprintln!("  {line}"))?;
        if a.force && a.reset_config && config_file::has_entry(&text, &name) {
            text = config_file::remove_entry(&text, &name, &path)?;
        }
        let entry = NewEntry {
            name: name.clone(),
            image: Some(reference.into()),
            worker_path: None,
            config: oci::env_config(&pulled.env),
        };
        let after = config_file::upsert_entry(&text, &entry)?;
        // The pull's digest is pinned in iii.lock, so `sync` reinstalls exactly this image.
        let mut lock = Lockfile::read(Path::new(LOCK_PATH))?.unwrap_or_default();
        lock.workers.insert(
            name.clone(),
            super::sync::oci_locked(reference, &pulled.digest),
        );
        write_both(&path, before.as_deref(), &after, &lock)?;
        eprintln!(
            "✓ {name} added to {} (image {reference}, {}, pinned in {LOCK_PATH})",
            path.display(),
            pulled.digest
        );
        port = config_file::manager_port(&after);
    }
    if !a.no_wait {
        engine::wait_ready(&name, port, ready_timeout()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("./w"), Source::Local("./w".into()));
        assert_eq!(classify("/abs"), Source::Local("/abs".into()));
        assert_eq!(classify("~/w"), Source::Local("~/w".into()));
        assert_eq!(
            classify("ghcr.io/a/b:1"),
            Source::Oci("ghcr.io/a/b:1".into())
        );
        assert_eq!(classify("pdfkit:1.0"), Source::Oci("pdfkit:1.0".into()));
        assert_eq!(
            classify("pdfkit@1.0.0"),
            Source::Registry {
                name: "pdfkit".into(),
                version: Some("1.0.0".into())
            }
        );
        assert_eq!(
            classify("http"),
            Source::Registry {
                name: "http".into(),
                version: None
            }
        );
    }

    #[test]
    fn builtins_come_from_the_engine() {
        assert_eq!(builtin("iii-worker-manager"), Some(Builtin::Mandatory));
        assert_eq!(builtin("iii-observability"), Some(Builtin::Mandatory));
        let Some(Builtin::Configurable {
            service,
            current,
            names,
        }) = builtin("iii-http")
        else {
            panic!("iii-http")
        };
        assert_eq!((service, current), ("http", Some("http")));
        assert!(names.contains(&"http"));
        assert!(matches!(
            builtin("iii-sandbox"),
            Some(Builtin::Configurable { current: None, .. })
        ));
        assert!(builtin("pdfkit").is_none());
    }
}
