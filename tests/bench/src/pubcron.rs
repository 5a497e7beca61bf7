//! `iii-bench pubcron`: pub/sub fan-out and cron fire jitter on a release engine; prints a table.
//!
//! Fan-out: one subscriber connection holds N functions, each bound with `subscribe` to one
//! topic; a publisher sends `publish` one at a time and the clock runs from the send to the Nth
//! delivery. Cron: one every-second job for 60 s (`III_BENCH_QUICK`: 10 s); jitter is the
//! engine's own `actual_time - scheduled_time` and the worker's receipt time minus
//! `scheduled_time`.

use super::*;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A connection that declared itself, with its functions and bindings applied.
async fn worker(
    port: u16,
    name: &str,
    functions: &[String],
    bindings: &[(String, String, String)],
) -> Result<Ws> {
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/")).await?;
    ws.next().await; // workerregistered
    ws.send(Message::text(format!(r#"{{"type":"invokefunction","function_id":"engine::workers::register","data":{{"name":"{name}","pid":1}},"action":{{"type":"void"}}}}"#))).await?;
    for f in functions {
        ws.feed(Message::text(format!(
            r#"{{"type":"registerfunction","id":"{f}"}}"#
        )))
        .await?;
    }
    for (id, ty, rest) in bindings {
        ws.feed(Message::text(format!(
            r#"{{"type":"registertrigger","id":"{id}","trigger_type":"{ty}",{rest}}}"#
        )))
        .await?;
    }
    // A round trip on the same socket: everything above is applied once it answers.
    ws.send(Message::text(r#"{"type":"invokefunction","invocation_id":"00000000-0000-4000-8000-0000000000aa","function_id":"engine::functions::list","data":{}}"#)).await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no answer")?;
        if let Some(Ok(Message::Text(t))) = m {
            if t.as_str().contains("0000000000aa") {
                return Ok(ws);
            }
        }
    }
}

/// Serves every invocation on `ws` with `null`, sending `(receipt time, data)` to `tx`.
fn serve(ws: Ws, tx: mpsc::UnboundedSender<(Instant, std::time::SystemTime, String)>) {
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let (now, wall) = (Instant::now(), std::time::SystemTime::now());
            let Message::Text(t) = m else { continue };
            let Ok(inc) = serde_json::from_str::<Incoming>(t.as_str()) else {
                continue;
            };
            if inc.kind != "invokefunction" {
                continue;
            }
            let _ = tx.send((
                now,
                wall,
                inc.data.map(|d| d.get().to_string()).unwrap_or_default(),
            ));
            let id = inc.invocation_id.unwrap_or("");
            let reply =
                format!(r#"{{"type":"invocationresult","invocation_id":"{id}","result":null}}"#);
            if sink.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    });
}

async fn fan_out(port: u16, n: usize, publishes: usize) -> Result<Row> {
    let topic = format!("fan{n}");
    let functions: Vec<String> = (0..n).map(|i| format!("fan{n}::f{i}")).collect();
    let bindings: Vec<_> = functions
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                format!("fan{n}-{i}"),
                "subscribe".to_string(),
                format!(r#""function_id":"{f}","config":{{"topic":"{topic}"}}"#),
            )
        })
        .collect();
    let subs = worker(port, &format!("bench-subs-{n}"), &functions, &bindings).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    serve(subs, tx);
    let mut publisher = worker(port, &format!("bench-pub-{n}"), &[], &[]).await?;
    let mut lat = Vec::with_capacity(publishes);
    let start = Instant::now();
    for i in 0..publishes {
        let t0 = Instant::now();
        publisher.send(Message::text(format!(r#"{{"type":"invokefunction","invocation_id":"{}","function_id":"publish","data":{{"topic":"{topic}","data":{{"i":{i}}}}}}}"#, uuid::Uuid::new_v4()))).await?;
        let mut last = t0;
        for _ in 0..n {
            let (at, _, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("a delivery never came")?
                .context("subscriber closed")?;
            last = at;
        }
        lat.push(last - t0);
        // The publish result on the publisher's own socket.
        let _ = tokio::time::timeout(Duration::from_secs(10), publisher.next()).await;
    }
    let elapsed = start.elapsed();
    let deliveries = (n * publishes) as f64 / elapsed.as_secs_f64();
    Ok(Row {
        what: format!("pub/sub fan-out to {n} subscriber(s): publish → last delivery"),
        engine: format!(
            "p50 {}, p99 {}",
            us(pct(&mut lat, 0.5)),
            us(pct(&mut lat, 0.99))
        ),
        relay: format!("{deliveries:.0} deliveries/s ({publishes} publishes, one at a time)"),
        ratio: String::new(),
        ..Default::default()
    })
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

async fn cron_jitter(port: u16, seconds: u64) -> Result<Vec<Row>> {
    let f = vec!["bench::tick".to_string()];
    let b = vec![(
        "bench-tick".to_string(),
        "cron".to_string(),
        r#""function_id":"bench::tick","config":{"expression":"* * * * * *"}"#.to_string(),
    )];
    let ws = worker(port, "bench-cron", &f, &b).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    serve(ws, tx);
    let mut engine_side = Vec::new();
    let mut worker_side = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    while let Ok(Some((_, wall, data))) =
        tokio::time::timeout(until.saturating_duration_since(Instant::now()), rx.recv()).await
    {
        let v: serde_json::Value = serde_json::from_str(&data)?;
        let (Some(s), Some(a)) = (
            v["scheduled_time"].as_str().and_then(rfc3339_ms),
            v["actual_time"].as_str().and_then(rfc3339_ms),
        ) else {
            bail!("bad cron payload {v}");
        };
        let got = wall.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        engine_side.push(Duration::from_millis((a - s).max(0) as u64));
        worker_side.push(Duration::from_millis((got - s).max(0) as u64));
    }
    if engine_side.is_empty() {
        bail!("the cron job never fired");
    }
    let fires = engine_side.len();
    let row = |what: &str, v: &mut Vec<Duration>| Row {
        what: format!("cron every second for {seconds} s: {what}"),
        engine: format!(
            "p50 {}, p99 {}, max {}",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(*v.iter().max().unwrap_or(&Duration::ZERO))
        ),
        relay: format!("{fires} fires (expected {seconds} ± 1)"),
        ratio: String::new(),
        ..Default::default()
    };
    Ok(vec![
        row("actual_time − scheduled_time (engine)", &mut engine_side),
        row("worker receipt − scheduled_time", &mut worker_side),
    ])
}

pub(crate) async fn bench() -> Result<()> {
    let quick = std::env::var("III_BENCH_QUICK").is_ok();
    let port = free_port();
    let engine = start_engine_with(port, "  - name: pubsub\n  - name: cron\n")?;
    wait_port(port)?;
    let mut rows = Vec::new();
    let cron = tokio::spawn(cron_jitter(port, if quick { 10 } else { 60 }));
    for n in [1, 10, 100] {
        rows.push(fan_out(port, n, if quick { 50 } else { 500 }).await?);
    }
    rows.extend(cron.await??);
    println!(
        "\niii pub/sub and cron benchmark ({}; {} cores; fan-out runs while the cron job ticks)\n",
        iii_bin()?.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("| measurement | latency | volume |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.engine, r.relay);
    }
    drop(engine);
    Ok(())
}
