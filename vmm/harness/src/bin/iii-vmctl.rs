//! `iii-vmctl`: host-side client for a running iii microVM, and the suite
//! that runs inside the nested L1 (where this is the only Rust on board).

#![deny(clippy::cast_possible_truncation)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use iii_vm_agent_proto::{client, ExecRequest, AGENT_PORT};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in the VM; exits with its exit code.
    Exec {
        #[arg(long)]
        uds: PathBuf,
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// Wait until the guest agent answers.
    WaitReady {
        #[arg(long)]
        uds: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    Poweroff {
        #[arg(long)]
        uds: PathBuf,
    },
    /// Everything the nested L1 checks, with `dir` holding iii-vmm, the guest
    /// kernel, initrd and images.
    NestedSuite {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Exec {
            uds,
            timeout_ms,
            tty,
            argv,
        } => {
            let s = client::connect_vsock(&uds, AGENT_PORT, Duration::from_secs(10))?;
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input)?;
            let out = client::exec(
                &s,
                &ExecRequest {
                    argv,
                    tty,
                    timeout_ms,
                    ..Default::default()
                },
                &input,
            )?;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            std::process::exit(out.code);
        }
        Cmd::WaitReady { uds, timeout_s } => {
            let t = wait_ready(&uds, Duration::from_secs(timeout_s))?;
            println!("ready after {} ms", t.as_millis());
        }
        Cmd::Poweroff { uds } => {
            let mut s = client::connect_vsock(&uds, AGENT_PORT, Duration::from_secs(10))?;
            client::poweroff(&mut s)?;
        }
        Cmd::NestedSuite { dir } => nested_suite(&dir),
    }
    Ok(())
}

fn wait_ready(uds: &Path, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let attempt = client::connect_vsock(uds, AGENT_PORT, Duration::from_secs(5))
            .and_then(|mut s| client::ping(&mut s));
        match attempt {
            Ok(()) => return Ok(t.elapsed()),
            Err(e) if t.elapsed() > timeout => bail!("agent not ready after {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        timeout_ms: Some(60_000),
        ..Default::default()
    }
}

fn run(uds: &Path, script: &str) -> Result<client::ExecOutput> {
    let s = client::connect_vsock(uds, AGENT_PORT, Duration::from_secs(10))?;
    Ok(client::exec(&s, &sh(script), b"")?)
}

struct Vm {
    name: String,
    child: Child,
    uds: PathBuf,
    started: Instant,
}

impl Vm {
    /// `kernel` is a file in `dir`: the ELF `vmlinux` or the `bzImage`.
    fn start(dir: &Path, name: &str, kernel: &str, upper: &Path, vcpus: u8) -> Result<Self> {
        let uds = PathBuf::from(format!("/tmp/{name}.sock"));
        let err = std::fs::File::create(format!("/tmp/{name}.vmm"))?;
        let started = Instant::now();
        let child = Command::new(dir.join("iii-vmm"))
            .arg("--kernel")
            .arg(dir.join(kernel))
            .arg("--initrd")
            .arg(dir.join("initrd.cpio"))
            .args(["--mem-mib", "256", "--vsock-cid", "3", "--timing"])
            .args(["--vcpus", &vcpus.to_string()])
            .arg("--disk")
            .arg(format!("{},ro", dir.join("lower.erofs").display()))
            .arg("--disk")
            .arg(upper)
            .arg("--vsock-uds")
            .arg(&uds)
            .args(["--vsock-port", "49134=tcp:127.0.0.1:49134"])
            .args([
                "--cmdline",
                "quiet iii.root=/dev/vda iii.rootfstype=erofs iii.upper=/dev/vdb iii.fwd=49134",
            ])
            .arg("--console")
            .arg(format!("/tmp/{name}.console"))
            .stdin(Stdio::null())
            .stderr(err)
            .spawn()
            .context("starting iii-vmm")?;
        Ok(Self {
            name: name.into(),
            child,
            uds,
            started,
        })
    }

    /// Waits for the guest agent, failing at once if the VMM exits.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited ({st}) before its agent was ready; vmm log: {}; console: {}",
                    self.name,
                    self.vmm_log(),
                    self.console()
                );
            }
            match wait_ready(&self.uds, Duration::from_millis(500)) {
                // From VMM spawn: create → guest agent ready.
                Ok(_) => return Ok(self.started.elapsed()),
                Err(e) if t.elapsed() > timeout => {
                    bail!(
                        "{e:#}; vmm log: {}; console: {}",
                        self.vmm_log(),
                        self.console()
                    )
                }
                Err(_) => {}
            }
        }
    }

    fn vmm_log(&self) -> String {
        std::fs::read_to_string(format!("/tmp/{}.vmm", self.name)).unwrap_or_default()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(format!("/tmp/{}.console", self.name)).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if t.elapsed() > timeout {
                let _ = self.child.kill();
                bail!(
                    "{} did not exit; vmm log:\n{}\nconsole:\n{}",
                    self.name,
                    self.vmm_log(),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn report(name: &str, r: Result<String>) {
    match r {
        Ok(n) if n.is_empty() => println!("NESTED PASS {name}"),
        Ok(n) => println!("NESTED PASS {name} ({n})"),
        Err(e) => println!(
            "NESTED FAIL {name}: {}",
            format!("{e:#}").replace('\n', " | ")
        ),
    }
}

/// Host service for the guest: echoes one line, then closes.
fn echo_server() -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:49134")?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().expect("clone"));
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() {
                    let mut c = c;
                    let _ = c.write_all(format!("echo:{line}").as_bytes());
                }
            });
        }
    });
    Ok(())
}

