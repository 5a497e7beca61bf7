//! Guest-side tests under qemu TCG `-M microvm`: our kernel, our init, a
//! root filesystem made from an OCI image. The exec agent is reached over a
//! virtio-serial port (qemu has no userspace vsock here: /dev/vhost-vsock is
//! absent), speaking the same protocol as over vsock.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use iii_oci_rootfs::image;
use iii_vm_agent_proto::{client, ExecRequest, Frame, FsRequest, Kind, EXIT_TIMEOUT};

use crate::fixtures::{Fixtures, OS_RELEASE};
use crate::qemu::{hex, sha256_file, Qemu, QemuSpec};
use crate::Report;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_IO_TIMEOUT: Duration = Duration::from_secs(90);
const BASE_APPEND: &str = "console=ttyS0 reboot=t panic=-1 quiet";

/// The qemu TCG spec for booting the fixtures with `append` after the
/// base command line, `disks`, and optionally the agent on a serial port.
pub fn spec(
    fx: &Fixtures,
    append: &str,
    disks: Vec<(std::path::PathBuf, bool)>,
    agent: Option<&Path>,
) -> QemuSpec {
    QemuSpec {
        kernel: fx.kernel.clone(),
        initrd: fx.initrd.clone(),
        append: format!("{BASE_APPEND} {append}"),
        mem_mib: 256,
        disks,
        agent_socket: agent.map(Path::to_path_buf),
        cpu: "max".into(),
        accel: "tcg".into(),
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        ..Default::default()
    }
}

fn run_hex(req: &ExecRequest) -> String {
    hex(&serde_json::to_vec(req).expect("serializable"))
}

