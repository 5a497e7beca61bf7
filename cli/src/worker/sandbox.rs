//! `iii worker sandbox …`: a thin client of the `iii-sandbox` daemon's `sandbox::*` functions
//! (workers-and-sandboxes spec section 1.17). Every subcommand connects to the engine's worker socket on
//! 127.0.0.1, calls one or a few functions and prints their result; file transfers stream through
//! engine data channels, so their size is not bound by a JSON message.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tungstenite::tungstenite::Message;

use crate::trigger::{connect_error, CallError, Client};

const DEFAULT_PORT: u16 = 49134;
/// `sandbox::create` may build or import an image first; section 4.4 recommends 300 s.
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// The daemon's default exec timeout; the call waits this plus [`EXEC_MARGIN_MS`].
const DEFAULT_EXEC_TIMEOUT_MS: u64 = 300_000;
const EXEC_MARGIN_MS: u64 = 5_000;
/// fs::write / fs::read answer within this (after the last uploaded byte, for uploads).
const FS_TIMEOUT: Duration = Duration::from_secs(60);
/// A data channel that moves no frame for this long is treated as dead.
const CHANNEL_IDLE: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// Upload chunk size: what the SDKs use and what the daemon forwards to the guest as one frame.
const CHUNK: usize = 64 * 1024;
/// Exit status when the child was killed by its `--timeout` (coreutils `timeout(1)`).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit status for a usage error (clap's own).
const EXIT_USAGE: u8 = 2;

#[derive(Args, Debug)]
#[command(
    about = "Manage ephemeral sandboxes (create/exec/stop short-lived isolated environments)",
    long_about = "Manage ephemeral sandboxes through the engine's iii-sandbox daemon (config.yaml entry \
`- name: iii-sandbox`). A sandbox is an isolated Linux environment from an image (presets: python, node) with \
its own filesystem overlay, cgroup limits and no network unless asked for. Every subcommand connects to the \
engine on 127.0.0.1:--port and calls the sandbox::* functions; errors print as `error: [Sxxx] <message>`.",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct SandboxArgs {
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Subcommand, Debug)]
enum SandboxCommand {
    /// Create a long-lived sandbox and print its id to stdout
    #[command(
        long_about = "Create a long-lived sandbox and print its id to stdout. Pair with \
`iii worker sandbox exec <id>` and `iii worker sandbox stop <id>`. Pipe-friendly: the sandbox id is the only \
thing on stdout, so you can do SB=$(iii worker sandbox create python) in a shell. A preset image (python, node) \
is built into the local image cache first if it is missing (progress on stderr)."
    )]
    Create(CreateArgs),
    /// Run a command inside an already-running sandbox
    #[command(
        long_about = "Run a command inside an already-running sandbox. Pipe mode only: the \
child's stdout and stderr are printed as they were captured (up to 1 MiB each), stdin is not forwarded, and the \
exit status is the child's (124 when it was killed by --timeout, 1 when it has none or the call failed). \
The command is not run by a shell: iii worker sandbox exec <id> -- python3 -c 'print(2+2)'."
    )]
    Exec(ExecArgs),
    /// Create a one-shot sandbox, run a command inside it, and stop it
    #[command(
        long_about = "Create a one-shot sandbox, run a command inside it, and stop it (also when \
the command fails or you press Ctrl-C). For multi-step workflows (agent loops, REPLs) use create + exec + stop \
instead. Output and exit status as for exec."
    )]
    Run(RunArgs),
    /// List every sandbox the daemon knows about
    #[command(
        long_about = "List every sandbox the daemon knows about: id, image, age in seconds and \
name. The CLI is a local admin tool, so it always asks for the unscoped view."
    )]
    List(ListArgs),
    /// Stop a sandbox by id
    #[command(
        long_about = "Stop a sandbox by id and wait until it is gone: its processes, mounts, \
cgroups and state directory are removed. Prints `stopped <id>`."
    )]
    Stop(StopArgs),
    /// Copy a local file into a running sandbox
    #[command(
        long_about = "Copy a local file into a running sandbox. Streams bytes through an iii \
data channel in 64 KiB chunks, so there is no JSON-envelope size cap. Reads LOCAL_PATH from disk (or stdin when \
LOCAL_PATH is -) and writes atomically (temp file + fsync + rename) to REMOTE_PATH inside the sandbox. \
Examples: iii worker sandbox upload <SB> ./script.js /workspace/script.js; \
tar -cf - ./srcdir | iii worker sandbox upload <SB> - /workspace/src.tar"
    )]
    Upload(UploadArgs),
    /// Copy a file out of a running sandbox
    #[command(
        long_about = "Copy a file out of a running sandbox. The bytes arrive through an iii data \
channel, so any size works. Writes LOCAL_PATH (or stdout when LOCAL_PATH is -)."
    )]
    Download(DownloadArgs),
}

