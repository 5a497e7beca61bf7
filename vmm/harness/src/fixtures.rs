//! Test inputs: an OCI image built from busybox-static, the root images
//! derived from it through the real OCI path, and the initramfs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iii_oci_rootfs::layout::{layer_tar, write_layout, Entry};
use iii_oci_rootfs::{image, initramfs, oci};

/// Everything a guest test boots, built once in a temporary directory that
/// is removed on drop.
pub struct Fixtures {
    /// The temporary directory holding the files below.
    pub dir: PathBuf,
    /// The guest kernel (`vmlinux` from the kernel cache).
    pub kernel: PathBuf,
    /// The initramfs holding our init.
    pub initrd: PathBuf,
    /// The test image's root as an erofs lower.
    pub lower_erofs: PathBuf,
    /// The same root as an ext4 lower.
    pub lower_ext4: PathBuf,
}

/// Contents of `/etc/os-release` in the test image, which tests read back.
pub const OS_RELEASE: &[u8] = b"ID=iii-test\nNAME=\"iii test image\"\n";

/// Applets the test image links to busybox.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "mkdir", "rm", "sleep", "test", "pwd", "id", "env", "wc", "head",
    "true", "false", "nc", "sync", "stat", "mount", "dd", "seq", "printf", "tr", "grep", "kill",
    "stty",
];

/// The host's `/bin/busybox`, refused unless it is the static build.
pub fn busybox() -> Result<Vec<u8>> {
    let p = Path::new("/bin/busybox");
    let data = std::fs::read(p).context("reading /bin/busybox (apt-get install busybox-static)")?;
    // The image has no libc, so busybox must be the static build.
    let out = std::process::Command::new("file").arg(p).output();
    if let Ok(o) = out {
        if String::from_utf8_lossy(&o.stdout).contains("dynamically linked") {
            bail!("/bin/busybox is dynamically linked; install busybox-static");
        }
    }
    Ok(data)
}

/// Two layers, so whiteouts and ordering are exercised on the way in.
pub fn write_test_image(dir: &Path) -> Result<()> {
    let bb = busybox()?;
    let mut base = vec![
        Entry::Dir {
            path: "bin",
            mode: 0o755,
        },
        Entry::Dir {
            path: "etc",
            mode: 0o755,
        },
        Entry::Dir {
            path: "root",
            mode: 0o700,
        },
        Entry::Dir {
            path: "tmp",
            mode: 0o1777,
        },
        Entry::Dir {
            path: "srv",
            mode: 0o755,
        },
        Entry::File {
            path: "bin/busybox",
            mode: 0o755,
            data: &bb,
        },
        Entry::File {
            path: "etc/os-release",
            mode: 0o644,
            data: b"ID=old\n",
        },
        Entry::File {
            path: "etc/removed-by-upper-layer",
            mode: 0o644,
            data: b"x",
        },
        Entry::File {
            path: "bin/setuid-tool",
            mode: 0o4755,
            data: b"#!/bin/sh\necho hi\n",
        },
    ];
    let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    for l in &links {
        base.push(Entry::Symlink {
            path: l,
            target: "busybox",
        });
    }
    let top = vec![
        Entry::File {
            path: "etc/os-release",
            mode: 0o644,
            data: OS_RELEASE,
        },
        Entry::Whiteout {
            path: "etc/removed-by-upper-layer",
        },
    ];
    let layers = vec![layer_tar(&base)?, layer_tar(&top)?];
    write_layout(
        dir,
        &layers,
        serde_json::json!({"Env": ["PATH=/bin", "GREETING=hello"], "Cmd": ["/bin/sh"], "WorkingDir": "/srv"}),
    )?;
    Ok(())
}

impl Fixtures {
    /// Builds the initramfs from `init` and both lowers from the test OCI
    /// image, through the real OCI path; the kernel comes from `kernel_dir`.
    pub fn build(kernel_dir: &Path, init: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("iii-vmm-harness")
            .tempdir()?
            .keep();
        let kernel = kernel_dir.join("vmlinux");
        if !kernel.is_file() {
            bail!("{} missing: run vmm/kernel/build.sh", kernel.display());
        }
        let init_bin =
            std::fs::read(init).with_context(|| format!("reading {}", init.display()))?;
        let initrd = dir.join("initrd.cpio");
        std::fs::write(&initrd, initramfs::build(&init_bin, &[])?)?;
        let layout = dir.join("image");
        write_test_image(&layout)?;
        let img = oci::Image::open(&layout)?;
        let root = dir.join("rootfs");
        img.unpack(&root)?;
        let lower_erofs = dir.join("lower.erofs");
        let lower_ext4 = dir.join("lower.ext4");
        image::build_lower(&root, &lower_erofs, image::Format::Erofs)?;
        image::build_lower(&root, &lower_ext4, image::Format::Ext4)?;
        Ok(Self {
            dir,
            kernel,
            initrd,
            lower_erofs,
            lower_ext4,
        })
    }

    /// A new, empty 32 MiB ext4 upper named `name` in the fixture directory.
    pub fn fresh_upper(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        image::create_upper(&p, 32)?;
        Ok(p)
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
