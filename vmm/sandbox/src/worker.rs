//! The daemon as an iii worker: it connects with the official Rust SDK as `iii-sandbox`,
//! registers the `sandbox::*` functions, runs the idle reaper, and stops every sandbox when it
//! is told to stop or the engine that started it is gone.

use std::future::Future;
use std::time::{Duration, Instant};

use iii_sdk::{IIIClient, InitOptions, RegisterFunction};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::daemon::Daemon;
use crate::error::{invalid, SandboxError};

/// What the worker calls itself (upstream's name, so `engine::workers::list` matches).
pub const WORKER_NAME: &str = "iii-sandbox";

/// Decodes a request; a wrong shape is S001 naming the field.
fn decode<T: DeserializeOwned>(v: Value) -> Result<T, SandboxError> {
    if v.is_null() {
        return Err(invalid("the payload must be a JSON object, not null"));
    }
    serde_json::from_value(v).map_err(|e| invalid(e.to_string()))
}

/// Handler-boundary tracing with the stable field set, and the error envelope.
async fn boundary<F>(
    function_id: &'static str,
    input: &Value,
    fut: F,
) -> Result<Value, iii_sdk::Error>
where
    F: Future<Output = Result<Value, SandboxError>>,
{
    let started = Instant::now();
    let sandbox_id = input
        .get("sandbox_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let out = fut.await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match out {
        Ok(v) => {
            tracing::info!(
                function_id,
                sandbox_id,
                success = true,
                error_code = "",
                error_type = "",
                duration_ms,
                "sandbox call"
            );
            Ok(v)
        }
        Err(e) => {
            tracing::info!(
                function_id,
                sandbox_id,
                success = false,
                error_code = e.code(),
                error_type = e.category(),
                retryable = e.retryable(),
                duration_ms,
                "sandbox call failed: {e}"
            );
            Err(e.into_sdk())
        }
    }
}

macro_rules! register {
    ($iii:expr, $d:expr, $id:literal, $desc:literal, |$daemon:ident, $req:ident : $ty:ty| $body:expr) => {{
        let d: Daemon = $d.clone();
        $iii.register_function(
            $id,
            RegisterFunction::new_async(move |input: Value| {
                let $daemon = d.clone();
                async move {
                    boundary($id, &input.clone(), async move {
                        let $req: $ty = decode(input)?;
                        $body.await
                    })
                    .await
                }
            })
            .description($desc),
        );
    }};
}

/// Registers every function of `d` on `iii`.
pub fn register_all(iii: &IIIClient, d: &Daemon) {
    use crate::daemon::{CreateRequest, ExecInput, StopRequest};
    use crate::fs::*;
    use crate::run::RunRequest;
    register!(
        iii,
        d,
        "sandbox::create",
        "Create an isolated sandbox from a catalog image; returns its sandbox_id",
        |d, r: CreateRequest| d.create(r)
    );
    register!(iii, d, "sandbox::exec", "Run a command in a sandbox (argv, cmd+args, or a cmd line); returns stdout, stderr and the exit code", |d, r: ExecInput| d.exec(r));
    register!(
        iii,
        d,
        "sandbox::stop",
        "Stop a sandbox and remove everything it left",
        |d, r: StopRequest| d.stop(r)
    );
    register!(
        iii,
        d,
        "sandbox::list",
        "List this daemon's sandboxes",
        |d, _r: serde_json::Map<String, Value>| async move { Ok(d.list()) }
    );
    register!(
        iii,
        d,
        "sandbox::catalog::list",
        "List the images sandboxes can be created from",
        |d, _r: serde_json::Map<String, Value>| async move { Ok(d.catalog.list()) }
    );
    register!(iii, d, "sandbox::run", "Create a sandbox, write the code (and files), run it with its interpreter, stop it: one call", |d, r: RunRequest| d.run(r));
    register!(
        iii,
        d,
        "sandbox::fs::ls",
        "List a directory in a sandbox",
        |d, r: PathRequest| d.fs_ls(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::stat",
        "Describe a path in a sandbox",
        |d, r: PathRequest| d.fs_stat(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::mkdir",
        "Create a directory in a sandbox",
        |d, r: MkdirRequest| d.fs_mkdir(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::write",
        "Write a file in a sandbox (text, base64 or a data channel); atomic",
        |d, r: WriteRequest| d.fs_write(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::rm",
        "Remove a file or directory in a sandbox",
        |d, r: RmRequest| d.fs_rm(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::chmod",
        "Change the mode (and owner) of paths in a sandbox",
        |d, r: ChmodRequest| d.fs_chmod(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::mv",
        "Move or rename a path in a sandbox",
        |d, r: MvRequest| d.fs_mv(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::grep",
        "Search files in a sandbox with a regular expression",
        |d, r: GrepRequest| d.fs_grep(r)
    );
    register!(
        iii,
        d,
        "sandbox::fs::sed",
        "Replace text in files of a sandbox",
        |d, r: SedRequest| d.fs_sed(r)
    );
    let reader_iii = iii.clone();
    let d2 = d.clone();
    iii.register_function(
        "sandbox::fs::read",
        RegisterFunction::new_async(move |input: Value| {
            let d = d2.clone();
            let iii = reader_iii.clone();
            async move {
                boundary("sandbox::fs::read", &input.clone(), async move {
                    let r: PathRequest = decode(input)?;
                    d.fs_read(&iii, r).await
                })
                .await
            }
        })
        .description("Read a file from a sandbox: a data channel with its bytes, and `body` inline for small text"),
    );
}

/// Connects, registers, and serves until a stop signal or the end of the engine's lifeline.
pub async fn serve(d: Daemon, reap_every: Duration, lifeline_stdin: bool) {
    let meta = iii_sdk::iii::WorkerMetadata {
        name: WORKER_NAME.into(),
        description: Some("Launch and manage isolated worker sandboxes (sandbox::*)".into()),
        ..Default::default()
    };
    let iii = iii_sdk::register_worker(
        &d.engine_url,
        InitOptions {
            metadata: Some(meta),
            ..Default::default()
        },
    );
    register_all(&iii, &d);
    tracing::info!(runtime = d.runtime.name(), engine = %d.engine_url, "sandbox daemon serving 16 functions");
    let reaper = {
        let d = d.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reap_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                d.reap_once().await;
            }
        })
    };
    let reason = stop_signal(lifeline_stdin).await;
    tracing::info!(
        "sandbox daemon stopping ({reason}); stopping {} sandboxes",
        d.registry.list().len()
    );
    reaper.abort();
    d.stop_all().await;
    iii.shutdown_async().await;
}

/// Waits for SIGTERM/SIGINT/SIGHUP, or for EOF on stdin when the engine holds its other end.
async fn stop_signal(lifeline_stdin: bool) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let lifeline = async move {
        if !lifeline_stdin {
            return std::future::pending::<()>().await;
        }
        // The engine keeps the write end of our stdin; EOF means it is gone.
        let _ = tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        })
        .await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
        _ = lifeline => "the engine is gone",
    }
}
