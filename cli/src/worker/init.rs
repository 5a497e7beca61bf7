//! `iii worker init` (workers-and-sandboxes spec section 1.16): scaffolds a standalone worker project
//! offline, from templates compiled into the binary (or a local `--template-dir`). Each
//! template is a runnable worker on the official `iii-sdk` of its language with an
//! `iii.worker.yaml` naming the worker.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use clap::Args;

use super::error::WorkerError;
use super::names;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The directory to create when -d is not given; the worker is named after the directory
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// The directory to scaffold into (default: NAME, else the current directory)
    #[arg(short, long, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// ts|typescript, js|javascript, py|python, rust|rs (asked on a terminal when missing)
    #[arg(short, long, value_name = "LANG")]
    language: Option<String>,
    /// Use the template files in DIR instead of the built-in ones ({{worker_name}} is substituted)
    #[arg(long, value_name = "DIR")]
    template_dir: Option<PathBuf>,
    /// Scaffold into a directory that already has files (existing files are kept)
    #[arg(long)]
    allow_non_empty: bool,
    /// Accepted for compatibility: the built-in templates need no engine version check
    #[arg(long)]
    skip_iii: bool,
}

/// A template language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    TypeScript,
    JavaScript,
    Python,
    Rust,
}

impl Lang {
    /// The accepted spellings, case-insensitive.
    pub fn parse(s: &str) -> Option<Lang> {
        match s.to_ascii_lowercase().as_str() {
            "ts" | "typescript" => Some(Lang::TypeScript),
            "js" | "javascript" => Some(Lang::JavaScript),
            "py" | "python" => Some(Lang::Python),
            "rust" | "rs" => Some(Lang::Rust),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Lang::TypeScript => "TypeScript",
            Lang::JavaScript => "JavaScript",
            Lang::Python => "Python",
            Lang::Rust => "Rust",
        }
    }

    /// The file that holds the worker's code.
    pub fn entry(self) -> &'static str {
        match self {
            Lang::TypeScript => "./src/index.ts",
            Lang::JavaScript => "./src/index.js",
            Lang::Python => "./src/main.py",
            Lang::Rust => "./src/main.rs",
        }
    }

    /// How to run the scaffolded worker by hand.
    fn run_hint(self) -> &'static str {
        match self {
            Lang::TypeScript => "npm install && npm start",
            Lang::JavaScript => "npm install && npm start",
            Lang::Python => {
                "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python src/main.py"
            }
            Lang::Rust => "cargo run",
        }
    }
}

macro_rules! t {
    ($lang:literal, $path:literal) => {
        (
            $path,
            include_str!(concat!("templates/", $lang, "/", $path)),
        )
    };
}

/// The built-in templates: (path in the project, text). `gitignore` becomes `.gitignore`.
pub fn builtin(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Python => &[
            t!("python", "iii.worker.yaml"),
            t!("python", "requirements.txt"),
            t!("python", "src/main.py"),
            t!("python", "gitignore"),
        ],
        Lang::JavaScript => &[
            t!("javascript", "iii.worker.yaml"),
            t!("javascript", "package.json"),
            t!("javascript", "src/index.js"),
            t!("javascript", "gitignore"),
        ],
        Lang::TypeScript => &[
            t!("typescript", "iii.worker.yaml"),
            t!("typescript", "package.json"),
            t!("typescript", "tsconfig.json"),
            t!("typescript", "src/index.ts"),
            t!("typescript", "gitignore"),
        ],
        Lang::Rust => &[
            t!("rust", "iii.worker.yaml"),
            t!("rust", "Cargo.toml"),
            t!("rust", "src/main.rs"),
            t!("rust", "gitignore"),
        ],
    }
}

/// A package name npm and cargo accept: lowercase, `[a-z0-9_-]`.
fn package_name(worker: &str) -> String {
    let s: String = worker
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "iii-worker".into()
    } else {
        s
    }
}

fn render(text: &str, worker: &str) -> String {
    text.replace("{{worker_name}}", worker)
        .replace("{{package_name}}", &package_name(worker))
}

fn io_err(what: &Path, e: std::io::Error) -> WorkerError {
    WorkerError::Internal(format!("{}: {e}", what.display()))
}

/// Files of a local template dir, relative paths sorted (hidden `.git` skipped).
fn read_template_dir(dir: &Path) -> Result<Vec<(String, String)>, WorkerError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| io_err(&d, e))? {
            let e = e.map_err(|e| io_err(&d, e))?;
            let p = e.path();
            if e.file_name() == ".git" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, text));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Anything besides hidden dotfiles?
fn has_visible_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
    })
}

