//! `iii-bench worker`: image workers as a user of `iii worker` sees them, on the namespace
//! runtime; prints a table.
//!
//! The image: busybox-static, the `hello-worker` example (official Rust SDK) with its shared
//! libraries, and a 50 MiB layer of incompressible bytes, pushed to a loopback registry
//! (`tests/registry.sh`, Debian's docker-registry).
//!
//! Rows:
//! - `iii worker add <ref> --no-wait` with an empty image cache: pull (every digest verified),
//!   extract and build the lower; MiB/s of the compressed image;
//! - start → ready: the entry appears in config.yaml of a running engine (its watcher starts the
//!   worker; the image is cached) until the worker is connected (`engine::workers::list`);
//! - restart after a crash: the workload is SIGKILLed until a new connection of the worker.
//!
//! Needs root, busybox-static, docker-registry, mkfs.erofs, and beside `iii` (or `$III_BIN`):
//! `iii-worker-host`, `iii-init` and `examples/hello-worker`
//! (`cargo build --release -p iii-cli -p iii-worker-host -p iii-guest-init --example hello-worker`).
//! The microVM runtime's figures come from the nested harness (`tests/vmm.sh`), labelled nested.

use super::*;

use iii_oci_rootfs::layout::{busybox_binary_layer, layer_tar, write_layout_arch, Entry};
use iii_oci_rootfs::registry::{host_arch, push_layout};
use iii_tests::oci_registry::Registry;

