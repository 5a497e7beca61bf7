//! The iii registry API client (workers-and-sandboxes spec section 3.1): `POST /resolve` turns a
//! worker name into its dependency graph, and binary artifacts are downloaded with their
//! sha256 checked (section 3.2). The base URL is `$III_API_URL`, default `https://api.workers.iii.dev`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::lock::Artifact;
use super::names;

/// The registry used when `III_API_URL` is unset.
pub const DEFAULT_API_URL: &str = "https://api.workers.iii.dev";
/// Responses of the JSON endpoints are capped here.
const MAX_JSON: usize = 1 << 20;
/// Binary artifacts are capped here.
const MAX_ARTIFACT: usize = 512 << 20;
/// Graphs larger than this need consent (`--yes`).
pub const CONSENT_NODES: usize = 32;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the iii registry API at {base} ({reason}); check the network, or set III_API_URL to a registry that is reachable")]
    Unreachable { base: String, reason: String },
    #[error("Worker '{0}' not found in the iii registry ({1})")]
    NotFound(String, String),
    #[error("Failed to resolve worker graph: HTTP {status} {body}")]
    Http { status: u16, body: String },
    #[error("the iii registry API at {base} answered with an invalid response: {reason}")]
    BadResponse { base: String, reason: String },
    #[error("invalid dependency graph for '{root}': {reason}")]
    Graph { root: String, reason: String },
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
}

/// `root` of a resolve answer.
#[derive(Debug, Clone, Deserialize)]
pub struct NameVersion {
    pub name: String,
    pub version: String,
}

/// One node of the graph.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub binaries: BTreeMap<String, Artifact>,
    #[serde(default)]
    pub archive_url: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
}

/// One edge of the graph.
#[derive(Debug, Clone, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
}

/// A `POST /resolve` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Resolved {
    pub root: NameVersion,
    pub graph: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
}

