//! Reading OCI images and applying their layers.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why an image cannot be read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Reading the image or writing the root directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An index, manifest or config blob does not parse.
    #[error("{what} is not valid JSON: {detail}")]
    Json {
        /// Which document (its path).
        what: String,
        /// The parser's message.
        detail: String,
    },
    /// The path is neither an image layout, an OCI tarball nor a `docker save` tarball.
    #[error("not an OCI image layout or image tarball: {0}")]
    NotAnImage(PathBuf),
    /// The index names no manifest this VM can run.
    #[error("no manifest for linux/amd64 in the image index")]
    NoManifest,
    /// A blob's content hashes to something other than its name.
    #[error("blob {digest} does not match its digest")]
    DigestMismatch {
        /// The digest the blob is stored under.
        digest: String,
    },
    /// A digest that is not `sha256:<64 hex digits>`.
    #[error("unsupported digest {0:?}")]
    BadDigest(String),
    /// A layer compressed with something other than gzip (or not at all).
    #[error("unsupported layer media type {0}")]
    MediaType(String),
    /// A layer entry whose path (or link target) leaves the root, or that
    /// would be written through a symlink.
    #[error("layer entry {entry:?} escapes the root filesystem")]
    PathTraversal {
        /// The entry's name in the layer.
        entry: String,
    },
    /// A layer entry owned by an id Linux cannot represent (ids are 32 bits).
    #[error("layer entry {entry:?} has owner {uid}:{gid}, beyond 32-bit user and group ids")]
    Owner {
        /// The entry's name in the layer.
        entry: String,
        /// Its user id as the tar header gives it.
        uid: u64,
        /// Its group id as the tar header gives it.
        gid: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The parts of the image configuration a VM needs to start the workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RunConfig {
    /// `NAME=value` environment entries.
    #[serde(rename = "Env", default)]
    pub env: Vec<String>,
    /// The program and leading arguments; `cmd` is appended to it.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or the whole command when there is no entrypoint).
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory of the workload.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `user[:group]` the workload runs as.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// One layer blob and how it is compressed.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The blob file (a tar stream, possibly gzipped).
    pub path: PathBuf,
    /// Whether the blob is gzip-compressed.
    pub gzip: bool,
}

/// An image opened for reading: its layers (bottom first) and run config.
#[derive(Debug)]
pub struct Image {
    /// Layers in application order, bottom first.
    pub layers: Vec<Layer>,
    /// How the image says to run its workload.
    pub config: RunConfig,
    /// Keeps an extracted tarball alive while the image is used.
    _tmp: Option<tempfile::TempDir>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, OciError> {
    let data = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&data).map_err(|e| OciError::Json {
        what: path.display().to_string(),
        detail: e.to_string(),
    })
}

fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, OciError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| OciError::BadDigest(digest.into()))?;
    Ok(root.join("blobs/sha256").join(hex))
}

fn verify(path: &Path, digest: &str) -> Result<(), OciError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(io_err(path))?;
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest.strip_prefix("sha256:") != Some(got.as_str()) {
        return Err(OciError::DigestMismatch {
            digest: digest.into(),
        });
    }
    Ok(())
}

