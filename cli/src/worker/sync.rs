//! Registry installs and `iii.lock` replay (workers-and-sandboxes spec section 1.2 registry source,
//! section 1.3, section 1.13, section 1.15, section 2.2.2): `add <name>` resolves a graph through the registry API and
//! installs every node; `sync` installs exactly what the lock pins and never asks the
//! resolver; `sync --frozen` only verifies; `update` refreshes the pins on purpose.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::add::{self, Builtin};
use super::config_file::{self, NewEntry};
use super::error::WorkerError;
use super::lock::{
    drift, manifest_hash, ConfigDrift, LockedWorker, Lockfile, Source, SyncError, WorkerType,
    LOCK_PATH,
};
use super::registry_api::{self, Client, Node, Resolved, CONSENT_NODES};
use super::{engine, names, oci, ProjectLock};

/// The manifest whose dependencies `manifest_hash` covers (section 2.3).
const MANIFEST: &str = "iii.worker.yaml";

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Verify only: change nothing, exit 1 when config.yaml or iii.worker.yaml drifted from iii.lock
    #[arg(long)]
    frozen: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The worker to update (default: every root worker in iii.lock)
    #[arg(value_name = "WORKER")]
    worker: Option<String>,
}

/// `sha256:…` of a pinned reference, if it has one.
fn digest_of(reference: &str) -> Option<&str> {
    reference.split_once('@').map(|(_, d)| d)
}

/// `reference` pinned to `digest` (`repo:tag@sha256:…`; a digest already there is replaced).
pub fn pin(reference: &str, digest: &str) -> String {
    let base = reference.split_once('@').map_or(reference, |(b, _)| b);
    format!("{base}@{digest}")
}

/// The tag of a reference, `latest` without one (the version recorded for an OCI add).
pub fn tag_of(reference: &str) -> String {
    let base = reference.split_once('@').map_or(reference, |(b, _)| b);
    match base.rfind(':') {
        Some(i) if base.rfind('/').is_none_or(|s| i > s) => base[i + 1..].to_string(),
        _ if reference.contains('@') => "pinned".into(),
        _ => "latest".into(),
    }
}

/// The dependencies of `./iii.worker.yaml`: `None` when the file does not exist.
fn manifest_dependencies() -> Result<Option<BTreeMap<String, String>>, String> {
    let text = match std::fs::read_to_string(MANIFEST) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    match doc.get("dependencies") {
        None | Some(serde_yaml::Value::Null) => {}
        Some(serde_yaml::Value::Mapping(m)) => {
            for (k, v) in m {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    return Err("dependencies: every entry must be `name: \"<range>\"`".into());
                };
                out.insert(k.to_string(), v.to_string());
            }
        }
        Some(_) => return Err("dependencies: must be a mapping of name to version range".into()),
    }
    Ok(Some(out))
}

/// `$III_HOME/workers/<name>`: where a binary worker is installed.
fn binary_path(name: &str) -> Result<PathBuf, WorkerError> {
    let home = iii_worker_state::home().map_err(|e| WorkerError::Internal(e.to_string()))?;
    Ok(home.join("workers").join(name))
}

/// The file named `name` inside a tar.gz archive.
fn extract_named(archive: &[u8], name: &str, url: &str) -> Result<Vec<u8>, WorkerError> {
    let bad = |why: String| WorkerError::Registry(format!("cannot unpack {url}: {why}"));
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let is_it = entry.header().entry_type().is_file()
            && entry
                .path()
                .ok()
                .and_then(|p| p.file_name().map(|f| f == name))
                .unwrap_or(false);
        if is_it {
            let mut out = Vec::new();
            entry
                .read_to_end(&mut out)
                .map_err(|e| bad(e.to_string()))?;
            return Ok(out);
        }
    }
    Err(bad(format!("the archive has no file named '{name}'")))
}

/// Installs `bytes` as `$III_HOME/workers/<name>` (temp file, mode 0755, rename); `false`
/// when identical bytes are already there.
fn install_binary(name: &str, bytes: &[u8]) -> Result<bool, WorkerError> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dest = binary_path(name)?;
    if std::fs::read(&dest).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = dest.parent().expect("has a parent").to_path_buf();
    let io = |e: std::io::Error| {
        WorkerError::Internal(format!("cannot install {}: {e}", dest.display()))
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(io)?;
    if dest.is_dir() {
        std::fs::remove_dir_all(&dest).map_err(io)?;
    }
    tmp.persist(&dest).map_err(|e| io(e.error))?;
    Ok(true)
}