#[derive(Args, Debug)]
struct PortArg {
    /// Engine WebSocket port
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Image name: a preset (python, node) or a custom_images key; must be in the daemon's image_allowlist
    #[arg(value_name = "IMAGE")]
    image: String,
    /// CPUs allocated to the sandbox (enforced as a cgroup quota)
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory in MiB allocated to the sandbox (enforced; swap is off)
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Stop the sandbox after this many seconds without exec or fs activity [default: the daemon's default_idle_timeout_secs]
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// A name shown by `list`
    #[arg(long)]
    name: Option<String>,
    /// Give the sandbox outbound networking (otherwise it only reaches the engine port on its 127.0.0.1)
    #[arg(long)]
    network: bool,
    /// Set an environment variable for every process in the sandbox. Repeatable, KEY=VALUE form; entries without = are silently skipped
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[command(flatten)]
    port: PortArg,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// Sandbox id from `iii worker sandbox create` / `iii worker sandbox list`
    #[arg(value_name = "SANDBOX_ID")]
    sandbox_id: String,
    /// Kill the child after this long (e.g. 30s, 5m, 500ms; humantime syntax) [default: the daemon's 300s, clamped to its max_exec_timeout_ms]
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Set an environment variable inside the spawned process. Repeatable, KEY=VALUE form; entries without = are silently skipped
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[command(flatten)]
    port: PortArg,
    /// Program and arguments to exec inside the sandbox. Comes after --: iii worker sandbox exec <id> -- python3 -c 'print(2+2)'
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Image name: a preset (python, node) or a custom_images key; must be in the daemon's image_allowlist
    #[arg(value_name = "IMAGE")]
    image: String,
    /// CPUs allocated to the sandbox (enforced as a cgroup quota)
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory in MiB allocated to the sandbox (enforced; swap is off)
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[command(flatten)]
    port: PortArg,
    /// Program and arguments to exec inside the sandbox (no -- needed)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    port: PortArg,
    /// No-op, kept so scripts that pass it keep working (the CLI always lists every sandbox)
    #[arg(long, hide = true)]
    all: bool,
}

#[derive(Args, Debug)]
struct StopArgs {
    /// Sandbox id returned by `sandbox create` / `sandbox list`
    #[arg(value_name = "SANDBOX_ID")]
    sandbox_id: String,
    #[command(flatten)]
    port: PortArg,
}

#[derive(Args, Debug)]
struct UploadArgs {
    /// Sandbox id from `iii worker sandbox create` / `iii worker sandbox list`
    #[arg(value_name = "SANDBOX_ID")]
    sandbox_id: String,
    /// Source path on the host. Use - to read from stdin
    #[arg(value_name = "LOCAL_PATH")]
    local_path: String,
    /// Destination path inside the sandbox
    #[arg(value_name = "REMOTE_PATH")]
    remote_path: String,
    /// File mode (octal) applied to the destination after the rename
    #[arg(long, default_value = "0644", value_parser = parse_mode)]
    mode: String,
    /// Create parent directories of REMOTE_PATH if they're missing
    #[arg(long)]
    parents: bool,
    #[command(flatten)]
    port: PortArg,
}

#[derive(Args, Debug)]
struct DownloadArgs {
    /// Sandbox id from `iii worker sandbox create` / `iii worker sandbox list`
    #[arg(value_name = "SANDBOX_ID")]
    sandbox_id: String,
    /// Source path inside the sandbox
    #[arg(value_name = "REMOTE_PATH")]
    remote_path: String,
    /// Destination path on the host. Use - to write to stdout
    #[arg(value_name = "LOCAL_PATH")]
    local_path: String,
    #[command(flatten)]
    port: PortArg,
}

/// Why a sandbox subcommand failed; printed as `error: <this>` with exit status 1.
#[derive(Debug, thiserror::Error)]
enum SandboxError {
    #[error("engine not running on port {0} — start it with `iii` (or pass --port to reach an engine on another port)")]
    EngineDown(u16),
    #[error("{}", render_remote(.0))]
    Remote(Value),
    #[error("{0}")]
    Call(CallError),
    #[error("{function} answered without {what}: {answer}")]
    BadAnswer {
        function: &'static str,
        what: &'static str,
        answer: String,
    },
    #[error("cannot read {path}: {source}")]
    ReadLocal {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteLocal {
        path: String,
        source: std::io::Error,
    },
    #[error("data channel: {0}")]
    Channel(String),
    #[error("interrupted")]
    Interrupted,
}

impl From<CallError> for SandboxError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Remote(v) => SandboxError::Remote(v),
            other => SandboxError::Call(other),
        }
    }
}

