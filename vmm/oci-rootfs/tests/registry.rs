//! Pulls from a real registry (Debian's docker-registry, started by
//! tests/registry.sh on 127.0.0.1 with its own storage per test).
//!
//! Runs when III_REGISTRY_TESTS=1 (registry.sh installs docker-registry if
//! needed) or when docker-registry is installed; otherwise says why and passes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use iii_oci_rootfs::layout::{layer_tar, write_layout_arch, Entry};
use iii_oci_rootfs::registry::{host_arch, push_layout};
use iii_oci_rootfs::{ImageError, ImageStore, PullError};
use serde_json::{json, Value};

const WORKER_YAML: &str = "name: hello\ndescription: a test worker\n";

fn enabled() -> bool {
    if std::env::var("III_REGISTRY_TESTS").as_deref() == Ok("1") {
        return true;
    }
    let installed = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("docker-registry").is_file()));
    if !installed {
        eprintln!(
            "skipped: docker-registry is not installed and III_REGISTRY_TESTS is not 1 \
             (tests/registry.sh installs it)"
        );
    }
    installed && Path::new("/bin/busybox").is_file() && which("mkfs.erofs")
}

fn which(tool: &str) -> bool {
    let ok = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !ok {
        eprintln!("skipped: {tool} is not installed");
    }
    ok
}

/// One registry with its own state dir; stopped (storage removed) on drop.
struct Registry {
    state: tempfile::TempDir,
    addr: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/registry.sh")
}

impl Registry {
    fn start() -> Registry {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .env("III_REGISTRY_STATE", state.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "registry.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Registry { state, addr }
    }

    fn stop(&self) {
        let st = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("III_REGISTRY_STATE", self.state.path())
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// Where the registry keeps blob `digest`.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.state
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("III_REGISTRY_STATE", self.state.path())
            .status();
    }
}

/// A busybox root in two layers: the second adds /iii/worker.yaml and /app,
/// and deletes a file of the first (whiteout).
fn busybox_image(dir: &Path, arch: &str) {
    let busybox = fs::read("/bin/busybox").unwrap();
    let l1 = layer_tar(&[
        Entry::Dir {
            path: "bin",
            mode: 0o755,
        },
        Entry::File {
            path: "bin/busybox",
            mode: 0o755,
            data: &busybox,
        },
        Entry::Symlink {
            path: "bin/sh",
            target: "busybox",
        },
        Entry::Dir {
            path: "etc",
            mode: 0o755,
        },
        Entry::File {
            path: "etc/doomed",
            mode: 0o644,
            data: b"deleted by layer 2",
        },
    ])
    .unwrap();
    let l2 = layer_tar(&[
        Entry::Dir {
            path: "iii",
            mode: 0o755,
        },
        Entry::File {
            path: "iii/worker.yaml",
            mode: 0o644,
            data: WORKER_YAML.as_bytes(),
        },
        Entry::Dir {
            path: "app",
            mode: 0o755,
        },
        Entry::File {
            path: "app/run.sh",
            mode: 0o755,
            data: b"#!/bin/sh\necho \"$GREETING\"\n",
        },
        Entry::Whiteout { path: "etc/doomed" },
    ])
    .unwrap();
    write_layout_arch(
        dir,
        &[l1, l2],
        json!({
            "Env": ["PATH=/bin", "GREETING=hello world"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["/app/run.sh"],
            "WorkingDir": "/app",
        }),
        arch,
    )
    .unwrap();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The layout's (only) manifest.
fn manifest_of(layout: &Path) -> (String, Value) {
    let index = read_json(&layout.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m = read_json(&layout.join("blobs/sha256").join(&digest[7..]));
    (digest, m)
}

/// Rewrites the layout's manifest with `f` (and index.json to name it).
fn edit_manifest(layout: &Path, f: impl FnOnce(&mut Value)) {
    let (_, mut m) = manifest_of(layout);
    f(&mut m);
    let data = serde_json::to_vec(&m).unwrap();
    let hex = sha256(&data);
    fs::write(layout.join("blobs/sha256").join(&hex), &data).unwrap();
    let mut index = read_json(&layout.join("index.json"));
    index["manifests"][0]["digest"] = json!(format!("sha256:{hex}"));
    index["manifests"][0]["size"] = json!(data.len());
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(Some(dir.join("images"))).unwrap()
}

fn pull_err(store: &ImageStore, reference: &str) -> PullError {
    match store.pull(reference, &mut |_| {}) {
        Err(ImageError::Pull(e)) => e,
        other => panic!("expected a pull error, got {other:?}"),
    }
}

fn mkrootfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iii-mkrootfs"))
}

fn other_arch() -> &'static str {
    if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

#[test]
fn push_pull_config_cache_hit_and_offline_lookup() {
    if !enabled() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    busybox_image(&layout, host_arch());
    let reference = reg.reference("iii-test/hello:v1");

    // Pushed with the CLI, as a user would.
    let out = mkrootfs()
        .arg("push")
        .arg(&layout)
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (manifest_digest, _) = manifest_of(&layout);
    assert_eq!(pushed, manifest_digest);

    let s = store(tmp.path());
    assert!(s.lookup_pulled(&reference).is_none());
    let mut lines = Vec::new();
    let p = s
        .pull(&reference, &mut |l| lines.push(l.to_string()))
        .unwrap();
    assert_eq!(p.digest, manifest_digest);
    assert_eq!(
        p.config.env,
        vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("GREETING".to_string(), "hello world".to_string())
        ]
    );
    assert_eq!(p.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(p.config.cmd, ["/app/run.sh"]);
    assert_eq!(p.config.working_dir.as_deref(), Some("/app"));
    assert_eq!(p.config.architecture, host_arch());
    assert_eq!(p.config.worker_yaml.as_deref(), Some(WORKER_YAML));
    assert!(p.rootfs.lower.is_file());
    assert_eq!(p.rootfs.env, p.config.env);
    let done = format!("Pulling {reference}: ");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&done) && l.contains("(100%, ")),
        "{lines:?}"
    );

