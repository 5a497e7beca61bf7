//! Support for the black-box tests: start the real `iii` binary on free ports, speak the worker
//! protocol with a raw WebSocket client, and make plain HTTP/1.1 requests.

pub mod oci_registry;
pub mod rabbitmq;
pub mod redis;
pub mod registry_api;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The `iii` binary under test: `$III_BIN`, else `target/{debug,release}/iii` of this workspace.
pub fn iii_bin() -> PathBuf {
    if let Ok(p) = std::env::var("III_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("iii");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "the iii binary was not found under {}; run `cargo build -p iii-cli` first or set III_BIN",
        target.display()
    );
}

/// A port that was free a moment ago, for tests that must name one before the engine starts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running engine in its own temporary directory; killed on drop.
pub struct EngineProc {
    /// The engine process.
    pub child: Child,
    /// The worker socket's port, read from the engine's own "listening on" line.
    pub ws_port: u16,
    /// The REST server's port (0 when the config runs none), read the same way.
    pub http_port: u16,
    /// The stream socket's port (0 when the config runs none), read the same way.
    pub stream_port: u16,
    /// Its working directory (config.yaml, engine.log, .iii/data).
    pub dir: PathBuf,
    /// Environment variables set for the engine process (kept across restarts).
    env: Vec<(String, String)>,
}

impl EngineProc {
    /// Starts the engine with a config that puts the worker socket and the REST server on free
    /// ports; `extra` is appended to the `workers:` list (YAML, indented by two spaces).
    pub fn start(extra: &str) -> EngineProc {
        let extra = extra.to_string();
        Self::start_with(move |ws, http| {
            format!(
                "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}, handshake_timeout_ms: 2000}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}, default_timeout: 5000}}\n{extra}"
            )
        })
    }

    /// Starts the engine with `config(ws_port, http_port)` as its config.yaml. The first start
    /// passes port 0 for both, so the engine picks free ports itself (no bind-then-drop race)
    /// and the harness reads them from its "listening on" lines.
    pub fn start_with(config: impl Fn(u16, u16) -> String) -> EngineProc {
        Self::start_with_env(config, &[])
    }