/// What a subcommand ends with.
enum Outcome {
    /// Exit with this status (the child's, for exec/run).
    Exit(u8),
    /// A usage error found after parsing (exit 2).
    Usage(String),
}

/// Runs `iii worker sandbox …`.
pub fn main(args: SandboxArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match args.command {
            SandboxCommand::Create(a) => create(a).await,
            SandboxCommand::Exec(a) => exec(a).await,
            SandboxCommand::Run(a) => run(a).await,
            SandboxCommand::List(a) => list(a).await,
            SandboxCommand::Stop(a) => stop(a).await,
            SandboxCommand::Upload(a) => upload(a).await,
            SandboxCommand::Download(a) => download(a).await,
        }
    });
    let _ = std::io::stdout().flush();
    match result {
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Ok(Outcome::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn engine_url(port: u16) -> String {
    format!("ws://127.0.0.1:{port}")
}

/// Fails fast with an actionable message when nothing listens on the engine port, instead of a
/// WebSocket error after the connect.
async fn precheck(port: u16) -> Result<(), SandboxError> {
    let probe = tokio::net::TcpStream::connect(("127.0.0.1", port));
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(SandboxError::EngineDown(port)),
    }
}

async fn connect(port: u16) -> Result<Client, SandboxError> {
    precheck(port).await?;
    Ok(Client::connect(&engine_url(port)).await?)
}

/// `-e` entries as the daemon's list form; entries without `=` are skipped (as upstream does).
fn env_list(entries: &[String]) -> Value {
    Value::Array(
        entries
            .iter()
            .filter(|e| e.contains('='))
            .map(|e| Value::String(e.clone()))
            .collect(),
    )
}

/// Builds a missing preset image into the local image cache before `create`, so the slow
/// first-time build shows its progress on the user's terminal (stderr) instead of stalling a
/// silent call. It is the same cache and builder the daemon uses, so the daemon then finds it;
/// a cached preset costs a lookup. A failure is only a warning: the daemon reports its own.
fn prepull(image: &str) {
    if !matches!(image, "python" | "node") {
        return;
    }
    let store = match iii_oci_rootfs::ImageStore::open(None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot open the image cache: {e}");
            return;
        }
    };
    if store.lookup_preset(image).is_some() {
        return;
    }
    eprintln!(
        "building the {image} image into {} (once; later sandboxes reuse it)",
        store.root().display()
    );
    if let Err(e) = store.build_preset(image, &mut |line| eprintln!("  {line}")) {
        eprintln!("warning: building the {image} image failed: {e}");
    }
}

async fn create(a: CreateArgs) -> Result<Outcome, SandboxError> {
    precheck(a.port.port).await?;
    prepull(&a.image);
    let started = Instant::now();
    let mut client = connect(a.port.port).await?;
    let mut req = json!({
        "image": a.image,
        "cpus": a.cpus,
        "memory_mb": a.memory,
        "network": a.network,
        "env": env_list(&a.env),
    });
    if let Some(s) = a.idle_timeout {
        req["idle_timeout_secs"] = json!(s);
    }
    if let Some(n) = &a.name {
        req["name"] = json!(n);
    }
    let answer = client
        .call("sandbox::create", &req, None, CREATE_TIMEOUT)
        .await?;
    client.close().await;
    let id = sandbox_id_of(answer, "sandbox::create")?;
    println!("{id}");
    if std::io::stderr().is_terminal() {
        eprintln!("✓ sandbox ready in {:.1}s", started.elapsed().as_secs_f64());
    }
    Ok(Outcome::Exit(0))
}

