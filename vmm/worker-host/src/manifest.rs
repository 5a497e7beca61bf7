//! `iii.worker.yaml` (workers-and-sandboxes spec section 2.3) and project detection: what a local-path
//! worker is, how it is set up, installed and started. Read by `iii worker add ./dir` (strict,
//! with deprecation warnings) and by the worker host on every start (the same key and shape
//! checks). Names (the worker's and its dependencies') are checked by the caller, which owns
//! the naming rule.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// The manifest's file name in a project directory.
pub const MANIFEST_FILE: &str = "iii.worker.yaml";
/// Larger manifests are refused unread.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "runtime",
    "scripts",
    "env",
    "dependencies",
    "resources",
    "iii",
    "deploy",
    "manifest",
    "tags",
    "config",
    "language",
    "entry",
];
const RUNTIME_KEYS: &[&str] = &["base_image", "kind", "package_manager", "entry", "language"];
const SCRIPT_KEYS: &[&str] = &["setup", "install", "start"];
const RESOURCE_KEYS: &[&str] = &["cpus", "memory"];
/// Set by the worker host; a manifest cannot point the worker elsewhere.
pub const RESERVED_ENV: &[&str] = &["III_URL", "III_ENGINE_URL", "III_WORKER_NAME"];

/// Why a project cannot be run as a local worker.
#[allow(
    missing_docs,
    reason = "the messages document the variants and their fields"
)]
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is {size} bytes; a worker manifest may have at most {MAX_MANIFEST_BYTES}", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}{}: invalid YAML: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Yaml {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{} line {line}: `{key}` must be {expected}", path.display())]
    Shape {
        path: PathBuf,
        key: String,
        line: usize,
        expected: String,
    },
    #[error("{}: unknown key(s) {}; allowed: top level {}, runtime.{{{}}}, scripts.{{{}}}, resources.{{{}}}",
        path.display(),
        keys.iter().map(|(k, l)| format!("`{k}` (line {l})")).collect::<Vec<_>>().join(", "),
        TOP_KEYS.join(", "), RUNTIME_KEYS.join(", "), SCRIPT_KEYS.join(", "), RESOURCE_KEYS.join(", "))]
    UnknownKeys {
        path: PathBuf,
        keys: Vec<(String, usize)>,
    },
    #[error("{}: `name` is required (the worker's name in config.yaml)", path.display())]
    MissingName { path: PathBuf },
    #[error("{} line {line}: `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        line: usize,
        message: String,
    },
    #[error("No project manifest detected in '{}'. Looked for: iii.worker.yaml, package.json, Cargo.toml, pyproject.toml, requirements.txt.", dir.display())]
    NoProject { dir: PathBuf },
    #[error("{}: no way to start the worker: set `scripts.start` (or the deprecated `runtime.kind`)", path.display())]
    NoStart { path: PathBuf },
}

/// The language a project runs on; picks the base image.
#[allow(missing_docs, reason = "the names are the kinds")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Typescript,
    Javascript,
    Bun,
    Python,
    Rust,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "" | "typescript" | "ts" | "node" => Kind::Typescript,
            "javascript" | "js" => Kind::Javascript,
            "bun" => Kind::Bun,
            "python" => Kind::Python,
            "rust" => Kind::Rust,
            _ => return None,
        })
    }

    /// `typescript`, `javascript`, `bun`, `python` or `rust`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Typescript => "typescript",
            Kind::Javascript => "javascript",
            Kind::Bun => "bun",
            Kind::Python => "python",
            Kind::Rust => "rust",
        }
    }
}

