//! Hot reload of `config.yaml` (PROTOCOL.md §7.6, without its sharp edge).
//!
//! The file's directory is watched (editors replace files rather than write them in place),
//! events for other files are ignored, and a burst of events is debounced. The new text is
//! parsed and validated as a whole by the same code as at start-up; a file that fails is
//! rejected as a whole, logged with the file, line and key, and the engine keeps running on
//! the configuration it has. Upstream shuts down here.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use iii_core::CancellationToken;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{ConfigSource, EngineConfig};
use crate::supervisor::Supervisor;

/// Quiet time after the last event before the file is read: one save is often several events.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(300);
/// Polling interval where the OS watcher is unavailable (e.g. out of inotify watches).
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Watches `path` until `stop`, applying each valid new version through `sup`.
pub(crate) async fn watch_config(sup: Weak<Supervisor>, path: PathBuf, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let name = path.file_name().map(|n| n.to_os_string());
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let handler = move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                let _ = tx.send(());
            }
        }
    };
    let _watcher: Box<dyn Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Box::new(w),
            Err(e) => match poll_watcher(handler, &dir, &e) {
                Some(w) => w,
                None => return,
            },
        },
        Err(e) => match poll_watcher(handler, &dir, &e) {
            Some(w) => w,
            None => return,
        },
    };
    tracing::info!(config = %path.display(), "watching the configuration file for changes");
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = rx.recv() => if ev.is_none() { return },
        }
        // Debounce: wait until the events stop.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(DEBOUNCE) => break,
                ev = rx.recv() => if ev.is_none() { return },
            }
        }
        let Ok(bytes) = std::fs::read(&path) else {
            // Deleted or being replaced; the next event brings the new file.
            continue;
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last = Some(bytes);
        let Some(sup) = sup.upgrade() else { return };
        reload(&sup, &path).await;
    }
}

fn poll_watcher(
    handler: impl notify::EventHandler,
    dir: &Path,
    why: &notify::Error,
) -> Option<Box<dyn Watcher + Send>> {
    let cfg = notify::Config::default().with_poll_interval(POLL_EVERY);
    match notify::PollWatcher::new(handler, cfg) {
        Ok(mut w) => match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!("file events unavailable ({why}); polling the configuration file");
                Some(Box::new(w))
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch {}: {e}; config.yaml changes need a restart",
                    dir.display()
                );
                None
            }
        },
        Err(e) => {
            tracing::warn!(
                "cannot watch {}: {e}; config.yaml changes need a restart",
                dir.display()
            );
            None
        }
    }
}

/// Parses, validates and applies the file at `path` once.
pub(crate) async fn reload(sup: &Supervisor, path: &Path) {
    let started = std::time::Instant::now();
    let cfg = match EngineConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                config = %path.display(),
                "configuration change rejected; still running on the previous configuration: {e}"
            );
            return;
        }
    };
    debug_assert!(matches!(cfg.source, ConfigSource::File(_)));
    if cfg.core != *sup.core().settings() {
        tracing::warn!("top-level settings (registration_namespace_grace_ms) apply at next start");
    }
    match sup.reload(cfg).await {
        Ok(summary) => tracing::info!(
            config = %path.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "configuration reloaded: {summary}"
        ),
        Err(summary) => tracing::error!(
            config = %path.display(),
            "configuration reloaded with errors: {summary}"
        ),
    }
}
