//! Writes OCI image layouts: used to package test images (for example a
//! busybox root) exactly as a registry pull would store them.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

/// One entry of a layer being built.
pub enum Entry<'a> {
    /// A directory.
    Dir {
        /// Path inside the layer, written verbatim.
        path: &'a str,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the layer, written verbatim.
        path: &'a str,
        /// Permission bits (setuid/setgid included, to test stripping).
        mode: u32,
        /// Contents.
        data: &'a [u8],
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the layer, written verbatim.
        path: &'a str,
        /// Link target, written verbatim.
        target: &'a str,
    },
    /// A hard link to an earlier entry.
    Hardlink {
        /// Path inside the layer, written verbatim.
        path: &'a str,
        /// Path of the entry it links to, written verbatim.
        target: &'a str,
    },
    /// Deletes `path` from lower layers.
    Whiteout {
        /// The path to delete.
        path: &'a str,
    },
    /// Hides everything lower layers put in directory `path`.
    Opaque {
        /// The directory to empty.
        path: &'a str,
    },
}

/// Builds an uncompressed tar layer from entries. Names are written
/// verbatim (no sanitising) so tests can also build hostile layers.
pub fn layer_tar(entries: &[Entry<'_>]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (String, &[u8]) = match e {
            Entry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                (path.to_string(), &[])
            }
            Entry::File { path, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                (path.to_string(), data)
            }
            Entry::Symlink { path, target } | Entry::Hardlink { path, target } => {
                h.set_entry_type(if matches!(e, Entry::Symlink { .. }) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                set_raw_link(&mut h, target)?;
                (path.to_string(), &[])
            }
            Entry::Whiteout { path } => {
                let p = std::path::Path::new(path);
                let parent = p
                    .parent()
                    .map(|x| x.to_string_lossy().to_string())
                    .unwrap_or_default();
                let base = p
                    .file_name()
                    .map(|x| x.to_string_lossy().to_string())
                    .unwrap_or_default();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (join(&parent, &format!(".wh.{base}")), &[])
            }
            Entry::Opaque { path } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (join(path, ".wh..wh..opq"), &[])
            }
        };
        h.set_size(data.len() as u64);
        set_raw_path(&mut h, &path)?;
        h.set_cksum();
        b.append(&h, data)?;
    }
    b.into_inner()
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.into()
    } else {
        format!("{a}/{b}")
    }
}

// tar's set_path refuses `..`; write the raw name field instead.
fn set_raw_path(h: &mut tar::Header, path: &str) -> io::Result<()> {
    let name = &mut h.as_old_mut().name;
    if path.len() >= name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "path too long"));
    }
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    Ok(())
}

fn set_raw_link(h: &mut tar::Header, target: &str) -> io::Result<()> {
    let name = &mut h.as_old_mut().linkname;
    if target.len() >= name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "link target too long",
        ));
    }
    name.fill(0);
    name[..target.len()].copy_from_slice(target.as_bytes());
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn put_blob(dir: &Path, data: &[u8]) -> io::Result<(String, usize)> {
    let hex = sha256_hex(data);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(blobs.join(&hex), data)?;
    Ok((format!("sha256:{hex}"), data.len()))
}

/// Writes an OCI image layout at `dir` with gzip-compressed layers (bottom
/// first) and the given image config (`Env`, `Cmd`, ...).
pub fn write_layout(dir: &Path, layers: &[Vec<u8>], config: serde_json::Value) -> io::Result<()> {
    write_layout_arch(dir, layers, config, "amd64")
}

/// [`write_layout`] for an image of `architecture` (linux), e.g. `arm64`.
pub fn write_layout_arch(
    dir: &Path,
    layers: &[Vec<u8>],
    config: serde_json::Value,
    architecture: &str,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let hex = sha256_hex(l);
        diff_ids.push(format!("sha256:{hex}"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(l)?;
        let (digest, size) = put_blob(dir, &gz.finish()?)?;
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}));
    }
    finish_layout(dir, descs, diff_ids, config, architecture)
}

