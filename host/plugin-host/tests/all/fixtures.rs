//! The fixture plugins (`tests/fixtures`, their own cargo workspace), built once per test
//! binary on first use: the components for `wasm32-wasip2`, the Extism policy for
//! `wasm32-unknown-unknown`, each target only when a test needs it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../../guest_build.rs"]
mod guest_build;

/// Paths of the built fixtures.
pub struct Components {
    /// `fixture-hostile`: a state adapter that misbehaves as `config.mode` says.
    pub hostile: PathBuf,
    /// `fixture-wrong-world`: a stream adapter, so it must not load as state.
    pub wrong_world: PathBuf,
}

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/Cargo.toml")
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-fixtures")
}

fn build(packages: &[&str], target: &str) {
    if let Err(e) = guest_build::build(&manifest(), packages, target, &target_dir()) {
        panic!("{e}");
    }
}

/// The component fixtures (`wasm32-wasip2`).
pub fn components() -> &'static Components {
    static C: OnceLock<Components> = OnceLock::new();
    C.get_or_init(|| {
        build(&["fixture-hostile", "fixture-wrong-world"], "wasm32-wasip2");
        let dir = target_dir().join("wasm32-wasip2/release");
        Components {
            hostile: dir.join("fixture_hostile.wasm"),
            wrong_world: dir.join("fixture_wrong_world.wasm"),
        }
    })
}

/// The Extism policy fixture (`wasm32-unknown-unknown`).
pub fn policy() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        build(&["fixture-policy"], "wasm32-unknown-unknown");
        target_dir().join("wasm32-unknown-unknown/release/fixture_policy.wasm")
    })
}