const FILLER_MIB: usize = 50;

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Writes the image as an OCI layout; returns its compressed size in bytes.
fn make_image(worker: &Path, dir: &Path) -> Result<u64> {
    let base = busybox_binary_layer(
        worker,
        "hello-worker",
        &["tmp", "proc", "sys", "dev", "run", "data"],
    )?;
    // Incompressible: a xorshift stream, so the figure is not a gzip benchmark.
    let mut filler = vec![0u8; FILLER_MIB << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in filler.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let data = layer_tar(&[Entry::File {
        path: "data/filler",
        mode: 0o644,
        data: &filler,
    }])?;
    write_layout_arch(
        dir,
        &[base, data],
        serde_json::json!({
            "Entrypoint": ["/hello-worker"],
            "Env": ["PATH=/bin", "GREETING_WORD=bench"],
            "WorkingDir": "/tmp",
        }),
        host_arch(),
    )?;
    let mut size = 0;
    for e in std::fs::read_dir(dir.join("blobs/sha256"))? {
        size += e?.metadata()?.len();
    }
    Ok(size)
}

/// The ids of the connected workers named `name` (`engine::workers::list`).
async fn connected(ws: &mut Ws, name: &str) -> Result<Vec<String>> {
    let id = uuid::Uuid::new_v4().to_string();
    let msg = serde_json::json!({"type":"invokefunction","invocation_id":id,"function_id":"engine::workers::list","data":{}});
    ws.send(Message::text(msg.to_string())).await?;
    while let Some(m) = ws.next().await {
        let Message::Text(t) = m? else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        if v["type"] == "invocationresult" && v["invocation_id"] == id.as_str() {
            let list = v["result"]["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            return Ok(list
                .iter()
                .filter(|w| w["name"] == name && w["status"] != "disconnected")
                .filter_map(|w| w["id"].as_str().map(str::to_string))
                .collect());
        }
    }
    bail!("connection closed")
}

/// Polls until `pred` holds for the connected ids of `name`; the time it took.
async fn until(
    ws: &mut Ws,
    name: &str,
    limit: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if pred(&connected(ws, name).await?) {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(t.elapsed() < limit, "{name}: not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pids of the workload `/hello-worker` of the engine on `ws_port`.
fn workloads(ws_port: u16) -> Vec<u32> {
    let needle = format!("III_URL=ws://127.0.0.1:{ws_port}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if cmd.starts_with(b"/hello-worker") && String::from_utf8_lossy(&env).contains(&needle) {
            out.push(pid);
        }
    }
    out
}

pub async fn bench() -> Result<()> {
    let rounds: usize = if std::env::var("III_BENCH_QUICK").is_ok() {
        3
    } else {
        5
    };
    let iii = iii_bin()?;
    let bin_dir = iii.parent().context("iii's directory")?.to_path_buf();
    let need = |p: PathBuf| -> Result<PathBuf> {
        anyhow::ensure!(
            p.is_file(),
            "{} missing: cargo build --release -p iii-cli -p iii-worker-host -p iii-guest-init --example hello-worker",
            p.display()
        );
        Ok(p)
    };
    let host = need(bin_dir.join("iii-worker-host"))?;
    let init = need(bin_dir.join("iii-init"))?;
    let hello = need(bin_dir.join("examples/hello-worker"))?;

    let work = std::env::temp_dir().join(format!("iii-bench-worker-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work)?;
    let layout = work.join("layout");
    let size = make_image(&hello, &layout)?;
    let reg = Registry::start();
    let reference = format!("{}/bench/hello:latest", reg.addr);
    {
        // push_layout runs its own runtime: off this one's threads.
        let (l, r) = (layout.clone(), reference.clone());
        tokio::task::spawn_blocking(move || push_layout(&l, &r, &mut |_| {})).await??;
    }
    let mib = size as f64 / f64::from(1u32 << 20);

    // Pull + extract, cold cache each round, no engine.
    let mut add = Vec::new();
    for i in 0..rounds {
        let project = work.join(format!("add-{i}"));
        std::fs::create_dir_all(&project)?;
        let cache = work.join(format!("cache-{i}"));
        let t = Instant::now();
        let out = Command::new(&iii)
            .args(["worker", "add", &reference, "--no-wait"])
            .current_dir(&project)
            .env("XDG_CACHE_HOME", &cache)
            .stdin(Stdio::null())
            .output()?;
        add.push(t.elapsed());
        anyhow::ensure!(
            out.status.success(),
            "iii worker add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i > 0 {
            let _ = std::fs::remove_dir_all(&cache);
        }
    }
    let cache = work.join("cache-0");

    // An engine that watches its config file, the image already cached.
    let ws_port = free_port();
    let dir = work.join("engine");
    std::fs::create_dir_all(&dir)?;
    let base = format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws_port}}}\n"
    );
    std::fs::write(dir.join("config.yaml"), &base)?;
    let sb_root = format!("/tmp/iii-bw-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let child = Command::new(&iii)
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .env("XDG_CACHE_HOME", &cache)
        .env("III_HOME", work.join("home"))
        .env("III_SANDBOX_ROOT", &sb_root)
        .env("III_WORKER_RUNTIME", "namespace")
        .env("III_WORKER_HOST_BIN", &host)
        .env("III_INIT", &init)
        .env("III_WATCH_CONFIG", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _engine = Proc { child, dir: None };
    wait_port(ws_port)?;
    let mut ws = connect(&format!("ws://127.0.0.1:{ws_port}/")).await?;
    // The watcher arms after start-up.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let entry = format!("  - name: hello\n    image: {reference}\n");
    let (mut start, mut crash) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let tmp = dir.join(".config.yaml.tmp");
        std::fs::write(&tmp, format!("{base}{entry}"))?;
        let t = Instant::now();
        std::fs::rename(&tmp, dir.join("config.yaml"))?;
        until(&mut ws, "hello", Duration::from_secs(120), |ids| {
            !ids.is_empty()
        })
        .await?;
        start.push(t.elapsed());

        let before = connected(&mut ws, "hello").await?;
        let pids = workloads(ws_port);
        anyhow::ensure!(pids.len() == 1, "one workload expected, found {pids:?}");
        let t = Instant::now();
        Command::new("kill")
            .args(["-9", &pids[0].to_string()])
            .status()?;
        until(&mut ws, "hello", Duration::from_secs(120), |ids| {
            ids.iter().any(|id| !before.contains(id))
        })
        .await?;
        crash.push(t.elapsed());

        std::fs::write(&tmp, &base)?;
        std::fs::rename(&tmp, dir.join("config.yaml"))?;
        until(&mut ws, "hello", Duration::from_secs(60), |ids| {
            ids.is_empty()
        })
        .await?;
    }

    let add_med = median(&mut add);
    println!("\niii worker benchmark, namespace runtime ({rounds} rounds, medians)\n");
    println!("| measurement | median | note |");
    println!("|---|---|---|");
    println!(
        "| `iii worker add` (pull + verify + extract), {mib:.1} MiB image, cold cache | {} | {:.1} MiB/s |",
        ms(add_med),
        mib / add_med.as_secs_f64()
    );
    println!(
        "| start → ready (entry added to a running engine's config.yaml, image cached) | {} | until `engine::workers::list` shows it |",
        ms(median(&mut start))
    );
    println!(
        "| restart after a crash (workload SIGKILLed) | {} | includes the supervisor's back-off |",
        ms(median(&mut crash))
    );
    drop(_engine);
    drop(reg);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&sb_root);
    Ok(())
}