/// A parsed, validated `iii.worker.yaml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    /// `name` (trimmed; `None` when absent or empty).
    pub name: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `runtime.base_image`, when plausible.
    pub base_image: Option<String>,
    /// `scripts:` as given: `None` for an absent key, `Some("")` for an explicit opt-out.
    pub scripts: Option<[Option<String>; 3]>,
    /// `env`, reserved keys dropped.
    pub env: Vec<(String, String)>,
    /// `name → semver range`, in file order.
    pub dependencies: Vec<(String, String)>,
    /// `resources.cpus`.
    pub cpus: Option<u32>,
    /// `resources.memory`, MiB.
    pub memory_mb: Option<u32>,
    /// Deprecated keys present (dotted).
    pub deprecated: Vec<String>,
    /// Things worth telling the user that do not stop the worker.
    pub warnings: Vec<String>,
    legacy_kind: Option<String>,
    legacy_pm: Option<String>,
    legacy_entry: Option<String>,
}

/// What a local worker runs: detected or declared.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// The project directory.
    pub dir: PathBuf,
    /// The manifest's name, else the directory's.
    pub name: String,
    /// Its language.
    pub kind: Kind,
    /// Runs once, before install.
    pub setup: String,
    /// Runs once (dependency install).
    pub install: String,
    /// Runs on every start.
    pub start: String,
    /// The manifest's env, reserved keys dropped.
    pub env: Vec<(String, String)>,
    /// `name → semver range` from the manifest.
    pub dependencies: Vec<(String, String)>,
    /// `resources.cpus`.
    pub cpus: Option<u32>,
    /// `resources.memory`, MiB.
    pub memory_mb: Option<u32>,
    /// `runtime.base_image`, when plausible.
    pub base_image: Option<String>,
    /// The manifest, when the project has one.
    pub manifest: Option<Manifest>,
    /// What was detected, for messages (`iii.worker.yaml`, `package.json`, …).
    pub detected_from: &'static str,
}

/// 1-based line of a dotted key in the manifest text (a best effort from indentation; 1 when
/// not found, so every message still names a line).
pub fn line_of(text: &str, dotted: &str) -> usize {
    let mut parts = dotted.split('.').peekable();
    let mut indent_min = 0usize;
    let mut start = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    let mut found = 1usize;
    while let Some(part) = parts.next() {
        let mut hit = None;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let trimmed = l.trim_start();
            let indent = l.len() - trimmed.len();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if i > start && indent < indent_min {
                break;
            }
            let key = trimmed
                .strip_prefix(part)
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .is_some()
                || trimmed.strip_prefix(&format!("\"{part}\"")).is_some()
                || trimmed.strip_prefix(&format!("'{part}'")).is_some();
            // Top-level keys sit at column 0; nested ones deeper than their parent.
            let level_ok = if indent_min == 0 {
                indent == 0
            } else {
                indent >= indent_min
            };
            if key && level_ok {
                hit = Some((i, indent));
                break;
            }
        }
        match hit {
            Some((i, indent)) => {
                found = i + 1;
                start = i + 1;
                indent_min = indent + 1;
            }
            None => return found,
        }
        if parts.peek().is_none() {
            break;
        }
    }
    found
}

struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Reader<'_> {
    fn shape(&self, key: &str, expected: &str) -> ManifestError {
        ManifestError::Shape {
            path: self.path.to_path_buf(),
            key: key.into(),
            line: line_of(self.text, key),
            expected: expected.into(),
        }
    }

    fn invalid(&self, key: &str, message: String) -> ManifestError {
        ManifestError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            line: line_of(self.text, key),
            message,
        }
    }

    fn string(
        &self,
        m: &Mapping,
        key: &str,
        dotted: &str,
    ) -> Result<Option<String>, ManifestError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(self.shape(dotted, "a string")),
        }
    }

    fn mapping<'v>(&self, m: &'v Mapping, key: &str) -> Result<Option<&'v Mapping>, ManifestError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Mapping(x)) => Ok(Some(x)),
            Some(_) => Err(self.shape(
                key,
                &format!("a mapping (indented `key: value` lines under `{key}:`)"),
            )),
        }
    }

    fn unknown(&self, m: &Mapping, prefix: &str, allowed: &[&str], out: &mut Vec<(String, usize)>) {
        for k in m.keys() {
            let name = match k {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            if !allowed.contains(&name.as_str()) {
                let dotted = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                };
                let line = line_of(self.text, &dotted);
                out.push((dotted, line));
            }
        }
    }

    fn uint(&self, m: &Mapping, key: &str, dotted: &str) -> Result<Option<u32>, ManifestError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.shape(dotted, "a non-negative integer")),
            Some(_) => Err(self.shape(dotted, "a non-negative integer")),
        }
    }
}

