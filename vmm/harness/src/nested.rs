//! Full-VMM tests: a qemu TCG L1 (`-cpu max` emulates AMD SVM) boots the
//! Debian cloud kernel with kvm-amd; inside it our static iii-vmm boots our
//! guest kernel + init, and `iii-vmctl nested-suite` checks boot, exec round
//! trips, the vsock-forwarded port and isolation between two VMs. With a
//! probe, `iii-sandbox-probe` first drives the sandbox microVM runtime there
//! (create → exec `echo` → stop).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use iii_oci_rootfs::{image, initramfs::Archive};

use crate::fixtures::{busybox, Fixtures};
use crate::qemu::{Qemu, QemuSpec};
use crate::Report;

const L1_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
ip link set lo up 2>/dev/null || ifconfig lo up
for m in irqbypass kvm kvm-amd; do insmod /lib/kvm/$m.ko || echo "NESTED FAIL insmod $m"; done
echo "L1 ready"
grep -q iii.debug /proc/cmdline && export III_DEBUG=1
if [ -x /iii/iii-sandbox-probe ]; then
  /iii/iii-sandbox-probe --runtime microvm --lower /iii/lower.erofs --kernel /iii/vmlinux \
    --vmm /iii/iii-vmm --init /iii/iii-init --root /tmp/iii-sandbox \
    --upper-template /iii/upper-probe.ext4 --prefix NESTED
fi
/iii/iii-vmctl nested-suite --dir /iii
sync
reboot -f
"#;

fn find_module(l1: &Path, name: &str) -> Result<Vec<u8>> {
    let base = l1.join("lib/modules");
    let ver = std::fs::read_dir(&base)
        .with_context(|| {
            format!(
                "{} (unpack the linux-image-*-cloud-amd64 package)",
                base.display()
            )
        })?
        .flatten()
        .next()
        .context("no kernel modules directory")?
        .path();
    for sub in ["kernel/virt/lib", "kernel/arch/x86/kvm"] {
        let p = ver.join(sub).join(format!("{name}.ko"));
        if p.exists() {
            return Ok(std::fs::read(p)?);
        }
    }
    bail!("module {name}.ko not found under {}", ver.display())
}

/// Under TCG the L1 TSC ticks at the host TSC rate, but L1 cannot calibrate
/// it (no HPET/PM timer, the PIT check fails), marks it unstable and falls
/// back to jiffies; L1 KVM then hands L2 a broken clock and quiet L2 boots
/// hang at random. Telling L1 the frequency avoids the calibration.
fn l1_tsc_args() -> String {
    let khz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| mhz_to_khz(l.split(':').nth(1)?.trim()))
    });
    match khz {
        Some(k) => format!("tsc_early_khz={k} tsc=reliable"),
        None => String::new(),
    }
}

