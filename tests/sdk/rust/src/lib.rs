//! Helpers for the black-box tests that drive the real `iii` binary with the official Rust SDK
//! (crates.io `iii-sdk` 0.25.0). The tests themselves are in `tests/`.

use std::time::{Duration, Instant};

use iii_sdk::protocol::TriggerRequest;
use iii_sdk::runtime::WorkerMetadata;
use iii_sdk::{register_worker, Error, IIIClient, InitOptions};
use serde_json::{json, Value};

/// How long the helpers wait for something the engine should do promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A unique worker name, so that several SDK clients in one test process never share a
/// `(namespace, name)` (the engine refuses a second live connection with the same name).
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Connects an SDK worker named `name` (default namespace) to `url`, exactly as a user would:
/// `register_worker(url, InitOptions { metadata, .. })`.
pub fn connect(url: &str, name: &str) -> IIIClient {
    connect_with(url, name, None)
}

/// Like [`connect`], with an optional namespace (`InitOptions.namespace`).
pub fn connect_with(url: &str, name: &str, namespace: Option<&str>) -> IIIClient {
    let metadata = WorkerMetadata {
        name: name.to_string(),
        description: Some(format!("iii-sdk-rust-tests worker {name}")),
        ..WorkerMetadata::default()
    };
    register_worker(
        url,
        InitOptions {
            metadata: Some(metadata),
            namespace: namespace.map(str::to_string),
            ..InitOptions::default()
        },
    )
}

/// Connects and waits for the engine's `workerregistered`.
pub async fn connect_ready(url: &str, name: &str) -> IIIClient {
    let c = connect(url, name);
    c.wait_until_registered(WAIT)
        .await
        .expect("SDK worker did not get workerregistered");
    c
}

/// A request/response call with an explicit client-side timeout.
pub async fn call(c: &IIIClient, function_id: &str, payload: Value) -> Result<Value, Error> {
    call_timeout(c, function_id, payload, 10_000).await
}

/// A request/response call with a client-side timeout of `timeout_ms`.
pub async fn call_timeout(
    c: &IIIClient,
    function_id: &str,
    payload: Value,
    timeout_ms: u64,
) -> Result<Value, Error> {
    let mut req = TriggerRequest::new(function_id, payload);
    req.timeout_ms = Some(timeout_ms);
    c.trigger(req).await
}

/// Polls `engine::functions::list` (through `c`) until `function_id` is listed in the default
/// namespace, so a test never races the engine applying another worker's registration.
pub async fn wait_for_function(c: &IIIClient, function_id: &str) {
    wait_for_function_in(c, function_id, "default").await
}

/// [`wait_for_function`] in `namespace`.
pub async fn wait_for_function_in(c: &IIIClient, function_id: &str, namespace: &str) {
    let deadline = Instant::now() + WAIT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(v) = call_timeout(c, "engine::functions::list", json!({}), 2_000).await {
            let found = v["functions"].as_array().is_some_and(|fs| {
                fs.iter()
                    .any(|f| f["function_id"] == function_id && f["namespace"] == namespace)
            });
            if found {
                return;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{function_id} never appeared in namespace {namespace}; last list: {last}");
}

/// The `engine::workers::list` entry whose `name` is `name`, if any.
pub async fn worker_entry(c: &IIIClient, name: &str) -> Option<Value> {
    let v = call(c, "engine::workers::list", json!({}))
        .await
        .expect("engine::workers::list");
    v["workers"]
        .as_array()
        .expect("workers array")
        .iter()
        .find(|w| w["name"] == name)
        .cloned()
}

/// Waits until `engine::workers::list` shows a worker named `name` and returns its entry.
pub async fn wait_for_worker(c: &IIIClient, name: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(w) = worker_entry(c, name).await {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("worker {name} never appeared in engine::workers::list");
}

/// Asserts `r` is a remote error and returns `(code, message, stacktrace)`.
pub fn remote_error(r: Result<Value, Error>) -> (String, String, Option<String>) {
    match r {
        Err(Error::Remote {
            code,
            message,
            stacktrace,
        }) => (code, message, stacktrace),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// `iii_tests::http` on a blocking thread, for use inside async tests.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let method = method.to_string();
    let path = path.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        iii_tests::http(port, &method, &path, &h, &body)
    })
    .await
    .expect("http task")
}

/// Removes the engine-injected `_caller_worker_id` from an object payload (PROTOCOL.md §3.3) and
/// returns it.
pub fn take_caller_id(v: &mut Value) -> Option<String> {
    v.as_object_mut()?
        .remove("_caller_worker_id")
        .and_then(|c| c.as_str().map(str::to_string))
}

/// Shuts an SDK client down and joins its connection thread (the SDK's blocking `shutdown`), so
/// the socket is closed and the SDK's `~/.iii/run` process marker removed before returning.
/// Needs the multi-thread test runtime.
pub fn stop(c: &IIIClient) {
    tokio::task::block_in_place(|| c.shutdown());
}

/// The example policies of `plugins/policies` and the hostile fixture, name → `.wasm` path
/// (`bearer`, `audit`, `tenant-prefix`, `rate-limit`, `hostile`, `python-allowlist`,
/// `js-tenant`), built (or found warm) once per test binary by the one script the Python and
/// Node suites call too, `plugins/policies/build.sh` (it prints `name=path` lines).
pub fn policy_wasm() -> &'static std::collections::HashMap<String, std::path::PathBuf> {
    static W: std::sync::OnceLock<std::collections::HashMap<String, std::path::PathBuf>> =
        std::sync::OnceLock::new();
    W.get_or_init(|| {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../plugins/policies/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}); it needs the wasm32-wasip2 and wasm32-unknown-unknown targets, python3 (with venv) and npm",
            script.display(),
            out.status
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), std::path::PathBuf::from(v)))
            .collect()
    })
}