    /// [`EngineProc::start_with`] with `env` set in the engine's environment.
    pub fn start_with_env(config: impl Fn(u16, u16) -> String, env: &[(&str, &str)]) -> EngineProc {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (ws_port, http_port) = (0, 0);
        let dir = std::env::temp_dir().join(format!("iii-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("config.yaml"), config(ws_port, http_port)).expect("write config");
        let log = std::fs::File::create(dir.join("engine.log")).expect("log file");
        let child = Command::new(iii_bin())
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            .env("III_NAMESPACE_GRACE_MS", "1000")
            // The harness rewrites config.yaml with the bound ports after start; only the hot
            // reload tests (which set it back) want that seen as a change.
            .env("III_WATCH_CONFIG", "0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().expect("clone")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn iii");
        let mut e = EngineProc {
            child,
            ws_port,
            http_port,
            stream_port: 0,
            dir,
            env,
        };
        e.wait_ready(0);
        // From now on the file names the bound ports, so a restart (and a test that edits the
        // config) keeps them: SDK clients reconnect to the address they know.
        std::fs::write(e.dir.join("config.yaml"), config(e.ws_port, e.http_port))
            .expect("write config");
        e
    }

    /// Waits for the engine's "ready" line and takes the ports from its "listening on" lines
    /// (the first worker socket; the REST server if any). Only this start's lines count: the
    /// log is appended to across restarts.
    fn wait_ready(&mut self, skip: usize) {
        // Generous: "ready" follows every service's prepare, and replaying a large kv log (the
        // 1 GiB durability test) takes tens of seconds on a loaded 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let log = self.log();
            let this_start = &log[skip.min(log.len())..];
            if this_start.contains(" ready") && this_start.contains("iii engine") {
                let port_after = |marker: &str| {
                    this_start.find(marker).and_then(|i| {
                        let rest = &this_start[i + marker.len()..];
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok())
                    })
                };
                self.ws_port =
                    port_after("worker socket listening on ws://").expect("worker socket line");
                self.http_port = port_after("listening on http://").unwrap_or(0);
                self.stream_port = port_after("stream socket listening on ws://").unwrap_or(0);
                if TcpStream::connect(("127.0.0.1", self.ws_port)).is_ok() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("engine exited early with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("engine did not report ready within 180 s:\n{}", self.log());
    }

    /// SIGKILLs the engine and starts it again in the same directory, config and ports.
    pub fn kill9_and_restart(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
        self.restart();
    }

    /// Stops the engine the way a user or a service manager does (SIGTERM), waits for it to
    /// exit (it must, within 10 s) and starts it again in the same directory, config and ports.
    pub fn sigterm_and_restart(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(
                Instant::now() < deadline,
                "engine did not exit within 10 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.restart();
    }

    fn restart(&mut self) {
        let skip = self.log().len();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("engine.log"))
            .expect("log file");
        self.child = Command::new(iii_bin())
            .current_dir(&self.dir)
            .env("RUST_LOG", "info")
            .env("III_NAMESPACE_GRACE_MS", "1000")
            .env("III_WATCH_CONFIG", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().expect("clone")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn iii");
        self.wait_ready(skip);
    }

    /// The engine process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The worker socket's URL.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    /// The stream socket's URL (the config must run one).
    pub fn stream_url(&self) -> String {
        assert_ne!(self.stream_port, 0, "the config runs no stream socket");
        format!("ws://127.0.0.1:{}/", self.stream_port)
    }

    /// Everything the engine logged so far (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("engine.log")).unwrap_or_default()
    }

    /// Waits until the engine's log contains every one of `needles` and returns the log.
    /// Panics with the log after 30 s. Some start-up lines (a service ready after its adapter
    /// compiled on a cold cache) come after the socket already accepts connections.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let missing: Vec<&&str> = needles.iter().filter(|n| !log.contains(**n)).collect();
            if missing.is_empty() {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "engine log still lacks {missing:?} after 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The raw WebSocket a [`RawWorker`] speaks on.
pub type Ws = WebSocketStream<MaybeTlsStream<TokioTcp>>;

/// A hand-written worker speaking the raw protocol.
pub struct RawWorker {
    /// The socket.
    pub ws: Ws,
    /// The worker id the engine assigned.
    pub worker_id: String,
    /// The reattach token the engine assigned.
    pub reattach_token: String,
    /// Frames received while waiting for something else.
    backlog: Vec<Value>,
}

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

impl RawWorker {
    /// Connects and reads the `workerregistered` greeting.
    pub async fn connect(url: &str) -> RawWorker {
        Self::connect_with_headers(url, &[]).await
    }

    /// [`RawWorker::connect`] sending `headers` with the upgrade request (e.g. `authorization`).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> RawWorker {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        // Like the SDKs, accept messages up to 64 MiB in frames of any size.
        let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        cfg.max_message_size = Some(64 << 20);
        cfg.max_frame_size = Some(64 << 20);
        let mut req = url.into_client_request().expect("a ws:// url");
        for (k, v) in headers {
            req.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(cfg), false)
            .await
            .expect("connect");
        let mut w = RawWorker {
            ws,
            worker_id: String::new(),
            reattach_token: String::new(),
            backlog: Vec::new(),
        };
        let first = w.recv().await;
        assert_eq!(
            first["type"], "workerregistered",
            "first frame must be workerregistered: {first}"
        );
        assert!(
            first.get("features").is_none(),
            "a 0.23-compatible engine must not advertise features"
        );
        w.worker_id = first["worker_id"].as_str().expect("worker_id").to_string();
        w.reattach_token = first["reattach_token"]
            .as_str()
            .expect("reattach_token")
            .to_string();
        w
    }

    /// Closes this connection and waits until `observer` no longer sees the worker in
    /// `engine::workers::list`. The engine drops the worker's record last, after its functions,
    /// calls, triggers and name, so this is "disconnect cleanup has finished".
    pub async fn close_and_wait_gone(mut self, observer: &mut RawWorker) {
        let id = std::mem::take(&mut self.worker_id);
        let _ = self.ws.close(None).await;
        drop(self);
        let deadline = Instant::now() + WAIT;
        loop {
            let r = observer.call("engine::workers::list", json!({})).await;
            let listed = r["result"]["workers"]
                .as_array()
                .is_some_and(|ws| ws.iter().any(|w| w["id"] == id.as_str()));
            if !listed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker {id} still listed {WAIT:?} after it closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connects and declares itself (name, pid, optional namespace) so registrations apply at once.
    pub async fn connect_named(url: &str, name: &str, namespace: Option<&str>) -> RawWorker {
        let mut w = Self::connect(url).await;
        w.declare(name, namespace).await;
        w
    }

    /// Calls `engine::workers::register` (void) with a name, this pid and an optional namespace.
    pub async fn declare(&mut self, name: &str, namespace: Option<&str>) {
        let mut data =
            json!({"runtime": "rust-raw", "version": "0", "name": name, "pid": std::process::id()});
        if let Some(ns) = namespace {
            data["namespace"] = json!(ns);
        }
        self.send(json!({"type": "invokefunction", "function_id": "engine::workers::register", "data": data, "action": {"type": "void"}})).await;
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends raw text (possibly malformed on purpose).
    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::text(t.to_string()))
            .await
            .expect("send");
    }

    /// Next protocol frame (JSON), skipping control frames; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        if !self.backlog.is_empty() {
            return self.backlog.remove(0);
        }
        self.recv_raw(WAIT)
            .await
            .expect("timed out waiting for a frame")
    }

    /// Next JSON frame from the socket within `limit`, or `None`.
    pub async fn recv_raw(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => {
                    return Some(
                        serde_json::from_str(t.as_str()).expect("engine sent invalid JSON"),
                    )
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Waits for a frame matching `pred`, keeping the others for later `recv` calls.
    pub async fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .recv_raw(left)
                .await
                .expect("timed out waiting for a matching frame");
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// Asserts that no frame matching `pred` arrives within `limit`.
    pub async fn expect_none(&mut self, limit: Duration, pred: impl Fn(&Value) -> bool) {
        assert!(
            !self.backlog.iter().any(&pred),
            "unexpected frame already received"
        );
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.recv_raw(left).await {
                Some(v) if pred(&v) => panic!("unexpected frame: {v}"),
                Some(v) => self.backlog.push(v),
                None => return,
            }
        }
    }

    /// Sends `registerfunction` with `extra` fields merged in.
    pub async fn register_function(&mut self, id: &str, extra: Value) {
        let mut f = json!({"type": "registerfunction", "id": id});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                f[k] = v;
            }
        }
        self.send(f).await;
    }

    /// Sends a request/response call and returns its `invocationresult`.
    pub async fn call(&mut self, function_id: &str, data: Value) -> Value {
        self.call_with(function_id, data, json!({})).await
    }

    /// [`RawWorker::call`] with `extra` fields merged into the frame.
    pub async fn call_with(&mut self, function_id: &str, data: Value, extra: Value) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        let mut f = json!({"type": "invokefunction", "invocation_id": id, "function_id": function_id, "data": data});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                f[k] = v;
            }
        }
        self.send(f).await;
        let idc = id.clone();
        self.recv_where(move |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == idc.as_str()
        })
        .await
    }

    /// Answers one incoming `invokefunction` with `f(data)`; returns the invocation frame.
    pub async fn serve_one(&mut self, f: impl Fn(&Value) -> Value) -> Value {
        let inv = self.recv_where(|v| v["type"] == "invokefunction").await;
        let result = f(&inv["data"]);
        self.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": inv["function_id"], "result": result})).await;
        inv
    }

    /// Round trip through `engine::functions::list` to make sure earlier frames were applied.
    pub async fn sync(&mut self) {
        let r = self.call("engine::functions::list", json!({})).await;
        assert!(r.get("error").is_none(), "{r}");
    }
}

