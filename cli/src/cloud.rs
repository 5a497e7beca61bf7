//! `iii cloud …`: iii Cloud deployments are driven by the external `iii-cloud` binary; this only
//! finds it on PATH and hands it the arguments.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// The external program `iii cloud` dispatches to.
const PROGRAM: &str = "iii-cloud";

#[derive(clap::Args)]
pub struct CloudArgs {
    /// Arguments passed to iii-cloud unchanged (including --help)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

pub fn main(args: CloudArgs) -> ExitCode {
    // exec: iii-cloud takes over this process, so its exit code, signals and terminal are the
    // caller's directly. It only returns on failure.
    let err = std::process::Command::new(PROGRAM).args(&args.args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        eprintln!(
            "Error: `iii cloud` needs the external `{PROGRAM}` binary, which was not found on PATH. \
             Install iii-cloud and put it on PATH, then run `iii cloud --help`."
        );
        // The shell's "command not found".
        return ExitCode::from(127);
    }
    eprintln!("Error: cannot run `{PROGRAM}`: {err}");
    // The shell's "found but not executable".
    ExitCode::from(126)
}