/// kHz from a `/proc/cpuinfo` "cpu MHz" value such as `2994.374`, digit by
/// digit (no floating point, so nothing to round or truncate).
fn mhz_to_khz(mhz: &str) -> Option<u64> {
    let (whole, frac) = mhz.split_once('.').unwrap_or((mhz, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The first three fractional digits are the kHz; pad short fractions.
    let khz_digits: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    whole
        .parse::<u64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(khz_digits.parse().ok()?)
}

fn l1_kernel(l1: &Path) -> Result<std::path::PathBuf> {
    std::fs::read_dir(l1.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no boot/vmlinuz-* in the L1 kernel directory")
}

fn build_l1_initrd(
    fx: &Fixtures,
    vmm: &Path,
    vmctl: &Path,
    probe: Option<&Path>,
    init: &Path,
    l1: &Path,
) -> Result<std::path::PathBuf> {
    let up_a = fx.dir.join("upper-a.ext4");
    let up_b = fx.dir.join("upper-b.ext4");
    image::create_upper(&up_a, 16)?;
    image::create_upper(&up_b, 16)?;
    let mut a = Archive::new();
    a.dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox()?)
        .file("init", 0o755, L1_INIT.as_bytes())
        .dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("lib", 0o755)
        .dir("lib/kvm", 0o755);
    for m in ["irqbypass", "kvm", "kvm-amd"] {
        a.file(&format!("lib/kvm/{m}.ko"), 0o644, &find_module(l1, m)?);
    }
    a.dir("iii", 0o755)
        .file(
            "iii/iii-vmm",
            0o755,
            &std::fs::read(vmm).context("iii-vmm")?,
        )
        .file(
            "iii/iii-vmctl",
            0o755,
            &std::fs::read(vmctl).context("iii-vmctl")?,
        )
        .file("iii/vmlinux", 0o644, &std::fs::read(&fx.kernel)?)
        .file(
            "iii/bzImage",
            0o644,
            &std::fs::read(fx.kernel.with_file_name("bzImage")).context("bzImage")?,
        )
        .file("iii/initrd.cpio", 0o644, &std::fs::read(&fx.initrd)?)
        .file("iii/lower.erofs", 0o644, &std::fs::read(&fx.lower_erofs)?)
        .file("iii/upper-a.ext4", 0o644, &std::fs::read(&up_a)?)
        .file("iii/upper-b.ext4", 0o644, &std::fs::read(&up_b)?);
    if let Some(probe) = probe {
        // L1 has no mke2fs: the runtime copies this empty upper per sandbox.
        let up_p = fx.dir.join("upper-probe.ext4");
        image::create_upper(&up_p, 16)?;
        a.file(
            "iii/iii-sandbox-probe",
            0o755,
            &std::fs::read(probe).context("iii-sandbox-probe")?,
        )
        .file(
            "iii/iii-init",
            0o755,
            &std::fs::read(init).context("iii-init")?,
        )
        .file("iii/upper-probe.ext4", 0o644, &std::fs::read(&up_p)?);
    }
    let out = fx.dir.join("l1.cpio");
    std::fs::write(&out, a.finish()?)?;
    Ok(out)
}

/// Runs the full-VMM suite inside a nested qemu L1 (Debian cloud kernel
/// from `l1`, with kvm-amd), recording each scenario in `report`; with
/// `probe` (a static `iii-sandbox-probe`), the sandbox runtime's scenarios too.
pub fn run(
    kernel_dir: &Path,
    init: &Path,
    vmm: &Path,
    vmctl: &Path,
    probe: Option<&Path>,
    l1: &Path,
    report: &mut Report,
) {
    let r = (|| -> Result<()> {
        let fx = Fixtures::build(kernel_dir, init)?;
        let initrd = build_l1_initrd(&fx, vmm, vmctl, probe, init, l1)?;
        let spec = QemuSpec {
            kernel: l1_kernel(l1)?,
            initrd,
            append: format!(
                "console=ttyS0 reboot=t panic=-1 quiet {}{}",
                l1_tsc_args(),
                if std::env::var_os("III_HARNESS_DEBUG").is_some() {
                    " iii.debug"
                } else {
                    ""
                }
            ),
            mem_mib: 2048,
            disks: vec![],
            agent_socket: None,
            cpu: "max".into(),
            accel: "tcg".into(),
        };
        let mut q = Qemu::start(&spec)?;
        let (_, l1_ready) = q.wait_for("L1 ready", Duration::from_secs(120))?;
        println!("INFO nested L1 up after {} ms", l1_ready.as_millis());
        q.wait_for("NESTED DONE", Duration::from_secs(600))?;
        for l in q.lines() {
            if let Some(rest) = l.strip_prefix("NESTED PASS ") {
                report.check(&format!("nested/{rest}"), Ok(String::new()));
            } else if let Some(rest) = l.strip_prefix("NESTED FAIL ") {
                let (name, why) = rest.split_once(':').unwrap_or((rest, ""));
                report.check(
                    &format!("nested/{name}"),
                    Err(anyhow::anyhow!("{}", why.trim())),
                );
            } else if let Some(rest) = l.strip_prefix("NESTED BENCH ") {
                println!("BENCH nested {rest}");
            }
        }
        let _ = q.wait_exit(Duration::from_secs(60));
        Ok(())
    })();
    if let Err(e) = r {
        report.check("nested/harness", Err(e));
    }
}

#[cfg(test)]
mod tests {
    use super::mhz_to_khz;

    #[test]
    fn cpu_mhz_becomes_khz() {
        assert_eq!(mhz_to_khz("2994.374"), Some(2_994_374));
        assert_eq!(mhz_to_khz("3000"), Some(3_000_000));
        assert_eq!(mhz_to_khz("1800.5"), Some(1_800_500));
        assert_eq!(mhz_to_khz("2400.0001"), Some(2_400_000));
        assert_eq!(mhz_to_khz("fast"), None);
        assert_eq!(mhz_to_khz("12.x"), None);
    }
}
