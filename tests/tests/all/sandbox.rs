//! Sandboxes end to end (issue #12, workers-and-sandboxes spec section 1.17, section 4): the real `iii` with
//! `- name: iii-sandbox` (namespace runtime) supervising the `iii-sandbox` daemon, driven over the
//! worker protocol as a raw worker and through `iii worker sandbox …`.
//!
//! Needs root (namespaces, cgroups, overlay mounts) and the binaries `iii`, `iii-sandbox` and
//! `iii-init` in the target directory; the python and node presets are built once into the
//! shared image cache (the `iii-oci-rootfs` builder the daemon uses; slow the first time).
//! Each engine gets its own state root (`III_SANDBOX_ROOT`) so the checks that a stopped or
//! orphaned sandbox left nothing behind see only this test's sandboxes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use iii_tests::{EngineProc, RawWorker};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

/// Create may import an image or cold-start on a loaded machine; a liveness bound only.
const CREATE_WAIT: Duration = Duration::from_secs(300);
const CALL_WAIT: Duration = Duration::from_secs(60);

/// Builds (or finds cached) the python and node presets through the image cache the daemon
/// reads, once per test process. Returns preset → lower path.
fn presets() -> &'static Vec<(String, PathBuf)> {
    static DONE: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    DONE.get_or_init(|| {
        let store = iii_oci_rootfs::ImageStore::open(None).expect("open the image cache");
        ["python", "node"]
            .iter()
            .map(|name| {
                let rootfs = store
                    .build_preset(name, &mut |line| eprintln!("preset {name}: {line}"))
                    .unwrap_or_else(|e| panic!("building preset {name}: {e}"));
                (name.to_string(), rootfs.lower)
            })
            .collect()
    })
}

/// A per-test state root, short enough that `<root>/<uuid>/fwd-<port>.sock` fits a Unix socket
/// path (108 bytes). Removed on drop.
struct StateRoot(PathBuf);