fn pick_language(given: Option<&str>) -> Result<Lang, WorkerError> {
    if let Some(l) = given {
        return Lang::parse(l).ok_or_else(|| {
            WorkerError::InvalidSource(format!(
                "unknown language '{l}': pass --language ts|typescript, js|javascript, py|python or rust|rs"
            ))
        });
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(WorkerError::InvalidSource(
            "no language given and no terminal to ask on: pass --language ts|js|py|rust".into(),
        ));
    }
    let all = [Lang::TypeScript, Lang::JavaScript, Lang::Python, Lang::Rust];
    for (i, l) in all.iter().enumerate() {
        eprintln!("  {}) {}", i + 1, l.label());
    }
    eprint!("Language [1-4]: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let t = line.trim();
    t.parse::<usize>()
        .ok()
        .and_then(|i| all.get(i.wrapping_sub(1)).copied())
        .or_else(|| Lang::parse(t))
        .ok_or_else(|| {
            WorkerError::InvalidSource(format!("'{t}' is not one of the choices: pass --language"))
        })
}

/// Runs `iii worker init`.
pub fn run(a: InitArgs) -> Result<(), WorkerError> {
    let dir = match (&a.directory, &a.name) {
        (Some(d), _) => d.clone(),
        (None, Some(n)) => PathBuf::from(n),
        (None, None) => PathBuf::from("."),
    };
    let abs = std::path::absolute(&dir).map_err(|e| io_err(&dir, e))?;
    // The worker is named after the directory it lives in (section 1.16).
    let worker = abs
        .components()
        .rfind(|c| matches!(c, std::path::Component::Normal(_)))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_else(|| "iii-worker".into());
    names::validate(&worker)?;
    let reinit = dir.join(".iii/worker.ini").is_file();
    if has_visible_files(&dir) && !a.allow_non_empty && !reinit {
        return Err(WorkerError::AlreadyExists(format!(
            "{} is not empty; pick an empty directory or pass --allow-non-empty (existing files are kept)",
            dir.display()
        )));
    }
    let lang = pick_language(a.language.as_deref())?;
    let files: Vec<(String, String)> = match &a.template_dir {
        Some(t) => read_template_dir(t)?,
        None => builtin(lang)
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let mut written = Vec::new();
    for (rel, text) in files {
        let rel = if rel == "gitignore" {
            ".gitignore".to_string()
        } else {
            rel
        };
        let dest = dir.join(&rel);
        if dest.exists() {
            eprintln!("  kept existing {rel}");
            continue;
        }
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|e| io_err(p, e))?;
        }
        std::fs::write(&dest, render(&text, &worker)).map_err(|e| io_err(&dest, e))?;
        written.push(rel);
    }
    // The worker id survives a re-init.
    let ini = dir.join(".iii/worker.ini");
    if !ini.exists() {
        std::fs::create_dir_all(dir.join(".iii")).map_err(|e| io_err(&dir, e))?;
        std::fs::write(
            &ini,
            format!("[worker]\nid = {}\nname = {worker}\n", uuid::Uuid::new_v4()),
        )
        .map_err(|e| io_err(&ini, e))?;
    }
    eprintln!(
        "✓ Created {} worker '{worker}' in {} ({} files)",
        lang.label(),
        dir.display(),
        written.len()
    );
    eprintln!("  entry: {}", lang.entry());
    eprintln!("  run:   cd {} && {}", dir.display(), lang.run_hint());
    eprintln!(
        "  add:   iii worker add {} (from your project)",
        abs.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_and_templates() {
        assert_eq!(Lang::parse("PY"), Some(Lang::Python));
        assert_eq!(Lang::parse("rs"), Some(Lang::Rust));
        assert_eq!(Lang::parse("TypeScript"), Some(Lang::TypeScript));
        assert_eq!(Lang::parse("go"), None);
        for l in [Lang::TypeScript, Lang::JavaScript, Lang::Python, Lang::Rust] {
            let files = builtin(l);
            let (_, manifest) = files.iter().find(|(p, _)| *p == "iii.worker.yaml").unwrap();
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&render(manifest, "my.worker")).unwrap();
            assert_eq!(doc["name"].as_str(), Some("my.worker"), "{l:?}");
            assert!(doc["scripts"]["start"]
                .as_str()
                .is_some_and(|s| !s.is_empty()));
            let entry = l.entry().trim_start_matches("./");
            assert!(files.iter().any(|(p, _)| *p == entry), "{l:?}: {entry}");
            for (p, text) in files {
                assert!(!render(text, "w").contains("{{"), "{l:?} {p}");
            }
        }
        assert_eq!(package_name("My.Worker"), "my-worker");
    }
}
