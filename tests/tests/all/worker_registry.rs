//! `iii worker add <registry name>`, `sync [--frozen]`, `update`, `add --force`, `reinstall`
//! and `init`, driven as a user would: the real binary in a temp project, a loopback registry
//! API (iii_tests::registry_api) at III_API_URL and a temp III_HOME. Image workers come from a
//! real OCI registry (tests/registry.sh) when it is available.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use iii_tests::registry_api::RegistryApi;
use iii_tests::{free_port, iii_bin};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A project dir with a config.yaml whose manager port is free (so nothing talks to another
/// engine), and its own III_HOME.
struct Project {
    dir: PathBuf,
    home: PathBuf,
    config: String,
}

impl Project {
    fn new() -> Project {
        let root = std::env::temp_dir().join(format!("iii-wkreg-{}", uuid::Uuid::new_v4()));
        let dir = root.join("proj");
        let home = root.join("home");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let config = format!(
            "# my project\nworkers:\n  - name: iii-worker-manager\n    config:\n      port: {}   # ours\n",
            free_port()
        );
        std::fs::write(dir.join("config.yaml"), &config).unwrap();
        Project { dir, home, config }
    }

    /// `iii worker <args>` with stdin not a terminal; (exit code, stderr).
    fn run(&self, api: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let out = Command::new(iii_bin())
            .arg("worker")
            .args(args)
            .current_dir(&self.dir)
            .env_remove("III_CONFIG_PATH")
            .env("III_API_URL", api)
            .env("III_HOME", &self.home)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run iii worker");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "",
            "human output belongs on stderr"
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn read(&self, f: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(f)).ok()
    }

    fn write(&self, f: &str, text: &str) {
        std::fs::write(self.dir.join(f), text).unwrap();
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.dir.parent().unwrap());
    }
}

fn host_target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-unknown-linux-gnu",
        _ => "x86_64-unknown-linux-gnu",
    }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A tar.gz holding `bin/<name>` with `body`, made with the system tar.