/// Is this a plausible image reference (`[A-Za-z0-9._/:@+-]`, 1..=512 chars)?
fn plausible_ref(s: &str) -> bool {
    (1..=512).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/:@+-".contains(c))
}

/// Parses manifest text strictly: shapes, unknown keys, env values, dependency ranges. `name`
/// is not required here (see [`Manifest::require_name`]).
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let r = Reader { path, text };
    let v: Value = serde_yaml::from_str(text).map_err(|e| ManifestError::Yaml {
        path: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    let top = match v {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => {
            return Err(ManifestError::Shape {
                path: path.to_path_buf(),
                key: "(document)".into(),
                line: 1,
                expected: "a mapping of keys (name, scripts, env, …)".into(),
            })
        }
    };
    // Shapes first, so a wrong shape is named before the unknown keys inside it.
    let mut m = Manifest {
        name: r.string(&top, "name", "name")?.filter(|s| !s.is_empty()),
        description: r.string(&top, "description", "description")?,
        ..Manifest::default()
    };
    for k in ["iii", "deploy", "manifest"] {
        r.string(&top, k, k)?;
    }
    if let Some(t) = top.get("tags") {
        let ok = matches!(t, Value::Null)
            || matches!(t, Value::Sequence(s) if s.iter().all(|x| matches!(x, Value::String(_))));
        if !ok {
            return Err(r.shape("tags", "a list of strings"));
        }
    }
    let runtime = r.mapping(&top, "runtime")?;
    let scripts = r.mapping(&top, "scripts")?;
    let resources = r.mapping(&top, "resources")?;
    let env = r.mapping(&top, "env")?;
    let deps = r.mapping(&top, "dependencies")?;
    let mut unknown = Vec::new();
    r.unknown(&top, "", TOP_KEYS, &mut unknown);
    if let Some(x) = runtime {
        r.unknown(x, "runtime", RUNTIME_KEYS, &mut unknown);
    }
    if let Some(x) = scripts {
        r.unknown(x, "scripts", SCRIPT_KEYS, &mut unknown);
    }
    if let Some(x) = resources {
        r.unknown(x, "resources", RESOURCE_KEYS, &mut unknown);
    }
    if !unknown.is_empty() {
        return Err(ManifestError::UnknownKeys {
            path: path.to_path_buf(),
            keys: unknown,
        });
    }
    if let Some(x) = runtime {
        if let Some(b) = r.string(x, "base_image", "runtime.base_image")? {
            if plausible_ref(&b) {
                m.base_image = Some(b);
            } else {
                m.warnings.push(format!(
                    "`runtime.base_image` {b:?} is not a plausible image reference; the default image is used"
                ));
            }
        }
        for k in ["kind", "package_manager", "entry", "language"] {
            let val = r.string(x, k, &format!("runtime.{k}"))?;
            if val.is_some() {
                m.deprecated.push(format!("runtime.{k}"));
            }
            match k {
                "kind" => m.legacy_kind = val.or(m.legacy_kind.take()),
                "language" => m.legacy_kind = m.legacy_kind.take().or(val),
                "package_manager" => m.legacy_pm = val,
                _ => m.legacy_entry = val,
            }
        }
    }
    for k in ["language", "entry"] {
        if r.string(&top, k, k)?.is_some() {
            m.deprecated.push(k.into());
        }
    }
    if top.get("config").is_some() {
        m.deprecated.push("config".into());
    }
    if let Some(x) = scripts {
        let mut s: [Option<String>; 3] = Default::default();
        for (i, k) in SCRIPT_KEYS.iter().enumerate() {
            s[i] = match x.get(*k) {
                None => None,
                Some(Value::Null) => Some(String::new()),
                Some(Value::String(v)) => Some(v.trim().to_string()),
                Some(_) => {
                    return Err(r.shape(
                        &format!("scripts.{k}"),
                        "a command string (quote it: `start: \"python3 main.py\"`)",
                    ))
                }
            };
        }
        if s[1].is_none() {
            m.warnings.push(
                "`scripts.install` is not set: dependency install will be skipped (set `install: \"\"` to silence this)"
                    .into(),
            );
        }
        m.scripts = Some(s);
    }
    if let Some(x) = resources {
        m.cpus = r.uint(x, "cpus", "resources.cpus")?;
        m.memory_mb = r.uint(x, "memory", "resources.memory")?;
    }
    if let Some(x) = env {
        for (k, v) in x {
            let Value::String(key) = k else {
                return Err(r.shape("env", "a mapping of string keys to string values"));
            };
            let dotted = format!("env.{key}");
            let val = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => {
                    return Err(r.shape(&dotted, &format!("a string (quote it: `{key}: \"{n}\"`)")))
                }
                Value::Bool(b) => {
                    return Err(r.shape(&dotted, &format!("a string (quote it: `{key}: \"{b}\"`)")))
                }
                _ => return Err(r.shape(&dotted, "a string")),
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(r.invalid(
                    &dotted,
                    "environment variable names are letters, digits and `_`".into(),
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                m.warnings.push(format!(
                    "`env.{key}` is ignored: the worker host sets it (the engine's address and the worker's name)"
                ));
                continue;
            }
            m.env.push((key.clone(), val));
        }
    }
    if let Some(x) = deps {
        for (k, v) in x {
            let Value::String(dep) = k else {
                return Err(r.shape(
                    "dependencies",
                    "a mapping of worker names to version ranges",
                ));
            };
            let dotted = format!("dependencies.{dep}");
            let range = match v {
                Value::String(s) => s.trim().to_string(),
                Value::Number(n) => n.to_string(),
                _ => return Err(r.shape(&dotted, "a version range string (ex. \"^1.2\")")),
            };
            if range.is_empty() {
                return Err(r.invalid(&dotted, "the version range is empty".into()));
            }
            if let Err(e) = semver::VersionReq::parse(&range) {
                return Err(r.invalid(&dotted, format!("{range:?} is not a version range: {e}")));
            }
            if m.name.as_deref() == Some(dep.as_str()) {
                return Err(r.invalid(&dotted, "a worker cannot depend on itself".into()));
            }
            m.dependencies.push((dep.clone(), range));
        }
    }
    Ok(m)
}

impl Manifest {
    /// `iii worker add` needs the name.
    pub fn require_name(&self, path: &Path) -> Result<&str, ManifestError> {
        self.name
            .as_deref()
            .ok_or_else(|| ManifestError::MissingName {
                path: path.to_path_buf(),
            })
    }

    /// The batched deprecation warning, when there is one to give.
    pub fn deprecation_warning(&self) -> Option<String> {
        (!self.deprecated.is_empty()).then(|| {
            format!(
                "deprecated key(s) in {MANIFEST_FILE}: {} (use `scripts:`; `config:` is no longer copied into config.yaml)",
                self.deprecated.join(", ")
            )
        })
    }
}

/// Reads `<dir>/iii.worker.yaml` if present (size cap first).
pub fn read(dir: &Path) -> Result<Option<(PathBuf, Manifest)>, ManifestError> {
    let path = dir.join(MANIFEST_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ManifestError::Read { path, source }),
    };
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            path,
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
        path: path.clone(),
        source,
    })?;
    let m = parse(&path, &text)?;
    Ok(Some((path, m)))
}

