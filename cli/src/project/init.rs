//! `iii project init`: resolve the directory, refuse a non-empty one, check the template's
//! minimum engine version, write the template's files (existing files are kept, so a re-init
//! never clobbers edits) and `.iii/project.ini`, whose project id survives re-inits.

use std::path::{Path, PathBuf};

use clap::Args;

use super::templates::{self, Template};
use super::{io, write_if_absent, ProjectError};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Target directory for the new project (positional). Ignored when --directory is given. The project name is the resolved directory's name
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// Target directory. Takes precedence over NAME. If neither NAME nor --directory is provided, the directory defaults to the current directory
    #[arg(short, long, value_name = "DIRECTORY")]
    directory: Option<PathBuf>,
    /// Also generate Docker assets (Dockerfile, docker-compose.yml, .env). Equivalent to running iii project generate-docker separately
    #[arg(long)]
    docker: bool,
    /// Scaffold from a named template: quickstart (http, state, queue, cron, pubsub, a Python and a Node worker) or bare
    #[arg(short, long, value_name = "TEMPLATE", default_value = "quickstart")]
    template: String,
    /// Local directory to use for templates instead of the built-in ones (its TEMPLATE/ subdirectory if present, else the directory itself)
    #[arg(long, value_name = "TEMPLATE_DIR")]
    template_dir: Option<PathBuf>,
    /// Skip the iii-engine version compatibility check (the template's min_iii against this binary's version)
    #[arg(long)]
    skip_iii: bool,
    /// Allow initialization into a non-empty directory. Without this flag, init errors out if the target dir contains anything other than hidden dotfiles (e.g. .git/). Re-running init in a directory with .iii/project.ini is always allowed (idempotent re-init)
    #[arg(long)]
    allow_non_empty: bool,
}

pub const PROJECT_INI: &str = ".iii/project.ini";

pub fn run(a: InitArgs) -> Result<(), ProjectError> {
    let dir = a
        .directory
        .clone()
        .or_else(|| a.name.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    let ini_path = dir.join(PROJECT_INI);
    let previous = if ini_path.is_file() {
        Some(read_ini(&ini_path)?)
    } else {
        None
    };
    if previous.is_none() && !a.allow_non_empty {
        if let Some(first) = first_visible_entry(&dir)? {
            return Err(ProjectError::NotEmpty { dir, first });
        }
    }
    let template = templates::load(&a.template, a.template_dir.as_deref())?;
    if !a.skip_iii {
        check_engine(&template)?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let abs = std::fs::canonicalize(&dir).map_err(io(&dir))?;
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "iii-project".into());

    let (mut written, mut kept) = (0, 0);
    for (rel, raw) in &template.files {
        let target = abs.join(templates::target_path(rel));
        if write_if_absent(&target, &templates::render(raw, &name))? {
            written += 1;
        } else {
            kept += 1;
        }
    }
    let id = previous
        .as_ref()
        .and_then(|p| p.get("id").cloned())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let ini = format!(
        "# Written by `iii project init`; the id stays the same across re-inits.\n[project]\nid = {id}\nname = {name}\ntemplate = {}\niii_version = {}\n",
        template.name,
        env!("CARGO_PKG_VERSION")
    );
    let ini_abs = abs.join(PROJECT_INI);
    std::fs::create_dir_all(abs.join(".iii")).map_err(io(&abs))?;
    std::fs::write(&ini_abs, ini).map_err(io(&ini_abs))?;

    let verb = if previous.is_some() {
        "re-initialized"
    } else {
        "created"
    };
    eprintln!(
        "✓ {verb} project `{name}` in {} from template `{}` ({written} files written, {kept} kept)",
        abs.display(),
        template.name
    );
    if a.docker {
        super::docker::generate(&abs, a.template_dir.as_deref())?;
    }
    let cd = if dir == Path::new(".") {
        String::new()
    } else {
        format!("cd {} && ", dir.display())
    };
    if template.files.keys().any(|k| k.starts_with("workers/")) {
        eprintln!("Next: {cd}iii &   then  iii worker add ./workers/python && iii worker add ./workers/node   then  iii trigger math::add a=1 b=2");
    } else {
        eprintln!("Next: {cd}iii");
    }
    Ok(())
}

/// The first entry of `dir` that is not a dotfile (None if empty or missing).
fn first_visible_entry(dir: &Path) -> Result<Option<String>, ProjectError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ProjectError::Io {
                path: dir.into(),
                source: e,
            })
        }
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

fn check_engine(t: &Template) -> Result<(), ProjectError> {
    let have = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("crate version is semver");
    match &t.min_iii {
        Some(needs) if *needs > have => Err(ProjectError::EngineTooOld {
            template: t.name.clone(),
            needs: needs.clone(),
            have,
        }),
        _ => Ok(()),
    }
}

/// The `key = value` lines of project.ini (section headers and comments skipped).
fn read_ini(path: &Path) -> Result<std::collections::BTreeMap<String, String>, ProjectError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut out = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ProjectError::ProjectIni {
                path: path.into(),
                reason: format!("line {}: expected `key = value`", n + 1),
            });
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}
