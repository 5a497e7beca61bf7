//! Builds the builtin components `plugins/kv` and `plugins/queue` for
//! `wasm32-wasip2` and hands their paths to `include_bytes!` (env
//! `III_KV_WASM`, `III_QUEUE_WASM`).
//!
//! The nested cargo uses its own target directory: the outer build holds the
//! lock of its own, and sharing it would deadlock. Set both variables to
//! prebuilt components to skip the nested build.

mod guest_build;

use std::path::{Path, PathBuf};

fn main() {
    /// `(crate, env var, file)` of every embedded component.
    const BUILTINS: &[(&str, &str, &str)] = &[
        ("iii-kv", "III_KV_WASM", "iii_kv.wasm"),
        ("iii-queue", "III_QUEUE_WASM", "iii_queue.wasm"),
        ("iii-rabbitmq", "III_RABBITMQ_WASM", "iii_rabbitmq.wasm"),
        ("iii-redis", "III_REDIS_WASM", "iii_redis.wasm"),
    ];
    for (_, var, _) in BUILTINS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let prebuilt: Vec<Option<String>> = BUILTINS
        .iter()
        .map(|(_, var, _)| std::env::var(var).ok())
        .collect();
    if prebuilt.iter().all(Option::is_some) {
        for ((_, var, _), path) in BUILTINS.iter().zip(&prebuilt) {
            println!(
                "cargo:rustc-env={var}={}",
                path.as_deref().expect("all set")
            );
        }
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("guest_build.rs").display()
    );
    let root = manifest_dir.join("../..");
    let plugins = root.join("plugins");
    for p in [
        "Cargo.toml",
        "Cargo.lock",
        "wal",
        "kv",
        "queue",
        "rabbitmq",
        "update-ops",
    ] {
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

    let crates: Vec<&str> = BUILTINS.iter().map(|(c, _, _)| *c).collect();
    if let Err(e) = guest_build::build(
        &plugins.join("Cargo.toml"),
        &crates,
        "wasm32-wasip2",
        &target_dir,
    ) {
        panic!("{e}");
    }
    for (_, var, file) in BUILTINS {
        let wasm = target_dir.join("wasm32-wasip2/release").join(file);
        assert!(wasm.exists(), "{} was not produced", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
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