fn connect_agent(sock: &Path) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => {
                // A stalled guest must fail the scenario, not hang the suite.
                s.set_read_timeout(Some(AGENT_IO_TIMEOUT))?;
                s.set_write_timeout(Some(AGENT_IO_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!("agent socket {}: {e}", sock.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs the guest-side suite under qemu TCG, recording each scenario in `report`.
pub fn run(kernel_dir: &Path, init: &Path, report: &mut Report) {
    let fx = match Fixtures::build(kernel_dir, init) {
        Ok(f) => f,
        Err(e) => {
            report.check("tcg/fixtures", Err(e));
            return;
        }
    };
    report.check("tcg/fixtures", Ok(String::new()));
    report.check("tcg/boot_to_init_and_poweroff", boot_to_init(&fx));
    exec_suite(&fx, report);
    report.check("tcg/workload_exit_code_ext4_lower", workload_exit_code(&fx));
    report.check("tcg/workload_timeout_124", workload_timeout(&fx));
    report.check(
        "tcg/init_forwards_signals_to_workload",
        workload_signal(&fx),
    );
}

/// initramfs only: init comes up, the agent answers, power off ends qemu.
fn boot_to_init(fx: &Fixtures) -> Result<String> {
    let sock = fx.dir.join("boot.sock");
    let mut q = Qemu::start(&spec(fx, "", vec![], Some(&sock)))?;
    let (_, ready) = q.wait_for("iii-init: ready", BOOT_TIMEOUT)?;
    let mut s = connect_agent(&sock)?;
    client::ping(&mut s)?;
    client::poweroff(&mut s)?;
    let exited = q.wait_exit(Duration::from_secs(20))?;
    Ok(format!(
        "init ready {} ms, exit {} ms",
        ready.as_millis(),
        exited.as_millis()
    ))
}

/// One boot with an erofs lower and ext4 upper; many exec checks.
fn exec_suite(fx: &Fixtures, report: &mut Report) {
    let failed_before = report.failed;
    let r = (|| -> Result<()> {
        let upper = fx.fresh_upper("upper-exec.ext4")?;
        let lower_sum = sha256_file(&fx.lower_erofs)?;
        let sock = fx.dir.join("exec.sock");
        let mut q = Qemu::start(&spec(
            fx,
            "iii.root=/dev/vda iii.rootfstype=erofs iii.upper=/dev/vdb",
            vec![(fx.lower_erofs.clone(), true), (upper.clone(), false)],
            Some(&sock),
        ))?;
        q.wait_for("iii-init: ready", BOOT_TIMEOUT)?;
        let mut s = connect_agent(&sock)?;
        client::ping(&mut s)?;

        report.check(
            "tcg/exec_reads_oci_root",
            (|| {
                let out = client::exec(&s, &sh("cat /etc/os-release"), b"")?;
                ensure!(out.code == 0, "exit {}", out.code);
                ensure!(
                    out.stdout == OS_RELEASE,
                    "got {:?}",
                    String::from_utf8_lossy(&out.stdout)
                );
                let out = client::exec(&s, &sh("test ! -e /etc/removed-by-upper-layer"), b"")?;
                ensure!(
                    out.code == 0,
                    "whiteout from the upper OCI layer not applied"
                );
                let (st, _) = client::fs(
                    &mut s,
                    &FsRequest::Stat {
                        path: "/bin/setuid-tool".into(),
                    },
                    b"",
                )?;
                let mode = st
                    .entries
                    .first()
                    .map(|e| e.mode)
                    .ok_or_else(|| anyhow!("stat failed: {:?}", st.error))?;
                ensure!(mode & 0o6000 == 0, "setuid survived: {mode:o}");
                Ok(String::new())
            })(),
        );

        report.check(
            "tcg/exec_exit_code_stdout_stderr",
            (|| {
                let out = client::exec(&s, &sh("echo out; echo err >&2; exit 42"), b"")?;
                ensure!(out.code == 42, "exit {}", out.code);
                ensure!(out.stdout == b"out\n" && out.stderr == b"err\n", "{out:?}");
                Ok(String::new())
            })(),
        );

        report.check(
            "tcg/exec_stdin_roundtrip",
            (|| {
                let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
                let t = Instant::now();
                let out = client::exec(&s, &sh("cat"), &input)?;
                ensure!(
                    out.code == 0 && out.stdout == input,
                    "stdin/stdout mismatch ({} bytes back)",
                    out.stdout.len()
                );
                Ok(format!("200 kB echoed in {} ms", t.elapsed().as_millis()))
            })(),
        );

        report.check(
            "tcg/exec_env_cwd_user",
            (|| {
                let mut req = sh("echo $GREETING; pwd; id -u");
                req.env.push(("GREETING".into(), "hello".into()));
                req.cwd = Some("/srv".into());
                req.user = Some("1000:1000".into());
                let out = client::exec(&s, &req, b"")?;
                ensure!(
                    out.stdout == b"hello\n/srv\n1000\n",
                    "{:?}",
                    String::from_utf8_lossy(&out.stdout)
                );
                Ok(String::new())
            })(),
        );

        report.check(
            "tcg/exec_timeout_124",
            (|| {
                let mut req = sh("sleep 30");
                req.timeout_ms = Some(500);
                let t = Instant::now();
                let out = client::exec(&s, &req, b"")?;
                ensure!(out.code == EXIT_TIMEOUT, "exit {}", out.code);
                ensure!(
                    t.elapsed() < Duration::from_secs(15),
                    "took {:?}",
                    t.elapsed()
                );
                Ok(String::new())
            })(),
        );

        report.check(
            "tcg/exec_pty",
            (|| {
                let mut req = sh("test -t 0 && test -t 1 && echo tty");
                req.tty = true;
                let out = client::exec(&s, &req, b"")?;
                ensure!(
                    out.code == 0 && String::from_utf8_lossy(&out.stdout).trim() == "tty",
                    "{out:?}"
                );
                Ok(String::new())
            })(),
        );

        report.check(
            "tcg/exec_pty_resize",
            (|| {
                // The resize frame is applied before the line that lets the
                // shell go on, so `stty size` must see the new size.
                let mut req = sh("read go; stty size");
                req.tty = true;
                let out = client::exec_frames(
                    &s,
                    &req,
                    vec![
                        Frame::resize(40, 100),
                        Frame::new(Kind::Stdin, b"go\n".to_vec()),
                    ],
                )?;
                let text = String::from_utf8_lossy(&out.stdout);
                ensure!(
                    out.code == 0 && text.lines().any(|l| l.trim() == "40 100"),
                    "exit {}, output {text:?}",
                    out.code
                );
                Ok(String::new())
            })(),
        );

        report.check(
            "tcg/exec_signal_reaches_the_process_group",
            (|| {
                let t = Instant::now();
                let out = client::exec_frames(&s, &sh("sleep 30"), vec![Frame::signal(15)])?;
                ensure!(
                    out.code == 128 + 15,
                    "exit {} after {:?}",
                    out.code,
                    t.elapsed()
                );
                Ok(String::new())
            })(),
        );

        report.check(
            "tcg/exec_round_trip_latency",
            (|| {
                let n = 10;
                let t = Instant::now();
                for _ in 0..n {
                    let out = client::exec(&s, &sh("true"), b"")?;
                    ensure!(out.code == 0);
                }
                Ok(format!(
                    "mean {} ms per exec under TCG",
                    t.elapsed().as_millis() / n
                ))
            })(),
        );

        if report.failed > failed_before {
            println!(
                "INFO guest console after a failed exec check:\n{}",
                q.tail()
            );
        }

        // Writes go to the upper only.
        let out = client::exec(
            &s,
            &sh("echo persisted > /root/written.txt && rm /etc/os-release && sync"),
            b"",
        )?;
        ensure!(
            out.code == 0,
            "write failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        client::fs(
            &mut s,
            &FsRequest::Write {
                path: "/srv/agent.txt".into(),
                mode: 0o644,
                parents: false,
                stream: false,
            },
            b"via fs op",
        )?;
        let (_, data) = client::fs(
            &mut s,
            &FsRequest::Read {
                path: "/srv/agent.txt".into(),
            },
            b"",
        )?;
        ensure!(data == b"via fs op", "fs read back {:?}", data);
        client::exec(&s, &sh("sync"), b"")?;
        client::poweroff(&mut s)?;
        q.wait_exit(Duration::from_secs(30))?;

        report.check(
            "tcg/writes_land_in_upper_only",
            (|| {
                let w = image::ext4_cat(&upper, "/data/root/written.txt")?;
                ensure!(
                    w == b"persisted\n",
                    "upper has {:?}",
                    String::from_utf8_lossy(&w)
                );
                let a = image::ext4_cat(&upper, "/data/srv/agent.txt")?;
                ensure!(
                    a == b"via fs op",
                    "upper has {:?}",
                    String::from_utf8_lossy(&a)
                );
                ensure!(
                    sha256_file(&fx.lower_erofs)? == lower_sum,
                    "the read-only lower image changed"
                );
                Ok(String::new())
            })(),
        );
        Ok(())
    })();
    if let Err(e) = r {
        report.check("tcg/exec_suite", Err(e));
    }
}

fn workload_exit_code(fx: &Fixtures) -> Result<String> {
    let sum = sha256_file(&fx.lower_ext4)?;
    let mut req = sh("cat /etc/os-release; echo cwd=$(pwd); touch /etc/new-file; exit 42");
    req.cwd = Some("/srv".into());
    let mut q = Qemu::start(&spec(
        fx,
        &format!(
            "iii.root=/dev/vda iii.rootfstype=ext4 iii.run={}",
            run_hex(&req)
        ),
        vec![(fx.lower_ext4.clone(), true)],
        None,
    ))?;
    q.wait_for("iii-init: exit=", BOOT_TIMEOUT)?;
    q.wait_exit(Duration::from_secs(20))?;
    let lines = q.lines();
    ensure!(
        lines.iter().any(|l| l == "ID=iii-test"),
        "no os-release in console:\n{}",
        q.tail()
    );
    ensure!(
        lines.iter().any(|l| l == "cwd=/srv"),
        "cwd not applied:\n{}",
        q.tail()
    );
    let exit = lines
        .iter()
        .find(|l| l.contains("iii-init: exit="))
        .context("no exit line")?;
    if !exit.ends_with("exit=42") {
        bail!("wrong exit line {exit:?}");
    }
    ensure!(
        sha256_file(&fx.lower_ext4)? == sum,
        "the read-only lower image changed"
    );
    Ok(String::new())
}

fn workload_timeout(fx: &Fixtures) -> Result<String> {
    let mut req = sh("sleep 60");
    req.timeout_ms = Some(300);
    let mut q = Qemu::start(&spec(
        fx,
        &format!(
            "iii.root=/dev/vda iii.rootfstype=erofs iii.run={}",
            run_hex(&req)
        ),
        vec![(fx.lower_erofs.clone(), true)],
        None,
    ))?;
    let (line, _) = q.wait_for("iii-init: exit=", BOOT_TIMEOUT)?;
    ensure!(line.ends_with(&format!("exit={EXIT_TIMEOUT}")), "{line}");
    q.wait_exit(Duration::from_secs(20))?;
    Ok(String::new())
}

/// SIGTERM sent to PID 1 reaches the workload, whose exit code ends the VM.
fn workload_signal(fx: &Fixtures) -> Result<String> {
    let req = sh("trap 'echo got-term; exit 3' TERM; echo waiting; while true; do sleep 1; done");
    let sock = fx.dir.join("signal.sock");
    let mut q = Qemu::start(&spec(
        fx,
        &format!(
            "iii.root=/dev/vda iii.rootfstype=erofs iii.run={}",
            run_hex(&req)
        ),
        vec![(fx.lower_erofs.clone(), true)],
        Some(&sock),
    ))?;
    q.wait_for("waiting", BOOT_TIMEOUT)?;
    let s = connect_agent(&sock)?;
    // The workload exits on the signal and init powers off at once, so the
    // reply to this exec may be cut off; only a refusal counts as failure.
    match client::exec(&s, &sh("kill -TERM 1"), b"") {
        Ok(out) => ensure!(out.code == 0, "kill failed: {out:?}\n{}", q.tail()),
        Err(iii_vm_agent_proto::ProtoError::Closed) => {}
        Err(e) => bail!("exec kill -TERM 1: {e}; console:\n{}", q.tail()),
    }
    let (line, _) = match q.wait_for("iii-init: exit=", Duration::from_secs(15)) {
        Ok(x) => x,
        Err(e) => {
            let dbg = client::exec(&s, &sh("grep -E 'Sig|ShdPnd|Threads' /proc/1/status; for p in /proc/[0-9]*; do echo $p $(cat $p/comm) $(grep -E 'SigBlk|SigCgt' $p/status | tr '\\n' ' '); done"), b"")?;
            bail!(
                "{e}\nguest state:\n{}",
                String::from_utf8_lossy(&dbg.stdout)
            );
        }
    };
    ensure!(line.ends_with("exit=3"), "{line}");
    ensure!(
        q.lines().iter().any(|l| l == "got-term"),
        "workload never saw SIGTERM:\n{}",
        q.tail()
    );
    q.wait_exit(Duration::from_secs(20))?;
    Ok(String::new())
}
