//! `iii project init|generate-docker` (seed 000; workers-and-sandboxes spec section 8): scaffold
//! a project from templates embedded in the binary (offline), and Docker assets for it.

mod docker;
mod init;
mod templates;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCommand,
}

#[derive(Subcommand, Debug)]
enum ProjectCommand {
    /// Initialize a new iii project in the current directory
    Init(init::InitArgs),
    /// Generate Docker assets (Dockerfile, docker-compose.yml, .env) for an existing iii project
    GenerateDocker(docker::DockerArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unknown template `{name}` (built-in templates: {known}; or pass --template-dir)")]
    UnknownTemplate { name: String, known: String },
    #[error("template directory {}: {reason}", dir.display())]
    TemplateDir { dir: PathBuf, reason: String },
    #[error("template `{template}`: bad template.yaml: {reason}")]
    TemplateManifest { template: String, reason: String },
    #[error("template `{template}` needs iii >= {needs}, this is iii {have} (update iii, or pass --skip-iii to scaffold anyway)")]
    EngineTooOld {
        template: String,
        needs: semver::Version,
        have: semver::Version,
    },
    #[error("{} is not empty (found `{first}`); pass --allow-non-empty to initialize into it anyway", dir.display())]
    NotEmpty { dir: PathBuf, first: String },
    #[error("{}: bad .iii/project.ini: {reason}", path.display())]
    ProjectIni { path: PathBuf, reason: String },
    #[error("{} is not an iii project (no config.yaml); run `iii project init` first", dir.display())]
    NotAProject { dir: PathBuf },
}

pub fn main(args: ProjectArgs) -> ExitCode {
    let r = match args.command {
        ProjectCommand::Init(a) => init::run(a),
        ProjectCommand::GenerateDocker(a) => docker::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ProjectError + '_ {
    move |source| ProjectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` unless it exists; returns whether it wrote.
fn write_if_absent(path: &std::path::Path, bytes: &[u8]) -> Result<bool, ProjectError> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(path, bytes).map_err(io(path))?;
    Ok(true)
}
