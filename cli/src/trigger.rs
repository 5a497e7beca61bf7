//! `iii trigger`: one request/response call against a running engine (PROTOCOL.md §10).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug)]
pub struct TriggerArgs {
    /// Function path (e.g. my::fn, math::add). Positional
    #[arg(value_name = "FUNCTION_PATH")]
    pub function: Option<String>,
    /// Key=value payload tokens (a=10 b="hello world"); values are parsed as JSON when they are valid JSON.
    /// Combinable with --json: kv pairs override individual keys of the json object
    #[arg(value_name = "KV")]
    pub kv: Vec<String>,
    /// JSON payload (--json '{"a":1}'). When combined with kv pairs the json must be an object; kv pairs override its keys (shallow merge)
    #[arg(long)]
    pub json: Option<String>,
    /// Engine host address
    #[arg(long, default_value = "localhost")]
    pub address: String,
    /// Engine WebSocket port
    #[arg(long, default_value_t = 49134)]
    pub port: u16,
    /// Max time to wait for the invocation result (milliseconds)
    #[arg(long, default_value_t = 30000)]
    pub timeout_ms: u64,
    /// Namespace the function is resolved in [default: default]
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Print help; with a FUNCTION_PATH, also the function's description and parameters from the running engine
    #[arg(short = 'h', long)]
    pub help: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    #[error("expected key=value, got `{0}`")]
    NotKeyValue(String),
    #[error("payload key must not be empty (got `{0}`)")]
    EmptyKey(String),
    #[error("--json: invalid JSON `{0}`")]
    InvalidJson(String),
    #[error("--json must be an object when combined with kv pairs")]
    JsonNotObject,
}

/// Builds the payload from `--json` and `key=value` tokens (PROTOCOL.md §10).
pub fn build_payload(json: Option<&str>, kv: &[String]) -> Result<Value, PayloadError> {
    let base = match json {
        Some(j) => Some(
            serde_json::from_str::<Value>(j)
                .map_err(|_| PayloadError::InvalidJson(j.to_string()))?,
        ),
        None => None,
    };
    if kv.is_empty() {
        return Ok(base.unwrap_or_else(|| Value::Object(Map::new())));
    }
    let mut obj = match base {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(PayloadError::JsonNotObject),
    };
    for tok in kv {
        let (k, v) = tok
            .split_once('=')
            .ok_or_else(|| PayloadError::NotKeyValue(tok.clone()))?;
        if k.is_empty() {
            return Err(PayloadError::EmptyKey(tok.clone()));
        }
        let value =
            serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_string()));
        obj.insert(k.to_string(), value);
    }
    Ok(Value::Object(obj))
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("Timed out waiting for the engine (no response within the timeout). Is the engine running at the given address and port?")]
    Timeout,
    #[error("cannot connect to the engine at {url}: {reason}. Is the engine running at the given address and port?")]
    Connect { url: String, reason: String },
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    #[error("the engine closed the connection before answering")]
    Closed,
    #[error("{0}")]
    Remote(Value),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One worker connection to the engine: any number of calls, one after the other or started
/// and awaited separately (so a caller can stream into a data channel while its call runs).
pub(crate) struct Client {
    ws: Socket,
}

