//! `iii-sandbox`: the sandbox daemon's binary. The engine starts it for a `- name: iii-sandbox`
//! entry (`iii-sandbox --config <entry's config: as YAML> --engine ws://127.0.0.1:<port>`);
//! it can also run by hand against any engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use iii_sandbox::catalog::Catalog;
use iii_sandbox::config::{RuntimeSetting, SandboxConfig};
use iii_sandbox::daemon::Daemon;
use iii_sandbox::images::Images;
use iii_sandbox::registry::Registry;

#[derive(Parser)]
#[command(
    name = "iii-sandbox",
    about = "The iii sandbox daemon: serves sandbox::* (create, exec, fs::*, run, stop) over isolated sandboxes",
    long_about = "The iii sandbox daemon. It connects to an iii engine as the worker `iii-sandbox` and serves \
sandbox::* over isolated sandboxes: one microVM per sandbox (runtime: microvm), or Linux namespaces with cgroup \
limits (runtime: namespace), each booted from a read-only image with its own writable layer.\n\nThe engine starts \
it for a `- name: iii-sandbox` entry in config.yaml; run it by hand to serve another engine."
)]
struct Args {
    /// The daemon's settings: the entry's flat `config:` block as YAML (an engine config.yaml is read as defaults)
    #[arg(long, default_value = "./config.yaml")]
    config: PathBuf,
    /// Engine WebSocket URL [env: III_ENGINE_URL, then III_URL; default ws://127.0.0.1:49134]
    #[arg(long)]
    engine: Option<String>,
    /// Validate the configuration and the runtime, print what would run, and exit (0 ok, 2 not usable)
    #[arg(long)]
    check: bool,
}

fn engine_url(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("III_ENGINE_URL").ok())
        .or_else(|| std::env::var("III_URL").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ws://127.0.0.1:49134".into())
}

/// The port of a `ws://host:port[/path]` URL.
fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

fn main() -> ExitCode {
    // Under the engine, lines go to its log, which has its own time stamps and colours.
    let supervised = std::env::var("III_LIFELINE").is_ok();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("III_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(!supervised);
    if supervised {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
    let args = Args::parse();
    let cfg = match SandboxConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("iii-sandbox: configuration rejected: {e}");
            return ExitCode::from(2);
        }
    };
    let choice = match cfg.runtime {
        RuntimeSetting::Auto => iii_sandbox_runtime::RuntimeChoice::Auto,
        RuntimeSetting::Microvm => iii_sandbox_runtime::RuntimeChoice::MicroVm,
        RuntimeSetting::Namespace => iii_sandbox_runtime::RuntimeChoice::Namespace,
    };
    let runtime =
        match iii_sandbox_runtime::select(choice, iii_sandbox_runtime::RuntimeOptions::default()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("iii-sandbox: {e}");
                return ExitCode::from(2);
            }
        };
    if args.check {
        println!(
            "iii-sandbox: configuration ok; runtime {}; images allowed: {}",
            runtime.name(),
            if cfg.image_allowlist.is_empty() {
                "none (image_allowlist is empty)".to_string()
            } else {
                cfg.image_allowlist.join(", ")
            }
        );
        return ExitCode::SUCCESS;
    }
    let store = match iii_oci_rootfs::ImageStore::open(None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("iii-sandbox: image cache unusable: {e}");
            return ExitCode::from(2);
        }
    };
    let url = engine_url(args.engine);
    let Some(port) = url_port(&url) else {
        eprintln!("iii-sandbox: engine URL {url} has no port");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iii-sandbox: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reap_every = std::env::var("III_SANDBOX_REAP_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10));
    let lifeline = std::env::var("III_LIFELINE").as_deref() == Ok("stdin");
    rt.block_on(async move {
        let cleaned = runtime.cleanup_orphans().await;
        if !cleaned.is_empty() {
            tracing::warn!(count = cleaned.len(), ids = ?cleaned, "cleaned up sandboxes orphaned by a daemon that died");
        }
        if cfg.auto_install {
            prebuild_presets(&cfg);
        }
        let daemon = Daemon {
            catalog: Arc::new(Catalog::new(&cfg)),
            images: Images::new(store, cfg.auto_install),
            cfg: Arc::new(cfg),
            runtime,
            registry: Registry::default(),
            engine_port: port,
            engine_url: url,
        };
        iii_sandbox::worker::serve(daemon, reap_every, lifeline).await;
    });
    ExitCode::SUCCESS
}

/// Builds the allowlisted presets that are not cached yet, in the background: the first build
/// takes minutes (Debian packages), longer than a caller's trigger timeout. A create that
/// arrives meanwhile waits on the store's lock for the same build.
fn prebuild_presets(cfg: &SandboxConfig) {
    for (name, _) in iii_sandbox::catalog::PRESETS {
        if !cfg.image_allowlist.iter().any(|a| a == name) {
            continue;
        }
        let name = *name;
        tokio::task::spawn_blocking(move || {
            let Ok(store) = iii_oci_rootfs::ImageStore::open(None) else {
                return;
            };
            if store.lookup_preset(name).is_some() {
                return;
            }
            tracing::info!(
                image = name,
                "building the {name} preset image in the background (first use; a few minutes)"
            );
            let mut progress = |line: &str| tracing::info!(image = name, "{line}");
            match store.build_preset(name, &mut progress) {
                Ok(r) => {
                    tracing::info!(image = name, lower = %r.lower.display(), "preset image ready")
                }
                Err(e) => tracing::warn!(
                    image = name,
                    "preset image build failed (a create will retry it): {e}"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_urls() {
        assert_eq!(url_port("ws://127.0.0.1:49134"), Some(49134));
        assert_eq!(url_port("ws://127.0.0.1:5/x"), Some(5));
        assert_eq!(url_port("ws://localhost"), None);
    }
}