/// One node installed: what the config file and the lock get.
async fn install_node(
    client: &Client,
    node: &Node,
    text: &mut String,
    lock: &mut Lockfile,
) -> Result<(), WorkerError> {
    let locked = |kind, source| LockedWorker {
        version: node.version.clone(),
        kind,
        dependencies: node.dependencies.clone(),
        source,
    };
    match node.kind.as_str() {
        "engine" => {
            match add::builtin(&node.name) {
                Some(Builtin::Mandatory) => {}
                Some(Builtin::Configurable { service, .. }) => {
                    let entry = NewEntry {
                        name: node.name.clone(),
                        config: (service == "iii-sandbox").then(add::sandbox_defaults),
                        ..Default::default()
                    };
                    *text = config_file::upsert_entry(text, &entry)?;
                }
                None => {
                    return Err(WorkerError::Registry(format!(
                        "the registry says '{}' is built into the engine, but this engine has no builtin worker of that name",
                        node.name
                    )))
                }
            }
            lock.workers
                .insert(node.name.clone(), locked(WorkerType::Engine, None));
            eprintln!("  ✓ {} {} (built into the engine)", node.name, node.version);
        }
        "image" => {
            let reference = node.image.clone().unwrap_or_default();
            eprintln!("  Pulling {reference}...");
            let pulled = oci::pull(&reference, &mut |line| eprintln!("    {line}"))?;
            if let Some(d) = digest_of(&reference) {
                if d != pulled.digest {
                    return Err(WorkerError::OciPull(format!(
                        "{reference} resolved to {}, not the digest the registry pinned",
                        pulled.digest
                    )));
                }
            }
            let pinned = pin(&reference, &pulled.digest);
            if pinned != reference {
                // Records the pinned reference too (the store has the bytes by digest), so
                // the worker host and `sync` find the entry's exact image offline.
                oci::pull(&pinned, &mut |_| {})?;
            }
            config_file::entry_config(text, &node.name)?;
            let entry = NewEntry {
                name: node.name.clone(),
                image: Some(pinned.clone()),
                worker_path: None,
                config: oci::env_config(&pulled.env),
            };
            *text = config_file::upsert_entry(text, &entry)?;
            lock.workers.insert(
                node.name.clone(),
                locked(
                    WorkerType::Image,
                    Some(Source::Image {
                        image: pinned.clone(),
                    }),
                ),
            );
            eprintln!("  ✓ {} {} (image {pinned})", node.name, node.version);
        }
        "binary" => {
            let target = registry_api::host_target();
            let Some(art) = node.binaries.get(target) else {
                let avail: Vec<&str> = node.binaries.keys().map(String::as_str).collect();
                return Err(WorkerError::Registry(format!(
                    "Platform '{target}' is not supported for worker '{}'. Available: {}",
                    node.name,
                    avail.join(", ")
                )));
            };
            for a in node.binaries.values() {
                registry_api::check_artifact_url(&a.url)?;
            }
            eprintln!("  Downloading {}...", art.url);
            let archive = client.download(&art.url, &art.sha256).await?;
            let bytes = extract_named(&archive, &node.name, &art.url)?;
            install_binary(&node.name, &bytes)?;
            lock.workers.insert(
                node.name.clone(),
                locked(
                    WorkerType::Binary,
                    Some(Source::Binary {
                        artifacts: node.binaries.clone(),
                    }),
                ),
            );
            eprintln!(
                "  ✓ {} {} installed at {} (sha256 verified). This engine does not run binary workers yet: \
no config entry is written; run the binary yourself with III_URL set to the engine",
                node.name,
                node.version,
                binary_path(&node.name)?.display()
            );
        }
        other => {
            return Err(WorkerError::Registry(format!(
                "'{}' is a {other} worker; this engine does not support {other} workers",
                node.name
            )))
        }
    }
    Ok(())
}

/// Sets `manifest_hash` + `declared_dependencies` from `./iii.worker.yaml` when it exists.
fn stamp_manifest(lock: &mut Lockfile) {
    match manifest_dependencies() {
        Ok(Some(deps)) => {
            lock.manifest_hash = Some(manifest_hash(&deps));
            lock.declared_dependencies = Some(deps);
        }
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: {MANIFEST} is not valid ({e}); iii.lock keeps its previous manifest_hash"
        ),
    }
}

