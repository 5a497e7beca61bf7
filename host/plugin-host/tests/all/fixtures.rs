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

/// `fixture-hostile-policy`: a policy component that misbehaves as `config.mode` says.
pub fn hostile_policy() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        build(&["fixture-hostile-policy"], "wasm32-wasip2");
        target_dir().join("wasm32-wasip2/release/fixture_hostile_policy.wasm")
    })
}

/// The example policies of `plugins/policies` (the plugins workspace), built like the
/// builtin adapters: components for `wasm32-wasip2`, the Extism rate limiter for
/// `wasm32-unknown-unknown`.
pub struct Examples {
    /// `policies/bearer`.
    pub bearer: PathBuf,
    /// `policies/tenant-prefix`.
    pub tenant_prefix: PathBuf,
    /// `policies/audit`.
    pub audit: PathBuf,
    /// `policies/rate-limit` (Extism).
    pub rate_limit: PathBuf,
}

/// Builds the example policies once per test binary.
pub fn examples() -> &'static Examples {
    static E: OnceLock<Examples> = OnceLock::new();
    E.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/Cargo.toml");
        // The directory build.rs builds the builtin adapters in, so the guest dependencies
        // compiled for them are reused.
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.parent().unwrap_or(tmp).join("wasm-plugins");
        let components = [
            "iii-policy-bearer",
            "iii-policy-tenant-prefix",
            "iii-policy-audit",
        ];
        for (pkgs, target) in [
            (&components[..], "wasm32-wasip2"),
            (&["iii-policy-rate-limit"][..], "wasm32-unknown-unknown"),
        ] {
            if let Err(e) = guest_build::build(&manifest, pkgs, target, &dir) {
                panic!("{e}");
            }
        }
        let c = dir.join("wasm32-wasip2/release");
        Examples {
            bearer: c.join("iii_policy_bearer.wasm"),
            tenant_prefix: c.join("iii_policy_tenant_prefix.wasm"),
            audit: c.join("iii_policy_audit.wasm"),
            rate_limit: dir.join("wasm32-unknown-unknown/release/iii_policy_rate_limit.wasm"),
        }
    })
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
