//! `iii-bench redis`: `state::get` / `state::set` through the engine and the Redis component,
//! against `redis-benchmark` on the same server (ratio), and the time an adapter call adds over
//! the same commands sent by a native Rust RESP client. Prints a table.
//!
//! One client, sequential calls (latency-bound, like a worker awaiting each call). The added
//! latency per adapter call is estimated as: engine with `redis` minus engine with the in-memory
//! `kv` (removes the engine and worker-socket hop) minus the native round trip of the same
//! commands (`EVALSHA` of the set script / `HGET`).

use super::*;

use std::io::{BufRead, BufReader, Read, Write};

const SET_SCRIPT: &str = "local o = redis.call('HGET', KEYS[1], ARGV[1]) \
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return o";

/// A minimal blocking RESP2 client: enough for the commands measured.
struct Native {
    w: std::net::TcpStream,
    r: BufReader<std::net::TcpStream>,
}

impl Native {
    fn connect(addr: &str) -> Result<Native> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Native {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn cmd(&mut self, args: &[&[u8]]) -> Result<Option<Vec<u8>>> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out)?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let (tag, rest) = line.split_at(1);
        let rest = rest.trim_end();
        Ok(match tag {
            "+" | ":" => Some(rest.as_bytes().to_vec()),
            "-" => bail!("redis error: {rest}"),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    None
                } else {
                    let mut b = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Some(b)
                }
            }
            _ => bail!("unexpected reply {line:?}"),
        })
    }
}

fn us(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(n)
}

async fn engine_round(url: &str, n: u32) -> Result<(f64, f64)> {
    let mut w = iii_tests::RawWorker::connect(url).await;
    // Warm up (connection, script cache).
    for i in 0..50 {
        w.call(
            "state::set",
            serde_json::json!({"scope": "bench", "key": format!("w{i}"), "value": i}),
        )
        .await;
    }
    let t = Instant::now();
    for i in 0..n {
        let r = w
            .call("state::set", serde_json::json!({"scope": "bench", "key": format!("k{}", i % 1000), "value": {"n": i}}))
            .await;
        if r.get("error").is_some() {
            bail!("state::set failed: {r}");
        }
    }
    let set = us(t.elapsed(), n);
    let t = Instant::now();
    for i in 0..n {
        w.call(
            "state::get",
            serde_json::json!({"scope": "bench", "key": format!("k{}", i % 1000)}),
        )
        .await;
    }
    Ok((set, us(t.elapsed(), n)))
}

fn native_round(addr: &str, n: u32) -> Result<(f64, f64)> {
    let mut c = Native::connect(addr)?;
    let sha = c
        .cmd(&[b"SCRIPT", b"LOAD", SET_SCRIPT.as_bytes()])?
        .context("no sha")?;
    let t = Instant::now();
    for i in 0..n {
        let k = format!("k{}", i % 1000);
        let v = format!("{{\"n\":{i}}}");
        c.cmd(&[
            b"EVALSHA",
            &sha,
            b"1",
            b"state:nbench",
            k.as_bytes(),
            v.as_bytes(),
        ])?;
    }
    let set = us(t.elapsed(), n);
    let t = Instant::now();
    for i in 0..n {
        let k = format!("k{}", i % 1000);
        c.cmd(&[b"HGET", b"state:nbench", k.as_bytes()])?;
    }
    Ok((set, us(t.elapsed(), n)))
}

/// `redis-benchmark -c 1` requests per second for `test` (`set` / `get`).
fn redis_benchmark(port: u16, test: &str, n: u32) -> Result<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            "1",
            "-n",
            &n.to_string(),
            "-t",
            test,
            "--csv",
        ])
        .output()
        .context("redis-benchmark missing: run tests/setup.sh")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| {
            l.to_ascii_uppercase()
                .starts_with(&format!("\"{}\"", test.to_ascii_uppercase()))
        })
        .with_context(|| format!("no {test} line in: {text}"))?;
    let rps = line.split(',').nth(1).context("csv")?.trim_matches('"');
    Ok(rps.parse()?)
}

pub(crate) async fn bench() -> Result<()> {
    let n: u32 = if std::env::var("III_BENCH_QUICK").is_ok() {
        1000
    } else {
        5000
    };
    let server = iii_tests::redis::Server::start();
    let port: u16 = server.addr().rsplit_once(':').context("addr")?.1.parse()?;
    let (ws_r, ws_k) = (free_port(), free_port());
    let _er = start_engine_with(
        ws_r,
        &format!("  - name: iii-state\n    config: {{adapter: {{name: redis, config: {{redis_url: '{}'}}}}}}\n", server.url()),
    )?;
    let _ek = start_engine_with(
        ws_k,
        "  - name: iii-state\n    config: {adapter: {name: kv, config: {store_method: in_memory}}}\n",
    )?;
    wait_port(ws_r)?;
    wait_port(ws_k)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r_set, r_get) = engine_round(&format!("ws://127.0.0.1:{ws_r}/"), n).await?;
    let (k_set, k_get) = engine_round(&format!("ws://127.0.0.1:{ws_k}/"), n).await?;
    let addr = server.addr();
    let (n_set, n_get) = tokio::task::spawn_blocking(move || native_round(&addr, n)).await??;
    let rb_set = redis_benchmark(port, "set", n * 4)?;
    let rb_get = redis_benchmark(port, "get", n * 4)?;
    println!("iii-bench redis: {n} sequential calls per row, one client, loopback, debug/release = whatever III_BIN is");
    println!();
    println!("| op | engine+redis ops/s | redis-benchmark -c1 ops/s | ratio | engine+kv(mem) µs | engine+redis µs | native RESP µs | added by the component µs | added % of native round trip |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (op, r, k, nat, rb) in [
        ("state::set", r_set, k_set, n_set, rb_set),
        ("state::get", r_get, k_get, n_get, rb_get),
    ] {
        let added = r - k - nat;
        println!(
            "| {op} | {:.0} | {:.0} | {:.2} | {k:.1} | {r:.1} | {nat:.1} | {added:.1} | {:.0} % |",
            1e6 / r,
            rb,
            (1e6 / r) / rb,
            added / nat * 100.0
        );
    }
    Ok(())
}