fn sandbox_id_of(answer: Option<Value>, function: &'static str) -> Result<String, SandboxError> {
    match answer
        .as_ref()
        .and_then(|v| v.get("sandbox_id"))
        .and_then(Value::as_str)
    {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(SandboxError::BadAnswer {
            function,
            what: "a sandbox_id",
            answer: answer
                .map(|v| v.to_string())
                .unwrap_or_else(|| "null".into()),
        }),
    }
}

const NO_COMMAND: &str = "no command given; put it after the sandbox id, e.g. \
`iii worker sandbox exec <id> -- python3 -c 'print(2+2)'`";

async fn exec(a: ExecArgs) -> Result<Outcome, SandboxError> {
    if a.command.is_empty() {
        return Ok(Outcome::Usage(NO_COMMAND.into()));
    }
    let timeout_ms = match a.timeout.map(duration_ms).transpose() {
        Ok(t) => t,
        Err(msg) => return Ok(Outcome::Usage(msg)),
    };
    let mut client = connect(a.port.port).await?;
    let mut req = json!({
        "sandbox_id": a.sandbox_id,
        "cmd": a.command[0],
        "args": a.command[1..],
        "env": env_list(&a.env),
    });
    if let Some(ms) = timeout_ms {
        req["timeout_ms"] = json!(ms);
    }
    let wait =
        Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS) + EXEC_MARGIN_MS);
    let answer = client.call("sandbox::exec", &req, None, wait).await?;
    client.close().await;
    Ok(Outcome::Exit(print_exec(answer.as_ref())?))
}

/// Prints a `sandbox::exec` result's streams verbatim and returns the exit status to leave with.
fn print_exec(answer: Option<&Value>) -> Result<u8, SandboxError> {
    let Some(r) = answer.filter(|v| v.is_object()) else {
        return Err(SandboxError::BadAnswer {
            function: "sandbox::exec",
            what: "a result object",
            answer: answer
                .map(|v| v.to_string())
                .unwrap_or_else(|| "null".into()),
        });
    };
    let out = r.get("stdout").and_then(Value::as_str).unwrap_or("");
    let err = r.get("stderr").and_then(Value::as_str).unwrap_or("");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(err.as_bytes());
    let _ = stderr.flush();
    Ok(exit_status_of(r))
}

/// 124 for a timed-out child, its own status when it has one in 0..=255, else 1.
fn exit_status_of(r: &Value) -> u8 {
    if r.get("timed_out").and_then(Value::as_bool) == Some(true) {
        return EXIT_TIMED_OUT;
    }
    r.get("exit_code")
        .and_then(Value::as_i64)
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1)
}

async fn run(a: RunArgs) -> Result<Outcome, SandboxError> {
    if a.command.is_empty() {
        return Ok(Outcome::Usage(
            "no command given; put it after the image, e.g. `iii worker sandbox run python python3 -c 'print(2+2)'`"
                .into(),
        ));
    }
    precheck(a.port.port).await?;
    prepull(&a.image);
    let mut client = connect(a.port.port).await?;
    let req = json!({"image": a.image, "cpus": a.cpus, "memory_mb": a.memory});
    let answer = client
        .call("sandbox::create", &req, None, CREATE_TIMEOUT)
        .await?;
    let id = sandbox_id_of(answer, "sandbox::create")?;
    let req = json!({"sandbox_id": id, "cmd": a.command[0], "args": a.command[1..]});
    let wait = Duration::from_millis(DEFAULT_EXEC_TIMEOUT_MS + EXEC_MARGIN_MS);
    // Ctrl-C still stops the sandbox: it must not outlive a one-shot run.
    let result = tokio::select! {
        r = client.call("sandbox::exec", &req, None, wait) => r.map_err(SandboxError::from),
        _ = tokio::signal::ctrl_c() => Err(SandboxError::Interrupted),
    };
    // A fresh connection: after an interrupted or timed-out call the first may be mid-frame.
    let stopped = match Client::connect(&engine_url(a.port.port)).await {
        Ok(mut c) => {
            let r = c
                .call(
                    "sandbox::stop",
                    &json!({"sandbox_id": id, "wait": true}),
                    None,
                    STOP_TIMEOUT,
                )
                .await;
            c.close().await;
            r.map(|_| ())
        }
        Err(e) => Err(e),
    };
    client.close().await;
    if let Err(e) = stopped {
        eprintln!(
            "warning: could not stop sandbox {id}: {}",
            SandboxError::from(e)
        );
    }
    match result {
        Ok(answer) => Ok(Outcome::Exit(print_exec(answer.as_ref())?)),
        Err(SandboxError::Interrupted) => Ok(Outcome::Exit(130)),
        Err(e) => Err(e),
    }
}

