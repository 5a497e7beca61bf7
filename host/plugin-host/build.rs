//! Builds `plugins/kv` for `wasm32-wasip2` and hands its path to
//! `include_bytes!` (env `III_KV_WASM`).
//!
//! The nested cargo uses its own target directory: the outer build holds the
//! lock of its own, and sharing it would deadlock. Set `III_KV_WASM` to a
//! prebuilt component to skip the nested build.

mod guest_build;

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=III_KV_WASM");
    if let Ok(prebuilt) = std::env::var("III_KV_WASM") {
        println!("cargo:rustc-env=III_KV_WASM={prebuilt}");
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("guest_build.rs").display()
    );
    let root = manifest_dir.join("../..");
    let plugins = root.join("plugins");
    for p in ["Cargo.toml", "Cargo.lock", "kv", "update-ops"] {
        rerun_tree(&plugins.join(p));
    }
    rerun_tree(&root.join("wit"));

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>/out: keep the
    // guest build next to the host's so `cargo clean` removes both, and
    // shared by every profile so it is built once.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-plugins"))
        .unwrap_or_else(|| out_dir.join("wasm-plugins"));

    if let Err(e) = guest_build::build(
        &plugins.join("Cargo.toml"),
        &["iii-kv"],
        "wasm32-wasip2",
        &target_dir,
    ) {
        panic!("{e}");
    }
    let wasm = target_dir.join("wasm32-wasip2/release/iii_kv.wasm");
    assert!(wasm.exists(), "{} was not produced", wasm.display());
    println!("cargo:rustc-env=III_KV_WASM={}", wasm.display());
}

fn rerun_tree(p: &Path) {
    if p.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                rerun_tree(&e.path());
            }
        }
    } else if p.exists() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