impl StateRoot {
    fn new() -> StateRoot {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let p = PathBuf::from(format!("/tmp/sbt-{}", &id[..10]));
        std::fs::create_dir_all(&p).expect("state root");
        StateRoot(p)
    }
    fn dir_of(&self, id: &str) -> PathBuf {
        self.0.join(id)
    }
    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for StateRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An engine running the sandbox daemon with `config` (YAML lines of the entry's `config:`
/// block, indented by six spaces) and extra environment.
struct Sandboxes {
    engine: EngineProc,
    root: StateRoot,
}

const BASE_CONFIG: &str =
    "      runtime: namespace\n      auto_install: true\n      image_allowlist: [python, node]\n";

fn start(config: &str, env: &[(&str, &str)]) -> Sandboxes {
    presets();
    let root = StateRoot::new();
    let root_s = root.0.to_string_lossy().into_owned();
    let mut all_env: Vec<(&str, &str)> = vec![("III_SANDBOX_ROOT", root_s.as_str())];
    all_env.extend_from_slice(env);
    let block = format!("  - name: iii-sandbox\n    config:\n{config}");
    let engine = EngineProc::start_with_env(
        move |ws, http| {
            format!(
                "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}, handshake_timeout_ms: 2000}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}, default_timeout: 5000}}\n{block}"
            )
        },
        &all_env,
    );
    let s = Sandboxes { engine, root };
    s.wait_daemon();
    s
}

impl Sandboxes {
    fn url(&self) -> String {
        self.engine.url()
    }

    fn port(&self) -> String {
        self.engine.ws_port.to_string()
    }

    /// Waits until the daemon has registered `sandbox::create` (it starts after the engine).
    fn wait_daemon(&self) {
        block_on(self.daemon_up());
    }

    async fn daemon_up(&self) {
        let mut w = RawWorker::connect(&self.url()).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = w
                .call(
                    "engine::functions::info",
                    json!({"function_id": "sandbox::create"}),
                )
                .await;
            if r.get("error").is_none_or(Value::is_null) && !r["result"].is_null() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox::create not registered within 60 s:\n{}",
                self.engine.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn client(&self) -> Sb {
        Sb {
            w: RawWorker::connect(&self.url()).await,
            url: self.url(),
        }
    }

    /// `iii worker sandbox <sub> --port <this engine> <rest>`.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_stdin(args, None)
    }

    fn cli_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        let (code, out, err) = self.cli_bytes(args, stdin);
        (code, String::from_utf8_lossy(&out).into_owned(), err)
    }

    fn cli_bytes(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
        let port = self.port();
        let mut c = Command::new(iii_tests::iii_bin());
        // `--port` right after the subcommand: after a trailing command it would be the
        // command's own argument.
        c.args(["worker", "sandbox"])
            .args(&args[..1])
            .args(["--port", &port])
            .args(&args[1..]);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run iii worker sandbox");
        if let Some(data) = stdin {
            let mut si = child.stdin.take().expect("stdin");
            si.write_all(data).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Sandboxes {
    /// A test that failed half-way leaves sandboxes running. SIGTERM lets the engine stop the
    /// daemon, which stops its sandboxes; whatever still runs after that (a wedged daemon) is
    /// killed here and its cgroups removed, so one failure does not leak into the machine.
    fn drop(&mut self) {
        let pid = self.engine.child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !matches!(self.engine.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for id in self.root.entries() {
            for line in leftovers(&self.root, &id) {
                if let Some(p) = line
                    .strip_prefix("process ")
                    .and_then(|r| r.split(':').next())
                    .and_then(|p| p.parse::<i32>().ok())
                {
                    kill9(p);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            for line in leftovers(&self.root, &id) {
                if let Some(dir) = line.strip_prefix("cgroup ") {
                    let _ = std::fs::remove_dir(dir);
                }
            }
        }
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A raw-protocol caller of `sandbox::*` with the long waits sandboxes need.
struct Sb {
    w: RawWorker,
    url: String,
}

impl Sb {
    /// The invocation result frame of `function(data)`, waiting up to `limit`.
    async fn call_for(&mut self, function: &str, data: Value, limit: Duration) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        self.w
            .send(json!({"type": "invokefunction", "invocation_id": id, "function_id": function, "data": data}))
            .await;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .w
                .recv_raw(left)
                .await
                .unwrap_or_else(|| panic!("{function} did not answer within {limit:?}"));
            if v["type"] == "invocationresult" && v["invocation_id"] == id.as_str() {
                return v;
            }
        }
    }

    async fn call(&mut self, function: &str, data: Value) -> Value {
        self.call_for(function, data, CALL_WAIT).await
    }

    /// The result of a call that must succeed.
    async fn ok(&mut self, function: &str, data: Value) -> Value {
        let r = self.call(function, data.clone()).await;
        assert!(
            r.get("error").is_none_or(Value::is_null),
            "{function}({data}) failed: {r}"
        );
        r["result"].clone()
    }

    /// The section 4.5 envelope of a call that must fail.
    async fn err(&mut self, function: &str, data: Value) -> Value {
        let r = self.call(function, data.clone()).await;
        envelope(&r).unwrap_or_else(|| {
            panic!("{function}({data}) did not fail with an S-code envelope: {r}")
        })
    }

    async fn create(&mut self, data: Value) -> String {
        let r = self
            .call_for("sandbox::create", data.clone(), CREATE_WAIT)
            .await;
        assert!(
            r.get("error").is_none_or(Value::is_null),
            "sandbox::create({data}) failed: {r}"
        );
        let id = r["result"]["sandbox_id"]
            .as_str()
            .expect("sandbox_id")
            .to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert_eq!(r["result"]["image"], data["image"]);
        id
    }

    async fn exec(&mut self, id: &str, mut data: Value) -> Value {
        data["sandbox_id"] = json!(id);
        self.ok("sandbox::exec", data).await
    }

    async fn sh(&mut self, id: &str, script: &str) -> Value {
        self.exec(id, json!({"argv": ["sh", "-c", script]})).await
    }

    async fn write(&mut self, id: &str, path: &str, content: &str) {
        let r = self
            .ok(
                "sandbox::fs::write",
                json!({"sandbox_id": id, "path": path, "content": content, "parents": true}),
            )
            .await;
        assert_eq!(r["bytes_written"], content.len() as u64, "{r}");
    }

    async fn stop(&mut self, id: &str) {
        let r = self
            .ok("sandbox::stop", json!({"sandbox_id": id, "wait": true}))
            .await;
        assert_eq!(r, json!({"sandbox_id": id, "stopped": true}));
    }

    async fn list_ids(&mut self) -> Vec<String> {
        let r = self.ok("sandbox::list", json!({})).await;
        r["sandboxes"]
            .as_array()
            .expect("sandboxes")
            .iter()
            .map(|s| s["sandbox_id"].as_str().expect("id").to_string())
            .collect()
    }

    /// A fresh data channel: (writer ref, reader ref).
    async fn channel(&mut self) -> (Value, Value) {
        let r = self.ok("engine::channels::create", json!({})).await;
        (r["writer"].clone(), r["reader"].clone())
    }
}

/// Parses the S-code envelope out of an `invocationresult` error (`handler error: {…}`).
fn envelope(r: &Value) -> Option<Value> {
    let msg = r["error"]["message"].as_str()?;
    let env: Value = serde_json::from_str(&msg[msg.find('{')?..]).ok()?;
    env.get("code")?.as_str()?;
    Some(env)
}

/// Asserts the envelope's code, category, message prefix and that `fix`/`fix_note` are present.
#[track_caller]
fn assert_code(env: &Value, code: &str, ty: &str, prefix: &str) {
    assert_eq!(env["code"], code, "{env}");
    assert_eq!(env["type"], ty, "{env}");
    let msg = env["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with(prefix),
        "message `{msg}` should start with `{prefix}`: {env}"
    );
    assert!(
        env.get("fix").is_some() && env.get("fix_note").is_some(),
        "{env}"
    );
    assert!(
        env["docs_url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("#{code}"))),
        "{env}"
    );
    let retryable = matches!(code, "S102" | "S218");
    assert_eq!(env["retryable"], retryable, "{env}");
}

fn channel_url(base: &str, r: &Value) -> String {
    format!(
        "{base}/ws/channels/{}?key={}&dir={}",
        r["channel_id"].as_str().expect("channel_id"),
        r["access_key"].as_str().expect("access_key"),
        r["direction"].as_str().expect("direction")
    )
}

/// Streams `data` into a channel's writer end in 64 KiB binary frames, then closes it.
async fn write_channel(base: String, writer: Value, data: Vec<u8>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(channel_url(&base, &writer))
        .await
        .expect("connect writer");
    for chunk in data.chunks(64 * 1024) {
        ws.send(Message::binary(chunk.to_vec()))
            .await
            .expect("send chunk");
    }
    ws.close(None).await.expect("close writer");
    while let Some(Ok(_)) = ws.next().await {}
}

/// Reads a channel's reader end to its close: (binary bytes, text frames).
async fn read_channel(base: &str, reader: &Value) -> (Vec<u8>, Vec<String>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(channel_url(base, reader))
        .await
        .expect("connect reader");
    let mut bytes = Vec::new();
    let mut texts = Vec::new();
    while let Some(m) = tokio::time::timeout(CALL_WAIT, ws.next())
        .await
        .expect("channel stalled")
    {
        match m.expect("channel frame") {
            Message::Binary(b) => bytes.extend_from_slice(&b),
            Message::Text(t) => texts.push(t.to_string()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    (bytes, texts)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Deterministic incompressible-looking bytes (xorshift), so a transfer bug cannot hide in
/// repeated content.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// Polls `f` until it is true; panics with `what` after `limit` (a liveness bound).
async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every trace a sandbox could leave on the host: its state dir, a mount naming it, a process
/// whose command line names it, a cgroup dir named after it.
fn leftovers(root: &StateRoot, id: &str) -> Vec<String> {
    let mut found = Vec::new();
    if root.dir_of(id).exists() {
        found.push(format!("state dir {}", root.dir_of(id).display()));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mounts.lines().filter(|l| l.contains(id)) {
        found.push(format!("mount {l}"));
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.filter_map(Result::ok) {
            let name = p.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(id) {
                found.push(format!(
                    "process {name}: {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
            }
        }
    }
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let path = e.path();
            if !path.is_dir() || path.is_symlink() {
                continue;
            }
            if e.file_name().to_string_lossy().contains(id) {
                found.push(format!("cgroup {}", path.display()));
            } else if depth < 3 {
                stack.push((path, depth + 1));
            }
        }
    }
    found
}

fn init_pid(root: &StateRoot, id: &str) -> Option<i32> {
    std::fs::read_to_string(root.dir_of(id).join("init.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn kill9(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Children of `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            if let Ok(p) = e.file_name().to_string_lossy().parse() {
                out.push(p);
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn catalog_exec_shapes_env_stdin_workdir_and_request_errors() {
    let s = tokio::task::spawn_blocking(|| start(BASE_CONFIG, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;

    let cat = c.ok("sandbox::catalog::list", json!({"ignored": 1})).await;
    let names: Vec<&str> = cat["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(&names[..2], ["python", "node"], "{cat}");
    assert_eq!(cat["images"][0]["kind"], "preset");
    assert_eq!(c.list_ids().await, Vec::<String>::new());

    // Create: env as a map, validated and sorted; as a list, passed through.
    let env = c
        .err(
            "sandbox::create",
            json!({"image": "python", "env": {"1BAD": "x", "OK": "y", "BAD-TOO": "z"}}),
        )
        .await;
    assert_code(&env, "S001", "validation", "invalid request: ");
    let m = env["message"].as_str().unwrap();
    assert!(
        m.contains("1BAD") && m.contains("BAD-TOO") && !m.contains("OK,"),
        "{m}"
    );
    assert_eq!(env["fix_note"], "see message: examples are inline");

    let id = c
        .create(json!({"image": "python", "name": "shapes", "env": {"GREETING": "hi", "B": "2"}}))
        .await;
    let listed = c.ok("sandbox::list", json!({})).await;
    let row = &listed["sandboxes"][0];
    assert_eq!(row["sandbox_id"], id.as_str());
    assert_eq!(row["name"], "shapes");
    assert_eq!(row["image"], "python");
    assert_eq!(row["stopped"], false);
    assert_eq!(row["exec_in_flight"], 0);
    assert_eq!(row["exec_slots_free"], 4);
    assert!(row["age_secs"].is_u64(), "{row}");

    // The three command shapes.
    let r = c.exec(&id, json!({"argv": ["echo", "a b", "c"]})).await;
    assert_eq!(r["stdout"], "a b c\n", "{r}");
    assert_eq!(
        (
            r["exit_code"].clone(),
            r["success"].clone(),
            r["timed_out"].clone()
        ),
        (json!(0), json!(true), json!(false))
    );
    assert!(r["duration_ms"].is_u64(), "{r}");
    let r = c.exec(&id, json!({"cmd": "echo 'x  y' z"})).await;
    assert_eq!(
        r["stdout"], "x  y z\n",
        "shlex split keeps the quoted run: {r}"
    );
    let r = c.exec(&id, json!({"cmd": "echo", "args": ["p  q"]})).await;
    assert_eq!(r["stdout"], "p  q\n", "{r}");
    let r = c.exec(&id, json!({"cmd": "echo $HOME"})).await;
    assert_eq!(r["stdout"], "$HOME\n", "not a shell: {r}");

    // Boot env (map form at create), exec env as a list and as a map, layered on top.
    let r = c.sh(&id, "echo $GREETING-$B").await;
    assert_eq!(r["stdout"], "hi-2\n", "{r}");
    let r = c
        .exec(
            &id,
            json!({"argv": ["sh", "-c", "echo $GREETING-$X-$Y"], "env": ["X=1", "GREETING=over"]}),
        )
        .await;
    assert_eq!(r["stdout"], "over-1-\n", "{r}");
    let r = c
        .exec(
            &id,
            json!({"argv": ["sh", "-c", "echo $X-$Y"], "env": {"Y": "m", "X": "n"}}),
        )
        .await;
    assert_eq!(r["stdout"], "n-m\n", "{r}");

    // stdin (base64), absent stdin is an immediate EOF, workdir, stderr, non-zero exit.
    let r = c
        .exec(
            &id,
            json!({"argv": ["cat"], "stdin": b64(b"from stdin\n\x01")}),
        )
        .await;
    assert_eq!(r["stdout"], "from stdin\n\u{1}", "{r}");
    let r = c.exec(&id, json!({"argv": ["cat"]})).await;
    assert_eq!(r["stdout"], "", "{r}");
    let r = c.exec(&id, json!({"argv": ["cat"], "stdin": ""})).await;
    assert_eq!(r["stdout"], "", "{r}");
    let r = c
        .exec(&id, json!({"argv": ["pwd"], "workdir": "/tmp"}))
        .await;
    assert_eq!(r["stdout"], "/tmp\n", "{r}");
    let r = c.exec(&id, json!({"argv": ["pwd"]})).await;
    // As upstream's dispatcher: `/` unless the exec names a workdir (`/workspace` exists).
    assert_eq!(r["stdout"], "/\n", "the default cwd: {r}");
    let r = c.sh(&id, "echo out; echo err >&2; exit 3").await;
    assert_eq!(
        (r["stdout"].as_str(), r["stderr"].as_str()),
        (Some("out\n"), Some("err\n"))
    );
    assert_eq!(
        (r["exit_code"].clone(), r["success"].clone()),
        (json!(3), json!(false))
    );
    let r = c
        .exec(
            &id,
            json!({"argv": ["python3", "-c", "import sys; print(sys.version_info[0])"]}),
        )
        .await;
    assert_eq!(r["stdout"], "3\n", "{r}");

    // Synthetic 127 / 126.
    let r = c
        .exec(&id, json!({"argv": ["no-such-program-here", "x"]}))
        .await;
    assert_eq!(r["exit_code"], 127, "{r}");
    assert_eq!(
        r["stderr"], "exec: no-such-program-here: not found\n",
        "{r}"
    );
    assert_eq!(r["success"], false);
    c.write(&id, "/workspace/noexec.sh", "#!/bin/sh\necho hi\n")
        .await;
    let r = c.exec(&id, json!({"argv": ["/workspace/noexec.sh"]})).await;
    assert_eq!(r["exit_code"], 126, "{r}");
    assert_eq!(
        r["stderr"], "exec: /workspace/noexec.sh: permission denied\n",
        "{r}"
    );

    // Output over 1 MiB per stream is capped, the rest drained.
    let r = c
        .sh(&id, "head -c 3000000 /dev/zero | tr '\\0' a; echo done >&2")
        .await;
    assert_eq!(
        r["stdout"].as_str().map(str::len),
        Some(1 << 20),
        "capped at 1 MiB"
    );
    assert_eq!(r["stderr"], "done\n");
    assert_eq!(r["exit_code"], 0);

    // S001 shapes.
    let bad = |data: Value| {
        let mut d = data;
        d["sandbox_id"] = json!(id);
        d
    };
    for (data, needle) in [
        (json!({"argv": ["echo"], "cmd": "echo"}), "argv"),
        (json!({"cmd": "echo 'unbalanced"}), "quote"),
        (json!({"cmd": "echo two words", "args": ["x"]}), "ambiguous"),
        (json!({}), "command"),
        (json!({"argv": []}), "command"),
        (json!({"cmd": "   "}), "command"),
        (
            json!({"argv": ["cat"], "stdin": "!!not base64!!"}),
            "base64",
        ),
    ] {
        let env = c.err("sandbox::exec", bad(data.clone())).await;
        assert_code(&env, "S001", "validation", "invalid request: ");
        assert!(
            env["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains(needle),
            "{data} → {env}"
        );
    }
    let env = c
        .err(
            "sandbox::fs::write",
            json!({"sandbox_id": id, "path": "/tmp/x", "content": "a", "content_b64": "YQ=="}),
        )
        .await;
    assert_code(&env, "S001", "validation", "invalid request: ");
    let env = c
        .err(
            "sandbox::fs::write",
            json!({"sandbox_id": id, "path": "/tmp/x"}),
        )
        .await;
    assert_code(&env, "S001", "validation", "invalid request: ");
    let env = c
        .err(
            "sandbox::fs::write",
            json!({"sandbox_id": id, "path": "/tmp/x", "content_b64": "%%%"}),
        )
        .await;
    assert_code(&env, "S001", "validation", "invalid request: ");

    // Bad and unknown ids, on every function that takes one.
    for f in [
        "sandbox::exec",
        "sandbox::stop",
        "sandbox::fs::ls",
        "sandbox::fs::read",
    ] {
        let env = c
            .err(
                f,
                json!({"sandbox_id": "not-a-uuid", "argv": ["true"], "path": "/"}),
            )
            .await;
        assert_code(
            &env,
            "S001",
            "validation",
            "invalid request: sandbox_id is not a valid UUID",
        );
        let ghost = uuid::Uuid::new_v4().to_string();
        let env = c
            .err(
                f,
                json!({"sandbox_id": ghost, "argv": ["true"], "path": "/"}),
            )
            .await;
        assert_code(
            &env,
            "S002",
            "validation",
            &format!("sandbox not found: {ghost}"),
        );
        assert_eq!(
            env["fix_note"],
            "the sandbox is gone; call sandbox::create first"
        );
    }
    // A missing required field names the field.
    let r = c.call("sandbox::create", json!({})).await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("image"),
        "{r}"
    );

    // S200: the exec timeout kills the child and is an error.
    let t0 = Instant::now();
    let env = c
        .err(
            "sandbox::exec",
            json!({"sandbox_id": id, "argv": ["sleep", "30"], "timeout_ms": 300}),
        )
        .await;
    assert_code(&env, "S200", "execution", "exec timed out after 300 ms");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the timeout did not fire"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .sh(
                &id,
                "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -cx sleep || true",
            )
            .await;
        if r["stdout"] == "0\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out child still runs: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stop, then it is gone: S002 for everything, and a second stop.
    c.stop(&id).await;
    let env = c.err("sandbox::stop", json!({"sandbox_id": id})).await;
    assert_code(&env, "S002", "validation", "sandbox not found: ");
    let env = c
        .err("sandbox::exec", json!({"sandbox_id": id, "argv": ["true"]}))
        .await;
    assert_code(&env, "S002", "validation", "sandbox not found: ");
    assert_eq!(c.list_ids().await, Vec::<String>::new());
    assert_eq!(leftovers(&s.root, &id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_functions_and_their_error_codes() {
    let s = tokio::task::spawn_blocking(|| start(BASE_CONFIG, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;
    let lower = presets()[0].1.clone();
    let lower_hash_before = sha(&std::fs::read(&lower).expect("read lower"));
    let id = c.create(json!({"image": "python"})).await;
    let f = |extra: Value| {
        let mut d = extra;
        d["sandbox_id"] = json!(id);
        d
    };

    // mkdir: parents, existing with and without parents.
    assert_eq!(
        c.ok(
            "sandbox::fs::mkdir",
            f(json!({"path": "/workspace/a/b", "parents": true}))
        )
        .await,
        json!({"created": true})
    );
    assert_eq!(
        c.ok(
            "sandbox::fs::mkdir",
            f(json!({"path": "/workspace/a/b", "parents": true}))
        )
        .await,
        json!({"created": false})
    );
    let env = c
        .err("sandbox::fs::mkdir", f(json!({"path": "/workspace/a/b"})))
        .await;
    assert_code(&env, "S213", "filesystem", "already exists: /workspace/a/b");
    assert!(env["fix"].is_null() && env["fix_note"].is_null(), "{env}");
    let env = c
        .err("sandbox::fs::mkdir", f(json!({"path": "/workspace/x/y/z"})))
        .await;
    assert_code(&env, "S211", "filesystem", "");

    // write: a missing parent is the recoverable S211 with fix {parents: true}.
    let env = c
        .err(
            "sandbox::fs::write",
            f(json!({"path": "/workspace/new/dir/f.txt", "content": "x"})),
        )
        .await;
    assert_code(&env, "S211", "filesystem", "parent directory not found: ");
    assert_eq!(env["fix"], json!({"parents": true}), "{env}");
    assert!(
        env["fix_note"]
            .as_str()
            .is_some_and(|n| n.contains("parents: true")),
        "{env}"
    );
    let r = c.ok("sandbox::fs::write", f(json!({"path": "/workspace/new/dir/f.txt", "content": "hello\nworld\n", "parents": true}))).await;
    assert_eq!(r["bytes_written"], 12, "{r}");
    assert_eq!(r["path"], "/workspace/new/dir/f.txt", "{r}");
    let r = c.ok("sandbox::fs::write", f(json!({"path": "/workspace/bin.dat", "content_b64": b64(&[0, 159, 146, 150, 255]), "mode": "0600"}))).await;
    assert_eq!(r["bytes_written"], 5);

    // stat / ls: both name the entry itself (its last path component).
    let st = c
        .ok(
            "sandbox::fs::stat",
            f(json!({"path": "/workspace/bin.dat"})),
        )
        .await;
    assert_eq!(
        (
            st["name"].as_str(),
            st["is_dir"].as_bool(),
            st["size"].as_u64(),
            st["mode"].as_str(),
            st["is_symlink"].as_bool()
        ),
        (
            Some("bin.dat"),
            Some(false),
            Some(5),
            Some("0600"),
            Some(false)
        ),
        "{st}"
    );
    assert!(
        st["mtime"].as_i64().is_some_and(|t| t > 1_600_000_000),
        "{st}"
    );
    let ls = c
        .ok("sandbox::fs::ls", f(json!({"path": "/workspace"})))
        .await;
    let mut names: Vec<&str> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "bin.dat", "new"], "{ls}");
    let a = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "a")
        .unwrap();
    assert_eq!(a["is_dir"], true);
    c.sh(&id, "ln -s /workspace/bin.dat /workspace/link").await;
    let st = c
        .ok("sandbox::fs::stat", f(json!({"path": "/workspace/link"})))
        .await;
    assert_eq!(st["is_symlink"], true, "lstat, not followed: {st}");
    assert_eq!(st["name"], "link", "stat names the entry as ls does: {st}");
    let env = c
        .err("sandbox::fs::stat", f(json!({"path": "/workspace/nope"})))
        .await;
    assert_code(
        &env,
        "S211",
        "filesystem",
        "file not found: /workspace/nope",
    );
    assert!(env["fix"].is_null(), "{env}");
    let env = c
        .err("sandbox::fs::ls", f(json!({"path": "/workspace/bin.dat"})))
        .await;
    assert_code(&env, "S212", "filesystem", "");

    // read: small UTF-8 → inline body and the same bytes on the channel; binary → channel only.
    let r = c
        .ok(
            "sandbox::fs::read",
            f(json!({"path": "/workspace/new/dir/f.txt"})),
        )
        .await;
    assert_eq!(r["body"], "hello\nworld\n", "{r}");
    assert_eq!(
        (r["size"].as_u64(), r["content"]["direction"].as_str()),
        (Some(12), Some("read")),
        "{r}"
    );
    assert!(r["mtime"].is_i64() && r["mode"].is_string(), "{r}");
    let (bytes, texts) = read_channel(&c.url, &r["content"]).await;
    assert_eq!((bytes.as_slice(), texts.len()), (&b"hello\nworld\n"[..], 0));
    let r = c
        .ok(
            "sandbox::fs::read",
            f(json!({"path": "/workspace/bin.dat"})),
        )
        .await;
    assert!(
        r.get("body").is_none_or(Value::is_null),
        "invalid UTF-8 has no body: {r}"
    );
    let (bytes, _) = read_channel(&c.url, &r["content"]).await;
    assert_eq!(bytes, [0, 159, 146, 150, 255]);
    let env = c
        .err("sandbox::fs::read", f(json!({"path": "/workspace/a"})))
        .await;
    assert_code(&env, "S212", "filesystem", "");
    let env = c
        .err("sandbox::fs::read", f(json!({"path": "/workspace/none"})))
        .await;
    assert_code(
        &env,
        "S211",
        "filesystem",
        "file not found: /workspace/none",
    );

    // chmod / mv / rm.
    let r = c
        .ok(
            "sandbox::fs::chmod",
            f(json!({"path": "/workspace/bin.dat", "mode": "0640"})),
        )
        .await;
    assert_eq!(r, json!({"updated": 1}));
    assert_eq!(
        c.sh(&id, "stat -c %a /workspace/bin.dat").await["stdout"],
        "640\n"
    );
    let r = c
        .ok(
            "sandbox::fs::chmod",
            f(json!({"path": "/workspace/a", "mode": "0700", "recursive": true})),
        )
        .await;
    assert_eq!(r, json!({"updated": 2}), "a and a/b");
    let env = c
        .err(
            "sandbox::fs::chmod",
            f(json!({"path": "/proc/1", "mode": "0700"})),
        )
        .await;
    assert_code(&env, "S215", "filesystem", "permission denied: ");
    assert_eq!(
        c.ok(
            "sandbox::fs::mv",
            f(json!({"src": "/workspace/bin.dat", "dst": "/workspace/moved.dat"}))
        )
        .await,
        json!({"moved": true})
    );
    c.write(&id, "/workspace/other.txt", "o").await;
    let env = c
        .err(
            "sandbox::fs::mv",
            f(json!({"src": "/workspace/other.txt", "dst": "/workspace/moved.dat"})),
        )
        .await;
    assert_code(
        &env,
        "S213",
        "filesystem",
        "already exists: /workspace/moved.dat",
    );
    assert_eq!(c.ok("sandbox::fs::mv", f(json!({"src": "/workspace/other.txt", "dst": "/workspace/moved.dat", "overwrite": true}))).await, json!({"moved": true}));
    let env = c
        .err("sandbox::fs::rm", f(json!({"path": "/workspace/new"})))
        .await;
    assert_code(
        &env,
        "S214",
        "filesystem",
        "directory not empty: /workspace/new",
    );
    assert_eq!(
        c.ok(
            "sandbox::fs::rm",
            f(json!({"path": "/workspace/new", "recursive": true}))
        )
        .await,
        json!({"removed": true})
    );
    let env = c
        .err("sandbox::fs::rm", f(json!({"path": "/workspace/new"})))
        .await;
    assert_code(&env, "S211", "filesystem", "file not found: /workspace/new");
    // The sandbox's /sys is a read-only mount: refused like a permission problem.
    let env = c
        .err(
            "sandbox::fs::write",
            f(json!({"path": "/sys/iii-test", "content": "x"})),
        )
        .await;
    assert_code(&env, "S215", "filesystem", "permission denied: ");
    // Any other I/O failure (here ENAMETOOLONG) is S216.
    let long = format!("/workspace/{}", "n".repeat(300));
    let env = c.err("sandbox::fs::mkdir", f(json!({"path": long}))).await;
    assert_code(&env, "S216", "filesystem", "fs i/o error: ");

    // grep.
    c.write(
        &id,
        "/workspace/src/a.py",
        "import os\nPRINT = 1\nprint('x')\n",
    )
    .await;
    c.write(&id, "/workspace/src/b.txt", "print nothing\n")
        .await;
    c.write(
        &id,
        "/workspace/src/deep/c.py",
        &format!("print({})\n", "9".repeat(100)),
    )
    .await;
    c.ok(
        "sandbox::fs::write",
        f(json!({"path": "/workspace/src/blob.py", "content_b64": b64(b"print\0\x01\x02binary")})),
    )
    .await;
    let r = c
        .ok(
            "sandbox::fs::grep",
            f(json!({"path": "/workspace/src", "pattern": "^print"})),
        )
        .await;
    let mut hits: Vec<(String, u64)> = r["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_string(),
                m["line"].as_u64().unwrap(),
            )
        })
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            ("/workspace/src/a.py".to_string(), 3),
            ("/workspace/src/b.txt".into(), 1),
            ("/workspace/src/deep/c.py".into(), 1)
        ],
        "binary files skipped: {r}"
    );
    assert_eq!(r["truncated"], false);
    let r = c.ok("sandbox::fs::grep", f(json!({"path": "/workspace/src", "pattern": "^print", "ignore_case": true, "include_glob": ["*.py"], "recursive": false}))).await;
    let hits: Vec<(&str, u64, &str)> = r["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap(),
                m["line"].as_u64().unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            ("/workspace/src/a.py", 2, "PRINT = 1"),
            ("/workspace/src/a.py", 3, "print('x')")
        ],
        "{r}"
    );
    let r = c.ok("sandbox::fs::grep", f(json!({"path": "/workspace/src", "pattern": "print", "exclude_glob": ["*.txt"], "max_matches": 1}))).await;
    assert_eq!(
        (
            r["matches"].as_array().map(Vec::len),
            r["truncated"].as_bool()
        ),
        (Some(1), Some(true)),
        "{r}"
    );
    let r = c
        .ok(
            "sandbox::fs::grep",
            f(json!({"path": "/workspace/src/deep/c.py", "pattern": "9+", "max_line_bytes": 10})),
        )
        .await;
    let line = r["matches"][0]["content"].as_str().unwrap();
    assert!(line.ends_with('…') && line.starts_with("print(999"), "{r}");
    let env = c
        .err(
            "sandbox::fs::grep",
            f(json!({"path": "/workspace/src", "pattern": "(unclosed"})),
        )
        .await;
    assert_code(&env, "S217", "filesystem", "invalid regex pattern: ");

    // sed.
    let r = c.ok("sandbox::fs::sed", f(json!({"files": ["/workspace/src/a.py"], "pattern": "print\\('(\\w)'\\)", "replacement": "log('$1')"}))).await;
    assert_eq!(r["total_replacements"], 1, "{r}");
    assert_eq!(r["results"][0]["success"], true);
    assert_eq!(
        c.sh(&id, "cat /workspace/src/a.py").await["stdout"],
        "import os\nPRINT = 1\nlog('x')\n"
    );
    let r = c.ok("sandbox::fs::sed", f(json!({"path": "/workspace/src", "include_glob": ["*.py"], "pattern": "9", "replacement": "8", "regex": false, "first_only": true}))).await;
    assert_eq!(
        r["total_replacements"], 1,
        "first_only, one .py file has 9s: {r}"
    );
    assert!(c.sh(&id, "cat /workspace/src/deep/c.py").await["stdout"]
        .as_str()
        .unwrap()
        .starts_with("print(89"));
    let r = c.ok("sandbox::fs::sed", f(json!({"path": "/workspace/src", "pattern": "PRINT", "replacement": "shout", "ignore_case": true, "include_glob": ["*.txt"]}))).await;
    assert_eq!(r["total_replacements"], 1, "{r}");
    let env = c.err("sandbox::fs::sed", f(json!({"files": ["/workspace/src/a.py"], "path": "/workspace/src", "pattern": "a", "replacement": "b"}))).await;
    assert_code(&env, "S210", "filesystem", "");
    let env = c
        .err(
            "sandbox::fs::sed",
            f(json!({"pattern": "a", "replacement": "b"})),
        )
        .await;
    assert_code(&env, "S210", "filesystem", "");
    let env = c.err("sandbox::fs::sed", f(json!({"path": "/workspace/src", "recursive": false, "pattern": "a", "replacement": "b"}))).await;
    assert_code(&env, "S210", "filesystem", "");
    let env = c
        .err(
            "sandbox::fs::sed",
            f(json!({"files": ["/workspace/src/a.py"], "pattern": "[", "replacement": "b"})),
        )
        .await;
    assert_code(&env, "S217", "filesystem", "invalid regex pattern: ");

    // More than 1 MiB each way through data channels.
    let big = noise(3 * 1024 * 1024 + 123, 7);
    let (writer, reader) = c.channel().await;
    let pump = tokio::spawn(write_channel(c.url.clone(), writer, big.clone()));
    let r = c
        .ok(
            "sandbox::fs::write",
            f(json!({"path": "/workspace/big.bin", "content": reader})),
        )
        .await;
    pump.await.unwrap();
    assert_eq!(r["bytes_written"], big.len() as u64, "{r}");
    assert_eq!(
        c.sh(&id, "sha256sum /workspace/big.bin | cut -d' ' -f1")
            .await["stdout"],
        format!("{}\n", sha(&big))
    );
    let r = c
        .ok(
            "sandbox::fs::read",
            f(json!({"path": "/workspace/big.bin"})),
        )
        .await;
    assert!(
        r.get("body").is_none_or(Value::is_null),
        "no inline body over 1 MiB"
    );
    assert_eq!(r["size"], big.len() as u64);
    let (bytes, _) = read_channel(&c.url, &r["content"]).await;
    assert_eq!(sha(&bytes), sha(&big), "{} bytes came back", bytes.len());

    // Nothing a sandbox writes reaches the shared image.
    c.stop(&id).await;
    assert_eq!(
        sha(&std::fs::read(&lower).unwrap()),
        lower_hash_before,
        "the cached lower changed"
    );
    assert_eq!(leftovers(&s.root, &id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn four_execs_run_a_fifth_gets_s003_and_a_stopping_sandbox_is_s004() {
    let s = tokio::task::spawn_blocking(|| start(BASE_CONFIG, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;
    let id = c.create(json!({"image": "python"})).await;
    let mut running = Vec::new();
    for i in 0..4 {
        let mut ci = s.client().await;
        let id = id.clone();
        running.push(tokio::spawn(async move {
            ci.exec(
                &id,
                json!({"argv": ["sh", "-c", format!("sleep 2; echo {i}")]}),
            )
            .await
        }));
    }
    let mut in_flight = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_flight < 4 {
        assert!(
            Instant::now() < deadline,
            "4 execs never in flight together"
        );
        let l = c.ok("sandbox::list", json!({})).await;
        in_flight = l["sandboxes"][0]["exec_in_flight"].as_u64().unwrap_or(0);
        if in_flight == 4 {
            assert_eq!(l["sandboxes"][0]["exec_slots_free"], 0, "{l}");
            assert_eq!(l["sandboxes"][0]["exec_in_progress"], true, "{l}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let env = c
        .err("sandbox::exec", json!({"sandbox_id": id, "argv": ["true"]}))
        .await;
    assert_code(
        &env,
        "S003",
        "validation",
        &format!("sandbox {id} is at its exec concurrency cap"),
    );
    // fs::* is not gated by exec admission.
    c.write(&id, "/tmp/during", "x").await;
    let mut outs: Vec<String> = Vec::new();
    for r in running {
        outs.push(r.await.unwrap()["stdout"].as_str().unwrap().to_string());
    }
    outs.sort();
    assert_eq!(outs, ["0\n", "1\n", "2\n", "3\n"]);
    assert_eq!(
        c.exec(&id, json!({"argv": ["true"]})).await["exit_code"],
        0,
        "slots are free again"
    );

    // S004: a stop in progress has already marked the sandbox stopped. Many files in its upper
    // make the removal take a while; calls sent meanwhile see S004 until the entry is gone
    // (then S002).
    let r = c
        .exec(
            &id,
            json!({"argv": ["python3", "-c", "import os\nos.mkdir('/workspace/many')\nfor i in range(40000): open(f'/workspace/many/f{i}', 'w').close()"]}),
        )
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let mut stopper = s.client().await;
    let sid = id.clone();
    let stopping = tokio::spawn(async move { stopper.stop(&sid).await });
    // Probes that return at once whatever the sandbox does: two callers of fs::stat, so one
    // caught in flight when the sandbox dies does not hide the window.
    let mut probes = Vec::new();
    for _ in 0..2 {
        let mut p = s.client().await;
        let id = id.clone();
        probes.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let r = p
                    .call("sandbox::fs::stat", json!({"sandbox_id": id, "path": "/"}))
                    .await;
                match envelope(&r) {
                    Some(e) if e["code"] == "S004" => return Some(e),
                    Some(e) if e["code"] == "S002" => return None,
                    _ => {}
                }
            }
            None
        }));
    }
    stopping.await.unwrap();
    let mut s004 = None;
    for p in probes {
        if let Some(e) = p.await.unwrap() {
            s004 = Some(e);
        }
    }
    let env = s004.expect("a call during the stop sees S004 (the stop finished first?)");
    assert_code(
        &env,
        "S004",
        "validation",
        &format!("sandbox already stopped: {id}"),
    );
    assert_eq!(
        env["fix_note"],
        "the sandbox is gone; call sandbox::create first"
    );
    assert_eq!(leftovers(&s.root, &id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_limits_catalog_and_image_errors() {
    let root = std::env::temp_dir().join(format!("iii-sbimg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(root.join("not-a-layout")).unwrap();
    let missing = root.join("never-imported");
    let config = format!(
        "      runtime: namespace\n      auto_install: true\n      image_allowlist: [python, broken]\n      max_concurrent_sandboxes: 1\n      per_image_caps: {{python: {{max_cpus: 1, max_memory_mb: 256}}}}\n      custom_images: {{broken: \"{}\", zeta: \"{}\"}}\n",
        root.join("not-a-layout").display(),
        missing.display()
    );
    let s = tokio::task::spawn_blocking(move || start(&config, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;

    let cat = c.ok("sandbox::catalog::list", json!({})).await;
    let names: Vec<(&str, &str)> = cat["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("python", "preset"),
            ("node", "preset"),
            ("broken", "custom"),
            ("zeta", "custom")
        ],
        "{cat}"
    );

    // S100: a preset that is not allowlisted, a name that is nowhere, a custom key not allowlisted.
    for image in ["node", "ruby", "zeta"] {
        let env = c.err("sandbox::create", json!({"image": image})).await;
        assert_code(
            &env,
            "S100",
            "config",
            &format!("image '{image}' not in catalog"),
        );
    }
    // S400 per-image caps.
    let env = c
        .err("sandbox::create", json!({"image": "python", "cpus": 2}))
        .await;
    assert_code(
        &env,
        "S400",
        "config",
        "resource limit exceeded: cpus=2 exceeds per-image cap 1",
    );
    let env = c
        .err(
            "sandbox::create",
            json!({"image": "python", "memory_mb": 512}),
        )
        .await;
    assert_code(
        &env,
        "S400",
        "config",
        "resource limit exceeded: memory_mb=512 exceeds per-image cap 256",
    );
    // S102: auto-install of a custom image that is not an image.
    let env = c.err("sandbox::create", json!({"image": "broken"})).await;
    assert_code(
        &env,
        "S102",
        "transient",
        "auto-install failed for image 'broken': ",
    );
    // S400 max sandboxes: the second one.
    let id = c.create(json!({"image": "python", "memory_mb": 256})).await;
    let env = c
        .err(
            "sandbox::create",
            json!({"image": "python", "memory_mb": 128}),
        )
        .await;
    assert_code(
        &env,
        "S400",
        "config",
        "resource limit exceeded: max_concurrent_sandboxes (1) reached",
    );
    c.stop(&id).await;
    let id = c.create(json!({"image": "python", "memory_mb": 128})).await;
    c.stop(&id).await;
    drop(s);

    // S101: auto_install off and custom images that are not in the cache (one on disk, never
    // imported; one whose path is gone).
    let config = format!(
        "      runtime: namespace\n      auto_install: false\n      image_allowlist: [python, zeta, gone]\n      custom_images: {{zeta: \"{}\", gone: \"{}\"}}\n",
        root.join("not-a-layout").display(),
        missing.display()
    );
    let s = tokio::task::spawn_blocking(move || start(&config, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;
    for image in ["zeta", "gone"] {
        let env = c.err("sandbox::create", json!({"image": image})).await;
        assert_code(
            &env,
            "S101",
            "internal",
            &format!("rootfs missing on disk for image '{image}'"),
        );
    }
    // A cached preset still boots without auto_install.
    let id = c.create(json!({"image": "python"})).await;
    c.stop(&id).await;
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_run_defaults_lang_and_wraps_step_failures() {
    let s = tokio::task::spawn_blocking(|| start(BASE_CONFIG, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;

    // Seed 001's example: no lang, the preset decides.
    let r = c
        .call_for(
            "sandbox::run",
            json!({"image": "python", "code": "print(2+2)"}),
            CREATE_WAIT,
        )
        .await;
    assert_eq!(r["result"]["stdout"], "4\n", "{r}");
    assert_eq!(r["result"]["exit_code"], 0);
    assert!(r["result"].get("sandbox_id").is_none(), "{r}");
    let r = c
        .call_for(
            "sandbox::run",
            json!({"image": "node", "code": "const m = require('/workspace/lib/m.js'); console.log(m.x, process.env.K)", "files": [{"path": "/workspace/lib/m.js", "content": "exports.x = 42"}], "env": {"K": "v"}}),
            CREATE_WAIT,
        )
        .await;
    assert_eq!(r["result"]["stdout"], "42 v\n", "{r}");
    let r = c
        .call_for("sandbox::run", json!({"image": "python", "lang": "sh", "code": "read x; echo got $x; exit 5", "stdin": b64(b"it\n")}), CREATE_WAIT)
        .await;
    assert_eq!(
        (
            r["result"]["stdout"].as_str(),
            r["result"]["exit_code"].as_i64(),
            r["result"]["success"].as_bool()
        ),
        (Some("got it\n"), Some(5), Some(false)),
        "{r}"
    );
    assert_eq!(
        c.list_ids().await,
        Vec::<String>::new(),
        "run stops its sandbox"
    );

    // keep_sandbox: the id comes back and the sandbox stays.
    let r = c
        .call_for("sandbox::run", json!({"image": "python", "code": "open('/workspace/kept','w').write('k')", "keep_sandbox": true}), CREATE_WAIT)
        .await;
    let kept = r["result"]["sandbox_id"]
        .as_str()
        .expect("sandbox_id with keep_sandbox")
        .to_string();
    assert_eq!(c.list_ids().await, vec![kept.clone()]);
    assert_eq!(c.sh(&kept, "cat /workspace/kept").await["stdout"], "k");
    c.stop(&kept).await;

    // Only a preset implies the language.
    let env = c
        .err("sandbox::run", json!({"image": "ruby", "code": "x"}))
        .await;
    assert_code(
        &env,
        "S001",
        "validation",
        "invalid request: `lang` is required",
    );

    // RunStepFailed: the inner code and category, the step in message and fix.
    let r = c
        .call_for(
            "sandbox::run",
            json!({"image": "ruby", "lang": "ruby", "code": "x"}),
            CREATE_WAIT,
        )
        .await;
    let env = envelope(&r).expect("envelope");
    assert_code(
        &env,
        "S100",
        "config",
        "during sandbox::run step `create` (sandbox_id=): image 'ruby' not in catalog",
    );
    assert_eq!(
        env["fix"],
        json!({"context": "during sandbox::run step `create`", "sandbox_id": "", "inner_code": "S100"})
    );
    let r = c
        .call_for(
            "sandbox::run",
            json!({"image": "python", "code": "import time; time.sleep(30)", "timeout_ms": 300}),
            CREATE_WAIT,
        )
        .await;
    let env = envelope(&r).expect("envelope");
    let sid = env["fix"]["sandbox_id"]
        .as_str()
        .expect("fix.sandbox_id")
        .to_string();
    assert!(uuid::Uuid::parse_str(&sid).is_ok(), "{env}");
    assert_code(
        &env,
        "S200",
        "execution",
        &format!("during sandbox::run step `exec` (sandbox_id={sid}): exec timed out after 300 ms"),
    );
    assert_eq!(
        env["fix"],
        json!({"context": "during sandbox::run step `exec`", "sandbox_id": sid, "inner_code": "S200"})
    );
    let r = c
        .call_for("sandbox::run", json!({"image": "python", "code": "x", "files": [{"path": "/sys/nope/f", "content": "x"}]}), CREATE_WAIT)
        .await;
    let env = envelope(&r).expect("envelope");
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .starts_with("during sandbox::run step `fs::write (sibling file)`"),
        "{env}"
    );
    assert_eq!(
        env["fix"]["context"],
        "during sandbox::run step `fs::write (sibling file)`"
    );
    assert_eq!(env["fix"]["inner_code"], env["code"]);
    assert_eq!(
        c.list_ids().await,
        Vec::<String>::new(),
        "a failed run stops its sandbox too"
    );
    assert_eq!(
        s.root.entries(),
        Vec::<String>::new(),
        "no sandbox dir left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_create_exec_upload_download_list_stop_run() {
    let s = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| start(BASE_CONFIG, &[]))
            .await
            .unwrap(),
    );
    let cli = |args: Vec<String>| {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            s.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // SB=$(iii worker sandbox create python): the id alone on stdout.
    let (code, out, err) = cli(v(&[
        "create",
        "python",
        "--name",
        "cli",
        "-e",
        "FROM_CLI=yes",
        "-e",
        "junk",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let sb = out.strip_suffix('\n').expect("one line").to_string();
    assert!(
        uuid::Uuid::parse_str(&sb).is_ok(),
        "stdout must be only the id: {out:?}"
    );
    assert!(!err.contains('✓'), "no TTY, no ready line: {err}");

    let (code, out, err) = cli(v(&[
        "exec",
        &sb,
        "--",
        "python3",
        "-c",
        "import os; print(2+2, os.environ['FROM_CLI'])",
    ]))
    .await
    .unwrap();
    assert_eq!((code, out.as_str()), (0, "4 yes\n"), "{err}");
    let (code, out, err) = cli(v(&[
        "exec",
        "-e",
        "X=1",
        &sb,
        "sh",
        "-c",
        "echo $X; echo e >&2; exit 7",
    ]))
    .await
    .unwrap();
    assert_eq!((code, out.as_str(), err.as_str()), (7, "1\n", "e\n"));
    let (code, _, err) = cli(v(&["exec", "--timeout", "300ms", &sb, "sleep", "30"]))
        .await
        .unwrap();
    assert_eq!(
        (code, err.trim()),
        (1, "error: [S200] exec timed out after 300 ms")
    );
    let (code, _, err) = cli(v(&["exec", "--timeout", "soon", &sb, "true"]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(v(&["exec", &sb])).await.unwrap();
    assert_eq!(code, 2, "{err}");
    let ghost = uuid::Uuid::new_v4().to_string();
    let (code, _, err) = cli(v(&["exec", &ghost, "true"])).await.unwrap();
    assert_eq!(
        (code, err.trim().to_string()),
        (1, format!("error: [S002] sandbox not found: {ghost}"))
    );
    let (code, _, err) = cli(v(&["exec", &sb, "no-such-binary"])).await.unwrap();
    assert_eq!(
        (code, err.as_str()),
        (127, "exec: no-such-binary: not found\n")
    );

    // upload (file and stdin) / download (file and stdout), over 1 MiB.
    let dir = std::env::temp_dir().join(format!("iii-sbcli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = noise(1_500_000, 3);
    let local = dir.join("up.bin");
    std::fs::write(&local, &data).unwrap();
    let l = local.to_string_lossy().into_owned();
    let (code, out, err) = cli(v(&["upload", &sb, &l, "/workspace/in/up.bin"]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with("error: [S211] parent directory not found: /workspace/in"),
        "{err}"
    );
    let (code, out, err) = cli(v(&[
        "upload",
        "--parents",
        "--mode",
        "0755",
        &sb,
        &l,
        "/workspace/in/up.bin",
    ]))
    .await
    .unwrap();
    assert_eq!(
        (code, out.trim().to_string()),
        (
            0,
            format!("uploaded 1500000 bytes to {sb}:/workspace/in/up.bin")
        ),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    let s2 = s.clone();
    let sb2 = sb.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        s2.cli_stdin(
            &["upload", &sb2, "-", "/workspace/stdin.txt"],
            Some(b"piped in\n"),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        (code, out.trim().to_string()),
        (0, format!("uploaded 9 bytes to {sb}:/workspace/stdin.txt")),
        "{err}"
    );
    let (code, out, _) = cli(v(&[
        "exec",
        &sb,
        "sh",
        "-c",
        "stat -c %a /workspace/in/up.bin; cat /workspace/stdin.txt",
    ]))
    .await
    .unwrap();
    assert_eq!((code, out.as_str()), (0, "755\npiped in\n"));
    let back = dir.join("down.bin");
    let b = back.to_string_lossy().into_owned();
    let (code, out, err) = cli(v(&["download", &sb, "/workspace/in/up.bin", &b]))
        .await
        .unwrap();
    assert_eq!(
        (code, out.trim().to_string()),
        (0, format!("downloaded 1500000 bytes to {b}")),
        "{err}"
    );
    assert_eq!(sha(&std::fs::read(&back).unwrap()), sha(&data));
    let s2 = s.clone();
    let sb2 = sb.clone();
    let (code, bytes, err) = tokio::task::spawn_blocking(move || {
        s2.cli_bytes(&["download", &sb2, "/workspace/stdin.txt", "-"], None)
    })
    .await
    .unwrap();
    assert_eq!((code, bytes.as_slice()), (0, &b"piped in\n"[..]), "{err}");
    let (code, _, err) = cli(v(&["download", &sb, "/workspace/none", &b]))
        .await
        .unwrap();
    assert_eq!(
        (code, err.trim()),
        (1, "error: [S211] file not found: /workspace/none")
    );

    // list / stop.
    let (code, out, _) = cli(v(&["list"])).await.unwrap();
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "{:<36}  {:<10}  {:<8}  NAME",
                "SANDBOX_ID", "IMAGE", "AGE_SECS"
            )
            .as_str()
        )
    );
    let row = lines.next().expect("a row");
    assert!(
        row.starts_with(&format!("{sb}  python      ")) && row.ends_with("  cli"),
        "{row:?}"
    );
    assert_eq!(lines.next(), None);
    let (code, out, _) = cli(v(&["list", "--all"])).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&sb));
    let (code, out, err) = cli(v(&["stop", &sb])).await.unwrap();
    assert_eq!(
        (code, out.trim().to_string()),
        (0, format!("stopped {sb}")),
        "{err}"
    );
    let (code, _, err) = cli(v(&["stop", &sb])).await.unwrap();
    assert_eq!(
        (code, err.trim().to_string()),
        (1, format!("error: [S002] sandbox not found: {sb}"))
    );

    // run: one shot, exit status passed through, nothing left.
    let (code, out, err) = cli(v(&["run", "python", "python3", "-c", "print(6*7)"]))
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "42\n"), "{err}");
    let (code, out, _) = cli(v(&[
        "run",
        "node",
        "node",
        "-e",
        "process.stdout.write('n'); process.exit(3)",
    ]))
    .await
    .unwrap();
    assert_eq!((code, out.as_str()), (3, "n"));
    let (code, _, _) = cli(v(&["run", "python"])).await.unwrap();
    assert_eq!(code, 2);
    let (code, _, err) = cli(v(&["run", "ruby", "true"])).await.unwrap();
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: [S100] image 'ruby' not in catalog"),
        "{err}"
    );
    let (code, out, _) = cli(v(&["list"])).await.unwrap();
    assert_eq!(
        (code, out.lines().count()),
        (0, 1),
        "only the header: {out}"
    );
    assert_eq!(s.root.entries(), Vec::<String>::new());

    // No engine on the port: the pre-check names it.
    let port = iii_tests::free_port().to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        iii_tests::run_iii(
            &["worker", "sandbox", "create", "python", "--port", &port],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: engine not running on port") && err.contains("start it with `iii`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_hog_dies_137_and_nothing_else_notices() {
    let s = tokio::task::spawn_blocking(|| start(BASE_CONFIG, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;
    let bystander = c.create(json!({"image": "python"})).await;
    let hog = c.create(json!({"image": "python", "memory_mb": 64})).await;
    let r = c
        .exec(
            &hog,
            json!({"argv": ["python3", "-c", "x = b'x' * (512 << 20); print('survived')"]}),
        )
        .await;
    assert_eq!(r["exit_code"], 137, "the hog is OOM-killed: {r}");
    assert_ne!(r["stdout"], "survived\n");
    // The hog's sandbox, the other sandbox and the engine carry on.
    assert_eq!(
        c.exec(&hog, json!({"argv": ["echo", "still here"]})).await["stdout"],
        "still here\n"
    );
    assert_eq!(
        c.exec(&bystander, json!({"argv": ["python3", "-c", "print(1)"]}))
            .await["stdout"],
        "1\n"
    );
    let h = c.ok("engine::functions::list", json!({})).await;
    assert!(h["functions"].is_array());
    c.stop(&hog).await;
    c.stop(&bystander).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reaper_stops_an_idle_sandbox() {
    let s = tokio::task::spawn_blocking(|| {
        start(BASE_CONFIG, &[("III_SANDBOX_REAP_INTERVAL_MS", "200")])
    })
    .await
    .unwrap();
    let mut c = s.client().await;
    let idle = c
        .create(json!({"image": "python", "idle_timeout_secs": 1}))
        .await;
    let busy = c
        .create(json!({"image": "python", "idle_timeout_secs": 30}))
        .await;
    // A sandbox whose init died on its own is reaped too.
    let dead = c
        .create(json!({"image": "python", "idle_timeout_secs": 30}))
        .await;
    kill9(init_pid(&s.root, &dead).expect("init.pid in the sandbox dir"));
    assert!(s.root.dir_of(&idle).exists());
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.list_ids().await.contains(&idle) {
        assert!(Instant::now() < deadline, "the idle sandbox was not reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(
        Duration::from_secs(20),
        "the reaped sandbox left traces",
        || leftovers(&s.root, &idle).is_empty(),
    )
    .await;
    let env = c
        .err(
            "sandbox::exec",
            json!({"sandbox_id": idle, "argv": ["true"]}),
        )
        .await;
    assert!(env["code"] == "S002" || env["code"] == "S004", "{env}");
    eventually(
        Duration::from_secs(20),
        "the dead sandbox left traces",
        || leftovers(&s.root, &dead).is_empty(),
    )
    .await;
    assert_eq!(
        c.list_ids().await,
        vec![busy.clone()],
        "a sandbox inside its idle timeout stays"
    );
    c.stop(&busy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_leaves_nothing_and_orphans_are_cleaned_after_an_engine_sigkill() {
    let s = tokio::task::spawn_blocking(|| start(BASE_CONFIG, &[]))
        .await
        .unwrap();
    let mut c = s.client().await;
    let id = c.create(json!({"image": "python"})).await;
    assert!(s.root.dir_of(&id).is_dir());
    assert!(
        !leftovers(&s.root, &id).is_empty(),
        "a running sandbox is visible to the leftover check"
    );
    c.exec(
        &id,
        json!({"argv": ["sh", "-c", "sleep 1000 & echo started"]}),
    )
    .await;
    c.stop(&id).await;
    assert_eq!(leftovers(&s.root, &id), Vec::<String>::new());

    // Orphans: the daemon and the engine die by SIGKILL with a sandbox running.
    let orphan = c.create(json!({"image": "python"})).await;
    c.exec(
        &orphan,
        json!({"argv": ["sh", "-c", "sleep 1000 & echo started"]}),
    )
    .await;
    drop(c);
    let mut s = s;
    let engine_pid = s.engine.child.id();
    let daemons = children_of(engine_pid);
    assert!(
        !daemons.is_empty(),
        "the engine supervises the daemon as its child"
    );
    for d in &daemons {
        kill9(i32::try_from(*d).unwrap());
    }
    assert!(
        s.root.dir_of(&orphan).exists(),
        "the killed daemon could not clean up: the orphan is really left behind"
    );
    let s = tokio::task::spawn_blocking(move || {
        s.engine.kill9_and_restart();
        s
    })
    .await
    .unwrap();
    s.daemon_up().await;
    eventually(
        Duration::from_secs(60),
        "orphans were not cleaned by the next start",
        || leftovers(&s.root, &orphan).is_empty(),
    )
    .await;
    let mut c = s.client().await;
    assert_eq!(c.list_ids().await, Vec::<String>::new());
    let id = c.create(json!({"image": "python"})).await;
    assert_eq!(
        c.exec(&id, json!({"argv": ["echo", "ok"]})).await["stdout"],
        "ok\n"
    );
    c.stop(&id).await;
}