impl Client {
    /// Opens the worker socket at `url` (`ws://host:port`).
    pub(crate) async fn connect(url: &str) -> Result<Client, CallError> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| connect_error(url, e))?;
        Ok(Client { ws })
    }

    /// Sends an `invokefunction` and returns its invocation id; await it with [`Client::result`].
    pub(crate) async fn start(
        &mut self,
        function_id: &str,
        data: &Value,
        namespace: Option<&str>,
    ) -> Result<String, CallError> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut frame = serde_json::json!({"type": "invokefunction", "invocation_id": id, "function_id": function_id, "data": data});
        if let Some(ns) = namespace {
            frame["namespace"] = Value::String(ns.to_string());
        }
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| CallError::WebSocket(e.to_string()))?;
        Ok(id)
    }

    /// Waits for the result of invocation `id`: `Ok(None)` for a null result, the engine's
    /// error object as [`CallError::Remote`]. Other frames are skipped.
    pub(crate) async fn result(&mut self, id: &str) -> Result<Option<Value>, CallError> {
        while let Some(msg) = self.ws.next().await {
            let msg = msg.map_err(|e| CallError::WebSocket(e.to_string()))?;
            let Message::Text(t) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            if v["type"] == "invocationresult" && v["invocation_id"] == id {
                if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                    return Err(CallError::Remote(err.clone()));
                }
                return Ok(v.get("result").cloned().filter(|r| !r.is_null()));
            }
        }
        Err(CallError::Closed)
    }

    /// [`Client::start`] then [`Client::result`], bounded by `timeout`.
    pub(crate) async fn call(
        &mut self,
        function_id: &str,
        data: &Value,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Value>, CallError> {
        let work = async {
            let id = self.start(function_id, data, namespace).await?;
            self.result(&id).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// Closes the socket politely.
    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Turns this connection into one that many tasks can call through at once: a reader task
    /// routes each `invocationresult` to its caller by invocation id. A long-lived tool (the
    /// console) needs this because it is one named worker, so it cannot open a socket per call.
    pub(crate) fn into_shared(self) -> SharedClient {
        let (sink, mut stream) = self.ws.split();
        let pending: Pending = Arc::new(std::sync::Mutex::new(Some(HashMap::new())));
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["type"] != "invocationresult" {
                    continue;
                }
                let Some(id) = v["invocation_id"].as_str() else {
                    continue;
                };
                let waiter = lock(&reader_pending).as_mut().and_then(|m| m.remove(id));
                if let Some(tx) = waiter {
                    let r = match v.get("error").filter(|e| !e.is_null()) {
                        Some(err) => Err(CallError::Remote(err.clone())),
                        None => Ok(v.get("result").cloned().filter(|r| !r.is_null())),
                    };
                    let _ = tx.send(r);
                }
            }
            // The socket is gone: every waiting caller learns it now, later calls at once.
            if let Some(waiters) = lock(&reader_pending).take() {
                for (_, tx) in waiters {
                    let _ = tx.send(Err(CallError::Closed));
                }
            }
        });
        SharedClient {
            sink: tokio::sync::Mutex::new(sink),
            pending,
        }
    }
}

type Waiter = tokio::sync::oneshot::Sender<Result<Option<Value>, CallError>>;
/// Callers waiting for a result, by invocation id; `None` once the socket has closed.
type Pending = Arc<std::sync::Mutex<Option<HashMap<String, Waiter>>>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, Option<HashMap<String, Waiter>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`Client`] shared by concurrent callers (see [`Client::into_shared`]).
pub(crate) struct SharedClient {
    sink: tokio::sync::Mutex<futures_util::stream::SplitSink<Socket, Message>>,
    pending: Pending,
}

impl SharedClient {
    /// True once the engine closed the socket; the owner reconnects.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.pending).is_none()
    }

    /// One call, bounded by `timeout`; other callers' calls proceed meanwhile.
    pub(crate) async fn call(
        &self,
        function_id: &str,
        data: &Value,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Value>, CallError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(m) => m.insert(id.clone(), tx),
            None => return Err(CallError::Closed),
        };
        let mut frame = serde_json::json!({"type": "invokefunction", "invocation_id": id, "function_id": function_id, "data": data});
        if let Some(ns) = namespace {
            frame["namespace"] = Value::String(ns.to_string());
        }
        let sent = self
            .sink
            .lock()
            .await
            .send(Message::text(frame.to_string()))
            .await;
        let r = match sent {
            Err(e) => Err(CallError::WebSocket(e.to_string())),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(CallError::Closed),
                Err(_) => Err(CallError::Timeout),
            },
        };
        if let Some(m) = lock(&self.pending).as_mut() {
            m.remove(&id);
        }
        r
    }
}

/// A failed WebSocket connect: an I/O failure names the URL (the usual "nothing listens" case).
pub(crate) fn connect_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> CallError {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(io) => CallError::Connect {
            url: url.to_string(),
            reason: io.to_string(),
        },
        other => CallError::WebSocket(other.to_string()),
    }
}

async fn call(
    url: &str,
    function_id: &str,
    data: &Value,
    namespace: Option<&str>,
    timeout: Duration,
) -> Result<Option<Value>, CallError> {
    let work = async {
        let mut client = Client::connect(url).await?;
        let r = client.call(function_id, data, namespace, timeout).await;
        client.close().await;
        r
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(CallError::Timeout))
}

