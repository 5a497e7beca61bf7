//! `iii worker verify [--strict]` (workers-and-sandboxes spec section 1.14): does config.yaml match
//! iii.lock? Every worker that needs a lock entry has one, binary workers have an artifact for
//! this host, and with `--strict` every declared dependency (of locked workers and of local
//! workers' iii.worker.yaml) is locked at a version its range accepts.

use std::path::Path;

use clap::Args;

use super::config_file;
use super::error::WorkerError;
use super::lock::{Lockfile, Source, WorkerType, LOCK_PATH};
use super::manifest;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Also check declared dependencies: each locked worker's, and each local worker's
    /// iii.worker.yaml `dependencies:`, must be locked at a version its range accepts
    #[arg(long)]
    strict: bool,
}

/// This host's target triple, as binary artifacts are keyed.
pub fn host_target() -> String {
    let os = match std::env::consts::OS {
        "linux" => "unknown-linux-gnu",
        "macos" => "apple-darwin",
        "windows" => "pc-windows-msvc",
        other => other,
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

/// Why `dep` at `range` is not satisfied by `lock`, or `None` when it is.
pub fn unsatisfied(lock: &Lockfile, dep: &str, range: &str) -> Option<String> {
    let Some(w) = lock.workers.get(dep) else {
        return Some(format!("{dep} is not in {LOCK_PATH}"));
    };
    let req = match semver::VersionReq::parse(range) {
        Ok(r) => r,
        Err(e) => return Some(format!("the range {range:?} is invalid: {e}")),
    };
    match semver::Version::parse(&w.version) {
        Ok(v) if req.matches(&v) => None,
        Ok(v) => Some(format!("{LOCK_PATH} has {dep} {v}, outside {range}")),
        Err(_) => Some(format!(
            "{LOCK_PATH} has {dep} at {:?}, which is not a semver version",
            w.version
        )),
    }
}

/// Every problem, in a stable order; empty when config and lock agree.
pub fn check(config: &str, lock: &Lockfile, strict: bool, target: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let names = config_file::list_names(config);
    let external =
        |n: &str, key: &str| config_file::entry_value(config, n, key).filter(|v| !v.is_empty());
    // Local, image and builtin entries need no lock entry; a registry (binary) name does.
    let missing: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !lock.workers.contains_key(*n))
        .filter(|n| {
            super::add::builtin(n).is_none()
                && external(n, "image").is_none()
                && external(n, "worker_path").is_none()
        })
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{LOCK_PATH} is missing worker(s): {}",
            missing.join(", ")
        ));
    }
    let mut no_artifact = Vec::new();
    for n in &names {
        let Some(w) = lock.workers.get(n) else {
            continue;
        };
        if w.kind != WorkerType::Binary {
            continue;
        }
        let available: Vec<String> = match &w.source {
            Some(Source::Binary { artifacts }) => artifacts.keys().cloned().collect(),
            _ => Vec::new(),
        };
        if !available.iter().any(|t| t == target) {
            no_artifact.push(format!(
                "{n} (available: {})",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ));
        }
    }
    if !no_artifact.is_empty() {
        problems.push(format!(
            "{LOCK_PATH} is missing binary artifact(s) for target {target}: {}",
            no_artifact.join(", ")
        ));
    }
    if !strict {
        return problems;
    }
    for (n, w) in &lock.workers {
        for (dep, range) in &w.dependencies {
            if let Some(p) = unsatisfied(lock, dep, range) {
                problems.push(format!("{n} depends on {dep} {range}: {p}"));
            }
        }
    }
    for n in &names {
        let Some(dir) = external(n, "worker_path") else {
            continue;
        };
        let dir = Path::new(&dir);
        match manifest::dependencies(dir) {
            Ok(deps) => {
                for (dep, range) in deps {
                    if let Some(p) = unsatisfied(lock, &dep, &range) {
                        problems.push(format!(
                            "{n} ({}) depends on {dep} {range}: {p}",
                            dir.join(manifest::MANIFEST_FILE).display()
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!("{n}: {e}")),
        }
    }
    problems
}

/// Runs `iii worker verify`.
pub fn run(a: VerifyArgs) -> Result<(), WorkerError> {
    let lock = Lockfile::read(Path::new(LOCK_PATH))?.ok_or_else(|| {
        WorkerError::Lockfile(format!(
            "{LOCK_PATH} not found in the current directory; `iii worker add` writes it"
        ))
    })?;
    let path = config_file::config_path();
    let config = config_file::read(&path)?.unwrap_or_default();
    let problems = check(&config, &lock, a.strict, &host_target());
    if !problems.is_empty() {
        return Err(WorkerError::Lockfile(format!(
            "{} does not match {LOCK_PATH}:\n  {}",
            path.display(),
            problems.join("\n  ")
        )));
    }
    eprintln!("✓ {} matches {LOCK_PATH}", path.display());
    if a.strict {
        eprintln!("✓ declaration freshness checks passed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(text: &str) -> Lockfile {
        Lockfile::parse(text, "test").unwrap()
    }

    #[test]
    fn missing_workers_and_artifacts() {
        let cfg = "workers:\n  - name: http\n  - name: pdfkit\n  - name: img\n    image: ghcr.io/a/img:1\n  - name: loc\n    worker_path: /nowhere\n  - name: db\n";
        let l = lock("version: 1\nworkers:\n  db:\n    version: 1.0.0\n    type: binary\n    source:\n      kind: binary\n      artifacts:\n        aarch64-apple-darwin:\n          url: https://x/db\n          sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n");
        let p = check(cfg, &l, false, "x86_64-unknown-linux-gnu");
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0], "iii.lock is missing worker(s): pdfkit");
        assert_eq!(
            p[1],
            "iii.lock is missing binary artifact(s) for target x86_64-unknown-linux-gnu: db (available: aarch64-apple-darwin)"
        );
        assert!(check(cfg, &l, false, "aarch64-apple-darwin").len() == 1);
    }

    #[test]
    fn strict_checks_dependency_ranges() {
        let cfg = "workers:\n  - name: a\n  - name: b\n";
        let l = lock("version: 1\nworkers:\n  a:\n    version: 1.0.0\n    type: engine\n    dependencies:\n      b: ^2\n  b:\n    version: 1.5.0\n    type: engine\n");
        assert!(check(cfg, &l, false, "t").is_empty());
        let p = check(cfg, &l, true, "t");
        assert_eq!(
            p,
            vec!["a depends on b ^2: iii.lock has b 1.5.0, outside ^2"]
        );
        assert_eq!(unsatisfied(&l, "b", "^1.2"), None);
        assert!(unsatisfied(&l, "c", "^1")
            .unwrap()
            .contains("not in iii.lock"));
    }
}
