//! `iii worker add/remove/list/clear` driven as a user would: the real binary in a temp project
//! directory, checking config.yaml byte-for-byte, iii.lock, exit codes and the `[Wxxx]` errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use iii_tests::{iii_bin, EngineProc, RawWorker};

fn project() -> PathBuf {
    let d = std::env::temp_dir().join(format!("iii-wk-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `iii worker <args>` in `dir` with stdin not a terminal; returns (exit code, stderr).
fn worker_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(iii_bin())
        .arg("worker")
        .args(args)
        .current_dir(dir)
        .env_remove("III_CONFIG_PATH")
        .env_remove("III_WORKER_READY_TIMEOUT_SECS")
        // Registry names never reach the public registry from a test: nothing listens here.
        .env("III_API_URL", "http://127.0.0.1:1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run iii worker");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout, "", "human output belongs on stderr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn worker(dir: &Path, args: &[&str]) -> (i32, String) {
    worker_env(dir, args, &[])
}

fn read(dir: &Path, f: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(f)).ok()
}

const COMMENTED: &str = r"# iii engine configuration.
# Add workers with `iii worker add <name>`; a running engine reloads on save.
workers:   # keep this list short
  - name: iii-worker-manager
    config:
      port: 49134   # the default
  # storage
  - name: state
    config:
      adapter: { kind: kv }   # flow style stays flow style

# not a worker setting
rootfs:
  mode: overlay
";

#[test]
fn builtin_adds_append_entries_and_lock_them_keeping_every_other_byte() {
    let d = project();
    std::fs::write(d.join("config.yaml"), COMMENTED).unwrap();
    let (code, err) = worker(&d, &["add", "http", "queue@0.9.1", "iii-sandbox"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("[1/3] Adding http...") && err.contains("Added 3/3 workers."),
        "{err}"
    );
    let sandbox_block = "  - name: iii-sandbox\n    config:\n      auto_install: true\n      image_allowlist:\n      - python\n      - node\n      default_idle_timeout_secs: 300\n      max_concurrent_sandboxes: 32\n      default_cpus: 1\n      default_memory_mb: 512\n";
    let expected = COMMENTED.replace(
        "      adapter: { kind: kv }   # flow style stays flow style\n",
        &format!("      adapter: {{ kind: kv }}   # flow style stays flow style\n  - name: http\n  - name: queue\n{sandbox_block}"),
    );
    assert_eq!(read(&d, "config.yaml").unwrap(), expected);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        read(&d, "iii.lock").unwrap(),
        format!("version: 1\nworkers:\n  http:\n    version: {version}\n    type: engine\n    dependencies: {{}}\n  iii-sandbox:\n    version: {version}\n    type: engine\n    dependencies: {{}}\n  queue:\n    version: 0.9.1\n    type: engine\n    dependencies: {{}}\n")
    );

    // Re-adding keeps the hand-edited config: (moved to the end), nothing else moves.
    let edited = read(&d, "config.yaml").unwrap().replace(
        "      default_cpus: 1\n",
        "      default_cpus: 4   # mine\n",
    );
    std::fs::write(d.join("config.yaml"), &edited).unwrap();
    let (code, err) = worker(&d, &["add", "state"]);
    assert_eq!(code, 0, "{err}");
    let state = "  - name: state\n    config:\n      adapter: { kind: kv }   # flow style stays flow style\n";
    let expected = edited.replace(state, "").replace(
        "      default_memory_mb: 512\n",
        &format!("      default_memory_mb: 512\n{state}"),
    );
    let text = read(&d, "config.yaml").unwrap();
    assert_eq!(text, expected);
    assert_eq!(text.matches("- name: state").count(), 1);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_missing_file_is_created_and_iii_config_path_is_honoured() {
    let d = project();
    let (code, err) = worker(&d, &["add", "pubsub"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        read(&d, "config.yaml").unwrap(),
        "workers:\n  - name: pubsub\n"
    );
    let other = d.join("other.yaml");
    std::fs::write(&other, "workers: []  # empty\n").unwrap();
    let (code, err) = worker_env(
        &d,
        &["add", "cron"],
        &[("III_CONFIG_PATH", other.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "workers:  # empty\n  - name: cron\n"
    );
    assert_eq!(
        read(&d, "config.yaml").unwrap(),
        "workers:\n  - name: pubsub\n"
    );
    let lock = read(&d, "iii.lock").unwrap();
    assert!(
        lock.contains("  cron:\n") && lock.contains("  pubsub:\n"),
        "{lock}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn mandatory_and_deprecated_builtins() {
    let d = project();
    let (code, err) = worker(&d, &["add", "iii-worker-manager"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("mandatory engine worker"), "{err}");
    assert!(read(&d, "config.yaml").is_none() && read(&d, "iii.lock").is_none());

    let (code, err) = worker(&d, &["add", "iii-http"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: Worker name 'iii-http' is deprecated")
            && err.contains("Use `iii worker add http` instead."),
        "{err}"
    );
    let before = read(&d, "config.yaml").unwrap();
    assert_eq!(before, "workers:\n  - name: iii-http\n");
    // Both names of one service in one file would stop the engine from starting.
    let (code, err) = worker(&d, &["add", "http"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: [W111]") && err.contains("'iii-http'"),
        "{err}"
    );
    assert_eq!(read(&d, "config.yaml").unwrap(), before);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_input_leaves_config_and_lock_untouched() {
    let d = project();
    std::fs::write(d.join("config.yaml"), COMMENTED).unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["add", "bad name"], "[W100]", "invalid characters"),
        (
            &["remove", "-y", ".hidden"],
            "[W100]",
            "cannot start with '.'",
        ),
        (&["add", "a..b"], "[W100]", "'..'"),
        (
            &["add", "ghcr.io/Org/x:1"],
            "[W101]",
            "invalid image reference",
        ),
        (&["add", "ghcr.io/a/b:"], "[W101]", "tag"),
        (&["add", "ghcr.io/a/b@sha256:nothex"], "[W101]", "digest"),
        (
            &["add", "./my-worker"],
            "[W101]",
            "Cannot resolve path './my-worker'",
        ),
        (&["add", "pdfkit"], "[W140]", "III_API_URL"),
        (&["add", "pdfkit@1.0.0"], "[W140]", "III_API_URL"),
        (&["add", "ghcr.io/a/http:1"], "[W111]", "builtin"),
        // Nothing listens on port 1: the pull fails, nothing is written.
        (
            &["add", "--no-wait", "127.0.0.1:1/team/w:1"],
            "[W141]",
            "127.0.0.1:1/team/w:1",
        ),
        (&["remove", "-y", "../x"], "[W100]", "'..'"),
        (
            &["remove", "-y", "nope"],
            "[W110]",
            "Worker 'nope' is not in config.yaml",
        ),
        (&["remove", "state"], "[W104]", "pass -y/--yes"),
        (&["clear", "state"], "[W104]", "pass -y/--yes"),
        (&["clear", "-y", "a/b"], "[W100]", "invalid characters"),
        (&["clear", "-y", "nope"], "[W110]", "not found"),
    ];
    for (args, code_tag, needle) in cases {
        let (code, err) = worker(&d, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("error: {code_tag}")) && err.contains(needle),
            "{args:?}: {err}"
        );
        assert_eq!(read(&d, "config.yaml").unwrap(), COMMENTED, "{args:?}");
        assert!(read(&d, "iii.lock").is_none(), "{args:?}");
    }
    // A broken iii.lock is reported before config.yaml is touched.
    std::fs::write(d.join("iii.lock"), "version: 7\nworkers: {}\n").unwrap();
    let (code, err) = worker(&d, &["add", "http"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: [W150]") && err.contains("unsupported version 7"),
        "{err}"
    );
    assert_eq!(read(&d, "config.yaml").unwrap(), COMMENTED);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn remove_takes_entry_and_lock_and_reports_each_name() {
    let d = project();
    std::fs::write(d.join("config.yaml"), COMMENTED).unwrap();
    assert_eq!(worker(&d, &["add", "http"]).0, 0);
    let (code, err) = worker(&d, &["remove", "-y", "http"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("✓ http removed from config.yaml and iii.lock"),
        "{err}"
    );
    assert_eq!(read(&d, "config.yaml").unwrap(), COMMENTED);
    assert_eq!(read(&d, "iii.lock").unwrap(), "version: 1\nworkers: {}\n");

    // Not lock-tracked: only the config entry; its comments inside go with it.
    let (code, err) = worker(&d, &["remove", "--yes", "state", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("✓ state removed from config.yaml\n")
            && err.contains("error: [W110] Worker 'nope'")
            && err.contains("Removed 1/2 workers. 1 failed."),
        "{err}"
    );
    assert_eq!(
        read(&d, "config.yaml").unwrap(),
        COMMENTED.replace(
            "  - name: state\n    config:\n      adapter: { kind: kv }   # flow style stays flow style\n",
            ""
        )
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_second_command_in_the_same_project_is_refused_while_one_runs() {
    let d = project();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(d.join(".iii-worker.lock"))
        .unwrap();
    f.try_lock().unwrap();
    let (code, err) = worker(&d, &["add", "http"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: [W120]") && err.contains(".iii-worker.lock"),
        "{err}"
    );
    assert!(read(&d, "config.yaml").is_none());
    drop(f);
    assert_eq!(worker(&d, &["add", "http"]).0, 0);
    let _ = std::fs::remove_dir_all(&d);
}

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
        .split_whitespace()
        .collect()
}

#[test]
fn list_without_an_engine() {
    let d = project();
    let (code, err) = worker(&d, &["list"]);
    assert_eq!(code, 0);
    assert_eq!(
        err,
        "\n  No workers. Use `iii worker add` to get started.\n\n"
    );
    // Port 1: nothing listens, so the engine counts as down.
    std::fs::write(
        d.join("config.yaml"),
        "workers:\n  - name: iii-worker-manager\n    config: {port: 1}\n  - name: img\n    image: localhost:5050/img:1\n",
    )
    .unwrap();
    assert_eq!(worker(&d, &["add", "state@1.2.3"]).0, 0);
    let (code, err) = worker(&d, &["list"]);
    assert_eq!(code, 0, "{err}");
    let header = err.lines().nth(1).unwrap();
    assert_eq!(
        header,
        format!("  {:<25} {:<10} {:<10} STATUS", "NAME", "VERSION", "PID")
    );
    assert_eq!(row(&err, "state"), vec!["state", "1.2.3", "-", "stopped"]);
    assert_eq!(row(&err, "img"), vec!["img", "-", "-", "stopped"]);
    assert_eq!(row(&err, "iii-worker-manager")[3], "stopped");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn list_shows_the_engines_live_status() {
    let e = EngineProc::start("  - name: my-worker\n    image: localhost:5050/my-worker:latest\n");
    let dir = e.dir.clone();
    let list = move || {
        let dir = dir.clone();
        async move {
            tokio::task::spawn_blocking(move || worker(&dir, &["list"]))
                .await
                .unwrap()
        }
    };
    let (code, err) = list().await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(row(&err, "iii-http")[3], "running");
    assert_eq!(
        row(&err, "my-worker"),
        vec!["my-worker", "-", "-", "stopped"]
    );

    let w = RawWorker::connect_named(&e.url(), "my-worker", None).await;
    let mut seen = String::new();
    for _ in 0..100 {
        let (_, err) = list().await;
        if row(&err, "my-worker")[3] == "running" {
            seen = err;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        row(&seen, "my-worker"),
        vec!["my-worker", "0", "-", "running"],
        "{seen}"
    );

    // A connected worker's image is not cleared from under it.
    let dir = e.dir.clone();
    let (code, err) =
        tokio::task::spawn_blocking(move || worker(&dir, &["clear", "-y", "my-worker"]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("error: [W114]") && err.contains("currently running"),
        "{err}"
    );
    drop(w);
}

#[test]
fn clear_with_nothing_cached() {
    let d = project();
    std::fs::write(
        d.join("config.yaml"),
        "workers:\n  - name: iii-worker-manager\n    config: {port: 1}\n  - name: img\n    image: localhost:5050/img:1\n",
    )
    .unwrap();
    let cache = d.join("cache");
    let env = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let (code, err) = worker_env(&d, &["clear", "-y", "img"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Nothing to clear for 'img'."), "{err}");
    let (code, err) = worker_env(&d, &["clear", "-y"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ Cleared 0 image(s)"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// The OCI path against a real registry (tests/registry.sh: Debian's docker-registry on
/// 127.0.0.1). Runs when III_REGISTRY_TESTS=1 or docker-registry is installed (and busybox and
/// mkfs.erofs are, which the image store needs); otherwise says why and passes.
pub(crate) mod oci {
    use super::*;
    use iii_oci_rootfs::layout::{layer_tar, write_layout_arch, Entry};
    use iii_oci_rootfs::registry::{host_arch, push_layout};
    use iii_tests::oci_registry::{enabled, Registry};

    fn push_image(reference: &str, dir: &Path) {
        push_image_env(
            reference,
            dir,
            &[
                "PATH=/bin",
                "HOME=/root",
                "FOO=bar",
                "III_URL=ws://localhost:49134",
            ],
        );
    }

    /// Pushes a busybox image with `env` (distinct envs give distinct digests) built in `dir`.
    pub(crate) fn push_image_env(reference: &str, dir: &Path, env: &[&str]) {
        push_image_arch(reference, dir, env, host_arch());
    }

    /// [`push_image_env`] for an image of `arch`; returns the layout directory.
    fn push_image_arch(reference: &str, dir: &Path, env: &[&str], arch: &str) -> PathBuf {
        let busybox = std::fs::read("/bin/busybox").unwrap();
        let layer = layer_tar(&[
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
        ])
        .unwrap();
        let layout = dir.join("layout");
        write_layout_arch(
            &layout,
            &[layer],
            serde_json::json!({
                "Env": env,
                "Entrypoint": ["/bin/sh", "-c", "sleep 1000"],
            }),
            arch,
        )
        .unwrap();
        push_layout(&layout, reference, &mut |_| {}).unwrap();
        layout
    }

    /// Images that must not be added: a blob changed in the registry (same length, other bytes),
    /// an image for another architecture, a tag that is not there. Each is a clear W141 error
    /// naming what is wrong, and config.yaml (with its comments) and iii.lock stay untouched.
    #[test]
    fn bad_images_are_refused_and_leave_config_and_lock_untouched() {
        if !enabled() {
            return;
        }
        let reg = Registry::start();
        let d = project();
        std::fs::write(d.join("config.yaml"), COMMENTED).unwrap();
        let cache = d.join("cache");
        let cache_s = cache.to_str().unwrap().to_string();

        let tampered = format!("{}/team/tampered:1", reg.addr);
        let layout = push_image_arch(&tampered, &d.join("t"), &["A=1"], host_arch());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(manifest_digest.trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
        .unwrap();
        let layer = manifest["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let blob = reg.blob_file(&layer);
        let mut data = std::fs::read(&blob).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&blob, &data).unwrap();

        let foreign = format!("{}/team/foreign:1", reg.addr);
        let other = if host_arch() == "amd64" {
            "arm64"
        } else {
            "amd64"
        };
        push_image_arch(&foreign, &d.join("f"), &["A=2"], other);
        let missing = format!("{}/team/foreign:nope", reg.addr);

        for (reference, needle) in [
            (&tampered, layer.as_str()),
            (&foreign, "image architecture mismatch"),
            (&missing, "not found"),
        ] {
            let (code, err) = worker_env(
                &d,
                &["add", "--no-wait", reference],
                &[("XDG_CACHE_HOME", &cache_s)],
            );
            assert_eq!(code, 1, "{reference}: {err}");
            assert!(
                err.contains("error: [W141]") && err.contains(needle),
                "{reference}: no {needle:?} in {err}"
            );
            assert_eq!(read(&d, "config.yaml").unwrap(), COMMENTED, "{reference}");
            assert!(read(&d, "iii.lock").is_none(), "{reference}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn add_pulls_writes_image_and_env_config_then_waits_for_the_worker() {
        if !enabled() {
            return;
        }
        let reg = Registry::start();
        let mut e = EngineProc::start("");
        let dir = e.dir.clone();
        let reference = format!("{}/team/hello:latest", reg.addr);
        {
            let (r, d) = (reference.clone(), dir.clone());
            tokio::task::spawn_blocking(move || push_image(&r, &d))
                .await
                .unwrap();
        }
        let cache = dir.join("cache");
        let cache_s = cache.to_str().unwrap().to_string();
        let run = |args: Vec<String>, timeout: &'static str| {
            let dir = dir.clone();
            let cache_s = cache_s.clone();
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                worker_env(
                    &dir,
                    &args,
                    &[
                        ("XDG_CACHE_HOME", &cache_s),
                        ("III_WORKER_READY_TIMEOUT_SECS", timeout),
                    ],
                )
            })
        };
        let before = read(&dir, "config.yaml").unwrap();

        // No worker connects: the wait ends with the hint, and the add still succeeds.
        let (code, err) = run(vec!["add".into(), reference.clone()], "1")
            .await
            .unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&format!("Pulling {reference}")), "{err}");
        assert!(
            err.contains("✓ hello added to config.yaml") && err.contains("sha256:"),
            "{err}"
        );
        assert!(err.contains("hello is not ready after 1s"), "{err}");
        assert_eq!(
            read(&dir, "config.yaml").unwrap(),
            format!("{before}  - name: hello\n    image: {reference}\n    config:\n      FOO: bar\n      III_URL: ws://localhost:49134\n")
        );
        // The pull's digest is pinned in iii.lock (issue #13 item 6).
        let lock = read(&dir, "iii.lock").unwrap();
        assert!(
            lock.starts_with(&format!("version: 1\nworkers:\n  hello:\n    version: latest\n    type: image\n    dependencies: {{}}\n    source:\n      kind: image\n      image: {reference}@sha256:")),
            "{lock}"
        );

        // A worker named like the entry connects: the wait sees it. The user's edit survives.
        let edited = read(&dir, "config.yaml")
            .unwrap()
            .replace("FOO: bar", "FOO: mine");
        std::fs::write(dir.join("config.yaml"), &edited).unwrap();
        let url = e.url();
        let connector = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            RawWorker::connect_named(&url, "hello", None).await
        });
        let (code, err) = run(vec!["add".into(), reference.clone()], "60")
            .await
            .unwrap();
        let w = connector.await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("✓ ready in"), "{err}");
        assert_eq!(read(&dir, "config.yaml").unwrap(), edited);

        // Running: clear refuses; once it has gone, clear frees the pulled image.
        let (code, err) = run(vec!["clear".into(), "-y".into(), "hello".into()], "1")
            .await
            .unwrap();
        assert_eq!(code, 1, "{err}");
        drop(w);
        let mut cleared = String::new();
        for _ in 0..100 {
            let (code, err) = run(vec!["clear".into(), "-y".into(), "hello".into()], "1")
                .await
                .unwrap();
            if code == 0 {
                cleared = err;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            cleared.contains("✓ Cleared") && cleared.contains(" MB"),
            "{cleared}"
        );
        let store = iii_oci_rootfs::ImageStore::open(Some(cache.join("iii/images"))).unwrap();
        assert!(store.lookup_pulled(&reference).is_none());

        // The engine is down now: --force re-pulls, the wait says so and returns.
        let _ = e.child.kill();
        let _ = e.child.wait();
        let (code, err) = run(
            vec!["add".into(), "--force".into(), reference.clone()],
            "60",
        )
        .await
        .unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("⚠ engine not running; start it to observe boot."),
            "{err}"
        );
        assert!(store.lookup_pulled(&reference).is_some());
        let (code, err) = run(vec!["remove".into(), "-y".into(), "hello".into()], "1")
            .await
            .unwrap();
        assert_eq!(code, 0, "{err}");
        assert_eq!(read(&dir, "config.yaml").unwrap(), before);
    }
}