/// Writes an OCI image layout at `dir` whose layers are the uncompressed tar
/// files `layers` (bottom first), moved into the blob store without being read
/// into memory (root filesystems are hundreds of MiB). `dir` must be on the
/// same filesystem as the layer files.
pub fn write_layout_from_tars(
    dir: &Path,
    layers: &[std::path::PathBuf],
    config: serde_json::Value,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let mut h = Sha256::new();
        let size = io::copy(&mut io::BufReader::new(fs::File::open(l)?), &mut h)?;
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        fs::rename(l, blobs.join(&hex))?;
        // Uncompressed: the blob digest is the diff id.
        diff_ids.push(format!("sha256:{hex}"));
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{hex}"), "size": size}));
    }
    finish_layout(dir, descs, diff_ids, config, "amd64")
}

/// Config, manifest and index for layers already in the blob store.
fn finish_layout(
    dir: &Path,
    descs: Vec<serde_json::Value>,
    diff_ids: Vec<String>,
    config: serde_json::Value,
    architecture: &str,
) -> io::Result<()> {
    let cfg = json!({
        "architecture": architecture, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (cdigest, csize) = put_blob(dir, &serde_json::to_vec(&cfg)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
        "layers": descs
    });
    let (mdigest, msize) = put_blob(dir, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
                       "platform": {"architecture": architecture, "os": "linux"}}]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)
}

/// The shared libraries `binary` loads, as `ldd` resolves them (absolute host paths).
pub fn shared_libraries(binary: &Path) -> io::Result<Vec<String>> {
    let out = std::process::Command::new("ldd").arg(binary).output()?;
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        })
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
        .collect())
}

/// A small runnable root for tests and benchmarks: busybox-static (`/bin/busybox`, `/bin/sh`),
/// the host program `binary` at `at` with the shared libraries it loads at their host paths,
/// `/etc/passwd` with root, and the directories `dirs`.
pub fn busybox_binary_layer(binary: &Path, at: &str, dirs: &[&str]) -> io::Result<Vec<u8>> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "busybox-static is not installed (apt-get install busybox-static)",
            )
        })?;
    let busybox = fs::read(bb)?;
    let program = fs::read(binary)?;
    let libs: Vec<(String, Vec<u8>)> = shared_libraries(binary)?
        .into_iter()
        .map(|p| Ok((p.trim_start_matches('/').to_string(), fs::read(&p)?)))
        .collect::<io::Result<_>>()?;
    let at = at.trim_start_matches('/');
    // Every directory named, and every parent of a file, each once, parents first.
    let mut all_dirs: Vec<String> = Vec::new();
    let mut add = |dir: &Path| {
        let mut acc = String::new();
        for part in dir.iter() {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(&part.to_string_lossy());
            if !all_dirs.contains(&acc) {
                all_dirs.push(acc.clone());
            }
        }
    };
    for d in ["bin", "etc"].iter().chain(dirs) {
        add(Path::new(d.trim_matches('/')));
    }
    for f in libs.iter().map(|(p, _)| p.as_str()).chain([at]) {
        if let Some(parent) = Path::new(f).parent() {
            add(parent);
        }
    }
    let mut entries: Vec<Entry<'_>> = all_dirs
        .iter()
        .map(|d| Entry::Dir {
            path: d,
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::File {
        path: "bin/busybox",
        mode: 0o755,
        data: &busybox,
    });
    entries.push(Entry::Symlink {
        path: "bin/sh",
        target: "busybox",
    });
    entries.push(Entry::File {
        path: "etc/passwd",
        mode: 0o644,
        data: b"root:x:0:0:root:/root:/bin/sh\n",
    });
    entries.push(Entry::File {
        path: at,
        mode: 0o755,
        data: &program,
    });
    for (p, data) in &libs {
        entries.push(Entry::File {
            path: p,
            mode: 0o755,
            data,
        });
    }
    layer_tar(&entries)
}
