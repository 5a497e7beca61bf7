//! The sandbox image store: read-only lowers, built once and keyed by content.
//!
//! Two kinds of entry share one cache directory
//! (`${XDG_CACHE_HOME:-~/.cache}/iii/images`):
//!
//! * presets (`python`, `node`): a Debian root bootstrapped by `mmdebstrap` from
//!   the host's own apt sources, keyed by sha256(builder version + recipe: suite,
//!   sources, package list, dpkg excludes, architecture);
//! * custom images: an OCI layout directory or an OCI / `docker save` tarball,
//!   keyed by its manifest digest (the config digest for `docker save`).
//!
//! Both go through the same path: OCI layout → [`crate::oci`] unpack (setuid
//! stripped, traversal refused) → erofs lower. Entries live in `<root>/<key>/`
//! (`lower.erofs` + `image.json`). One builder at a time holds `<root>/.lock`
//! (`flock`); it builds in `<root>/.tmp-<key>/` and publishes with one
//! `rename`, so a reader sees a complete entry or none. A published lower is
//! made read-only and never written again: every sandbox gets its own upper.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::{self, Format};
use crate::{layout, oci};

/// The filesystem of a lower, as the runtimes name it.
pub use crate::image::Format as LowerFormat;

/// Bumped whenever the build steps change what ends up in a lower, so old
/// entries are not mistaken for new ones.
pub const BUILDER_VERSION: &str = "iii-images-2";

/// The presets [`ImageStore::build_preset`] knows.
pub const PRESETS: &[&str] = &["python", "node"];

/// The `PATH` an image gets when its config sets none (what OCI runtimes use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) const LOWER_FILE: &str = "lower.erofs";
const META_FILE: &str = "image.json";
const LOCK_FILE: &str = ".lock";
const TMP_PREFIX: &str = ".tmp-";

/// Why an image could not be found, built or imported.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Neither `XDG_CACHE_HOME` nor `HOME` is set and no root was given.
    #[error("no image cache directory: set XDG_CACHE_HOME or HOME, or pass a cache directory")]
    NoCacheDir,
    /// A preset name outside [`PRESETS`].
    #[error("unknown image preset {0:?} (known presets: python, node)")]
    UnknownPreset(String),
    /// A file of the store or of the image could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A tool the build needs is not installed.
    #[error("{tool} is not installed (apt-get install {package})")]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// The host's apt sources name no Debian suite to bootstrap from.
    #[error(
        "no usable apt source for {codename} (main) in /etc/apt/sources.list or sources.list.d"
    )]
    NoSources {
        /// The host's release codename.
        codename: String,
    },
    /// `/etc/os-release` gives no `VERSION_CODENAME`.
    #[error("cannot tell the host's Debian release: no VERSION_CODENAME in /etc/os-release")]
    NoCodename,
    /// `mmdebstrap` ran and failed.
    #[error("mmdebstrap failed ({status}): {output}")]
    Bootstrap {
        /// Its exit status.
        status: String,
        /// The last lines it printed.
        output: String,
    },
    /// The source image is unreadable or unsafe.
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    /// `mkfs.erofs` failed.
    #[error("building the lower image: {0}")]
    Build(#[from] image::ImageError),
    /// Pulling from (or pushing to) a registry failed.
    #[error(transparent)]
    Pull(#[from] crate::registry::PullError),
    /// A stale build directory still has something mounted inside it.
    #[error("{0} still has mounts inside it; not removing it")]
    Mounted(PathBuf),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A published, read-only root filesystem image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// The lower image; never written (sandboxes overlay their own upper).
    pub lower: PathBuf,
    /// Its filesystem.
    pub format: LowerFormat,
    /// The image config's environment (`PATH` always present).
    pub env: Vec<(String, String)>,
    /// The content key (hex sha256): also the entry's directory name.
    pub key: String,
}

/// What `image.json` records next to a lower.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// `preset`, `custom` or `pulled`.
    kind: String,
    /// The preset name, or the source path of a custom image when imported.
    name: String,
    key: String,
    format: LowerFormat,
    env: Vec<(String, String)>,
    /// `package version` lines of a preset (empty for custom images).
    #[serde(default)]
    packages: Vec<String>,
    /// Bytes of the lower file.
    lower_bytes: u64,
    /// Wall time of the build.
    build_secs: f64,
    builder_version: String,
    /// The manifest digest of a pulled image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) digest: Option<String>,
    /// The run configuration of a pulled image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) image: Option<crate::registry::ImageConfig>,
}

