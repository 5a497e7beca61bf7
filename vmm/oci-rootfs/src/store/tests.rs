use super::*;
use crate::layout::{layer_tar, write_layout, Entry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(Some(dir.path().join("images"))).unwrap();
    (dir, s)
}

fn src(uri: &str, suite: &str) -> AptSource {
    AptSource {
        uri: uri.into(),
        suite: suite.into(),
        components: vec!["main".into()],
        signed_by: None,
    }
}

/// A builder that writes `data` as the lower, counting its calls.
fn fake_build(
    count: Arc<AtomicUsize>,
    data: &'static [u8],
    delay: Duration,
) -> Box<BuildFn<'static>> {
    Box::new(move |tmp: &Path, progress: &mut dyn FnMut(&str)| {
        count.fetch_add(1, Ordering::SeqCst);
        progress("building");
        std::thread::sleep(delay);
        fs::write(tmp.join(LOWER_FILE), data).unwrap();
        Ok(Built {
            kind: "custom",
            name: "fake".into(),
            env: vec![("PATH".into(), "/bin".into())],
            packages: vec![],
            digest: None,
            image: None,
        })
    })
}

fn entries(s: &ImageStore) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(s.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE)
        .collect();
    v.sort();
    v
}

#[test]
fn preset_keys_follow_the_recipe() {
    let sources = vec![src("http://deb.debian.org/debian", "bookworm")];
    let py = PresetRecipe::new("python", "bookworm", &sources).unwrap();
    let key = py.key();
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        key,
        PresetRecipe::new("python", "bookworm", &sources)
            .unwrap()
            .key(),
        "same recipe, same key"
    );
    let node = PresetRecipe::new("node", "bookworm", &sources).unwrap();
    assert_ne!(key, node.key());
    assert_ne!(
        key,
        PresetRecipe::new("python", "trixie", &sources)
            .unwrap()
            .key()
    );
    let mut more = sources.clone();
    more.push(src("http://deb.debian.org/debian", "bookworm-updates"));
    assert_ne!(
        key,
        PresetRecipe::new("python", "bookworm", &more)
            .unwrap()
            .key()
    );
    let mut extra = py.clone();
    extra.include.push("python3-dev".into());
    assert_ne!(key, extra.key(), "the package list is part of the key");
    let mut excl = py.clone();
    excl.dpkg_paths.pop();
    assert_ne!(key, excl.key());
    assert!(matches!(
        PresetRecipe::new("ruby", "bookworm", &sources),
        Err(ImageError::UnknownPreset(n)) if n == "ruby"
    ));
}

#[test]
fn mmdebstrap_arguments_carry_the_recipe() {
    let r = PresetRecipe::new(
        "node",
        "bookworm",
        &[src("http://deb.debian.org/debian", "bookworm")],
    )
    .unwrap();
    let a = r.mmdebstrap_args(Path::new("/x/it's.txt"));
    assert!(a.contains(&"--variant=essential".to_string()));
    assert!(a.contains(&"--include=nodejs,npm,ca-certificates".to_string()));
    assert!(a.contains(&"--dpkgopt=path-exclude=/usr/share/man/*".to_string()));
    assert!(a.iter().any(|x| x.contains("etc/resolv.conf")));
    // The package list path is shell-quoted inside the hook.
    assert!(
        a.iter().any(|x| x.ends_with("> '/x/it'\\''s.txt'")),
        "{a:?}"
    );
    assert_eq!(
        r.sources,
        vec!["deb http://deb.debian.org/debian bookworm main"]
    );
}

