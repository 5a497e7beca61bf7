//! VM test harness. `tcg`: guest-side tests (our kernel + init + OCI root)
//! under qemu TCG. `nested`: our VMM inside a qemu TCG L1 with kvm-amd.
//! Prints one line per scenario and a closing `N passed, N failed`.

#![deny(clippy::cast_possible_truncation)]

use iii_vmm_harness::{nested, tcg, Report};

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Guest-side tests under qemu TCG `-M microvm`.
    Tcg {
        /// Directory holding the guest vmlinux (output of vmm/kernel/build.sh).
        #[arg(long)]
        kernel_dir: PathBuf,
        /// Static iii-init binary.
        #[arg(long)]
        init: PathBuf,
    },
    /// Full-VMM tests: qemu TCG L1 with kvm-amd running iii-vmm.
    Nested {
        #[arg(long)]
        kernel_dir: PathBuf,
        #[arg(long)]
        init: PathBuf,
        /// Static iii-vmm binary.
        #[arg(long)]
        vmm: PathBuf,
        /// Static iii-vmctl binary (host-side client used inside L1).
        #[arg(long)]
        vmctl: PathBuf,
        /// Static iii-sandbox-probe: also drive the sandbox microVM runtime inside L1.
        #[arg(long)]
        probe: Option<PathBuf>,
        /// Directory with the unpacked Debian cloud kernel package (L1 kernel + kvm modules).
        #[arg(long)]
        l1_dir: PathBuf,
    },
}

fn main() -> Result<()> {
    let mut report = Report::new();
    match Cli::parse().cmd {
        Cmd::Tcg { kernel_dir, init } => tcg::run(&kernel_dir, &init, &mut report),
        Cmd::Nested {
            kernel_dir,
            init,
            vmm,
            vmctl,
            probe,
            l1_dir,
        } => nested::run(
            &kernel_dir,
            &init,
            &vmm,
            &vmctl,
            probe.as_deref(),
            &l1_dir,
            &mut report,
        ),
    }
    println!("{} passed, {} failed", report.passed, report.failed);
    if report.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