/// One `deb` source line: where packages come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptSource {
    /// Mirror URI, e.g. `http://deb.debian.org/debian`.
    pub uri: String,
    /// Suite, e.g. `bookworm-updates`.
    pub suite: String,
    /// Components, e.g. `["main"]`.
    pub components: Vec<String>,
    /// The keyring the source is signed by, when the host names one.
    pub signed_by: Option<String>,
}

impl AptSource {
    /// The one-line form mmdebstrap takes as a mirror argument.
    pub fn line(&self) -> String {
        let opts = self
            .signed_by
            .as_ref()
            .map(|k| format!("[signed-by={k}] "))
            .unwrap_or_default();
        format!(
            "deb {opts}{} {} {}",
            self.uri,
            self.suite,
            self.components.join(" ")
        )
    }
}

/// Parses one-line `sources.list` text (`deb [opts] uri suite comp...`).
pub fn parse_sources_list(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let Some((opts, after)) = r.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(k) = o.strip_prefix("signed-by=") {
                    signed_by = Some(k.to_string());
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_string(),
            suite: suite.to_string(),
            components: words.map(str::to_string).collect(),
            signed_by,
        });
    }
    out
}

/// Parses deb822 `.sources` text: one stanza per paragraph, each expanding to
/// every (URI, suite) pair it names.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                // Continuation (multi-line Signed-By keys are inline keys: not a path).
                if let Some(last) = fields.last_mut() {
                    last.1.push('\n');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if !get("types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb")) {
            continue;
        }
        if get("enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let signed_by = get("signed-by")
            .filter(|k| !k.contains('\n') && k.starts_with('/'))
            .map(str::to_string);
        let comps: Vec<String> = get("components")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        for uri in get("uris").unwrap_or("").split_whitespace() {
            for suite in get("suites").unwrap_or("").split_whitespace() {
                out.push(AptSource {
                    uri: uri.to_string(),
                    suite: suite.to_string(),
                    components: comps.clone(),
                    signed_by: signed_by.clone(),
                });
            }
        }
    }
    out
}

