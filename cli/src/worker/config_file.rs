//! `config.yaml` edits by `iii worker add/remove` (workers-and-sandboxes spec section 2.1).
//!
//! Edits are line-based text surgery, not a YAML round trip: the user's comments, blank lines,
//! quoting and key order outside the edited entry stay byte-for-byte as they were. Only the
//! `config:` block of a re-added entry whose config is merged is re-serialized.
//!
//! An entry is a list item whose first line, trimmed, is exactly `- name: <name>`, at the list's
//! indentation inside the column-0 `workers:` section. It runs until the next line indented no
//! deeper than its dash (trailing blank lines are left outside it).

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::names::{self, NameError};

/// The engine's worker socket port when the file does not set one.
pub const DEFAULT_PORT: u16 = 49134;

/// Why the config file could not be read or edited.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("Worker '{name}' not found in {path}")]
    NotFound { name: String, path: String },
    #[error("the config: block of worker '{name}' is not valid YAML: {reason}")]
    BadConfigBlock { name: String, reason: String },
    #[error("{0}")]
    Name(#[from] NameError),
}

/// The file `iii worker` edits: `$III_CONFIG_PATH` when set and non-empty, else `./config.yaml`.
pub fn config_path() -> PathBuf {
    match std::env::var_os("III_CONFIG_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("config.yaml"),
    }
}