#[test]
fn sources_are_parsed_and_limited_to_the_release() {
    let one = parse_sources_list(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n\
         deb-src http://m/debian bookworm main\ndeb http://m/debian bookworm-updates main # x\n\
         deb https://vendor/apt cloud-sdk-bookworm main\n",
    );
    assert_eq!(one.len(), 3);
    assert_eq!(one[0].signed_by.as_deref(), Some("/k.gpg"));
    assert_eq!(one[0].components, vec!["main", "contrib"]);
    let d = parse_deb822(
        "Types: deb\nURIs: http://m/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
         Types: deb\nURIs: http://m/debian-security\nSuites: bookworm-security\nComponents: main\nEnabled: no\n\n\
         Types: deb-src\nURIs: http://m/debian\nSuites: bookworm\nComponents: main\n\n\
         Types: deb\nURIs: https://nodesource/node_20.x\nSuites: nodistro\nComponents: main\n",
    );
    assert_eq!(d.len(), 3, "{d:?}");
    assert_eq!(
        d[1].line(),
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://m/debian bookworm-updates main"
    );
    let mut all = one;
    all.extend(d);
    let kept = release_sources(all, "bookworm");
    let lines: Vec<String> = kept.iter().map(AptSource::line).collect();
    assert_eq!(
        lines,
        vec![
            "deb [signed-by=/k.gpg] http://m/debian bookworm main",
            "deb http://m/debian bookworm-updates main",
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://m/debian bookworm main",
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://m/debian bookworm-updates main",
        ],
        "vendor suites, deb-src and disabled stanzas are dropped; contrib is cut"
    );
}

#[test]
fn host_sources_read_the_etc_tree() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path();
    fs::create_dir_all(etc.join("apt/sources.list.d")).unwrap();
    fs::write(
        etc.join("os-release"),
        "ID=debian\nVERSION_CODENAME=bookworm\n",
    )
    .unwrap();
    fs::write(
        etc.join("apt/sources.list.d/debian.sources"),
        "Types: deb\nURIs: http://m/debian\nSuites: bookworm\nComponents: main\n",
    )
    .unwrap();
    // apt ignores other suffixes, and so must we.
    fs::write(
        etc.join("apt/sources.list.d/old.list.disabled"),
        "deb http://other/debian bookworm main\n",
    )
    .unwrap();
    let (code, s) = host_sources(etc).unwrap();
    assert_eq!(code, "bookworm");
    assert_eq!(s, vec![src("http://m/debian", "bookworm")]);
    fs::remove_file(etc.join("apt/sources.list.d/debian.sources")).unwrap();
    assert!(matches!(
        host_sources(etc),
        Err(ImageError::NoSources { codename }) if codename == "bookworm"
    ));
    let (_d, mut store) = store();
    store.etc = etc.to_path_buf();
    assert!(store.lookup_preset("python").is_none());
    let err = store.build_preset("python", &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("no usable apt source"), "{err}");
    let err = store.build_preset("cobol", &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown image preset \"cobol\" (known presets: python, node)"
    );
}