/// Keeps the sources of the host's own release (`codename`, `-updates`,
/// `-security`), restricted to `main`: third-party repositories (a vendor's
/// nodejs, say) must not leak into a preset.
pub fn release_sources(all: Vec<AptSource>, codename: &str) -> Vec<AptSource> {
    let ok = [
        codename.to_string(),
        format!("{codename}-updates"),
        format!("{codename}-security"),
    ];
    let mut out: Vec<AptSource> = Vec::new();
    for mut s in all {
        if !ok.contains(&s.suite) || !s.components.iter().any(|c| c == "main") {
            continue;
        }
        s.components = vec!["main".into()];
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The host's Debian sources for its own release, from `etc` (normally `/etc`).
pub fn host_sources(etc: &Path) -> Result<(String, Vec<AptSource>), ImageError> {
    let osr = fs::read_to_string(etc.join("os-release"))
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
        .map_err(io_err(&etc.join("os-release")))?;
    let codename = osr
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or(ImageError::NoCodename)?;
    let mut all = Vec::new();
    let list = etc.join("apt/sources.list");
    if let Ok(t) = fs::read_to_string(&list) {
        all.extend(parse_sources_list(&t));
    }
    let d = etc.join("apt/sources.list.d");
    let mut names: Vec<PathBuf> = fs::read_dir(&d)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for p in names {
        // apt reads only these two suffixes (`*.disabled` etc. are ignored).
        let Ok(t) = fs::read_to_string(&p) else {
            continue;
        };
        match p.extension().and_then(|e| e.to_str()) {
            Some("list") => all.extend(parse_sources_list(&t)),
            Some("sources") => all.extend(parse_deb822(&t)),
            _ => {}
        }
    }
    let sources = release_sources(all, &codename);
    if sources.is_empty() {
        return Err(ImageError::NoSources { codename });
    }
    Ok((codename, sources))
}

/// Everything that decides a preset's content; its hash is the content key.
#[derive(Debug, Clone, Serialize)]
pub struct PresetRecipe {
    /// `python` or `node`.
    pub name: String,
    /// The Debian suite bootstrapped (the host's codename).
    pub suite: String,
    /// Debian architecture (`amd64`, `arm64`).
    pub arch: String,
    /// mmdebstrap variant.
    pub variant: String,
    /// Packages installed on top of the variant.
    pub include: Vec<String>,
    /// Where they come from.
    pub sources: Vec<String>,
    /// dpkg path filters (`path-exclude=…` / `path-include=…`), in order.
    pub dpkg_paths: Vec<String>,
    /// The image config's environment.
    pub env: Vec<(String, String)>,
}

impl PresetRecipe {
    /// The recipe for preset `name` on a host with these sources.
    pub fn new(name: &str, suite: &str, sources: &[AptSource]) -> Result<PresetRecipe, ImageError> {
        let include: &[&str] = match name {
            // pip/venv and npm: local-path workers install their dependencies in the sandbox.
            "python" => &["python3", "python3-pip", "python3-venv", "ca-certificates"],
            "node" => &["nodejs", "npm", "ca-certificates"],
            _ => return Err(ImageError::UnknownPreset(name.into())),
        };
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Ok(PresetRecipe {
            name: name.into(),
            suite: suite.into(),
            arch: arch.into(),
            variant: "essential".into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            sources: sources.iter().map(AptSource::line).collect(),
            // Docs, manuals, translations: a sandbox never reads them. The
            // copyright files stay (the licences require them).
            dpkg_paths: [
                "path-exclude=/usr/share/man/*",
                "path-exclude=/usr/share/doc/*",
                "path-include=/usr/share/doc/*/copyright",
                "path-exclude=/usr/share/info/*",
                "path-exclude=/usr/share/locale/*",
                "path-exclude=/usr/share/lintian/*",
                "path-exclude=/usr/share/bash-completion/*",
                "path-exclude=/usr/share/zsh/*",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            env: vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
        })
    }

    /// The content key: sha256 of the builder version and the recipe.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(BUILDER_VERSION.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(self).unwrap_or_default());
        hex(&h.finalize())
    }

    /// mmdebstrap's arguments (before the suite, target and mirrors).
    fn mmdebstrap_args(&self, packages_out: &Path) -> Vec<String> {
        let mut a = vec![
            format!("--variant={}", self.variant),
            format!("--architectures={}", self.arch),
            format!("--include={}", self.include.join(",")),
            "--format=tar".into(),
            "--aptopt=APT::Install-Recommends \"false\"".into(),
            "--aptopt=Acquire::Languages \"none\"".into(),
            // The cache lives under a private home: apt's `_apt` user could not
            // write there, and saying so is only noise.
            "--aptopt=APT::Sandbox::User \"root\"".into(),
        ];
        // Set up /usr as merged without the usrmerge package (it pulls perl).
        let hooks = Path::new("/usr/share/mmdebstrap/hooks/merged-usr");
        if hooks.is_dir() {
            a.push(format!("--hook-dir={}", hooks.display()));
        }
        a.extend(self.dpkg_paths.iter().map(|p| format!("--dpkgopt={p}")));
        // The host's resolv.conf and hostname are copied in during the build:
        // neither belongs in an image (the sandbox sets both).
        a.push("--customize-hook=rm -f \"$1\"/etc/hostname; : > \"$1\"/etc/resolv.conf".into());
        a.push(
            "--customize-hook=rm -rf \"$1\"/var/log/apt/* \"$1\"/var/log/dpkg.log \"$1\"/var/log/alternatives.log \"$1\"/var/cache/debconf/*-old \"$1\"/var/lib/dpkg/*-old"
                .into(),
        );
        a.push(format!(
            "--customize-hook=dpkg-query --admindir=\"$1\"/var/lib/dpkg -W -f='${{Package}} ${{Version}}\\n' > {}",
            shell_quote(&packages_out.to_string_lossy())
        ));
        a
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The content-keyed cache of read-only lowers.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    /// Where the host's `os-release` and apt sources are read (`/etc`).
    etc: PathBuf,
}

/// Holds the store's build lock; released when dropped (closing the fd).
struct BuildLock {
    _file: File,
}

impl ImageStore {
    /// Opens (creating) the store at `root`, or at
    /// `${XDG_CACHE_HOME:-$HOME/.cache}/iii/images`.
    pub fn open(root: Option<PathBuf>) -> Result<Self, ImageError> {
        let root = match root {
            Some(r) => r,
            None => default_root().ok_or(ImageError::NoCacheDir)?,
        };
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        // Lowers are handed to other processes (and mounted): absolute paths.
        let root = fs::canonicalize(&root).map_err(io_err(&root))?;
        Ok(Self {
            root,
            etc: PathBuf::from("/etc"),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The recipe preset `name` would be built from on this host.
    pub fn preset_recipe(&self, name: &str) -> Result<PresetRecipe, ImageError> {
        if !PRESETS.contains(&name) {
            return Err(ImageError::UnknownPreset(name.into()));
        }
        let (codename, sources) = host_sources(&self.etc)?;
        PresetRecipe::new(name, &codename, &sources)
    }

    /// The published preset `name`, if it was built for this host's recipe.
    /// Never builds and never touches the network.
    pub fn lookup_preset(&self, name: &str) -> Option<Rootfs> {
        self.lookup_key(&self.preset_recipe(name).ok()?.key())
    }

    /// Returns preset `name` (`python` or `node`), building it first if needed.
    /// `progress` gets one line per phase.
    pub fn build_preset(
        &self,
        name: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Rootfs, ImageError> {
        let recipe = self.preset_recipe(name)?;
        let key = recipe.key();
        self.ensure(&key, progress, &mut |tmp, progress| {
            build_preset_into(&recipe, tmp, progress)
        })
    }

    /// The published import of the image at `source`, if any. Reads only the
    /// image's index (and, for a tarball, scans its member list).
    pub fn lookup_custom(&self, source: &Path) -> Option<Rootfs> {
        self.lookup_key(&custom_key(source).ok()?)
    }

    /// Returns the lower for the OCI layout directory, OCI tarball or
    /// `docker save` tarball at `source`, importing it first if needed.
    pub fn import_custom(
        &self,
        source: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Rootfs, ImageError> {
        let key = custom_key(source)?;
        self.ensure(&key, progress, &mut |tmp, progress| {
            progress("reading image");
            let img = oci::Image::open(source)?;
            let env = env_pairs(&img.config.env);
            let rootdir = tmp.join("rootfs");
            progress(&format!("unpacking {} layers", img.layers.len()));
            img.unpack(&rootdir)?;
            drop(img);
            build_erofs(&rootdir, &tmp.join(LOWER_FILE), progress)?;
            remove_tree(&rootdir)?;
            Ok(Built {
                kind: "custom",
                name: source.display().to_string(),
                env,
                packages: Vec::new(),
                digest: None,
                image: None,
            })
        })
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn lookup_key(&self, key: &str) -> Option<Rootfs> {
        self.lookup_meta(key).map(|(r, _)| r)
    }

    /// The published entry `key` and its record.
    pub(crate) fn lookup_meta(&self, key: &str) -> Option<(Rootfs, Meta)> {
        let dir = self.entry(key);
        let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META_FILE)).ok()?).ok()?;
        let lower = dir.join(LOWER_FILE);
        if meta.key != key || !lower.is_file() {
            return None;
        }
        let rootfs = Rootfs {
            lower,
            format: meta.format,
            env: meta.env.clone(),
            key: key.to_string(),
        };
        Some((rootfs, meta))
    }

    fn lock(&self, progress: &mut dyn FnMut(&str)) -> Result<BuildLock, ImageError> {
        let path = self.root.join(LOCK_FILE);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            progress("waiting for another image build to finish");
            flock(&f, libc::LOCK_EX).map_err(io_err(&path))?;
        }
        Ok(BuildLock { _file: f })
    }

    /// The published entry for `key`, building it with `build` under the lock
    /// when missing. `build` fills the temp dir it is given with `lower.erofs`.
    pub(crate) fn ensure(
        &self,
        key: &str,
        progress: &mut dyn FnMut(&str),
        build: &mut BuildFn<'_>,
    ) -> Result<Rootfs, ImageError> {
        if let Some(r) = self.lookup_key(key) {
            progress("cached");
            return Ok(r);
        }
        let _lock = self.lock(progress)?;
        // Another builder may have published it while we waited.
        if let Some(r) = self.lookup_key(key) {
            progress("cached");
            return Ok(r);
        }
        let t0 = Instant::now();
        self.clean_stale()?;
        let dest = self.entry(key);
        if dest.exists() {
            // Incomplete or corrupt (no valid image.json): replace it.
            remove_tree(&dest)?;
        }
        let tmp = self.root.join(format!("{TMP_PREFIX}{key}"));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let guard = TmpGuard(tmp.clone());
        let built = build(&tmp, progress)?;
        let lower = tmp.join(LOWER_FILE);
        let lower_bytes = fs::metadata(&lower).map_err(io_err(&lower))?.len();
        // Published lowers are never written again.
        fs::set_permissions(&lower, fs::Permissions::from_mode(0o444)).map_err(io_err(&lower))?;
        let meta = Meta {
            kind: built.kind.into(),
            name: built.name,
            key: key.into(),
            format: Format::Erofs,
            env: built.env,
            packages: built.packages,
            lower_bytes,
            build_secs: t0.elapsed().as_secs_f64(),
            builder_version: BUILDER_VERSION.into(),
            digest: built.digest,
            image: built.image,
        };
        let mp = tmp.join(META_FILE);
        write_synced(
            &mp,
            &serde_json::to_vec_pretty(&meta).map_err(|e| ImageError::Io {
                path: mp.clone(),
                source: e.into(),
            })?,
        )?;
        sync_path(&lower)?;
        sync_path(&tmp)?;
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        std::mem::forget(guard);
        sync_path(&self.root)?;
        progress(&format!("ready in {:.1} s", t0.elapsed().as_secs_f64()));
        self.lookup_key(key).ok_or_else(|| ImageError::Io {
            path: dest.join(META_FILE),
            source: io::Error::other("published entry is unreadable"),
        })
    }

    /// Removes build directories left by builders that died (only a lock
    /// holder builds, so under the lock every temp dir is stale).
    fn clean_stale(&self) -> Result<(), ImageError> {
        let rd = fs::read_dir(&self.root).map_err(io_err(&self.root))?;
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                remove_tree(&e.path())?;
            }
        }
        Ok(())
    }
}

/// Fills the temp dir it is given with `lower.erofs`, reporting progress.
pub(crate) type BuildFn<'a> =
    dyn FnMut(&Path, &mut dyn FnMut(&str)) -> Result<Built, ImageError> + 'a;

/// What a build produced besides the lower.
pub(crate) struct Built {
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) packages: Vec<String>,
    pub(crate) digest: Option<String>,
    pub(crate) image: Option<crate::registry::ImageConfig>,
}

/// Removes the temp dir of a build that failed or panicked.
struct TmpGuard(PathBuf);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

fn default_root() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(cache.join("iii/images"))
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the fd is open for the duration of the call.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_path(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// `NAME=value` entries as pairs, with [`DEFAULT_PATH`] when `PATH` is unset.
pub fn env_pairs(env: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    out
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub(crate) fn build_erofs(
    rootdir: &Path,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    progress(&format!(
        "building erofs lower ({} MiB)",
        dir_bytes(rootdir).div_ceil(1 << 20)
    ));
    image::build_lower(rootdir, out, Format::Erofs)?;
    Ok(())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The progress line for one of mmdebstrap's `I:` lines, if it starts a phase.
fn bootstrap_phase(line: &str) -> Option<&'static str> {
    let l = line.strip_prefix("I: ")?;
    if l.starts_with("running apt-get update") {
        Some("resolving packages")
    } else if l.starts_with("downloading packages") {
        Some("downloading")
    } else if l.starts_with("extracting archives") {
        Some("extracting")
    } else if l.starts_with("installing essential") {
        Some("installing essential packages")
    } else if l.starts_with("installing remaining") {
        Some("installing packages")
    } else if l.starts_with("creating tarball") {
        Some("packing")
    } else {
        None
    }
}

fn build_preset_into(
    recipe: &PresetRecipe,
    tmp: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, ImageError> {
    for (tool, package) in [("mmdebstrap", "mmdebstrap"), ("mkfs.erofs", "erofs-utils")] {
        if !which(tool) {
            return Err(ImageError::MissingTool { tool, package });
        }
    }
    let layer = tmp.join("layer.tar");
    let packages = tmp.join("packages.txt");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(recipe.mmdebstrap_args(&packages))
        .arg(&recipe.suite)
        .arg(&layer)
        .args(&recipe.sources)
        // mmdebstrap's own scratch space stays inside the build dir.
        .env("TMPDIR", tmp)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A builder that dies takes mmdebstrap with it (SIGTERM lets it unmount
    // its chroot), rather than leaving it writing into a dir the next
    // builder removes. The build runs on this thread until the child exits.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::MissingTool {
                tool: "mmdebstrap",
                package: "mmdebstrap",
            }
        } else {
            ImageError::Io {
                path: "mmdebstrap".into(),
                source: e,
            }
        }
    })?;
    let mut tail: Vec<String> = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(p) = bootstrap_phase(&line) {
                progress(p);
            } else if line.starts_with("W: ") || line.starts_with("E: ") {
                progress(&line);
            }
            tail.push(line);
            if tail.len() > 30 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().map_err(io_err(Path::new("mmdebstrap")))?;
    if !status.success() {
        return Err(ImageError::Bootstrap {
            status: status.to_string(),
            output: tail.join("\n"),
        });
    }
    let pkgs: Vec<String> = fs::read_to_string(&packages)
        .map_err(io_err(&packages))?
        .lines()
        .map(str::to_string)
        .collect();
    fs::remove_file(&packages).map_err(io_err(&packages))?;
    progress(&format!("{} packages installed", pkgs.len()));
    // The tarball becomes a one-layer OCI image, unpacked by the same code as
    // custom images (same safety rules, same owners and modes).
    let config = serde_json::json!({
        "Env": recipe.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/",
    });
    let oci_dir = tmp.join("oci");
    layout::write_layout_from_tars(&oci_dir, std::slice::from_ref(&layer), config)
        .map_err(io_err(&oci_dir))?;
    let img = oci::Image::open(&oci_dir)?;
    let rootdir = tmp.join("rootfs");
    img.unpack(&rootdir)?;
    drop(img);
    remove_tree(&oci_dir)?;
    build_erofs(&rootdir, &tmp.join(LOWER_FILE), progress)?;
    remove_tree(&rootdir)?;
    Ok(Built {
        kind: "preset",
        name: recipe.name.clone(),
        env: recipe.env.clone(),
        packages: pkgs,
        digest: None,
        image: None,
    })
}

// ---- custom image identity ---------------------------------------------------

/// Bounds the JSON documents read while identifying an image.
const MAX_DOC: u64 = 4 << 20;

/// Reads a small document from a directory image or a (possibly gzipped)
/// tarball: `name` relative to the image root.
struct Source<'a> {
    path: &'a Path,
    is_dir: bool,
}

impl Source<'_> {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, ImageError> {
        if self.is_dir {
            let rel = oci::normalize(name)
                .ok_or_else(|| oci::OciError::PathTraversal { entry: name.into() })?;
            let p = self.path.join(rel);
            return match File::open(&p) {
                Ok(f) => {
                    let mut v = Vec::new();
                    f.take(MAX_DOC).read_to_end(&mut v).map_err(io_err(&p))?;
                    Ok(Some(v))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&p)(e)),
            };
        }
        let want = oci::normalize(name);
        let f = File::open(self.path).map_err(io_err(self.path))?;
        let mut r = BufReader::new(f);
        let gz = r
            .fill_buf()
            .map_err(io_err(self.path))?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gz {
            Box::new(flate2::read::GzDecoder::new(r))
        } else {
            Box::new(r)
        };
        let mut ar = tar::Archive::new(reader);
        for e in ar.entries().map_err(io_err(self.path))? {
            let e = e.map_err(io_err(self.path))?;
            let p = e.path().map_err(io_err(self.path))?;
            if oci::normalize(&p.to_string_lossy()) == want {
                let mut v = Vec::new();
                e.take(MAX_DOC)
                    .read_to_end(&mut v)
                    .map_err(io_err(self.path))?;
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
struct IdDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<IdPlatform>,
}

#[derive(Deserialize)]
struct IdPlatform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct IdIndex {
    manifests: Vec<IdDescriptor>,
}

#[derive(Deserialize)]
struct IdDocker {
    #[serde(rename = "Config")]
    config: String,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, data: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| {
        oci::OciError::Json {
            what: what.into(),
            detail: e.to_string(),
        }
        .into()
    })
}

