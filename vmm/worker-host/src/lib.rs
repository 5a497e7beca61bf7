//! `iii-worker-host`: runs one image worker from `config.yaml` (issue #13), or a local-path
//! worker (`--path`, see [`local`]). The engine starts
//! one per `- name: <n>` entry with `image:`; this process finds the image, creates a sandbox
//! from it, runs the image's `entrypoint + cmd` as one long exec session, streams the
//! session's output to its own stdout/stderr and stops the sandbox when it is told to stop,
//! when the engine goes (stdin lifeline) or when the workload exits.
//!
//! The pure parts live here (tested below), with the exec socket ([`shell`]) and the
//! never-failing output ([`output`]); `main.rs` wires them to the runtime.

#![deny(clippy::cast_possible_truncation)]

pub mod local;
pub mod manifest;

use serde_yaml::Value;

pub mod output;
pub mod shell;

/// Why the worker host could not run its worker.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The `--config` file is unreadable or not a mapping.
    #[error("worker config {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The image reference names nothing this host can use.
    #[error("image {reference}: {message}")]
    Image {
        /// The `image:` value.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// The image gives nothing to run.
    #[error("image {0} has neither an entrypoint nor a cmd: nothing to run")]
    NothingToRun(String),
    /// The engine URL has no usable port.
    #[error("engine URL {0} has no port")]
    EngineUrl(String),
}

/// Flattens an entry's `config:` block into environment variables (spec section 2.1, "Per-worker
/// env"): keys uppercased, nested mappings joined with `_`, strings verbatim, every other
/// value as its JSON text (`8080`, `true`, `["a"]`). `null` gives an empty string.
pub fn flatten_config(config: &Value) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match config {
        Value::Null => {}
        Value::Mapping(_) => flatten_into("", config, &mut out)?,
        _ => return Err("the worker's `config:` must be a mapping".into()),
    }
    Ok(out)
}

fn flatten_into(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) -> Result<(), String> {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = match k {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => return Err(format!("config key {other:?} is not a string")),
                };
                let key = key.to_uppercase();
                let full = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}_{key}")
                };
                flatten_into(&full, v, out)?;
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => out.push((prefix.to_string(), String::new())),
        Value::Tagged(t) => flatten_into(prefix, &t.value, out)?,
        other => {
            let json = serde_json::to_value(other).map_err(|e| e.to_string())?;
            out.push((prefix.to_string(), json.to_string()));
        }
    }
    Ok(())
}

/// Layers environments in order: a later value for a key replaces an earlier one in place.
pub fn merge_env(layers: &[&[(String, String)]]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for layer in layers {
        for (k, v) in layer.iter() {
            match out.iter_mut().find(|(ok, _)| ok == k) {
                Some(slot) => slot.1 = v.clone(),
                None => out.push((k.clone(), v.clone())),
            }
        }
    }
    out
}

/// The sandbox id for worker `name` run by process `pid`: `w-<name>-<pid>`, the name reduced
/// to the id alphabet and shortened so the whole id stays within 64 characters.
pub fn sandbox_id(name: &str, pid: u32) -> String {
    let suffix = format!("-{pid}");
    let room = 64 - 2 - suffix.len();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    format!("w-{clean}{suffix}")
}

/// The port of a `ws://host:port[/…]` URL.
pub fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// What the session runs: the image's entrypoint followed by its cmd (OCI semantics: with no
/// entrypoint the cmd is the whole command line).
pub fn command_line(entrypoint: &[String], cmd: &[String]) -> Vec<String> {
    entrypoint.iter().chain(cmd.iter()).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn config_flattens_as_the_spec_says() {
        let v: Value = serde_yaml::from_str(
            "db: {host: x, port: 5432}\nflag: true\nlist: [a]\nname: plain\nempty: null\n",
        )
        .unwrap();
        assert_eq!(
            flatten_config(&v).unwrap(),
            pairs(&[
                ("DB_HOST", "x"),
                ("DB_PORT", "5432"),
                ("FLAG", "true"),
                ("LIST", "[\"a\"]"),
                ("NAME", "plain"),
                ("EMPTY", ""),
            ])
        );
        assert!(flatten_config(&Value::Null).unwrap().is_empty());
        assert!(flatten_config(&Value::String("x".into())).is_err());
    }

    #[test]
    fn later_layers_win_in_place() {
        let a = pairs(&[("PATH", "/bin"), ("A", "1")]);
        let b = pairs(&[("A", "2"), ("B", "3")]);
        assert_eq!(
            merge_env(&[&a, &b]),
            pairs(&[("PATH", "/bin"), ("A", "2"), ("B", "3")])
        );
    }

    #[test]
    fn sandbox_ids_fit_the_runtime_alphabet() {
        assert_eq!(sandbox_id("my-worker", 42), "w-my-worker-42");
        assert_eq!(sandbox_id("a.b/c", 1), "w-a_b_c-1");
        let long = sandbox_id(&"x".repeat(200), 4_000_000);
        assert_eq!(long.len(), 64);
        assert!(long.ends_with("-4000000"));
    }

    #[test]
    fn ports_and_command_lines() {
        assert_eq!(url_port("ws://127.0.0.1:49134"), Some(49134));
        assert_eq!(url_port("ws://127.0.0.1:5/x"), Some(5));
        assert_eq!(url_port("ws://localhost"), None);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(command_line(&s(&["/w"]), &s(&["--x"])), s(&["/w", "--x"]));
        assert_eq!(command_line(&[], &s(&["sh"])), s(&["sh"]));
    }
}