async fn list(a: ListArgs) -> Result<Outcome, SandboxError> {
    let _ = a.all;
    let mut client = connect(a.port.port).await?;
    let answer = client
        .call("sandbox::list", &json!({}), None, QUICK_TIMEOUT)
        .await?;
    client.close().await;
    let Some(rows) = answer
        .as_ref()
        .and_then(|v| v.get("sandboxes"))
        .and_then(Value::as_array)
    else {
        return Err(SandboxError::BadAnswer {
            function: "sandbox::list",
            what: "a sandboxes list",
            answer: answer
                .map(|v| v.to_string())
                .unwrap_or_else(|| "null".into()),
        });
    };
    print!("{}", list_table(rows));
    Ok(Outcome::Exit(0))
}

/// `SANDBOX_ID(36)  IMAGE(10)  AGE_SECS(8)  NAME`, one row per sandbox; a missing name is `-`.
fn list_table(rows: &[Value]) -> String {
    let mut s = format!(
        "{:<36}  {:<10}  {:<8}  {}\n",
        "SANDBOX_ID", "IMAGE", "AGE_SECS", "NAME"
    );
    for r in rows {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let age = r
            .get("age_secs")
            .and_then(Value::as_u64)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<36}  {:<10}  {:<8}  {}\n",
            text("sandbox_id"),
            text("image"),
            age,
            text("name")
        ));
    }
    s
}

async fn stop(a: StopArgs) -> Result<Outcome, SandboxError> {
    let mut client = connect(a.port.port).await?;
    client
        .call(
            "sandbox::stop",
            &json!({"sandbox_id": a.sandbox_id, "wait": true}),
            None,
            STOP_TIMEOUT,
        )
        .await?;
    client.close().await;
    println!("stopped {}", a.sandbox_id);
    Ok(Outcome::Exit(0))
}

type ChannelSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to one end of a data channel (`ref` as `engine::channels::create` or a function
/// returned it).
async fn open_channel(port: u16, r: &Value) -> Result<ChannelSocket, SandboxError> {
    let (Some(id), Some(key), Some(dir)) = (
        r.get("channel_id").and_then(Value::as_str),
        r.get("access_key").and_then(Value::as_str),
        r.get("direction").and_then(Value::as_str),
    ) else {
        return Err(SandboxError::Channel(format!(
            "not a channel reference: {r}"
        )));
    };
    let url = format!("{}/ws/channels/{id}?key={key}&dir={dir}", engine_url(port));
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| SandboxError::Call(connect_error(&url, e)))?;
    Ok(ws)
}

async fn upload(a: UploadArgs) -> Result<Outcome, SandboxError> {
    let mut client = connect(a.port.port).await?;
    let mut source: Box<dyn AsyncRead + Unpin> = if a.local_path == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&a.local_path)
                .await
                .map_err(|source| SandboxError::ReadLocal {
                    path: a.local_path.clone(),
                    source,
                })?,
        )
    };
    let channel = client
        .call("engine::channels::create", &json!({}), None, QUICK_TIMEOUT)
        .await?
        .unwrap_or(Value::Null);
    let (Some(writer), Some(reader)) = (channel.get("writer"), channel.get("reader")) else {
        return Err(SandboxError::BadAnswer {
            function: "engine::channels::create",
            what: "a writer and a reader",
            answer: channel.to_string(),
        });
    };
    let mut sink = open_channel(a.port.port, writer).await?;
    let req = json!({
        "sandbox_id": a.sandbox_id,
        "path": a.remote_path,
        "mode": a.mode,
        "parents": a.parents,
        "content": reader,
    });
    let call_id = client.start("sandbox::fs::write", &req, None).await?;
    let local = a.local_path.clone();
    let pump = async move {
        let mut sent: u64 = 0;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_chunk(&mut source, &mut buf).await.map_err(|source| {
                SandboxError::ReadLocal {
                    path: local.clone(),
                    source,
                }
            })?;
            if n == 0 {
                break;
            }
            send_within(&mut sink, Message::binary(buf[..n].to_vec())).await?;
            sent += n as u64;
        }
        send_within(&mut sink, Message::Close(None)).await?;
        // Drain the close handshake so the engine sees a clean end of stream.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = sink.next().await {}
        })
        .await;
        Ok::<u64, SandboxError>(sent)
    };
    tokio::pin!(pump);
    // The daemon may refuse the write before reading the channel (unknown sandbox, bad path):
    // its answer must not wait behind a stream nobody reads.
    let (sent, answer) = tokio::select! {
        sent = &mut pump => {
            let sent = sent?;
            let answer = tokio::time::timeout(FS_TIMEOUT, client.result(&call_id))
                .await
                .unwrap_or(Err(CallError::Timeout))?;
            (sent, answer)
        }
        answer = client.result(&call_id) => {
            let answer = answer?;
            let sent = tokio::time::timeout(FS_TIMEOUT, pump).await.unwrap_or(Err(SandboxError::Channel("the upload did not finish after the daemon answered".into())))?;
            (sent, answer)
        }
    };
    client.close().await;
    let written = answer
        .as_ref()
        .and_then(|v| v.get("bytes_written"))
        .and_then(Value::as_u64);
    match written {
        Some(w) if w == sent => {}
        Some(w) => eprintln!("warning: sent {sent} bytes but the sandbox wrote {w}"),
        None => eprintln!(
            "warning: sandbox::fs::write did not report bytes_written: {}",
            answer
                .map(|v| v.to_string())
                .unwrap_or_else(|| "null".into())
        ),
    }
    println!(
        "uploaded {sent} bytes to {}:{}",
        a.sandbox_id, a.remote_path
    );
    Ok(Outcome::Exit(0))
}

