//! `iii worker …`: worker management. Only `sandbox` exists so far; the registry, install and
//! lifecycle subcommands (add, remove, list, start, stop, exec, logs, …) come with issue #13.

pub mod sandbox;

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// `iii worker --help`'s long text: what exists and what does not yet.
pub const LONG_ABOUT: &str = "Manage workers.\n\nThis engine implements `iii worker sandbox` \
(create/exec/run/list/stop/upload/download ephemeral sandboxes through the iii-sandbox daemon). The other \
`iii worker` subcommands (add, remove, reinstall, clear, start, stop, restart, list, status, logs, exec, sync, \
update, verify, init) are not implemented yet; they come with issue #13.";

#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    command: WorkerCommand,
}

#[derive(Subcommand, Debug)]
enum WorkerCommand {
    Sandbox(sandbox::SandboxArgs),
}

/// Runs `iii worker …`.
pub fn main(args: WorkerArgs) -> ExitCode {
    match args.command {
        WorkerCommand::Sandbox(a) => sandbox::main(a),
    }
}
