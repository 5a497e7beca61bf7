//! Sessions with a sandbox's guest agent (`iii-init`), over whichever transport its runtime
//! gives (a Unix socket for namespaces, vsock for microVMs). The protocol client is blocking;
//! every session runs on a blocking thread, one fresh connection per session.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use iii_sandbox_runtime::SandboxHandle;
use iii_vm_agent_proto::client::{self, ExecOutput};
use iii_vm_agent_proto::{ExecRequest, FileInfo, FsRequest, FsResponse, ProtoError};
use serde_json::Value;

use crate::error::SandboxError;

/// Output kept per stream; the rest is drained and dropped.
pub const OUTPUT_CAP: usize = 1 << 20;

fn channel_error(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::BootFailed(format!("sandbox agent unreachable: {e}"))
}

fn connect(handle: &Arc<dyn SandboxHandle>) -> Result<UnixStream, SandboxError> {
    handle.connect_agent().map_err(channel_error)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SandboxError::fs("S216", format!("fs i/o error: agent task failed: {e}")))?
}

/// How an exec ended.
pub enum ExecEnd {
    /// The process ran (whatever its exit code).
    Ran(ExecOutput),
    /// The program could not be started: the errno behind it.
    SpawnFailed(i32, String),
}

/// The errno at the end of an io::Error's text (`… (os error 2)`).
fn trailing_errno(msg: &str) -> Option<i32> {
    let start = msg.rfind("(os error ")? + "(os error ".len();
    msg[start..].trim_end_matches(')').parse().ok()
}

/// Runs one command. `timeout` is enforced by the agent (which kills the process group); the
/// connection is also dropped if the agent does not answer within a grace period after it.
pub async fn exec(
    handle: Arc<dyn SandboxHandle>,
    req: ExecRequest,
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<ExecEnd, SandboxError> {
    let stream = connect(&handle)?;
    let guard = stream.try_clone().map_err(channel_error)?;
    let task =
        tokio::task::spawn_blocking(move || client::exec_capped(&stream, &req, &stdin, OUTPUT_CAP));
    let grace = timeout + Duration::from_secs(10);
    let res = match tokio::time::timeout(grace, task).await {
        Ok(joined) => joined.map_err(channel_error)?,
        Err(_) => {
            // The agent did not end the session: drop the connection, which makes it kill
            // the session's process group.
            let _ = guard.shutdown(std::net::Shutdown::Both);
            return Err(SandboxError::ExecTimedOut(
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            ));
        }
    };
    match res {
        Ok(out) => Ok(ExecEnd::Ran(out)),
        Err(ProtoError::Agent(msg)) if msg.starts_with("spawn") => {
            Ok(ExecEnd::SpawnFailed(trailing_errno(&msg).unwrap_or(0), msg))
        }
        Err(e) => Err(channel_error(e)),
    }
}

/// Converts a guest response into the op's result object, or its S-code error.
fn result_of(resp: FsResponse) -> Result<FsResponse, SandboxError> {
    match (&resp.error, &resp.code) {
        (Some(msg), code) => Err(SandboxError::fs(
            code.as_deref().unwrap_or("S216"),
            msg.clone(),
        )),
        (None, Some(code)) => Err(SandboxError::fs(
            code,
            format!("fs operation failed ({code})"),
        )),
        (None, None) => Ok(resp),
    }
}

/// One file operation with no streamed data; returns the guest's response.
pub async fn fs(
    handle: Arc<dyn SandboxHandle>,
    req: FsRequest,
    data: Vec<u8>,
) -> Result<FsResponse, SandboxError> {
    blocking(move || {
        let mut s = connect(&handle)?;
        let (resp, _) = client::fs(&mut s, &req, &data).map_err(fs_channel)?;
        result_of(resp)
    })
    .await
}

/// The op-specific result object of a response (`{"created":true}`, …).
pub fn value(resp: &FsResponse) -> Value {
    resp.value
        .clone()
        .unwrap_or(Value::Object(Default::default()))
}

fn fs_channel(e: ProtoError) -> SandboxError {
    match e {
        ProtoError::Agent(msg) => SandboxError::fs("S216", format!("fs i/o error: {msg}")),
        other => SandboxError::fs("S218", format!("fs channel aborted: {other}")),
    }
}

/// Writes a file from chunks arriving on `rx` (atomic in the guest: temp file + rename).
pub async fn write_stream(
    handle: Arc<dyn SandboxHandle>,
    req: FsRequest,
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<FsResponse, SandboxError> {
    blocking(move || {
        let mut s = connect(&handle)?;
        let resp = client::fs_write_stream(&mut s, &req, rx.into_iter()).map_err(fs_channel)?;
        result_of(resp)
    })
    .await
}

/// Reads a file: its metadata goes to `meta` first, then its bytes in chunks to `chunks`.
/// Returns once the guest has sent everything (or failed).
pub async fn read_stream(
    handle: Arc<dyn SandboxHandle>,
    path: String,
    meta: tokio::sync::oneshot::Sender<FileInfo>,
    chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), SandboxError> {
    blocking(move || {
        let mut s = connect(&handle)?;
        let mut meta = Some(meta);
        let resp = client::fs_read_stream(
            &mut s,
            &path,
            |info: &FileInfo| {
                if let Some(m) = meta.take() {
                    let _ = m.send(info.clone());
                }
            },
            |chunk: &[u8]| {
                chunks
                    .blocking_send(chunk.to_vec())
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))
            },
        )
        .map_err(fs_channel)?;
        result_of(resp).map(|_| ())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_from_spawn_messages() {
        assert_eq!(
            trailing_errno("spawn: No such file or directory (os error 2)"),
            Some(2)
        );
        assert_eq!(
            trailing_errno("spawn: Permission denied (os error 13)"),
            Some(13)
        );
        assert_eq!(trailing_errno("spawn: weird"), None);
    }
}