/// Reads until `buf` is full or the source ends (stdin hands out small pieces; full 64 KiB
/// frames keep the frame count, and the daemon's per-frame work, down).
async fn read_chunk(src: &mut (dyn AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = src.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

async fn send_within(sink: &mut ChannelSocket, m: Message) -> Result<(), SandboxError> {
    match tokio::time::timeout(CHANNEL_IDLE, sink.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SandboxError::Channel(format!("upload failed: {e}"))),
        Err(_) => Err(SandboxError::Channel(format!(
            "nothing was taken from the upload for {} s",
            CHANNEL_IDLE.as_secs()
        ))),
    }
}

async fn download(a: DownloadArgs) -> Result<Outcome, SandboxError> {
    let mut client = connect(a.port.port).await?;
    let answer = client
        .call(
            "sandbox::fs::read",
            &json!({"sandbox_id": a.sandbox_id, "path": a.remote_path}),
            None,
            FS_TIMEOUT,
        )
        .await?
        .unwrap_or(Value::Null);
    let Some(content) = answer.get("content") else {
        return Err(SandboxError::BadAnswer {
            function: "sandbox::fs::read",
            what: "a content channel",
            answer: answer.to_string(),
        });
    };
    let size = answer.get("size").and_then(Value::as_u64);
    let mut source = open_channel(a.port.port, content).await?;
    let to_stdout = a.local_path == "-";
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&a.local_path).map_err(|source| SandboxError::WriteLocal {
                path: a.local_path.clone(),
                source,
            })?,
        ))
    };
    let received = async {
        let mut n: u64 = 0;
        loop {
            let frame = tokio::time::timeout(CHANNEL_IDLE, source.next())
                .await
                .map_err(|_| {
                    SandboxError::Channel(format!(
                        "no data for {} s after {n} bytes",
                        CHANNEL_IDLE.as_secs()
                    ))
                })?;
            match frame {
                None | Some(Ok(Message::Close(_))) => return Ok(n),
                Some(Ok(Message::Binary(b))) => {
                    out.write_all(&b)
                        .map_err(|source| SandboxError::WriteLocal {
                            path: a.local_path.clone(),
                            source,
                        })?;
                    n += b.len() as u64;
                }
                // Text frames are control messages; the daemon reports a failed pump this way.
                Some(Ok(Message::Text(t))) => {
                    if let Some(e) = serde_json::from_str::<Value>(t.as_str())
                        .ok()
                        .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                    {
                        return Err(SandboxError::Channel(e));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(SandboxError::Channel(format!(
                        "download failed after {n} bytes: {e}"
                    )))
                }
            }
        }
    }
    .await;
    client.close().await;
    let flushed = out.flush().map_err(|source| SandboxError::WriteLocal {
        path: a.local_path.clone(),
        source,
    });
    drop(out);
    let n = match received.and_then(|n| flushed.map(|()| n)) {
        Ok(n) => n,
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(&a.local_path);
            }
            return Err(e);
        }
    };
    if let Some(s) = size.filter(|s| *s != n) {
        eprintln!("warning: the sandbox reported {s} bytes but {n} arrived");
    }
    if !to_stdout {
        println!("downloaded {n} bytes to {}", a.local_path);
    }
    Ok(Outcome::Exit(0))
}