/// A graph bigger than [`CONSENT_NODES`] needs `--yes` (or a `y` on a terminal).
fn consent(r: &Resolved, yes: bool) -> Result<(), WorkerError> {
    if r.graph.len() <= CONSENT_NODES || yes {
        return Ok(());
    }
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    eprintln!(
        "warning: this worker resolves to {} dependencies ({} workers total, {} dependency edges).",
        r.graph.len() - 1,
        r.graph.len(),
        r.edges.len()
    );
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("Continue installing all {} workers? [y/N] ", r.graph.len());
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Ok(());
        }
    }
    Err(WorkerError::Consent(format!(
        "'{}' resolves to {} workers; pass --yes to install them all",
        r.root.name,
        r.graph.len()
    )))
}

/// `--force`: stops the worker when the engine runs it, then deletes its artifacts (the
/// binary, the cached image of its entry and of its lock pin, `managed/<name>/`).
pub async fn force_cleanup(name: &str, text: &str) -> Result<(), WorkerError> {
    let port = config_file::manager_port(text);
    if engine::reachable(port).await {
        let stop = async {
            let mut c = crate::trigger::Client::connect(&format!("ws://127.0.0.1:{port}"))
                .await
                .ok()?;
            let r = c
                .call(
                    "worker::stop",
                    &serde_json::json!({"name": name}),
                    None,
                    Duration::from_secs(15),
                )
                .await;
            c.close().await;
            Some(r.is_ok())
        };
        if tokio::time::timeout(Duration::from_secs(20), stop)
            .await
            .ok()
            .flatten()
            != Some(true)
        {
            eprintln!(
                "warning: could not stop {name} through the engine; removing its artifacts anyway"
            );
        }
    }
    let mut freed = 0u64;
    let bin = binary_path(name)?;
    if let Ok(m) = std::fs::symlink_metadata(&bin) {
        freed += if m.is_dir() {
            tree_bytes(&bin)
        } else {
            m.len()
        };
        let r = if m.is_dir() {
            std::fs::remove_dir_all(&bin)
        } else {
            std::fs::remove_file(&bin)
        };
        r.map_err(|e| WorkerError::Internal(format!("cannot remove {}: {e}", bin.display())))?;
    }
    let mut refs: Vec<String> = config_file::entry_value(text, name, "image")
        .into_iter()
        .collect();
    if let Ok(Some(lock)) = Lockfile::read(Path::new(LOCK_PATH)) {
        if let Some(Source::Image { image }) = lock.workers.get(name).and_then(|w| w.source.clone())
        {
            refs.push(image);
        }
    }
    for r in refs {
        freed += oci::remove_cached(&r)?.unwrap_or(0);
    }
    let managed =
        iii_worker_state::managed_dir(name).map_err(|e| WorkerError::Internal(e.to_string()))?;
    if managed.exists() {
        freed += tree_bytes(&managed);
        std::fs::remove_dir_all(&managed).map_err(|e| {
            WorkerError::Internal(format!("cannot remove {}: {e}", managed.display()))
        })?;
    }
    eprintln!("✓ Cleared {:.1} MB", freed as f64 / 1e6);
    Ok(())
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Options of a registry install.
pub struct RegistryAdd<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
    pub force: bool,
    pub reset_config: bool,
    pub yes: bool,
    pub wait: bool,
}

/// `iii worker add <name>[@version]` for a registry name: resolve, install every node in
/// graph order, then write config.yaml and iii.lock once (config restored if the lock fails).
pub async fn add_registry(o: RegistryAdd<'_>) -> Result<(), WorkerError> {
    let client = Client::new()?;
    eprintln!(
        "Resolving {}{} via {}...",
        o.name,
        o.version.map(|v| format!("@{v}")).unwrap_or_default(),
        client.base()
    );
    let r = client.resolve(o.name, o.version).await?;
    consent(&r, o.yes)?;
    let port;
    let root_is_image;
    {
        let _guard = ProjectLock::acquire()?;
        let path = config_file::config_path();
        let before = config_file::read(&path)?;
        let mut text = before.clone().unwrap_or_default();
        let mut lock = Lockfile::read(Path::new(LOCK_PATH))?.unwrap_or_default();
        if o.force {
            force_cleanup(&r.root.name, &text).await?;
            if o.reset_config && config_file::has_entry(&text, &r.root.name) {
                text = config_file::remove_entry(&text, &r.root.name, &path)?;
            }
        }
        for node in &r.graph {
            install_node(&client, node, &mut text, &mut lock).await?;
        }
        stamp_manifest(&mut lock);
        add::write_both(&path, before.as_deref(), &text, &lock)?;
        eprintln!(
            "✓ {} {} added ({} worker(s)); {} and {LOCK_PATH} written",
            r.root.name,
            r.root.version,
            r.graph.len(),
            path.display()
        );
        port = config_file::manager_port(&text);
        root_is_image = r
            .graph
            .iter()
            .any(|n| n.name == r.root.name && n.kind == "image");
    }
    if o.wait && root_is_image {
        engine::wait_ready(&r.root.name, port, add::ready_timeout()).await;
    }
    Ok(())
}