/// The file's text, or `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<String>, ConfigFileError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigFileError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Writes in place (not temp + rename), so the engine's watcher and any symlink see the same
/// file they watch.
pub fn write(path: &Path, text: &str) -> Result<(), ConfigFileError> {
    std::fs::write(path, text).map_err(|source| ConfigFileError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// What `add` writes for one worker.
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub name: String,
    pub image: Option<String>,
    pub worker_path: Option<String>,
    /// The incoming (registry / image) config; existing user values win over it on re-add.
    pub config: Option<Mapping>,
}

/// A line without its line ending.
fn content(line: &str) -> &str {
    line.trim_end_matches(['\n', '\r'])
}

fn indent(line: &str) -> usize {
    let c = content(line);
    c.len() - c.trim_start_matches([' ', '\t']).len()
}

fn is_blank(line: &str) -> bool {
    content(line).trim().is_empty()
}

/// Splits keeping every byte (each line keeps its `\n`).
fn split(text: &str) -> Vec<String> {
    text.split_inclusive('\n').map(str::to_string).collect()
}

/// The column-0 `workers:` line (also `workers: []`, with or without a trailing comment).
fn workers_line(lines: &[String]) -> Option<usize> {
    lines.iter().position(|l| {
        content(l).strip_prefix("workers:").is_some_and(|rest| {
            let rest = rest.trim();
            rest.is_empty() || rest.starts_with('#') || rest.starts_with("[]")
        })
    })
}

/// One past the last line of the `workers:` section starting at `w`: the section ends at the
/// first non-empty line in column 0 that is not a list item.
fn section_end(lines: &[String], w: usize) -> usize {
    (w + 1..lines.len())
        .find(|&i| {
            let c = content(&lines[i]);
            !c.trim().is_empty() && !c.starts_with(['-', ' ', '\t'])
        })
        .unwrap_or(lines.len())
}

/// The indentation of the section's list items (of its first `-` line).
fn list_indent(lines: &[String], w: usize, end: usize) -> Option<usize> {
    (w + 1..end)
        .find(|&i| content(&lines[i]).trim_start().starts_with('-'))
        .map(|i| indent(&lines[i]))
}

/// The `[start, end)` lines of entry `name` and its dash indentation.
fn find_entry(lines: &[String], name: &str) -> Option<(usize, usize, usize)> {
    let w = workers_line(lines)?;
    let end = section_end(lines, w);
    let li = list_indent(lines, w, end)?;
    let want = format!("- name: {name}");
    let start =
        (w + 1..end).find(|&i| indent(&lines[i]) == li && content(&lines[i]).trim() == want)?;
    let mut stop = start + 1;
    while stop < lines.len() && (is_blank(&lines[stop]) || indent(&lines[stop]) > li) {
        stop += 1;
    }
    while stop > start + 1 && is_blank(&lines[stop - 1]) {
        stop -= 1;
    }
    Some((start, stop, li))
}

/// Names of the entries under `workers:`, in file order.
pub fn list_names(text: &str) -> Vec<String> {
    let lines = split(text);
    let Some(w) = workers_line(&lines) else {
        return Vec::new();
    };
    let end = section_end(&lines, w);
    let Some(li) = list_indent(&lines, w, end) else {
        return Vec::new();
    };
    (w + 1..end)
        .filter(|&i| indent(&lines[i]) == li)
        .filter_map(|i| {
            content(&lines[i])
                .trim()
                .strip_prefix("- name:")
                .map(scalar)
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// A one-line scalar as written: trailing ` # comment` dropped, surrounding quotes removed.
fn scalar(raw: &str) -> String {
    let v = raw.trim();
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            if let Some(end) = rest.find(q) {
                return rest[..end].to_string();
            }
        }
    }
    match v.find(" #") {
        Some(i) => v[..i].trim_end().to_string(),
        None => v.to_string(),
    }
}

/// The value of the entry's own one-line key `key` (`image`, `worker_path`), if present.
pub fn entry_value(text: &str, name: &str, key: &str) -> Option<String> {
    let lines = split(text);
    let (start, end, li) = find_entry(&lines, name)?;
    let prefix = format!("{key}:");
    (start + 1..end)
        .filter(|&i| indent(&lines[i]) == li + 2)
        .find_map(|i| content(&lines[i]).trim().strip_prefix(&prefix).map(scalar))
        .filter(|v| !v.is_empty())
}

/// Is there an entry named `name`?
pub fn has_entry(text: &str, name: &str) -> bool {
    find_entry(&split(text), name).is_some()
}

/// An entry's `config:` as written: lines below it with their common indentation removed, or
/// the text after `config:` on the same line (flow style).
#[derive(Debug, Clone, PartialEq)]
enum Block {
    Lines(Vec<String>),
    Inline(String),
}

impl Block {
    fn text(&self) -> String {
        match self {
            Block::Lines(l) => l.concat(),
            Block::Inline(s) => s.clone(),
        }
    }
}

fn config_block(lines: &[String], start: usize, end: usize, li: usize) -> Option<Block> {
    let at = (start + 1..end).find(|&i| {
        indent(&lines[i]) == li + 2 && content(&lines[i]).trim_start().starts_with("config:")
    })?;
    let after = content(&lines[at]).trim_start()["config:".len()..].trim();
    let after = if after.starts_with('#') { "" } else { after };
    if !after.is_empty() {
        return Some(Block::Inline(after.to_string()));
    }
    let mut stop = at + 1;
    while stop < end && (is_blank(&lines[stop]) || indent(&lines[stop]) > li + 2) {
        stop += 1;
    }
    while stop > at + 1 && is_blank(&lines[stop - 1]) {
        stop -= 1;
    }
    let body = &lines[at + 1..stop];
    let common = body
        .iter()
        .filter(|l| !is_blank(l))
        .map(|l| indent(l))
        .min()
        .unwrap_or(0);
    let mut out: Vec<String> = body
        .iter()
        .map(|l| {
            if is_blank(l) {
                "\n".to_string()
            } else {
                let mut s = content(l)[common..].to_string();
                s.push('\n');
                s
            }
        })
        .collect();
    if out.iter().all(|l| l.trim().is_empty()) {
        out.clear();
    }
    Some(Block::Lines(out))
}

/// The entry's `config:` parsed (`None` when the entry has none or does not exist).
pub fn entry_config(text: &str, name: &str) -> Result<Option<Value>, ConfigFileError> {
    let lines = split(text);
    let Some((start, end, li)) = find_entry(&lines, name) else {
        return Ok(None);
    };
    match config_block(&lines, start, end, li) {
        None => Ok(None),
        Some(b) => parse_block(name, &b).map(Some),
    }
}

fn parse_block(name: &str, b: &Block) -> Result<Value, ConfigFileError> {
    serde_yaml::from_str(&b.text()).map_err(|e| ConfigFileError::BadConfigBlock {
        name: name.into(),
        reason: e.to_string(),
    })
}

/// `top` over `base`: mappings merge key by key (recursively), anything else in `top` wins.
fn deep_merge(base: Value, top: Value) -> Value {
    match (base, top) {
        (Value::Mapping(mut b), Value::Mapping(t)) => {
            for (k, tv) in t {
                let merged = match b.remove(&k) {
                    Some(bv) => deep_merge(bv, tv),
                    None => tv,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (base, Value::Null) => base,
        (_, top) => top,
    }
}

/// Removes entry `name`: its `- name:` line and every deeper-indented or blank line below it
/// (comments inside it go with it). Everything else is kept byte-for-byte.
pub fn remove_entry(text: &str, name: &str, path: &Path) -> Result<String, ConfigFileError> {
    names::validate(name)?;
    let mut lines = split(text);
    let (start, end, _) = find_entry(&lines, name).ok_or_else(|| ConfigFileError::NotFound {
        name: name.into(),
        path: path.display().to_string(),
    })?;
    lines.drain(start..end);
    Ok(lines.concat())
}

/// Adds `entry` at the end of the `workers:` list. When an entry of that name exists it is
/// replaced (and moved to the end): its `config:` is kept verbatim when `entry` brings none,
/// else deep-merged with the existing values on top; `image`/`worker_path` are the new ones.
pub fn upsert_entry(text: &str, entry: &NewEntry) -> Result<String, ConfigFileError> {
    names::validate(&entry.name)?;
    let mut lines = split(text);
    let mut kept: Option<Block> = None;
    if let Some((start, end, li)) = find_entry(&lines, &entry.name) {
        kept = config_block(&lines, start, end, li);
        lines.drain(start..end);
    }
    let incoming = entry.config.clone().filter(|m| !m.is_empty());
    let block = match (incoming, kept) {
        (None, kept) => kept,
        (Some(m), None) => Some(Block::Lines(yaml_lines(&Value::Mapping(m)))),
        (Some(m), Some(old)) => {
            let merged = deep_merge(Value::Mapping(m), parse_block(&entry.name, &old)?);
            Some(Block::Lines(yaml_lines(&merged)))
        }
    };
    Ok(append(lines, entry, block))
}

/// `v` as block YAML lines (serde_yaml writes no leading `---`).
fn yaml_lines(v: &Value) -> Vec<String> {
    let s = serde_yaml::to_string(v).unwrap_or_default();
    if s.trim() == "{}" {
        return Vec::new();
    }
    split(&s)
}

fn append(mut lines: Vec<String>, entry: &NewEntry, block: Option<Block>) -> String {
    let w = match workers_line(&lines) {
        Some(w) => {
            // `workers: []  # note` becomes `workers:  # note`.
            let c = content(&lines[w]);
            let rest = c["workers:".len()..].trim_start();
            if let Some(after) = rest.strip_prefix("[]") {
                let eol = &lines[w][c.len()..];
                lines[w] = format!("workers:{after}{eol}");
            }
            w
        }
        None => {
            if let Some(last) = lines.last_mut() {
                if !last.ends_with('\n') {
                    last.push('\n');
                }
            }
            lines.push("workers:\n".into());
            lines.len() - 1
        }
    };
    let end = section_end(&lines, w);
    let li = list_indent(&lines, w, end).unwrap_or(2);
    let at = (w + 1..end)
        .rev()
        .find(|&i| !is_blank(&lines[i]))
        .unwrap_or(w)
        + 1;
    if !lines[at - 1].ends_with('\n') {
        lines[at - 1].push('\n');
    }
    let pad = " ".repeat(li);
    let mut new = vec![format!("{pad}- name: {}\n", entry.name)];
    if let Some(i) = &entry.image {
        new.push(format!("{pad}  image: {i}\n"));
    }
    if let Some(p) = &entry.worker_path {
        new.push(format!("{pad}  worker_path: {p}\n"));
    }
    match block {
        Some(Block::Inline(s)) => new.push(format!("{pad}  config: {s}\n")),
        Some(Block::Lines(body)) if !body.is_empty() => {
            new.push(format!("{pad}  config:\n"));
            for l in body {
                if l.trim().is_empty() {
                    new.push("\n".into());
                } else {
                    new.push(format!("{pad}    {l}"));
                }
            }
        }
        _ => {}
    }
    lines.splice(at..at, new);
    lines.concat()
}

/// The engine's worker socket port: `config.port` of the first `iii-worker-manager` entry, else
/// 49134. An unreadable file gives the default (the probe then simply finds nothing).
pub fn manager_port(text: &str) -> u16 {
    let Ok(root) = serde_yaml::from_str::<Value>(text) else {
        return DEFAULT_PORT;
    };
    root.get("workers")
        .and_then(Value::as_sequence)
        .and_then(|list| {
            list.iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("iii-worker-manager"))
        })
        .and_then(|e| e.get("config")?.get("port")?.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = r"# My project.
# Keep http first.
workers:   # the list
  # builtins
  - name: http
    config:
      port: 3111   # REST
      host: 127.0.0.1

  - name: state
    # durable
    config:
      adapter: { kind: kv }
  - name: my-worker
    image: localhost:5050/my-worker:latest

# trailing settings
rootfs:
  mode: overlay
";

    fn entry(name: &str) -> NewEntry {
        NewEntry {
            name: name.into(),
            ..Default::default()
        }
    }

    fn mapping(yaml: &str) -> Mapping {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn append_inserts_after_the_last_entry_and_nothing_else_changes() {
        let out = upsert_entry(COMMENTED, &entry("queue")).unwrap();
        let expected = COMMENTED.replace(
            "    image: localhost:5050/my-worker:latest\n",
            "    image: localhost:5050/my-worker:latest\n  - name: queue\n",
        );
        assert_eq!(out, expected);
        let v: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["workers"][3]["name"], Value::from("queue"));
        assert_eq!(v["rootfs"]["mode"], Value::from("overlay"));
    }

    #[test]
    fn append_writes_image_path_and_config() {
        let e = NewEntry {
            name: "w".into(),
            image: Some("ghcr.io/a/w:1".into()),
            worker_path: None,
            config: Some(mapping("FOO: bar\nIII_URL: ws://x\n")),
        };
        let out = upsert_entry("workers:\n  - name: http\n", &e).unwrap();
        assert_eq!(
            out,
            "workers:\n  - name: http\n  - name: w\n    image: ghcr.io/a/w:1\n    config:\n      FOO: bar\n      III_URL: ws://x\n"
        );
        assert_eq!(
            entry_value(&out, "w", "image").as_deref(),
            Some("ghcr.io/a/w:1")
        );
        assert_eq!(
            entry_config(&out, "w").unwrap().unwrap()["FOO"],
            Value::from("bar")
        );
    }

    #[test]
    fn empty_list_and_missing_section_and_missing_file() {
        let out = upsert_entry(
            "# top\nworkers: []  # none yet\nrootfs: {}\n",
            &entry("http"),
        )
        .unwrap();
        assert_eq!(
            out,
            "# top\nworkers:  # none yet\n  - name: http\nrootfs: {}\n"
        );
        let out = upsert_entry("rootfs:\n  mode: overlay", &entry("http")).unwrap();
        assert_eq!(out, "rootfs:\n  mode: overlay\nworkers:\n  - name: http\n");
        let out = upsert_entry("", &entry("http")).unwrap();
        assert_eq!(out, "workers:\n  - name: http\n");
        let starter = "# iii engine configuration.\nworkers: []\n";
        let out = upsert_entry(starter, &entry("state")).unwrap();
        assert_eq!(
            out,
            "# iii engine configuration.\nworkers:\n  - name: state\n"
        );
    }

    #[test]
    fn column_zero_lists_keep_their_indentation() {
        let out = upsert_entry(
            "workers:\n- name: http\n  config:\n    port: 1\n",
            &entry("state"),
        )
        .unwrap();
        assert_eq!(
            out,
            "workers:\n- name: http\n  config:\n    port: 1\n- name: state\n"
        );
        let v: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["workers"][1]["name"], Value::from("state"));
    }

    #[test]
    fn remove_takes_the_entry_with_its_comments_and_keeps_the_rest() {
        let out = remove_entry(COMMENTED, "state", Path::new("config.yaml")).unwrap();
        let expected = COMMENTED.replace(
            "  - name: state\n    # durable\n    config:\n      adapter: { kind: kv }\n",
            "",
        );
        assert_eq!(out, expected);
        let out = remove_entry(COMMENTED, "my-worker", Path::new("config.yaml")).unwrap();
        assert_eq!(
            out,
            COMMENTED.replace(
                "  - name: my-worker\n    image: localhost:5050/my-worker:latest\n",
                ""
            )
        );
        let out = remove_entry(COMMENTED, "http", Path::new("config.yaml")).unwrap();
        assert_eq!(
            out,
            COMMENTED.replace(
                "  - name: http\n    config:\n      port: 3111   # REST\n      host: 127.0.0.1\n",
                ""
            )
        );
        let err = remove_entry(COMMENTED, "nope", Path::new("c.yaml")).unwrap_err();
        assert_eq!(err.to_string(), "Worker 'nope' not found in c.yaml");
        assert!(matches!(
            remove_entry(COMMENTED, "../x", Path::new("c.yaml")),
            Err(ConfigFileError::Name(_))
        ));
    }

    #[test]
    fn nested_name_items_inside_config_are_not_entries() {
        let text = "workers:\n  - name: a\n    config:\n      routes:\n        - name: b\n          path: /x\n  - name: c\n";
        assert_eq!(list_names(text), vec!["a", "c"]);
        let out = remove_entry(text, "a", Path::new("c")).unwrap();
        assert_eq!(out, "workers:\n  - name: c\n");
        assert!(remove_entry(text, "b", Path::new("c")).is_err());
    }

    #[test]
    fn re_add_keeps_a_hand_written_config_verbatim_and_moves_to_the_end() {
        let out = upsert_entry(COMMENTED, &entry("http")).unwrap();
        let expected = COMMENTED
            .replace(
                "  - name: http\n    config:\n      port: 3111   # REST\n      host: 127.0.0.1\n",
                "",
            )
            .replace(
                "    image: localhost:5050/my-worker:latest\n",
                "    image: localhost:5050/my-worker:latest\n  - name: http\n    config:\n      port: 3111   # REST\n      host: 127.0.0.1\n",
            );
        assert_eq!(out, expected);
    }

    #[test]
    fn re_add_merges_incoming_under_existing_values_and_replaces_image() {
        let text = "workers:\n  - name: w\n    image: old:1\n    config:\n      LOG: debug\n      db:\n        host: mine\n";
        let e = NewEntry {
            name: "w".into(),
            image: Some("new:2".into()),
            worker_path: None,
            config: Some(mapping(
                "LOG: info\nNEW: x\ndb:\n  host: theirs\n  port: 5432\n",
            )),
        };
        let out = upsert_entry(text, &e).unwrap();
        assert_eq!(entry_value(&out, "w", "image").as_deref(), Some("new:2"));
        let c = entry_config(&out, "w").unwrap().unwrap();
        assert_eq!(c["LOG"], Value::from("debug"));
        assert_eq!(c["NEW"], Value::from("x"));
        assert_eq!(c["db"]["host"], Value::from("mine"));
        assert_eq!(c["db"]["port"], Value::from(5432));
        assert_eq!(list_names(&out), vec!["w"]);
    }

    #[test]
    fn inline_config_is_read_and_kept() {
        let text = "workers:\n  - name: w\n    config: {a: 1}\n  - name: z\n";
        assert_eq!(
            entry_config(text, "w").unwrap().unwrap()["a"],
            Value::from(1)
        );
        let out = upsert_entry(text, &entry("w")).unwrap();
        assert_eq!(
            out,
            "workers:\n  - name: z\n  - name: w\n    config: {a: 1}\n"
        );
    }

    #[test]
    fn readers() {
        assert_eq!(list_names(COMMENTED), vec!["http", "state", "my-worker"]);
        assert_eq!(
            entry_value(COMMENTED, "my-worker", "image").as_deref(),
            Some("localhost:5050/my-worker:latest")
        );
        assert_eq!(entry_value(COMMENTED, "http", "image"), None);
        let quoted =
            "workers:\n  - name: w\n    worker_path: \"/abs/dir\"  \n    image: 'r/x:1' # pinned\n";
        assert_eq!(
            entry_value(quoted, "w", "worker_path").as_deref(),
            Some("/abs/dir")
        );
        assert_eq!(entry_value(quoted, "w", "image").as_deref(), Some("r/x:1"));
        assert_eq!(
            entry_config(COMMENTED, "http").unwrap().unwrap()["port"],
            Value::from(3111)
        );
        assert!(entry_config(COMMENTED, "my-worker").unwrap().is_none());
        assert!(list_names("rootfs: {}\n").is_empty());
        assert!(has_entry(COMMENTED, "state") && !has_entry(COMMENTED, "stat"));
    }

    #[test]
    fn manager_port_from_the_file() {
        assert_eq!(manager_port(""), DEFAULT_PORT);
        assert_eq!(manager_port(COMMENTED), DEFAULT_PORT);
        assert_eq!(
            manager_port("workers:\n  - name: iii-worker-manager\n    config:\n      port: 5001\n"),
            5001
        );
        assert_eq!(manager_port("workers: [oops"), DEFAULT_PORT);
    }
}
