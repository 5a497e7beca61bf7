//! `iii-bench rabbitmq`: durable publish → delivery throughput and latency through the RabbitMQ
//! adapter (a scratch broker started for the run) next to the builtin queue, same run, one
//! table.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;

use super::queue::{pct, publish_load, start_sink};
use super::{free_port, start_engine_with, us, wait_port};

/// Runs the bench and prints its table.
pub async fn bench() -> Result<()> {
    let quick = std::env::var("III_BENCH_QUICK").is_ok();
    let scale = |n: usize| if quick { (n / 10).max(50) } else { n };
    let broker = tokio::task::spawn_blocking(iii_tests::rabbitmq::Broker::start).await?;
    let backends = [
        (
            "builtin (fsync on)",
            "  - name: queue\n    config:\n      adapter: {name: builtin}\n".to_string(),
        ),
        (
            "rabbitmq (confirms, persistent)",
            format!(
                "  - name: queue\n    config:\n      adapter: {{name: rabbitmq, config: {{amqp_url: \"{}\"}}}}\n",
                broker.url()
            ),
        ),
    ];
    let mut rows: Vec<[String; 5]> = Vec::new();
    for (label, extra) in &backends {
        let port = free_port();
        let engine = start_engine_with(port, extra)?;
        wait_port(port)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        start_sink(port, 64, tx).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        publish_load(port, 8, scale(300), &mut rx).await?; // warm-up
        for (c, n) in [(1usize, 500usize), (16, 3000), (64, 5000)] {
            let q = publish_load(port, c, scale(n), &mut rx).await?;
            rows.push([
                label.to_string(),
                format!("c={c}, n={}", scale(n)),
                format!("{:.0} msg/s", q.delivered as f64 / q.elapsed.as_secs_f64()),
                format!(
                    "p50 {}, p99 {}",
                    us(pct(&q.lat, 0.5)),
                    us(pct(&q.lat, 0.99))
                ),
                q.duplicates.to_string(),
            ]);
        }
        drop(engine);
    }
    drop(broker);
    println!(
        "\niii queue adapters: durable publish → delivery to one subscriber (concurrency 64), same run, {} cores\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("| adapter | load | throughput | publish → delivery | duplicates |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r[0], r[1], r[2], r[3], r[4]);
    }
    Ok(())
}