#[test]
fn publish_is_atomic_and_read_only() {
    let (_d, s) = store();
    let n = Arc::new(AtomicUsize::new(0));
    let key = "a".repeat(64);
    let mut lines = Vec::new();
    let r = s
        .ensure(
            &key,
            &mut |l| lines.push(l.to_string()),
            &mut fake_build(n.clone(), b"lower-bytes", Duration::ZERO),
        )
        .unwrap();
    assert_eq!(r.lower, s.root().join(&key).join(LOWER_FILE));
    assert_eq!(r.key, key);
    assert_eq!(r.format, LowerFormat::Erofs);
    assert_eq!(fs::read(&r.lower).unwrap(), b"lower-bytes");
    assert_eq!(
        fs::metadata(&r.lower).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert!(lines.last().unwrap().starts_with("ready in "), "{lines:?}");
    assert_eq!(entries(&s), vec![key.clone()], "no temp dir left");
    let meta: Meta =
        serde_json::from_slice(&fs::read(s.root().join(&key).join(META_FILE)).unwrap()).unwrap();
    assert_eq!(meta.lower_bytes, 11);
    assert_eq!(meta.builder_version, BUILDER_VERSION);
    let mtime = fs::metadata(&r.lower).unwrap().modified().unwrap();
    // A second call is a hit: same entry, nothing rebuilt or rewritten.
    let mut lines = Vec::new();
    let again = s
        .ensure(
            &key,
            &mut |l| lines.push(l.to_string()),
            &mut fake_build(n.clone(), b"other", Duration::ZERO),
        )
        .unwrap();
    assert_eq!(again, r);
    assert_eq!(lines, vec!["cached"]);
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(fs::metadata(&r.lower).unwrap().modified().unwrap(), mtime);
    assert_eq!(s.lookup_key(&key), Some(r));
}

#[test]
fn a_failed_build_publishes_nothing() {
    let (_d, s) = store();
    let key = "b".repeat(64);
    let err = s
        .ensure(&key, &mut |_| {}, &mut |tmp, _| {
            fs::write(tmp.join(LOWER_FILE), b"half").unwrap();
            Err(ImageError::MissingTool {
                tool: "mmdebstrap",
                package: "mmdebstrap",
            })
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("apt-get install mmdebstrap"),
        "{err}"
    );
    assert!(entries(&s).is_empty(), "{:?}", entries(&s));
    assert!(s.lookup_key(&key).is_none());
    // A builder whose lower is missing fails cleanly too.
    assert!(matches!(
        s.ensure(&key, &mut |_| {}, &mut |_, _| Ok(Built {
            kind: "custom",
            name: "x".into(),
            env: vec![],
            packages: vec![],
            digest: None,
            image: None,
        })),
        Err(ImageError::Io { .. })
    ));
    assert!(entries(&s).is_empty());
    let n = Arc::new(AtomicUsize::new(0));
    s.ensure(&key, &mut |_| {}, &mut fake_build(n, b"ok", Duration::ZERO))
        .unwrap();
    assert_eq!(entries(&s), vec![key]);
}

#[test]
fn stale_temp_dirs_and_broken_entries_are_replaced() {
    let (_d, s) = store();
    let key = "c".repeat(64);
    let stale = s.root().join(format!("{TMP_PREFIX}{}", "d".repeat(64)));
    fs::create_dir_all(stale.join("rootfs/etc")).unwrap();
    fs::write(stale.join("rootfs/etc/x"), b"x").unwrap();
    // An entry directory without image.json (say, copied in by hand).
    fs::create_dir_all(s.root().join(&key)).unwrap();
    fs::write(s.root().join(&key).join(LOWER_FILE), b"junk").unwrap();
    assert!(s.lookup_key(&key).is_none());
    let n = Arc::new(AtomicUsize::new(0));
    let r = s
        .ensure(
            &key,
            &mut |_| {},
            &mut fake_build(n, b"good", Duration::ZERO),
        )
        .unwrap();
    assert_eq!(fs::read(&r.lower).unwrap(), b"good");
    assert!(!stale.exists());
    assert_eq!(entries(&s), vec![key]);
}

#[test]
fn concurrent_builders_of_one_key_build_once() {
    let (_d, s) = store();
    let key = "e".repeat(64);
    let n = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (s, key, n) = (s.clone(), key.clone(), n.clone());
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                let r = s
                    .ensure(
                        &key,
                        &mut |l| lines.push(l.to_string()),
                        &mut fake_build(n, b"once", Duration::from_millis(300)),
                    )
                    .unwrap();
                (r, lines)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(n.load(Ordering::SeqCst), 1, "exactly one build");
    for (r, _) in &results {
        assert_eq!(r, &results[0].0);
    }
    let waited = results
        .iter()
        .filter(|(_, l)| {
            l.iter()
                .any(|x| x == "waiting for another image build to finish")
        })
        .count();
    let cached = results
        .iter()
        .filter(|(_, l)| l.last().map(String::as_str) == Some("cached"))
        .count();
    assert_eq!(cached, 2, "{results:?}");
    assert!(waited >= 1, "{results:?}");
}

#[test]
fn a_held_lock_blocks_builders_until_released() {
    let (_d, s) = store();
    let held = s.lock(&mut |_| {}).unwrap();
    let key = "f".repeat(64);
    let n = Arc::new(AtomicUsize::new(0));
    let t = {
        let (s, key, n) = (s.clone(), key.clone(), n.clone());
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            s.ensure(
                &key,
                &mut |l| lines.push(l.to_string()),
                &mut fake_build(n, b"x", Duration::ZERO),
            )
            .unwrap();
            lines
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        n.load(Ordering::SeqCst),
        0,
        "no build while the lock is held"
    );
    assert!(s.lookup_key(&key).is_none());
    drop(held);
    let lines = t.join().unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(lines[0], "waiting for another image build to finish");
    assert!(s.lookup_key(&key).is_some());
}

fn test_layout(dir: &Path, body: &[u8], env: &[&str]) {
    let l = layer_tar(&[
        Entry::Dir {
            path: "usr/bin",
            mode: 0o755,
        },
        Entry::File {
            path: "usr/bin/hello",
            mode: 0o755,
            data: body,
        },
    ])
    .unwrap();
    write_layout(dir, &[l], serde_json::json!({ "Env": env })).unwrap();
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn custom_images_are_cached_by_manifest_digest() {
    let (d, s) = store();
    let img = d.path().join("img");
    test_layout(&img, b"#!/bin/sh\necho hi\n", &["A=1"]);
    assert!(s.lookup_custom(&img).is_none());
    let mut lines = Vec::new();
    let r = s
        .import_custom(&img, &mut |l| lines.push(l.to_string()))
        .unwrap();
    assert_eq!(
        r.env,
        vec![
            ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ("A".to_string(), "1".to_string())
        ]
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("building erofs lower (")));
    assert!(lines.last().unwrap().starts_with("ready in "), "{lines:?}");
    // The lower really holds the file.
    let out = d.path().join("x");
    let st = Command::new("fsck.erofs")
        .arg(format!("--extract={}", out.display()))
        .arg(&r.lower)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        fs::read(out.join("usr/bin/hello")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(s.lookup_custom(&img), Some(r.clone()));
    // The same image as a (gzipped) tarball is the same entry: a hit.
    let tarball = d.path().join("img.tar");
    tar_dir(&img, &tarball);
    let gz = d.path().join("img.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
    io::copy(&mut File::open(&tarball).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    for t in [&tarball, &gz] {
        assert_eq!(s.lookup_custom(t), Some(r.clone()));
        let mut lines = Vec::new();
        assert_eq!(
            s.import_custom(t, &mut |l| lines.push(l.to_string()))
                .unwrap(),
            r
        );
        assert_eq!(lines, vec!["cached"]);
    }
    // Different content, different entry.
    let img2 = d.path().join("img2");
    test_layout(&img2, b"other", &["PATH=/opt/bin"]);
    let r2 = s.import_custom(&img2, &mut |_| {}).unwrap();
    assert_ne!(r2.key, r.key);
    assert_eq!(r2.env, vec![("PATH".to_string(), "/opt/bin".to_string())]);
}

#[test]
fn docker_save_images_are_keyed_by_config() {
    let (d, s) = store();
    let ds = d.path().join("ds");
    let l = layer_tar(&[Entry::File {
        path: "etc/motd",
        mode: 0o644,
        data: b"hello",
    }])
    .unwrap();
    fs::create_dir_all(ds.join("abc")).unwrap();
    fs::write(ds.join("abc/layer.tar"), &l).unwrap();
    fs::write(ds.join("cfg.json"), br#"{"config":{"Env":["B=2"]}}"#).unwrap();
    fs::write(
        ds.join("manifest.json"),
        br#"[{"Config":"cfg.json","Layers":["abc/layer.tar"]}]"#,
    )
    .unwrap();
    let r = s.import_custom(&ds, &mut |_| {}).unwrap();
    assert!(r.env.contains(&("B".to_string(), "2".to_string())));
    let tb = d.path().join("ds.tar");
    tar_dir(&ds, &tb);
    assert_eq!(s.lookup_custom(&tb), Some(r.clone()));
    fs::write(ds.join("cfg.json"), br#"{"config":{"Env":["B=3"]}}"#).unwrap();
    assert!(
        s.lookup_custom(&ds).is_none(),
        "a new config is a new image"
    );
}

#[test]
fn bad_custom_sources_are_clear_errors() {
    let (d, s) = store();
    let empty = d.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let err = s.import_custom(&empty, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("not an OCI image layout or image tarball"),
        "{err}"
    );
    let missing = d.path().join("nope");
    assert!(matches!(
        s.import_custom(&missing, &mut |_| {}),
        Err(ImageError::Io { .. })
    ));
    let bad = d.path().join("bad");
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("index.json"), b"{not json").unwrap();
    assert!(matches!(
        s.import_custom(&bad, &mut |_| {}),
        Err(ImageError::Oci(oci::OciError::Json { .. }))
    ));
    fs::write(
        bad.join("index.json"),
        br#"{"manifests":[{"mediaType":"m","digest":"sha256:../../etc"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        s.import_custom(&bad, &mut |_| {}),
        Err(ImageError::Oci(oci::OciError::BadDigest(_)))
    ));
    // A layout whose layer was tampered with: identity is readable, the
    // import verifies blobs and publishes nothing.
    let img = d.path().join("img");
    test_layout(&img, b"data", &[]);
    for e in fs::read_dir(img.join("blobs/sha256")).unwrap().flatten() {
        let data = fs::read(e.path()).unwrap();
        if data.first() != Some(&b'{') {
            let mut data = data;
            data[0] ^= 0xff;
            fs::write(e.path(), data).unwrap();
        }
    }
    assert!(matches!(
        s.import_custom(&img, &mut |_| {}),
        Err(ImageError::Oci(oci::OciError::DigestMismatch { .. }))
    ));
    assert!(entries(&s).is_empty());
}

#[test]
fn the_store_root_is_absolute() {
    let d = tempfile::tempdir().unwrap();
    let rel = Path::new("target-store-test");
    let cwd = std::env::current_dir().unwrap();
    let _ = fs::remove_dir_all(cwd.join(rel));
    let s = ImageStore::open(Some(rel.to_path_buf())).unwrap();
    assert!(s.root().is_absolute());
    assert_eq!(s.root(), fs::canonicalize(cwd.join(rel)).unwrap());
    fs::remove_dir_all(cwd.join(rel)).unwrap();
    // A file where the store should be is an error, not a panic.
    let f = d.path().join("file");
    fs::write(&f, b"x").unwrap();
    assert!(matches!(
        ImageStore::open(Some(f.join("images"))),
        Err(ImageError::Io { .. })
    ));
}

#[test]
fn env_pairs_add_a_default_path() {
    assert_eq!(
        env_pairs(&["X=a=b".into(), "junk".into()]),
        vec![
            ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ("X".to_string(), "a=b".to_string())
        ]
    );
}

#[test]
fn mountinfo_escapes_decode() {
    assert_eq!(unescape_mountinfo(r"/a\040b\011c\134d"), "/a b\tc\\d");
    assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04");
}

#[test]
fn remove_tree_detaches_mounts_inside_first() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("t");
    let inner = t.join("proc");
    fs::create_dir_all(&inner).unwrap();
    let keep = d.path().join("keep");
    fs::create_dir_all(&keep).unwrap();
    fs::write(keep.join("precious"), b"x").unwrap();
    // Bind a directory that must survive into the tree being removed.
    let st = Command::new("mount")
        .arg("--bind")
        .arg(&keep)
        .arg(&inner)
        .stderr(Stdio::null())
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("skipping: cannot bind-mount here (not root?)");
        return;
    }
    remove_tree(&t).unwrap();
    assert!(!t.exists());
    assert_eq!(
        fs::read(keep.join("precious")).unwrap(),
        b"x",
        "bind source untouched"
    );
}
