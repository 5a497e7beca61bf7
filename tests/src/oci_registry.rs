//! A throwaway OCI registry for the tests that push and pull images: Debian's `docker-registry`
//! started by `tests/registry.sh` on a free loopback port with its own state dir, stopped (and
//! its storage removed) on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the registry tests can run here: `docker-registry` on `PATH` (or
/// `III_REGISTRY_TESTS=1`, which makes a missing one a failure instead of a skip), busybox-static
/// and `mkfs.erofs` (the image store's lowers). Prints why when they cannot.
pub fn enabled() -> bool {
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    };
    let forced = std::env::var("III_REGISTRY_TESTS").as_deref() == Ok("1");
    let ok = (forced || on_path("docker-registry"))
        && Path::new("/bin/busybox").is_file()
        && on_path("mkfs.erofs");
    if !ok {
        eprintln!(
            "skipped: needs docker-registry (or III_REGISTRY_TESTS=1), /bin/busybox and mkfs.erofs"
        );
    }
    ok
}

/// A running registry.
pub struct Registry {
    state: PathBuf,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("registry.sh")
}

impl Registry {
    /// Starts one (installing `docker-registry` if missing); panics with the script's output
    /// when it cannot.
    pub fn start() -> Registry {
        let state = std::env::temp_dir().join(format!("iii-reg-{}", uuid::Uuid::new_v4()));
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .env("III_REGISTRY_STATE", &state)
            .output()
            .expect("run registry.sh");
        assert!(
            out.status.success(),
            "registry.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Registry { state, addr }
    }
}

impl Registry {
    /// Where the registry keeps blob `digest` (`sha256:…`): tests tamper with it.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.state
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("III_REGISTRY_STATE", &self.state)
            .status();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