const NODE_SETUP: &str = "command -v node >/dev/null || (curl -fsSL https://deb.nodesource.com/setup_22.x | bash - && apt-get install -y nodejs)";
const PYTHON_SETUP: &str = "command -v python3 >/dev/null || (apt-get update && apt-get install -y python3 python3-pip python3-venv)";
const RUST_SETUP: &str =
    "command -v cargo >/dev/null || (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y)";
const CARGO_ENV: &str = "[ -f \"$HOME/.cargo/env\" ] && . \"$HOME/.cargo/env\";";

/// Scripts inferred from the deprecated `runtime.kind/package_manager/entry`.
fn legacy_scripts(
    path: &Path,
    kind: Kind,
    pm: Option<&str>,
    entry: Option<&str>,
) -> Result<(String, String, String), ManifestError> {
    let entry = entry.unwrap_or("");
    let s = |a: &str, b: &str, c: String| (a.to_string(), b.to_string(), c);
    Ok(match (kind, pm) {
        (Kind::Bun, _) => s("", "bun install", format!("bun run {entry}")),
        (Kind::Typescript, Some("bun")) => s(
            "curl -fsSL https://bun.sh/install | bash",
            "export PATH=$HOME/.bun/bin:$PATH && bun install",
            format!("export PATH=$HOME/.bun/bin:$PATH && bun {entry}"),
        ),
        (Kind::Typescript | Kind::Javascript, Some("npm")) => {
            s(NODE_SETUP, "npm install", format!("npx tsx {entry}"))
        }
        (Kind::Typescript | Kind::Javascript, Some("pnpm")) => {
            s(NODE_SETUP, "pnpm install", format!("pnpm exec tsx {entry}"))
        }
        (Kind::Typescript | Kind::Javascript, Some("yarn")) => {
            s(NODE_SETUP, "yarn install", format!("yarn exec tsx {entry}"))
        }
        (Kind::Typescript | Kind::Javascript, _) => {
            return Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                key: "runtime.package_manager".into(),
                line: 1,
                message: "a typescript/javascript worker needs `runtime.package_manager` (npm, pnpm, yarn or bun) — or write explicit `scripts:`".into(),
            })
        }
        (Kind::Python, _) => s(
            "command -v python3 >/dev/null || (apt-get update && apt-get install -y python3 python3-venv python3-pip)",
            "python3 -m venv .venv && .venv/bin/pip install -e .",
            format!(".venv/bin/python -m {entry}"),
        ),
        (Kind::Rust, _) => (
            RUST_SETUP.into(),
            format!("{CARGO_ENV} cargo build --release"),
            format!("{CARGO_ENV} cargo run --release"),
        ),
    })
}