fn blob_name(digest: &str) -> Result<String, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| oci::OciError::BadDigest(digest.into()))?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// The content identity of an image without unpacking it: the digest of the
/// manifest it would run (following nested indexes to linux/amd64 as the
/// unpacker does), or for `docker save` the sha256 of its config (which
/// names every layer's diff id).
pub fn image_identity(source: &Path) -> Result<String, ImageError> {
    let md = fs::metadata(source).map_err(io_err(source))?;
    let src = Source {
        path: source,
        is_dir: md.is_dir(),
    };
    if let Some(index) = src.read("index.json")? {
        let mut desc = parse::<IdIndex>("index.json", &index)?
            .manifests
            .into_iter()
            .next()
            .ok_or(oci::OciError::NoManifest)?;
        for _ in 0..4 {
            if !desc.media_type.contains("index") {
                break;
            }
            let name = blob_name(&desc.digest)?;
            let data = src
                .read(&name)?
                .ok_or_else(|| oci::OciError::NotAnImage(source.to_path_buf()))?;
            desc = parse::<IdIndex>(&name, &data)?
                .manifests
                .into_iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or(oci::OciError::NoManifest)?;
        }
        blob_name(&desc.digest)?;
        return Ok(desc.digest);
    }
    if let Some(m) = src.read("manifest.json")? {
        let mut list: Vec<IdDocker> = parse("manifest.json", &m)?;
        let m = list.pop().ok_or(oci::OciError::NoManifest)?;
        let cfg = src
            .read(&m.config)?
            .ok_or_else(|| oci::OciError::NotAnImage(source.to_path_buf()))?;
        return Ok(format!(
            "docker-config:sha256:{}",
            hex(&Sha256::digest(&cfg))
        ));
    }
    Err(oci::OciError::NotAnImage(source.to_path_buf()).into())
}