fn nested_suite(dir: &Path) {
    let t = Instant::now();
    report(
        "kvm_available",
        (|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .context("/dev/kvm")?;
            ensure!(!Path::new("/sys/module/kvm_pvm").exists(), "L1 KVM is PVM");
            Ok(String::new())
        })(),
    );
    if let Err(e) = echo_server() {
        report("echo_server", Err(e));
    }
    let mut a = match Vm::start(dir, "a", "vmlinux", &dir.join("upper-a.ext4"), 1) {
        Ok(v) => v,
        Err(e) => return report("boot_vm_a", Err(e)),
    };
    let ready = a.wait_ready(Duration::from_secs(180));
    let boot_ok = ready.is_ok();
    report(
        "boot_to_agent",
        ready.map(|d| {
            println!("NESTED BENCH boot_to_agent_ms={}", d.as_millis());
            format!("{} ms from VMM spawn", d.as_millis())
        }),
    );
    if !boot_ok {
        for l in a.console().lines() {
            println!("L2 console: {l}");
        }
        println!("NESTED DONE");
        return;
    }
    report(
        "exec_reads_oci_root_and_exit_codes",
        (|| {
            let out = run(&a.uds, "cat /etc/os-release")?;
            ensure!(
                out.code == 0 && out.stdout.starts_with(b"ID=iii-test"),
                "{out:?}"
            );
            let out = run(&a.uds, "echo err >&2; exit 7")?;
            ensure!(out.code == 7 && out.stderr == b"err\n", "{out:?}");
            Ok(String::new())
        })(),
    );
    report(
        "exec_stdin_stdout",
        (|| {
            let s = client::connect_vsock(&a.uds, AGENT_PORT, Duration::from_secs(10))?;
            let input: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let out = client::exec(&s, &sh("cat"), &input)?;
            ensure!(
                out.code == 0 && out.stdout == input,
                "got {} bytes",
                out.stdout.len()
            );
            Ok(String::new())
        })(),
    );
    report(
        "guest_reaches_host_tcp_via_forwarded_port",
        (|| {
            let out = run(&a.uds, "echo ping-through-vsock | nc 127.0.0.1 49134")?;
            ensure!(
                out.stdout == b"echo:ping-through-vsock\n",
                "code {} stdout {:?} stderr {:?}",
                out.code,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::new())
        })(),
    );
    report(
        "exec_timeout_124",
        (|| {
            let s = client::connect_vsock(&a.uds, AGENT_PORT, Duration::from_secs(10))?;
            let mut req = sh("sleep 30");
            req.timeout_ms = Some(500);
            let out = client::exec(&s, &req, b"")?;
            ensure!(out.code == 124, "exit {}", out.code);
            Ok(String::new())
        })(),
    );
    report(
        "exec_round_trips",
        (|| {
            let n = 20u32;
            let t = Instant::now();
            for _ in 0..n {
                let out = run(&a.uds, "true")?;
                ensure!(out.code == 0);
            }
            let mean = t.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
            println!("NESTED BENCH exec_rtt_ms={mean:.1}");
            Ok(format!("{n} round trips, mean {mean:.1} ms"))
        })(),
    );
    report(
        "shared_upper_cannot_be_opened_twice",
        (|| {
            let mut c = Vm::start(dir, "c", "vmlinux", &dir.join("upper-a.ext4"), 1)?;
            let st = c.wait_exit(Duration::from_secs(30))?;
            ensure!(!st.success(), "second VM on the same upper started");
            ensure!(
                c.vmm_log().contains("in use by another VM"),
                "log: {}",
                c.vmm_log()
            );
            Ok(String::new())
        })(),
    );
    let mut b = match Vm::start(dir, "b", "vmlinux", &dir.join("upper-b.ext4"), 2) {
        Ok(v) => v,
        Err(e) => return report("boot_vm_b", Err(e)),
    };
    report(
        "two_vms_cannot_see_each_others_files",
        (|| {
            b.wait_ready(Duration::from_secs(180))?;
            let out = run(&a.uds, "echo from-a > /root/secret-a && sync")?;
            ensure!(out.code == 0, "{out:?}");
            let out = run(
                &b.uds,
                "test ! -e /root/secret-a && echo from-b > /root/secret-b && sync",
            )?;
            ensure!(out.code == 0, "VM b sees VM a's file: {out:?}");
            let out = run(&a.uds, "test ! -e /root/secret-b && cat /root/secret-a")?;
            ensure!(
                out.code == 0 && out.stdout == b"from-a\n",
                "VM a sees VM b's file: {out:?}"
            );
            Ok(String::new())
        })(),
    );
    report(
        "smp_two_vcpus",
        (|| {
            let out = run(&b.uds, "cat /sys/devices/system/cpu/online")?;
            ensure!(
                out.stdout == b"0-1\n",
                "vm b online cpus {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
            let out = run(&a.uds, "cat /sys/devices/system/cpu/online")?;
            ensure!(
                out.stdout == b"0\n",
                "vm a online cpus {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
            Ok(String::new())
        })(),
    );
    for vm in [&mut a, &mut b] {
        let name = format!("clean_poweroff_{}", vm.name);
        let r = (|| {
            let mut s = client::connect_vsock(&vm.uds, AGENT_PORT, Duration::from_secs(10))?;
            client::poweroff(&mut s)?;
            let st = vm.wait_exit(Duration::from_secs(60))?;
            ensure!(st.success(), "vmm exit {st}; log {}", vm.vmm_log());
            let log = vm.vmm_log();
            for l in log.lines().filter(|l| l.starts_with("iii-vmm:")) {
                println!("NESTED BENCH {}: {l}", vm.name);
            }
            ensure!(log.contains("guest stopped (Reset)"), "log: {log}");
            Ok(String::new())
        })();
        report(&name, r);
    }
    report(
        "boot_bzimage_and_upper_kept_across_boots",
        (|| {
            // VM a is gone, so its upper is free again; what a wrote must
            // still be there, now under a kernel loaded from the bzImage.
            let mut z = Vm::start(dir, "z", "bzImage", &dir.join("upper-a.ext4"), 1)?;
            let ready = z.wait_ready(Duration::from_secs(180))?;
            let out = run(&z.uds, "cat /root/secret-a")?;
            ensure!(
                out.code == 0 && out.stdout == b"from-a\n",
                "upper written by VM a not seen after a reboot: {out:?}"
            );
            let mut s = client::connect_vsock(&z.uds, AGENT_PORT, Duration::from_secs(10))?;
            client::poweroff(&mut s)?;
            let st = z.wait_exit(Duration::from_secs(60))?;
            ensure!(st.success(), "vmm exit {st}; log {}", z.vmm_log());
            Ok(format!(
                "agent ready {} ms from VMM spawn",
                ready.as_millis()
            ))
        })(),
    );
    println!("NESTED BENCH suite_s={:.1}", t.elapsed().as_secs_f64());
    println!("NESTED DONE");
}
