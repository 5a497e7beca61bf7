//! Pulling images from OCI registries into the [`ImageStore`], and pushing OCI
//! layouts to them (for tests and for publishing images built here).
//!
//! A pull resolves the reference to one image manifest (an index is narrowed
//! to `linux/<host arch>`), checks the config's architecture, streams every
//! blob to disk while hashing it against its descriptor, then lays the blobs
//! out as an OCI image layout and imports that exactly like a custom image
//! (same unpacker: whiteouts, traversal refusal, setuid stripping). The entry
//! is keyed by the manifest digest, and `<store>/refs/` remembers which digest
//! each reference last resolved to, so [`ImageStore::lookup_pulled`] works
//! without the network.
//!
//! Registries are reached anonymously over HTTPS; plain HTTP only for
//! `localhost`, `127.0.0.1`, `[::1]` and the registries named in
//! `III_INSECURE_REGISTRIES` (comma or space separated `host[:port]`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::oci;
use crate::store::{self, Built, ImageError, ImageStore, Rootfs, BUILDER_VERSION};

/// Why a pull or push failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse (`[registry/]repository[:tag|@digest]`).
    #[error("bad image reference {reference:?}: {detail}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// The parser's message.
        detail: String,
    },
    /// No connection to the registry could be made (refused, DNS, timeout).
    #[error("registry {registry} is unreachable ({attempts} attempts): {detail}")]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last connection error.
        detail: String,
    },
    /// The registry has no such repository or tag (404).
    #[error("{reference}: manifest not found (404): registry {registry} has no such repository, tag or digest")]
    NotFound {
        /// The reference pulled.
        reference: String,
        /// `host[:port]`.
        registry: String,
    },
    /// The registry wants credentials; pulls are anonymous.
    #[error("registry {registry} refused anonymous access to {reference} (401/403)")]
    Unauthorized {
        /// The reference pulled.
        reference: String,
        /// `host[:port]`.
        registry: String,
    },
    /// Any other registry answer that is not what was asked for.
    #[error("registry {registry}: {detail}")]
    Registry {
        /// `host[:port]`.
        registry: String,
        /// What it answered.
        detail: String,
    },
    /// The manifest (or index, or config) is not a container image this store can run.
    #[error("invalid manifest for {reference}: {detail}")]
    InvalidManifest {
        /// The reference pulled.
        reference: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A blob's bytes do not hash to the digest that names it.
    #[error("blob {digest} of {reference} does not match its digest (received sha256:{actual})")]
    DigestMismatch {
        /// The reference pulled.
        reference: String,
        /// The digest the descriptor names.
        digest: String,
        /// The hex sha256 of what arrived.
        actual: String,
    },
    /// A blob of a different length than its descriptor says.
    #[error("blob {digest} of {reference}: the descriptor says {expected} bytes, the registry sent {got}")]
    SizeMismatch {
        /// The reference pulled.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// Bytes received (at least).
        got: u64,
    },
    /// A digest with an algorithm other than sha256 (or malformed).
    #[error(
        "unsupported digest {digest:?} in {reference}: only sha256:<64 hex digits> is accepted"
    )]
    UnsupportedDigest {
        /// The reference pulled.
        reference: String,
        /// The digest as given.
        digest: String,
    },
    /// The image index offers no image for this host.
    #[error("{reference} has no image for linux/{want}; its index offers: {available}")]
    NoPlatform {
        /// The reference pulled.
        reference: String,
        /// The host's architecture (`amd64`, `arm64`).
        want: String,
        /// The platforms the index lists.
        available: String,
    },
    /// The image was built for another architecture (or OS).
    #[error("image architecture mismatch: {reference} is {os}/{arch}, this host is linux/{host}; rebuild/push a multi-arch image (or one for linux/{host})")]
    ArchMismatch {
        /// The reference pulled.
        reference: String,
        /// The config's `os`.
        os: String,
        /// The config's `architecture`.
        arch: String,
        /// The host's architecture.
        host: String,
    },
    /// The image's `/iii/worker.yaml` cannot be read as configuration.
    #[error("/iii/worker.yaml in {reference}: {detail}")]
    WorkerYaml {
        /// The reference pulled.
        reference: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the image says to run its workload, plus what iii reads from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The config's `Env`, in order, as the image sets it (no default `PATH`
    /// added here; [`Rootfs::env`] has one).
    pub env: Vec<(String, String)>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd` (appended to the entrypoint).
    pub cmd: Vec<String>,
    /// `WorkingDir`, when set.
    pub working_dir: Option<String>,
    /// The config's `architecture` (`amd64`, `arm64`).
    pub architecture: String,
    /// The text of `/iii/worker.yaml` in the image, if it has one.
    pub worker_yaml: Option<String>,
}

/// A pulled image, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    /// The read-only lower built from it.
    pub rootfs: Rootfs,
    /// `sha256:…` of the image manifest (the platform's, for an index).
    pub digest: String,
    /// Its run configuration.
    pub config: ImageConfig,
}

/// The architecture name OCI uses for this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

const ATTEMPTS: u32 = 3;
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Bounds the JSON documents (manifests, configs) held in memory.
const MAX_DOC: u64 = 4 << 20;
/// Bounds `/iii/worker.yaml`.
const MAX_WORKER_YAML: u64 = 1 << 20;
const REFS_DIR: &str = "refs";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPT: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// A manifest or index, as much of it as a pull needs.
#[derive(Debug, Deserialize)]
struct Doc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Option<Vec<Desc>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Desc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

impl Platform {
    fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<oci::RunConfig>,
}

/// The manifest chosen for this host, verified and parsed.
struct Resolved {
    digest: String,
    media_type: String,
    bytes: Vec<u8>,
    config: Desc,
    layers: Vec<Desc>,
}

/// What `<store>/refs/<hash>.json` records.
#[derive(Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    digest: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// The store key of a pulled image with manifest `digest`.
pub fn pulled_key(digest: &str) -> String {
    let mut h = Sha256::new();
    h.update(BUILDER_VERSION.as_bytes());
    h.update(b"\0pulled\0");
    h.update(digest.as_bytes());
    hex(&h.finalize())
}

fn parse_reference(reference: &str) -> Result<Reference, PullError> {
    let bad = |detail: String| PullError::BadReference {
        reference: reference.into(),
        detail,
    };
    if reference.trim().is_empty() {
        return Err(bad("empty".into()));
    }
    if reference.contains("://") {
        return Err(bad(
            "give host[:port]/repository[:tag], without a URL scheme".into(),
        ));
    }
    Reference::try_from(reference).map_err(|e| bad(e.to_string()))
}

fn check_digest(reference: &str, digest: &str) -> Result<(), PullError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(PullError::UnsupportedDigest {
            reference: reference.into(),
            digest: digest.into(),
        })
    }
}

fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Whether `registry` is spoken to over plain HTTP, and whether that needs a
/// warning (anything but loopback). `listed` is `III_INSECURE_REGISTRIES`.
fn insecure(registry: &str, listed: &str) -> Option<bool> {
    let host = host_of(registry);
    if matches!(host, "localhost" | "127.0.0.1" | "::1") {
        return Some(false);
    }
    listed
        .split([',', ' ', '\t', '\n'])
        .filter(|s| !s.is_empty())
        .any(|e| e == registry || e == host)
        .then_some(true)
}

fn client_for(r: &Reference, progress: &mut dyn FnMut(&str)) -> Result<Client, PullError> {
    // reqwest is built without a bundled crypto provider: use ring, which the
    // rest of the workspace already links. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = r.resolve_registry().to_string();
    let listed = std::env::var("III_INSECURE_REGISTRIES").unwrap_or_default();
    let protocol = match insecure(&registry, &listed) {
        Some(warn) => {
            if warn {
                progress(&format!(
                    "warning: {registry} is reached over plain HTTP (III_INSECURE_REGISTRIES): nothing it sends is authenticated except by digest"
                ));
            }
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        }
        None => ClientProtocol::Https,
    };
    let config = ClientConfig {
        protocol,
        // Indexes are narrowed here, so the error can list what was offered.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| PullError::Registry {
        registry,
        detail: format!("cannot set up an HTTP client: {}", chain(&e)),
    })
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Whether another attempt may succeed.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_connect() || r.is_timeout() || r.is_request() || r.is_body()
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

fn is_connect(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout())
}

/// Runs `op` up to [`ATTEMPTS`] times while it fails transiently.
async fn retry<T, F, Fut>(
    registry: &str,
    progress: &mut dyn FnMut(&str),
    what: &str,
    mut op: F,
) -> Result<T, (OciDistributionError, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                let wait = BACKOFF[(attempt - 1) as usize];
                progress(&format!(
                    "{what} from {registry} failed ({}); retrying in {} s",
                    chain(&e),
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// Turns a client error into the pull error a user can act on.
fn classify(reference: &str, registry: &str, e: OciDistributionError, attempts: u32) -> PullError {
    let not_found = || PullError::NotFound {
        reference: reference.into(),
        registry: registry.into(),
    };
    match e {
        ref e if is_connect(e) => PullError::Unreachable {
            registry: registry.into(),
            attempts,
            detail: chain(e),
        },
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) =>
        {
            not_found()
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::UnauthorizedError { .. } => PullError::Unauthorized {
            reference: reference.into(),
            registry: registry.into(),
        },
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, OciErrorCode::Denied | OciErrorCode::Unauthorized)) =>
        {
            PullError::Unauthorized {
                reference: reference.into(),
                registry: registry.into(),
            }
        }
        OciDistributionError::DigestError(d) => PullError::Registry {
            registry: registry.into(),
            detail: format!("the manifest of {reference} does not match its digest: {d}"),
        },
        e => PullError::Registry {
            registry: registry.into(),
            detail: if attempts > 1 {
                format!("{} ({attempts} attempts)", chain(&e))
            } else {
                chain(&e)
            },
        },
    }
}

fn parse_doc(reference: &str, bytes: &[u8]) -> Result<Doc, PullError> {
    let invalid = |detail: String| PullError::InvalidManifest {
        reference: reference.into(),
        detail,
    };
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    match doc.schema_version {
        Some(2) => {}
        Some(v) => return Err(invalid(format!("schemaVersion {v} (only 2 is supported)"))),
        None => return Err(invalid("no schemaVersion".into())),
    }
    if let Some(mt) = &doc.media_type {
        if !ACCEPT.contains(&mt.as_str()) {
            return Err(invalid(format!("unsupported media type {mt}")));
        }
    }
    Ok(doc)
}

fn is_index(doc: &Doc) -> bool {
    match doc.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(_) => false,
        None => doc.manifests.is_some() && doc.layers.is_none(),
    }
}

/// The index entry for linux/<host arch>, or the error listing what there is.
fn pick_platform(reference: &str, entries: &[Desc]) -> Result<Desc, PullError> {
    let want = host_arch();
    let fits = |p: &Platform| {
        p.os == "linux"
            && p.architecture == want
            // arm64 images are v8 (or say nothing); other variants are not for this host.
            && (want != "arm64" || p.variant.as_deref().is_none_or(|v| v == "v8"))
    };
    if let Some(d) = entries
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(fits))
    {
        return Ok(d.clone());
    }
    let mut available: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        // Build attestations are listed as unknown/unknown.
        .filter(|p| p.os != "unknown")
        .map(Platform::name)
        .collect();
    available.dedup();
    Err(PullError::NoPlatform {
        reference: reference.into(),
        want: want.into(),
        available: if available.is_empty() {
            "no platforms".into()
        } else {
            available.join(", ")
        },
    })
}

fn validate_manifest(reference: &str, doc: Doc) -> Result<(Desc, Vec<Desc>), PullError> {
    let invalid = |detail: String| PullError::InvalidManifest {
        reference: reference.into(),
        detail,
    };
    let config = doc
        .config
        .ok_or_else(|| invalid("no config descriptor".into()))?;
    if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(invalid(format!(
            "config media type {:?} is not a container image config (an artifact, not an image?)",
            config.media_type
        )));
    }
    let layers = doc.layers.ok_or_else(|| invalid("no layers".into()))?;
    for d in std::iter::once(&config).chain(&layers) {
        check_digest(reference, &d.digest)?;
        if d.size < 0 {
            return Err(invalid(format!(
                "blob {} has negative size {}",
                d.digest, d.size
            )));
        }
    }
    for (i, l) in layers.iter().enumerate() {
        if !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(invalid(format!(
                "layer {i} ({}) has unsupported media type {:?} (tar and tar+gzip layers are supported)",
                l.digest, l.media_type
            )));
        }
    }
    Ok((config, layers))
}

/// Byte counts and the 2 s progress line.
struct Meter<'a> {
    reference: &'a str,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
}

impl Meter<'_> {
    fn line(&self) -> String {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        format!(
            "Pulling {}: {:.1}/{:.1} MiB ({:.0}%, {:.1} MiB/s)",
            self.reference,
            mib(self.done),
            mib(self.total),
            pct,
            mib(self.done) / secs
        )
    }

    fn add(&mut self, n: u64, progress: &mut dyn FnMut(&str)) {
        self.done += n;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            progress(&self.line());
        }
    }
}

impl ImageStore {
    /// Pulls `reference` (e.g. `localhost:5050/my-worker:latest`) anonymously
    /// and imports it like a custom image. HTTP only for loopback and
    /// `III_INSECURE_REGISTRIES`; every request tried 3 times (1 s, 3 s apart)
    /// while the failure is transient; every blob checked against its digest
    /// and size; an index narrowed to `linux/<host arch>`. The entry is keyed
    /// by the manifest digest: a pull of an image already here downloads only
    /// its manifest and config. `progress` gets a `Pulling …` line every 2 s.
    pub fn pull(
        &self,
        reference: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Pulled, ImageError> {
        // The pull runs on its own thread and runtime, so it can be called
        // from anywhere (also from inside another tokio runtime); progress
        // lines come back over a channel to the caller's thread.
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let h = s.spawn(move || {
                self.pull_here(reference, &mut |l: &str| {
                    let _ = tx.send(l.to_string());
                })
            });
            for line in rx {
                progress(&line);
            }
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// The image a previous [`ImageStore::pull`] of `reference` produced, from
    /// the cache alone (no network).
    pub fn lookup_pulled(&self, reference: &str) -> Option<Pulled> {
        let r = parse_reference(reference).ok()?;
        let rec: RefRecord =
            serde_json::from_slice(&fs::read(self.ref_path(&r.whole())).ok()?).ok()?;
        self.lookup_pulled_digest(&rec.digest)
    }

    fn lookup_pulled_digest(&self, digest: &str) -> Option<Pulled> {
        let (rootfs, meta) = self.lookup_meta(&pulled_key(digest))?;
        Some(Pulled {
            rootfs,
            digest: meta.digest?,
            config: meta.image?,
        })
    }

    fn ref_path(&self, whole: &str) -> PathBuf {
        self.root()
            .join(REFS_DIR)
            .join(format!("{}.json", sha256_hex(whole.as_bytes())))
    }

    fn record_ref(&self, whole: &str, digest: &str) -> Result<(), PullError> {
        let dir = self.root().join(REFS_DIR);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = self.ref_path(whole);
        let rec = RefRecord {
            reference: whole.into(),
            digest: digest.into(),
        };
        let data = serde_json::to_vec_pretty(&rec).map_err(|e| PullError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        // A reader sees the old record or the new one, never half of one.
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        tmp.write_all(&data).map_err(io_err(tmp.path()))?;
        tmp.persist(&path).map_err(|e| PullError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    fn pull_here(
        &self,
        reference: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Pulled, ImageError> {
        let r = parse_reference(reference)?;
        let whole = r.whole();
        let registry = r.resolve_registry().to_string();
        let client = client_for(&r, progress)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err(Path::new("tokio runtime")))?;
        let resolved = rt.block_on(resolve(&client, &r, &whole, &registry, progress))?;
        if let Some(p) = self.lookup_pulled_digest(&resolved.digest) {
            progress("cached");
            self.record_ref(&whole, &resolved.digest)?;
            return Ok(p);
        }
        // The config first: a wrong-architecture image fails before its layers download.
        let config_bytes = rt.block_on(fetch_small(
            &client,
            &r,
            &whole,
            &registry,
            &resolved.config,
            progress,
        ))?;
        let cfg: ConfigDoc =
            serde_json::from_slice(&config_bytes).map_err(|e| PullError::InvalidManifest {
                reference: whole.clone(),
                detail: format!("config {} is not JSON: {e}", resolved.config.digest),
            })?;
        if cfg.architecture != host_arch() || cfg.os != "linux" {
            return Err(PullError::ArchMismatch {
                reference: whole,
                os: cfg.os,
                arch: cfg.architecture,
                host: host_arch().into(),
            }
            .into());
        }
        let run = cfg.config.unwrap_or_default();
        let key = pulled_key(&resolved.digest);
        let pulled_digest = resolved.digest.clone();
        let rootfs = self.ensure(&key, progress, &mut |tmp, progress| {
            let layout = tmp.join("oci");
            let blobs = layout.join("blobs/sha256");
            fs::create_dir_all(&blobs).map_err(store::io_err(&blobs))?;
            let put = |digest: &str, data: &[u8]| -> Result<(), ImageError> {
                let p = blobs.join(digest.trim_start_matches("sha256:"));
                fs::write(&p, data).map_err(store::io_err(&p))
            };
            put(&resolved.config.digest, &config_bytes)?;
            put(&resolved.digest, &resolved.bytes)?;
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{"mediaType": resolved.media_type, "digest": resolved.digest,
                               "size": resolved.bytes.len()}],
            });
            let ip = layout.join("index.json");
            fs::write(&ip, index.to_string()).map_err(store::io_err(&ip))?;
            fs::write(
                layout.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .map_err(store::io_err(&layout))?;
            rt.block_on(fetch_layers(
                &client,
                &r,
                &whole,
                &registry,
                &resolved.layers,
                &blobs,
                progress,
            ))?;
            // The same import as a local layout (it hashes every blob once more).
            let img = oci::Image::open(&layout)?;
            let rootdir = tmp.join("rootfs");
            progress(&format!("unpacking {} layers", img.layers.len()));
            img.unpack(&rootdir)?;
            drop(img);
            store::remove_tree(&layout)?;
            let worker_yaml = read_worker_yaml(&whole, &rootdir)?;
            store::build_erofs(&rootdir, &tmp.join(store::LOWER_FILE), progress)?;
            store::remove_tree(&rootdir)?;
            let image = ImageConfig {
                env: run
                    .env
                    .iter()
                    .filter_map(|e| e.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                entrypoint: run.entrypoint.clone().unwrap_or_default(),
                cmd: run.cmd.clone().unwrap_or_default(),
                working_dir: run.working_dir.clone().filter(|w| !w.is_empty()),
                architecture: cfg.architecture.clone(),
                worker_yaml,
            };
            Ok(Built {
                kind: "pulled",
                name: whole.clone(),
                env: store::env_pairs(&run.env),
                packages: Vec::new(),
                digest: Some(pulled_digest.clone()),
                image: Some(image),
            })
        })?;
        self.record_ref(&whole, &resolved.digest)?;
        let (_, meta) = self.lookup_meta(&rootfs.key).ok_or_else(|| PullError::Io {
            path: self.root().join(&rootfs.key),
            source: io::Error::other("published entry is unreadable"),
        })?;
        Ok(Pulled {
            rootfs,
            digest: resolved.digest,
            config: meta.image.unwrap_or_default(),
        })
    }
}

/// `/iii/worker.yaml` of the unpacked root, refusing symlinks (they would
/// resolve on the host).
fn read_worker_yaml(reference: &str, root: &Path) -> Result<Option<String>, PullError> {
    let bad = |detail: String| PullError::WorkerYaml {
        reference: reference.into(),
        detail,
    };
    let dir = root.join("iii");
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.file_type().is_symlink() => return Err(bad("/iii is a symlink".into())),
        _ => return Ok(None),
    }
    let p = dir.join("worker.yaml");
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_file() => {
            if m.len() > MAX_WORKER_YAML {
                return Err(bad(format!("{} bytes (at most 1 MiB)", m.len())));
            }
        }
        Ok(_) => return Err(bad("not a regular file".into())),
        Err(_) => return Ok(None),
    }
    let mut s = Vec::new();
    File::open(&p)
        .and_then(|f| f.take(MAX_WORKER_YAML).read_to_end(&mut s))
        .map_err(io_err(&p))?;
    String::from_utf8(s)
        .map(Some)
        .map_err(|_| bad("not UTF-8 text".into()))
}

/// Resolves the reference to the image manifest for this host.
async fn resolve(
    client: &Client,
    r: &Reference,
    whole: &str,
    registry: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Resolved, PullError> {
    let auth = RegistryAuth::Anonymous;
    if let Some(d) = r.digest() {
        check_digest(whole, d)?;
    }
    let mut cur = r.clone();
    // An index may (rarely) nest another; two levels are plenty.
    for _ in 0..3 {
        let (bytes, _) = retry(registry, progress, "fetching the manifest", || {
            client.pull_manifest_raw(&cur, &auth, ACCEPT)
        })
        .await
        .map_err(|(e, n)| classify(whole, registry, e, n))?;
        if bytes.len() as u64 > MAX_DOC {
            return Err(PullError::InvalidManifest {
                reference: whole.into(),
                detail: format!("{} bytes (at most 4 MiB)", bytes.len()),
            });
        }
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        if let Some(want) = cur.digest() {
            if want != digest {
                return Err(PullError::DigestMismatch {
                    reference: whole.into(),
                    digest: want.into(),
                    actual: digest.trim_start_matches("sha256:").into(),
                });
            }
        }
        let doc = parse_doc(whole, &bytes)?;
        if is_index(&doc) {
            let entries = doc.manifests.unwrap_or_default();
            let pick = pick_platform(whole, &entries)?;
            check_digest(whole, &pick.digest)?;
            cur = r.clone_with_digest(pick.digest);
            continue;
        }
        let media_type = doc
            .media_type
            .clone()
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let (config, layers) = validate_manifest(whole, doc)?;
        return Ok(Resolved {
            digest,
            media_type,
            bytes: bytes.to_vec(),
            config,
            layers,
        });
    }
    Err(PullError::InvalidManifest {
        reference: whole.into(),
        detail: "image indexes nested more than two deep".into(),
    })
}

fn oci_desc(d: &Desc) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        ..OciDescriptor::default()
    }
}

/// A meter and the progress callback it reports to.
type Metered<'a, 'b> = (&'a mut Meter<'b>, &'a mut dyn FnMut(&str));

/// Streams blob `d` into `sink`, hashing and counting; the caller's meter (if
/// any) sees the bytes as they arrive. One attempt.
async fn stream_blob(
    client: &Client,
    r: &Reference,
    whole: &str,
    d: &Desc,
    sink: &mut dyn Write,
    sink_path: &Path,
    mut meter: Option<Metered<'_, '_>>,
) -> Result<u64, StreamFail> {
    let expected = u64::try_from(d.size).unwrap_or(0);
    let mut s = client
        .pull_blob_stream(r, &oci_desc(d))
        .await
        .map_err(StreamFail::Client)?;
    let mut h = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            // The client's own check of the digest fails the stream's end;
            // our hash below names the blob, so finish with that.
            Err(e) if is_digest_error(&e) => break,
            Err(e) => return Err(StreamFail::Client(OciDistributionError::IoError(e))),
        };
        got += chunk.len() as u64;
        if got > expected {
            return Err(StreamFail::Pull(PullError::SizeMismatch {
                reference: whole.into(),
                digest: d.digest.clone(),
                expected,
                got,
            }));
        }
        h.update(&chunk);
        sink.write_all(&chunk)
            .map_err(|e| StreamFail::Pull(io_err(sink_path)(e)))?;
        if let Some((m, p)) = meter.as_mut() {
            m.add(chunk.len() as u64, *p);
        }
    }
    let actual = hex(&h.finalize());
    if d.digest.strip_prefix("sha256:") != Some(actual.as_str()) {
        return Err(StreamFail::Pull(PullError::DigestMismatch {
            reference: whole.into(),
            digest: d.digest.clone(),
            actual,
        }));
    }
    if got != expected {
        return Err(StreamFail::Pull(PullError::SizeMismatch {
            reference: whole.into(),
            digest: d.digest.clone(),
            expected,
            got,
        }));
    }
    Ok(got)
}

fn is_digest_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| {
        i.downcast_ref::<oci_client::errors::DigestError>()
            .is_some()
    })
}

enum StreamFail {
    /// A transport or registry error: may be retried.
    Client(OciDistributionError),
    /// A verdict on the content: final.
    Pull(PullError),
}

/// A small blob (the config) into memory, verified.
async fn fetch_small(
    client: &Client,
    r: &Reference,
    whole: &str,
    registry: &str,
    d: &Desc,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<u8>, PullError> {
    if u64::try_from(d.size).unwrap_or(u64::MAX) > MAX_DOC {
        return Err(PullError::InvalidManifest {
            reference: whole.into(),
            detail: format!("config {} is {} bytes (at most 4 MiB)", d.digest, d.size),
        });
    }
    let mut attempt = 1;
    loop {
        let mut buf = Vec::new();
        match stream_blob(client, r, whole, d, &mut buf, Path::new(&d.digest), None).await {
            Ok(_) => return Ok(buf),
            Err(StreamFail::Pull(e)) => return Err(e),
            Err(StreamFail::Client(e)) if attempt < ATTEMPTS && transient(&e) => {
                let wait = BACKOFF[(attempt - 1) as usize];
                progress(&format!(
                    "fetching {} from {registry} failed ({}); retrying in {} s",
                    d.digest,
                    chain(&e),
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(StreamFail::Client(e)) => return Err(classify(whole, registry, e, attempt)),
        }
    }
}

/// Every layer into `blobs/<hex>` (via `<hex>.part`), verified.
async fn fetch_layers(
    client: &Client,
    r: &Reference,
    whole: &str,
    registry: &str,
    layers: &[Desc],
    blobs: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), PullError> {
    let now = Instant::now();
    let mut meter = Meter {
        reference: whole,
        total: layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(0))
            .sum(),
        done: 0,
        start: now,
        last: now,
    };
    for l in layers {
        let hexname = l.digest.trim_start_matches("sha256:");
        let dest = blobs.join(hexname);
        if dest.exists() {
            // The same layer twice in one image.
            meter.done += u64::try_from(l.size).unwrap_or(0);
            continue;
        }
        let part = blobs.join(format!("{hexname}.part"));
        let mut attempt = 1;
        loop {
            let before = meter.done;
            let mut f = io::BufWriter::new(File::create(&part).map_err(io_err(&part))?);
            let res = stream_blob(
                client,
                r,
                whole,
                l,
                &mut f,
                &part,
                Some((&mut meter, progress)),
            )
            .await;
            match res {
                Ok(_) => {
                    f.flush().map_err(io_err(&part))?;
                    drop(f);
                    fs::rename(&part, &dest).map_err(io_err(&dest))?;
                    break;
                }
                Err(StreamFail::Pull(e)) => return Err(e),
                Err(StreamFail::Client(e)) if attempt < ATTEMPTS && transient(&e) => {
                    meter.done = before;
                    let wait = BACKOFF[(attempt - 1) as usize];
                    progress(&format!(
                        "fetching {} from {registry} failed ({}); retrying in {} s",
                        l.digest,
                        chain(&e),
                        wait.as_secs()
                    ));
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(StreamFail::Client(e)) => return Err(classify(whole, registry, e, attempt)),
            }
        }
    }
    progress(&meter.line());
    Ok(())
}

// ---- push ------------------------------------------------------------------------

/// Pushes the image in the OCI layout at `dir` to `reference`: its blobs, its
/// manifest, and (when the layout's `index.json` lists several manifests, or
/// one that is an index) the index, tagged as `reference`. Returns the digest
/// the tag now names. Anonymous, same HTTP rules as a pull.
pub fn push_layout(
    dir: &Path,
    reference: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<String, PullError> {
    let r = parse_reference(reference)?;
    let whole = r.whole();
    let registry = r.resolve_registry().to_string();
    let client = client_for(&r, progress)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err(Path::new("tokio runtime")))?;
    let ip = dir.join("index.json");
    let index = fs::read(&ip).map_err(io_err(&ip))?;
    let doc = parse_doc(&whole, &index)?;
    let entries = doc.manifests.unwrap_or_default();
    let ctx = PushCtx {
        client: &client,
        r: &r,
        whole: &whole,
        registry: &registry,
        dir,
    };
    rt.block_on(async {
        // Anonymous: pushes to registries that want credentials fail with 401.
        client
            .store_auth_if_needed(&registry, &RegistryAuth::Anonymous)
            .await;
        if let [only] = entries.as_slice() {
            return ctx.push_desc(only, true, progress).await;
        }
        for e in &entries {
            ctx.push_desc(e, false, progress).await?;
        }
        ctx.put_manifest(&index, OCI_INDEX, true).await
    })
}

struct PushCtx<'a> {
    client: &'a Client,
    r: &'a Reference,
    whole: &'a str,
    registry: &'a str,
    dir: &'a Path,
}

impl PushCtx<'_> {
    fn blob(&self, digest: &str) -> Result<Vec<u8>, PullError> {
        check_digest(self.whole, digest)?;
        let p = self.dir.join("blobs/sha256").join(&digest[7..]);
        let data = fs::read(&p).map_err(io_err(&p))?;
        let actual = sha256_hex(&data);
        if digest[7..] != actual {
            return Err(PullError::DigestMismatch {
                reference: p.display().to_string(),
                digest: digest.into(),
                actual,
            });
        }
        Ok(data)
    }

    fn fail(&self, e: OciDistributionError) -> PullError {
        classify(self.whole, self.registry, e, 1)
    }

    async fn put_manifest(
        &self,
        body: &[u8],
        media_type: &str,
        tag: bool,
    ) -> Result<String, PullError> {
        let digest = format!("sha256:{}", sha256_hex(body));
        let target = if tag {
            self.r.clone()
        } else {
            self.r.clone_with_digest(digest.clone())
        };
        let ct =
            http::HeaderValue::from_str(media_type).map_err(|_| PullError::InvalidManifest {
                reference: self.whole.into(),
                detail: format!("media type {media_type:?}"),
            })?;
        self.client
            .push_manifest_raw(&target, body.to_vec(), ct)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(digest)
    }

    /// Pushes manifest or index `d` (children first), tagging it when `tag`.
    fn push_desc<'s>(
        &'s self,
        d: &'s Desc,
        tag: bool,
        progress: &'s mut dyn FnMut(&str),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, PullError>> + 's>> {
        Box::pin(async move {
            let body = self.blob(&d.digest)?;
            let doc = parse_doc(self.whole, &body)?;
            let media_type = doc
                .media_type
                .clone()
                .unwrap_or_else(|| d.media_type.clone());
            if is_index(&doc) {
                for c in doc.manifests.as_deref().unwrap_or_default() {
                    self.push_desc(c, false, progress).await?;
                }
                return self.put_manifest(&body, &media_type, tag).await;
            }
            // Pushed as they are: what a registry accepts is its business, what
            // a pull accepts is checked on the pull.
            let config = doc.config.ok_or_else(|| PullError::InvalidManifest {
                reference: self.whole.into(),
                detail: format!("manifest {} has no config descriptor", d.digest),
            })?;
            let layers = doc.layers.unwrap_or_default();
            for b in std::iter::once(&config).chain(&layers) {
                let exists = self
                    .client
                    .blob_exists(self.r, &b.digest)
                    .await
                    .map_err(|e| self.fail(e))?;
                if exists {
                    continue;
                }
                let data = self.blob(&b.digest)?;
                progress(&format!(
                    "pushing {} ({:.1} MiB)",
                    b.digest,
                    data.len() as f64 / f64::from(1u32 << 20)
                ));
                self.client
                    .push_blob(self.r, data, &b.digest)
                    .await
                    .map_err(|e| self.fail(e))?;
            }
            let mt = if media_type.is_empty() {
                OCI_MANIFEST.to_string()
            } else {
                media_type
            };
            self.put_manifest(&body, &mt, tag).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_fail_clearly() {
        let r = parse_reference("localhost:5050/my-worker:latest").unwrap();
        assert_eq!(r.resolve_registry(), "localhost:5050");
        assert_eq!(r.repository(), "my-worker");
        for bad in ["", "http://x/y", "UPPER/Case:tag", "a:b:c@@"] {
            let e = parse_reference(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad image reference"), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_is_plain_http_and_others_only_when_listed() {
        assert_eq!(insecure("localhost:5000", ""), Some(false));
        assert_eq!(insecure("127.0.0.1:41000", ""), Some(false));
        assert_eq!(insecure("[::1]:41000", ""), Some(false));
        assert_eq!(insecure("registry.example.com", ""), None);
        let listed = "reg.lan:5000, other.lan";
        assert_eq!(insecure("reg.lan:5000", listed), Some(true));
        assert_eq!(insecure("other.lan:443", listed), Some(true));
        assert_eq!(insecure("reg.lan:6000", listed), None);
        assert_eq!(insecure("registry.example.com", listed), None);
    }

    fn desc(arch: &str, os: &str, variant: Option<&str>) -> Desc {
        Desc {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", sha256_hex(arch.as_bytes())),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(str::to_string),
            }),
        }
    }

    #[test]
    fn platform_pick_takes_the_host_and_lists_the_rest() {
        let host = host_arch();
        let other = if host == "amd64" { "arm64" } else { "amd64" };
        let entries = vec![
            desc("unknown", "unknown", None),
            desc(other, "linux", None),
            desc(host, "linux", None),
        ];
        assert_eq!(
            pick_platform("x", &entries).unwrap().digest,
            entries[2].digest
        );
        let e = pick_platform(
            "x",
            &[desc(other, "linux", None), desc("arm", "linux", Some("v7"))],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "x has no image for linux/{host}; its index offers: linux/{other}, linux/arm/v7"
            )
        );
    }

    #[test]
    fn manifests_are_validated() {
        let good = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{h}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{h}","size":3}}]}}"#,
            h = "a".repeat(64)
        );
        let doc = parse_doc("x", good.as_bytes()).unwrap();
        assert!(!is_index(&doc));
        let (c, l) = validate_manifest("x", doc).unwrap();
        assert_eq!((c.size, l.len()), (2, 1));

        let cases = [
            ("not json", "not JSON"),
            (r#"{"schemaVersion":1}"#, "schemaVersion 1"),
            (
                r#"{"schemaVersion":2,"mediaType":"text/plain"}"#,
                "unsupported media type text/plain",
            ),
        ];
        for (doc, want) in cases {
            let e = parse_doc("x", doc.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{doc}: {e}");
        }
        let zstd = good.replace("tar+gzip", "tar+zstd");
        let e = validate_manifest("x", parse_doc("x", zstd.as_bytes()).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported media type \"application/vnd.oci.image.layer.v1.tar+zstd\""),
            "{e}"
        );
        let sha512 = good.replace(
            &format!("sha256:{}", "a".repeat(64)),
            &format!("sha512:{}", "a".repeat(128)),
        );
        let e = validate_manifest("x", parse_doc("x", sha512.as_bytes()).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unsupported digest \"sha512:"), "{e}");
        let artifact = good.replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.example+json",
        );
        let e = validate_manifest("x", parse_doc("x", artifact.as_bytes()).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a container image config"), "{e}");
    }

    #[test]
    fn progress_line_format() {
        let now = Instant::now();
        let m = Meter {
            reference: "localhost:1/a:b",
            total: 4 << 20,
            done: 1 << 20,
            start: now,
            last: now,
        };
        let l = m.line();
        assert!(
            l.starts_with("Pulling localhost:1/a:b: 1.0/4.0 MiB (25%, "),
            "{l}"
        );
        assert!(l.ends_with(" MiB/s)"), "{l}");
    }
}
