//! The worker host's public face while its workload runs (worker contract 4): `host.json`
//! ([`HostState`]) and the exec socket `managed/<name>/shell.sock`, which `iii worker exec`
//! connects to. Each accepted connection (peer uid must be ours) is relayed to a fresh
//! agent stream of the sandbox, so a client speaks the agent protocol, one exec session per
//! connection.
//!
//! The relay is byte-for-byte but for one thing: the first frame, when it is an `Exec`, gets
//! the workload's environment under its own entries (the agent takes a request's env as the
//! whole environment, and a shell in the worker should see what the worker sees: image ENV,
//! the entry's `config:` and the `III_*` variables), and the workload's working directory
//! when it names none. So every client gets the same layering without reading secrets from
//! disk. Closing the client stream ends the session (the agent kills what still runs).

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iii_sandbox_runtime::SandboxHandle;
use iii_vm_agent_proto::{read_frame, write_frame, ExecRequest, Frame, Kind, ProtoError};
use iii_worker_state::{HostState, StateError};

use crate::merge_env;

/// Exec clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 16;
/// How long a client may take to send its first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the exec socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The state paths are unusable (no home, a name that cannot be a directory).
    #[error(transparent)]
    State(#[from] StateError),
    /// Binding or securing the socket failed.
    #[error("exec socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What a session in the worker starts from.
#[derive(Debug, Clone, Default)]
pub struct SessionBase {
    /// The workload's environment.
    pub env: Vec<(String, String)>,
    /// The workload's working directory.
    pub workdir: String,
}

/// The state file and socket of a running workload; [`Published::withdraw`] removes both.
pub struct Published {
    name: String,
    task: tokio::task::JoinHandle<()>,
}

/// Writes `state` and serves `shell.sock` for `handle`'s sandbox. Call from a Tokio runtime.
pub fn publish(
    state: &HostState,
    base: SessionBase,
    handle: Arc<dyn SandboxHandle>,
) -> Result<Published, ShellError> {
    let path = iii_worker_state::shell_socket_path(&state.name)?;
    let dir = iii_worker_state::managed_dir(&state.name)?;
    iii_worker_state::create_private_dir(&dir)?;
    let sock_err = |source| ShellError::Socket {
        path: path.clone(),
        source,
    };
    // The managed dir may predate us with other modes; it must be ours alone.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(sock_err)?;
    // A socket left by a host that was SIGKILLed: the engine runs one host per name.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(sock_err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    listener.set_nonblocking(true).map_err(sock_err)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(sock_err)?;
    state.write()?;
    let task = tokio::spawn(accept_loop(listener, Arc::new(base), handle));
    Ok(Published {
        name: state.name.clone(),
        task,
    })
}

impl Published {
    /// Stops accepting and removes `host.json` and `shell.sock`, unless a newer host of the
    /// same name has replaced them.
    pub fn withdraw(self) {
        self.task.abort();
        match HostState::read(&self.name) {
            Ok(Some(s)) if s.pid != std::process::id() => {}
            _ => {
                if let Err(e) = HostState::remove(&self.name) {
                    tracing::warn!("removing the worker's state: {e}");
                }
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    base: Arc<SessionBase>,
    handle: Arc<dyn SandboxHandle>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("exec socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == euid => {}
            Ok(c) => {
                tracing::warn!(uid = c.uid(), "refused an exec client of another user");
                continue;
            }
            Err(e) => {
                tracing::warn!("exec client without peer credentials: {e}");
                continue;
            }
        }
        let Ok(client) = stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            Ok(s)
        }) else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(
                client,
                &format!(
                    "too many exec sessions in this worker (at most {MAX_CLIENTS}); retry later"
                ),
            );
            continue;
        };
        let (base, handle) = (base.clone(), handle.clone());
        std::thread::spawn(move || {
            let _permit = permit;
            if let Err(e) = relay(client, &base, handle.as_ref()) {
                tracing::debug!("exec session relay: {e}");
            }
        });
    }
}

/// Ends a client's session before it started with an agent `Error` frame.
fn refuse(mut client: UnixStream, message: &str) {
    let _ = client.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_frame(&mut client, &Frame::new(Kind::Error, message));
}

/// Puts the workload's environment and working directory under an `Exec` request.
pub fn layer_exec(first: Frame, base: &SessionBase) -> Result<Frame, ProtoError> {
    if first.kind != Kind::Exec {
        return Ok(first);
    }
    let mut req: ExecRequest = first.json()?;
    req.env = merge_env(&[&base.env, &req.env]);
    if req.cwd.as_deref().is_none_or(str::is_empty) {
        req.cwd = Some(base.workdir.clone());
    }
    Ok(Frame::with_json(Kind::Exec, &req))
}

fn relay(
    mut client: UnixStream,
    base: &SessionBase,
    handle: &dyn SandboxHandle,
) -> Result<(), ProtoError> {
    client.set_read_timeout(Some(FIRST_FRAME_TIMEOUT))?;
    let first = read_frame(&mut client)?;
    client.set_read_timeout(None)?;
    let first = match layer_exec(first, base) {
        Ok(f) => f,
        Err(e) => {
            refuse(client, &format!("bad exec request: {e}"));
            return Ok(());
        }
    };
    let mut agent = match handle.connect_agent() {
        Ok(a) => a,
        Err(e) => {
            refuse(client, &format!("cannot reach the worker's sandbox: {e}"));
            return Ok(());
        }
    };
    write_frame(&mut agent, &first)?;
    let (mut from_agent, mut to_client) = (agent.try_clone()?, client.try_clone()?);
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_agent, &mut to_client);
        let _ = to_client.flush();
        // The agent is done: wake the other direction, which may sit on an idle client.
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut client, &mut agent);
    // The client is gone or done: the agent ends (and kills) what still runs.
    let _ = agent.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn exec_requests_get_the_workload_env_and_workdir_beneath_their_own() {
        let base = SessionBase {
            env: pairs(&[
                ("PATH", "/bin"),
                ("GREETING", "image"),
                ("III_URL", "ws://x"),
            ]),
            workdir: "/tmp".into(),
        };
        let req = ExecRequest {
            argv: vec!["env".into()],
            env: pairs(&[("GREETING", "mine"), ("EXTRA", "1")]),
            ..Default::default()
        };
        let out: ExecRequest = layer_exec(Frame::with_json(Kind::Exec, &req), &base)
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            out.env,
            pairs(&[
                ("PATH", "/bin"),
                ("GREETING", "mine"),
                ("III_URL", "ws://x"),
                ("EXTRA", "1")
            ])
        );
        assert_eq!(out.cwd.as_deref(), Some("/tmp"));
        let own = ExecRequest {
            cwd: Some("/etc".into()),
            ..req
        };
        let out: ExecRequest = layer_exec(Frame::with_json(Kind::Exec, &own), &base)
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(out.cwd.as_deref(), Some("/etc"));
        // Other first frames pass untouched; a broken Exec is an error.
        let ping = Frame::new(Kind::Ping, Vec::new());
        assert_eq!(layer_exec(ping.clone(), &base).unwrap(), ping);
        assert!(layer_exec(Frame::new(Kind::Exec, b"{".to_vec()), &base).is_err());
    }
}