/// `error: [Sxxx] <message>` for a daemon error (the section 4.5 JSON envelope in the handler error's
/// message, possibly after a `handler error: ` prefix); other engine errors as `<message> (<code>)`.
fn render_remote(err: &Value) -> String {
    let message = err.get("message").and_then(Value::as_str).unwrap_or("");
    if let Some(env) = message
        .find('{')
        .and_then(|i| serde_json::from_str::<Value>(&message[i..]).ok())
    {
        if let (Some(code), Some(msg)) = (
            env.get("code").and_then(Value::as_str),
            env.get("message").and_then(Value::as_str),
        ) {
            return format!("[{code}] {msg}");
        }
    }
    let code = err.get("code").and_then(Value::as_str).unwrap_or("");
    let hint = if code == "function_not_found" && message.contains("sandbox::") {
        "; is the sandbox daemon enabled? add `- name: iii-sandbox` to the engine's config.yaml workers"
    } else {
        ""
    };
    match (message.is_empty(), code.is_empty()) {
        (false, false) => format!("{message} ({code}){hint}"),
        (false, true) => message.to_string(),
        (true, false) => format!("{code}{hint}"),
        (true, true) => err.to_string(),
    }
}

/// humantime's syntax, integers only: one or more `<n><unit>` groups (`1m30s`, `500ms`, `2h`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; use e.g. 30s, 5m or 500ms".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration `{s}`: expected a number at `{rest}` (e.g. 30s, 5m, 500ms)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration `{s}`: number too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let nanos_per: u64 = match unit {
            "ns" | "nsec" | "nsecs" => 1,
            "us" | "usec" | "usecs" | "µs" => 1_000,
            "ms" | "msec" | "msecs" | "millis" => 1_000_000,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            "" => {
                return Err(format!(
                    "invalid duration `{s}`: time unit needed (e.g. {n}s or {n}ms)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration `{s}`: unknown unit `{other}` (use ms, s, m, h or d)"
                ))
            }
        };
        let part = n
            .checked_mul(nanos_per)
            .ok_or_else(|| format!("invalid duration `{s}`: too large"))?;
        total = total
            .checked_add(Duration::from_nanos(part))
            .ok_or_else(|| format!("invalid duration `{s}`: too large"))?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

/// A `--timeout` as the daemon's whole milliseconds; zero (or under a millisecond) is refused
/// rather than meaning "time out at once".
fn duration_ms(d: Duration) -> Result<u64, String> {
    match u64::try_from(d.as_millis()) {
        Ok(0) => Err("--timeout must be at least 1ms".into()),
        Ok(ms) => Ok(ms),
        Err(_) => Err("--timeout is too large".into()),
    }
}

