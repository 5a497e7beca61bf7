//! `iii-bench queue`: durable publish → delivery latency and throughput through the builtin
//! queue component, next to a plain invoke measured in the same run, with the queue's fsync on
//! and off.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{connect, free_port, load, start_callee, start_engine_with, us, wait_port, Target};

/// A worker serving `bench::sink`, bound to the durable topic `bench`; every delivery's `i`
/// goes to `tx` with the time it arrived.
pub(crate) async fn start_sink(
    port: u16,
    concurrency: usize,
    tx: mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<()> {
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/")).await?;
    ws.next().await; // workerregistered
    ws.send(Message::text(
        r#"{"type":"registerfunction","id":"bench::sink"}"#,
    ))
    .await?;
    ws.send(Message::text(format!(
        r#"{{"type":"registertrigger","id":"bench-sub","trigger_type":"durable:subscriber","function_id":"bench::sink","config":{{"topic":"bench","queue_config":{{"concurrency":{concurrency}}}}}}}"#
    )))
    .await?;
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            if v["type"] != "invokefunction" {
                continue;
            }
            let now = Instant::now();
            if let Some(i) = v["data"]["i"].as_u64() {
                let _ = tx.send((usize::try_from(i).unwrap_or(usize::MAX), now));
            }
            let id = v["invocation_id"].as_str().unwrap_or("");
            let reply = format!(
                r#"{{"type":"invocationresult","invocation_id":"{id}","function_id":"bench::sink","result":null}}"#
            );
            if sink.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

pub(crate) struct QueueRun {
    pub(crate) delivered: usize,
    pub(crate) duplicates: usize,
    pub(crate) elapsed: Duration,
    pub(crate) lat: Vec<Duration>,
}

/// Publishes `n` messages with `c` publishes outstanding; waits for every delivery.
pub(crate) async fn publish_load(
    port: u16,
    c: usize,
    n: usize,
    rx: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
) -> Result<QueueRun> {
    let ws = connect(&format!("ws://127.0.0.1:{port}/")).await?;
    let (mut sink, mut stream) = ws.split();
    let mut sent_at = vec![Instant::now(); n];
    let mut seen = vec![false; n];
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let frame = |i: usize| {
        format!(
            r#"{{"type":"invokefunction","invocation_id":"{}","function_id":"iii::durable::publish","data":{{"topic":"bench","data":{{"i":{i}}}}}}}"#,
            ids[i]
        )
    };
    let start = Instant::now();
    let (mut next, mut acked, mut delivered, mut duplicates) = (0usize, 0usize, 0usize, 0usize);
    let mut lat = Vec::with_capacity(n);
    while next < c.min(n) {
        sent_at[next] = Instant::now();
        sink.feed(Message::text(frame(next))).await?;
        next += 1;
    }
    sink.flush().await?;
    let mut last = start;
    while delivered < n || acked < n {
        tokio::select! {
            m = stream.next(), if acked < n => {
                let Some(Ok(Message::Text(t))) = m else { bail!("publisher connection closed") };
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] != "invocationresult" { continue; }
                if v.get("error").is_some_and(|e| !e.is_null()) { bail!("publish failed: {}", v["error"]); }
                if v["invocation_id"].as_str().and_then(|id| index.get(id)).is_none() { continue; }
                acked += 1;
                if next < n {
                    sent_at[next] = Instant::now();
                    sink.send(Message::text(frame(next))).await?;
                    next += 1;
                }
            }
            d = tokio::time::timeout(Duration::from_secs(30), rx.recv()) => {
                let (i, at) = d.context("no delivery for 30 s")?.context("sink gone")?;
                if i >= n { continue; }
                if seen[i] { duplicates += 1; continue; }
                seen[i] = true;
                delivered += 1;
                lat.push(at.saturating_duration_since(sent_at[i]));
                last = at;
            }
        }
    }
    Ok(QueueRun {
        delivered,
        duplicates,
        elapsed: last - start,
        lat,
    })
}

pub(crate) fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Runs the queue bench and prints its table.
pub async fn bench_queue() -> Result<()> {
    let quick = std::env::var("III_BENCH_QUICK").is_ok();
    let scale = |n: usize| if quick { (n / 10).max(50) } else { n };
    let mut rows: Vec<[String; 4]> = Vec::new();
    for (fsync, label) in [(true, "fsync on"), (false, "fsync off")] {
        let port = free_port();
        let extra = format!("  - name: iii-queue\n    config:\n      adapter: {{name: builtin, config: {{fsync: {fsync}}}}}\n");
        let engine = start_engine_with(port, &extra)?;
        wait_port(port)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        start_sink(port, 256, tx).await?;
        start_callee(Target::Engine, port).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish_load(port, 16, scale(500), &mut rx).await?; // warm-up
        for (c, n) in [(1usize, 2000usize), (16, 10000), (256, 20000)] {
            let q = publish_load(port, c, scale(n), &mut rx).await?;
            let plain = load(Target::Engine, port, c, scale(n), r#"{"i":1}"#).await?;
            let qps = q.delivered as f64 / q.elapsed.as_secs_f64();
            rows.push([
                format!("{label}, c={c}"),
                format!(
                    "{qps:.0} msg/s, p50 {}, p99 {}, {} duplicates",
                    us(pct(&q.lat, 0.5)),
                    us(pct(&q.lat, 0.99)),
                    q.duplicates
                ),
                format!(
                    "{:.0} calls/s, p50 {}, p99 {}",
                    plain.per_sec(),
                    us(plain.pct(0.5)),
                    us(plain.pct(0.99))
                ),
                format!(
                    "{:.2}× throughput, {:.1}× p50",
                    qps / plain.per_sec(),
                    pct(&q.lat, 0.5).as_secs_f64() / plain.pct(0.5).as_secs_f64()
                ),
            ]);
        }
        drop(engine);
    }
    println!("\niii durable queue benchmark: publish → delivery to one durable subscriber, next to a plain invoke (same engine, same run)\n");
    println!("| run | durable publish → delivery | plain invoke round trip | queue vs invoke |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
    Ok(())
}
