//! The plugin host's integration tests: one binary (one wasmtime link) with a module per
//! topic. `sigkill` stays a binary of its own (`harness = false`: it is its own child).

mod fixtures;
mod hostile;
mod kv;
mod lang_fixtures;
mod lang_policies;
mod policy;
mod policy_world;
mod queue;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use iii_plugin_host::{HostConfig, PluginHost};

/// The host every test shares: a small restart budget and a per-binary compile cache.
fn host() -> PluginHost {
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

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
