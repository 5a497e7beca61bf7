//! Builds the `python` preset from the host's Debian mirror. It downloads
//! (~30 MB) and takes about a minute, so it runs only with `III_IMAGE_TESTS=1`;
//! `tests/sandbox-images.sh` and CI set that.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime};

use iii_oci_rootfs::{ImageStore, LowerFormat};

fn enabled() -> bool {
    if std::env::var("III_IMAGE_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set III_IMAGE_TESTS=1 to build the python preset (downloads from the Debian mirror)");
    false
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            files_under(&e.path(), out);
        } else if !ft.is_symlink() {
            // Debian links a package's doc dir to its source package's.
            out.push(e.path());
        }
    }
}

#[test]
fn python_preset_builds_once_and_runs() {
    if !enabled() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let store = ImageStore::open(Some(cache.path().to_path_buf())).unwrap();
    assert!(store.lookup_preset("python").is_none());

    let t0 = Instant::now();
    let mut lines = Vec::new();
    let r = store
        .build_preset("python", &mut |l| {
            eprintln!("progress: {l}");
            lines.push(l.to_string());
        })
        .unwrap();
    eprintln!("cold build: {:.1} s", t0.elapsed().as_secs_f64());
    let pos = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
    };
    assert!(pos("resolving packages") < pos("downloading"));
    assert!(pos("downloading") < pos("building erofs lower ("));
    assert_eq!(pos("ready in "), lines.len() - 1);
    assert_eq!(r.format, LowerFormat::Erofs);
    assert!(r.lower.starts_with(cache.path()));
    assert!(r
        .env
        .iter()
        .any(|(k, v)| k == "PATH" && v.split(':').any(|d| d == "/usr/bin")));
    assert_eq!(
        fs::metadata(&r.lower).unwrap().permissions().mode() & 0o222,
        0,
        "a published lower is read-only"
    );

    // fsck.erofs checks every file's encoding while extracting; nothing is mounted.
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("root");
    let st = Command::new("fsck.erofs")
        .arg(format!("--extract={}", root.display()))
        .arg(&r.lower)
        .status()
        .unwrap();
    assert!(st.success(), "fsck.erofs failed");
    let py = root.join("usr/bin/python3");
    let target = fs::read_link(&py).unwrap();
    let real = root.join("usr/bin").join(&target);
    let md = fs::metadata(&real).unwrap();
    assert!(
        md.is_file() && md.permissions().mode() & 0o111 != 0,
        "{target:?}"
    );
    // Kept small: no manuals, docs only as copyright files, no host files.
    assert!(
        !root.join("usr/share/man").exists()
            || fs::read_dir(root.join("usr/share/man"))
                .unwrap()
                .next()
                .is_none()
    );
    let mut docs = Vec::new();
    files_under(&root.join("usr/share/doc"), &mut docs);
    assert!(!docs.is_empty());
    for d in &docs {
        assert_eq!(d.file_name().unwrap(), "copyright", "{}", d.display());
    }
    assert!(!root.join("etc/hostname").exists());
    assert_eq!(fs::read(root.join("etc/resolv.conf")).unwrap(), b"");
    assert!(
        !root.join("usr/share/perl").exists(),
        "usrmerge (and perl) not pulled in"
    );
    // Package times survive (Python's byte-code caches depend on them).
    let src = root.join("usr/lib/python3.11/json/__init__.py");
    let age = SystemTime::now()
        .duration_since(fs::metadata(&src).unwrap().modified().unwrap())
        .unwrap();
    assert!(
        age.as_secs() > 86_400,
        "{} has the build's mtime",
        src.display()
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let o = Command::new("chroot")
            .arg(&root)
            .args([
                "/usr/bin/python3",
                "-v",
                "-c",
                "import json, ssl; print(json.dumps([1]))",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert_eq!(o.stdout, b"[1]\n");
        assert!(
            !err.contains("bytecode is stale"),
            "stale byte code:\n{err}"
        );
    }

    // Cached: the same entry, untouched.
    let mtime = fs::metadata(&r.lower).unwrap().modified().unwrap();
    let t1 = Instant::now();
    let mut again = Vec::new();
    let r2 = store
        .build_preset("python", &mut |l| again.push(l.to_string()))
        .unwrap();
    eprintln!("cached build: {:.3} s", t1.elapsed().as_secs_f64());
    assert_eq!(r2, r);
    assert_eq!(again, vec!["cached"]);
    assert_eq!(fs::metadata(&r.lower).unwrap().modified().unwrap(), mtime);
    let other = ImageStore::open(Some(cache.path().to_path_buf())).unwrap();
    assert_eq!(other.lookup_preset("python"), Some(r));
}
