//! Filesystem images from a directory, via the standard tools (no root needed).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A required command-line tool is not on `PATH`.
    #[error("{tool} is not installed (apt-get install {package})")]
    MissingTool {
        /// The tool's command name.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The tool ran and failed.
    #[error("{tool} failed: {stderr}")]
    Tool {
        /// The tool's command name.
        tool: &'static str,
        /// What it printed on stderr (or why it could not be started).
        stderr: String,
    },
    /// A file next to the image could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The filesystem of a read-only lower image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Compressed erofs (`mkfs.erofs -zlz4`): smaller and faster to boot.
    Erofs,
    /// ext4 built with `mke2fs -d`, for kernels without erofs.
    Ext4,
}

impl Format {
    /// The name the kernel mounts it by (`iii.rootfstype=`).
    pub fn fstype(self) -> &'static str {
        match self {
            Format::Erofs => "erofs",
            Format::Ext4 => "ext4",
        }
    }
}

fn run(tool: &'static str, package: &'static str, cmd: &mut Command) -> Result<(), ImageError> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::MissingTool { tool, package }
        } else {
            ImageError::Tool {
                tool,
                stderr: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len() + 4096,
                Err(_) => {}
            }
        }
    }
    total
}

/// Writes the read-only lower image for `dir` to `out`.
pub fn build_lower(dir: &Path, out: &Path, format: Format) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    match format {
        Format::Erofs => {
            let mut cmd = Command::new("mkfs.erofs");
            // lz4, not lz4hc: the same decompression speed, a few % larger, and 20x
            // faster to build (50 MiB of incompressible data: 2.7 s against 53 s here), which
            // is most of an `iii worker add`.
            cmd.arg("-zlz4");
            // Run as root, the unpacker kept the image's owners (a `USER app`
            // image needs its home owned by app); otherwise every file is the
            // builder's and is mapped to root.
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                cmd.arg("--all-root");
            }
            run("mkfs.erofs", "erofs-utils", cmd.arg(out).arg(dir))
        }
        Format::Ext4 => {
            // Room for metadata; the lower is never written, so no slack for growth.
            let size = (dir_bytes(dir) * 13 / 10 + (8 << 20)).div_ceil(1 << 20);
            mke2fs(out, "iii-lower", Some(dir), size)
        }
    }
}

/// Creates an empty ext4 upper image of `size_mib` for one VM.
pub fn create_upper(out: &Path, size_mib: u64) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    mke2fs(out, "iii-upper", None, size_mib)
}

/// A journal-less, root-owned ext4 image of `size_mib` labelled `label`, populated from
/// `contents` when given (`mke2fs -d`, no root needed).
fn mke2fs(
    out: &Path,
    label: &str,
    contents: Option<&Path>,
    size_mib: u64,
) -> Result<(), ImageError> {
    let mut cmd = Command::new("mke2fs");
    cmd.args([
        "-q",
        "-t",
        "ext4",
        "-O",
        "^has_journal",
        "-E",
        "root_owner=0:0",
        "-L",
        label,
    ]);
    if let Some(dir) = contents {
        cmd.arg("-d").arg(dir);
    }
    run(
        "mke2fs",
        "e2fsprogs",
        cmd.arg(out).arg(format!("{size_mib}M")),
    )
}

/// Reads a file out of an ext4 image without mounting it (debugfs).
pub fn ext4_cat(image: &Path, path: &str) -> Result<Vec<u8>, ImageError> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .map_err(|_| ImageError::MissingTool {
            tool: "debugfs",
            package: "e2fsprogs",
        })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool: "debugfs",
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(out.stdout)
}