/// Detects a project without a manifest: `(kind, setup, install, start, trigger file)`.
fn detect(dir: &Path) -> Option<(Kind, &'static str, String, String, &'static str)> {
    let has = |f: &str| dir.join(f).is_file();
    if has("package.json") {
        if has("bun.lock") || has("bun.lockb") {
            return Some((
                Kind::Bun,
                "",
                "bun install".into(),
                "bun run dev".into(),
                "package.json",
            ));
        }
        return Some((
            Kind::Typescript,
            NODE_SETUP,
            "npm install".into(),
            "npm run dev".into(),
            "package.json",
        ));
    }
    if has("Cargo.toml") {
        return Some((
            Kind::Rust,
            RUST_SETUP,
            format!("{CARGO_ENV} cargo build --release"),
            format!("{CARGO_ENV} cargo run --release"),
            "Cargo.toml",
        ));
    }
    for f in ["pyproject.toml", "requirements.txt"] {
        if has(f) {
            // A requirements file without packaging metadata cannot be `pip install -e .`d.
            let install = if has("pyproject.toml") || has("setup.py") {
                "python3 -m pip install -e ."
            } else {
                "python3 -m pip install -r requirements.txt"
            };
            return Some((
                Kind::Python,
                PYTHON_SETUP,
                install.into(),
                "python3 -m iii".into(),
                f,
            ));
        }
    }
    None
}