/// The differences between the config file's workers and the lock (the `verify` check).
fn config_drift(text: &str, lock: &Lockfile) -> Vec<ConfigDrift> {
    let in_config = config_file::list_names(text);
    let mut out = Vec::new();
    for name in &in_config {
        if config_file::entry_value(text, name, "worker_path").is_some() {
            continue;
        }
        let locked = lock.workers.get(name);
        match (config_file::entry_value(text, name, "image"), locked) {
            (Some(image), Some(w)) => {
                let pinned = match &w.source {
                    Some(Source::Image { image }) => image.clone(),
                    _ => String::new(),
                };
                let same_repo = pinned.split_once('@').map(|(b, _)| b)
                    == Some(image.split_once('@').map_or(image.as_str(), |(b, _)| b));
                let same_digest = digest_of(&image).is_none_or(|d| digest_of(&pinned) == Some(d));
                if !(same_repo && same_digest) {
                    out.push(ConfigDrift::Image {
                        name: name.clone(),
                        locked: pinned,
                        config: image,
                    });
                }
            }
            (Some(_), None) => out.push(ConfigDrift::NotLocked { name: name.clone() }),
            // Builtins need no pin; anything else must be locked.
            (None, None) if add::builtin(name).is_none() => {
                out.push(ConfigDrift::NotLocked { name: name.clone() })
            }
            _ => {}
        }
    }
    for (name, w) in &lock.workers {
        let configured_kind = matches!(w.kind, WorkerType::Image)
            || (w.kind == WorkerType::Engine
                && !matches!(add::builtin(name), Some(Builtin::Mandatory)));
        if configured_kind && !in_config.contains(name) {
            out.push(ConfigDrift::NotConfigured { name: name.clone() });
        }
    }
    out
}

fn read_lock_required() -> Result<Lockfile, WorkerError> {
    Lockfile::read(Path::new(LOCK_PATH))?.ok_or_else(|| {
        WorkerError::Lockfile(format!(
            "no {LOCK_PATH} in this directory: nothing to sync (`iii worker add` writes it)"
        ))
    })
}

/// The manifest checks of `sync --frozen` (only when the lock records a manifest_hash).
fn manifest_check(lock: &Lockfile) -> Result<(), SyncError> {
    if lock.manifest_hash.is_none() {
        return Ok(());
    }
    let declared = lock.declared_dependencies.clone().unwrap_or_default();
    let deps = match manifest_dependencies() {
        Ok(Some(d)) => d,
        Ok(None) => return Err(SyncError::ManifestMissing(declared)),
        Err(e) => return Err(SyncError::CorruptManifest(e)),
    };
    let d = drift(&deps, &declared);
    if !d.is_empty() {
        return Err(SyncError::Drift(d));
    }
    Ok(())
}

/// Prints a byte-stable block and fails.
fn fail(e: SyncError) -> bool {
    eprintln!("{e}");
    false
}