fn static_help() -> String {
    let mut cmd = crate::Cli::command();
    let sub = cmd
        .find_subcommand_mut("trigger")
        .expect("trigger subcommand");
    sub.render_help().to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn main(args: TriggerArgs) -> ExitCode {
    let url = format!("ws://{}:{}", args.address, args.port);
    let timeout = Duration::from_millis(args.timeout_ms);
    if args.help {
        let Some(function) = &args.function else {
            print!("{}", static_help());
            return ExitCode::SUCCESS;
        };
        let mut q = serde_json::json!({"function_id": function});
        if let Some(ns) = &args.namespace {
            q["namespace"] = Value::String(ns.clone());
        }
        let res = runtime().block_on(call(
            &url,
            "engine::functions::info",
            &q,
            None,
            timeout.min(Duration::from_secs(5)),
        ));
        return match res {
            Ok(Some(info)) => {
                print!("{}", function_help(function, &info));
                ExitCode::SUCCESS
            }
            Ok(None) | Err(CallError::Remote(_)) => {
                eprintln!("Error: function `{function}` is not registered on the engine at {url}.\nHint: run `iii trigger engine::functions::list` to see what is available.");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("Warning: could not ask the engine about `{function}`: {e}\n");
                print!("{}", static_help());
                ExitCode::SUCCESS
            }
        };
    }
    let Some(function) = args.function.as_deref().filter(|f| !f.is_empty()) else {
        eprintln!("Error: iii trigger: missing FUNCTION_PATH. Try: iii trigger math::add a=1 b=2 (see iii trigger --help)");
        return ExitCode::FAILURE;
    };
    let payload = match build_payload(args.json.as_deref(), &args.kv) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Error: iii trigger: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime().block_on(call(
        &url,
        function,
        &payload,
        args.namespace.as_deref(),
        timeout,
    )) {
        Ok(Some(v)) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(CallError::Remote(err)) => {
            eprintln!(
                "Error: {}",
                serde_json::to_string_pretty(&err).unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Description plus a markdown parameter table from the request schema.
fn function_help(function: &str, info: &Value) -> String {
    let mut s = format!("{function}\n\n");
    if let Some(d) = info.get("description").and_then(Value::as_str) {
        s.push_str(d);
        s.push_str("\n\n");
    }
    let schema = info
        .get("request_schema")
        .or_else(|| info.get("request_format"));
    let props = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    match props {
        Some(props) if !props.is_empty() => {
            let required: Vec<&str> = schema
                .and_then(|s| s.get("required"))
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            s.push_str(
                "Parameters\n\n| name | type | required | description |\n|---|---|---|---|\n",
            );
            for (name, p) in props {
                let ty = match p.get("type") {
                    Some(Value::String(t)) => t.clone(),
                    Some(Value::Array(ts)) => ts
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" | "),
                    _ => "any".into(),
                };
                let desc = p.get("description").and_then(Value::as_str).unwrap_or("");
                let req = if required.contains(&name.as_str()) {
                    "yes"
                } else {
                    "no"
                };
                s.push_str(&format!("| {name} | {ty} | {req} | {desc} |\n"));
            }
        }
        _ => s.push_str("Parameters: no request schema was registered for this function.\n"),
    }
    s.push_str(&format!(
        "\nUsage: iii trigger {function} [KEY=VALUE ...] [--json '<json>']\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn payload_rules() {
        assert_eq!(build_payload(None, &[]).unwrap(), json!({}));
        assert_eq!(
            build_payload(
                None,
                &kv(&[
                    "a=10",
                    "b=true",
                    "c=null",
                    "d=\"x\"",
                    "e=[1,2]",
                    "f=alice",
                    "g=007",
                    "h=hello world",
                    "i=a=b",
                    "a=11"
                ])
            )
            .unwrap(),
            json!({"a": 11, "b": true, "c": null, "d": "x", "e": [1, 2], "f": "alice", "g": "007", "h": "hello world", "i": "a=b"})
        );
        assert_eq!(build_payload(Some("[1,2]"), &[]).unwrap(), json!([1, 2]));
        assert_eq!(
            build_payload(Some("{\"a\":1,\"b\":2}"), &kv(&["b=3"])).unwrap(),
            json!({"a": 1, "b": 3})
        );
        assert_eq!(
            build_payload(None, &kv(&["nokey"]))
                .unwrap_err()
                .to_string(),
            "expected key=value, got `nokey`"
        );
        assert_eq!(
            build_payload(None, &kv(&["=v"])).unwrap_err().to_string(),
            "payload key must not be empty (got `=v`)"
        );
        assert_eq!(
            build_payload(Some("{x"), &[]).unwrap_err().to_string(),
            "--json: invalid JSON `{x`"
        );
        assert_eq!(
            build_payload(Some("[1]"), &kv(&["a=1"])).unwrap_err(),
            PayloadError::JsonNotObject
        );
    }
}