/// The project in `dir`: its manifest (validated) when it has one, else what its files say.
pub fn load_project(dir: &Path) -> Result<Project, ManifestError> {
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((path, m)) = read(dir)? {
        let detected = detect(dir);
        let legacy_kind = m.legacy_kind.as_deref();
        let kind = match legacy_kind {
            Some(k) => Kind::parse(k).ok_or_else(|| ManifestError::Invalid {
                path: path.clone(),
                key: "runtime.kind".into(),
                line: 1,
                message: format!(
                    "unsupported kind {k:?} (typescript, javascript, bun, python or rust)"
                ),
            })?,
            None => detected.as_ref().map_or(Kind::Typescript, |d| d.0),
        };
        let (setup, install, start) = match &m.scripts {
            Some([s, i, st]) => (
                s.clone().unwrap_or_default(),
                i.clone().unwrap_or_default(),
                st.clone().unwrap_or_default(),
            ),
            None if legacy_kind.is_some() => legacy_scripts(
                &path,
                kind,
                m.legacy_pm.as_deref(),
                m.legacy_entry.as_deref(),
            )?,
            None => return Err(ManifestError::NoStart { path }),
        };
        if start.is_empty() {
            return Err(ManifestError::NoStart { path });
        }
        return Ok(Project {
            dir: dir.to_path_buf(),
            name: m.name.clone().unwrap_or(dir_name),
            kind,
            setup,
            install,
            start,
            env: m.env.clone(),
            dependencies: m.dependencies.clone(),
            cpus: m.cpus,
            memory_mb: m.memory_mb,
            base_image: m.base_image.clone(),
            manifest: Some(m),
            detected_from: MANIFEST_FILE,
        });
    }
    let (kind, setup, install, start, from) =
        detect(dir).ok_or_else(|| ManifestError::NoProject {
            dir: dir.to_path_buf(),
        })?;
    Ok(Project {
        dir: dir.to_path_buf(),
        name: dir_name,
        kind,
        setup: setup.into(),
        install,
        start,
        env: Vec::new(),
        dependencies: Vec::new(),
        cpus: None,
        memory_mb: None,
        base_image: None,
        manifest: None,
        detected_from: from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Manifest, ManifestError> {
        parse(Path::new("/p/iii.worker.yaml"), text)
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = p("name: calc\ndescription: adds\nruntime:\n  base_image: python\nscripts:\n  setup: \"\"\n  install: pip install -r requirements.txt\n  start: python3 main.py\nenv:\n  GREETING: hi\n  III_URL: ws://elsewhere\ndependencies:\n  other: ^1.2\nresources:\n  cpus: 1\n  memory: 512\ntags: [a]\n").unwrap();
        assert_eq!(m.name.as_deref(), Some("calc"));
        assert_eq!(m.env, vec![("GREETING".into(), "hi".into())]);
        assert!(m.warnings.iter().any(|w| w.contains("env.III_URL")));
        assert_eq!(m.dependencies, vec![("other".into(), "^1.2".into())]);
        assert_eq!((m.cpus, m.memory_mb), (Some(1), Some(512)));
        let s = m.scripts.unwrap();
        assert_eq!(s[0].as_deref(), Some(""));
        assert_eq!(s[2].as_deref(), Some("python3 main.py"));
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = p("name: x\nscripts:\n  start: go\nenv:\n  PORT: 8080\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("line 5") && s.contains("`env.PORT`") && s.contains("\"8080\""),
            "{s}"
        );
        let e = p("name: x\nscripts:\n  start: [a]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("scripts.start"), "{e}");
        let e = p("name: x\nscripts:\n  start: a\n  stat: b\nbogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`scripts.stat` (line 4)") && e.contains("`bogus` (line 5)"),
            "{e}"
        );
        let e = p("name: x\nresources:\n  cpus: -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resources.cpus") && e.contains("line 3"), "{e}");
        let e = p("name: x\nname: y\n").unwrap_err().to_string();
        assert!(e.contains("duplicate") && e.contains("line"), "{e}");
        let e = p("name: x\ndependencies:\n  y: not-a-range\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dependencies.y") && e.contains("line 3"), "{e}");
        let e = p("name: x\ndependencies:\n  x: ^1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("itself"), "{e}");
        let e = p("runtime: python\n").unwrap_err().to_string();
        assert!(e.contains("`runtime` must be a mapping"), "{e}");
        let e = p("- a\n").unwrap_err().to_string();
        assert!(e.contains("mapping"), "{e}");
    }

    #[test]
    fn lines_follow_indentation() {
        let t = "a: 1\nscripts:\n  # c\n  setup: x\n  start: y\nstart: z\n";
        assert_eq!(line_of(t, "scripts.start"), 5);
        assert_eq!(line_of(t, "start"), 6);
        assert_eq!(line_of(t, "missing"), 1);
    }

    #[test]
    fn missing_install_warns_and_deprecations_batch() {
        let m = p("name: x\nscripts:\n  start: go\n").unwrap();
        assert!(m.warnings.iter().any(|w| w.contains("install")));
        let m = p("name: x\nlanguage: python\nruntime:\n  kind: python\n  entry: app\n").unwrap();
        let w = m.deprecation_warning().unwrap();
        assert!(
            w.contains("runtime.kind") && w.contains("language") && w.contains("runtime.entry")
        );
    }

    #[test]
    fn detection_and_inference() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert!(matches!(
            load_project(dir),
            Err(ManifestError::NoProject { .. })
        ));
        std::fs::write(dir.join("requirements.txt"), "iii-sdk\n").unwrap();
        let pr = load_project(dir).unwrap();
        assert_eq!(pr.kind, Kind::Python);
        assert_eq!(pr.install, "python3 -m pip install -r requirements.txt");
        std::fs::write(dir.join("package.json"), "{}").unwrap();
        let pr = load_project(dir).unwrap();
        assert_eq!(
            (pr.kind, pr.start.as_str()),
            (Kind::Typescript, "npm run dev")
        );
        std::fs::write(dir.join("bun.lockb"), "").unwrap();
        assert_eq!(load_project(dir).unwrap().kind, Kind::Bun);
        std::fs::write(
            dir.join(MANIFEST_FILE),
            "name: w\nscripts:\n  install: \"\"\n  start: node x.js\n",
        )
        .unwrap();
        let pr = load_project(dir).unwrap();
        assert_eq!(
            (pr.name.as_str(), pr.start.as_str(), pr.kind),
            ("w", "node x.js", Kind::Bun)
        );
        std::fs::write(dir.join(MANIFEST_FILE), "name: w\n").unwrap();
        assert!(matches!(
            load_project(dir),
            Err(ManifestError::NoStart { .. })
        ));
        std::fs::write(
            dir.join(MANIFEST_FILE),
            "name: w\nruntime:\n  kind: python\n  entry: app\n",
        )
        .unwrap();
        let pr = load_project(dir).unwrap();
        assert_eq!(pr.start, ".venv/bin/python -m app");
        std::fs::write(
            dir.join(MANIFEST_FILE),
            "name: w\nruntime:\n  kind: typescript\n",
        )
        .unwrap();
        assert!(load_project(dir)
            .unwrap_err()
            .to_string()
            .contains("package_manager"));
        std::fs::write(dir.join(MANIFEST_FILE), "x".repeat(70_000)).unwrap();
        assert!(matches!(
            load_project(dir),
            Err(ManifestError::TooLarge { .. })
        ));
    }
}