    // The lower holds what the two layers say (fsck.erofs extracts without mounting).
    let x = tmp.path().join("extract");
    let st = Command::new("fsck.erofs")
        .arg(format!("--extract={}", x.display()))
        .arg(&p.rootfs.lower)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(x.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(x.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_to_string(x.join("iii/worker.yaml")).unwrap(),
        WORKER_YAML
    );
    assert!(x.join("etc").is_dir());
    assert!(!x.join("etc/doomed").exists(), "whiteout not applied");

    // Second pull: the manifest digest is known, nothing is rebuilt.
    let ino = fs::metadata(&p.rootfs.lower).unwrap();
    let mut lines2 = Vec::new();
    let p2 = s
        .pull(&reference, &mut |l| lines2.push(l.to_string()))
        .unwrap();
    assert_eq!(p2, p);
    assert_eq!(lines2, ["cached"]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&p2.rootfs.lower).unwrap().ino(), ino.ino());

    // By digest: the same entry, and a wrong digest is refused as such.
    let by_digest = reg.reference(&format!("iii-test/hello@{manifest_digest}"));
    let mut lines3 = Vec::new();
    let p3 = s
        .pull(&by_digest, &mut |l| lines3.push(l.to_string()))
        .unwrap();
    assert_eq!(
        (p3.digest.as_str(), lines3.as_slice()),
        (manifest_digest.as_str(), ["cached".to_string()].as_slice())
    );
    let missing = reg.reference(&format!("iii-test/hello@sha256:{}", "0".repeat(64)));
    assert!(matches!(pull_err(&s, &missing), PullError::NotFound { .. }));

