//! `iii update` against a local release server, `iii cloud` dispatch, and the small onboarding
//! fixes: one OS error text, anonymous one-shot clients logged at debug, the configured port in
//! bind errors, `iii -v` naming the upstream protocol.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iii_tests::{free_port, iii_bin, run_iii, EngineProc, RawWorker};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A release server on a free loopback port: GET path → bytes (404 otherwise), one request per
/// connection, until the test process exits.
struct Releases {
    base: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Releases {
    fn start() -> Releases {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = files.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                // Drain the headers.
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = served.lock().unwrap().get(&path).cloned();
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        Releases { base, files }
    }

    fn put(&self, path: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), bytes);
    }

    /// Serves a manifest at /manifest.json offering `version` with one artifact per target:
    /// (target, file served at /<target>, sha256 to announce).
    fn manifest(&self, version: &str, targets: &[(&str, &[u8], String)]) -> String {
        let mut t = serde_json::Map::new();
        for (name, bytes, sha) in targets {
            self.put(&format!("/{name}"), bytes.to_vec());
            t.insert(
                name.to_string(),
                json!({ triple(): { "url": name, "sha256": sha } }),
            );
        }
        self.put(
            "/manifest.json",
            serde_json::to_vec(&json!({"version": version, "targets": t})).unwrap(),
        );
        format!("{}/manifest.json", self.base)
    }
}

