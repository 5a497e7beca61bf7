//! The project templates compiled into the binary (so `iii project init` works offline), and
//! reading a local `--template-dir` tree in the same shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ProjectError;

/// Embedded template files: `<template>/<path inside the project>`. `gitignore` becomes
/// `.gitignore` on write (a file named `.gitignore` in the source tree would be taken by git).
const EMBEDDED: &[(&str, &str)] = &[
    (
        "quickstart/template.yaml",
        include_str!("templates/quickstart/template.yaml"),
    ),
    (
        "quickstart/config.yaml",
        include_str!("templates/quickstart/config.yaml"),
    ),
    (
        "quickstart/README.md",
        include_str!("templates/quickstart/README.md"),
    ),
    (
        "quickstart/gitignore",
        include_str!("templates/quickstart/gitignore"),
    ),
    (
        "quickstart/workers/python/iii.worker.yaml",
        include_str!("templates/quickstart/workers/python/iii.worker.yaml"),
    ),
    (
        "quickstart/workers/python/requirements.txt",
        include_str!("templates/quickstart/workers/python/requirements.txt"),
    ),
    (
        "quickstart/workers/python/src/main.py",
        include_str!("templates/quickstart/workers/python/src/main.py"),
    ),
    (
        "quickstart/workers/node/iii.worker.yaml",
        include_str!("templates/quickstart/workers/node/iii.worker.yaml"),
    ),
    (
        "quickstart/workers/node/package.json",
        include_str!("templates/quickstart/workers/node/package.json"),
    ),
    (
        "quickstart/workers/node/src/index.js",
        include_str!("templates/quickstart/workers/node/src/index.js"),
    ),
    (
        "bare/template.yaml",
        include_str!("templates/bare/template.yaml"),
    ),
    (
        "bare/config.yaml",
        include_str!("templates/bare/config.yaml"),
    ),
    ("bare/README.md", include_str!("templates/bare/README.md")),
    ("bare/gitignore", include_str!("templates/bare/gitignore")),
];

/// The file of a template that describes it; read, never copied.
pub const MANIFEST: &str = "template.yaml";

/// One template's files, keyed by their path inside the project (`/`-separated).
pub struct Template {
    pub name: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// `min_iii` of template.yaml: the oldest engine the template works with.
    pub min_iii: Option<semver::Version>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct TemplateManifest {
    min_iii: Option<String>,
}

/// The names of the embedded templates.
pub fn embedded_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = EMBEDDED
        .iter()
        .filter_map(|(p, _)| p.strip_suffix("/template.yaml"))
        .collect();
    v.dedup();
    v
}

/// Loads template `name`, from `template_dir` when given (its `<name>/` subdirectory if there is
/// one, else the directory itself), else from the embedded set.
pub fn load(name: &str, template_dir: Option<&Path>) -> Result<Template, ProjectError> {
    let mut files = BTreeMap::new();
    match template_dir {
        Some(dir) => {
            let sub = dir.join(name);
            let root = if sub.is_dir() { sub } else { dir.to_path_buf() };
            if !root.is_dir() {
                return Err(ProjectError::TemplateDir {
                    dir: dir.to_path_buf(),
                    reason: "not a directory".into(),
                });
            }
            read_tree(&root, &root, &mut files)?;
            if files.is_empty() {
                return Err(ProjectError::TemplateDir {
                    dir: root,
                    reason: "holds no files".into(),
                });
            }
        }
        None => {
            let prefix = format!("{name}/");
            for (p, text) in EMBEDDED {
                if let Some(rel) = p.strip_prefix(&prefix) {
                    files.insert(rel.to_string(), text.as_bytes().to_vec());
                }
            }
            if files.is_empty() {
                return Err(ProjectError::UnknownTemplate {
                    name: name.into(),
                    known: embedded_names().join(", "),
                });
            }
        }
    }
    let min_iii = match files.remove(MANIFEST) {
        Some(raw) => {
            let m: TemplateManifest =
                serde_yaml::from_slice(&raw).map_err(|e| ProjectError::TemplateManifest {
                    template: name.into(),
                    reason: e.to_string(),
                })?;
            match m.min_iii {
                Some(v) => Some(semver::Version::parse(v.trim()).map_err(|e| {
                    ProjectError::TemplateManifest {
                        template: name.into(),
                        reason: format!("min_iii `{v}` is not a version: {e}"),
                    }
                })?),
                None => None,
            }
        }
        None => None,
    };
    Ok(Template {
        name: name.into(),
        files,
        min_iii,
    })
}

fn read_tree(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), ProjectError> {
    let io = |path: &Path, e: std::io::Error| ProjectError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Build output and installs in a template under development never belong in a project.
        if matches!(
            name,
            "node_modules" | ".venv" | "__pycache__" | ".git" | ".iii"
        ) {
            continue;
        }
        if p.is_dir() {
            read_tree(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).expect("under root");
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.insert(rel, std::fs::read(&p).map_err(|e| io(&p, e))?);
        }
    }
    Ok(())
}

/// `{{project_name}}` and `{{iii_version}}` substituted in text files; other bytes unchanged.
pub fn render(raw: &[u8], project_name: &str) -> Vec<u8> {
    match std::str::from_utf8(raw) {
        Ok(text) => text
            .replace("{{project_name}}", project_name)
            .replace("{{iii_version}}", env!("CARGO_PKG_VERSION"))
            .into_bytes(),
        Err(_) => raw.to_vec(),
    }
}

/// Where a template path lands in the project: `gitignore` and `dockerignore` (at any depth)
/// become dotfiles.
pub fn target_path(rel: &str) -> String {
    let (dir, file) = match rel.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, rel),
    };
    let file = match file {
        "gitignore" => ".gitignore",
        "dockerignore" => ".dockerignore",
        f => f,
    };
    match dir {
        Some(d) => format!("{d}/{file}"),
        None => file.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_templates_load_with_their_minimum_version() {
        assert_eq!(embedded_names(), ["quickstart", "bare"]);
        let q = load("quickstart", None).unwrap();
        assert!(q.files.contains_key("workers/python/src/main.py"));
        assert!(!q.files.contains_key(MANIFEST));
        assert_eq!(q.min_iii, Some(semver::Version::new(0, 1, 0)));
        assert!(matches!(
            load("nope", None),
            Err(ProjectError::UnknownTemplate { .. })
        ));
    }

    #[test]
    fn dotfile_names_are_restored() {
        assert_eq!(target_path("gitignore"), ".gitignore");
        assert_eq!(
            target_path("workers/node/gitignore"),
            "workers/node/.gitignore"
        );
        assert_eq!(target_path("src/main.py"), "src/main.py");
    }
}