/// `iii worker sync [--frozen]`; exit 0 iff everything matched / installed.
pub async fn sync(a: SyncArgs) -> bool {
    let lock = match read_lock_required() {
        Ok(l) => l,
        Err(e) => {
            e.print();
            return false;
        }
    };
    let path = config_file::config_path();
    let text = match config_file::read(&path) {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            WorkerError::from(e).print();
            return false;
        }
    };
    if a.frozen {
        if let Err(e) = manifest_check(&lock) {
            return fail(e);
        }
    }
    let d = config_drift(&text, &lock);
    if !d.is_empty() {
        return fail(SyncError::ConfigDrift(path.display().to_string(), d));
    }
    if a.frozen {
        eprintln!("✓ {} matches iii.lock", path.display());
        return true;
    }
    let _guard = match ProjectLock::acquire() {
        Ok(g) => g,
        Err(e) => {
            e.print();
            return false;
        }
    };
    let client = match Client::new() {
        Ok(c) => c,
        Err(e) => {
            WorkerError::from(e).print();
            return false;
        }
    };
    let (mut installed, mut current, mut skipped, mut failed) = (0, 0, 0, 0);
    for (name, w) in &lock.workers {
        match replay(&client, name, w, &text).await {
            Ok(Replay::Installed) => installed += 1,
            Ok(Replay::Current) => current += 1,
            Ok(Replay::Skipped) => skipped += 1,
            Err(e) => {
                e.print();
                failed += 1;
            }
        }
    }
    for name in config_file::list_names(&text) {
        if !lock.workers.contains_key(&name) {
            skipped += 1;
            eprintln!("  {name}: skipped (outside the iii.lock replay contract)");
        }
    }
    eprintln!("✓ Synced registry-managed workers from iii.lock");
    eprintln!("installed: {installed}, already current: {current}, repaired: 0, skipped: {skipped}, failed: {failed}");
    failed == 0
}

enum Replay {
    Installed,
    Current,
    Skipped,
}

