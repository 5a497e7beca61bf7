//! Shared test support: builds the fixture plugins once per test binary and
//! provides a plugin host.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use iii_plugin_host::{HostConfig, PluginHost};

pub struct Fixtures {
    pub hostile: PathBuf,
    pub wrong_world: PathBuf,
    pub policy: PathBuf,
}

fn cargo_build(manifest: &Path, target_dir: &Path, packages: &[&str], target: &str) {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build").arg("--manifest-path").arg(manifest);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(["--release", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the fixtures");
    assert!(status.success(), "building fixtures for {target} failed; run tests/plugins.sh (it installs the wasm targets)");
}

/// Builds the fixture plugins (hostile, wrong-world for wasm32-wasip2; the
/// Extism policy for wasm32-unknown-unknown) into the test target dir.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/Cargo.toml");
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-fixtures");
        cargo_build(
            &manifest,
            &target_dir,
            &["fixture-hostile", "fixture-wrong-world"],
            "wasm32-wasip2",
        );
        cargo_build(
            &manifest,
            &target_dir,
            &["fixture-policy"],
            "wasm32-unknown-unknown",
        );
        Fixtures {
            hostile: target_dir.join("wasm32-wasip2/release/fixture_hostile.wasm"),
            wrong_world: target_dir.join("wasm32-wasip2/release/fixture_wrong_world.wasm"),
            policy: target_dir.join("wasm32-unknown-unknown/release/fixture_policy.wasm"),
        }
    })
}

/// A host with a small restart budget and a per-binary compile cache.
pub fn host() -> PluginHost {
    static H: OnceLock<PluginHost> = OnceLock::new();
    H.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-code-cache");
        PluginHost::new(HostConfig {
            cache_dir: Some(cache),
            max_restarts: 3,
            max_instances: 64,
            max_memory_mb: 512,
            restart_window: Duration::from_secs(600),
            ..HostConfig::default()
        })
        .expect("plugin host")
    })
    .clone()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
