//! `iii worker remove`, `list` and `clear` (workers-and-sandboxes spec section 1.4, section 1.5, section 1.9).

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use clap::Args;

use super::add::builtin;
use super::config_file;
use super::engine::{self, LiveWorker};
use super::error::WorkerError;
use super::lock::{Lockfile, LOCK_PATH};
use super::{names, oci, ProjectLock};

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Worker names to remove (e.g. "pdfkit")
    #[arg(value_name = "WORKER", required = true)]
    workers: Vec<String>,
    /// Skip the confirmation prompt (required when stdin/stderr is not a terminal)
    #[arg(short, long)]
    yes: bool,
}

#[derive(Args, Debug)]
pub struct ClearArgs {
    /// Worker name to clear (omit to clear all)
    #[arg(value_name = "WORKER")]
    worker: Option<String>,
    /// Skip the confirmation prompt
    #[arg(short, long)]
    yes: bool,
}

/// `-y`, or a `[y/N]` answer on a terminal; refused without a terminal.
fn consent(yes: bool, prompt: &str, op: &str) -> Result<(), WorkerError> {
    if yes {
        return Ok(());
    }
    if !std::io::stderr().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(WorkerError::Consent(format!(
            "{op} is destructive; pass -y/--yes for non-interactive use"
        )));
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(WorkerError::Consent("Aborted.".into()))
    }
}

fn not_in_config(name: &str, path: &Path) -> WorkerError {
    WorkerError::NotFound(format!(
        "Worker '{name}' is not in {}. Run `iii worker list` to see the configured workers.",
        path.display()
    ))
}

/// Runs `iii worker remove`; exit 0 iff every name was removed.
pub fn remove(a: RemoveArgs) -> bool {
    if let Err(e) = consent(
        a.yes,
        &format!("Remove worker(s) '{}'? [y/N] ", a.workers.join(", ")),
        "remove",
    ) {
        e.print();
        return false;
    }
    let n = a.workers.len();
    let mut ok = 0;
    for name in &a.workers {
        match remove_one(name) {
            Ok(()) => ok += 1,
            Err(e) => e.print(),
        }
    }
    if n > 1 {
        eprintln!("Removed {ok}/{n} workers. {} failed.", n - ok);
    }
    ok == n
}

fn remove_one(name: &str) -> Result<(), WorkerError> {
    names::validate(name)?;
    let _guard = ProjectLock::acquire()?;
    let path = config_file::config_path();
    let Some(before) = config_file::read(&path)? else {
        return Err(not_in_config(name, &path));
    };
    if !config_file::has_entry(&before, name) {
        return Err(not_in_config(name, &path));
    }
    let after = config_file::remove_entry(&before, name, &path)?;
    let lock_path = Path::new(LOCK_PATH);
    let mut lock = Lockfile::read(lock_path)?;
    config_file::write(&path, &after)?;
    let in_lock = lock
        .as_mut()
        .is_some_and(|l| l.workers.remove(name).is_some());
    if in_lock {
        if let Err(e) = lock.as_ref().expect("checked").write(lock_path) {
            let _ = config_file::write(&path, &before);
            return Err(e.into());
        }
        eprintln!("✓ {name} removed from {} and {LOCK_PATH}", path.display());
    } else {
        eprintln!("✓ {name} removed from {}", path.display());
    }
    Ok(())
}

/// One row of `list`.
struct Row {
    name: String,
    version: String,
    status: &'static str,
}

fn status_of(name: &str, live: Option<&[LiveWorker]>, image: bool) -> &'static str {
    let Some(live) = live else {
        return "stopped";
    };
    // Builtins run inside the engine: up whenever it is.
    if !image && builtin(name).is_some() {
        return "running";
    }
    if live.iter().any(|w| w.is(name)) {
        "running"
    } else {
        "stopped"
    }
}

fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "\n  No workers. Use `iii worker add` to get started.\n\n".into();
    }
    let mut s = String::from("\n");
    s.push_str(&format!(
        "  {:<25} {:<10} {:<10} {}\n",
        "NAME", "VERSION", "PID", "STATUS"
    ));
    s.push_str(&format!(
        "  {} {} {} {}\n",
        "-".repeat(25),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(8)
    ));
    for r in rows {
        s.push_str(&format!(
            "  {:<25} {:<10} {:<10} {}\n",
            r.name, r.version, "-", r.status
        ));
    }
    s.push('\n');
    s
}

/// Runs `iii worker list`: the config's workers with the engine's live status when it is up.
pub async fn list() -> Result<(), WorkerError> {
    let path = config_file::config_path();
    let text = config_file::read(&path)?.unwrap_or_default();
    let lock = Lockfile::read(Path::new(LOCK_PATH)).ok().flatten();
    let live = engine::workers(config_file::manager_port(&text)).await;
    let rows: Vec<Row> = config_file::list_names(&text)
        .into_iter()
        .map(|name| {
            let image = config_file::entry_value(&text, &name, "image").is_some();
            let version = lock
                .as_ref()
                .and_then(|l| l.workers.get(&name))
                .map(|w| w.version.clone())
                .or_else(|| {
                    live.as_ref()?
                        .iter()
                        .find(|w| w.is(&name))
                        .and_then(|w| w.version.clone())
                })
                .unwrap_or_else(|| "-".into());
            let status = status_of(&name, live.as_deref(), image);
            Row {
                name,
                version,
                status,
            }
        })
        .collect();
    eprint!("{}", table(&rows));
    Ok(())
}

/// Runs `iii worker clear`.
pub async fn clear(a: ClearArgs) -> Result<(), WorkerError> {
    let prompt = match &a.worker {
        Some(w) => format!("Clear artifacts for '{w}'? [y/N] "),
        None => "Clear all worker artifacts? [y/N] ".into(),
    };
    if let Some(w) = &a.worker {
        names::validate(w)?;
    }
    consent(a.yes, &prompt, "clear")?;
    let path = config_file::config_path();
    let text = config_file::read(&path)?.unwrap_or_default();
    let live = engine::workers(config_file::manager_port(&text)).await;
    let running = |n: &str| live.as_ref().is_some_and(|l| l.iter().any(|w| w.is(n)));
    match &a.worker {
        Some(name) => {
            if running(name) {
                return Err(WorkerError::Running(format!(
                    "Worker '{name}' is currently running. Stop it first (remove it from {} or stop the engine).",
                    path.display()
                )));
            }
            let in_config = config_file::has_entry(&text, name);
            let freed = match config_file::entry_value(&text, name, "image") {
                Some(r) => oci::remove_cached(&r)?,
                None => None,
            };
            match freed {
                Some(b) => eprintln!("✓ Cleared {:.1} MB", b as f64 / 1e6),
                None if in_config => eprintln!("Nothing to clear for '{name}'."),
                None => {
                    return Err(WorkerError::NotFound(format!(
                        "Worker '{name}' not found: it is not in {} and has no cached artifacts",
                        path.display()
                    )))
                }
            }
        }
        None => {
            let mut images = 0;
            let mut bytes = 0u64;
            for name in config_file::list_names(&text) {
                let Some(r) = config_file::entry_value(&text, &name, "image") else {
                    continue;
                };
                if running(&name) {
                    eprintln!("⚠ Skipped {name} (running)");
                    continue;
                }
                if let Some(b) = oci::remove_cached(&r)? {
                    images += 1;
                    bytes += b;
                }
            }
            eprintln!(
                "✓ Cleared {images} image(s) ({:.1} MB freed)",
                bytes as f64 / 1e6
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        assert_eq!(
            table(&[]),
            "\n  No workers. Use `iii worker add` to get started.\n\n"
        );
        let t = table(&[Row {
            name: "http".into(),
            version: "0.1.0".into(),
            status: "running",
        }]);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(
            lines[1],
            format!("  {:<25} {:<10} {:<10} STATUS", "NAME", "VERSION", "PID")
        );
        assert!(lines[2].starts_with("  -----"));
        assert_eq!(
            lines[3],
            format!("  {:<25} {:<10} {:<10} running", "http", "0.1.0", "-")
        );
    }
}
