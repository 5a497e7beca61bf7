//! `iii-bench calls`: where a tiny call's cost goes, per call, for one or more engine builds or
//! settings side by side with the kernel floor, in interleaved rounds (so that a machine that
//! speeds up or slows down during the run moves every column alike).
//!
//! ```text
//! iii-bench calls [--rounds N] [--payload BYTES] [LABEL=PATH[:KEY=VALUE,...]]...
//! ```
//!
//! Each variant is an `iii` binary with environment settings for it (for example
//! `one=target/release/iii:TOKIO_WORKER_THREADS=1`); with none, the engine `iii-bench` would run.
//! For c = 1, 16 and 256 it prints calls/s, round-trip p50, the process's CPU per call (user and
//! system), its context switches and minor page faults per call (from `/proc`) and, where `perf` can count
//! the `raw_syscalls:sys_enter` tracepoint, its system calls per call. Figures are medians over
//! the rounds. `--payload BYTES` measures calls carrying that much data each way instead, at
//! c = 1, 4 and 16.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{
    clk_tck, free_port, load, start_callee, start_floor, wait_port, Floor, LoadResult, Proc, Target,
};

struct Variant {
    label: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

fn parse_variant(s: &str) -> Result<Variant> {
    let (label, rest) = s
        .split_once('=')
        .with_context(|| format!("`{s}`: expected LABEL=PATH[:KEY=VALUE,...]"))?;
    let (bin, env) = match rest.split_once(':') {
        Some((b, e)) => (b, e),
        None => (rest, ""),
    };
    let mut vars = Vec::new();
    for kv in env.split(',').filter(|x| !x.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("`{kv}` in `{s}`: expected KEY=VALUE"))?;
        vars.push((k.to_string(), v.to_string()));
    }
    let bin = PathBuf::from(bin);
    if !bin.exists() {
        bail!("{}: no such engine binary", bin.display());
    }
    Ok(Variant {
        label: label.to_string(),
        bin,
        env: vars,
    })
}

fn start(v: &Variant, port: u16) -> Result<Proc> {
    crate::start_engine_from(&v.bin, &v.env, port, "")
}

/// utime and stime in ticks, context switches summed over the process's threads, and minor
/// page faults.
fn proc_counters(pid: u32) -> (u64, u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in st.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    switches += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    (tick(11), tick(12), switches, tick(7))
}

/// The tracepoints counted, and how the table groups them.
const SYSCALL_EVENTS: [(&str, &str); 8] = [
    ("raw_syscalls:sys_enter", "all"),
    ("syscalls:sys_enter_futex", "futex"),
    ("syscalls:sys_enter_epoll_wait", "epoll"),
    ("syscalls:sys_enter_epoll_pwait", "epoll"),
    ("syscalls:sys_enter_read", "read"),
    ("syscalls:sys_enter_recvfrom", "read"),
    ("syscalls:sys_enter_write", "write"),
    ("syscalls:sys_enter_writev", "write"),
];

/// Counts the system calls of `pid` while it lives, through `perf stat`; `None` without perf.
struct SyscallCounter {
    child: Option<std::process::Child>,
}

impl SyscallCounter {
    fn start(pid: u32) -> Self {
        let events: Vec<&str> = SYSCALL_EVENTS.iter().map(|e| e.0).collect();
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", &events.join(","), "-p"])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        // perf attaches asynchronously; give it a moment before the load starts.
        std::thread::sleep(std::time::Duration::from_millis(300));
        SyscallCounter { child }
    }