/// The store key of a custom image: its identity under this builder version.
pub fn custom_key(source: &Path) -> Result<String, ImageError> {
    let id = image_identity(source)?;
    let mut h = Sha256::new();
    h.update(BUILDER_VERSION.as_bytes());
    h.update(b"\0custom\0");
    h.update(id.as_bytes());
    Ok(hex(&h.finalize()))
}

// ---- removal that never crosses a mount ----------------------------------------

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// `rm -rf` that first detaches anything mounted inside (a killed mmdebstrap
/// can leave /proc or /dev bound in its chroot: recursing into those would
/// delete the host's files) and refuses if a mount stays.
pub fn remove_tree(dir: &Path) -> Result<(), ImageError> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let canon = fs::canonicalize(dir).map_err(io_err(dir))?;
    for m in mounts_under(&canon) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_bytes()) {
            // SAFETY: c is a valid NUL-terminated path; failure is checked below.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if !mounts_under(&canon).is_empty() {
        return Err(ImageError::Mounted(canon));
    }
    // Published entries are read-only; give write permission back to dirs so
    // an unprivileged owner can delete them too.
    let _ = fs::set_permissions(&canon, fs::Permissions::from_mode(0o755));
    fs::remove_dir_all(&canon).map_err(io_err(&canon))
}

#[cfg(test)]
mod tests;
