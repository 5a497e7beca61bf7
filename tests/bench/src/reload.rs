//! `iii-bench reload`: how long an edit of `config.yaml` takes to apply in a running release
//! engine, from the file's rename into place to the change being visible to a client; prints a
//! table.
//!
//! Rows: adding a `pubsub` entry (until `publish` answers), removing it (until `publish` is
//! `function_not_found`), and a live change of the HTTP CORS policy (until a response carries
//! the new origin). The watcher debounces for 300 ms, which is most of each figure; the engine's
//! own share is logged as `elapsed_ms` on its "configuration reloaded" line.

use super::*;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Calls `function_id` and returns the error code (`None` on success).
async fn call_code(ws: &mut Ws, function_id: &str, data: &str) -> Result<Option<String>> {
    let id = uuid::Uuid::new_v4().to_string();
    ws.send(Message::text(format!(
        r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"{function_id}","data":{data}}}"#
    )))
    .await?;
    while let Some(m) = ws.next().await {
        let Message::Text(t) = m? else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        if v["type"] == "invocationresult" && v["invocation_id"] == id.as_str() {
            return Ok(v["error"]["code"].as_str().map(str::to_string));
        }
    }
    bail!("connection closed")
}

fn cors_origin(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(
        b"GET /none HTTP/1.1\r\nHost: x\r\nOrigin: https://b.example\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("access-control-allow-origin: "))
        .map(|v| v.trim().to_string())
}

pub async fn bench() -> Result<()> {
    let rounds: usize = if std::env::var("III_BENCH_QUICK").is_ok() {
        5
    } else {
        20
    };
    let (ws_port, http_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("iii-bench-reload-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let file = |extra: &str, origin: &str| {
        format!(
            "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws_port}}}\n  - name: http\n    config: {{host: 127.0.0.1, port: {http_port}, cors: {{allowed_origins: ['{origin}']}}}}\n{extra}"
        )
    };
    let write = |text: String| -> Result<Instant> {
        let tmp = dir.join(".config.yaml.tmp");
        std::fs::write(&tmp, text)?;
        let t = Instant::now();
        std::fs::rename(&tmp, dir.join("config.yaml"))?;
        Ok(t)
    };
    std::fs::write(dir.join("config.yaml"), file("", "https://a.example"))?;
    let child = Command::new(iii_bin()?)
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _engine = Proc {
        child,
        dir: Some(dir.clone()),
    };
    wait_port(ws_port)?;
    // The watcher starts right after "ready"; give it a moment to arm.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = connect(&format!("ws://127.0.0.1:{ws_port}/")).await?;
    ws.next().await;
    let (mut add, mut remove, mut live) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = Duration::from_secs(10);
    let mut cur = "https://a.example";
    for i in 0..rounds {
        let t = write(file("  - name: pubsub\n", cur))?;
        while call_code(&mut ws, "publish", r#"{"topic":"t","data":1}"#)
            .await?
            .is_some()
        {
            anyhow::ensure!(t.elapsed() < deadline, "pubsub never started");
        }
        add.push(t.elapsed());
        let t = write(file("", cur))?;
        while call_code(&mut ws, "publish", r#"{"topic":"t","data":1}"#)
            .await?
            .is_none()
        {
            anyhow::ensure!(t.elapsed() < deadline, "pubsub never stopped");
        }
        remove.push(t.elapsed());
        let origin = if i % 2 == 0 {
            "https://b.example"
        } else {
            "https://a.example"
        };
        let t = write(file("", origin))?;
        let want = (origin == "https://b.example").then(|| origin.to_string());
        while tokio::task::spawn_blocking(move || cors_origin(http_port)).await? != want {
            anyhow::ensure!(t.elapsed() < deadline, "CORS change never applied");
        }
        live.push(t.elapsed());
        cur = origin;
    }
    println!("\nconfig.yaml hot reload, {rounds} rounds (file renamed into place → change visible to a client)\n");
    println!("| change | p50 | p90 | max |");
    println!("|---|---|---|---|");
    for (what, v) in [
        ("add a `pubsub` entry (until `publish` answers)", &mut add),
        (
            "remove it (until `publish` is function_not_found)",
            &mut remove,
        ),
        (
            "HTTP CORS origin, applied live (until a response shows it)",
            &mut live,
        ),
    ] {
        let (p50, p90) = (pct(v, 0.5), pct(v, 0.9));
        let max = *v.iter().max().unwrap_or(&Duration::ZERO);
        println!("| {what} | {} | {} | {} |", ms(p50), ms(p90), ms(max));
    }
    println!("\nThe watcher's debounce is {} ms of each figure.", 300);
    Ok(())
}
