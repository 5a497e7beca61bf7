//! Prints a table of what can be measured on this host:
//! * VMM setup time from process start to the first `KVM_RUN`, and VMM RSS
//!   then and after 1 s (measurable on PVM too: the guest just does not boot);
//! * guest boot to init under qemu TCG: our kernel vs the Debian cloud kernel;
//! * exec round trip inside the nested harness (labelled nested), with `--nested`.

#![deny(clippy::cast_possible_truncation)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use iii_oci_rootfs::initramfs;
use iii_vmm_harness::qemu::{Qemu, QemuSpec};

#[derive(Parser)]
struct Args {
    /// Directory with the guest vmlinux and bzImage (vmm/kernel/build.sh output).
    #[arg(long)]
    kernel_dir: PathBuf,
    /// iii-vmm binary (release build).
    #[arg(long)]
    vmm: PathBuf,
    /// Static iii-init.
    #[arg(long)]
    init: PathBuf,
    /// Unpacked Debian cloud kernel package (for the boot comparison and --nested).
    #[arg(long)]
    cloud_dir: Option<PathBuf>,
    /// Also run the nested harness for the exec round trip (several minutes).
    #[arg(long)]
    nested: bool,
    /// Static iii-vmctl (needed for --nested).
    #[arg(long)]
    vmctl: Option<PathBuf>,
    /// Static (musl) iii-vmm for inside the L1 (needed for --nested).
    #[arg(long)]
    static_vmm: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident KiB of the guest RAM mapping (the anonymous mapping of exactly
/// `mem_mib`), so VMM overhead = RSS − guest RAM resident.
fn guest_ram_rss_kib(pid: u32, mem_mib: u32) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let want = format!("{} kB", u64::from(mem_mib) * 1024);
    let mut in_guest = false;
    for l in smaps.lines() {
        if l.starts_with("Size:") {
            in_guest = l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ") == want;
        } else if in_guest && l.starts_with("Rss:") {
            return l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// One VMM run: (µs to first KVM_RUN as the VMM reports it, wall ms from
/// spawn to that report, RSS KiB at first run, RSS KiB after 1 s, VMM
/// overhead KiB after 1 s excluding resident guest RAM).
fn vmm_setup(vmm: &Path, kernel: &Path, mem_mib: u32) -> Result<(f64, f64, u64, u64, u64)> {
    let t = Instant::now();
    let mut child = Command::new(vmm)
        .arg("--kernel")
        .arg(kernel)
        .args([
            "--mem-mib",
            &mem_mib.to_string(),
            "--allow-pvm",
            "--timing",
            "--console",
            "none",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line)?;
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    // "iii-vmm: first KVM_RUN at N us, rss M KiB"
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    if nums.len() < 2 {
        let _ = child.kill();
        bail!("unexpected VMM output {line:?}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_1s = status_kib(child.id(), "VmRSS:");
    let overhead = rss_1s.saturating_sub(guest_ram_rss_kib(child.id(), mem_mib));
    let _ = child.kill();
    let _ = child.wait();
    Ok((nums[0] as f64 / 1000.0, wall, nums[1], rss_1s, overhead))
}

fn tcg_boot(kernel: &Path, initrd: &Path, runs: usize) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..runs {
        let spec = QemuSpec {
            kernel: kernel.into(),
            initrd: initrd.into(),
            append: "console=ttyS0 reboot=t panic=-1 quiet".into(),
            mem_mib: 256,
            cpu: "max".into(),
            accel: "tcg".into(),
            ..Default::default()
        };
        let mut q = Qemu::start(&spec)?;
        let (_, t) = q.wait_for("iii-init: ready", Duration::from_secs(60))?;
        v.push(t.as_secs_f64() * 1000.0);
    }
    Ok(median(v))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let host = if pvm {
        "PVM host: setup only, guest cannot boot"
    } else {
        "hardware KVM"
    };

    for (label, file) in [("vmlinux (ELF)", "vmlinux"), ("bzImage", "bzImage")] {
        let k = a.kernel_dir.join(file);
        for mem in [128u32, 256] {
            let mut first = Vec::new();
            let mut wall = Vec::new();
            let mut rss0 = Vec::new();
            let mut rss1 = Vec::new();
            let mut over = Vec::new();
            for _ in 0..a.runs {
                let (f, w, r0, r1, o) = vmm_setup(&a.vmm, &k, mem)
                    .with_context(|| format!("VMM run with {}", k.display()))?;
                first.push(f);
                wall.push(w);
                rss0.push(r0 as f64);
                rss1.push(r1 as f64);
                over.push(o as f64);
            }
            rows.push((
                format!("VMM start → first KVM_RUN, {label}, {mem} MiB"),
                format!(
                    "{:.1} ms (spawn→report {:.1} ms)",
                    median(first),
                    median(wall)
                ),
                format!("median of {}, {host}", a.runs),
            ));
            rows.push((
                format!("VMM RSS, {label}, {mem} MiB"),
                format!(
                    "{:.1} MiB at first run, {:.1} MiB after 1 s",
                    median(rss0) / 1024.0,
                    median(rss1) / 1024.0
                ),
                "includes guest pages the loader touched".into(),
            ));
            rows.push((
                format!("VMM overhead RSS (minus guest RAM), {label}, {mem} MiB"),
                format!("{:.1} MiB after 1 s", median(over) / 1024.0),
                "target ≤ 8 MiB".into(),
            ));
        }
    }

    let tmp = std::env::temp_dir().join(format!("iii-vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let initrd = tmp.join("initrd.cpio");
    std::fs::write(&initrd, initramfs::build(&std::fs::read(&a.init)?, &[])?)?;
    let ours = tcg_boot(&a.kernel_dir.join("vmlinux"), &initrd, 3)?;
    rows.push((
        "guest boot to init, qemu TCG, our vmlinux".into(),
        format!("{ours:.0} ms"),
        "median of 3, qemu start → `iii-init: ready`".into(),
    ));
    if let Some(cloud) = &a.cloud_dir {
        let vmlinuz = std::fs::read_dir(cloud.join("boot"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .context("no vmlinuz in --cloud-dir")?;
        let theirs = tcg_boot(&vmlinuz, &initrd, 3)?;
        rows.push((
            "guest boot to init, qemu TCG, Debian cloud kernel".into(),
            format!("{theirs:.0} ms"),
            "same initramfs".into(),
        ));
    }
    let _ = std::fs::remove_dir_all(&tmp);

    if a.nested {
        let (Some(cloud), Some(vmctl), Some(static_vmm)) = (&a.cloud_dir, &a.vmctl, &a.static_vmm)
        else {
            bail!("--nested needs --cloud-dir, --vmctl and --static-vmm");
        };
        let harness = std::env::current_exe()?.with_file_name("iii-vmm-harness");
        let out = Command::new(harness)
            .arg("nested")
            .arg("--kernel-dir")
            .arg(&a.kernel_dir)
            .arg("--init")
            .arg(&a.init)
            .arg("--vmm")
            .arg(static_vmm)
            .arg("--vmctl")
            .arg(vmctl)
            .arg("--l1-dir")
            .arg(cloud)
            .output()
            .context("running iii-vmm-harness nested")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("nested harness failed:\n{text}");
        }
        for l in text.lines().filter_map(|l| l.strip_prefix("BENCH nested ")) {
            let note = "qemu TCG L1 + kvm-amd, double emulation".to_string();
            match l.split_once(": iii-vmm: ") {
                // "<vm>: iii-vmm: ..." lines are the VMM's own --timing output.
                Some((vm, rest)) => {
                    rows.push((format!("nested: VMM of vm {vm}"), rest.into(), note))
                }
                None => match l.split_once('=') {
                    Some((k, v)) => rows.push((format!("nested: {k}"), v.into(), note)),
                    None => rows.push(("nested".into(), l.into(), note)),
                },
            }
        }
    }

    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    println!("{:w0$}  {:w1$}  notes", "what", "measured");
    println!("{}", "-".repeat(w0 + w1 + 40));
    for (a, b, c) in rows {
        println!("{a:w0$}  {b:w1$}  {c}");
    }
    println!();
    println!("targets (bare-metal KVM, not measurable here): create → guest agent ready ≤ 150 ms; VMM overhead ≤ 8 MiB RSS");
    Ok(())
}