/// A minimal HTTP/1.1 client: returns (status, lowercase headers, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// The value of header `name` (lower case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Runs `iii` with arguments; returns (exit code, stdout, stderr).
pub fn run_iii(args: &[&str], cwd: Option<&Path>) -> (i32, String, String) {
    let mut c = Command::new(iii_bin());
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    run_bounded(c, RUN_III_LIMIT)
}

/// How long one `iii` command of a test may run: a command that should exit but serves
/// forever fails its test instead of eating the suite's budget.
pub const RUN_III_LIMIT: Duration = Duration::from_secs(180);

/// Runs `c` to its end or until `limit`, when it is killed and its status is -1 (stderr
/// then ends with a line saying so). Returns (status, stdout, stderr).
pub fn run_bounded(mut c: Command, limit: Duration) -> (i32, String, String) {
    use std::io::Read;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run iii");
    // Through a channel, so that a grandchild still holding the pipe cannot block the test.
    let drain = |mut r: Box<dyn Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            let _ = tx.send(String::from_utf8_lossy(&b).into_owned());
        });
        rx
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    // `None` when the harness killed it; a signal death of its own is a status too.
    let status = loop {
        match child.try_wait().expect("wait for iii") {
            Some(st) => break Some(st),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let grace = if status.is_some() {
        limit
    } else {
        Duration::from_secs(5)
    };
    let (out, mut err) = (
        out.recv_timeout(grace).unwrap_or_default(),
        err.recv_timeout(grace).unwrap_or_default(),
    );
    if status.is_none() {
        err.push_str(&format!(
            "\n[test harness: killed after {limit:?} without exiting]\n"
        ));
    }
    (status.and_then(|s| s.code()).unwrap_or(-1), out, err)
}

/// Held by the tests that run an engine on the real default ports (49134, 3111), so that two of
/// them in one test binary never overlap.
pub fn default_ports_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
