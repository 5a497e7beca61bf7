//! OCI references as `iii worker add` takes them, and the one call into the image store that
//! pulls them (workers-and-sandboxes spec section 1.2, section 2.5, section 3.3).

use serde_yaml::{Mapping, Value};

use super::error::WorkerError;
use super::names;

/// Image ENV keys that describe the image's own system, not the worker's configuration.
const SYSTEM_ENV: &[&str] = &["PATH", "HOME", "HOSTNAME", "LANG", "TERM"];

/// The worker name of an OCI reference: its last path segment without `@digest` and `:tag`
/// (`localhost:5050/my-worker:latest` → `my-worker`). The reference is checked first, so a
/// malformed one is refused before anything is written.
pub fn worker_name(reference: &str) -> Result<String, WorkerError> {
    let bad = |why: &str| {
        WorkerError::InvalidSource(format!("invalid image reference '{reference}': {why}"))
    };
    if reference.is_empty() || reference.len() > 512 {
        return Err(bad("must be 1 to 512 characters"));
    }
    if !reference
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/:@+-".contains(c))
    {
        return Err(bad("only letters, digits and . _ / : @ + - are allowed"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let hex = d
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("the digest must be sha256:<64 hex digits>"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the digest must be sha256:<64 hex digits>"));
        }
    }
    // A tag is a `:` after the last `/` (a `:` before it is a registry port).
    let last_slash = rest.rfind('/');
    let (path, tag) = match rest.rfind(':') {
        Some(i) if last_slash.is_none_or(|s| i > s) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(bad(
                "the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    // The first segment is a registry host when it looks like one.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = host.split_once(':').unwrap_or((host, ""));
        if h.is_empty() || (!port.is_empty() && port.parse::<u16>().is_err()) {
            return Err(bad("the registry host is malformed"));
        }
    }
    for p in &parts {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(bad(&format!(
                "repository path segment '{p}' must be lowercase letters and digits separated by . _ or -"
            )));
        }
    }
    let name = parts.last().copied().unwrap_or_default().to_string();
    names::validate(&name)?;
    Ok(name)
}

/// What a pull gives `add`.
pub struct Pulled {
    /// `sha256:…` of the manifest.
    pub digest: String,
    /// The image config's environment.
    pub env: Vec<(String, String)>,
}

/// The `config:` block written for an image: its ENV without the system variables, in image
/// order; `None` when nothing is left.
pub fn env_config(env: &[(String, String)]) -> Option<Mapping> {
    let mut m = Mapping::new();
    for (k, v) in env {
        if !SYSTEM_ENV.contains(&k.as_str()) {
            m.insert(Value::from(k.as_str()), Value::from(v.as_str()));
        }
    }
    (!m.is_empty()).then_some(m)
}

fn store() -> Result<iii_oci_rootfs::ImageStore, WorkerError> {
    iii_oci_rootfs::ImageStore::open(None)
        .map_err(|e| WorkerError::OciPull(format!("cannot open the image store: {e}")))
}

/// Pulls `reference` into the image store the engine's image workers start from.
pub fn pull(reference: &str, progress: &mut dyn FnMut(&str)) -> Result<Pulled, WorkerError> {
    let p = store()?
        .pull(reference, progress)
        .map_err(|e| WorkerError::OciPull(format!("cannot pull {reference}: {e}")))?;
    Ok(Pulled {
        digest: p.digest,
        env: p.config.env,
    })
}

/// Removes the cached pull of `reference`; the bytes freed, `None` when nothing was cached.
/// Another reference to the same image (same manifest digest) loses it too: it is one entry.
pub fn remove_cached(reference: &str) -> Result<Option<u64>, WorkerError> {
    let store = store()?;
    let Some(p) = store.lookup_pulled(reference) else {
        return Ok(None);
    };
    let dir = store.root().join(&p.rootfs.key);
    let bytes = tree_bytes(&dir);
    iii_oci_rootfs::store::remove_tree(&dir)
        .map_err(|e| WorkerError::Internal(format!("cannot remove {}: {e}", dir.display())))?;
    Ok(Some(bytes))
}

fn tree_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_references() {
        let d = "a".repeat(64);
        for (r, n) in [
            ("localhost:5050/my-worker:latest", "my-worker"),
            ("ghcr.io/iii-hq/image-resize:1.0.0", "image-resize"),
            ("pdfkit:1.0", "pdfkit"),
            ("docker.io/library/alpine", "alpine"),
            ("127.0.0.1:5000/a/b_c.d", "b_c.d"),
        ] {
            assert_eq!(worker_name(r).unwrap(), n, "{r}");
        }
        assert_eq!(
            worker_name(&format!("ghcr.io/a/b@sha256:{d}")).unwrap(),
            "b"
        );
        assert_eq!(
            worker_name(&format!("ghcr.io/a/b:v2@sha256:{d}")).unwrap(),
            "b"
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        for r in [
            "",
            "ghcr.io/a/b:",
            "ghcr.io/a/B",
            "ghcr.io//b",
            "ghcr.io/a/b@sha256:xyz",
            "ghcr.io/a/b@md5:abc",
            "a b/c",
            "ghcr.io/a/-b",
            "localhost:99999/a",
            "ghcr.io/a/b:-x",
            "x/y:t;rm",
        ] {
            let e = worker_name(r).unwrap_err();
            assert_eq!(e.code(), "W101", "{r}: {e}");
        }
    }

    #[test]
    fn env_becomes_config_without_system_variables() {
        let env = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("FOO".to_string(), "bar".to_string()),
            ("HOME".to_string(), "/root".to_string()),
            ("III_URL".to_string(), "ws://localhost:49134".to_string()),
        ];
        let m = env_config(&env).unwrap();
        let keys: Vec<_> = m.keys().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(keys, vec!["FOO", "III_URL"]);
        assert!(env_config(&env[..1]).is_none());
    }
}