/// Installs one lock entry exactly as pinned.
async fn replay(
    client: &Client,
    name: &str,
    w: &LockedWorker,
    text: &str,
) -> Result<Replay, WorkerError> {
    match &w.source {
        None => Ok(Replay::Skipped),
        Some(Source::Image { image: pinned }) => {
            // The worker host starts the entry's reference: that is what must hold the pin.
            let configured =
                config_file::entry_value(text, name, "image").unwrap_or_else(|| pinned.clone());
            let want = digest_of(pinned).unwrap_or_default();
            let store = iii_oci_rootfs::ImageStore::open(None)
                .map_err(|e| WorkerError::OciPull(format!("cannot open the image store: {e}")))?;
            if store
                .lookup_pulled(&configured)
                .is_some_and(|p| p.digest == want)
            {
                eprintln!("  {name}: already current ({pinned})");
                return Ok(Replay::Current);
            }
            // Exactly the pinned bytes first; a tag reference is then checked against the pin.
            oci::pull(pinned, &mut |l| eprintln!("    {l}"))?;
            if configured != *pinned {
                let p = oci::pull(&configured, &mut |l| eprintln!("    {l}"))?;
                if p.digest != want {
                    return Err(WorkerError::OciPull(format!(
                        "{name}: {configured} now resolves to {}, but iii.lock pins {want}; run `iii worker update {name}` to take the new image, or write `image: {pinned}` in the config file",
                        p.digest
                    )));
                }
            }
            eprintln!("  {name}: installed {pinned}");
            Ok(Replay::Installed)
        }
        Some(Source::Binary { artifacts }) => {
            let target = registry_api::host_target();
            let art = artifacts.get(target).ok_or_else(|| {
                WorkerError::Lockfile(format!(
                    "iii.lock is missing binary artifact(s) for target {target}: {name} (available: {})",
                    artifacts.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let archive = client.download(&art.url, &art.sha256).await?;
            let bytes = extract_named(&archive, name, &art.url)?;
            if install_binary(name, &bytes)? {
                eprintln!("  {name}: installed {}", binary_path(name)?.display());
                Ok(Replay::Installed)
            } else {
                eprintln!("  {name}: already current");
                Ok(Replay::Current)
            }
        }
        Some(Source::Bundle { .. }) => Err(WorkerError::Registry(format!(
            "{name}: bundle replay is not yet implemented. Fix: re-install with `iii worker add`"
        ))),
    }
}

/// `iii worker update [WORKER]`: resolves `latest` again and installs the graph.
pub async fn update(a: UpdateArgs) -> bool {
    match update_inner(a).await {
        Ok(ok) => ok,
        Err(e) => {
            e.print();
            false
        }
    }
}

async fn update_inner(a: UpdateArgs) -> Result<bool, WorkerError> {
    if let Some(w) = &a.worker {
        names::validate(w)?;
    }
    let Some(lock) = Lockfile::read(Path::new(LOCK_PATH))? else {
        return match &a.worker {
            Some(w) => Err(WorkerError::NotFound(format!(
                "Worker '{w}' is not in iii.lock"
            ))),
            None => {
                eprintln!("no iii.lock: nothing to update");
                Ok(true)
            }
        };
    };
    let targets: Vec<String> = match &a.worker {
        Some(w) if !lock.workers.contains_key(w) => {
            return Err(WorkerError::NotFound(format!(
                "Worker '{w}' is not in iii.lock"
            )))
        }
        Some(w) => vec![w.clone()],
        None => {
            let deps: std::collections::HashSet<&String> = lock
                .workers
                .values()
                .flat_map(|w| w.dependencies.keys())
                .collect();
            let roots: Vec<String> = lock
                .workers
                .keys()
                .filter(|n| !deps.contains(n))
                .cloned()
                .collect();
            if roots.is_empty() {
                lock.workers.keys().cloned().collect()
            } else {
                roots
            }
        }
    };
    let mut ok = true;
    for name in targets {
        let before = lock.workers.get(&name).map(|w| w.version.clone());
        let r = if add::builtin(&name).is_some() {
            eprintln!("{name} is built into the engine: nothing to update");
            Ok(())
        } else {
            update_one(&name).await
        };
        match r {
            Ok(()) => {
                let after = Lockfile::read(Path::new(LOCK_PATH))?
                    .and_then(|l| l.workers.get(&name).map(|w| w.version.clone()));
                if before != after {
                    eprintln!(
                        "✓ {name}: {} → {}",
                        before.unwrap_or_default(),
                        after.unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                e.print();
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// One worker: an OCI entry with a tag is re-pulled and re-pinned; a registry worker is
/// resolved at `latest` and reinstalled.
async fn update_one(name: &str) -> Result<(), WorkerError> {
    let path = config_file::config_path();
    let text = config_file::read(&path)?.unwrap_or_default();
    if let Some(image) = config_file::entry_value(&text, name, "image") {
        if digest_of(&image).is_none() {
            let _guard = ProjectLock::acquire()?;
            eprintln!("Pulling {image}...");
            let p = oci::pull(&image, &mut |l| eprintln!("  {l}"))?;
            let mut lock = Lockfile::read(Path::new(LOCK_PATH))?.unwrap_or_default();
            lock.workers
                .insert(name.into(), oci_locked(&image, &p.digest));
            lock.write(Path::new(LOCK_PATH))?;
            return Ok(());
        }
    }
    add_registry(RegistryAdd {
        name,
        version: None,
        force: false,
        reset_config: false,
        yes: true,
        wait: false,
    })
    .await
}

/// The lock entry of a direct OCI add: the reference pinned to the pulled digest.
pub fn oci_locked(reference: &str, digest: &str) -> LockedWorker {
    LockedWorker {
        version: tag_of(reference),
        kind: WorkerType::Image,
        dependencies: BTreeMap::new(),
        source: Some(Source::Image {
            image: pin(reference, digest),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_tags() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(pin("r.io/a/b:1", &d), format!("r.io/a/b:1@{d}"));
        assert_eq!(
            pin(&format!("r.io/a/b:1@sha256:{}", "b".repeat(64)), &d),
            format!("r.io/a/b:1@{d}")
        );
        assert_eq!(tag_of("localhost:5000/a/b:1.2"), "1.2");
        assert_eq!(tag_of("localhost:5000/a/b"), "latest");
        assert_eq!(tag_of(&format!("r/a@{d}")), "pinned");
    }

    #[test]
    fn config_drift_lines() {
        let d = format!("sha256:{}", "a".repeat(64));
        let mut lock = Lockfile::default();
        lock.workers
            .insert("img".into(), oci_locked("r.io/a/img:1", &d));
        lock.workers
            .insert("http".into(), LockedWorker::engine("1"));
        let text = "workers:\n  - name: http\n  - name: img\n    image: r.io/a/img:1\n";
        assert!(config_drift(text, &lock).is_empty());
        let text =
            "workers:\n  - name: img\n    image: r.io/a/img:2\n  - name: other\n    image: r/o:1\n";
        assert_eq!(
            config_drift(text, &lock),
            vec![
                ConfigDrift::Image {
                    name: "img".into(),
                    locked: format!("r.io/a/img:1@{d}"),
                    config: "r.io/a/img:2".into()
                },
                ConfigDrift::NotLocked {
                    name: "other".into()
                },
                ConfigDrift::NotConfigured {
                    name: "http".into()
                },
            ]
        );
    }

    #[test]
    fn archives_yield_the_named_file() {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "dist/hello", &b"abc"[..]).unwrap();
        let gz = b.into_inner().unwrap().finish().unwrap();
        assert_eq!(extract_named(&gz, "hello", "u").unwrap(), b"abc");
        assert!(extract_named(&gz, "other", "u")
            .unwrap_err()
            .to_string()
            .contains("no file named 'other'"));
    }
}
