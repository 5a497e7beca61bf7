//! `iii project init|generate-docker` (seed 000) and the README quickstart run verbatim.
//!
//! The quickstart test needs what the local-worker tests need (root, the python/node sandbox
//! presets, network access to PyPI and npm) and the default ports 49134 and 3111.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iii_tests::run_iii;

fn scratch(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().to_string()[..8]
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

fn project_id(dir: &Path) -> String {
    read(dir.join(".iii/project.ini"))
        .lines()
        .find_map(|l| l.strip_prefix("id = ").map(str::to_string))
        .expect("an id line")
}

const QUICKSTART_FILES: &[&str] = &[
    "config.yaml",
    "README.md",
    ".gitignore",
    "workers/python/iii.worker.yaml",
    "workers/python/requirements.txt",
    "workers/python/src/main.py",
    "workers/node/iii.worker.yaml",
    "workers/node/package.json",
    "workers/node/src/index.js",
];

#[test]
fn init_name_creates_the_quickstart_project_offline() {
    let base = scratch("iii-proj");
    let (rc, _, err) = run_iii(&["project", "init", "demo"], Some(&base));
    assert_eq!(rc, 0, "{err}");
    let dir = base.join("demo");
    for f in QUICKSTART_FILES {
        assert!(dir.join(f).is_file(), "{f} missing: {err}");
    }
    assert!(
        !dir.join("template.yaml").exists(),
        "the template manifest is not project content"
    );
    assert!(read(dir.join(".gitignore")).lines().any(|l| l == ".iii/"));
    assert!(read(dir.join("README.md")).starts_with("# demo\n"));
    assert!(read(dir.join("workers/python/requirements.txt")).contains("iii-sdk==0.25.0"));
    assert!(read(dir.join("workers/node/package.json")).contains("\"iii-sdk\": \"0.22.1\""));
    assert!(read(dir.join("workers/python/src/main.py")).contains("\"math::add\""));
    assert!(read(dir.join("workers/node/src/index.js")).contains("api_path: 'math/add'"));
    let ini = read(dir.join(".iii/project.ini"));
    assert!(
        ini.contains("name = demo\n") && ini.contains("template = quickstart\n"),
        "{ini}"
    );
    uuid::Uuid::parse_str(&project_id(&dir)).expect("the id is a uuid");
    // The generated config starts every service it lists (upstream's short names), warning-free.
    let cfg = read(dir.join("config.yaml"));
    for s in ["http", "state", "queue", "cron", "pubsub"] {
        assert!(cfg.contains(&format!("  - name: {s} ")), "{s} not in {cfg}");
    }
    let e = iii_tests::EngineProc::start_with(|ws, http| {
        cfg.replace("port: 49134", &format!("port: {ws}"))
            .replace("port: 3111", &format!("port: {http}"))
    });
    let log = e.wait_for_log(&["iii engine"]);
    assert!(!log.contains("WARN"), "the quickstart config warns:\n{log}");
    let (_, list, _) = run_iii(
        &[
            "trigger",
            "engine::functions::list",
            "--port",
            &e.ws_port.to_string(),
        ],
        None,
    );
    assert!(list.contains("state::get"), "state is not served:\n{list}");
}

#[test]
fn directory_flag_wins_over_name_and_cwd_is_the_default() {
    let base = scratch("iii-proj");
    let (rc, _, err) = run_iii(&["project", "init", "ignored", "-d", "chosen"], Some(&base));
    assert_eq!(rc, 0, "{err}");
    assert!(base.join("chosen/config.yaml").is_file());
    assert!(!base.join("ignored").exists());
    let here = base.join("here");
    std::fs::create_dir_all(here.join(".git")).unwrap(); // dotfiles do not make it non-empty
    let (rc, _, err) = run_iii(&["project", "init", "--template", "bare"], Some(&here));
    assert_eq!(rc, 0, "{err}");
    assert!(read(here.join(".iii/project.ini")).contains("name = here\n"));
    assert!(here.join("config.yaml").is_file() && !here.join("workers").exists());
}

#[test]
fn a_non_empty_directory_is_refused_unless_allowed() {
    let dir = scratch("iii-proj");
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let (rc, _, err) = run_iii(&["project", "init"], Some(&dir));
    assert_eq!(rc, 1);
    assert!(
        err.contains("is not empty (found `notes.txt`)") && err.contains("--allow-non-empty"),
        "{err}"
    );
    assert!(!dir.join("config.yaml").exists() && !dir.join(".iii").exists());
    let (rc, _, err) = run_iii(&["project", "init", "--allow-non-empty"], Some(&dir));
    assert_eq!(rc, 0, "{err}");
    assert_eq!(read(dir.join("notes.txt")), "mine");
    assert!(dir.join("config.yaml").is_file());
}

#[test]
fn re_init_is_idempotent_keeps_edits_and_the_project_id() {
    let dir = scratch("iii-proj");
    let (rc, _, err) = run_iii(&["project", "init"], Some(&dir));
    assert_eq!(rc, 0, "{err}");
    let id = project_id(&dir);
    std::fs::write(dir.join("config.yaml"), "workers: []\n").unwrap();
    std::fs::remove_file(dir.join("workers/node/package.json")).unwrap();
    // Not empty any more, but a project: allowed without --allow-non-empty.
    let (rc, _, err) = run_iii(&["project", "init"], Some(&dir));
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("re-initialized") && err.contains("1 files written, 8 kept"),
        "{err}"
    );
    assert_eq!(project_id(&dir), id);
    assert_eq!(read(dir.join("config.yaml")), "workers: []\n");
    assert!(dir.join("workers/node/package.json").is_file());
}