    // Offline: the registry is gone, the cache still answers.
    reg.stop();
    assert_eq!(s.lookup_pulled(&reference), Some(p.clone()));
    let out = mkrootfs()
        .args(["pull", &reference, "--lookup", "--json", "--cache"])
        .arg(s.root())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], json!(manifest_digest));
    assert_eq!(v["config"]["worker_yaml"], json!(WORKER_YAML));
    // A reference never pulled is not there.
    assert!(s
        .lookup_pulled(&reg.reference("iii-test/hello:v2"))
        .is_none());
    match pull_err(&s, &reference) {
        PullError::Unreachable { registry, .. } => assert_eq!(registry, reg.addr),
        e => panic!("{e}"),
    }
}

#[test]
fn cli_pull_prints_the_lower_and_json() {
    if !enabled() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    busybox_image(&layout, host_arch());
    let reference = reg.reference("cli/hello:latest");
    push_layout(&layout, &reference, &mut |_| {}).unwrap();
    let cache = tmp.path().join("cache");
    let out = mkrootfs()
        .args(["pull", &reference, "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lower = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(lower.is_file() && lower.starts_with(fs::canonicalize(&cache).unwrap()));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("Pulling {reference}: ")));
    let out = mkrootfs()
        .args(["pull", &reference, "--json", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rootfs"]["lower"], json!(lower));
    assert_eq!(v["config"]["entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "cached");
}

#[test]
fn tampered_blob_is_a_digest_mismatch_naming_the_blob() {
    if !enabled() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    busybox_image(&layout, host_arch());
    let reference = reg.reference("tamper/hello:v1");
    push_layout(&layout, &reference, &mut |_| {}).unwrap();
    let (_, m) = manifest_of(&layout);
    let layer = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let blob = reg.blob_file(&layer);
    let mut data = fs::read(&blob).unwrap();
    // Same length, different bytes: only the digest can tell.
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&blob, &data).unwrap();

    let s = store(tmp.path());
    let e = pull_err(&s, &reference);
    let msg = e.to_string();
    match e {
        PullError::DigestMismatch { digest, actual, .. } => {
            assert_eq!(digest, layer);
            assert_eq!(actual, sha256(&data));
        }
        e => panic!("{e}"),
    }
    assert!(msg.contains(&layer), "{msg}");
    // Nothing was published, no build dir left behind.
    let left: Vec<String> = fs::read_dir(s.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(s.lookup_pulled(&reference).is_none());
}

#[test]
fn invalid_manifests_are_refused() {
    if !enabled() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());

    // zstd layers: a registry stores them, this store cannot unpack them.
    let zstd = tmp.path().join("zstd");
    busybox_image(&zstd, host_arch());
    edit_manifest(&zstd, |m| {
        m["layers"][1]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+zstd");
    });
    let reference = reg.reference("bad/zstd:v1");
    push_layout(&zstd, &reference, &mut |_| {}).unwrap();
    match pull_err(&s, &reference) {
        e @ PullError::InvalidManifest { .. } => {
            let msg = e.to_string();
            assert!(msg.contains("tar+zstd"), "{msg}");
            assert!(msg.contains(&reference), "{msg}");
        }
        e => panic!("{e}"),
    }

    // An artifact (not an image config).
    let art = tmp.path().join("artifact");
    busybox_image(&art, host_arch());
    edit_manifest(&art, |m| {
        m["config"]["mediaType"] = json!("application/vnd.example.thing.config.v1+json");
    });
    let reference = reg.reference("bad/artifact:v1");
    push_layout(&art, &reference, &mut |_| {}).unwrap();
    match pull_err(&s, &reference) {
        e @ PullError::InvalidManifest { .. } => {
            assert!(
                e.to_string().contains("not a container image config"),
                "{e}"
            )
        }
        e => panic!("{e}"),
    }

    // Unknown tag and repository: 404, clearly.
    for r in ["bad/zstd:nope", "nobody/here:v1"] {
        match pull_err(&s, &reg.reference(r)) {
            e @ PullError::NotFound { .. } => {
                assert!(e.to_string().contains("manifest not found (404)"), "{e}")
            }
            e => panic!("{e}"),
        }
    }
    // A reference that does not parse.
    assert!(matches!(
        pull_err(&s, "127.0.0.1:1/UPPER:tag"),
        PullError::BadReference { .. }
    ));
}

#[test]
fn architecture_is_checked_and_indexes_are_narrowed() {
    if !enabled() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());

    // A single-platform image for the other architecture.
    let foreign = tmp.path().join("foreign");
    busybox_image(&foreign, other_arch());
    let reference = reg.reference("arch/foreign:v1");
    push_layout(&foreign, &reference, &mut |_| {}).unwrap();
    let e = pull_err(&s, &reference);
    let msg = e.to_string();
    assert!(matches!(e, PullError::ArchMismatch { .. }), "{msg}");
    assert!(msg.starts_with("image architecture mismatch"), "{msg}");
    assert!(msg.contains(&format!("linux/{}", other_arch())), "{msg}");
    assert!(msg.contains("rebuild/push a multi-arch image"), "{msg}");

    // An index with both: the host's is picked.
    let native = tmp.path().join("native");
    busybox_image(&native, host_arch());
    let (native_digest, _) = manifest_of(&native);
    let multi = tmp.path().join("multi");
    merge_layouts(&multi, &[&foreign, &native]);
    let reference = reg.reference("arch/multi:v1");
    push_layout(&multi, &reference, &mut |_| {}).unwrap();
    let p = s.pull(&reference, &mut |_| {}).unwrap();
    assert_eq!(p.digest, native_digest);
    assert_eq!(p.config.architecture, host_arch());

    // An index without the host's: the error lists what it has.
    let only_foreign = tmp.path().join("only-foreign");
    merge_layouts(&only_foreign, &[&foreign]);
    let mut index = read_json(&only_foreign.join("index.json"));
    let mut extra = index["manifests"][0].clone();
    extra["platform"] = json!({"os": "linux", "architecture": "arm", "variant": "v7"});
    index["manifests"].as_array_mut().unwrap().push(extra);
    fs::write(
        only_foreign.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let reference = reg.reference("arch/only-foreign:v1");
    push_layout(&only_foreign, &reference, &mut |_| {}).unwrap();
    match pull_err(&s, &reference) {
        e @ PullError::NoPlatform { .. } => assert!(
            e.to_string().ends_with(&format!(
                "has no image for linux/{}; its index offers: linux/{}, linux/arm/v7",
                host_arch(),
                other_arch()
            )),
            "{e}"
        ),
        e => panic!("{e}"),
    }
}

/// One layout whose index lists the manifests of `parts` (blobs copied over).
fn merge_layouts(out: &Path, parts: &[&Path]) {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for p in parts {
        for e in fs::read_dir(p.join("blobs/sha256")).unwrap().flatten() {
            fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
        }
        let index = read_json(&p.join("index.json"));
        manifests.push(index["manifests"][0].clone());
    }
    // Two or more entries: pushed as an index under the tag.
    if manifests.len() == 1 {
        manifests.push(manifests[0].clone());
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    fs::write(out.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn a_registry_that_is_down_is_named() {
    if !enabled() {
        return;
    }
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let reference = format!("127.0.0.1:{port}/down/hello:v1");
    let mut lines = Vec::new();
    let e = match s.pull(&reference, &mut |l| lines.push(l.to_string())) {
        Err(ImageError::Pull(e)) => e,
        other => panic!("{other:?}"),
    };
    let msg = e.to_string();
    match e {
        PullError::Unreachable {
            registry, attempts, ..
        } => {
            assert_eq!(registry, format!("127.0.0.1:{port}"));
            assert_eq!(attempts, 3);
        }
        e => panic!("{e}"),
    }
    assert!(
        msg.starts_with(&format!(
            "registry 127.0.0.1:{port} is unreachable (3 attempts)"
        )),
        "{msg}"
    );
    // Two retries were announced (after 1 s and 3 s).
    assert_eq!(
        lines.iter().filter(|l| l.contains("retrying in")).count(),
        2,
        "{lines:?}"
    );
}
