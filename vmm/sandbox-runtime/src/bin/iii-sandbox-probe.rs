//! Exercises one runtime end to end: `create` → exec `echo` over the agent →
//! `stop`, then checks nothing is left. The nested VM suite runs it inside
//! its L1 (which has a real `/dev/kvm`) against the microVM runtime.
//!
//! `iii-sandbox-probe [--runtime microvm|namespace] --lower IMG [--format erofs|ext4]
//!  [--kernel VMLINUX] [--vmm III-VMM] [--init III-INIT] [--root DIR] [--upper-template EXT4] [--prefix TAG] [--repeat N]`
//!
//! Prints `<prefix> PASS <name>` / `<prefix> FAIL <name>: why` lines (prefix
//! default `PROBE`) and exits non-zero on a failure. With `--repeat N` it runs
//! N cycles and prints a `<prefix> BENCH` table of min / median / max per stage.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use iii_sandbox_runtime::{
    select, LowerFormat, Rootfs, Runtime, RuntimeChoice, RuntimeOptions, SandboxSpec,
};
use iii_vm_agent_proto::{client, ExecRequest};

struct Args {
    runtime: RuntimeChoice,
    lower: PathBuf,
    format: LowerFormat,
    opts: RuntimeOptions,
    prefix: String,
    repeat: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        runtime: RuntimeChoice::MicroVm,
        lower: PathBuf::new(),
        format: LowerFormat::Erofs,
        opts: RuntimeOptions::default(),
        prefix: "PROBE".into(),
        repeat: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--runtime" => a.runtime = val()?.parse().map_err(|e| format!("{e}"))?,
            "--lower" => a.lower = val()?.into(),
            "--format" => {
                a.format = match val()?.as_str() {
                    "erofs" => LowerFormat::Erofs,
                    "ext4" => LowerFormat::Ext4,
                    f => return Err(format!("--format {f}: expected erofs or ext4")),
                }
            }
            "--kernel" => a.opts.kernel = Some(val()?.into()),
            "--vmm" => a.opts.vmm = Some(val()?.into()),
            "--init" => a.opts.init = Some(val()?.into()),
            "--root" => a.opts.state_root = Some(val()?.into()),
            "--upper-mib" => {
                a.opts.upper_mib = val()?.parse().map_err(|e| format!("--upper-mib: {e}"))?
            }
            "--upper-template" => a.opts.upper_template = Some(val()?.into()),
            "--prefix" => a.prefix = val()?,
            "--repeat" => a.repeat = val()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            f => return Err(format!("unknown argument {f}")),
        }
    }
    if a.lower.as_os_str().is_empty() {
        return Err("--lower IMG is required".into());
    }
    Ok(a)
}

/// Per-stage times of one create → exec → stop cycle.
struct Cycle {
    create: Duration,
    exec: Duration,
    stop: Duration,
}

/// One cycle; on failure, the stage and why.
async fn cycle(rt: &dyn Runtime, a: &Args, n: usize) -> Result<Cycle, (&'static str, String)> {
    let spec = SandboxSpec {
        id: format!("probe-{}-{n}", std::process::id()),
        rootfs: Rootfs {
            lower: a.lower.clone(),
            format: a.format,
            env: vec![],
            key: "probe".into(),
        },
        cpus: 1,
        memory_mb: 128,
        pids_max: 0,
        network: false,
        env: vec![("PROBE".into(), "yes".into())],
        engine_port: 49134,
        mounts: Vec::new(),
    };
    let t0 = Instant::now();
    let sb = rt
        .create(spec)
        .await
        .map_err(|e| ("create", e.to_string()))?;
    let create = t0.elapsed();
    let t1 = Instant::now();
    let exec = (|| -> Result<(), String> {
        let s = sb.connect_agent().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let req = ExecRequest {
            argv: vec!["echo".into(), "probe-ok".into()],
            ..Default::default()
        };
        let out = client::exec(&s, &req, &[]).map_err(|e| e.to_string())?;
        if out.code != 0 || out.stdout != b"probe-ok\n" {
            return Err(format!(
                "exit {} stdout {:?} stderr {:?}",
                out.code,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    })();
    let exec_t = t1.elapsed();
    let t2 = Instant::now();
    let stopped = sb.stop().await.map_err(|e| ("stop", e.to_string()));
    exec.map_err(|e| ("exec-echo", e))?;
    stopped?;
    Ok(Cycle {
        create,
        exec: exec_t,
        stop: t2.elapsed(),
    })
}

/// Picks one stage's time out of a cycle.
type Stage = fn(&Cycle) -> Duration;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn probe(a: &Args, say: &mut dyn FnMut(&str, Result<String, String>)) {
    let rt = match select(a.runtime, a.opts.clone()) {
        Ok(rt) => rt,
        Err(e) => return say("select", Err(e.to_string())),
    };
    say("select", Ok(rt.name().into()));
    let mut cycles = Vec::new();
    for n in 0..a.repeat.max(1) {
        match cycle(&*rt, a, n).await {
            Ok(c) => {
                if n == 0 {
                    say("create", Ok(ms(c.create)));
                    say("exec-echo", Ok(ms(c.exec)));
                    say("stop", Ok(ms(c.stop)));
                }
                cycles.push(c);
            }
            Err((stage, e)) => return say(stage, Err(format!("cycle {n}: {e}"))),
        }
    }
    if cycles.len() > 1 {
        let p = &a.prefix;
        println!(
            "{p} BENCH {} sandbox, {} cycles (create → agent ready, exec `echo`, verified stop)",
            rt.name(),
            cycles.len()
        );
        println!("{p} BENCH | stage | min | median | max |");
        println!("{p} BENCH |---|---:|---:|---:|");
        let stages: [(&str, Stage); 3] = [
            ("create", |c| c.create),
            ("exec echo", |c| c.exec),
            ("stop", |c| c.stop),
        ];
        for (name, f) in stages {
            let mut v: Vec<Duration> = cycles.iter().map(f).collect();
            v.sort();
            println!(
                "{p} BENCH | {name} | {} | {} | {} |",
                ms(v[0]),
                ms(v[v.len() / 2]),
                ms(v[v.len() - 1])
            );
        }
    }
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("iii-sandbox-probe: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut failed = false;
    let prefix = a.prefix.clone();
    let mut say = |name: &str, r: Result<String, String>| match r {
        Ok(note) if note.is_empty() => println!("{prefix} PASS sandbox-runtime/{name}"),
        Ok(note) => println!("{prefix} PASS sandbox-runtime/{name} ({note})"),
        Err(e) => {
            failed = true;
            println!(
                "{prefix} FAIL sandbox-runtime/{name}: {}",
                e.replace('\n', " | ")
            );
        }
    };
    rt.block_on(probe(&a, &mut say));
    std::process::exit(i32::from(failed));
}