    /// Counts by group: all, futex, epoll, read, write.
    fn stop(self) -> Option<[u64; 5]> {
        let child = self.child?;
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let mut counts = [0u64; 5];
        let mut seen = false;
        for l in text.lines() {
            let mut f = l.split(',');
            let (Some(n), Some(_), Some(ev)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(n) = n.trim().parse::<u64>() else {
                continue;
            };
            let Some((_, group)) = SYSCALL_EVENTS.iter().find(|e| e.0 == ev) else {
                continue;
            };
            let i = ["all", "futex", "epoll", "read", "write"]
                .iter()
                .position(|g| g == group)
                .unwrap_or(0);
            counts[i] += n;
            seen = true;
        }
        seen.then_some(counts)
    }
}

#[derive(Clone, Copy, Default)]
struct Sample {
    per_sec: f64,
    p50_us: f64,
    user_us: f64,
    sys_us: f64,
    switches: f64,
    faults: f64,
    syscalls: Option<[f64; 5]>,
}

/// One measured load of `calls` calls at concurrency `c` against the process `pid` on `port`.
async fn measure(
    target: Target,
    pid: u32,
    port: u16,
    (c, calls): (usize, usize),
    payload: &str,
) -> Result<Sample> {
    let tck = clk_tck() as f64;
    let counter = SyscallCounter::start(pid);
    let (u0, s0, w0, f0) = proc_counters(pid);
    let r: LoadResult = load(target, port, c, calls, payload).await?;
    let (u1, s1, w1, f1) = proc_counters(pid);
    let syscalls = counter.stop();
    let n = r.calls as f64;
    Ok(Sample {
        per_sec: r.per_sec(),
        p50_us: r.pct(0.5).as_secs_f64() * 1e6,
        user_us: (u1 - u0) as f64 * 1e6 / tck / n,
        sys_us: (s1 - s0) as f64 * 1e6 / tck / n,
        switches: (w1 - w0) as f64 / n,
        faults: (f1 - f0) as f64 / n,
        syscalls: syscalls.map(|x| x.map(|v| v as f64 / n)),
    })
}

/// (concurrency, calls) for tiny calls.
const LOADS: [(usize, usize); 3] = [(1, 10_000), (16, 50_000), (256, 100_000)];

/// (concurrency, calls) for `--payload BYTES`: about 256 MiB each way per load.
fn payload_loads(bytes: usize) -> Vec<(usize, usize)> {
    let n = ((256usize << 20) / bytes.max(1)).clamp(200, 20_000);
    vec![(1, n), (4, n), (16, n)]
}

pub async fn bench(args: &[String]) -> Result<()> {
    let mut rounds = 3;
    let mut payload_bytes = None;
    let mut variants = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--rounds" {
            rounds = it
                .next()
                .context("--rounds N")?
                .parse()
                .context("--rounds N")?;
        } else if a == "--payload" {
            payload_bytes = Some(
                it.next()
                    .context("--payload BYTES")?
                    .parse::<usize>()
                    .context("--payload BYTES")?,
            );
        } else {
            variants.push(parse_variant(a)?);
        }
    }
    if variants.is_empty() {
        variants.push(Variant {
            label: "engine".into(),
            bin: crate::iii_bin()?,
            env: Vec::new(),
        });
    }
    let (loads, payload) = match payload_bytes {
        None => (LOADS.to_vec(), r#"{"n":1}"#.to_string()),
        Some(b) => (
            payload_loads(b),
            format!(r#"{{"blob":"{}"}}"#, "x".repeat(b)),
        ),
    };
    let quick = std::env::var("III_BENCH_QUICK").is_ok();
    let scale = |n: usize| if quick { (n / 10).max(50) } else { n };
    // samples[column][load][round]; the last column is the kernel floor.
    let mut samples = vec![vec![Vec::new(); loads.len()]; variants.len() + 1];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (vi, v) in variants.iter().enumerate() {
            let port = free_port();
            let p = start(v, port)?;
            wait_port(port)?;
            start_callee(Target::Engine, port).await?;
            load(Target::Engine, port, 16, scale(5000), r#"{"n":1}"#).await?;
            for (li, (c, n)) in loads.iter().enumerate() {
                let s = measure(
                    Target::Engine,
                    p.child.id(),
                    port,
                    (*c, scale(*n)),
                    &payload,
                )
                .await?;
                samples[vi][li].push(s);
            }
        }
        for (li, (c, n)) in loads.iter().enumerate() {
            let port = free_port();
            let p = start_floor(Floor::Kernel, port)?;
            wait_port(port)?;
            start_callee(Target::Relay, port).await?;
            let s = measure(Target::Relay, p.child.id(), port, (*c, scale(*n)), &payload).await?;
            samples[variants.len()][li].push(s);
        }
    }
    let median = |v: &[Sample], f: &dyn Fn(&Sample) -> Option<f64>| -> Option<f64> {
        let mut xs: Vec<f64> = v.iter().filter_map(f).collect();
        if xs.is_empty() {
            return None;
        }
        xs.sort_by(|a, b| a.total_cmp(b));
        Some(xs[xs.len() / 2])
    };
    let mut labels: Vec<String> = variants.iter().map(|v| v.label.clone()).collect();
    labels.push("kernel floor".into());
    let what = match payload_bytes {
        None => "tiny calls".to_string(),
        Some(b) => format!("calls with {b}-byte payloads each way"),
    };
    println!(
        "\nper-call cost of {what}, median of {rounds} interleaved rounds ({} cores)\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("| load | process | calls/s | p50 | CPU/call (user + sys) | context switches/call | page faults/call | syscalls/call |");
    println!("|---|---|---|---|---|---|---|---|");
    for (li, (c, _)) in loads.iter().enumerate() {
        for (col, label) in labels.iter().enumerate() {
            let s = &samples[col][li];
            let m = |f: &dyn Fn(&Sample) -> Option<f64>| median(s, f).unwrap_or(f64::NAN);
            let user = m(&|x| Some(x.user_us));
            let sys = m(&|x| Some(x.sys_us));
            let sc = match median(s, &|x| x.syscalls.map(|v| v[0])) {
                None => "— (no perf)".to_string(),
                Some(all) => {
                    let g = |i: usize| median(s, &|x| x.syscalls.map(|v| v[i])).unwrap_or(0.0);
                    format!(
                        "{all:.1} (futex {:.1}, epoll {:.1}, read {:.1}, write {:.1})",
                        g(1),
                        g(2),
                        g(3),
                        g(4)
                    )
                }
            };
            println!(
                "| c={c} | {label} | {:.0} | {:.0} µs | {:.1} µs ({user:.1} + {sys:.1}) | {:.2} | {:.2} | {sc} |",
                m(&|x| Some(x.per_sec)),
                m(&|x| Some(x.p50_us)),
                m(&|x| Some(x.user_us + x.sys_us)),
                m(&|x| Some(x.switches)),
                m(&|x| Some(x.faults)),
            );
        }
    }
    Ok(())
}