#[test]
fn unknown_templates_are_named_with_the_choices() {
    let dir = scratch("iii-proj");
    let (rc, _, err) = run_iii(&["project", "init", "-t", "nope"], Some(&dir));
    assert_eq!(rc, 1);
    assert!(
        err.contains("unknown template `nope`") && err.contains("quickstart, bare"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing written"
    );
}

/// A local template tree: `<tdir>/mine/` with a manifest demanding `min_iii`, and `<tdir>/docker/`.
fn template_tree(min_iii: &str) -> PathBuf {
    let tdir = scratch("iii-tpl");
    let t = tdir.join("mine");
    std::fs::create_dir_all(t.join("src")).unwrap();
    std::fs::write(
        t.join("template.yaml"),
        format!("name: mine\nmin_iii: {min_iii}\n"),
    )
    .unwrap();
    std::fs::write(t.join("config.yaml"), "# {{project_name}}\nworkers: []\n").unwrap();
    std::fs::write(t.join("gitignore"), ".iii/\n").unwrap();
    std::fs::write(t.join("src/app.txt"), "iii {{iii_version}}\n").unwrap();
    std::fs::create_dir_all(tdir.join("docker")).unwrap();
    std::fs::write(
        tdir.join("docker/Dockerfile"),
        "FROM scratch # {{project_name}}\n",
    )
    .unwrap();
    tdir
}

#[test]
fn template_dir_scaffolds_a_local_tree_with_substitutions() {
    let tdir = template_tree("0.0.1");
    let base = scratch("iii-proj");
    let (rc, _, err) = run_iii(
        &[
            "project",
            "init",
            "p1",
            "-t",
            "mine",
            "--template-dir",
            tdir.to_str().unwrap(),
            "--docker",
        ],
        Some(&base),
    );
    assert_eq!(rc, 0, "{err}");
    let dir = base.join("p1");
    assert_eq!(read(dir.join("config.yaml")), "# p1\nworkers: []\n");
    assert_eq!(read(dir.join(".gitignore")), ".iii/\n");
    assert_eq!(
        read(dir.join("src/app.txt")),
        format!("iii {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(!dir.join("template.yaml").exists());
    // --docker with --template-dir takes the tree's docker/ files and generates the rest.
    assert_eq!(read(dir.join("Dockerfile")), "FROM scratch # p1\n");
    assert!(dir.join("docker-compose.yml").is_file() && dir.join(".env").is_file());
}

#[test]
fn the_engine_version_check_refuses_a_newer_template_unless_skip_iii() {
    let tdir = template_tree("99.0.0");
    let dir = scratch("iii-proj");
    let td = tdir.to_str().unwrap();
    let (rc, _, err) = run_iii(
        &["project", "init", "-t", "mine", "--template-dir", td],
        Some(&dir),
    );
    assert_eq!(rc, 1);
    assert!(
        err.contains("template `mine` needs iii >= 99.0.0, this is iii ")
            && err.contains("--skip-iii"),
        "{err}"
    );
    assert!(!dir.join("config.yaml").exists());
    let (rc, _, err) = run_iii(
        &[
            "project",
            "init",
            "-t",
            "mine",
            "--template-dir",
            td,
            "--skip-iii",
        ],
        Some(&dir),
    );
    assert_eq!(rc, 0, "{err}");
    assert!(dir.join("config.yaml").is_file());
}

/// The generated compose file's structure: an engine built from the Dockerfile's `engine` stage
/// with the iii source as a named context, both ports on 127.0.0.1, and a service per worker
/// built from its stage and pointed at the engine.
fn check_docker_assets(dir: &Path) {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read(dir.join("docker-compose.yml"))).expect("compose is yaml");
    let services = compose["services"].as_mapping().expect("services");
    let engine = &compose["services"]["engine"];
    assert_eq!(engine["build"]["context"], ".");
    assert_eq!(engine["build"]["target"], "engine");
    assert!(engine["build"]["additional_contexts"]["iii-source"]
        .as_str()
        .unwrap()
        .starts_with("${III_SOURCE_DIR"));
    assert_eq!(engine["environment"]["III_HOST"], "0.0.0.0");
    let ports: Vec<&str> = engine["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        ports,
        [
            "127.0.0.1:${III_WS_PORT:-49134}:49134",
            "127.0.0.1:${III_HTTP_PORT:-3111}:3111"
        ]
    );
    let dockerfile = read(dir.join("Dockerfile"));
    assert!(dockerfile.contains("COPY --from=iii-source . /src"));
    assert!(dockerfile.contains("AS engine\n"));
    for (worker, base, cmd) in [
        (
            "math-python",
            "FROM python:3.12-slim AS worker-math-python",
            "python src/main.py",
        ),
        (
            "math-node",
            "FROM node:20-slim AS worker-math-node",
            "node src/index.js",
        ),
    ] {
        let s = &compose["services"][worker];
        assert_eq!(
            s["build"]["target"].as_str(),
            Some(&*format!("worker-{worker}"))
        );
        assert_eq!(s["environment"]["III_URL"], "ws://engine:49134");
        assert_eq!(s["depends_on"][0], "engine");
        assert!(dockerfile.contains(base), "{dockerfile}");
        assert!(
            dockerfile.contains(&format!("CMD [\"sh\", \"-c\", \"{cmd}\"]")),
            "{dockerfile}"
        );
    }
    assert_eq!(services.len(), 3);
    let env = read(dir.join(".env"));
    let src = env
        .lines()
        .find_map(|l| l.strip_prefix("III_SOURCE_DIR="))
        .expect("III_SOURCE_DIR in .env");
    assert!(Path::new(src).join("cli/Cargo.toml").is_file(), "{env}");
    assert!(env.contains("III_WS_PORT=49134\n") && env.contains("III_HTTP_PORT=3111\n"));
    assert!(read(dir.join(".dockerignore")).contains(".iii/"));
}

#[test]
fn generate_docker_writes_valid_assets_and_keeps_existing_ones() {
    let dir = scratch("iii-proj");
    let (rc, _, err) = run_iii(&["project", "generate-docker"], Some(&dir));
    assert_eq!(rc, 1);
    assert!(
        err.contains("is not an iii project (no config.yaml)"),
        "{err}"
    );
    let (rc, _, err) = run_iii(&["project", "init", "--docker"], Some(&dir));
    assert_eq!(rc, 0, "{err}");
    check_docker_assets(&dir);
    // `docker compose config` as well when a docker CLI with compose is here.
    let compose = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if compose {
        let out = Command::new("docker")
            .args(["compose", "config", "-q"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // generate-docker -d on an existing project keeps edited files and writes missing ones.
    std::fs::write(dir.join("Dockerfile"), "# mine\n").unwrap();
    std::fs::remove_file(dir.join(".env")).unwrap();
    let (rc, _, err) = run_iii(
        &["project", "generate-docker", "-d", dir.to_str().unwrap()],
        Some(dir.parent().unwrap()),
    );
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("kept Dockerfile") && err.contains("wrote .env"),
        "{err}"
    );
    assert_eq!(read(dir.join("Dockerfile")), "# mine\n");
    assert!(dir.join(".env").is_file());
}

#[test]
fn help_lists_every_seed_option() {
    let (rc, out, _) = run_iii(&["project", "init", "--help"], None);
    assert_eq!(rc, 0);
    for o in [
        "[NAME]",
        "-d, --directory <DIRECTORY>",
        "--docker",
        "-t, --template <TEMPLATE>",
        "[default: quickstart]",
        "--template-dir <TEMPLATE_DIR>",
        "--skip-iii",
        "--allow-non-empty",
    ] {
        assert!(out.contains(o), "{o} missing:\n{out}");
    }
    let (rc, out, _) = run_iii(&["project", "generate-docker", "--help"], None);
    assert_eq!(rc, 0);
    assert!(
        out.contains("-d, --directory <DIRECTORY>")
            && out.contains("--template-dir <TEMPLATE_DIR>"),
        "{out}"
    );
    let (_, out, _) = run_iii(&["--help"], None);
    assert!(
        out.contains("Manage iii projects (init, generate-docker)"),
        "{out}"
    );
}

/// The fenced ```sh block between `<!-- marker -->` and `<!-- /marker -->` in the README.
fn readme_block(marker: &str) -> String {
    let readme = read(crate::image_fixture::workspace().join("README.md"));
    let start = readme
        .find(&format!("<!-- {marker} -->"))
        .unwrap_or_else(|| panic!("README has no <!-- {marker} --> block"));
    let end = readme[start..]
        .find(&format!("<!-- /{marker} -->"))
        .expect("closing marker")
        + start;
    readme[start..end]
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .expect("a ```sh fenced block")
        .0
        .to_string()
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn the_readme_quickstart_works_as_written() {
    let install = readme_block("install");
    let quickstart = readme_block("quickstart");
    let ws = crate::image_fixture::workspace();
    let base = scratch("iii-quickstart");
    let bin = base.join("bin");
    // The quickstart uses the default ports: one such test at a time in this binary, and wait
    // out another process holding them.
    let _ports = iii_tests::default_ports_lock();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(port_free(49134) && port_free(3111)) {
        assert!(
            Instant::now() < deadline,
            "ports 49134/3111 stay busy; the quickstart needs them"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| ws.join("target"));
    // The two blocks as written, the first in the checkout, the second in a scratch directory.
    let script = format!(
        "set -eu\ncd '{}'\n{install}\ncd '{}'\n{quickstart}",
        ws.display(),
        base.display()
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", "900", "bash", "-c", &script])
        .env("III_INSTALL_DIR", &bin)
        .env("III_INSTALL_PROFILE", "dev")
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_INCREMENTAL", "0")
        .env("III_HOME", base.join("home"))
        .env_remove("III_CONFIG_PATH")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a failed run's background engine can be stopped below.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("run bash");
    let pgid = child.id() as libc::pid_t;
    let out = child.wait_with_output().unwrap();
    // SAFETY: kill(2) on our own process group; ESRCH (all gone) is fine.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(base.join("demo/.iii/engine.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the quickstart failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nengine log:\n{log}",
        out.status
    );
    assert!(
        stderr.contains(&format!(
            "installed iii, iii-worker-host and iii-init into {}",
            bin.display()
        )),
        "{stderr}"
    );
    assert!(bin.join("iii").is_file() && bin.join("iii-worker-host").is_file());
    assert!(
        stdout.contains("{\n  \"c\": 3\n}"),
        "iii trigger math::add printed:\n{stdout}"
    );
    assert!(
        stdout.contains("{\"c\":3}\n"),
        "curl /math/add printed:\n{stdout}"
    );
    assert!(stderr.contains("✓ created project `demo`"), "{stderr}");
    assert_eq!(stderr.matches("✓ ready in").count(), 2, "{stderr}");
    let _ = std::fs::remove_dir_all(&base);
}