/// An octal file mode (`644`, `0755`, `0o600`), normalised to the daemon's `0644` form.
fn parse_mode(s: &str) -> Result<String, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("`{s}` is not an octal file mode (e.g. 0644, 755)"));
    }
    let v = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    if v > 0o7777 {
        return Err(format!("`{s}` is larger than 07777"));
    }
    Ok(format!("{v:04o}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        c: SandboxCommand,
    }

    fn parse(args: &[&str]) -> Result<SandboxCommand, clap::Error> {
        let mut all = vec!["sandbox"];
        all.extend_from_slice(args);
        Top::try_parse_from(all).map(|t| t.c)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30")
            .unwrap_err()
            .contains("time unit needed"));
        assert!(parse_duration("3x")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert_eq!(duration_ms(Duration::from_millis(1500)), Ok(1500));
        assert!(duration_ms(Duration::from_micros(10)).is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644").as_deref(), Ok("0644"));
        assert_eq!(parse_mode("755").as_deref(), Ok("0755"));
        assert_eq!(parse_mode("0o600").as_deref(), Ok("0600"));
        assert_eq!(parse_mode("4755").as_deref(), Ok("4755"));
        assert!(parse_mode("0688").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("77777").is_err());
    }

    #[test]
    fn envelope_rendering() {
        let envelope = json!({"type":"filesystem","code":"S211","message":"parent directory not found: /workspace/a/b",
            "docs_url":"x","retryable":false,"fix":{"parents":true},"fix_note":"merge"});
        let wire =
            json!({"code": "invocation_failed", "message": format!("handler error: {envelope}")});
        assert_eq!(
            render_remote(&wire),
            "[S211] parent directory not found: /workspace/a/b"
        );
        let bare = json!({"code": "invocation_failed", "message": envelope.to_string()});
        assert_eq!(
            render_remote(&bare),
            "[S211] parent directory not found: /workspace/a/b"
        );
        // Not an envelope: the engine's own error, with a hint for a missing daemon.
        let nf =
            json!({"code": "function_not_found", "message": "function sandbox::create not found"});
        let r = render_remote(&nf);
        assert!(
            r.starts_with("function sandbox::create not found (function_not_found)"),
            "{r}"
        );
        assert!(r.contains("- name: iii-sandbox"), "{r}");
        let plain = json!({"code": "invocation_failed", "message": "missing field `image` {oops"});
        assert_eq!(
            render_remote(&plain),
            "missing field `image` {oops (invocation_failed)"
        );
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status_of(&json!({"exit_code": 0})), 0);
        assert_eq!(exit_status_of(&json!({"exit_code": 3})), 3);
        assert_eq!(exit_status_of(&json!({"exit_code": 137})), 137);
        assert_eq!(exit_status_of(&json!({"exit_code": null})), 1);
        assert_eq!(exit_status_of(&json!({"exit_code": -1})), 1);
        assert_eq!(exit_status_of(&json!({"exit_code": 300})), 1);
        assert_eq!(
            exit_status_of(&json!({"exit_code": 0, "timed_out": true})),
            124
        );
    }

    #[test]
    fn env_entries_without_equals_are_skipped() {
        let e = env_list(&["A=1".into(), "junk".into(), "B=x=y".into(), "C=".into()]);
        assert_eq!(e, json!(["A=1", "B=x=y", "C="]));
    }

    #[test]
    fn table() {
        let rows = [
            json!({"sandbox_id": "3b2f0c1e-0000-4000-8000-000000000001", "image": "python", "age_secs": 12, "name": null}),
            json!({"sandbox_id": "3b2f0c1e-0000-4000-8000-000000000002", "image": "node", "age_secs": 3, "name": "web"}),
        ];
        assert_eq!(
            list_table(&rows),
            "SANDBOX_ID                            IMAGE       AGE_SECS  NAME\n\
             3b2f0c1e-0000-4000-8000-000000000001  python      12        -\n\
             3b2f0c1e-0000-4000-8000-000000000002  node        3         web\n"
        );
    }

    #[test]
    fn command_lines() {
        // The trailing command takes hyphenated words as its own, with or without `--`.
        let SandboxCommand::Exec(e) =
            parse(&["exec", "ID", "--", "python3", "-c", "print(1)"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.command, ["python3", "-c", "print(1)"]);
        let SandboxCommand::Exec(e) =
            parse(&["exec", "--timeout", "2s", "-e", "A=1", "ID", "ls", "-la"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (e.timeout, e.env.as_slice(), e.command.as_slice()),
            (
                Some(Duration::from_secs(2)),
                &["A=1".to_string()][..],
                &["ls".to_string(), "-la".to_string()][..]
            )
        );
        let SandboxCommand::Run(r) =
            parse(&["run", "python", "python3", "-c", "print(2+2)"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (r.image.as_str(), r.cpus, r.memory, r.port.port),
            ("python", 1, 512, 49134)
        );
        assert_eq!(r.command, ["python3", "-c", "print(2+2)"]);
        // A bad --timeout is a usage error (exit 2).
        let err = parse(&["exec", "--timeout", "soon", "ID", "ls"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let SandboxCommand::Upload(u) = parse(&["upload", "ID", "-", "/workspace/x"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((u.mode.as_str(), u.parents), ("0644", false));
        let SandboxCommand::List(l) = parse(&["list", "--all"]).unwrap() else {
            panic!()
        };
        assert!(l.all);
        let SandboxCommand::Create(c) = parse(&[
            "create",
            "node",
            "--idle-timeout",
            "5",
            "--network",
            "--name",
            "n",
            "-e",
            "K=V",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.idle_timeout, c.network, c.name.as_deref(), c.env.len()),
            (Some(5), true, Some("n"), 1)
        );
    }
}
