//! Exercises one runtime end to end: `create` → exec `echo` over the agent →
//! `stop`, then checks nothing is left. The nested VM suite runs it inside
//! its L1 (which has a real `/dev/kvm`) against the microVM runtime.
//!
//! `iii-sandbox-probe [--runtime microvm|namespace] --lower IMG [--format erofs|ext4]
//!  [--kernel VMLINUX] [--vmm III-VMM] [--init III-INIT] [--root DIR] [--upper-template EXT4] [--prefix TAG]`
//!
//! Prints `<prefix> PASS <name>` / `<prefix> FAIL <name>: why` lines (prefix
//! default `PROBE`) and exits non-zero on a failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use iii_sandbox_runtime::{
    select, LowerFormat, Rootfs, RuntimeChoice, RuntimeOptions, SandboxSpec,
};
use iii_vm_agent_proto::{client, ExecRequest};

struct Args {
    runtime: RuntimeChoice,
    lower: PathBuf,
    format: LowerFormat,
    opts: RuntimeOptions,
    prefix: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        runtime: RuntimeChoice::MicroVm,
        lower: PathBuf::new(),
        format: LowerFormat::Erofs,
        opts: RuntimeOptions::default(),
        prefix: "PROBE".into(),
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
            f => return Err(format!("unknown argument {f}")),
        }
    }
    if a.lower.as_os_str().is_empty() {
        return Err("--lower IMG is required".into());
    }
    Ok(a)
}

async fn probe(a: &Args, say: &mut dyn FnMut(&str, Result<String, String>)) {
    let rt = match select(a.runtime, a.opts.clone()) {
        Ok(rt) => rt,
        Err(e) => return say("select", Err(e.to_string())),
    };
    say("select", Ok(rt.name().into()));
    let t0 = Instant::now();
    let spec = SandboxSpec {
        id: format!("probe-{}", std::process::id()),
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
    };
    let sb = match rt.create(spec).await {
        Ok(sb) => sb,
        Err(e) => return say("create", Err(e.to_string())),
    };
    say("create", Ok(format!("{} ms", t0.elapsed().as_millis())));
    let exec = (|| -> Result<String, String> {
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
        Ok(String::new())
    })();
    say("exec-echo", exec);
    let t1 = Instant::now();
    say(
        "stop",
        sb.stop()
            .await
            .map(|()| format!("{} ms", t1.elapsed().as_millis()))
            .map_err(|e| e.to_string()),
    );
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