fn is_gzip(path: &Path) -> Result<bool, OciError> {
    let mut magic = [0u8; 2];
    let mut f = File::open(path).map_err(io_err(path))?;
    let n = f.read(&mut magic).map_err(io_err(path))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

impl Image {
    /// Opens an OCI layout directory, or a tarball holding an OCI layout or
    /// a `docker save` image.
    pub fn open(path: &Path) -> Result<Self, OciError> {
        let md = fs::metadata(path).map_err(io_err(path))?;
        if md.is_dir() {
            return Self::open_dir(path, None);
        }
        let tmp = tempfile::tempdir().map_err(io_err(path))?;
        let f = File::open(path).map_err(io_err(path))?;
        let reader: Box<dyn Read> = if is_gzip(path)? {
            Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
        } else {
            Box::new(BufReader::new(f))
        };
        let mut ar = tar::Archive::new(reader);
        // Only regular files and directories, at safe paths: the archive is
        // just a container for blobs and JSON.
        for e in ar.entries().map_err(io_err(path))? {
            let mut e = e.map_err(io_err(path))?;
            let name = e
                .path()
                .map_err(io_err(path))?
                .to_string_lossy()
                .to_string();
            let rel = normalize(&name).ok_or(OciError::PathTraversal {
                entry: name.clone(),
            })?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let dst = tmp.path().join(&rel);
            match e.header().entry_type() {
                tar::EntryType::Directory => fs::create_dir_all(&dst).map_err(io_err(&dst))?,
                tar::EntryType::Regular => {
                    if let Some(p) = dst.parent() {
                        fs::create_dir_all(p).map_err(io_err(p))?;
                    }
                    let mut out = File::create(&dst).map_err(io_err(&dst))?;
                    io::copy(&mut e, &mut out).map_err(io_err(&dst))?;
                }
                _ => {}
            }
        }
        let root = tmp.path().to_path_buf();
        Self::open_dir(&root, Some(tmp))
    }

    fn open_dir(root: &Path, tmp: Option<tempfile::TempDir>) -> Result<Self, OciError> {
        if root.join("index.json").exists() {
            let index: Index = read_json(&root.join("index.json"))?;
            let mut desc = index
                .manifests
                .into_iter()
                .next()
                .ok_or(OciError::NoManifest)?;
            // Follow nested indexes (multi-platform images) to linux/amd64.
            for _ in 0..4 {
                if !desc.media_type.contains("index") {
                    break;
                }
                let p = blob_path(root, &desc.digest)?;
                verify(&p, &desc.digest)?;
                let nested: Index = read_json(&p)?;
                desc = nested
                    .manifests
                    .into_iter()
                    .find(|m| {
                        m.platform
                            .as_ref()
                            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    })
                    .ok_or(OciError::NoManifest)?;
            }
            let mpath = blob_path(root, &desc.digest)?;
            verify(&mpath, &desc.digest)?;
            let manifest: Manifest = read_json(&mpath)?;
            let cpath = blob_path(root, &manifest.config.digest)?;
            verify(&cpath, &manifest.config.digest)?;
            let config: ImageConfig = read_json(&cpath)?;
            let mut layers = Vec::new();
            for l in &manifest.layers {
                let gzip =
                    if l.media_type.ends_with("tar+gzip") || l.media_type.ends_with("tar.gzip") {
                        true
                    } else if l.media_type.ends_with(".tar")
                        || l.media_type.ends_with("rootfs.diff.tar")
                    {
                        false
                    } else {
                        return Err(OciError::MediaType(l.media_type.clone()));
                    };
                let p = blob_path(root, &l.digest)?;
                verify(&p, &l.digest)?;
                layers.push(Layer { path: p, gzip });
            }
            return Ok(Self {
                layers,
                config: config.config.unwrap_or_default(),
                _tmp: tmp,
            });
        }
        if root.join("manifest.json").exists() {
            let mut m: Vec<DockerManifest> = read_json(&root.join("manifest.json"))?;
            let m = m.pop().ok_or(OciError::NoManifest)?;
            let config: ImageConfig = read_json(&safe_join(root, &m.config)?)?;
            let mut layers = Vec::new();
            for l in &m.layers {
                let p = safe_join(root, l)?;
                layers.push(Layer {
                    gzip: is_gzip(&p)?,
                    path: p,
                });
            }
            return Ok(Self {
                layers,
                config: config.config.unwrap_or_default(),
                _tmp: tmp,
            });
        }
        Err(OciError::NotAnImage(root.to_path_buf()))
    }

    /// Applies all layers, in order, into `dest` (created if missing).
    pub fn unpack(&self, dest: &Path) -> Result<(), OciError> {
        fs::create_dir_all(dest).map_err(io_err(dest))?;
        for l in &self.layers {
            apply_layer(l, dest)?;
        }
        Ok(())
    }
}

fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, OciError> {
    Ok(root.join(normalize(rel).ok_or(OciError::PathTraversal { entry: rel.into() })?))
}

/// Strips `/` and `./`; refuses `..`. Returns the relative path.
pub fn normalize(name: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn open_layer(l: &Layer) -> Result<tar::Archive<Box<dyn Read>>, OciError> {
    let f = File::open(&l.path).map_err(io_err(&l.path))?;
    let r: Box<dyn Read> = if l.gzip {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    Ok(tar::Archive::new(r))
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Refuses to write through a symlink planted by an earlier entry: every
/// ancestor of `rel` inside `root` must be a real directory (or absent).
fn check_ancestors(root: &Path, rel: &Path, entry: &str) -> Result<(), OciError> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(OciError::PathTraversal {
                    entry: entry.into(),
                })
            }
            Ok(md) if !md.is_dir() => {
                // A file where a directory is needed: the later layer wins.
                fs::remove_file(&cur).map_err(io_err(&cur))?;
                return Ok(());
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), OciError> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p).map_err(io_err(p)),
        Ok(_) => fs::remove_file(p).map_err(io_err(p)),
        Err(_) => Ok(()),
    }
}

