//! Local-path workers (`iii-worker-host --path DIR`, workers-and-sandboxes spec section 6): the project
//! is copied into a persistent workspace (`managed/<name>/workspace`, bind-mounted at
//! `/workspace`; `managed/<name>/usr-local` at `/usr/local`, where system-wide `pip install` and
//! `npm install -g` put things, so they survive restarts too), setup + install run once (marker `managed/<name>/.iii-prepared`), then the
//! start script runs with the manifest's env, the entry's flattened `config:` and the engine's
//! address. The host project is never written.

use std::path::{Path, PathBuf};

use iii_oci_rootfs::store::PRESETS;
use iii_oci_rootfs::{ImageStore, Rootfs};

use crate::manifest::{self, Kind, ManifestError, Project};

/// Directories never copied from the project (dependency and build output the sandbox makes
/// itself); the workspace's own copies survive every re-copy.
pub const EXCLUDED: &[&str] = &[
    "node_modules",
    ".venv",
    "target",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".next",
    ".git",
];

/// Where a local project runs inside its sandbox.
pub const WORKSPACE: &str = "/workspace";
/// The marker's file name in the managed dir.
pub const MARKER: &str = ".iii-prepared";

/// Why a local worker cannot be prepared.
#[allow(
    missing_docs,
    reason = "the messages document the variants and their fields"
)]
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("worker_path {}: {message}", path.display())]
    Path { path: PathBuf, message: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no base image for a {kind} project: the python and node presets are built in; set `runtime.base_image` in iii.worker.yaml to an image with {needs}")]
    NoBaseImage {
        kind: &'static str,
        needs: &'static str,
    },
    #[error("base image {reference}: {message}")]
    BaseImage { reference: String, message: String },
    #[error("state directory: {0}")]
    State(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LocalError + 'a {
    move |source| LocalError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Copies `src` into `dst`: entries named in [`EXCLUDED`] are skipped at any depth, and top-level
/// entries of `dst` that are neither excluded nor in `src` are removed first (a file deleted in
/// the project disappears from the workspace; installed dependencies stay). Symlinks are copied
/// as links. Returns the number of files copied.
pub fn sync_workspace(src: &Path, dst: &Path) -> Result<u64, LocalError> {
    std::fs::create_dir_all(dst).map_err(io("creating", dst))?;
    for e in std::fs::read_dir(dst).map_err(io("reading", dst))? {
        let e = e.map_err(io("reading", dst))?;
        let name = e.file_name();
        if EXCLUDED.iter().any(|x| name == *x) {
            continue;
        }
        let p = e.path();
        let ft = e.file_type().map_err(io("reading", &p))?;
        if ft.is_dir() {
            std::fs::remove_dir_all(&p).map_err(io("removing", &p))?;
        } else {
            std::fs::remove_file(&p).map_err(io("removing", &p))?;
        }
    }
    copy_tree(src, dst)
}

fn copy_tree(src: &Path, dst: &Path) -> Result<u64, LocalError> {
    let mut n = 0;
    for e in std::fs::read_dir(src).map_err(io("reading", src))? {
        let e = e.map_err(io("reading", src))?;
        let name = e.file_name();
        if EXCLUDED.iter().any(|x| name == *x) {
            continue;
        }
        let from = e.path();
        let to = dst.join(&name);
        let ft = e.file_type().map_err(io("reading", &from))?;
        if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(io("reading", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io("linking", &to))?;
        } else if ft.is_dir() {
            std::fs::create_dir_all(&to).map_err(io("creating", &to))?;
            n += copy_tree(&from, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(io("copying", &from))?;
            n += 1;
        }
        // Sockets, fifos and devices are not project content.
    }
    Ok(n)
}

/// The base image for a project: `runtime.base_image` (a preset name, a local OCI layout or
/// a registry reference), else the preset for its language.
pub fn base_image(
    store: &ImageStore,
    project: &Project,
    progress: &mut dyn FnMut(&str),
) -> Result<Rootfs, LocalError> {
    let reference = match (&project.base_image, project.kind) {
        (Some(r), _) => r.clone(),
        (None, Kind::Python) => "python".into(),
        (None, Kind::Typescript | Kind::Javascript) => "node".into(),
        (None, Kind::Bun) => {
            return Err(LocalError::NoBaseImage {
                kind: "bun",
                needs: "bun",
            })
        }
        (None, Kind::Rust) => {
            return Err(LocalError::NoBaseImage {
                kind: "rust",
                needs: "cargo (ex. docker.io/library/rust:slim-bookworm)",
            })
        }
    };
    let bad = |message: String| LocalError::BaseImage {
        reference: reference.clone(),
        message,
    };
    if PRESETS.contains(&reference.as_str()) {
        return store
            .build_preset(&reference, progress)
            .map_err(|e| bad(e.to_string()));
    }
    let path = Path::new(&reference);
    if path.exists() {
        return store
            .import_custom(path, progress)
            .map_err(|e| bad(e.to_string()));
    }
    match store.lookup_pulled(&reference) {
        Some(p) => Ok(p.rootfs),
        None => store
            .pull(&reference, progress)
            .map(|p| p.rootfs)
            .map_err(|e| bad(e.to_string())),
    }
}

/// Everything the worker host needs to run a local project.
#[derive(Debug)]
pub struct LocalPlan {
    /// The project.
    pub project: Project,
    /// `managed/<name>`.
    pub managed: PathBuf,
    /// `managed/<name>/workspace`, mounted at [`WORKSPACE`].
    pub workspace: PathBuf,
    /// `managed/<name>/usr-local`, mounted at `/usr/local`.
    pub usr_local: PathBuf,
    /// `managed/<name>/host-ca` holding a copy of the host's CA bundle, mounted read-only at
    /// [`HOST_CA_DIR`]; `None` when the host has no bundle.
    pub host_ca: Option<PathBuf>,
    /// `managed/<name>/.iii-prepared`.
    pub marker: PathBuf,
    /// `setup` then `install` as one shell script, when they have not run yet.
    pub prepare: Option<String>,
    /// The start script.
    pub start: String,
    /// The workload's environment, without the base image's.
    pub env: Vec<(String, String)>,
}

/// Where the host's CA bundle appears in the sandbox.
pub const HOST_CA_DIR: &str = "/etc/ssl/host-ca";

/// The host's CA bundle: `$SSL_CERT_FILE`, else Debian's or Fedora's usual file.
fn host_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

/// The shell prelude every session starts with.
const PRELUDE: &str = "set -e\nexport HOME=${HOME:-/root}\nexport PATH=/usr/local/bin:/usr/bin:/bin:$PATH\nexport LANG=${LANG:-C.UTF-8}\ncd /workspace\n";

/// Checks the project, syncs the workspace and decides what runs. `config_env` is the entry's
/// flattened `config:`; `own` the reserved variables (engine URL, worker name), which nothing
/// overrides.
pub fn plan(
    name: &str,
    dir: &Path,
    config_env: &[(String, String)],
    own: &[(String, String)],
) -> Result<LocalPlan, LocalError> {
    let meta = std::fs::metadata(dir).map_err(|e| LocalError::Path {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    if !meta.is_dir() || !dir.is_absolute() {
        return Err(LocalError::Path {
            path: dir.to_path_buf(),
            message: "must be the absolute path of a directory".into(),
        });
    }
    let project = manifest::load_project(dir)?;
    let managed =
        iii_worker_state::managed_dir(name).map_err(|e| LocalError::State(e.to_string()))?;
    iii_worker_state::create_private_dir(&managed).map_err(|e| LocalError::State(e.to_string()))?;
    let workspace = managed.join("workspace");
    sync_workspace(dir, &workspace)?;
    let usr_local = managed.join("usr-local");
    // The usual skeleton, since the mount hides the image's own (empty on Debian) /usr/local.
    for d in ["bin", "sbin", "lib", "include", "share", "etc", "src"] {
        let p = usr_local.join(d);
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
    }
    // Installs fetch from package registries, which the host may reach only through a
    // TLS-inspecting proxy whose CA the base image lacks: the sandbox trusts what the host
    // trusts (a copy, so the mount never exposes the host's directory).
    let host_ca = match host_ca_bundle() {
        Some(bundle) => {
            let d = managed.join("host-ca");
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
            let to = d.join("ca-certificates.crt");
            std::fs::copy(&bundle, &to).map_err(io("copying", &bundle))?;
            Some(d)
        }
        None => None,
    };
    let marker = managed.join(MARKER);
    let prepare = (!marker.exists()).then(|| {
        let mut s = String::from(PRELUDE);
        for step in [&project.setup, &project.install] {
            if !step.trim().is_empty() {
                s.push_str(step.trim());
                s.push('\n');
            }
        }
        s
    });
    let start = format!("{PRELUDE}exec /bin/sh -c {}\n", shell_quote(&project.start));
    // Debian's Python refuses system-wide pip installs (PEP 668); a sandbox is the
    // environment, so inferred `pip install` lines work. The manifest can override it.
    let mut base: Vec<(String, String)> = Vec::new();
    if project.kind == Kind::Python {
        base.push(("PIP_BREAK_SYSTEM_PACKAGES".into(), "1".into()));
    }
    if host_ca.is_some() {
        let file = format!("{HOST_CA_DIR}/ca-certificates.crt");
        for k in [
            "SSL_CERT_FILE",
            "PIP_CERT",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ] {
            base.push((k.into(), file.clone()));
        }
    }
    let manifest_env: Vec<(String, String)> = project
        .env
        .iter()
        .filter(|(k, _)| !manifest::RESERVED_ENV.contains(&k.as_str()))
        .cloned()
        .collect();
    let config_env: Vec<(String, String)> = config_env
        .iter()
        .filter(|(k, _)| !manifest::RESERVED_ENV.contains(&k.as_str()))
        .cloned()
        .collect();
    let env = crate::merge_env(&[&base, &manifest_env, &config_env, own]);
    Ok(LocalPlan {
        project,
        managed,
        workspace,
        usr_local,
        host_ca,
        marker,
        prepare,
        start,
        env,
    })
}

/// `'…'` with embedded quotes escaped, for `/bin/sh -c`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_skips_excluded_dirs_and_keeps_the_workspaces_own() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("ws"));
        for d in ["node_modules/x", "sub/.venv", "sub/deep", ".git"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        std::fs::write(src.join("main.py"), "print(1)").unwrap();
        std::fs::write(src.join("node_modules/x/i.js"), "").unwrap();
        std::fs::write(src.join("sub/deep/f"), "f").unwrap();
        std::os::unix::fs::symlink("main.py", src.join("link")).unwrap();
        std::fs::create_dir_all(dst.join("node_modules/installed")).unwrap();
        std::fs::write(dst.join("stale.txt"), "").unwrap();
        assert_eq!(sync_workspace(&src, &dst).unwrap(), 2);
        assert!(dst.join("main.py").is_file() && dst.join("sub/deep/f").is_file());
        assert!(!dst.join("node_modules/x").exists() && !dst.join("sub/.venv").exists());
        assert!(!dst.join(".git").exists() && !dst.join("stale.txt").exists());
        assert!(
            dst.join("node_modules/installed").is_dir(),
            "the workspace's deps stay"
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("main.py")
        );
        // Again: idempotent (links and files are replaced, not duplicated).
        assert_eq!(sync_workspace(&src, &dst).unwrap(), 2);
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("a 'b'"), "'a '\\''b'\\'''");
    }
}