/// `$III_API_URL` (trailing `/` dropped), else the default registry.
pub fn base_url() -> String {
    std::env::var("III_API_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_API_URL.into())
}

/// Is any CI marker variable set (section 3.1)? Then requests carry `ci=true`.
fn in_ci() -> bool {
    [
        "CI",
        "GITHUB_ACTIONS",
        "GITLAB_CI",
        "CIRCLECI",
        "JENKINS_URL",
        "TRAVIS",
        "BUILDKITE",
        "TF_BUILD",
        "CODEBUILD_BUILD_ID",
        "BITBUCKET_BUILD_NUMBER",
        "DRONE",
        "TEAMCITY_VERSION",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// The compile-time target triple binary artifacts are chosen by.
pub fn host_target() -> &'static str {
    match (std::env::consts::ARCH, std::env::consts::OS) {
        ("x86_64", "linux") => "x86_64-unknown-linux-gnu",
        ("aarch64", "linux") => "aarch64-unknown-linux-gnu",
        ("x86_64", "macos") => "x86_64-apple-darwin",
        ("aarch64", "macos") => "aarch64-apple-darwin",
        ("x86_64", "windows") => "x86_64-pc-windows-msvc",
        ("aarch64", "windows") => "aarch64-pc-windows-msvc",
        _ => "unknown",
    }
}

/// Is `url`'s host a loopback name or address?
pub fn is_loopback_url(url: &str) -> bool {
    let host = reqwest::Url::parse(url).ok().and_then(|u| {
        u.host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
    });
    host.is_some_and(|h| {
        h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
    })
}

/// A client of one registry.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of [`base_url`].
    pub fn new() -> Result<Client, ApiError> {
        Client::with_base(base_url())
    }

    pub fn with_base(base: String) -> Result<Client, ApiError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApiError::Unreachable {
                reason: "III_API_URL must be an http:// or https:// URL".into(),
                base,
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| ApiError::Unreachable {
                base: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> ApiError {
        // The innermost cause says what actually went wrong (refused, DNS, timeout).
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            reason = s.to_string();
            src = s.source();
        }
        ApiError::Unreachable {
            base: self.base.clone(),
            reason,
        }
    }

    /// Reads a body up to `cap` bytes (checked against content-length and while streaming).
    async fn body(
        &self,
        mut resp: reqwest::Response,
        cap: usize,
        url: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let too_big = || ApiError::Download {
            url: url.into(),
            reason: format!("the response is larger than {cap} bytes"),
        };
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_big());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(&e))? {
            if out.len() + chunk.len() > cap {
                return Err(too_big());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// `POST {base}/resolve {worker, version}`; the graph is validated before it is returned.
    pub async fn resolve(&self, worker: &str, version: Option<&str>) -> Result<Resolved, ApiError> {
        let mut url = format!("{}/resolve", self.base);
        if in_ci() {
            url.push_str("?ci=true");
        }
        let body = serde_json::json!({"worker": worker, "version": version.unwrap_or("latest")});
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = self.body(resp, MAX_JSON, &url).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.as_u16() == 404 {
            return Err(ApiError::NotFound(worker.into(), self.base.clone()));
        }
        if !status.is_success() {
            return Err(ApiError::Http {
                status: status.as_u16(),
                body: text.chars().take(500).collect(),
            });
        }
        let bad = |reason: String| ApiError::BadResponse {
            base: self.base.clone(),
            reason,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("the body is not UTF-8".into()))?;
        let r: Resolved = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        validate(&r)?;
        Ok(r)
    }

    /// Downloads `url` and checks its sha256 against the first token of `sha256`.
    pub async fn download(&self, url: &str, sha256: &str) -> Result<Vec<u8>, ApiError> {
        check_artifact_url(url)?;
        let dl = |reason: String| ApiError::Download {
            url: url.into(),
            reason,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| dl(self.unreachable(&e).to_string()))?;
        if !resp.status().is_success() {
            return Err(dl(format!("HTTP {}", resp.status().as_u16())));
        }
        let bytes = self.body(resp, MAX_ARTIFACT, url).await?;
        verify_sha256(url, &bytes, sha256)?;
        Ok(bytes)
    }
}

/// Artifact URLs must be https; plain http only to loopback, and only in debug builds.
pub fn check_artifact_url(url: &str) -> Result<(), ApiError> {
    if url.starts_with("https://") || (cfg!(debug_assertions) && is_loopback_url(url)) {
        return Ok(());
    }
    Err(ApiError::Download {
        url: url.into(),
        reason: "artifact URLs must be https".into(),
    })
}

/// Compares the sha256 of `bytes` with the first whitespace token of `expected`.
pub fn verify_sha256(url: &str, bytes: &[u8], expected: &str) -> Result<(), ApiError> {
    let want = expected
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let actual: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if want != actual {
        return Err(ApiError::Checksum {
            url: url.into(),
            expected: want,
            actual,
        });
    }
    Ok(())
}

/// Unique valid names, edges between declared nodes, every node reachable from the root,
/// no cycle, and each node carries what its type needs.
pub fn validate(r: &Resolved) -> Result<(), ApiError> {
    let err = |reason: String| ApiError::Graph {
        root: r.root.name.clone(),
        reason,
    };
    let mut seen = HashSet::new();
    for n in &r.graph {
        names::validate(&n.name).map_err(|e| err(e.to_string()))?;
        if !seen.insert(n.name.as_str()) {
            return Err(err(format!("node '{}' appears twice", n.name)));
        }
        match n.kind.as_str() {
            "engine" => {}
            "binary" if n.binaries.is_empty() => {
                return Err(err(format!("binary node '{}' has no binaries", n.name)))
            }
            "binary" => {}
            "image" if n.image.as_deref().is_none_or(str::is_empty) => {
                return Err(err(format!("image node '{}' has no image", n.name)))
            }
            "image" => {}
            "bundle" if n.archive_url.is_none() || n.sha256.is_none() => {
                return Err(err(format!(
                    "bundle node '{}' needs archive_url and sha256",
                    n.name
                )))
            }
            "bundle" => {}
            other => return Err(err(format!("node '{}' has unknown type '{other}'", n.name))),
        }
    }
    if !seen.contains(r.root.name.as_str()) {
        return Err(err(format!(
            "the root '{}' is not in the graph",
            r.root.name
        )));
    }
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut indeg: HashMap<&str, usize> = seen.iter().map(|n| (*n, 0)).collect();
    for e in &r.edges {
        for end in [&e.from, &e.to] {
            if !seen.contains(end.as_str()) {
                return Err(err(format!(
                    "edge {} → {} names undeclared node '{end}'",
                    e.from, e.to
                )));
            }
        }
        out.entry(e.from.as_str()).or_default().push(e.to.as_str());
        *indeg.get_mut(e.to.as_str()).expect("declared") += 1;
    }
    // Reachability from the root.
    let mut reach = HashSet::from([r.root.name.as_str()]);
    let mut q = VecDeque::from([r.root.name.as_str()]);
    while let Some(n) = q.pop_front() {
        for m in out.get(n).into_iter().flatten() {
            if reach.insert(m) {
                q.push_back(m);
            }
        }
    }
    let mut unreachable: Vec<&str> = seen.difference(&reach).copied().collect();
    if !unreachable.is_empty() {
        unreachable.sort();
        return Err(err(format!(
            "worker node(s) are unreachable from {}: {}",
            r.root.name,
            unreachable.join(", ")
        )));
    }
    // Kahn: whatever keeps an in-degree is on a cycle.
    let mut q: VecDeque<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    while let Some(n) = q.pop_front() {
        for m in out.get(n).into_iter().flatten() {
            let d = indeg.get_mut(m).expect("declared");
            *d -= 1;
            if *d == 0 {
                q.push_back(m);
            }
        }
        indeg.remove(n);
    }
    if !indeg.is_empty() {
        let mut c: Vec<&str> = indeg.keys().copied().collect();
        c.sort();
        return Err(err(format!(
            "dependency cycle detected involving: {}",
            c.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(json: serde_json::Value) -> Resolved {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn graphs_are_validated() {
        let ok = graph(serde_json::json!({
            "root": {"name": "a", "version": "1.0.0"},
            "graph": [{"name": "b", "type": "engine", "version": "1"},
                      {"name": "a", "type": "image", "version": "1", "image": "r/a:1"}],
            "edges": [{"from": "a", "to": "b", "range": "^1"}]
        }));
        validate(&ok).unwrap();
        let cases = [
            (
                serde_json::json!([{"from": "a", "to": "c"}]),
                "undeclared node 'c'",
            ),
            (serde_json::json!([]), "unreachable from a: b"),
            (
                serde_json::json!([{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]),
                "cycle detected involving: a, b",
            ),
        ];
        for (edges, needle) in cases {
            let mut g = ok.clone();
            g.edges = serde_json::from_value(edges).unwrap();
            let e = validate(&g).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut g = ok.clone();
        g.graph[0].kind = "wasm".into();
        assert!(validate(&g)
            .unwrap_err()
            .to_string()
            .contains("unknown type 'wasm'"));
        let mut g = ok.clone();
        g.graph[1].image = None;
        assert!(validate(&g)
            .unwrap_err()
            .to_string()
            .contains("has no image"));
        let mut g = ok;
        g.graph[0].name = "a".into();
        assert!(validate(&g).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn checksums_and_urls() {
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        verify_sha256("u", b"hello", &format!("{sha}  hello.tar.gz")).unwrap();
        let e = verify_sha256("u", b"hellO", sha).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(check_artifact_url("https://x/a").is_ok());
        assert!(check_artifact_url("http://example.com/a").is_err());
        assert!(is_loopback_url("http://127.0.0.1:9/a"));
        assert!(!is_loopback_url("http://10.0.0.1/a"));
    }
}
