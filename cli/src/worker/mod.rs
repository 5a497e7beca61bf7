//! `iii worker …`: worker management — `add`, `remove`, `list`, `clear` edit the project's
//! config.yaml and iii.lock (the engine reloads the file and starts or stops workers), and
//! `sandbox` drives the sandbox daemon. The remaining upstream subcommands (start, stop, status,
//! logs, exec, sync, update, init, reinstall) come later with issue #13; `verify` checks the lock.

pub mod add;
pub mod config_file;
pub mod engine;
pub mod error;
pub mod local;
pub mod lock;
pub mod manage;
pub mod manifest;
pub mod names;
pub mod oci;
pub mod sandbox;
pub mod verify;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use error::WorkerError;

/// `iii worker --help`'s long text: what exists and what does not yet.
pub const LONG_ABOUT: &str = "Manage workers.\n\n`iii worker add/remove/list/clear` edit the project's \
config file ($III_CONFIG_PATH, else ./config.yaml) and ./iii.lock; a running engine reloads the file and starts \
or stops the workers. Builtin workers are added by name (http, state, queue, iii-sandbox, …), container workers \
by OCI image reference, local-path workers by project directory (./dir). `iii worker verify` checks config.yaml \
against iii.lock. `iii worker sandbox` drives ephemeral sandboxes through the iii-sandbox daemon. The other \
upstream subcommands (reinstall, start, stop, restart, status, logs, exec, sync, update, init) and \
registry-name installs are not implemented yet. Errors print as `error: [Wxxx] <message>`.";

#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    command: WorkerCommand,
}

#[derive(Subcommand, Debug)]
enum WorkerCommand {
    /// Add a builtin worker by name, a container worker by OCI image reference, or a local project by path
    #[command(
        long_about = "Add workers to the config file. A builtin name (http, state, stream, queue, pubsub, cron, \
iii-sandbox, …) writes a bare `- name:` entry (iii-sandbox also gets its default config: block) and an iii.lock \
entry `{type: engine}`. An OCI image reference (ex. ghcr.io/org/worker:tag) is pulled into the image store and \
written as `- name: <last path segment>` + `image: <ref>`, with the image's ENV (minus PATH, HOME, HOSTNAME, LANG, \
TERM) as its config: block; then add waits up to 120s for the engine to start it and the worker to connect \
(--no-wait skips the wait; a timeout is not an error). A project directory (starting with `.`, `/` or `~`) \
is checked (iii.worker.yaml, else package.json / Cargo.toml / pyproject.toml / requirements.txt) and written as \
`- name: <manifest name or dir name>` + `worker_path: <canonical dir>`; the engine copies it into a workspace, runs \
setup+install once and then its start script in a sandbox. Existing entries keep their hand-written config:. \
Everything else in the file, comments included, stays as it was."
    )]
    Add(add::AddArgs),
    /// Remove workers from the config file and iii.lock
    #[command(
        long_about = "Remove workers from the config file and iii.lock. The engine's file watcher stops a \
running worker; cached images remain (use `iii worker clear <name>` to delete them). Without a terminal, pass -y."
    )]
    Remove(manage::RemoveArgs),
    /// List the configured workers and their status
    #[command(
        long_about = "List the config file's workers (table on stderr): version from iii.lock, and status from \
the engine's engine::workers::list when it is reachable (builtins run whenever the engine does)."
    )]
    List,
    /// Delete cached worker images
    #[command(
        long_about = "Delete the cached images of a worker (or of every image worker in the config file); a \
running worker's are kept. Local only, no engine needed. Without a terminal, pass -y."
    )]
    Clear(manage::ClearArgs),
    Sandbox(sandbox::SandboxArgs),
    /// Check that config.yaml matches iii.lock
    #[command(
        long_about = "Check that the config file matches ./iii.lock: every worker that needs a lock entry \
(registry/binary names; not builtins, images or local paths) has one, and binary workers have an artifact for \
this host's target. --strict also checks declared dependencies: every locked worker's, and every local worker's \
iii.worker.yaml `dependencies:`, must be locked at a version inside its range. Exit 0 when they match, else 1."
    )]
    Verify(verify::VerifyArgs),
}

/// Holds `./.iii-worker.lock` so two `iii worker` edits of one project never interleave.
pub struct ProjectLock {
    _file: std::fs::File,
}

impl ProjectLock {
    const PATH: &'static str = ".iii-worker.lock";

    /// Takes the lock or fails at once (W120) when another command holds it.
    pub fn acquire() -> Result<ProjectLock, WorkerError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::PATH)
            .map_err(|e| WorkerError::LockIo(format!("cannot open {}: {e}", Self::PATH)))?;
        match f.try_lock() {
            Ok(()) => Ok(ProjectLock { _file: f }),
            Err(std::fs::TryLockError::WouldBlock) => Err(WorkerError::LockBusy(Self::PATH.into())),
            Err(std::fs::TryLockError::Error(e)) => Err(WorkerError::LockIo(format!(
                "cannot lock {}: {e}",
                Self::PATH
            ))),
        }
    }
}

/// Runs `iii worker …`.
pub fn main(args: WorkerArgs) -> ExitCode {
    if let WorkerCommand::Sandbox(a) = args.command {
        return sandbox::main(a);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            WorkerError::Internal(format!("cannot start the async runtime: {e}")).print();
            return ExitCode::FAILURE;
        }
    };
    let ok = rt.block_on(async move {
        let report = |r: Result<(), WorkerError>| match r {
            Ok(()) => true,
            Err(e) => {
                e.print();
                false
            }
        };
        match args.command {
            WorkerCommand::Add(a) => add::run(a).await,
            WorkerCommand::Remove(a) => manage::remove(a),
            WorkerCommand::List => report(manage::list().await),
            WorkerCommand::Clear(a) => report(manage::clear(a).await),
            WorkerCommand::Verify(a) => report(verify::run(a)),
            WorkerCommand::Sandbox(_) => unreachable!("dispatched above"),
        }
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