fn apply_layer(l: &Layer, root: &Path) -> Result<(), OciError> {
    // Pass 1: whiteouts delete what lower layers put there. Doing this first
    // keeps same-layer content that an opaque marker must not hide.
    let mut ar = open_layer(l)?;
    for e in ar.entries().map_err(io_err(&l.path))? {
        let e = e.map_err(io_err(&l.path))?;
        let name = e
            .path()
            .map_err(io_err(&l.path))?
            .to_string_lossy()
            .to_string();
        let rel = normalize(&name).ok_or_else(|| OciError::PathTraversal {
            entry: name.clone(),
        })?;
        let Some(base) = rel.file_name().and_then(|b| b.to_str()) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if base == OPAQUE {
            check_ancestors(root, &rel, &name)?;
            let dir = root.join(parent);
            if let Ok(rd) = fs::read_dir(&dir) {
                for c in rd.flatten() {
                    remove_any(&c.path())?;
                }
            }
        } else if let Some(victim) = base.strip_prefix(WHITEOUT) {
            check_ancestors(root, &rel, &name)?;
            remove_any(&root.join(parent).join(victim))?;
        }
    }
    // Pass 2: content. Directory times are set once the layer is done, since
    // adding their entries changes them.
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    let mut ar = open_layer(l)?;
    for e in ar.entries().map_err(io_err(&l.path))? {
        let mut e = e.map_err(io_err(&l.path))?;
        let name = e
            .path()
            .map_err(io_err(&l.path))?
            .to_string_lossy()
            .to_string();
        let rel = normalize(&name).ok_or_else(|| OciError::PathTraversal {
            entry: name.clone(),
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let base = rel.file_name().and_then(|b| b.to_str()).unwrap_or("");
        if base.starts_with(WHITEOUT) {
            continue;
        }
        check_ancestors(root, &rel, &name)?;
        let dst = root.join(&rel);
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p).map_err(io_err(p))?;
        }
        let h = e.header().clone();
        // Setuid/setgid bits never survive into a VM root.
        let mode = h.mode().unwrap_or(0o644) & 0o1777;
        let (uid, gid) = owner(&h, &name)?;
        match h.entry_type() {
            tar::EntryType::Directory => {
                if fs::symlink_metadata(&dst).is_ok_and(|m| !m.is_dir()) {
                    remove_any(&dst)?;
                }
                fs::create_dir_all(&dst).map_err(io_err(&dst))?;
                dir_times.push((dst.clone(), mtime(&h)));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_any(&dst)?;
                let mut out = File::create(&dst).map_err(io_err(&dst))?;
                io::copy(&mut e, &mut out).map_err(io_err(&dst))?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name().map_err(io_err(&l.path))?.ok_or_else(|| {
                    OciError::PathTraversal {
                        entry: name.clone(),
                    }
                })?;
                remove_any(&dst)?;
                // The target is interpreted inside the guest's root, so an
                // absolute or `..` target is harmless there; it is never
                // followed while unpacking (see check_ancestors).
                symlink(&target, &dst).map_err(io_err(&dst))?;
                chown(&dst, uid, gid, true);
                set_mtime(&dst, mtime(&h), true);
                continue;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name()
                    .map_err(io_err(&l.path))?
                    .map(|t| t.to_string_lossy().to_string())
                    .unwrap_or_default();
                let trel = normalize(&target).ok_or_else(|| OciError::PathTraversal {
                    entry: name.clone(),
                })?;
                check_ancestors(root, &trel, &name)?;
                let src = root.join(&trel);
                if fs::symlink_metadata(&src).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(OciError::PathTraversal { entry: name });
                }
                remove_any(&dst)?;
                fs::hard_link(&src, &dst).map_err(io_err(&dst))?;
                continue;
            }
            // Device nodes and FIFOs are not created: /dev is devtmpfs in the VM.
            _ => continue,
        }
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).map_err(io_err(&dst))?;
        chown(&dst, uid, gid, false);
        if h.entry_type() != tar::EntryType::Directory {
            set_mtime(&dst, mtime(&h), false);
        }
    }
    for (d, t) in dir_times.iter().rev() {
        set_mtime(d, *t, false);
    }
    Ok(())
}

