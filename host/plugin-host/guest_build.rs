//! Builds guest WebAssembly for the plugin host. `build.rs` (the embedded kv component) and the
//! tests' fixtures both call [`build`], so both scrub the same host environment.

use std::path::Path;
use std::process::Command;

/// Variables of the outer cargo that must not reach a guest build.
const SCRUBBED: &[&str] = &[
    // Host flags (e.g. -C target-cpu) must not leak into the wasm build.
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_PROFILE_RELEASE_LTO",
    // `cargo clippy` on the host must not turn the guest build into a
    // lint run (it would also invalidate the guest's fingerprints).
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
];

/// Runs `cargo build --release --target <target>` for `packages` of `manifest` into
/// `target_dir`. The target dir must not be the outer build's: cargo holds its lock, and
/// sharing it would deadlock.
pub fn build(
    manifest: &Path,
    packages: &[&str],
    target: &str,
    target_dir: &Path,
) -> Result<(), String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build").arg("--manifest-path").arg(manifest);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(["--release", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    for var in SCRUBBED {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("running cargo for {}: {e}", packages.join(", ")))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {} for {target} failed ({status}); if the target is missing run \
             `rustup target add {target}` (tests/plugins.sh does this)",
            packages.join(", ")
        ))
    }
}
