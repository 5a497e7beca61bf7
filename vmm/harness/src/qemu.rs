//! Launching qemu (a test tool only) and watching its serial console.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running qemu, killed on drop, with its serial console collected line by line.
pub struct Qemu {
    child: Child,
    console: Arc<Mutex<Vec<String>>>,
    /// When qemu was spawned; the times `wait_for` returns count from here.
    pub started: Instant,
}

/// How to start qemu.
#[derive(Default)]
pub struct QemuSpec {
    /// Kernel to boot directly.
    pub kernel: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// (image, read_only)
    pub disks: Vec<(PathBuf, bool)>,
    /// Unix socket path for a virtio-serial port named `iii.agent`.
    pub agent_socket: Option<PathBuf>,
    /// `-cpu` model (`max` emulates SVM, for the nested L1).
    pub cpu: String,
    /// The `-accel` backend (the suites use `tcg`).
    pub accel: String,
}

impl Qemu {
    /// Spawns `qemu-system-x86_64 -M microvm` for `spec`.
    pub fn start(spec: &QemuSpec) -> Result<Self> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,acpi=off",
            "-accel",
            &spec.accel,
            "-cpu",
            &spec.cpu,
            "-m",
            &spec.mem_mib.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .arg("-append")
        .arg(&spec.append);
        for (i, (img, ro)) in spec.disks.iter().enumerate() {
            let ro = if *ro { ",readonly=on" } else { "" };
            cmd.arg("-drive")
                .arg(format!(
                    // Report I/O errors to the guest: qemu's default pauses
                    // the VM on ENOSPC, which looks like a hung guest.
                    "id=d{i},file={},format=raw,if=none,werror=report,rerror=report{ro}",
                    img.display()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-device,drive=d{i}"));
        }
        if let Some(sock) = &spec.agent_socket {
            cmd.args(["-device", "virtio-serial-device", "-chardev"])
                .arg(format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    sock.display()
                ))
                .args(["-device", "virtserialport,chardev=agent,name=iii.agent"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let console = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let c = console.clone();
            std::thread::spawn(move || {
                // Bytes, not `lines()`: one invalid UTF-8 byte on the console
                // must not stop this reader, or qemu blocks on a full pipe and
                // the guest stalls.
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if std::env::var_os("III_HARNESS_VERBOSE").is_some() {
                        eprintln!("  | {line}");
                    }
                    c.lock().unwrap().push(line);
                }
            });
        }
        Ok(Self {
            child,
            console,
            started,
        })
    }

    /// The console lines seen so far.
    pub fn lines(&self) -> Vec<String> {
        self.console.lock().unwrap().clone()
    }

    /// Waits for a console line containing `needle`; returns it and when it appeared.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Ok((l, self.started.elapsed()));
            }
            if let Some(st) = self.child.try_wait()? {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                    return Ok((l, self.started.elapsed()));
                }
                bail!(
                    "qemu exited ({st}) before {needle:?}; console:\n{}",
                    self.tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {needle:?}; console:\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last 40 console lines, for failure messages.
    pub fn tail(&self) -> String {
        let l = self.lines();
        l[l.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for qemu to exit (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                bail!("guest did not power off; console:\n{}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The SHA-256 of a file's contents, in hex.
pub fn sha256_file(p: &Path) -> Result<String> {
    use sha2::Digest;
    let data = std::fs::read(p)?;
    Ok(hex(&sha2::Sha256::digest(&data)))
}
