//! `iii worker …`: worker management — `add`, `reinstall`, `remove`, `list`, `clear` edit the
//! project's config.yaml and iii.lock (the engine reloads the file and starts or stops workers),
//! `sync`/`update` replay and refresh iii.lock, `verify` checks it, `init` scaffolds a worker
//! project, `start`, `stop`, `restart`, `status`, `logs` and `exec` manage the engine's image and
//! local workers, and `sandbox` drives the sandbox daemon.

pub mod add;
pub mod config_file;
pub mod engine;
pub mod error;
pub mod exec;
pub mod init;
pub mod lifecycle;
pub mod local;
pub mod lock;
pub mod logs;
pub mod manage;
pub mod manifest;
pub mod names;
pub mod oci;
pub mod registry_api;
pub mod sandbox;
pub mod status;
pub mod sync;
pub mod verify;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use error::WorkerError;

/// `iii worker --help`'s long text: what exists and what does not yet.
pub const LONG_ABOUT: &str = "Manage workers.\n\n`iii worker add/remove/list/clear` edit the project's \
config file ($III_CONFIG_PATH, else ./config.yaml) and ./iii.lock; a running engine reloads the file and starts \
or stops the workers. Builtin workers are added by name (http, state, queue, iii-sandbox, …), container workers \
by OCI image reference, local-path workers by project directory (./dir), registry workers by name through the registry API ($III_API_URL). `iii worker sync` installs exactly what ./iii.lock pins, `update` refreshes the pins, `verify` checks config.yaml against iii.lock, `init` scaffolds a new worker project. `iii worker start/stop/restart/status` ask the running engine about its image and local workers (it supervises them; a stop sticks until a start, a changed entry or an engine restart), and `iii worker logs` prints their output from $III_HOME/logs/<name>/ (default ~/.iii). `iii worker exec` runs a command inside a running image or local worker. `iii worker sandbox` drives ephemeral sandboxes through the iii-sandbox daemon. Errors print as `error: [Wxxx] <message>`.";

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
    /// Start a stopped image or local worker
    #[command(
        long_about = "Ask the running engine to start an image or local worker (one stopped with `iii worker stop`, \
or retry a crashed one now), then wait up to 120s for it to connect (--no-wait skips the wait; a timeout is not \
an error). Builtin workers run inside the engine and cannot be started on their own."
    )]
    Start(lifecycle::StartArgs),
    /// Stop an image or local worker until it is started again
    #[command(
        long_about = "Ask the running engine to stop an image or local worker and wait until its sandbox is gone. \
It stays stopped (no automatic restart) until `iii worker start`/`restart`, a config change to its entry, or an \
engine restart. The config file is not edited."
    )]
    Stop(lifecycle::StopArgs),
    /// Stop and start an image or local worker
    #[command(
        long_about = "Stop then start an image or local worker (its restart back-off is reset), then wait up to \
120s for it to connect unless --no-wait."
    )]
    Restart(lifecycle::StartArgs),
    /// Show a worker's phase, process, restarts and recent output
    #[command(
        long_about = "Show a worker's phase (starting, booting, ready, restarting, stopped, failed) from the engine's \
worker::status and engine::workers::list. On a terminal it redraws every 200ms until the worker is ready, stopped, \
failed or the engine is down; --no-watch (or no terminal) prints one snapshot. Exit 1 when the worker is not in \
the config file, failed, or the engine is not running."
    )]
    Status(status::StatusArgs),
    /// Print an image or local worker's output
    #[command(
        long_about = "Print the last 100 lines of the worker's stderr.log (to stderr) and stdout.log (to stdout) from \
$III_HOME/logs/<name>/ (default ~/.iii/logs/<name>/), which the engine writes. -f keeps printing new lines until \
Ctrl-C. No engine needed."
    )]
    Logs(logs::LogsArgs),
    /// Reinstall workers: `add --force` without the readiness wait
    #[command(
        long_about = "Reinstall workers (spec section 1.3): stop the worker if the engine runs it, delete its artifacts \
(binary, cached image, managed/<name>/), then add it again without waiting. --reset-config also drops the \
hand-written config: of its entry."
    )]
    Reinstall(add::ReinstallArgs),
    /// Install exactly what iii.lock pins (--frozen: verify only, for CI)
    #[command(
        long_about = "Install every worker exactly as iii.lock pins it (images by digest, binaries by sha256); \
never contacts the resolver and never rewrites config.yaml or iii.lock. With --frozen nothing is changed: \
config.yaml (and iii.worker.yaml when the lock records its manifest_hash) is checked against iii.lock and any \
drift is printed as stable text with exit code 1."
    )]
    Sync(sync::SyncArgs),
    /// Refresh the pins in iii.lock on purpose
    #[command(
        long_about = "Resolve the named worker (default: every root worker in iii.lock) again at its latest \
version through the registry API ($III_API_URL) and reinstall it, rewriting its config entry and iii.lock pins. \
An OCI entry with a tag is pulled again and its digest re-pinned."
    )]
    Update(sync::UpdateArgs),
    /// Scaffold a new worker project from the embedded templates
    #[command(
        long_about = "Create a standalone worker project (py, ts, js or rust) on the official iii-sdk, offline \
from templates built into iii: an entry file, the package manifest and an iii.worker.yaml naming the worker. \
The directory is -d, else NAME, else the current one; a non-empty one is refused unless --allow-non-empty."
    )]
    Init(init::InitArgs),
    Sandbox(sandbox::SandboxArgs),
    /// Check that config.yaml matches iii.lock
    #[command(
        long_about = "Check that the config file matches ./iii.lock: every worker that needs a lock entry \
(registry/binary names; not builtins, images or local paths) has one, and binary workers have an artifact for \
this host's target. --strict also checks declared dependencies: every locked worker's, and every local worker's \
iii.worker.yaml `dependencies:`, must be locked at a version inside its range. Exit 0 when they match, else 1."
    )]
    Verify(verify::VerifyArgs),
    /// Run a command inside a running image or local worker
    #[command(
        long_about = "Run a command inside a running managed worker's sandbox, through the worker host's \
~/.iii/managed/<name>/shell.sock ($III_HOME overrides ~/.iii). The command sees the worker's own environment \
with the -e entries on top, and starts in the worker's working directory unless -w is given. A terminal is \
used when stdin and stdout are terminals (-t forces it, --no-tty never): raw mode, window size followed. \
Without one, stdin is streamed (a terminal stdin is closed at once), stdout and stderr are kept apart, Ctrl-C \
is passed on and a second Ctrl-C within a second kills the command (exit 130). Exits with the command's code \
(128+signal when signalled); --timeout kills it and exits 124. Not running: W113; not a managed worker: W110."
    )]
    Exec(exec::ExecArgs),
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
    let command = match args.command {
        WorkerCommand::Sandbox(a) => return sandbox::main(a),
        // Blocking, with its own threads and signal mask: no async runtime.
        WorkerCommand::Exec(a) => return exec::main(a),
        other => other,
    };
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
        match command {
            WorkerCommand::Add(a) => add::run(a).await,
            WorkerCommand::Remove(a) => manage::remove(a),
            WorkerCommand::List => report(manage::list().await),
            WorkerCommand::Clear(a) => report(manage::clear(a).await),
            WorkerCommand::Start(a) => report(lifecycle::start(a).await),
            WorkerCommand::Stop(a) => report(lifecycle::stop(a).await),
            WorkerCommand::Restart(a) => report(lifecycle::restart(a).await),
            WorkerCommand::Status(a) => match status::run(a).await {
                Ok(ok) => ok,
                Err(e) => {
                    e.print();
                    false
                }
            },
            WorkerCommand::Logs(a) => report(logs::run(a).await),
            WorkerCommand::Reinstall(a) => add::reinstall(a).await,
            WorkerCommand::Sync(a) => sync::sync(a).await,
            WorkerCommand::Update(a) => sync::update(a).await,
            WorkerCommand::Init(a) => report(init::run(a)),
            WorkerCommand::Verify(a) => report(verify::run(a)),
            WorkerCommand::Sandbox(_) | WorkerCommand::Exec(_) => unreachable!("dispatched above"),
        }
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