fn triple() -> String {
    let rest = if cfg!(target_os = "macos") {
        "apple-darwin"
    } else if cfg!(target_env = "musl") {
        "unknown-linux-musl"
    } else {
        "unknown-linux-gnu"
    };
    format!("{}-{rest}", std::env::consts::ARCH)
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A copy of the `iii` under test in a fresh directory, with mode 0750 (so "mode kept" is
/// distinguishable from the 0755 a new file gets).
fn copied_iii() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("iii");
    std::fs::copy(iii_bin(), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
    (d, p)
}

fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("III_RELEASES_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const NEW_III: &[u8] = b"#!/bin/sh\necho \"iii 99.0.0 (the new one) $*\"\n";

#[test]
fn update_lists_targets_and_points_unknown_ones_at_the_list() {
    let (code, out, _) = run_iii(&["update", "--list-targets"], None);
    assert_eq!(code, 0);
    let names: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(
        names,
        [
            "self",
            "iii-sandbox",
            "iii-worker-host",
            "iii-vmm",
            "iii-init"
        ],
        "{out}"
    );
    let (code, _, err) = run_iii(&["update", "console-of-nowhere"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown update target `console-of-nowhere`"),
        "{err}"
    );
    assert!(err.contains("iii update --list-targets"), "{err}");
}

#[test]
fn self_update_replaces_a_copied_binary_atomically_keeping_its_mode() {
    let rel = Releases::start();
    let url = rel.manifest("99.0.0", &[("iii", NEW_III, sha(NEW_III))]);
    let (dir, bin) = copied_iii();
    let (code, out, err) = run(&bin, &["update", "self"], &[("III_RELEASES_URL", &url)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("updated iii to 99.0.0"), "{out}");
    assert_eq!(std::fs::read(&bin).unwrap(), NEW_III);
    let mode = std::fs::metadata(&bin).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);
    // No temp file left beside it.
    assert_eq!(entries(dir.path()), ["iii"]);
    // The replaced binary is what runs now.
    let (code, out, _) = run(&bin, &["--version"], &[]);
    assert_eq!(
        (code, out.trim()),
        (0, "iii 99.0.0 (the new one) --version")
    );
}

#[test]
fn checksum_mismatch_leaves_the_old_binary_byte_identical() {
    let rel = Releases::start();
    let url = rel.manifest("99.0.0", &[("iii", NEW_III, sha(b"something else"))]);
    let (dir, bin) = copied_iii();
    let before = std::fs::read(&bin).unwrap();
    let (code, _, err) = run(&bin, &["update", "iii"], &[("III_RELEASES_URL", &url)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("checksum mismatch for iii"), "{err}");
    assert!(
        err.contains(&sha(NEW_III)),
        "the actual sha is named: {err}"
    );
    assert!(std::fs::read(&bin).unwrap() == before, "the binary changed");
    assert_eq!(entries(dir.path()), ["iii"]);
    let (code, out, _) = run(&bin, &["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("iii 0."), "{out}");
}

#[test]
fn rollback_is_refused_and_an_unreachable_source_names_the_url_and_variable() {
    let rel = Releases::start();
    let url = rel.manifest("0.0.1", &[("iii", NEW_III, sha(NEW_III))]);
    let (_dir, bin) = copied_iii();
    let before = std::fs::read(&bin).unwrap();
    let (code, _, err) = run(&bin, &["update"], &[("III_RELEASES_URL", &url)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rollback is not supported"), "{err}");
    assert!(std::fs::read(&bin).unwrap() == before);

    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}/manifest.json", free_port());
    let (code, _, err) = run(&bin, &["update"], &[("III_RELEASES_URL", &dead)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&dead) && err.contains("III_RELEASES_URL"),
        "{err}"
    );
    assert!(err.contains("cannot reach"), "{err}");
    // A 404 is unreachable too.
    let missing = format!("{}/nope.json", rel.base);
    let (code, _, err) = run(&bin, &["update"], &[("III_RELEASES_URL", &missing)]);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 404") && err.contains(&missing), "{err}");
    // No source at all.
    let (code, _, err) = run(&bin, &["update"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("set III_RELEASES_URL"), "{err}");
    assert!(std::fs::read(&bin).unwrap() == before);
}

#[test]
fn managed_binaries_install_beside_iii_and_update_by_checksum() {
    let rel = Releases::start();
    let v1: &[u8] = b"#!/bin/sh\necho sandbox-v1\n";
    let url = rel.manifest(
        env!("CARGO_PKG_VERSION"),
        &[("iii", NEW_III, sha(NEW_III)), ("iii-sandbox", v1, sha(v1))],
    );
    let (dir, bin) = copied_iii();
    let iii_before = std::fs::read(&bin).unwrap();
    // Named: installed beside iii with 0755.
    let (code, out, err) = run(
        &bin,
        &["update", "iii-sandbox"],
        &[("III_RELEASES_URL", &url)],
    );
    assert_eq!(code, 0, "{out}{err}");
    let sb = dir.path().join("iii-sandbox");
    assert_eq!(std::fs::read(&sb).unwrap(), v1);
    assert_eq!(
        std::fs::metadata(&sb).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // Everything: iii is at the manifest's version (left alone), the sandbox already matches.
    let (code, out, err) = run(&bin, &["update"], &[("III_RELEASES_URL", &url)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("iii is up to date") && out.contains("iii-sandbox is up to date"),
        "{out}"
    );
    assert!(std::fs::read(&bin).unwrap() == iii_before);
    // A new sandbox build under the same release: replaced; uninstalled managed ones stay absent.
    let v2: &[u8] = b"#!/bin/sh\necho sandbox-v2\n";
    let url = rel.manifest(
        env!("CARGO_PKG_VERSION"),
        &[("iii", NEW_III, sha(NEW_III)), ("iii-sandbox", v2, sha(v2))],
    );
    let (code, out, err) = run(&bin, &["update"], &[("III_RELEASES_URL", &url)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("updated iii-sandbox"), "{out}");
    assert_eq!(std::fs::read(&sb).unwrap(), v2);
    assert_eq!(entries(dir.path()), ["iii", "iii-sandbox"]);
}

/// `iii` with PATH set to `dir` only (the fake iii-cloud's `#!/bin/sh` is absolute).
fn cloud(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["cloud"];
    all.extend_from_slice(args);
    run(&iii_bin(), &all, &[("PATH", dir.to_str().unwrap())])
}

#[test]
fn cloud_runs_iii_cloud_from_path_passing_arguments_and_exit_code() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, err) = cloud(d.path(), &["deploy"]);
    assert_eq!(code, 127, "{out}{err}");
    assert!(err.contains("`iii-cloud`") && err.contains("PATH"), "{err}");

    let script = d.path().join("iii-cloud");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"args:$*\"\necho to-stderr >&2\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out, err) = cloud(d.path(), &["deploy", "--prod", "-x", "a b"]);
    assert_eq!(code, 7, "{err}");
    assert_eq!(out, "args:deploy --prod -x a b\n");
    assert_eq!(err, "to-stderr\n");
    // --help is iii-cloud's, not iii's.
    let (code, out, _) = cloud(d.path(), &["--help"]);
    assert_eq!((code, out.as_str()), (7, "args:--help\n"));
}

#[test]
fn version_names_the_upstream_protocol() {
    for flag in ["-v", "--version"] {
        let (code, out, _) = run_iii(&[flag], None);
        assert_eq!(code, 0);
        assert_eq!(
            out.trim(),
            format!(
                "iii {} (compatible with the upstream iii 0.23 protocol)",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

/// Runs the engine with `config` in a fresh directory; it must fail. Returns stderr + stdout.
fn failing_engine(config: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.yaml"), config).unwrap();
    let mut child = Command::new(iii_bin())
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the engine did not exit on a taken port");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn a_taken_port_prints_one_os_error_naming_the_configured_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = taken.local_addr().unwrap().port();
    let out = failing_engine(&format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{port: {p}}}\n"
    ));
    assert!(
        out.contains(&format!(
            "cannot listen on 127.0.0.1:{p} for iii-worker-manager"
        )),
        "{out}"
    );
    assert_eq!(out.matches("Address already in use").count(), 1, "{out}");

    // The stream socket on a non-default port.
    let ws = free_port();
    let out = failing_engine(&format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{port: {ws}}}\n  - name: stream\n    config: {{port: {p}}}\n"
    ));
    assert!(
        out.contains(&format!("127.0.0.1:{p} for stream socket")),
        "{out}"
    );
    assert!(!out.contains("3112"), "{out}");
    assert_eq!(out.matches("Address already in use").count(), 1, "{out}");
    drop(taken);
}

#[tokio::test]
async fn anonymous_one_shot_clients_connect_and_leave_at_debug() {
    let e = EngineProc::start("");
    let mut obs = RawWorker::connect_named(&e.url(), "observer", None).await;
    let port = e.ws_port.to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run_iii(
            &[
                "trigger",
                "engine::workers::list",
                "--address",
                "127.0.0.1",
                "--port",
                &port,
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    // Wait until the trigger client's cleanup has run: only the observer is connected.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = obs.call("engine::workers::list", json!({})).await;
        // Connections (in-process services are listed too, without an address).
        let n = r["result"]["workers"].as_array().map_or(0, |ws| {
            ws.iter().filter(|w| !w["ip_address"].is_null()).count()
        });
        if n == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A declared worker still leaves at info.
    let named = RawWorker::connect_named(&e.url(), "named", None).await;
    named.close_and_wait_gone(&mut obs).await;
    let log = e.wait_for_log(&["worker disconnected"]);
    assert_eq!(log.matches("worker disconnected").count(), 1, "{log}");
    assert_eq!(log.matches("worker connected").count(), 0, "{log}");
    assert_eq!(log.matches("worker registered").count(), 2, "{log}");
}