fn archive(name: &str, body: &str) -> Vec<u8> {
    let d = std::env::temp_dir().join(format!("iii-wkreg-ar-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(d.join("bin").join(name), body).unwrap();
    let out = d.join("a.tgz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&d)
        .arg(format!("bin/{name}"))
        .status()
        .unwrap();
    assert!(st.success());
    let b = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    b
}

/// Serves `greeter@version` (binary, depending on the builtin `queue`) with `body`.
fn serve_greeter(api: &RegistryApi, version: &str, body: &str) -> (String, String) {
    let ar = archive("greeter", body);
    let sha = sha256_hex(&ar);
    let url = api.put_file(&format!("/dl/greeter-{version}.tgz"), ar);
    api.set_graph(
        "greeter",
        version,
        json!({
            "root": {"name": "greeter", "version": version},
            "graph": [
                {"name": "queue", "type": "engine", "version": "0.9.0", "dependencies": {}},
                {"name": "greeter", "type": "binary", "version": version,
                 "dependencies": {"queue": "^0.9"},
                 "binaries": {host_target(): {"url": url, "sha256": sha}}}
            ],
            "edges": [{"from": "greeter", "to": "queue", "range": "^0.9"}]
        }),
    );
    (url, sha)
}

fn greeter_lock(version: &str, url: &str, sha: &str, extra_head: &str) -> String {
    format!(
        "version: 1\n{extra_head}workers:\n  greeter:\n    version: {version}\n    type: binary\n    dependencies:\n      queue: ^0.9\n    source:\n      kind: binary\n      artifacts:\n        {}:\n          url: {url}\n          sha256: {sha}\n  queue:\n    version: 0.9.0\n    type: engine\n    dependencies: {{}}\n",
        host_target()
    )
}

#[test]
fn registry_down_or_unknown_worker_is_a_clear_error_and_changes_nothing() {
    let p = Project::new();
    let down = format!("http://127.0.0.1:{}", free_port());
    let (code, err) = p.run(&down, &["add", "greeter"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "error: [W140] cannot reach the iii registry API at {down}"
        )) && err.contains("set III_API_URL"),
        "{err}"
    );
    assert_eq!(p.read("config.yaml").unwrap(), p.config);
    assert!(p.read("iii.lock").is_none());

    let api = RegistryApi::start();
    let (code, err) = p.run(&api.url, &["add", "nosuch@1.0.0"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: [W110] Worker 'nosuch' not found"),
        "{err}"
    );
    assert_eq!(p.read("config.yaml").unwrap(), p.config);
    assert!(p.read("iii.lock").is_none());

    // A tampered artifact: the checksum refuses it before anything is written.
    let ar = archive("bad", "#!/bin/sh\n");
    let url = api.put_file("/dl/bad.tgz", ar);
    api.set_graph(
        "bad",
        "1.0.0",
        json!({"root": {"name": "bad", "version": "1.0.0"},
               "graph": [{"name": "bad", "type": "binary", "version": "1.0.0",
                          "binaries": {host_target(): {"url": url, "sha256": "0".repeat(64)}}}],
               "edges": []}),
    );
    let (code, err) = p.run(&api.url, &["add", "bad"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("checksum mismatch for"), "{err}");
    assert_eq!(p.read("config.yaml").unwrap(), p.config);
    assert!(p.read("iii.lock").is_none());
    assert!(!p.home.join("workers/bad").exists());
}

#[test]
fn registry_add_locks_the_graph_then_sync_frozen_update_force_and_reinstall() {
    let p = Project::new();
    let api = RegistryApi::start();
    let (url1, sha1) = serve_greeter(&api, "1.0.0", "#!/bin/sh\necho v1\n");

    let (code, err) = p.run(&api.url, &["add", "greeter"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("This engine does not run binary workers yet"),
        "{err}"
    );
    let bin = p.home.join("workers/greeter");
    assert_eq!(
        std::fs::read_to_string(&bin).unwrap(),
        "#!/bin/sh\necho v1\n"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    let config = format!("{}  - name: queue\n", p.config);
    assert_eq!(p.read("config.yaml").unwrap(), config);
    assert_eq!(
        p.read("iii.lock").unwrap(),
        greeter_lock("1.0.0", &url1, &sha1, "")
    );

    // --frozen: matches, then config.yaml drifts (exact text), nothing changes.
    let (code, err) = p.run(&api.url, &["sync", "--frozen"], &[]);
    assert_eq!(
        (code, err.as_str()),
        (0, "✓ config.yaml matches iii.lock\n")
    );
    let drifted = config.replace(
        "  - name: queue\n",
        "  - name: stray\n    image: localhost:5000/x/stray:1\n",
    );
    p.write("config.yaml", &drifted);
    let lock_before = p.read("iii.lock").unwrap();
    let (code, err) = p.run(&api.url, &["sync", "--frozen"], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "error: config.yaml drift vs iii.lock\n  + stray (in config.yaml, not in iii.lock)\n  - queue (in iii.lock, not in config.yaml)\nfix: run `iii worker add <worker>` or `iii worker update <worker>` to re-pin iii.lock, or restore the config file from git\ndocs: https://iii.dev/docs/sync#drift\n"
    );
    assert_eq!(p.read("config.yaml").unwrap(), drifted);
    assert_eq!(p.read("iii.lock").unwrap(), lock_before);
    // A plain sync refuses to install from a drifted pair as well.
    let (code, _) = p.run(&api.url, &["sync"], &[]);
    assert_eq!(code, 1);
    p.write("config.yaml", &config);

    // iii.worker.yaml: add stamps its dependencies; editing them is the section 2.2.3 drift.
    p.write(
        "iii.worker.yaml",
        "name: app\ndependencies:\n  queue: \"^0.9\"\n",
    );
    let (code, err) = p.run(&api.url, &["add", "greeter"], &[]);
    assert_eq!(code, 0, "{err}");
    let lock = p.read("iii.lock").unwrap();
    assert!(
        lock.contains("manifest_hash: sha256:v1:")
            && lock.contains("declared_dependencies:\n  queue: ^0.9\n"),
        "{lock}"
    );
    let (code, err) = p.run(&api.url, &["sync", "--frozen"], &[]);
    assert_eq!(code, 0, "{err}");
    p.write(
        "iii.worker.yaml",
        "name: app\ndependencies:\n  queue: \"^1.0\"\n  http: \"^0.20\"\n",
    );
    let (code, err) = p.run(&api.url, &["sync", "--frozen"], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "error: iii.worker.yaml drift vs iii.lock\n  + http \"^0.20\" (not in lock)\n  ~ queue \"^0.9\" → \"^1.0\"\nfix: run `iii worker sync --refresh && git add iii.lock`\ndocs: https://iii.dev/docs/sync#drift\n"
    );
    std::fs::remove_file(p.dir.join("iii.worker.yaml")).unwrap();
    let (code, err) = p.run(&api.url, &["sync", "--frozen"], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "error: iii.worker.yaml is missing but iii.lock expects it\n  - queue \"^0.9\" (in lock)\nfix: restore iii.worker.yaml from git, or remove iii.lock\ndocs: https://iii.dev/docs/sync#missing-manifest\n"
    );
    p.write(
        "iii.worker.yaml",
        "name: app\ndependencies:\n  queue: \"^0.9\"\n",
    );

    // sync reinstalls exactly from the lock and never asks the resolver.
    std::fs::remove_file(&bin).unwrap();
    let asked = api.resolves();
    let (code, err) = p.run(&api.url, &["sync"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("✓ Synced registry-managed workers from iii.lock\ninstalled: 1, already current: 0, repaired: 0, skipped: 2, failed: 0\n"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&bin).unwrap(),
        "#!/bin/sh\necho v1\n"
    );
    let (code, err) = p.run(&api.url, &["sync"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("installed: 0, already current: 1,"), "{err}");
    // The artifact server now hands out other bytes: the pinned sha256 refuses them.
    api.put_file("/dl/greeter-1.0.0.tgz", archive("greeter", "evil\n"));
    std::fs::remove_file(&bin).unwrap();
    let (code, err) = p.run(&api.url, &["sync"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("checksum mismatch") && err.contains("failed: 1"),
        "{err}"
    );
    assert!(!bin.exists());
    assert_eq!(api.resolves(), asked, "sync never contacts the resolver");
    let (url1, sha1) = serve_greeter(&api, "1.0.0", "#!/bin/sh\necho v1\n");

    // update: the registry serves 1.1.0; the pin moves on purpose.
    let (url2, sha2) = serve_greeter(&api, "1.1.0", "#!/bin/sh\necho v2\n");
    let (code, err) = p.run(&api.url, &["update", "greeter"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ greeter: 1.0.0 → 1.1.0"), "{err}");
    let lock = p.read("iii.lock").unwrap();
    assert!(
        lock.contains(&greeter_lock("1.1.0", &url2, &sha2, "")[11..]),
        "{lock}"
    );
    assert_eq!(
        std::fs::read_to_string(&bin).unwrap(),
        "#!/bin/sh\necho v2\n"
    );
    assert_eq!(p.read("config.yaml").unwrap(), config);
    let (code, err) = p.run(&api.url, &["update", "nosuch"], &[]);
    assert_eq!(
        (code, err.as_str()),
        (1, "error: [W110] Worker 'nosuch' is not in iii.lock\n")
    );

    // --force: stops nothing here (no engine), deletes the artifacts, then adds @1.0.0.
    let managed = p.home.join("managed/greeter");
    std::fs::create_dir_all(&managed).unwrap();
    std::fs::write(managed.join("host.json"), "{}").unwrap();
    let (code, err) = p.run(&api.url, &["add", "--force", "greeter@1.0.0"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ Cleared "), "{err}");
    assert!(!managed.exists());
    assert_eq!(
        std::fs::read_to_string(&bin).unwrap(),
        "#!/bin/sh\necho v1\n"
    );
    assert!(p
        .read("iii.lock")
        .unwrap()
        .contains(&greeter_lock("1.0.0", &url1, &sha1, "")[11..]));

    // reinstall = add --force --no-wait.
    std::fs::write(&bin, "stale").unwrap();
    let (code, err) = p.run(&api.url, &["reinstall", "greeter"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ Cleared "), "{err}");
    assert_eq!(
        std::fs::read_to_string(&bin).unwrap(),
        "#!/bin/sh\necho v2\n"
    );
    assert_eq!(p.read("config.yaml").unwrap(), config);
}

#[test]
fn init_scaffolds_each_language_offline() {
    let root = std::env::temp_dir().join(format!("iii-wkinit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&root).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(iii_bin())
            .arg("worker")
            .arg("init")
            .args(args)
            .current_dir(&root)
            .env("III_API_URL", "http://127.0.0.1:9")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: [(&str, &[&str], &str, &str); 4] = [
        (
            "py",
            &["requirements.txt", "src/main.py"],
            "requirements.txt",
            "iii-sdk==0.25.0",
        ),
        (
            "ts",
            &["package.json", "tsconfig.json", "src/index.ts"],
            "package.json",
            "\"iii-sdk\": \"0.22.1\"",
        ),
        (
            "js",
            &["package.json", "src/index.js"],
            "package.json",
            "\"iii-sdk\": \"0.22.1\"",
        ),
        (
            "rust",
            &["Cargo.toml", "src/main.rs"],
            "Cargo.toml",
            "iii-sdk = \"0.25\"",
        ),
    ];
    for (lang, files, sdk_file, sdk) in cases {
        let name = format!("hello-{lang}");
        let (code, err) = run(&[&name, "-l", lang]);
        assert_eq!(code, 0, "{lang}: {err}");
        let d = root.join(&name);
        assert!(err.contains(&format!("worker '{name}'")), "{err}");
        for f in files
            .iter()
            .chain(&["iii.worker.yaml", ".gitignore", ".iii/worker.ini"])
        {
            let text = std::fs::read_to_string(d.join(f)).unwrap_or_else(|_| panic!("{lang}: {f}"));
            assert!(
                !text.contains("{{"),
                "{lang} {f}: unsubstituted placeholder"
            );
        }
        let manifest = std::fs::read_to_string(d.join("iii.worker.yaml")).unwrap();
        assert!(
            manifest.starts_with(&format!("name: {name}\n")),
            "{manifest}"
        );
        assert!(
            manifest.contains("\nscripts:\n")
                && manifest.contains("\n  install: ")
                && manifest.contains("\n  start: ")
                && manifest.contains("\ndependencies: {}\n"),
            "{manifest}"
        );
        let s = std::fs::read_to_string(d.join(sdk_file)).unwrap();
        assert!(s.contains(sdk), "{lang}: {s}");
        // The code at least parses where the toolchain is here.
        let check: Option<(&str, Vec<&str>)> = match lang {
            "py" => Some(("python3", vec!["-m", "py_compile", "src/main.py"])),
            "js" => Some(("node", vec!["--check", "src/index.js"])),
            _ => None,
        };
        if let Some((tool, args)) = check {
            if let Ok(st) = Command::new(tool).args(&args).current_dir(&d).status() {
                assert!(st.success(), "{lang}: {tool} {args:?}");
            }
        }
        // Not empty any more: refused, unless asked (existing files are kept).
        let (code, err) = run(&[&name, "-l", lang]);
        assert_eq!(code, 0, "re-init of a scaffolded dir: {err}");
        std::fs::remove_file(d.join(".iii/worker.ini")).unwrap();
        let (code, err) = run(&[&name, "-l", lang]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("is not empty") && err.contains("--allow-non-empty"),
            "{err}"
        );
        let (code, err) = run(&[&name, "-l", lang, "--allow-non-empty"]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("kept existing iii.worker.yaml"), "{err}");
    }
    // -d names the worker after the directory; no language on a non-terminal is an error.
    let (code, err) = run(&["-d", "nested/dir-name", "-l", "PY"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_to_string(root.join("nested/dir-name/iii.worker.yaml"))
            .unwrap()
            .starts_with("name: dir-name\n")
    );
    let (code, err) = run(&["fresh"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pass --language"), "{err}");
    assert!(!root.join("fresh").exists());
    let (code, err) = run(&["fresh", "-l", "cobol"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown language 'cobol'"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

/// Image workers by registry name, from a real OCI registry (tests/registry.sh).
mod image {
    use super::*;
    use crate::worker_cli::oci::push_image_env;
    use iii_tests::oci_registry::{enabled, Registry};

    #[test]
    fn registry_image_worker_is_pinned_updated_and_reinstalled() {
        if !enabled() {
            return;
        }
        let reg = Registry::start();
        let p = Project::new();
        let cache = p.home.join("cache");
        let cache_s = cache.to_str().unwrap().to_string();
        let env = [("XDG_CACHE_HOME", cache_s.as_str())];
        let v1 = format!("{}/team/hello:1.0", reg.addr);
        let v2 = format!("{}/team/hello:2.0", reg.addr);
        push_image_env(&v1, &p.home.join("l1"), &["PATH=/bin", "FOO=one"]);
        push_image_env(&v2, &p.home.join("l2"), &["PATH=/bin", "FOO=two"]);
        let api = RegistryApi::start();
        let graph = |version: &str, image: &str| {
            json!({"root": {"name": "hello", "version": version},
                   "graph": [{"name": "hello", "type": "image", "version": version, "image": image}],
                   "edges": []})
        };
        api.set_graph("hello", "1.0.0", graph("1.0.0", &v1));

        let (code, err) = p.run(&api.url, &["add", "--no-wait", "hello"], &env);
        assert_eq!(code, 0, "{err}");
        let config = p.read("config.yaml").unwrap();
        let pin1 = config
            .lines()
            .find_map(|l| l.strip_prefix("    image: "))
            .unwrap()
            .to_string();
        assert!(pin1.starts_with(&format!("{v1}@sha256:")), "{config}");
        assert_eq!(
            config,
            format!(
                "{}  - name: hello\n    image: {pin1}\n    config:\n      FOO: one\n",
                p.config
            )
        );
        assert_eq!(
            p.read("iii.lock").unwrap(),
            format!("version: 1\nworkers:\n  hello:\n    version: 1.0.0\n    type: image\n    dependencies: {{}}\n    source:\n      kind: image\n      image: {pin1}\n")
        );
        let (code, err) = p.run(&api.url, &["sync", "--frozen"], &env);
        assert_eq!(code, 0, "{err}");
        let (code, err) = p.run(&api.url, &["sync"], &env);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("already current: 1"), "{err}");

        // update: the registry serves 2.0.0 → new pin in config.yaml and iii.lock.
        api.set_graph("hello", "2.0.0", graph("2.0.0", &v2));
        let (code, err) = p.run(&api.url, &["update"], &env);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("✓ hello: 1.0.0 → 2.0.0"), "{err}");
        let lock = p.read("iii.lock").unwrap();
        let pin2 = lock
            .lines()
            .find_map(|l| l.strip_prefix("      image: "))
            .unwrap()
            .to_string();
        assert!(
            pin2.starts_with(&format!("{v2}@sha256:")) && pin2 != pin1,
            "{lock}"
        );
        assert!(p
            .read("config.yaml")
            .unwrap()
            .contains(&format!("    image: {pin2}\n")));

        // A hand-edited image: is drift; reinstall --reset-config puts the registry's back.
        let edited = p.read("config.yaml").unwrap().replace(&pin2, &v1);
        p.write("config.yaml", &edited);
        let (code, err) = p.run(&api.url, &["sync", "--frozen"], &env);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "error: config.yaml drift vs iii.lock\n  ~ hello image \"{pin2}\" → \"{v1}\"\n"
            )),
            "{err}"
        );
        let (code, err) = p.run(&api.url, &["reinstall", "--reset-config", "hello"], &env);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("✓ Cleared "), "{err}");
        assert_eq!(
            p.read("config.yaml").unwrap(),
            format!(
                "{}  - name: hello\n    image: {pin2}\n    config:\n      FOO: two\n",
                p.config
            )
        );
        let (code, err) = p.run(&api.url, &["sync", "--frozen"], &env);
        assert_eq!(code, 0, "{err}");

        // A direct OCI add is pinned too; the tag moving upstream changes nothing until
        // `update` re-pins it on purpose.
        let other = format!("{}/team/other:latest", reg.addr);
        push_image_env(&other, &p.home.join("l3"), &["PATH=/bin", "V=1"]);
        let (code, err) = p.run(&api.url, &["add", "--no-wait", &other], &env);
        assert_eq!(code, 0, "{err}");
        let pinned = |lock: &str| {
            lock.split("  other:\n")
                .nth(1)
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix("      image: ")))
                .unwrap()
                .to_string()
        };
        let o1 = pinned(&p.read("iii.lock").unwrap());
        assert!(o1.starts_with(&format!("{other}@sha256:")), "{o1}");
        push_image_env(&other, &p.home.join("l4"), &["PATH=/bin", "V=2"]);
        let (code, err) = p.run(&api.url, &["sync"], &env);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("already current: 2"), "{err}");
        assert_eq!(pinned(&p.read("iii.lock").unwrap()), o1);
        let (code, err) = p.run(&api.url, &["update", "other"], &env);
        assert_eq!(code, 0, "{err}");
        let o2 = pinned(&p.read("iii.lock").unwrap());
        assert!(
            o2.starts_with(&format!("{other}@sha256:")) && o2 != o1,
            "{o2}"
        );
        assert!(p
            .read("config.yaml")
            .unwrap()
            .contains(&format!("    image: {other}\n")));
        let (code, err) = p.run(&api.url, &["sync", "--frozen"], &env);
        assert_eq!(code, 0, "{err}");
    }
}