fn mtime(h: &tar::Header) -> i64 {
    h.mtime()
        .ok()
        .and_then(|t| i64::try_from(t).ok())
        .unwrap_or(0)
}

/// Keeps the layer's modification times: Python, for one, trusts its
/// byte-code caches only while each source file's mtime matches the one
/// recorded at compile time.
fn set_mtime(p: &Path, secs: i64, nofollow: bool) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return;
    };
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: c is a valid NUL-terminated path and `times` points to two
    // timespecs; a failure only leaves the unpack time in place.
    unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), flags);
    }
}

/// An entry's owner as Linux ids. Tar headers can carry wider ids (in
/// base-256 fields); truncating one could turn it into root, so it is refused.
fn owner(h: &tar::Header, entry: &str) -> Result<(u32, u32), OciError> {
    let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
    match (u32::try_from(uid), u32::try_from(gid)) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(OciError::Owner {
            entry: entry.into(),
            uid,
            gid,
        }),
    }
}

/// Ownership is kept when running as root; unprivileged builds leave files
/// owned by the builder (mke2fs/mkfs.erofs are then told to map them to root).
fn chown(p: &Path, uid: u32, gid: u32, nofollow: bool) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated path; failure (EPERM) is fine.
    unsafe {
        if nofollow {
            libc::lchown(c.as_ptr(), uid, gid);
        } else {
            libc::chown(c.as_ptr(), uid, gid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{layer_tar, write_layout, Entry, Entry::*};
    use std::os::unix::fs::MetadataExt;

    fn image(layers: Vec<Vec<crate::layout::Entry<'_>>>) -> (tempfile::TempDir, Image) {
        let dir = tempfile::tempdir().unwrap();
        let tars: Vec<Vec<u8>> = layers.iter().map(|l| layer_tar(l).unwrap()).collect();
        let cfg = serde_json::json!({"Env": ["PATH=/bin", "A=1"], "Cmd": ["/bin/sh"], "WorkingDir": "/srv", "User": "1000:1000"});
        write_layout(&dir.path().join("img"), &tars, cfg).unwrap();
        let img = Image::open(&dir.path().join("img")).unwrap();
        (dir, img)
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let (dir, img) = image(vec![
            vec![
                Dir {
                    path: "etc",
                    mode: 0o755,
                },
                Entry::File {
                    path: "etc/keep",
                    mode: 0o644,
                    data: b"lower",
                },
                Entry::File {
                    path: "etc/gone",
                    mode: 0o644,
                    data: b"x",
                },
                Dir {
                    path: "var/cache",
                    mode: 0o755,
                },
                Entry::File {
                    path: "var/cache/old",
                    mode: 0o644,
                    data: b"old",
                },
                Entry::File {
                    path: "bin/tool",
                    mode: 0o755,
                    data: b"v1",
                },
            ],
            vec![
                Whiteout { path: "etc/gone" },
                Opaque { path: "var/cache" },
                Entry::File {
                    path: "var/cache/new",
                    mode: 0o644,
                    data: b"new",
                },
                Entry::File {
                    path: "bin/tool",
                    mode: 0o755,
                    data: b"v2",
                },
                Symlink {
                    path: "bin/sh",
                    target: "/bin/tool",
                },
                Hardlink {
                    path: "bin/tool2",
                    target: "bin/tool",
                },
            ],
        ]);
        assert_eq!(
            img.config.cmd.as_deref(),
            Some(&["/bin/sh".to_string()][..])
        );
        assert_eq!(img.config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(img.config.env, vec!["PATH=/bin", "A=1"]);
        let root = dir.path().join("root");
        img.unpack(&root).unwrap();
        assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"lower");
        assert!(!root.join("etc/gone").exists(), "whiteout deletes");
        assert!(
            !root.join("var/cache/old").exists(),
            "opaque dir hides lower content"
        );
        assert_eq!(
            fs::read(root.join("var/cache/new")).unwrap(),
            b"new",
            "same-layer content survives opaque"
        );
        assert_eq!(fs::read(root.join("bin/tool")).unwrap(), b"v2");
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(
            fs::metadata(root.join("bin/tool2")).unwrap().ino(),
            fs::metadata(root.join("bin/tool")).unwrap().ino()
        );
    }

    #[test]
    fn setuid_and_setgid_are_stripped() {
        let (dir, img) = image(vec![vec![
            Entry::File {
                path: "bin/su",
                mode: 0o4755,
                data: b"su",
            },
            Entry::File {
                path: "bin/wall",
                mode: 0o2755,
                data: b"w",
            },
            Dir {
                path: "tmp",
                mode: 0o1777,
            },
        ]]);
        let root = dir.path().join("root");
        img.unpack(&root).unwrap();
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("bin/su"), 0o755);
        assert_eq!(mode("bin/wall"), 0o755);
        assert_eq!(mode("tmp"), 0o1777, "sticky bit is fine");
    }

    #[test]
    fn parent_dir_traversal_is_refused() {
        let (dir, img) = image(vec![vec![Entry::File {
            path: "../../escape",
            mode: 0o644,
            data: b"x",
        }]]);
        let err = img.unpack(&dir.path().join("root")).unwrap_err();
        assert!(matches!(err, OciError::PathTraversal { .. }), "{err}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_string_lossy().to_string();
        let (dir, img) = image(vec![
            vec![Symlink {
                path: "etc",
                target: &target,
            }],
            vec![Entry::File {
                path: "etc/passwd",
                mode: 0o644,
                data: b"pwned",
            }],
        ]);
        let err = img.unpack(&dir.path().join("root")).unwrap_err();
        assert!(matches!(err, OciError::PathTraversal { .. }), "{err}");
        assert!(!outside.path().join("passwd").exists());
    }

    #[test]
    fn owner_ids_beyond_32_bits_are_refused() {
        // 2^32 would truncate to uid 0 (root).
        let mut h = tar::Header::new_gnu();
        h.set_path("etc/owned").unwrap();
        h.set_mode(0o644);
        h.set_uid(1 << 32);
        h.set_gid(5);
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_layout(&dir.path().join("img"), &[tar], serde_json::json!({})).unwrap();
        let img = Image::open(&dir.path().join("img")).unwrap();
        let err = img.unpack(&dir.path().join("root")).unwrap_err();
        assert!(
            matches!(err, OciError::Owner { uid, gid: 5, .. } if uid == 1 << 32),
            "{err}"
        );
        assert!(!dir.path().join("root/etc/owned").exists());
    }

    #[test]
    fn modification_times_are_kept() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mtime: u64, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(mtime);
            h.set_size(data.len() as u64);
            if kind == tar::EntryType::Symlink {
                h.set_link_name("mod.py").unwrap();
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        add("lib/", tar::EntryType::Directory, 1_500_000_000, b"");
        add(
            "lib/mod.py",
            tar::EntryType::Regular,
            1_600_000_000,
            b"x = 1\n",
        );
        add("lib/alias.py", tar::EntryType::Symlink, 1_550_000_000, b"");
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_layout(&dir.path().join("img"), &[tar], serde_json::json!({})).unwrap();
        let root = dir.path().join("root");
        Image::open(&dir.path().join("img"))
            .unwrap()
            .unpack(&root)
            .unwrap();
        let t = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mtime();
        assert_eq!(t("lib/mod.py"), 1_600_000_000);
        assert_eq!(t("lib/alias.py"), 1_550_000_000, "symlink's own time");
        assert_eq!(t("lib"), 1_500_000_000, "set after its entries were added");
    }

    #[test]
    fn hardlink_to_outside_is_refused() {
        let (dir, img) = image(vec![vec![Hardlink {
            path: "x",
            target: "../../etc/passwd",
        }]]);
        assert!(matches!(
            img.unpack(&dir.path().join("root")),
            Err(OciError::PathTraversal { .. })
        ));
    }

    #[test]
    fn corrupted_blob_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer_tar(&[Entry::File {
            path: "a",
            mode: 0o644,
            data: b"a",
        }])
        .unwrap();
        write_layout(&dir.path().join("img"), &[l], serde_json::json!({})).unwrap();
        // Flip a byte in the (only) layer blob: the largest file in blobs/.
        let blobs: Vec<_> = fs::read_dir(dir.path().join("img/blobs/sha256"))
            .unwrap()
            .flatten()
            .collect();
        let manifest_like = |p: &Path| fs::read(p).unwrap().first() == Some(&b'{');
        let layer = blobs
            .iter()
            .map(|e| e.path())
            .find(|p| !manifest_like(p))
            .unwrap();
        let mut data = fs::read(&layer).unwrap();
        let n = data.len();
        data[n - 1] ^= 0xff;
        fs::write(&layer, data).unwrap();
        assert!(matches!(
            Image::open(&dir.path().join("img")),
            Err(OciError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn opens_layout_tarball_and_docker_save() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer_tar(&[Entry::File {
            path: "hello",
            mode: 0o644,
            data: b"hi",
        }])
        .unwrap();
        write_layout(
            &dir.path().join("img"),
            std::slice::from_ref(&l),
            serde_json::json!({"Cmd": ["x"]}),
        )
        .unwrap();
        // OCI layout as a tarball.
        let tarball = dir.path().join("img.tar");
        let mut b = tar::Builder::new(fs::File::create(&tarball).unwrap());
        b.append_dir_all(".", dir.path().join("img")).unwrap();
        b.finish().unwrap();
        drop(b);
        let img = Image::open(&tarball).unwrap();
        img.unpack(&dir.path().join("r1")).unwrap();
        assert_eq!(fs::read(dir.path().join("r1/hello")).unwrap(), b"hi");
        // docker save format.
        let ds = dir.path().join("ds");
        fs::create_dir_all(ds.join("abc")).unwrap();
        fs::write(ds.join("abc/layer.tar"), &l).unwrap();
        fs::write(ds.join("cfg.json"), br#"{"config":{"Cmd":["/bin/true"]}}"#).unwrap();
        fs::write(
            ds.join("manifest.json"),
            br#"[{"Config":"cfg.json","Layers":["abc/layer.tar"]}]"#,
        )
        .unwrap();
        let img = Image::open(&ds).unwrap();
        assert_eq!(
            img.config.cmd.as_deref(),
            Some(&["/bin/true".to_string()][..])
        );
        img.unpack(&dir.path().join("r2")).unwrap();
        assert_eq!(fs::read(dir.path().join("r2/hello")).unwrap(), b"hi");
        assert!(matches!(
            Image::open(dir.path()),
            Err(OciError::NotAnImage(_))
        ));
    }

    #[test]
    fn lower_and_upper_images_build() {
        let (dir, img) = image(vec![vec![Entry::File {
            path: "etc/os-release",
            mode: 0o644,
            data: b"ID=test\n",
        }]]);
        let root = dir.path().join("root");
        img.unpack(&root).unwrap();
        for fmt in [crate::image::Format::Erofs, crate::image::Format::Ext4] {
            let out = dir.path().join(format!("lower.{}", fmt.fstype()));
            crate::image::build_lower(&root, &out, fmt).unwrap();
            let len = fs::metadata(&out).unwrap().len();
            assert!(len > 0 && len % 512 == 0, "{fmt:?} image size {len}");
        }
        assert_eq!(
            crate::image::ext4_cat(&dir.path().join("lower.ext4"), "/etc/os-release").unwrap(),
            b"ID=test\n"
        );
        let upper = dir.path().join("upper.ext4");
        crate::image::create_upper(&upper, 16).unwrap();
        assert_eq!(fs::metadata(&upper).unwrap().len(), 16 << 20);
    }
}
