//! `iii update [COMMAND] [--list-targets]`: replaces `iii` and the binaries it manages with the
//! ones a release manifest names.
//!
//! The manifest lives at `$III_RELEASES_URL` (this project has no release host of its own, so the
//! variable is required). It is JSON:
//!
//! ```json
//! {"version": "0.2.0",
//!  "targets": {"iii": {"x86_64-unknown-linux-gnu": {"url": "iii-x86_64", "sha256": "…"}}}}
//! ```
//!
//! `url` may be relative to the manifest's own URL. Every download is checked against its sha256
//! before anything on disk changes, and lands by rename from a temp file in the same directory,
//! so a failed or interrupted update leaves the old binary as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The environment variable naming the release manifest's URL.
pub const RELEASES_URL_VAR: &str = "III_RELEASES_URL";

/// What `iii update` can replace besides itself: the binaries this project ships beside `iii`
/// (the engine looks for them there first).
const MANAGED: &[(&str, &str)] = &[
    ("iii-sandbox", "the sandbox daemon"),
    (
        "iii-worker-host",
        "the microVM host of image and local workers",
    ),
    ("iii-vmm", "the microVM monitor"),
    ("iii-init", "the guest init of sandboxes and worker VMs"),
];

#[derive(clap::Args)]
pub struct UpdateArgs {
    /// Specific command or binary to update (e.g., "self", "iii-sandbox"). Use "self" or "iii" to
    /// update only iii. If omitted, updates iii and all installed binaries
    #[arg(value_name = "COMMAND")]
    command: Option<String>,
    /// List the targets you can pass to iii update [COMMAND] and exit
    #[arg(long)]
    list_targets: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("unknown update target `{0}`; run `iii update --list-targets` to see the targets")]
    UnknownTarget(String),
    #[error(
        "no release source is configured: set {} to the URL of a release manifest",
        RELEASES_URL_VAR
    )]
    NoSource,
    #[error("{}={url} is not a valid URL: {reason}", RELEASES_URL_VAR)]
    BadUrl { url: String, reason: String },
    #[error(
        "cannot reach the release source {url} (set by {}): {reason}",
        RELEASES_URL_VAR
    )]
    Unreachable { url: String, reason: String },
    #[error("the release manifest at {url} is invalid: {reason}")]
    BadManifest { url: String, reason: String },
    #[error(
        "the release manifest offers iii {offered}, older than this iii {current}: rollback is not \
         supported; reinstall the older version manually"
    )]
    Rollback { offered: String, current: String },
    #[error("the release manifest has no `{target}` binary for {triple}")]
    NoArtifact { target: String, triple: String },
    #[error("checksum mismatch for {target} from {url}: expected sha256 {expected}, got {actual}; {path} was left unchanged")]
    Checksum {
        target: String,
        url: String,
        expected: String,
        actual: String,
        path: String,
    },
    #[error("cannot replace {path}: {source}")]
    Replace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the running iii binary: {0}")]
    SelfPath(#[source] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

#[derive(Deserialize)]
struct Manifest {
    version: String,
    /// target → triple → artifact.
    targets: BTreeMap<String, BTreeMap<String, Artifact>>,
}

#[derive(Deserialize)]
struct Artifact {
    url: String,
    sha256: String,
}

pub fn main(args: UpdateArgs) -> ExitCode {
    if args.list_targets {
        println!("self\tiii itself (alias: iii)");
        for (name, what) in MANAGED {
            println!("{name}\t{what}");
        }
        return ExitCode::SUCCESS;
    }
    match run(args.command.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One binary to replace: its manifest name and where it lives.
struct Target {
    name: &'static str,
    path: PathBuf,
}

fn run(command: Option<&str>) -> Result<(), UpdateError> {
    let exe = std::env::current_exe().map_err(UpdateError::SelfPath)?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let targets: Vec<Target> = match command {
        Some("self" | "iii") => vec![Target {
            name: "iii",
            path: exe,
        }],
        Some(other) => {
            let name = MANAGED
                .iter()
                .map(|(n, _)| *n)
                .find(|n| *n == other)
                .ok_or_else(|| UpdateError::UnknownTarget(other.to_string()))?;
            // Named explicitly: installed beside iii if it is not there yet.
            vec![Target {
                name,
                path: dir.join(name),
            }]
        }
        // Everything: iii, and each managed binary that is installed beside it.
        None => std::iter::once(Target {
            name: "iii",
            path: exe,
        })
        .chain(
            MANAGED
                .iter()
                .map(|(n, _)| Target {
                    name: n,
                    path: dir.join(n),
                })
                .filter(|t| t.path.is_file()),
        )
        .collect(),
    };
    let raw = std::env::var(RELEASES_URL_VAR).unwrap_or_default();
    if raw.trim().is_empty() {
        return Err(UpdateError::NoSource);
    }
    let base = reqwest::Url::parse(raw.trim()).map_err(|e| UpdateError::BadUrl {
        url: raw.clone(),
        reason: e.to_string(),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UpdateError::Runtime)?;
    rt.block_on(update(base, targets))
}

async fn update(base: reqwest::Url, targets: Vec<Target>) -> Result<(), UpdateError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| UpdateError::Unreachable {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
    let body = fetch(&http, &base).await?;
    let manifest: Manifest =
        serde_json::from_slice(&body).map_err(|e| UpdateError::BadManifest {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
    let offered =
        semver::Version::parse(&manifest.version).map_err(|e| UpdateError::BadManifest {
            url: base.to_string(),
            reason: format!("`version` {:?}: {e}", manifest.version),
        })?;
    let current = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("own version");
    if offered < current {
        return Err(UpdateError::Rollback {
            offered: offered.to_string(),
            current: current.to_string(),
        });
    }
    let triple = host_triple();
    for t in targets {
        let art = manifest
            .targets
            .get(t.name)
            .and_then(|m| m.get(&triple))
            .ok_or_else(|| UpdateError::NoArtifact {
                target: t.name.to_string(),
                triple: triple.clone(),
            })?;
        let expected = art.sha256.trim().to_ascii_lowercase();
        // iii knows its own version; a managed binary is current when its bytes are the release's.
        let current_already = if t.name == "iii" {
            offered == current
        } else {
            std::fs::read(&t.path).is_ok_and(|b| hex(&Sha256::digest(&b)) == expected)
        };
        if current_already {
            println!("{} is up to date ({offered})", t.name);
            continue;
        }
        let url = base.join(&art.url).map_err(|e| UpdateError::BadManifest {
            url: base.to_string(),
            reason: format!("`{}` url {:?}: {e}", t.name, art.url),
        })?;
        let bytes = fetch(&http, &url).await?;
        let actual = hex(&Sha256::digest(&bytes));
        if actual != expected {
            return Err(UpdateError::Checksum {
                target: t.name.to_string(),
                url: url.to_string(),
                expected,
                actual,
                path: t.path.display().to_string(),
            });
        }
        replace(&t.path, &bytes).map_err(|source| UpdateError::Replace {
            path: t.path.display().to_string(),
            source,
        })?;
        println!("updated {} to {offered} ({})", t.name, t.path.display());
    }
    Ok(())
}

async fn fetch(http: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, UpdateError> {
    let unreachable = |reason: String| UpdateError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(unreachable(format!("HTTP {}", resp.status())));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    Ok(body.to_vec())
}

/// reqwest's top-level message ("error sending request") hides the cause a user can act on.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Writes `bytes` to a temp file beside `path`, with `path`'s mode (0755 for a new binary),
/// fsyncs it, renames it over `path` and fsyncs the directory.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o755);
    let mut tmp = tempfile::Builder::new()
        .prefix(".iii-update-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The target triple release manifests key binaries by, e.g. `x86_64-unknown-linux-gnu`.
fn host_triple() -> String {
    let arch = std::env::consts::ARCH;
    let rest = if cfg!(target_os = "macos") {
        "apple-darwin"
    } else if cfg!(all(target_os = "linux", target_env = "musl")) {
        "unknown-linux-musl"
    } else if cfg!(target_os = "linux") {
        "unknown-linux-gnu"
    } else {
        std::env::consts::OS
    };
    format!("{arch}-{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_mode_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        replace(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn triple_names_this_host() {
        let t = host_triple();
        assert!(t.starts_with(std::env::consts::ARCH), "{t}");
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(t.ends_with("-unknown-linux-gnu"), "{t}");
        }
    }
}
