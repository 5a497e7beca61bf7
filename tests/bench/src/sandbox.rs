//! `iii-bench sandbox`: sandbox figures through a running engine with an `iii-sandbox` entry on
//! the namespace runtime, measured as a client sees them; prints a table.
//!
//! Rows: create → ready (`sandbox::create` answered), `sandbox::run` of `print(2+2)` end to
//! end, an exec round trip (`true`), `fs::write` + `fs::read` of 1 MiB (base64 in, channel
//! out), and the preset image build (cold, when `III_BENCH_COLD_IMAGE=1` empties a private
//! cache first, and cached). The microVM runtime's figures come from the nested harness
//! (`tests/vmm.sh`) and are labelled nested there.

use super::*;
use base64::Engine as _;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Calls `function_id` with `data`; the result, or the error's message.
async fn call(
    ws: &mut Ws,
    function_id: &str,
    data: serde_json::Value,
) -> Result<serde_json::Value> {
    let id = uuid::Uuid::new_v4().to_string();
    let msg = serde_json::json!({"type":"invokefunction","invocation_id":id,"function_id":function_id,"data":data});
    ws.send(Message::text(msg.to_string())).await?;
    while let Some(m) = ws.next().await {
        let Message::Text(t) = m? else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        if v["type"] == "invocationresult" && v["invocation_id"] == id.as_str() {
            if !v["error"].is_null() {
                bail!("{function_id} failed: {}", v["error"]);
            }
            return Ok(v["result"].clone());
        }
    }
    bail!("connection closed")
}

/// Reads a data channel to its end.
async fn read_channel(ws_port: u16, cref: &serde_json::Value) -> Result<usize> {
    let url = format!(
        "ws://127.0.0.1:{ws_port}/ws/channels/{}?key={}&dir=read",
        cref["channel_id"].as_str().context("channel_id")?,
        cref["access_key"].as_str().context("access_key")?
    );
    let mut ch = connect(&url).await?;
    let mut n = 0;
    while let Some(m) = ch.next().await {
        match m? {
            Message::Binary(b) => n += b.len(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(n)
}

fn mkrootfs() -> Result<PathBuf> {
    let dir = iii_bin()?.parent().context("target dir")?.to_path_buf();
    let p = dir.join("iii-mkrootfs");
    anyhow::ensure!(
        p.is_file(),
        "{} missing: cargo build -p iii-oci-rootfs",
        p.display()
    );
    Ok(p)
}

fn build_preset(cache: Option<&Path>) -> Result<Duration> {
    let mut cmd = Command::new(mkrootfs()?);
    cmd.arg("preset").arg("python");
    if let Some(c) = cache {
        cmd.arg("--cache").arg(c);
    }
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    anyhow::ensure!(st.success(), "iii-mkrootfs preset python failed");
    Ok(t.elapsed())
}

pub async fn bench() -> Result<()> {
    let rounds: usize = if std::env::var("III_BENCH_QUICK").is_ok() {
        5
    } else {
        20
    };
    let cold = if std::env::var("III_BENCH_COLD_IMAGE").as_deref() == Ok("1") {
        let c = std::env::temp_dir().join(format!("iii-bench-images-{}", uuid::Uuid::new_v4()));
        let d = build_preset(Some(&c))?;
        let _ = std::fs::remove_dir_all(&c);
        Some(d)
    } else {
        None
    };
    let cached = build_preset(None)?;

    let ws_port = free_port();
    let dir = std::env::temp_dir().join(format!("iii-bench-sandbox-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    // Short: sandbox socket paths live below it (107-byte limit).
    let sb_root = format!("/tmp/iii-bsb-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    std::fs::write(
        dir.join("config.yaml"),
        format!("workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws_port}}}\n  - name: iii-sandbox\n    config:\n      runtime: namespace\n      image_allowlist: [python]\n"),
    )?;
    let child = Command::new(iii_bin()?)
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .env("III_SANDBOX_ROOT", &sb_root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _engine = Proc {
        child,
        dir: Some(dir.clone()),
    };
    wait_port(ws_port)?;
    let mut ws = connect(&format!("ws://127.0.0.1:{ws_port}/")).await?;
    ws.next().await;
    // The daemon registers after it connects; wait for sandbox::list to answer.
    let t = Instant::now();
    while call(&mut ws, "sandbox::list", serde_json::json!({}))
        .await
        .is_err()
    {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "the sandbox daemon never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut create, mut run, mut exec, mut rw, mut stop) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mib = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1 << 20]);
    for _ in 0..rounds {
        let t = Instant::now();
        let c = call(
            &mut ws,
            "sandbox::create",
            serde_json::json!({"image":"python"}),
        )
        .await?;
        create.push(t.elapsed());
        let id = c["sandbox_id"].as_str().context("sandbox_id")?.to_string();
        for _ in 0..5 {
            let t = Instant::now();
            let r = call(
                &mut ws,
                "sandbox::exec",
                serde_json::json!({"sandbox_id":id,"cmd":"true"}),
            )
            .await?;
            exec.push(t.elapsed());
            anyhow::ensure!(r["exit_code"] == 0, "true failed: {r}");
        }
        let t = Instant::now();
        call(
            &mut ws,
            "sandbox::fs::write",
            serde_json::json!({"sandbox_id":id,"path":"/tmp/blob","content_b64":mib}),
        )
        .await?;
        let r = call(
            &mut ws,
            "sandbox::fs::read",
            serde_json::json!({"sandbox_id":id,"path":"/tmp/blob"}),
        )
        .await?;
        let n = read_channel(ws_port, &r["content"]).await?;
        rw.push(t.elapsed());
        anyhow::ensure!(n == 1 << 20, "read back {n} bytes");
        let t = Instant::now();
        call(
            &mut ws,
            "sandbox::stop",
            serde_json::json!({"sandbox_id":id}),
        )
        .await?;
        stop.push(t.elapsed());
        let t = Instant::now();
        let r = call(
            &mut ws,
            "sandbox::run",
            serde_json::json!({"image":"python","code":"print(2+2)"}),
        )
        .await?;
        run.push(t.elapsed());
        anyhow::ensure!(r["stdout"] == "4\n", "run printed {r}");
    }

    println!("\niii sandbox benchmark, namespace runtime ({rounds} rounds; warm image)\n");
    println!("| measurement | p50 | p90 | target |");
    println!("|---|---|---|---|");
    let row = |what: &str, v: &mut Vec<Duration>, target: &str| {
        println!(
            "| {what} | {} | {} | {target} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.9))
        );
    };
    row("sandbox::create → ready", &mut create, "≤ 50 ms");
    row("sandbox::run print(2+2), end to end", &mut run, "≤ 150 ms");
    row("sandbox::exec `true` round trip", &mut exec, "");
    row("fs::write + fs::read, 1 MiB", &mut rw, "");
    row("sandbox::stop", &mut stop, "");
    println!("\n| preset image build (python) | time |");
    println!("|---|---|");
    match cold {
        Some(d) => println!("| cold (empty cache) | {:.1} s |", d.as_secs_f64()),
        None => println!("| cold (empty cache) | not measured (set III_BENCH_COLD_IMAGE=1) |"),
    }
    println!("| cached | {} |", ms(cached));
    drop(_engine);
    let _ = std::fs::remove_dir_all(&sb_root);
    Ok(())
}
